/** String rewriting: cancel adjacent equal letters ("abccba=" -> "abba,aa,_|_."), one rewrite per step. */
import { ConfigError } from "../core/errors.ts";
import { checkProblemArgs, drawer, isNat, textHash } from "./draw.ts";
import type { Problem, Split, Task } from "./task.ts";

/** Separates the intermediate words of the chain. */
export const STEP_SEP = ",";
/** Comes after the chain; the final word follows it. */
export const FINAL_MARK = "|";
/** Ends a complete response (the task's `stop`). */
export const REWRITE_END = ".";
/** Stands for the empty word. */
export const EMPTY = "_";

/** Knobs of `rewriteTask`. */
export interface RewriteOptions {
  /** The letters words are made of (default "abc"; 2 to 8 distinct lowercase letters). */
  readonly letters?: string;
  /** Fewest and most letters of the irreducible core, inclusive (default [0, 3]). */
  readonly core?: readonly [number, number];
  /** Fewest and most cancellable pairs inserted, inclusive (default [1, 3]); each costs one rewrite step. */
  readonly pairs?: readonly [number, number];
  /** One word in `evalEvery` (by a fixed hash of its text) belongs to eval, the rest to train (default 8). */
  readonly evalEvery?: number;
}

/** The options with every default filled in. */
export type RewriteConfig = { readonly [K in keyof RewriteOptions]-?: NonNullable<RewriteOptions[K]> };

const DEFAULTS: RewriteConfig = { letters: "abc", core: [0, 3], pairs: [1, 3], evalEvery: 8 };

const bad = (field: string, message: string): ConfigError =>
  new ConfigError({ source: "rewriteTask", field, message: `rewriteTask: ${field} ${message}` });

/** Fill in defaults and check the options; a bad value is a ConfigError naming the field. */
export const rewriteConfig = (o: RewriteOptions = {}): RewriteConfig => {
  const c: RewriteConfig = { ...DEFAULTS, ...o };
  if (!/^[a-z]{2,8}$/.test(c.letters) || new Set(c.letters).size !== c.letters.length) {
    throw bad("letters", `is ${JSON.stringify(c.letters)}; expected 2 to 8 distinct lowercase letters`);
  }
  const range = (field: "core" | "pairs", [lo, hi]: readonly [number, number], min: number, max: number) => {
    if (!isNat(lo) || !isNat(hi) || lo < min || hi < lo || hi > max) {
      throw bad(field, `is [${lo},${hi}]; expected integers ${min} <= min <= max <= ${max}`);
    }
  };
  range("core", c.core, 0, 8);
  range("pairs", c.pairs, 1, 6);
  if (!isNat(c.evalEvery) || c.evalEvery < 2) {
    throw bad("evalEvery", `is ${c.evalEvery}; expected an integer >= 2`);
  }
  return c;
};

/** One rewrite: the word with its leftmost pair of equal adjacent letters removed; null when there is none. */
export const rewriteOnce = (w: string): string | null => {
  for (let i = 0; i + 1 < w.length; i++) if (w[i] === w[i + 1]) return w.slice(0, i) + w.slice(i + 2);
  return null;
};

/** Every word of the rewriting, after each step, until no pair is left (the input itself not included). */
export const rewriteChain = (w: string): string[] => {
  const out: string[] = [];
  for (let cur = rewriteOnce(w); cur !== null; cur = rewriteOnce(cur)) out.push(cur);
  return out;
};

const show = (w: string): string => (w === "" ? EMPTY : w);

/** The worked response for a word: the chain of rewrites, then the final word: "abba,aa,_|_.". */
export const rewriteSolution = (word: string): string => {
  const chain = rewriteChain(word);
  return chain.map(show).join(STEP_SEP) + FINAL_MARK + show(chain[chain.length - 1] ?? word) + REWRITE_END;
};

/**
 * The final word of a completion: the response ends at its first `.` (text after it is ignored), and the answer
 * is what follows the single `|` before that point; undefined otherwise.
 */
export const rewriteAnswer = (completion: string): string | undefined => {
  const e = completion.indexOf(REWRITE_END);
  if (e < 0) return undefined;
  const parts = completion.slice(0, e).split(FINAL_MARK);
  return parts.length === 2 ? parts[1] : undefined;
};

/** Whether a completion reads `w1,w2,...|w.` (words of the task's letters or `_`), right or wrong. */
export const rewriteWellFormed = (letters: string, completion: string): boolean => {
  const e = completion.indexOf(REWRITE_END);
  if (e < 0) return false;
  const word = `(?:[${letters}]+|${EMPTY})`;
  return new RegExp(`^${word}(?:${STEP_SEP}${word})*\\${FINAL_MARK}${word}\\.$`).test(
    completion.slice(0, e + 1),
  );
};

const MAX_ATTEMPTS = 4096;

/**
 * The rewriting task, a second domain beside arithmetic. A word over `letters` is rewritten by cancelling its
 * leftmost pair of equal adjacent letters, step by step, until none is left; the solution writes every
 * intermediate word (the empty word as `_`), then the final word after `|`, then `.`. The cancellation system is
 * confluent, so the final word does not depend on the order; the leftmost order makes each step a local,
 * checkable copy. Words are drawn as an irreducible core (no equal neighbours) with 1-3 pairs `xx` inserted at
 * random places; the number of pairs is the number of steps and the `difficulty`.
 *
 * Problems are a pure function of (seed, split, index) through Philox4x32; a word belongs to eval when a fixed
 * hash of its prompt is 0 modulo `evalEvery`, else to train (draws that land in the other split are redrawn), so
 * the splits are disjoint for every seed. Reward: 1 when the text between the single `|` and the first `.` equals
 * the final word exactly, else 0.
 */
export const rewriteTask = (options: RewriteOptions = {}): Task => {
  const c = rewriteConfig(options);
  const maxLen = c.core[1] + 2 * c.pairs[1];
  // The chain: words of length maxLen - 2, maxLen - 4, ... (at least 1 char each), commas, `|`, the answer, `.`.
  let chainChars = 0;
  for (let k = 1; k <= c.pairs[1]; k++) chainChars += Math.max(1, maxLen - 2 * k) + 1;
  return {
    name: "rewrite",
    description:
      `cancel adjacent equal letters of words over "${c.letters}" (a core of ${c.core[0]}-${
        c.core[1]
      } letters with ${c.pairs[0]}-${c.pairs[1]} pairs inserted), leftmost first, writing each step ` +
      `"w1,w2,...|final."; the empty word is "_"; reward 1 for the exact final word`,
    alphabet: c.letters + "=" + STEP_SEP + FINAL_MARK + REWRITE_END + EMPTY,
    stop: REWRITE_END,
    maxPromptChars: maxLen + 1,
    maxSolutionChars: chainChars + Math.max(1, c.core[1]) + 1,
    problem(split: Split, index: number, seed: number): Problem {
      checkProblemArgs("rewrite", split, index);
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const int = drawer(seed, split, index, attempt);
        const letter = (not?: string) => {
          const pool = not === undefined ? c.letters : c.letters.replace(not, "");
          return pool[int(0, pool.length - 1)];
        };
        let word = "";
        const n = int(c.core[0], c.core[1]);
        while (word.length < n) word += letter(word[word.length - 1]);
        const core = word;
        const k = int(c.pairs[0], c.pairs[1]);
        for (let j = 0; j < k; j++) {
          const at = int(0, word.length), x = letter();
          word = word.slice(0, at) + x + x + word.slice(at);
        }
        const prompt = word + "=";
        if (textHash(prompt) % c.evalEvery === 0 ? split !== "eval" : split !== "train") continue;
        return {
          id: `rewrite/${split}/${seed}/${index}`,
          prompt,
          answer: show(core),
          solution: rewriteSolution(word),
          difficulty: k,
        };
      }
      throw bad("letters", `allow too few distinct words: no ${split} problem in ${MAX_ATTEMPTS} draws`);
    },
    reward: (problem: Problem, completion: string): number =>
      rewriteAnswer(completion) === problem.answer ? 1 : 0,
    format: (_problem: Problem, completion: string): boolean => rewriteWellFormed(c.letters, completion),
  };
};
