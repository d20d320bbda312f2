/**
 * Evaluation on a task's held-out split: sample k responses per problem from the final policy (or any internal
 * policy); avg@k, pass@k and greedy accuracy, overall and per difficulty level where the task defines one.
 * Streamed: problems are drawn, generated and scored one batch of sequences at a time, so memory does not grow
 * with the number of problems.
 */
import { ConfigError } from "../core/errors.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { generate } from "../policies/generate.ts";
import { final, type InternalPolicy, parsePolicy, showPolicy } from "../policies/internal.ts";
import type { Params } from "../policies/params.ts";
import type { TextTokenizer } from "../formats/tokenizer.ts";
import { batch, type Problem, type Task } from "../tasks/task.ts";
import { promptIds, responseText, stopId } from "./data.ts";

/** How `evaluate` samples. */
export interface EvalOptions {
  /** Held-out problems (the task's `eval` split, indices 0..problems-1). */
  readonly problems: number;
  /** Samples per problem (avg@k and pass@k). */
  readonly k: number;
  /** Sampling temperature of the k samples (greedy decoding is separate). */
  readonly temperature: number;
  /** Most response tokens. */
  readonly maxNew: number;
  /** Sampling seed. */
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
  /** The level (`Problem.difficulty`). */
  readonly difficulty: number;
  /** Problems at this level. */
  readonly problems: number;
  /** As EvalResult.avgAtK, over these problems. */
  readonly avgAtK: number;
  /** As EvalResult.passAtK, over these problems. */
  readonly passAtK: number;
  /** As EvalResult.greedy, over these problems. */
  readonly greedy: number;
}

/** What `evaluate` measured. */
export interface EvalResult {
  /** Mean reward over all samples (avg@k). */
  readonly avgAtK: number;
  /** Fraction of problems with at least one correct sample (pass@k). */
  readonly passAtK: number;
  /** Fraction of problems whose greedy (temperature 0) response is correct. */
  readonly greedy: number;
  /** Samples per problem. */
  readonly k: number;
  /** Problems evaluated. */
  readonly problems: number;
  /** The policy sampled (`showPolicy`: `final`, `layer(2)`, ...). */
  readonly policy: string;
  /** Per difficulty level, ascending (absent when no problem has a `difficulty`). */
  readonly byDifficulty?: readonly DifficultyResult[];
  /** A few (prompt, completion, reward) examples. */
  readonly samples: { prompt: string; completion: string; reward: number }[];
}

/** Sequences per generation call of an evaluation (the memory of evaluation is that of one such batch). */
export const EVAL_BATCH = 128;

const rollTexts = async (
  c: DecoderConfig,
  p: Params,
  tok: TextTokenizer,
  prompts: readonly string[],
  o: {
    temperature: number;
    maxNew: number;
    seed: number;
    step: number;
    first: number;
    stop?: number;
    policy?: InternalPolicy;
  },
): Promise<string[]> => {
  const r = await generate(c, p, prompts.map((x) => promptIds(tok, x)), {
    maxNew: o.maxNew,
    eos: tok.eos,
    stop: o.stop,
    pad: tok.pad,
    vocab: tok.vocabSize,
    temperature: o.temperature,
    seed: o.seed,
    step: o.step,
    firstSequence: o.first,
    policy: o.policy,
  });
  return Array.from(
    { length: r.B },
    (_, b) => responseText(tok, r.ids, b * r.T + r.promptLens[b], (b + 1) * r.T),
  );
};

/** Running sums of one group of problems (all, or one difficulty level). */
interface Tally {
  problems: number;
  sum: number;
  pass: number;
  greedy: number;
}

const tally = (): Tally => ({ problems: 0, sum: 0, pass: 0, greedy: 0 });

/**
 * Evaluate the model on `problems` eval problems. Deterministic given the seeds. The k samples of problem i are
 * sequences i k .. i k + k - 1 of one flat list generated `batchSize` sequences at a time (each batch draws its
 * problems as it goes); the greedy responses likewise, one sequence per problem. Only sums are kept: overall and
 * per difficulty level.
 */
export const evaluate = async (
  c: DecoderConfig,
  p: Params,
  tok: TextTokenizer,
  task: Task,
  o: EvalOptions,
): Promise<EvalResult> => {
  const n = o.problems, k = o.k;
  const bs = o.batchSize ?? EVAL_BATCH;
  const stop = stopId(tok, task);
  const common = { maxNew: o.maxNew, seed: o.seed, stop, policy: o.policy };
  const all = tally(), levels = new Map<number, Tally>();
  const groupsOf = (q: Problem): Tally[] => {
    if (q.difficulty === undefined) return [all];
    if (!levels.has(q.difficulty)) levels.set(q.difficulty, tally());
    return [all, levels.get(q.difficulty)!];
  };
  let any = false, qsum = 0;
  const samples: EvalResult["samples"] = [];
  for (let s0 = 0; s0 < n * k; s0 += bs) {
    const s1 = Math.min(n * k, s0 + bs);
    const first = Math.floor(s0 / k);
    const probs = batch(task, "eval", o.taskSeed, first, Math.floor((s1 - 1) / k) - first + 1);
    const prompts = Array.from({ length: s1 - s0 }, (_, x) => probs[Math.floor((s0 + x) / k) - first].prompt);
    const texts = await rollTexts(c, p, tok, prompts, {
      ...common,
      temperature: o.temperature,
      step: 0x7fff0000,
      first: s0,
    });
    for (let s = s0; s < s1; s++) {
      const q = probs[Math.floor(s / k) - first], j = s % k;
      const completion = texts[s - s0];
      const r = task.reward(q, completion);
      all.sum += r; // summed in sample order, as the overall avg@k always was
      qsum += r;
      if (r >= 1) any = true;
      if (samples.length < 8 && j === 0) samples.push({ prompt: q.prompt, completion, reward: r });
      if (j === k - 1) {
        for (const g of groupsOf(q)) {
          g.problems++;
          if (any) g.pass++;
          if (g !== all) g.sum += qsum;
        }
        any = false;
        qsum = 0;
      }
    }
  }
  for (let i0 = 0; i0 < n; i0 += bs) {
    const probs = batch(task, "eval", o.taskSeed, i0, Math.min(bs, n - i0));
    const texts = await rollTexts(c, p, tok, probs.map((q) => q.prompt), {
      ...common,
      temperature: 0,
      step: 0x7fff0001,
      first: i0,
    });
    probs.forEach((q, i) => {
      if (task.reward(q, texts[i]) >= 1) { for (const g of groupsOf(q)) g.greedy++; }
    });
  }
  const rates = (g: Tally) => ({
    avgAtK: g.sum / (g.problems * k),
    passAtK: g.pass / g.problems,
    greedy: g.greedy / g.problems,
  });
  const byDifficulty = [...levels.keys()].sort((a, b) => a - b).map((level): DifficultyResult => {
    const g = levels.get(level)!;
    return { difficulty: level, problems: g.problems, ...rates(g) };
  });
  return {
    ...rates(all),
    k,
    problems: n,
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
