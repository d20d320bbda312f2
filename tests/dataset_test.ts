/**
 * Datasets: JSONL, JSON and Parquet (a snappy file written here by hyparquet-writer, a zstd fixture written by
 * parquet-wasm), verl's / TRL's / custom schemas, every bad input with its named error, and the sampler.
 */
import { parquetMetadata } from "hyparquet";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import {
  dataFormatOf,
  type Dataset,
  epochOrder,
  getPath,
  loadDataset,
  makeSampler,
  RowError,
} from "../formats/dataset.ts";
import { jsonlOf as jsonl, parquetOf } from "./qwen3_model.ts";
import { throwsWith } from "./util.ts";

const FIX = new URL("./fixtures/datasets/", import.meta.url).pathname;
/** JSON with every object's keys sorted (Parquet gives struct fields in schema order). */
const canon = (v: unknown): string =>
  JSON.stringify(
    v,
    (_k, x) =>
      typeof x === "object" && x !== null && !Array.isArray(x)
        ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1)))
        : x,
  );
const eq = <T>(got: T, want: T, what: string) => {
  if (canon(got) !== canon(want)) throw new Error(`${what}: got ${canon(got)}, expected ${canon(want)}`);
};

const dir = await Deno.makeTempDir({ prefix: "datasets-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
let n = 0;
/** Write `content` to a fresh file named `name` in the temporary folder. */
const file = async (name: string, content: string | Uint8Array): Promise<string> => {
  const p = `${dir}/${n++}-${name}`;
  await (typeof content === "string" ? Deno.writeTextFile(p, content) : Deno.writeFile(p, content));
  return p;
};

const VERL = [
  {
    data_source: "openai/gsm8k",
    prompt: [{ role: "user", content: "What is 2+3?" }],
    ability: "math",
    reward_model: { style: "rule", ground_truth: "5" },
    extra_info: { split: "train", index: 0 },
  },
  {
    data_source: "math",
    prompt: [{ role: "system", content: "Box it." }, { role: "user", content: "Half of 3?" }],
    ability: "math",
    reward_model: { style: "rule", ground_truth: "\\frac{3}{2}" },
    extra_info: { split: "train", index: 1 },
  },
];

const summary = (d: Dataset) => ({
  format: d.format,
  schema: d.schema,
  paths: [d.promptPath, d.answerPath],
  rows: d.rows.map((r) => [r.row, r.prompt, r.groundTruth, r.dataSource ?? null, r.extraInfo ?? null]),
});

type Summary = ReturnType<typeof summary>;
/** The summary a dataset should have. */
const expected = (
  format: Dataset["format"],
  schema: Dataset["schema"],
  paths: string[],
  rows: Summary["rows"],
) => ({
  format,
  schema,
  paths,
  rows,
});
/** The summary of VERL read from a file of `format`. */
const verlSummary = (format: Dataset["format"]): Summary =>
  expected(
    format,
    "verl",
    ["prompt", "reward_model.ground_truth"],
    VERL.map((r, i) => [i + 1, r.prompt, r.reward_model.ground_truth, r.data_source, r.extra_info]),
  );

Deno.test("verl rows from JSONL: messages, reward_model.ground_truth, data_source, extra_info, the raw row", async () => {
  const d = await loadDataset(await file("verl.jsonl", jsonl(VERL)));
  eq(summary(d), verlSummary("jsonl"), "rows");
  eq(d.rows[0].raw.ability, "math", "raw");
});

Deno.test("TRL rows from a JSON array: string prompts with solution, messages with answer, ground_truth", async () => {
  const a = await loadDataset(await file("trl.json", JSON.stringify([{ prompt: "2+2=", solution: "4" }])));
  eq(summary(a), expected("json", "trl", ["prompt", "solution"], [[1, "2+2=", "4", null, null]]), "solution");
  const msgs = [{ role: "user", content: "3*3?" }];
  const b = await loadDataset(await file("trl.json", JSON.stringify([{ prompt: msgs, answer: 9 }])));
  eq(summary(b).rows, [[1, msgs, "9", null, null]], "answer, a number");
  const c = await loadDataset(await file("trl.jsonl", jsonl([{ prompt: "q", ground_truth: "g" }])));
  eq([c.schema, c.answerPath], ["trl", "ground_truth"], "ground_truth");
  // `datasets`' to_json writes JSON Lines into .json files: read too.
  const d = await loadDataset(
    await file("lines.json", jsonl([{ prompt: "a", answer: "1" }, { prompt: "b", answer: "2" }])),
  );
  eq(d.rows.map((r) => r.groundTruth), ["1", "2"], "JSON Lines in .json");
  // Text parts of multimodal-style messages are joined.
  const parts = [{ role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] }];
  const e = await loadDataset(await file("parts.jsonl", jsonl([{ prompt: parts, answer: "x" }])));
  eq((e.rows[0].prompt as readonly { content: string }[])[0].content, "ab", "text parts");
});

Deno.test("custom fields through promptKey / answerKey, dotted paths and list indices", async () => {
  const rows = [{ input: { question: "Q1" }, meta: { answers: ["A1", "x"] } }];
  const d = await loadDataset(await file("custom.jsonl", jsonl(rows)), {
    promptKey: "input.question",
    answerKey: "meta.answers.0",
  });
  eq(
    summary(d),
    expected("jsonl", "custom", ["input.question", "meta.answers.0"], [[1, "Q1", "A1", null, null]]),
    "custom",
  );
  eq(getPath({ "a.b": 1, a: { b: 2 } }, "a.b"), { found: true, value: 1 }, "a literal dotted key wins");
  eq(getPath({ a: [{ b: 3 }] }, "a.0.b"), { found: true, value: 3 }, "list index");
  eq(getPath({ a: 1 }, "a.b"), { found: false }, "missing");
});

Deno.test("a snappy Parquet file written here (nested verl schema) reads with INT64 as numbers", async () => {
  const bytes = parquetOf(VERL);
  const codecs = parquetMetadata(bytes.buffer as ArrayBuffer).row_groups[0].columns.map((c) =>
    c.meta_data?.codec
  );
  if (!codecs.every((c) => c === "SNAPPY")) throw new Error(`codecs ${codecs}`);
  const d = await loadDataset(await file("verl.parquet", bytes));
  eq(summary(d), verlSummary("parquet"), "rows");
});

Deno.test("a zstd Parquet fixture written by parquet-wasm (Rust) reads", async () => {
  const bytes = await Deno.readFile(`${FIX}verl_zstd.parquet`);
  const codecs = parquetMetadata(bytes.buffer as ArrayBuffer).row_groups[0].columns.map((c) =>
    c.meta_data?.codec
  );
  if (!codecs.every((c) => c === "ZSTD")) throw new Error(`codecs ${codecs}`);
  const d = await loadDataset(`${FIX}verl_zstd.parquet`);
  eq([d.schema, d.rows.length], ["verl", 3], "schema");
  eq(d.rows.map((r) => r.groundTruth), ["72", "\\frac{3}{4}", "-2, 2"], "answers");
  eq(d.rows[1].prompt, [
    { role: "system", content: "Put the final answer in \\boxed{}." },
    { role: "user", content: "Simplify $\\frac{6}{8}$." },
  ], "messages");
  eq(d.rows[2].extraInfo, { split: "train", index: 2 }, "extra_info");
  eq(d.rows[0].dataSource, "openai/gsm8k", "data_source");
});

Deno.test("files that are not what their extension says, and unknown extensions, are named", async () => {
  await throwsWith(
    async () => loadDataset(await file("x.parquet", "prompt,answer\n1,2\n")),
    FileFormatError,
    [
      "x.parquet: not a Parquet file",
    ],
  );
  const good = parquetOf(VERL, "UNCOMPRESSED");
  const cut = new Uint8Array([...good.subarray(0, 60), ...good.subarray(good.length - 8)]);
  await throwsWith(async () => loadDataset(await file("cut.parquet", cut)), FileFormatError, [
    "cut.parquet: cannot read",
  ]);
  await throwsWith(
    async () => loadDataset(await file("broken.jsonl", '{"prompt": "a", "answer": "1"}\n{"prompt": "b", \n')),
    FileFormatError,
    ["broken.jsonl: line 2 is not valid JSON"],
  );
  await throwsWith(
    async () => loadDataset(await file("obj.json", '{"prompt": "a", "answer": "1", "x": [')),
    FileFormatError,
    [
      "obj.json: not valid JSON",
    ],
  );
  await throwsWith(async () => loadDataset(await file("o.json", '{"rows": []}')), FileFormatError, [
    "expected a JSON array of row objects, got object",
  ]);
  await throwsWith(
    async () => loadDataset(await file("bin.jsonl", new Uint8Array([0xff, 0xfe, 0x00, 0x41]))),
    FileFormatError,
    [
      "not UTF-8 text",
    ],
  );
  await throwsWith(async () => loadDataset(await file("empty.jsonl", "\n\n")), FileFormatError, [
    "holds no rows",
  ]);
  await throwsWith(() => loadDataset(`${dir}/nope.jsonl`), FileFormatError, ["nope.jsonl: no such file"]);
  await throwsWith(async () => loadDataset(await file("d.csv", "a,b")), ConfigError, [
    "unknown data format",
    ".jsonl, .json or .parquet",
  ]);
  eq(["a.JSONL", "b.ndjson", "c.json", "d.Parquet"].map((f) => dataFormatOf(f)), [
    "jsonl",
    "jsonl",
    "json",
    "parquet",
  ], "formats");
});

Deno.test("every bad row is a RowError naming the file, the row and the field", async () => {
  const ok = { prompt: [{ role: "user", content: "q" }], reward_model: { ground_truth: "1" } };
  const cases: [string, unknown[], number, string, string][] = [
    ["no prompt in row 1", [{ question: "q", answer: "1" }], 1, "prompt", "--prompt-key"],
    ["no answer in row 1", [{ prompt: "q" }], 1, "reward_model.ground_truth", "--answer-key"],
    [
      "row 3 lacks the answer",
      [ok, ok, { prompt: ok.prompt, reward_model: {} }],
      3,
      "reward_model.ground_truth",
      "is missing",
    ],
    ["prompt a number", [{ prompt: 3, answer: "1" }], 1, "prompt", "expected a string or a list"],
    ["empty prompt", [{ prompt: "  ", answer: "1" }], 1, "prompt", "is empty"],
    ["no messages", [{ prompt: [], answer: "1" }], 1, "prompt", "empty list of messages"],
    ["message not an object", [{ prompt: ["hi"], answer: "1" }], 1, "prompt[0]", "{role, content}"],
    ["role missing", [{ prompt: [{ content: "x" }], answer: "1" }], 1, "prompt[0].role", "non-empty string"],
    [
      "content null",
      [{ prompt: [{ role: "user", content: "x" }, { role: "assistant", content: null }], answer: "1" }],
      1,
      "prompt[1].content",
      "expected a string",
    ],
    ["answer an object", [{ prompt: "q", answer: { a: 1 } }], 1, "answer", "expected a string or a number"],
    [
      "answer empty",
      [ok, { prompt: "q", reward_model: { ground_truth: "" } }],
      2,
      "reward_model.ground_truth",
      "is empty",
    ],
    ["data_source a number", [{ ...ok, data_source: 3 }], 1, "data_source", "expected a string"],
    ["extra_info a string", [{ ...ok, extra_info: "x" }], 1, "extra_info", "expected an object"],
    ["a line that is no object", [ok, [1, 2]], 2, "(row)", "expected a JSON object"],
  ];
  for (const [what, rows, row, field, part] of cases) {
    const f = await file("bad.jsonl", jsonl(rows));
    const e = await throwsWith(() => loadDataset(f), RowError, [f, `row ${row}`, part]);
    if (e.row !== row || e.field !== field || e.file !== f) {
      throw new Error(`${what}: row ${e.row} field ${e.field} file ${e.file}`);
    }
  }
  // JSON arrays name the row; JSONL names the line too (blank lines skipped).
  const arr = await file("bad.json", JSON.stringify([{ prompt: "a", answer: "1" }, 7]));
  await throwsWith(() => loadDataset(arr), RowError, ["bad.json: row 2: expected a JSON object"]);
  const lines = await file("gap.jsonl", '{"prompt":"a","answer":"1"}\n\n{"prompt":"b"}\n');
  await throwsWith(() => loadDataset(lines), RowError, ["gap.jsonl: row 2 (line 3): answer: is missing"]);
  const keyed = await file("k.jsonl", jsonl([{ q: "a", a: "1" }]));
  await throwsWith(() => loadDataset(keyed, { promptKey: "q", answerKey: "ans" }), RowError, [
    'no "ans" field',
  ]);
  // A bad row of a Parquet file is named the same way.
  const pq = parquetOf([VERL[0], {
    ...VERL[1],
    reward_model: { style: "rule", ground_truth: null as unknown as string },
  }]);
  const e = await throwsWith(async () => loadDataset(await file("bad.parquet", pq)), RowError, [
    "row 2",
    "is missing",
  ]);
  eq(e.field, "reward_model.ground_truth", "parquet field");
});

Deno.test("sampler: every epoch a permutation, a pure function of (seed, index), reshuffled per epoch, resumable", () => {
  const rows = Array.from({ length: 50 }, (_, i) => i);
  const s = makeSampler(rows, 7);
  const first = s.batch(0, 50), second = s.batch(50, 50);
  eq([...first].sort((a, b) => a - b), rows, "epoch 0 is a permutation");
  eq([...second].sort((a, b) => a - b), rows, "epoch 1 is a permutation");
  if (JSON.stringify(first) === JSON.stringify(rows)) throw new Error("not shuffled");
  if (JSON.stringify(first) === JSON.stringify(second)) throw new Error("epochs not reshuffled");
  eq(makeSampler(rows, 7).batch(37, 30), s.batch(37, 30), "resumed at draw 37 (a fresh sampler)");
  eq(makeSampler(rows, 7).at(1234), s.at(1234), "pure in (seed, index)");
  if (JSON.stringify(makeSampler(rows, 8).batch(0, 50)) === JSON.stringify(first)) {
    throw new Error("seed ignored");
  }
  eq(Array.from(epochOrder(5, 7, 3)), Array.from(epochOrder(5, 7, 3)), "epochOrder deterministic");
  eq(makeSampler(["only"], 1).batch(0, 3), ["only", "only", "only"], "one row cycles");
  for (
    const bad of [
      () => makeSampler([], 1),
      () => s.at(-1),
      () => s.at(1.5),
      () => makeSampler(rows, -1).at(0),
    ]
  ) {
    try {
      bad();
    } catch (e) {
      if (e instanceof RangeError) continue;
      throw e;
    }
    throw new Error("accepted");
  }
});
