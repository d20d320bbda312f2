/** Turning task problems into token batches: prompts for rollouts, prompt + solution for supervised steps. */
import type { TextTokenizer } from "../formats/tokenizer.ts";
import type { Problem, Task } from "../tasks/task.ts";

/** The token ids of a prompt as the model sees it: bos (when the tokenizer has one), then the prompt text. */
export const promptIds = (tok: TextTokenizer, prompt: string): number[] =>
  tok.bos === undefined ? tok.encode(prompt) : [tok.bos, ...tok.encode(prompt)];

/** Fixed sequence length for a task: bos + longest prompt + longest solution + eos. */
export const sequenceLength = (task: Task): number =>
  1 + (task.maxPromptChars ?? 32) + (task.maxSolutionChars ?? 32) + 1;

/**
 * A supervised batch: each row is bos + prompt + solution + eos, right-padded to `T`; the mask marks the
 * positions whose NEXT token is part of the solution or the eos (the prompt is not trained on).
 */
export const supervisedBatch = (tok: TextTokenizer, problems: readonly Problem[], T: number) => {
  const B = problems.length;
  const ids = new Int32Array(B * T).fill(tok.pad);
  const mask = new Float32Array(B * T);
  problems.forEach((p, b) => {
    const pr = promptIds(tok, p.prompt);
    const row = [...pr, ...tok.encode(p.solution), tok.eos];
    if (row.length > T) {
      throw new RangeError(`problem ${p.id}: ${row.length} tokens exceed the sequence length ${T}`);
    }
    ids.set(row, b * T);
    for (let t = pr.length - 1; t < row.length - 1; t++) mask[b * T + t] = 1;
  });
  return { ids, B, T, mask };
};

/** Text of a response: decode ids after the prompt up to (not including) eos, skipping pads. */
export const responseText = (
  tok: TextTokenizer,
  ids: ArrayLike<number>,
  from: number,
  to: number,
): string => {
  const out: number[] = [];
  for (let t = from; t < to; t++) {
    const id = ids[t];
    if (id === tok.eos) break;
    if (id !== tok.pad && id !== tok.bos) out.push(id);
  }
  return tok.decode(out);
};

/** The token id of the task's stop string when it is one token (rollouts end there, as the Task contract allows). */
export const stopId = (tok: TextTokenizer, task: Task): number | undefined => {
  if (!task.stop) return undefined;
  const ids = tok.encode(task.stop);
  return ids.length === 1 ? ids[0] : undefined;
};
