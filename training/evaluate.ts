/**
 * Evaluation on a source's held-out prompts (a task's eval split, a dataset's --eval-data): sample k responses
 * per prompt from the final policy (or any internal policy); avg@k, pass@k and greedy accuracy, overall, per
 * difficulty level where the task defines one and per data_source where the rows name one. Streamed: prompts
 * are drawn, generated and scored one batch of sequences at a time, so memory does not grow with the number of
 * prompts.
 */
import { ConfigError } from "../core/errors.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { generate } from "../policies/generate.ts";
import { final, type InternalPolicy, parsePolicy, showPolicy } from "../policies/internal.ts";
import type { Params } from "../policies/params.ts";
import type { CharTokenizer } from "../formats/tokenizer.ts";
import type { Task } from "../tasks/task.ts";
import {
  generateOptionsOf,
  type SourcePrompt,
  type SourceResponse,
  type SourceScore,
  type TaskSource,
  taskSource,
} from "./source.ts";

/** How `evaluate` samples. */
export interface EvalOptions {
  /** Held-out prompts, indices 0..problems-1 (at most the source's evalSize). */
  readonly problems: number;
  /** Samples per problem (avg@k and pass@k). */
  readonly k: number;
  /** Sampling temperature of the k samples (greedy decoding is separate). */
  readonly temperature: number;
  /** Most response tokens. */
  readonly maxNew: number;
  /** Sampling seed. */
  readonly seed: number;
  /** Sequences per generation call (default EVAL_BATCH). */
  readonly batchSize?: number;
  /** The policy responses are sampled from (default `final`; `layer(k)`: pi_k itself, raw readout). */
  readonly policy?: InternalPolicy;
}

/** avg@k, pass@k and greedy accuracy of a group of problems. */
export interface GroupResult {
  /** Problems in the group. */
  readonly problems: number;
  /** As EvalResult.avgAtK, over these problems. */
  readonly avgAtK: number;
  /** As EvalResult.passAtK, over these problems. */
  readonly passAtK: number;
  /** As EvalResult.greedy, over these problems. */
  readonly greedy: number;
}

/** avg@k, pass@k and greedy accuracy of the problems at one difficulty level. */
export interface DifficultyResult extends GroupResult {
  /** The level (`Problem.difficulty`). */
  readonly difficulty: number;
}

/** avg@k, pass@k and greedy accuracy of the rows of one data_source. */
export interface DataSourceResult extends GroupResult {
  /** The rows' `data_source`. */
  readonly dataSource: string;
}

/** One evaluation sample (samples.jsonl): the first of the k responses to one of the first problems. */
export interface EvalSample {
  /** The prompt's text as the model saw it. */
  readonly prompt: string;
  /** The sampled response. */
  readonly completion: string;
  /** Its reward. */
  readonly reward: number;
  /** The reward's parts (datasets), when it has any. */
  readonly parts?: Readonly<Record<string, number>>;
  /** Cut at maxNew (no stop id). */
  readonly truncated: boolean;
  /** The reference answer (datasets). */
  readonly answer?: string;
  /** The row's data_source (datasets). */
  readonly dataSource?: string;
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
  /** Per data_source, in order of first appearance (absent when no row names one). */
  readonly byDataSource?: readonly DataSourceResult[];
  /** Reward calls that failed (datasets; absent when none did). */
  readonly rewardErrors?: number;
  /** A few examples. */
  readonly samples: EvalSample[];
}

/** Sequences per generation call of an evaluation (the memory of evaluation is that of one such batch). */
export const EVAL_BATCH = 128;

/** Responses to `prompts` (one generation call; sequence numbers from `first`), with how each ended. */
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
    first: number;
    policy?: InternalPolicy;
  },
): Promise<SourceResponse[]> => {
  const r = await generate(c, p, prompts.map((x) => x.ids), {
    maxNew: o.maxNew,
    ...generateOptionsOf(source),
    temperature: o.temperature,
    seed: o.seed,
    step: o.step,
    firstSequence: o.first,
    policy: o.policy,
  });
  return Array.from({ length: r.B }, (_, b) => ({
    text: source.responseText(r.ids, b * r.T + r.promptLens[b], (b + 1) * r.T),
    finished: r.finished[b],
    ...(r.stopIds[b] !== undefined ? { stopId: r.stopIds[b] } : {}),
    tokens: r.responseLens[b],
  }));
};

/** Running sums of one group of problems (all, one difficulty level, one data_source). */
interface Tally {
  problems: number;
  sum: number;
  pass: number;
  greedy: number;
}

const tally = (): Tally => ({ problems: 0, sum: 0, pass: 0, greedy: 0 });

const rates = (g: Tally, k: number): GroupResult => ({
  problems: g.problems,
  avgAtK: g.sum / (g.problems * k),
  passAtK: g.pass / g.problems,
  greedy: g.greedy / g.problems,
});

/**
 * Evaluate the model on the first `o.problems` held-out prompts of `source`. Deterministic given the seeds. The
 * k samples of prompt i are sequences i k .. i k + k - 1 of one flat list generated `batchSize` sequences at a
 * time (each batch draws its prompts as it goes); the greedy responses likewise, one sequence per prompt. Only
 * sums are kept: overall, per difficulty level and per data_source.
 */
export const evaluateSource = async (
  c: DecoderConfig,
  p: Params,
  source: TaskSource,
  o: EvalOptions,
): Promise<EvalResult> => {
  const n = Math.min(o.problems, source.evalSize), k = o.k;
  const bs = o.batchSize ?? EVAL_BATCH;
  const common = { maxNew: o.maxNew, seed: o.seed, policy: o.policy };
  const all = tally(), levels = new Map<number, Tally>(), sources = new Map<string, Tally>();
  const groupsOf = (q: SourcePrompt): Tally[] => {
    const gs = [all];
    if (q.difficulty !== undefined) {
      if (!levels.has(q.difficulty)) levels.set(q.difficulty, tally());
      gs.push(levels.get(q.difficulty)!);
    }
    if (q.dataSource !== undefined) {
      if (!sources.has(q.dataSource)) sources.set(q.dataSource, tally());
      gs.push(sources.get(q.dataSource)!);
    }
    return gs;
  };
  let any = false, qsum = 0, errors = 0;
  const samples: EvalSample[] = [];
  for (let s0 = 0; s0 < n * k; s0 += bs) {
    const s1 = Math.min(n * k, s0 + bs);
    const first = Math.floor(s0 / k);
    const probs = source.eval(first, Math.floor((s1 - 1) / k) - first + 1);
    const prompts = Array.from({ length: s1 - s0 }, (_, x) => probs[Math.floor((s0 + x) / k) - first]);
    const responses = await rollResponses(c, p, source, prompts, {
      ...common,
      temperature: o.temperature,
      step: 0x7fff0000,
      first: s0,
    });
    const scores: SourceScore[] = await Promise.all(responses.map((r, x) => prompts[x].score(r)));
    for (let s = s0; s < s1; s++) {
      const q = prompts[s - s0], j = s % k, r = responses[s - s0], sc = scores[s - s0];
      all.sum += sc.reward; // summed in sample order, as the overall avg@k always was
      qsum += sc.reward;
      errors += sc.errors;
      if (sc.correct) any = true;
      if (samples.length < 8 && j === 0) {
        const parts = Object.keys(sc.parts).length > 0;
        samples.push({
          prompt: q.text,
          completion: r.text,
          reward: sc.reward,
          ...(parts ? { parts: sc.parts } : {}),
          truncated: !r.finished,
          ...(q.dataSource !== undefined || parts ? { answer: q.answer } : {}),
          ...(q.dataSource !== undefined ? { dataSource: q.dataSource } : {}),
        });
      }
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
    const probs = source.eval(i0, Math.min(bs, n - i0));
    const responses = await rollResponses(c, p, source, probs, {
      ...common,
      temperature: 0,
      step: 0x7fff0001,
      first: i0,
    });
    const scores: SourceScore[] = await Promise.all(responses.map((r, i) => probs[i].score(r)));
    probs.forEach((q, i) => {
      errors += scores[i].errors;
      if (scores[i].correct) { for (const g of groupsOf(q)) g.greedy++; }
    });
  }
  const byDifficulty = [...levels.keys()].sort((a, b) => a - b).map((level): DifficultyResult => ({
    difficulty: level,
    ...rates(levels.get(level)!, k),
  }));
  const byDataSource = [...sources.keys()].map((ds): DataSourceResult => ({
    dataSource: ds,
    ...rates(sources.get(ds)!, k),
  }));
  const { avgAtK, passAtK, greedy } = rates(all, k);
  return {
    avgAtK,
    passAtK,
    greedy,
    k,
    problems: n,
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
