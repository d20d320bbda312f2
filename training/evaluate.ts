/**
 * Evaluation on a task's held-out split: sample k responses per problem from the final policy (or any internal
 * policy); avg@k, pass@k and greedy accuracy, overall and per difficulty level where the task defines one.
 */
import { ConfigError } from "../core/errors.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { generate } from "../policies/generate.ts";
import { final, type InternalPolicy, parsePolicy, showPolicy } from "../policies/internal.ts";
import type { Params } from "../policies/params.ts";
import type { TextTokenizer } from "../formats/tokenizer.ts";
import { batch, type Problem, type Task } from "../tasks/task.ts";
import { promptIds, responseText, stopId } from "./data.ts";

export interface EvalOptions {
  readonly problems: number;
  /** Samples per problem (avg@k and pass@k). */
  readonly k: number;
  readonly temperature: number;
  readonly maxNew: number;
  readonly seed: number;
  /** Sequences per generation call. */
  readonly batchSize?: number;
  /** Problem set seed (the task's seed; fixed across a run so evaluations are comparable). */
  readonly taskSeed: number;
  /** The policy responses are sampled from (default `final`; `layer(k)`: pi_k itself, raw readout). */
  readonly policy?: InternalPolicy;
}

/** avg@k, pass@k and greedy accuracy of the problems at one difficulty level. */
export interface DifficultyResult {
  readonly difficulty: number;
  readonly problems: number;
  readonly avgAtK: number;
  readonly passAtK: number;
  readonly greedy: number;
}

export interface EvalResult {
  /** Mean reward over all samples (avg@k). */
  readonly avgAtK: number;
  /** Fraction of problems with at least one correct sample (pass@k). */
  readonly passAtK: number;
  /** Fraction of problems whose greedy (temperature 0) response is correct. */
  readonly greedy: number;
  readonly k: number;
  readonly problems: number;
  /** The policy sampled (`showPolicy`: `final`, `layer(2)`, ...). */
  readonly policy: string;
  /** Per difficulty level, ascending (absent when no problem has a `difficulty`). */
  readonly byDifficulty?: readonly DifficultyResult[];
  /** A few (prompt, completion, reward) examples. */
  readonly samples: { prompt: string; completion: string; reward: number }[];
}

const rollTexts = async (
  c: DecoderConfig,
  p: Params,
  tok: TextTokenizer,
  prompts: string[],
  o: {
    temperature: number;
    maxNew: number;
    seed: number;
    step: number;
    batchSize: number;
    stop?: number;
    policy?: InternalPolicy;
  },
): Promise<string[]> => {
  const out: string[] = [];
  for (let i = 0; i < prompts.length; i += o.batchSize) {
    const part = prompts.slice(i, i + o.batchSize);
    const r = await generate(c, p, part.map((x) => promptIds(tok, x)), {
      maxNew: o.maxNew,
      eos: tok.eos,
      stop: o.stop,
      pad: tok.pad,
      vocab: tok.vocabSize,
      temperature: o.temperature,
      seed: o.seed,
      step: o.step,
      firstSequence: i,
      policy: o.policy,
    });
    for (let b = 0; b < r.B; b++) {
      out.push(responseText(tok, r.ids, b * r.T + r.promptLens[b], (b + 1) * r.T));
    }
  }
  return out;
};

/** Evaluate the model on `problems` eval problems. Deterministic given the seeds. */
export const evaluate = async (
  c: DecoderConfig,
  p: Params,
  tok: TextTokenizer,
  task: Task,
  o: EvalOptions,
): Promise<EvalResult> => {
  const probs = batch(task, "eval", o.taskSeed, 0, o.problems);
  const bs = o.batchSize ?? 128;
  const sampledPrompts = probs.flatMap((q) => Array.from({ length: o.k }, () => q.prompt));
  const sampled = await rollTexts(c, p, tok, sampledPrompts, {
    temperature: o.temperature,
    maxNew: o.maxNew,
    seed: o.seed,
    step: 0x7fff0000,
    batchSize: bs,
    stop: stopId(tok, task),
    policy: o.policy,
  });
  const greedyTexts = await rollTexts(c, p, tok, probs.map((q) => q.prompt), {
    temperature: 0,
    maxNew: o.maxNew,
    seed: o.seed,
    step: 0x7fff0001,
    batchSize: bs,
    stop: stopId(tok, task),
    policy: o.policy,
  });
  const samples: EvalResult["samples"] = [];
  let total = 0; // summed in sample order, as the overall avg@k always was
  /** Per problem: the summed reward of its k samples, whether one was correct, whether greedy was. */
  const scores = probs.map((q, i) => {
    let sum = 0, any = false;
    for (let j = 0; j < o.k; j++) {
      const completion = sampled[i * o.k + j];
      const r = task.reward(q, completion);
      sum += r;
      total += r;
      if (r >= 1) any = true;
      if (samples.length < 8 && j === 0) samples.push({ prompt: q.prompt, completion, reward: r });
    }
    return { sum, pass: any, greedy: task.reward(q, greedyTexts[i]) >= 1 };
  });
  const summary = (idx: readonly number[]) => {
    let sum = 0, pass = 0, greedy = 0;
    for (const i of idx) {
      sum += scores[i].sum;
      if (scores[i].pass) pass++;
      if (scores[i].greedy) greedy++;
    }
    return { avgAtK: sum / (idx.length * o.k), passAtK: pass / idx.length, greedy: greedy / idx.length };
  };
  const all = { ...summary(probs.map((_, i) => i)), avgAtK: total / (probs.length * o.k) };
  const byDifficulty = difficultyLevels(probs).map((level): DifficultyResult => {
    const idx = probs.flatMap((q, i) => (q.difficulty === level ? [i] : []));
    return { difficulty: level, problems: idx.length, ...summary(idx) };
  });
  return {
    ...all,
    k: o.k,
    problems: probs.length,
    policy: showPolicy(o.policy ?? final),
    ...(byDifficulty.length ? { byDifficulty } : {}),
    samples,
  };
};

/** The distinct difficulty levels of `problems`, ascending (none when the task defines no difficulty). */
export const difficultyLevels = (problems: readonly Problem[]): number[] =>
  [...new Set(problems.flatMap((q) => (q.difficulty === undefined ? [] : [q.difficulty])))].sort((a, b) =>
    a - b
  );

/**
 * The internal policy a run's evaluation samples from, from its `--eval-policy` text, checked against the
 * model's layer count: a ConfigError naming the flag otherwise.
 */
export const evalPolicyOf = (text: string, numLayers: number): InternalPolicy => {
  const p = parsePolicy(text);
  if (!p) {
    throw new ConfigError({
      source: "flags",
      field: "--eval-policy",
      message: `--eval-policy ${JSON.stringify(text)}: expected final, layer(k), attn(k) or ffn(k) ` +
        `(k 0-based; optionally (k,normed))`,
    });
  }
  if (p.kind !== "final" && p.layer >= numLayers) {
    throw new ConfigError({
      source: "flags",
      field: "--eval-policy",
      message: `--eval-policy ${showPolicy(p)}: the model has ${numLayers} layers (0-based: 0..${
        numLayers - 1
      })`,
    });
  }
  return p;
};
