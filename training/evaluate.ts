/**
 * Evaluation on a task's held-out split: sample k responses per problem; avg@k, pass@k and greedy accuracy.
 * Streamed: problems are drawn, generated and scored one batch of sequences at a time, so memory does not grow
 * with the number of problems.
 */
import type { DecoderConfig } from "../policies/config.ts";
import { generate } from "../policies/generate.ts";
import type { Params } from "../policies/params.ts";
import type { TextTokenizer } from "../formats/tokenizer.ts";
import { batch, type Task } from "../tasks/task.ts";
import { promptIds, responseText, stopId } from "./data.ts";

export interface EvalOptions {
  readonly problems: number;
  /** Samples per problem (avg@k and pass@k). */
  readonly k: number;
  readonly temperature: number;
  readonly maxNew: number;
  readonly seed: number;
  /** Sequences per generation call (default EVAL_BATCH). */
  readonly batchSize?: number;
  /** Problem set seed (the task's seed; fixed across a run so evaluations are comparable). */
  readonly taskSeed: number;
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
  o: { temperature: number; maxNew: number; seed: number; step: number; first: number; stop?: number },
): Promise<string[]> => {
  const r = await generate(c, p, prompts.map((x) => promptIds(tok, x)), {
    maxNew: o.maxNew,
    eos: tok.eos,
    stop: o.stop,
    pad: tok.pad,
    temperature: o.temperature,
    seed: o.seed,
    step: o.step,
    firstSequence: o.first,
  });
  return Array.from(
    { length: r.B },
    (_, b) => responseText(tok, r.ids, b * r.T + r.promptLens[b], (b + 1) * r.T),
  );
};

/**
 * Evaluate the model on `problems` eval problems. Deterministic given the seeds. The k samples of problem i are
 * sequences i k .. i k + k - 1 of one flat list generated `batchSize` sequences at a time (each batch draws its
 * problems as it goes); the greedy responses likewise, one sequence per problem.
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
  const common = { maxNew: o.maxNew, seed: o.seed, stop };
  let sum = 0, pass = 0, greedy = 0, any = false;
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
      sum += r;
      if (r >= 1) any = true;
      if (samples.length < 8 && j === 0) samples.push({ prompt: q.prompt, completion, reward: r });
      if (j === k - 1) {
        if (any) pass++;
        any = false;
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
      if (task.reward(q, texts[i]) >= 1) greedy++;
    });
  }
  return {
    avgAtK: sum / (n * k),
    passAtK: pass / n,
    greedy: greedy / n,
    k,
    problems: n,
    samples,
  };
};
