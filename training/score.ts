/**
 * The program of `deno task reward`: score the completions of a file (rows with `completion` and
 * `ground_truth`) with weighted rewards, one JSON line per row: the way to debug a reward.
 */
import { Effect } from "effect";
import type { FlagTable } from "../core/flags.ts";
import { getPath, readRecords, RowError } from "../formats/dataset.ts";
import { resolveRewards } from "../formats/rewards.ts";
import type { CompletionInfo, Prompt, RewardRow, Scored } from "../tasks/reward.ts";

/** The flags of `deno task reward`. */
export const REWARD_FLAGS = {
  reward: {
    kind: "str",
    required: true,
    arg: "NAME[:W],...",
    help:
      "rewards and weights: math, exact, regex, format or a module path (./mine.ts), e.g. math:1,format:0.1",
  },
  data: {
    kind: "str",
    required: true,
    arg: "FILE",
    help: "rows with a completion and a ground truth: .jsonl, .json or .parquet",
  },
  rewardTimeout: { kind: "posnum", default: 5, arg: "SECONDS", help: "per reward call; past it: 0, counted" },
  rewardPattern: { kind: "str", arg: "PATTERN", help: "the regex reward's pattern (/body/flags or a body)" },
  completionKey: { kind: "str", default: "completion", arg: "PATH", help: "the completion's field" },
  answerKey: {
    kind: "str",
    arg: "PATH",
    help: "the answer's field (default: ground_truth, reward_model.ground_truth, solution or answer)",
  },
  limit: { kind: "posint", help: "score the first N rows" },
} as const satisfies FlagTable;

/** The values `scoreFile` needs (REWARD_FLAGS parsed). */
export interface ScoreArgs {
  readonly reward: string;
  readonly data: string;
  readonly rewardTimeout: number;
  readonly rewardPattern?: string;
  readonly completionKey: string;
  readonly answerKey?: string;
  readonly limit?: number;
}

/** The answer fields looked for, in order, when no --answer-key is given. */
export const SCORED_ANSWER_FIELDS = [
  "ground_truth",
  "reward_model.ground_truth",
  "solution",
  "answer",
] as const;

/** A scored file's row: the reward's input (a RewardRow), the completion and how it ended. */
export interface CompletionRow {
  readonly row: number;
  readonly input: RewardRow;
  readonly completion: string;
  readonly info: CompletionInfo;
}

const isPrompt = (v: unknown): v is Prompt => typeof v === "string" || Array.isArray(v);

/**
 * Read one record: the completion (a string), the ground truth (a string or number), how it ended
 * (`finished` true/false, else vLLM's `finish_reason` "stop" / "length", else finished), and the rest.
 */
export const completionRow = (
  file: string,
  row: number,
  rec: Record<string, unknown>,
  keys: { completionKey: string; answerKey?: string },
): CompletionRow => {
  const bad = (field: string, msg: string) =>
    new RowError({ file, row, field, message: `${file}: row ${row}: ${field}: ${msg}` });
  const c = getPath(rec, keys.completionKey);
  if (!c.found) throw bad(keys.completionKey, "is missing");
  if (typeof c.value !== "string") {
    throw bad(keys.completionKey, `expected a string, got ${JSON.stringify(c.value)}`);
  }
  const answerKey = keys.answerKey ?? SCORED_ANSWER_FIELDS.find((f) => getPath(rec, f).found);
  if (answerKey === undefined) {
    throw bad("ground_truth", `is missing (looked for ${SCORED_ANSWER_FIELDS.join(", ")}; see --answer-key)`);
  }
  const a = getPath(rec, answerKey);
  if (!a.found) throw bad(answerKey, "is missing");
  const gt = typeof a.value === "number" && Number.isFinite(a.value) ? String(a.value) : a.value;
  if (typeof gt !== "string") {
    throw bad(answerKey, `expected a string or a number, got ${JSON.stringify(a.value)}`);
  }
  const fin = rec.finished, reason = rec.finish_reason;
  if (fin !== undefined && typeof fin !== "boolean") {
    throw bad("finished", `expected true or false, got ${fin}`);
  }
  const finished = typeof fin === "boolean" ? fin : typeof reason === "string" ? reason === "stop" : true;
  const ds = rec.data_source, extra = rec.extra_info;
  const input: RewardRow = {
    groundTruth: gt,
    ...(isPrompt(rec.prompt) ? { prompt: rec.prompt } : {}),
    ...(typeof ds === "string" ? { dataSource: ds } : {}),
    ...(typeof extra === "object" && extra !== null && !Array.isArray(extra)
      ? { extraInfo: extra as Record<string, unknown> }
      : {}),
    raw: rec,
  };
  return { row, input, completion: c.value, info: { finished } };
};

/** One output line: row, score, the parts, and the failures when a reward failed. */
export const scoredJson = (row: number, s: Scored): Record<string, unknown> => ({
  row,
  score: s.score,
  parts: s.parts,
  ...(s.errors ? { errors: s.errors, failures: s.failures } : {}),
});

/** Score every row of a file; prints one JSON line per row, then a summary on stderr. */
export const scoreFile = (a: ScoreArgs) =>
  Effect.gen(function* () {
    const recs = yield* readRecords(a.data);
    const records = a.limit === undefined ? recs.records : recs.records.slice(0, a.limit);
    const rows = yield* Effect.try({
      try: () => records.map((r, i) => completionRow(a.data, i + 1, r, a)),
      catch: (e) => e,
    });
    const set = yield* Effect.tryPromise({
      try: () =>
        resolveRewards(a.reward, {
          timeoutMs: a.rewardTimeout * 1000,
          ...(a.rewardPattern !== undefined ? { pattern: a.rewardPattern } : {}),
        }),
      catch: (e) => e,
    });
    const scored = yield* Effect.tryPromise({
      try: async () => {
        const out: Scored[] = [];
        const chunk = 64;
        for (let i = 0; i < rows.length; i += chunk) {
          const part = await Promise.all(
            rows.slice(i, i + chunk).map((r) => set.score(r.input, r.completion, r.info)),
          );
          part.forEach((s, k) => console.log(JSON.stringify(scoredJson(rows[i + k].row, s))));
          out.push(...part);
        }
        return out;
      },
      catch: (e) => e,
    }).pipe(Effect.ensuring(Effect.sync(() => set.close())));
    const mean = scored.reduce((s, x) => s + x.score, 0) / Math.max(1, scored.length);
    const errors = scored.reduce((s, x) => s + x.errors, 0);
    console.error(
      `${a.data}: ${scored.length} rows scored; mean score ${mean.toFixed(4)}; reward/errors ${errors}`,
    );
    return scored;
  });
