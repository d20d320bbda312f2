/** Multi-step arithmetic: "3+5-2+8=" answered by the running results "8,6,14", then "|14." (binary reward). */
import { ConfigError } from "../core/errors.ts";
import { checkProblemArgs, drawer, isNat, textHash } from "./draw.ts";
import type { Problem, Split, Task } from "./task.ts";

export { textHash } from "./draw.ts";

/** Separates the running results of the chain. */
export const CHAIN_SEP = ",";
/** Comes after the chain; the final answer follows it. */
export const ANSWER_MARK = "|";
/** Ends a complete response (the task's `stop`). */
export const END_MARK = ".";
/** Every character an arithmetic prompt or solution may contain, whatever the options. */
export const ARITH_ALPHABET = "0123456789+-=,|.";

/** Difficulty knobs and reward shaping of `arithTask`. */
export interface ArithOptions {
  /** Fewest and most operands of an expression, both inclusive (default [2, 4]); drawn uniformly. */
  readonly operands?: readonly [number, number];
  /** Smallest and largest operand, inclusive (default [0, 9]: single digits). */
  readonly operandRange?: readonly [number, number];
  /** Which operators appear: "+", "-" or "+-" (default "+-"). */
  readonly ops?: string;
  /** Every running result (and the first operand) lies in [0, maxResult] (default 99). */
  readonly maxResult?: number;
  /** One expression in `evalEvery` (by a fixed hash of its text) belongs to eval, the rest to train (default 8). */
  readonly evalEvery?: number;
  /** Added to the reward of a well-formed response, right or wrong (default 0: binary correctness). */
  readonly formatReward?: number;
}

/** The options with every default filled in. */
export type ArithConfig = { readonly [K in keyof ArithOptions]-?: NonNullable<ArithOptions[K]> };

const DEFAULTS: ArithConfig = {
  operands: [2, 4],
  operandRange: [0, 9],
  ops: "+-",
  maxResult: 99,
  evalEvery: 8,
  formatReward: 0,
};

const bad = (field: string, message: string): ConfigError =>
  new ConfigError({ source: "arithTask", field, message: `arithTask: ${field} ${message}` });

/** Fill in defaults and check the options; a bad value is a ConfigError naming the field. */
export const arithConfig = (o: ArithOptions = {}): ArithConfig => {
  const c: ArithConfig = { ...DEFAULTS, ...o };
  const [nMin, nMax] = c.operands;
  if (!isNat(nMin) || !isNat(nMax) || nMin < 2 || nMax < nMin || nMax > 16) {
    throw bad("operands", `is [${c.operands}]; expected integers 2 <= min <= max <= 16`);
  }
  const [lo, hi] = c.operandRange;
  if (!isNat(lo) || !isNat(hi) || hi < lo) {
    throw bad("operandRange", `is [${c.operandRange}]; expected integers 0 <= min <= max`);
  }
  if (
    c.ops.length === 0 || ![...c.ops].every((ch) => ch === "+" || ch === "-") ||
    new Set(c.ops).size !== c.ops.length
  ) {
    throw bad("ops", `is ${JSON.stringify(c.ops)}; expected "+", "-" or "+-"`);
  }
  if (!isNat(c.maxResult) || c.maxResult < lo) {
    throw bad("maxResult", `is ${c.maxResult}; expected an integer >= the smallest operand ${lo}`);
  }
  if (!isNat(c.evalEvery) || c.evalEvery < 2) {
    throw bad("evalEvery", `is ${c.evalEvery}; expected an integer >= 2`);
  }
  if (!Number.isFinite(c.formatReward) || c.formatReward < 0) {
    throw bad("formatReward", `is ${c.formatReward}; expected a finite number >= 0`);
  }
  return c;
};

/** Which split an expression text (the prompt) belongs to under `evalEvery`. */
export const splitOf = (prompt: string, evalEvery: number = DEFAULTS.evalEvery): Split =>
  textHash(prompt) % evalEvery === 0 ? "eval" : "train";

const MAX_ATTEMPTS = 4096;

/** One candidate expression: operands and operators with every running result in [0, maxResult]; null if stuck. */
const drawExpression = (c: ArithConfig, int: (lo: number, hi: number) => number) => {
  const [lo, hi] = c.operandRange;
  const n = int(c.operands[0], c.operands[1]);
  const first = int(lo, Math.min(hi, c.maxResult));
  let cur = first, text = String(first);
  const chain: number[] = [];
  for (let k = 1; k < n; k++) {
    const range = (op: string): [number, number] =>
      op === "+" ? [lo, Math.min(hi, c.maxResult - cur)] : [lo, Math.min(hi, cur)];
    let op = c.ops[int(0, c.ops.length - 1)];
    if (range(op)[1] < lo) op = op === "+" ? "-" : "+"; // the other operator, if allowed and possible
    const [a, b] = range(op);
    if (!c.ops.includes(op) || b < a) return null;
    const x = int(a, b);
    cur = op === "+" ? cur + x : cur - x;
    text += op + x;
    chain.push(cur);
  }
  return { n, prompt: text + "=", chain };
};

/** The worked response for a chain of running results: "8,6,14|14.". */
export const formatSolution = (chain: readonly number[]): string =>
  chain.join(CHAIN_SEP) + ANSWER_MARK + String(chain[chain.length - 1]) + END_MARK;

/**
 * The final answer of a completion: the response ends at its first `.` (anything after it is ignored, as a
 * sampler stopping at `stop` would cut it), and the answer is what follows the `|` before that point;
 * undefined unless exactly one `|` precedes the first `.`.
 */
export const extractAnswer = (completion: string): string | undefined => {
  const e = completion.indexOf(END_MARK);
  if (e < 0) return undefined;
  const parts = completion.slice(0, e).split(ANSWER_MARK);
  return parts.length === 2 ? parts[1] : undefined;
};

const WELL_FORMED = /^(\d+(?:,\d+)*)\|\d+\.$/;

/**
 * Whether a completion is a well-formed response to `prompt`: up to its first `.` it reads
 * `r1,r2,...|answer.` with digits only and one running result per operator of the prompt.
 * Correctness is not checked.
 */
export const arithWellFormed = (prompt: string, completion: string): boolean => {
  const e = completion.indexOf(END_MARK);
  if (e < 0) return false;
  const m = WELL_FORMED.exec(completion.slice(0, e + 1));
  if (!m) return false;
  const steps = [...prompt].filter((ch) => ch === "+" || ch === "-").length;
  return m[1].split(CHAIN_SEP).length === steps;
};

/**
 * The arithmetic task. Prompts are left-to-right sums and differences of small non-negative integers
 * ("3+5-2+8="); the solution writes each running result after an operator ("8,6,14"), then the answer after
 * `|`, then `.`. Choices for learnability by a tiny char-level model: results never go negative (a `-` takes
 * an operand no larger than the running result) and never exceed `maxResult`, so every step is a one- or
 * two-digit addition or subtraction; the chain makes every step local (running result + next operand), and
 * the answer is a copy of the last running result. Difficulty grows with the number of operands
 * (`Problem.difficulty`), so a partially trained model is right on short expressions and wrong on long ones.
 *
 * Problems are a pure function of (seed, split, index) through Philox4x32 at counter
 * (split, index, attempt, block). An expression belongs to eval when a fixed hash of its text is 0 modulo
 * `evalEvery`, else to train; a draw that lands in the other split is redrawn (next attempt), so the splits
 * are disjoint as sets of expressions for every seed, and eval is the same expression set whatever the seed.
 *
 * Reward: the response ends at its first `.` (text after it is ignored); 1 when it holds exactly one `|` and
 * the text between `|` and `.` equals the reference exactly (no leading zeros, no spaces), else 0; plus
 * `formatReward` when the response is well formed (`arithWellFormed`).
 */
export const arithTask = (options: ArithOptions = {}): Task => {
  const c = arithConfig(options);
  const d = String(c.maxResult).length;
  const nMax = c.operands[1];
  const opsName = c.ops === "+" ? "sums" : c.ops === "-" ? "differences" : "sums and differences";
  return {
    name: "arith",
    description: `${opsName} of ${c.operands[0]}-${nMax} integers in [${c.operandRange}] evaluated left to ` +
      `right, running results within [0, ${c.maxResult}] written as a chain "r1,r2,...|answer."; ` +
      `reward 1 for the exact answer` +
      (c.formatReward > 0 ? `, +${c.formatReward} for a well-formed chain` : ""),
    alphabet: ARITH_ALPHABET,
    stop: END_MARK,
    maxPromptChars: nMax * String(Math.min(c.operandRange[1], c.maxResult)).length + nMax,
    maxSolutionChars: nMax * d + nMax,
    problem(split: Split, index: number, seed: number): Problem {
      checkProblemArgs("arith", split, index);
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const e = drawExpression(c, drawer(seed, split, index, attempt));
        if (e === null || splitOf(e.prompt, c.evalEvery) !== split) continue;
        return {
          id: `arith/${split}/${seed}/${index}`,
          prompt: e.prompt,
          answer: String(e.chain[e.chain.length - 1]),
          solution: formatSolution(e.chain),
          difficulty: e.n,
        };
      }
      throw bad(
        "operandRange",
        `allows too few distinct expressions: no ${split} problem in ${MAX_ATTEMPTS} draws ` +
          `(seed ${seed}, index ${index}); widen operands, operandRange or ops`,
      );
    },
    reward(problem: Problem, completion: string): number {
      const ok = extractAnswer(completion) === problem.answer ? 1 : 0;
      return c.formatReward > 0 && arithWellFormed(problem.prompt, completion) ? ok + c.formatReward : ok;
    },
    format: (problem: Problem, completion: string): boolean => arithWellFormed(problem.prompt, completion),
  };
};
