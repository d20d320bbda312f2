/**
 * Test helper: a random tiny Qwen3 with Qwen3's real vocabulary (151,936 rows) around the real Qwen3 tokenizer
 * (tests/qwen3_folder.ts), and prompt datasets in verl's format as JSONL and as snappy Parquet, written by the
 * test into a temporary folder.
 */
import { parquetWriteBuffer } from "hyparquet-writer";
import { type DecoderConfig, tinyConfig } from "../policies/config.ts";
import { writeQwen3Folder } from "./qwen3_folder.ts";
import { writeRandomModel } from "./model_util.ts";

/** Qwen3's vocab_size: 151,936 rows of unembedding (the tokenizer has 151,669 ids). */
export const QWEN3_VOCAB = 151936;

/** tinyConfig's shape (d = 32, 2 layers) with Qwen3's real vocabulary and rope theta (override any field). */
export const tinyQwen3 = (over: Partial<DecoderConfig> = {}): DecoderConfig =>
  tinyConfig({ vocabSize: QWEN3_VOCAB, ropeTheta: 1000000, ...over });

/** Write a random model of `config` (seed `seed`) with the real Qwen3 tokenizer into `dir` (or a new folder). */
export const writeTinyQwen3 = async (
  config: DecoderConfig = tinyQwen3(),
  o: { readonly dir?: string; readonly seed?: number; readonly std?: number } = {},
): Promise<string> => {
  const dir = await writeQwen3Folder(o.dir);
  await writeRandomModel(dir, config, o.seed ?? 7, o.std ?? 0.05);
  return dir;
};

/** A math row in verl's format. */
export interface VerlRow {
  readonly data_source: string;
  readonly prompt: readonly { role: string; content: string }[];
  readonly ability: string;
  readonly reward_model: { style: string; ground_truth: string };
  readonly extra_info: { split: string; index: number };
}

/** `n` arithmetic rows in verl's format, alternating between two data sources. */
export const verlRows = (n: number, split = "train"): VerlRow[] =>
  Array.from({ length: n }, (_, i) => {
    const a = 3 + 7 * i, b = 2 + (5 * i) % 11;
    return {
      data_source: i % 2 === 0 ? "toy/add" : "toy/mul",
      prompt: [{
        role: "user",
        content: i % 2 === 0
          ? `What is ${a} + ${b}? Put the final answer in \\boxed{}.`
          : `What is ${a} times ${b}? Put the final answer in \\boxed{}.`,
      }],
      ability: "math",
      reward_model: { style: "rule", ground_truth: String(i % 2 === 0 ? a + b : a * b) },
      extra_info: { split, index: i },
    };
  });

/** Rows as JSON Lines. */
export const jsonlOf = (rows: readonly unknown[]): string =>
  rows.map((r) => JSON.stringify(r)).join("\n") + "\n";

/**
 * verl rows as a Parquet file, snappy-compressed unless told otherwise (hyparquet-writer: nested prompt,
 * reward_model, extra_info).
 */
export const parquetOf = (
  rows: readonly VerlRow[],
  codec: "SNAPPY" | "UNCOMPRESSED" = "SNAPPY",
): Uint8Array => {
  const col = (name: keyof VerlRow, f: (v: unknown) => unknown = (v) => v) => ({
    name,
    data: rows.map((r) => f(r[name])),
  });
  const buf = parquetWriteBuffer({
    codec,
    columnData: [
      col("data_source"),
      col("prompt"),
      col("ability"),
      col("reward_model"),
      col("extra_info", (e) => {
        const x = e as VerlRow["extra_info"];
        return { split: x.split, index: BigInt(x.index) };
      }),
    ],
    // deno-lint-ignore no-explicit-any
    schema: VERL_PARQUET_SCHEMA as any,
  });
  return new Uint8Array(buf);
};

const str = (name: string) => ({
  name,
  type: "BYTE_ARRAY",
  converted_type: "UTF8",
  repetition_type: "OPTIONAL",
});

/** verl's schema as pandas/pyarrow write it: list<struct<content, role>>, structs, INT64 index. */
const VERL_PARQUET_SCHEMA = [
  { name: "root", num_children: 5 },
  str("data_source"),
  { name: "prompt", repetition_type: "OPTIONAL", converted_type: "LIST", num_children: 1 },
  { name: "list", repetition_type: "REPEATED", num_children: 1 },
  { name: "element", repetition_type: "OPTIONAL", num_children: 2 },
  str("content"),
  str("role"),
  str("ability"),
  { name: "reward_model", repetition_type: "OPTIONAL", num_children: 2 },
  str("ground_truth"),
  str("style"),
  { name: "extra_info", repetition_type: "OPTIONAL", num_children: 2 },
  { name: "index", type: "INT64", repetition_type: "OPTIONAL" },
  str("split"),
];
