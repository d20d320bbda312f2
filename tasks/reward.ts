/**
 * The Reward interface: (row, completion text, how the completion ended) -> a number, or {score, ...parts};
 * weighted sums of rewards (`math:1,format:0.1`), and scoring that survives a reward which throws, returns a
 * non-finite value or runs past its timeout: that reward scores 0 for the row and is counted as an error.
 */
import { ConfigError } from "../core/errors.ts";

/** A chat message; fields beyond role and content (tool calls...) pass through to the chat template. */
export interface Message {
  /** `system`, `user`, `assistant` (or any role the template knows). */
  readonly role: string;
  /** The message's text. */
  readonly content: string;
  /** Any other field, passed to the template as it is. */
  readonly [field: string]: unknown;
}

/** A prompt: text, or chat messages. */
export type Prompt = string | readonly Message[];

/** What a reward sees of a dataset row (formats/dataset.ts's Row is one). */
export interface RewardRow {
  /** The row's prompt, when the row came from a dataset. */
  readonly prompt?: Prompt;
  /** The reference answer. */
  readonly groundTruth: string;
  /** verl's `data_source` (verl-style `compute_score` rewards take it first). */
  readonly dataSource?: string;
  /** verl's `extra_info`. */
  readonly extraInfo?: Readonly<Record<string, unknown>>;
  /** The record as read from the file. */
  readonly raw?: Readonly<Record<string, unknown>>;
}

/** How a completion ended. */
export interface CompletionInfo {
  /** The completion ended with a stop token (an eos), rather than being cut at the length limit. */
  readonly finished: boolean;
  /** The stop id it ended with, when finished. */
  readonly stopId?: number;
  /** Number of completion tokens, when known. */
  readonly tokens?: number;
}

/** What a reward returns: a score, or a score with named parts (numbers or booleans) that are logged. */
export type RewardValue = number | { readonly score: number; readonly [part: string]: unknown };

/** A reward function; async allowed. */
export type RewardFn = (
  row: RewardRow,
  completion: string,
  info: CompletionInfo,
) => RewardValue | Promise<RewardValue>;

/** A named reward. `close` frees what it holds (a worker). */
export interface Reward {
  /** Its key in `Scored.parts`: `<name>` for its score, `<name>/<part>` for its parts. */
  readonly name: string;
  /** The function. */
  readonly score: RewardFn;
  /**
   * The reward enforces the timeout itself, per call from when the call starts running (a worker reward
   * queues calls and kills a worker process that runs past it); scoring then does not race it.
   */
  readonly selfTimed?: boolean;
  /** Free what the reward holds (its workers); absent for plain functions. */
  readonly close?: () => void;
}

/** A reward and its weight in the sum. */
export interface WeightedReward {
  /** The reward. */
  readonly reward: Reward;
  /** Its weight: the total is the sum of weight * score. */
  readonly weight: number;
}

/** The score of one completion. */
export interface Scored {
  /** Sum of weight * score over the rewards (a failed reward adds 0). */
  readonly score: number;
  /**
   * Per reward: `<name>` its unweighted score (0 when it failed), `<name>/<part>` its named parts (booleans
   * as 0/1).
   */
  readonly parts: Readonly<Record<string, number>>;
  /** How many rewards failed on this completion (thrown, non-finite, timed out): `reward/errors`. */
  readonly errors: number;
  /** Why, one line per failure. */
  readonly failures: readonly string[];
}

/** One item of a reward spec. */
export interface RewardSpecItem {
  /** A built-in's name or a module path. */
  readonly name: string;
  /** Its weight (default 1). */
  readonly weight: number;
}

/**
 * Parse `math:1,format:0.1` (weights default to 1; the weight is what follows the last colon when that is a
 * number, so `./r.ts:2` and `C:\r.ts` both read). An empty item or a non-finite weight is a ConfigError.
 */
export const parseRewardSpec = (spec: string, field = "--reward"): RewardSpecItem[] => {
  const fail = (message: string) =>
    new ConfigError({ source: "flags", field, message: `${field}: ${message}` });
  const items = spec.split(",").map((s) => s.trim());
  if (items.length === 0 || items.some((s) => s === "")) {
    throw fail(`expected NAME[:WEIGHT],... (e.g. math:1,format:0.1), got ${JSON.stringify(spec)}`);
  }
  return items.map((item) => {
    const colon = item.lastIndexOf(":");
    const tail = colon < 0 ? "" : item.slice(colon + 1).trim();
    if (colon > 0 && /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(tail)) {
      const weight = Number(tail);
      if (!Number.isFinite(weight)) throw fail(`${JSON.stringify(item)}: the weight must be finite`);
      return { name: item.slice(0, colon).trim(), weight };
    }
    if (colon === item.length - 1) throw fail(`${JSON.stringify(item)}: a weight is missing after ":"`);
    return { name: item, weight: 1 };
  });
};

/** A reward's value checked: the score and numeric parts, or why it is not a valid value. */
export const checkRewardValue = (
  v: unknown,
): { ok: true; score: number; parts: Record<string, number> } | { ok: false; why: string } => {
  if (typeof v === "boolean") return { ok: true, score: v ? 1 : 0, parts: {} };
  if (typeof v === "number") {
    return Number.isFinite(v) ? { ok: true, score: v, parts: {} } : { ok: false, why: `returned ${v}` };
  }
  if (typeof v === "object" && v !== null && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    const s = typeof o.score === "boolean" ? (o.score ? 1 : 0) : o.score;
    if (typeof s !== "number") return { ok: false, why: `returned an object without a numeric score` };
    if (!Number.isFinite(s)) return { ok: false, why: `returned score ${s}` };
    const parts: Record<string, number> = {};
    for (const [k, x] of Object.entries(o)) {
      if (k === "score") continue;
      // Non-numeric parts (a predicted string...) are not metrics: left out; non-finite ones too.
      if (typeof x === "number" && Number.isFinite(x)) parts[k] = x;
      else if (typeof x === "boolean") parts[k] = x ? 1 : 0;
    }
    return { ok: true, score: s, parts };
  }
  return { ok: false, why: `returned ${v === null ? "null" : typeof v}, expected a number or {score, ...}` };
};

/** A reward call ran past its timeout. */
export class RewardTimeout extends Error {
  /** A timeout after `ms` milliseconds. */
  constructor(readonly ms: number) {
    super(`timed out after ${ms} ms`);
  }
}

/**
 * Settle `p` within `ms`, else reject with RewardTimeout (the timer is cleared either way). This stops only
 * waiting: a synchronous loop cannot be interrupted from its own thread (worker rewards kill their processes).
 */
export const withTimeout = <T>(p: Promise<T>, ms: number): Promise<T> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RewardTimeout(ms)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
};

/** Options of scoring. */
export interface ScoreOptions {
  /** Per reward call, in milliseconds (default 5000). */
  readonly timeoutMs?: number;
}

/** The default per-call reward timeout, in milliseconds. */
export const DEFAULT_REWARD_TIMEOUT_MS = 5000;

/** Score one completion with weighted rewards; a failing reward scores 0 and is counted in `errors`. */
export const scoreCompletion = async (
  rewards: readonly WeightedReward[],
  row: RewardRow,
  completion: string,
  info: CompletionInfo,
  opts: ScoreOptions = {},
): Promise<Scored> => {
  const ms = opts.timeoutMs ?? DEFAULT_REWARD_TIMEOUT_MS;
  const results = await Promise.all(rewards.map(async ({ reward }) => {
    try {
      const call = Promise.resolve().then(() => reward.score(row, completion, info));
      const v = await (reward.selfTimed ? call : withTimeout(call, ms));
      const c = checkRewardValue(v);
      return c.ok ? c : { ok: false as const, why: `${reward.name}: ${c.why}` };
    } catch (e) {
      const m = e instanceof Error ? e.message : String(e);
      return { ok: false as const, why: `${reward.name}: ${m.split("\n")[0]}` };
    }
  }));
  let score = 0, errors = 0;
  const parts: Record<string, number> = {}, failures: string[] = [];
  results.forEach((r, i) => {
    const { reward, weight } = rewards[i];
    if (!r.ok) {
      errors++, failures.push(r.why);
      parts[reward.name] = 0;
      return;
    }
    score += weight * r.score;
    parts[reward.name] = r.score;
    for (const [k, x] of Object.entries(r.parts)) {
      parts[`${reward.name}/${k}`] = x;
    }
  });
  return { score, parts, errors, failures };
};
