/**
 * The built-in rewards: `math` (the final boxed answer against the reference, by value and symbolically),
 * `exact` (the final answer equals the reference as text), `regex` (the completion matches a pattern) and
 * `format` (the completion ended with a stop token and holds an answer).
 */
import { ConfigError } from "../core/errors.ts";
import { extractAnswer, gradeMath, lastBoxed } from "./math_grade.ts";
import type { CompletionInfo, Reward, RewardFn, RewardRow, RewardValue } from "./reward.ts";

/** `math`: 1 when the final answer equals the reference (tasks/math_grade.ts), else 0; part `extracted`. */
export const mathScore: RewardFn = (row: RewardRow, completion: string): RewardValue => {
  const g = gradeMath(completion, row.groundTruth);
  return { score: g.correct ? 1 : 0, extracted: g.extracted !== undefined };
};

/** The text a completion answers with: its final answer when it has one, else all of it, trimmed. */
const answerText = (completion: string): string => extractAnswer(completion)?.answer ?? completion.trim();

/** `exact`: 1 when the final answer (or the whole trimmed completion) is the reference, trimmed, exactly. */
export const exactScore: RewardFn = (row: RewardRow, completion: string): RewardValue => {
  const ref = row.groundTruth.includes("\\boxed")
    ? lastBoxed(row.groundTruth) ?? row.groundTruth
    : row.groundTruth;
  return answerText(completion) === ref.trim() ? 1 : 0;
};

/** `format`: 1 when the completion ended with a stop token and holds an answer; parts `stopped`, `answer`. */
export const formatScore: RewardFn = (
  _row: RewardRow,
  completion: string,
  info: CompletionInfo,
): RewardValue => {
  const answer = extractAnswer(completion) !== undefined;
  return { score: info.finished && answer ? 1 : 0, stopped: info.finished, answer };
};

/**
 * A pattern from a flag: `/body/flags` (JavaScript flags) or a plain body (no flags). An invalid pattern is
 * a ConfigError naming `field`.
 */
export const parsePattern = (pattern: string, field = "--reward-pattern"): RegExp => {
  const m = /^\/(.*)\/([dgimsuyv]*)$/s.exec(pattern);
  try {
    return m ? new RegExp(m[1], m[2].replace(/[gy]/g, "")) : new RegExp(pattern);
  } catch (e) {
    throw new ConfigError({
      source: "flags",
      field,
      message: `${field}: ${JSON.stringify(pattern)} is not a valid regular expression (${
        (e as Error).message
      })`,
    });
  }
};

/** `regex`: 1 when the completion matches `pattern`, else 0. The pattern is the user's: keep it linear. */
export const regexReward = (pattern: RegExp): Reward => ({
  name: "regex",
  score: (_row, completion) => (pattern.test(completion) ? 1 : 0),
});

/** `regexReward`'s score function from the pattern's text (the form a worker is given: formats/rewards.ts). */
export const regexScorer = (pattern: string): Reward["score"] => regexReward(parsePattern(pattern)).score;

/** The names of the built-in rewards. */
export const BUILTIN_REWARDS = ["math", "exact", "regex", "format"] as const;
/** A built-in reward's name. */
export type BuiltinReward = typeof BUILTIN_REWARDS[number];

/** Options of the built-ins. */
export interface BuiltinOptions {
  /** The pattern of `regex` (required for it). */
  readonly pattern?: RegExp;
}

/** A built-in reward by name (run in this thread; formats/rewards.ts runs `math` in a worker). */
export const builtinReward = (name: BuiltinReward, opts: BuiltinOptions = {}): Reward => {
  switch (name) {
    case "math":
      return { name, score: mathScore };
    case "exact":
      return { name, score: exactScore };
    case "format":
      return { name, score: formatScore };
    case "regex":
      if (!opts.pattern) {
        throw new ConfigError({
          source: "flags",
          field: "--reward-pattern",
          message: "--reward regex needs --reward-pattern PATTERN (the completion must match it)",
        });
      }
      return regexReward(opts.pattern);
  }
};

/** Whether a reward name is a built-in. */
export const isBuiltinReward = (name: string): name is BuiltinReward =>
  (BUILTIN_REWARDS as readonly string[]).includes(name);
