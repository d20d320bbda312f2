/**
 * Prompt datasets: JSONL, a JSON array or Parquet (hyparquet, every codec of hyparquet-compressors), the row
 * schemas users already have (verl's, TRL's, or fields named by dotted paths) detected per file, rows
 * normalized to one type, and a seeded resumable sampler. (formats/generation.ts's prepareRows renders and
 * encodes rows and drops the overlong ones.)
 */
import { Effect } from "effect";
import { parquetReadObjects } from "hyparquet";
import { compressors } from "hyparquet-compressors";
import { ConfigError, FileFormatError, TaggedError } from "../core/errors.ts";
import { rngBits, splitmix32 } from "../core/rng.ts";
import { readBytes } from "../io/files.ts";
import type { Message, Prompt, RewardRow } from "../tasks/reward.ts";

export type { Message, Prompt } from "../tasks/reward.ts";

/** A row of a dataset is bad: names the file, the row (1-based, in file order) and the field. */
export class RowError extends TaggedError("RowError")<{
  readonly file: string;
  /** 1-based row number among the file's rows. */
  readonly row: number;
  /** The field as a path: `prompt`, `prompt[1].role`, `reward_model.ground_truth`. */
  readonly field: string;
  readonly message: string;
}> {}

/** The container formats read, by extension: `.jsonl` / `.ndjson`, `.json`, `.parquet`. */
export type DataFormat = "jsonl" | "json" | "parquet";

/**
 * The row schemas: `verl` (`prompt` messages, `reward_model.ground_truth`, `data_source`, `extra_info`),
 * `trl` (`prompt` a string or messages; the answer in `solution`, `answer` or `ground_truth`), `custom`
 * (fields named by `promptKey` / `answerKey`).
 */
export type RowSchema = "verl" | "trl" | "custom";

/** One row as every consumer sees it (a RewardRow with its number and the raw record). */
export interface Row extends RewardRow {
  /** 1-based row number in the file. */
  readonly row: number;
  /** The prompt: a string (sent as a user message when a chat template is used) or chat messages. */
  readonly prompt: Prompt;
  /** The reference answer (numbers are written as strings). */
  readonly groundTruth: string;
  /** verl's `data_source` (used to break metrics down); absent when the row has none. */
  readonly dataSource?: string;
  /** verl's `extra_info` object, when present. */
  readonly extraInfo?: Readonly<Record<string, unknown>>;
  /** The record as read (Parquet INT64 values as numbers where they fit, else strings). */
  readonly raw: Readonly<Record<string, unknown>>;
}

/** A dataset read from one file. */
export interface Dataset {
  /** The file read. */
  readonly file: string;
  /** Its container format. */
  readonly format: DataFormat;
  /** The row schema detected from row 1 (or `custom` with --prompt-key / --answer-key). */
  readonly schema: RowSchema;
  /** Where the prompt and the answer were read from (dotted paths). */
  readonly promptPath: string;
  /** The answer's dotted path (see `promptPath`). */
  readonly answerPath: string;
  /** Every row, checked, in file order. */
  readonly rows: readonly Row[];
}

/** How to read rows: dotted paths overriding the detected fields. */
export interface DatasetOptions {
  /** The prompt's field, e.g. `question` or `input.text` (default: `prompt`). */
  readonly promptKey?: string;
  /** The answer's field (default: detected: `reward_model.ground_truth`, `solution`, `answer`, `ground_truth`). */
  readonly answerKey?: string;
}

type Json = Record<string, unknown>;
const isObj = (x: unknown): x is Json => typeof x === "object" && x !== null && !Array.isArray(x);

/** The format of a data file from its extension; any other extension is a ConfigError naming `field`. */
export const dataFormatOf = (file: string, field = "--data"): DataFormat => {
  const f = file.toLowerCase();
  if (f.endsWith(".jsonl") || f.endsWith(".ndjson")) return "jsonl";
  if (f.endsWith(".json")) return "json";
  if (f.endsWith(".parquet")) return "parquet";
  throw new ConfigError({
    source: file,
    field,
    message: `${field} ${file}: unknown data format; expected a .jsonl, .json or .parquet file`,
  });
};

/** The raw records of a file with, for JSONL, the line of each. */
export interface Records {
  readonly format: DataFormat;
  readonly records: readonly Json[];
  /** 1-based line of each record (JSONL and JSON Lines in .json files). */
  readonly lines?: readonly number[];
}

const ff = (file: string, message: string) => new FileFormatError({ file, message: `${file}: ${message}` });

/** The value with Parquet's INT64 bigints as numbers (or strings where a number cannot hold them), Dates as ISO. */
const plain = (v: unknown): unknown => {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map(plain);
  if (isObj(v) && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  }
  return v;
};

/** Parse JSON Lines text; a broken line is a FileFormatError naming the file and the line. */
export const parseJsonLines = (file: string, text: string): { records: Json[]; lines: number[] } => {
  const records: Json[] = [], lines: number[] = [];
  const all = text.split("\n");
  for (let i = 0; i < all.length; i++) {
    const line = all[i].trim();
    if (line === "") continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw ff(file, `line ${i + 1} is not valid JSON (${(e as Error).message}): ${clip(line)}`);
    }
    if (!isObj(v)) {
      throw new RowError({
        file,
        row: records.length + 1,
        field: "(row)",
        message: `${file}: row ${records.length + 1} (line ${i + 1}): expected a JSON object, got ${
          clip(JSON.stringify(v))
        }`,
      });
    }
    records.push(v), lines.push(i + 1);
  }
  return { records, lines };
};

/** Shorten a value's JSON for a message (undefined reads "undefined"). */
const clip = (s: string | undefined, n = 80) => {
  const t = s ?? "undefined";
  return t.length > n ? `${t.slice(0, n)}...` : t;
};

/** Parse the bytes of a data file of the given format into records (pure but for Parquet's async reader). */
export const parseRecords = async (file: string, format: DataFormat, bytes: Uint8Array): Promise<Records> => {
  if (format === "parquet") {
    const magic = (at: number) =>
      bytes.length >= 8 && String.fromCharCode(...bytes.subarray(at, at + 4)) === "PAR1";
    if (!magic(0) || !magic(bytes.length - 4)) {
      throw ff(file, "not a Parquet file (no PAR1 magic at its start and end)");
    }
    let rows: Json[];
    try {
      const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
      rows = await parquetReadObjects({ file: buf, compressors });
    } catch (e) {
      throw ff(file, `cannot read this Parquet file (${(e as Error).message})`);
    }
    return { format, records: rows.map((r) => plain(r) as Json) };
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw ff(file, `not UTF-8 text, so not a ${format === "json" ? "JSON" : "JSON Lines"} file`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (format === "jsonl") return { format, ...parseJsonLines(file, text) };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    // A .json file may hold JSON Lines (what `datasets`' to_json writes): read it so when the first line is
    // an object by itself.
    const first = text.trimStart().split("\n", 1)[0];
    let firstIsObject = false;
    try {
      firstIsObject = isObj(JSON.parse(first)) && first.trim() !== text.trim();
    } catch { /* not JSON Lines either */ }
    if (firstIsObject) return { format, ...parseJsonLines(file, text) };
    throw ff(file, `not valid JSON (${(e as Error).message}); expected an array of row objects`);
  }
  if (!Array.isArray(v)) {
    throw ff(file, `expected a JSON array of row objects, got ${v === null ? "null" : typeof v}`);
  }
  v.forEach((r, i) => {
    if (!isObj(r)) {
      throw new RowError({
        file,
        row: i + 1,
        field: "(row)",
        message: `${file}: row ${i + 1}: expected a JSON object, got ${clip(JSON.stringify(r))}`,
      });
    }
  });
  return { format, records: v as Json[] };
};

/** Read a data file's records; its format comes from its extension. */
export const readRecords = (
  file: string,
  field = "--data",
): Effect.Effect<Records, FileFormatError | ConfigError | RowError> =>
  Effect.gen(function* () {
    const format = yield* Effect.try({
      try: () => dataFormatOf(file, field),
      catch: (e) => e as ConfigError,
    });
    const bytes = yield* readBytes(file);
    return yield* Effect.tryPromise({
      try: () => parseRecords(file, format, bytes),
      catch: (e) => e as FileFormatError | RowError,
    });
  });

/** The value at a dotted path (`reward_model.ground_truth`, `messages.0.content`); a literal key wins. */
export const getPath = (obj: unknown, path: string): { found: boolean; value?: unknown } => {
  if (path === "") return { found: true, value: obj };
  if (isObj(obj) && Object.hasOwn(obj, path)) return { found: true, value: obj[path] };
  const dot = path.indexOf(".");
  const head = dot < 0 ? path : path.slice(0, dot), rest = dot < 0 ? "" : path.slice(dot + 1);
  let next: unknown;
  if (isObj(obj) && Object.hasOwn(obj, head)) next = obj[head];
  else if (Array.isArray(obj) && /^\d+$/.test(head) && Number(head) < obj.length) next = obj[Number(head)];
  else return { found: false };
  return getPath(next, rest);
};

/** TRL's answer fields, in the order they are looked for. */
export const TRL_ANSWER_FIELDS = ["solution", "answer", "ground_truth"] as const;

/** The schema and field paths of a file, from its first record and the options. */
export const detectSchema = (
  file: string,
  first: Json,
  opts: DatasetOptions = {},
): { schema: RowSchema; promptPath: string; answerPath: string } => {
  const promptPath = opts.promptKey ?? "prompt";
  const fields = Object.keys(first).join(", ") || "none";
  if (!getPath(first, promptPath).found) {
    throw new RowError({
      file,
      row: 1,
      field: promptPath,
      message: `${file}: row 1: no ${JSON.stringify(promptPath)} field (its fields: ${fields}); ` +
        "name the prompt's field with --prompt-key (a dotted path such as question or input.text)",
    });
  }
  if (opts.answerKey !== undefined) {
    if (!getPath(first, opts.answerKey).found) {
      throw new RowError({
        file,
        row: 1,
        field: opts.answerKey,
        message: `${file}: row 1: no ${JSON.stringify(opts.answerKey)} field (its fields: ${fields})`,
      });
    }
    return { schema: "custom", promptPath, answerPath: opts.answerKey };
  }
  const custom = opts.promptKey !== undefined;
  if (getPath(first, "reward_model.ground_truth").found) {
    return { schema: custom ? "custom" : "verl", promptPath, answerPath: "reward_model.ground_truth" };
  }
  const trl = TRL_ANSWER_FIELDS.find((f) => getPath(first, f).found);
  if (trl) return { schema: custom ? "custom" : "trl", promptPath, answerPath: trl };
  throw new RowError({
    file,
    row: 1,
    field: "reward_model.ground_truth",
    message: `${file}: row 1: no answer field: expected verl's reward_model.ground_truth or TRL's ` +
      `${TRL_ANSWER_FIELDS.join(", ")} (its fields: ${fields}); name it with --answer-key`,
  });
};

/** A message's content: a string, or a list of text parts ({type: "text", text}) joined. */
const contentOf = (v: unknown): string | undefined => {
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) return undefined;
  let out = "";
  for (const p of v) {
    if (isObj(p) && p.type === "text" && typeof p.text === "string") out += p.text;
    else return undefined;
  }
  return out;
};

/**
 * Check and normalize a prompt value read from `field` of row `row`: a non-empty string, or a non-empty list of
 * {role, content} messages (content a string or a list of text parts, joined). A RowError names the field
 * (`prompt`, `prompt[1].role`) and `where` (`data.jsonl: row 3 (line 4)`) starts its message.
 */
export const toPrompt = (file: string, row: number, field: string, value: unknown, where: string): Prompt => {
  const bad = (f: string, msg: string) =>
    new RowError({ file, row, field: f, message: `${where}: ${f}: ${msg}` });
  if (value === null || value === undefined) throw bad(field, "is missing");
  if (typeof value === "string") {
    if (value.trim() === "") throw bad(field, "is empty");
    return value;
  }
  if (Array.isArray(value)) {
    if (value.length === 0) throw bad(field, "is an empty list of messages");
    return value.map((m, i): Message => {
      const f = `${field}[${i}]`;
      if (!isObj(m)) throw bad(f, `expected a {role, content} message, got ${clip(JSON.stringify(m))}`);
      if (typeof m.role !== "string" || m.role === "") {
        throw bad(`${f}.role`, `expected a non-empty string, got ${clip(JSON.stringify(m.role))}`);
      }
      const content = contentOf(m.content);
      if (content === undefined) {
        throw bad(
          `${f}.content`,
          `expected a string (or a list of text parts), got ${clip(JSON.stringify(m.content ?? null))}`,
        );
      }
      return { ...m, role: m.role, content };
    });
  }
  throw bad(
    field,
    `expected a string or a list of {role, content} messages, got ${clip(JSON.stringify(value))}`,
  );
};

/** Check and normalize one record into a Row (a RowError names the field). */
export const toRow = (
  file: string,
  row: number,
  record: Json,
  paths: { promptPath: string; answerPath: string },
  line?: number,
): Row => {
  const where = `${file}: row ${row}${line !== undefined ? ` (line ${line})` : ""}`;
  const bad = (field: string, msg: string) =>
    new RowError({ file, row, field, message: `${where}: ${field}: ${msg}` });
  const p = getPath(record, paths.promptPath);
  if (!p.found) throw bad(paths.promptPath, "is missing");
  const prompt = toPrompt(file, row, paths.promptPath, p.value, where);
  const a = getPath(record, paths.answerPath);
  if (!a.found || a.value === null || a.value === undefined) throw bad(paths.answerPath, "is missing");
  let groundTruth: string;
  if (typeof a.value === "string") groundTruth = a.value;
  else if (typeof a.value === "number" && Number.isFinite(a.value)) groundTruth = String(a.value);
  else {
    throw bad(paths.answerPath, `expected a string or a number, got ${clip(JSON.stringify(a.value))}`);
  }
  if (groundTruth.trim() === "") throw bad(paths.answerPath, "is empty");
  const ds = record.data_source;
  if (ds !== undefined && ds !== null && typeof ds !== "string") {
    throw bad("data_source", `expected a string, got ${clip(JSON.stringify(ds))}`);
  }
  const extra = record.extra_info;
  if (extra !== undefined && extra !== null && !isObj(extra)) {
    throw bad("extra_info", `expected an object, got ${clip(JSON.stringify(extra))}`);
  }
  return {
    row,
    prompt,
    groundTruth,
    ...(typeof ds === "string" ? { dataSource: ds } : {}),
    ...(isObj(extra) ? { extraInfo: extra } : {}),
    raw: record,
  };
};

/** Rows from a file's records: the schema detected from the first, every row checked. */
export const rowsOf = (file: string, recs: Records, opts: DatasetOptions = {}): Dataset => {
  if (recs.records.length === 0) throw ff(file, "holds no rows");
  const paths = detectSchema(file, recs.records[0], opts);
  const rows = recs.records.map((r, i) => toRow(file, i + 1, r, paths, recs.lines?.[i]));
  return { file, format: recs.format, ...paths, rows };
};

/** Read a dataset file: records, schema, rows. */
export const readDataset = (
  file: string,
  opts: DatasetOptions & { readonly field?: string } = {},
): Effect.Effect<Dataset, FileFormatError | ConfigError | RowError> =>
  Effect.flatMap(
    readRecords(file, opts.field),
    (recs) =>
      Effect.try({ try: () => rowsOf(file, recs, opts), catch: (e) => e as FileFormatError | RowError }),
  );

/** `readDataset` as a Promise (rejects with its error). */
export const loadDataset = (file: string, opts: DatasetOptions = {}): Promise<Dataset> =>
  Effect.runPromise(readDataset(file, opts));

/** The order of `n` rows in epoch `epoch` under `seed`: a Fisher-Yates shuffle, a pure function of the three. */
export const epochOrder = (n: number, seed: number, epoch: number): Uint32Array => {
  // One 32-bit seed per (seed, epoch) from the counter-based generator, then SplitMix32 for the swaps.
  const next = splitmix32(rngBits({ seed, step: epoch, sequence: 0x64617461, position: 0 })[0]);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor((next() / 2 ** 32) * (i + 1));
    const t = order[i];
    order[i] = order[j], order[j] = t;
  }
  return order;
};

/** Rows in a seeded order, cycled: the row at draw `index` is a pure function of (seed, index). */
export interface Sampler<R> {
  /** Rows per epoch. */
  readonly size: number;
  /** The seed of the shuffles. */
  readonly seed: number;
  /** The row of draw `index` (0, 1, 2, ...): epoch floor(index / size), reshuffled every epoch. */
  at(index: number): R;
  /** `count` consecutive draws from `start`. */
  batch(start: number, count: number): R[];
}

/** A sampler over `rows` (at least one) under `seed`: each epoch a new shuffle; resume by the draw index. */
export const makeSampler = <R>(rows: readonly R[], seed: number): Sampler<R> => {
  if (rows.length === 0) throw new RangeError("makeSampler: no rows to sample from");
  const n = rows.length;
  let cached: { epoch: number; order: Uint32Array } | undefined;
  const at = (index: number): R => {
    if (!Number.isSafeInteger(index) || index < 0) {
      throw new RangeError(`sampler: draw index ${index} must be a non-negative integer`);
    }
    const epoch = Math.floor(index / n);
    if (cached?.epoch !== epoch) cached = { epoch, order: epochOrder(n, seed, epoch) };
    return rows[cached.order[index % n]];
  };
  return {
    size: n,
    seed,
    at,
    batch: (start, count) => Array.from({ length: count }, (_, i) => at(start + i)),
  };
};
