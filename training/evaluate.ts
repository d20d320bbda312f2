/**
 * Evaluation on a source's held-out prompts (a task's eval split, a dataset's --eval-data): sample k responses
 * per prompt from the final policy (or any internal policy); avg@k, pass@k and greedy accuracy, overall, per
 * difficulty level where the task defines one and per data_source where the rows name one.
 */
import { ConfigError } from "../core/errors.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { generate } from "../policies/generate.ts";
import { final, type InternalPolicy, parsePolicy, showPolicy } from "../policies/internal.ts";
import type { Params } from "../policies/params.ts";
import type { CharTokenizer } from "../formats/tokenizer.ts";
import type { Problem, Task } from "../tasks/task.ts";
import {
  generateOptionsOf,
  type SourcePrompt,
  type SourceResponse,
  type SourceScore,
  type TaskSource,
  taskSource,
} from "./source.ts";

export interface EvalOptions {
  /** Held-out prompts (at most the source's evalSize). */
  readonly problems: number;
  /** Samples per problem (avg@k and pass@k). */
  readonly k: number;
  readonly temperature: number;
  readonly maxNew: number;
  readonly seed: number;
  /** Sequences per generation call. */
  readonly batchSize?: number;
  /** The policy responses are sampled from (default `final`; `layer(k)`: pi_k itself, raw readout). */
  readonly policy?: InternalPolicy;
}

/** avg@k, pass@k and greedy accuracy of a group of problems. */
export interface GroupResult {
  readonly problems: number;
  readonly avgAtK: number;
  readonly passAtK: number;
  readonly greedy: number;
}

/** avg@k, pass@k and greedy accuracy of the problems at one difficulty level. */
export interface DifficultyResult extends GroupResult {
  readonly difficulty: number;
}

/** avg@k, pass@k and greedy accuracy of the rows of one data_source. */
export interface DataSourceResult extends GroupResult {
  readonly dataSource: string;
}

/** One evaluation sample (samples.jsonl): the first of the k responses to one of the first problems. */
export interface EvalSample {
  readonly prompt: string;
  readonly completion: string;
  readonly reward: number;
  /** The reward's parts (datasets), when it has any. */
  readonly parts?: Readonly<Record<string, number>>;
  /** Cut at maxNew (no stop id). */
  readonly truncated: boolean;
  /** The reference answer and data_source (datasets). */
  readonly answer?: string;
  readonly dataSource?: string;
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
  /** Per data_source, in order of first appearance (absent when no row names one). */
  readonly byDataSource?: readonly DataSourceResult[];
  /** Reward calls that failed (datasets; absent when none did). */
  readonly rewardErrors?: number;
  /** A few examples. */
  readonly samples: EvalSample[];
}

/** Responses to `prompts` (several sub-batches of `batchSize`), with how each ended. */
const rollResponses = async (
  c: DecoderConfig,
  p: Params,
  source: TaskSource,
  prompts: readonly SourcePrompt[],
  o: {
    temperature: number;
    maxNew: number;
    seed: number;
    step: number;
    batchSize: number;
    policy?: InternalPolicy;
  },
): Promise<SourceResponse[]> => {
  const out: SourceResponse[] = [];
  for (let i = 0; i < prompts.length; i += o.batchSize) {
    const part = prompts.slice(i, i + o.batchSize);
    const r = await generate(c, p, part.map((x) => x.ids), {
      maxNew: o.maxNew,
      ...generateOptionsOf(source),
      temperature: o.temperature,
      seed: o.seed,
      step: o.step,
      firstSequence: i,
      policy: o.policy,
    });
    for (let b = 0; b < r.B; b++) {
      out.push({
        text: source.responseText(r.ids, b * r.T + r.promptLens[b], (b + 1) * r.T),
        finished: r.finished[b],
        ...(r.stopIds[b] !== undefined ? { stopId: r.stopIds[b] } : {}),
        tokens: r.responseLens[b],
      });
    }
  }
  return out;
};

/** Evaluate the model on the first `o.problems` held-out prompts of `source`. Deterministic given the seeds. */
export const evaluateSource = async (
  c: DecoderConfig,
  p: Params,
  source: TaskSource,
  o: EvalOptions,
): Promise<EvalResult> => {
  const probs = source.eval(Math.min(o.problems, source.evalSize));
  const bs = o.batchSize ?? 128;
  const sampledPrompts = probs.flatMap((q) => Array.from({ length: o.k }, () => q));
  const sampled = await rollResponses(c, p, source, sampledPrompts, {
    temperature: o.temperature,
    maxNew: o.maxNew,
    seed: o.seed,
    step: 0x7fff0000,
    batchSize: bs,
    policy: o.policy,
  });
  const greedyResponses = await rollResponses(c, p, source, probs, {
    temperature: 0,
    maxNew: o.maxNew,
    seed: o.seed,
    step: 0x7fff0001,
    batchSize: bs,
    policy: o.policy,
  });
  const sampledScores: SourceScore[] = await Promise.all(sampled.map((r, i) => sampledPrompts[i].score(r)));
  const greedyScores: SourceScore[] = await Promise.all(greedyResponses.map((r, i) => probs[i].score(r)));
  const samples: EvalSample[] = [];
  let total = 0, errors = 0; // summed in sample order, as the overall avg@k always was
  /** Per problem: the summed reward of its k samples, whether one was correct, whether greedy was. */
  const scores = probs.map((q, i) => {
    let sum = 0, any = false;
    for (let j = 0; j < o.k; j++) {
      const r = sampled[i * o.k + j], s = sampledScores[i * o.k + j];
      sum += s.reward;
      total += s.reward;
      errors += s.errors;
      if (s.correct) any = true;
      if (samples.length < 8 && j === 0) {
        samples.push({
          prompt: q.text,
          completion: r.text,
          reward: s.reward,
          ...(Object.keys(s.parts).length ? { parts: s.parts } : {}),
          truncated: !r.finished,
          ...(q.dataSource !== undefined || Object.keys(s.parts).length ? { answer: q.answer } : {}),
          ...(q.dataSource !== undefined ? { dataSource: q.dataSource } : {}),
        });
      }
    }
    errors += greedyScores[i].errors;
    return { sum, pass: any, greedy: greedyScores[i].correct };
  });
  const summary = (idx: readonly number[]) => {
    let sum = 0, pass = 0, greedy = 0;
    for (const i of idx) {
      sum += scores[i].sum;
      if (scores[i].pass) pass++;
      if (scores[i].greedy) greedy++;
    }
    return {
      problems: idx.length,
      avgAtK: sum / (idx.length * o.k),
      passAtK: pass / idx.length,
      greedy: greedy / idx.length,
    };
  };
  const all = { ...summary(probs.map((_, i) => i)), avgAtK: total / (probs.length * o.k) };
  const byDifficulty = difficultyLevels(probs).map((level): DifficultyResult => {
    const idx = probs.flatMap((q, i) => (q.difficulty === level ? [i] : []));
    return { difficulty: level, ...summary(idx) };
  });
  const sources = [...new Set(probs.flatMap((q) => (q.dataSource === undefined ? [] : [q.dataSource])))];
  const byDataSource = sources.map((ds): DataSourceResult => {
    const idx = probs.flatMap((q, i) => (q.dataSource === ds ? [i] : []));
    return { dataSource: ds, ...summary(idx) };
  });
  return {
    avgAtK: all.avgAtK,
    passAtK: all.passAtK,
    greedy: all.greedy,
    k: o.k,
    problems: probs.length,
    policy: showPolicy(o.policy ?? final),
    ...(byDifficulty.length ? { byDifficulty } : {}),
    ...(byDataSource.length ? { byDataSource } : {}),
    ...(errors > 0 ? { rewardErrors: errors } : {}),
    samples,
  };
};

/**
 * Evaluate on a task's eval split over its char tokenizer (the problem set of `taskSeed`): `evaluateSource`
 * on `taskSource(tok, task, taskSeed)`.
 */
export const evaluate = (
  c: DecoderConfig,
  p: Params,
  tok: CharTokenizer,
  task: Task,
  o: EvalOptions & { readonly taskSeed: number },
): Promise<EvalResult> => evaluateSource(c, p, taskSource(tok, task, o.taskSeed), o);

/** The distinct difficulty levels of `problems`, ascending (none when the task defines no difficulty). */
export const difficultyLevels = (
  problems: readonly (Pick<Problem, "difficulty"> | Pick<SourcePrompt, "difficulty">)[],
): number[] =>
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
