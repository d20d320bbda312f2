/** Evaluation on a task's held-out split: sample k responses per problem; avg@k, pass@k and greedy accuracy. */
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
  /** Sequences per generation call. */
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

const rollTexts = async (
  c: DecoderConfig,
  p: Params,
  tok: TextTokenizer,
  prompts: string[],
  o: { temperature: number; maxNew: number; seed: number; step: number; batchSize: number; stop?: number },
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
  });
  const greedyTexts = await rollTexts(c, p, tok, probs.map((q) => q.prompt), {
    temperature: 0,
    maxNew: o.maxNew,
    seed: o.seed,
    step: 0x7fff0001,
    batchSize: bs,
    stop: stopId(tok, task),
  });
  let sum = 0, pass = 0, greedy = 0;
  const samples: EvalResult["samples"] = [];
  probs.forEach((q, i) => {
    let any = false;
    for (let j = 0; j < o.k; j++) {
      const completion = sampled[i * o.k + j];
      const r = task.reward(q, completion);
      sum += r;
      if (r >= 1) any = true;
      if (samples.length < 8 && j === 0) samples.push({ prompt: q.prompt, completion, reward: r });
    }
    if (any) pass++;
    if (task.reward(q, greedyTexts[i]) >= 1) greedy++;
  });
  return {
    avgAtK: sum / (probs.length * o.k),
    passAtK: pass / probs.length,
    greedy: greedy / probs.length,
    k: o.k,
    problems: probs.length,
    samples,
  };
};
