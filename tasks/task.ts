/** The Task interface: a deterministic source of problems with verifiable answers and a reward on completions. */

/** Which half of a task's problem space: `train` and `eval` never share a problem. */
export type Split = "train" | "eval";

/** One problem of a task. */
export interface Problem {
  /** Identifies this draw: the same (task, split, seed, index) always gives the same id. */
  readonly id: string;
  /** The text the policy is conditioned on (everything before the response). */
  readonly prompt: string;
  /** The reference final answer, compared exactly by `reward`. */
  readonly answer: string;
  /** A full worked response (what a perfect policy writes after `prompt`); used for supervised pretraining. */
  readonly solution: string;
  /** Optional difficulty level (task-defined, larger is harder) for per-level accuracy reports. */
  readonly difficulty?: number;
}

/**
 * A verifiable reasoning task. Implement this to train on your own problems.
 *
 * Contract: `problem` is a pure function of (split, index, seed); no problem appears in both splits;
 * `alphabet` holds every character of every prompt and solution (a char tokenizer is built from it);
 * `reward(p, p.solution)` is the maximum reward. Example (copy a string):
 *
 * ```ts
 * const copy: Task = {
 *   name: "copy",
 *   description: "repeat three digits, then a full stop",
 *   alphabet: "0123456789>.",
 *   stop: ".",
 *   problem: (split, index, seed) => {
 *     const s = String((index * 7919 + seed) % 1000).padStart(3, "0");
 *     const t = split === "train" ? s + "0" : s + "1"; // last digit keeps the splits apart
 *     return { id: `copy/${split}/${seed}/${index}`, prompt: t + ">", answer: t, solution: t + "." };
 *   },
 *   reward: (p, completion) => (completion.split(".")[0] === p.answer ? 1 : 0),
 * };
 * ```
 */
export interface Task {
  /** Short identifier (used in problem ids and logs). */
  readonly name: string;
  /** One or two sentences for people: what is asked and how it is checked. */
  readonly description: string;
  /** Every character that prompts and solutions may contain, each once. */
  readonly alphabet: string;
  /**
   * The string that ends a complete response (included in `solution`). Samplers may stop a rollout once it
   * appears; `reward` ignores anything after it.
   */
  readonly stop?: string;
  /** Upper bounds on prompt and solution lengths in characters, for sizing sequence buffers. */
  readonly maxPromptChars?: number;
  /** Upper bound on solution lengths in characters (see maxPromptChars). */
  readonly maxSolutionChars?: number;
  /** The problem at `index` of `split` under `seed` (pure: same arguments, same problem). */
  problem(split: Split, index: number, seed: number): Problem;
  /** Reward of a completion (the text generated after the prompt); 1 means a correct answer. */
  reward(problem: Problem, completion: string): number;
  /** Whether a completion is well formed (the answer parses), whatever its correctness: a metric. */
  format?(problem: Problem, completion: string): boolean;
}

/** `count` consecutive problems of `split` starting at index `start`. */
export const drawProblems = (
  task: Task,
  split: Split,
  seed: number,
  start: number,
  count: number,
): Problem[] => {
  if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(count) || count < 0) {
    throw new RangeError(
      `drawProblems(${task.name}): start ${start} and count ${count} must be non-negative integers`,
    );
  }
  return Array.from({ length: count }, (_, i) => task.problem(split, start + i, seed));
};

/** Characters of `text` (code points) that are not in `alphabet`, in order of first appearance. */
export const outsideAlphabet = (alphabet: string, text: string): string[] => {
  const a = new Set(Array.from(alphabet));
  return [...new Set(Array.from(text).filter((c) => !a.has(c)))];
};
