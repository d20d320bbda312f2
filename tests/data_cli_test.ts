/** `deno task data` and `deno task reward`: output on a Qwen3 folder and files written here, exit codes. */
import { main as dataMain } from "../data.ts";
import { main as rewardMain } from "../reward.ts";
import { writeQwen3Folder } from "./qwen3_folder.ts";
import { eq, includesAll } from "./util.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIX = new URL("./fixtures/", import.meta.url).pathname;

/** Run `f` with console.log and console.error captured. */
const capture = async (f: () => Promise<number>): Promise<{ code: number; out: string[]; err: string[] }> => {
  const out: string[] = [], err: string[] = [];
  const log = console.log, error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    return { code: await f(), out, err };
  } finally {
    console.log = log, console.error = error;
  }
};

const dir = await writeQwen3Folder();
const tmp = await Deno.makeTempDir({ prefix: "cli-" });
globalThis.addEventListener("unload", () => {
  Deno.removeSync(dir, { recursive: true });
  Deno.removeSync(tmp, { recursive: true });
});
const zstd = `${FIX}datasets/verl_zstd.parquet`;

Deno.test("data --json: one object per row with text, ids and ground_truth, as the model sees it", async () => {
  const r = await capture(() =>
    dataMain([
      "--model",
      dir,
      "--data",
      zstd,
      "--json",
      "--chat-template-kwargs",
      '{"enable_thinking": false}',
    ])
  );
  eq(r.code, 0, "exit code");
  const rows = r.out.map((l) => JSON.parse(l));
  eq(rows.map((x) => x.ground_truth), ["72", "\\frac{3}{4}", "-2, 2"], "ground truths");
  eq(
    rows[0].text,
    "<|im_start|>user\nNatalia sold 48 clips in April and half as many in May. How many in all?<|im_end|>\n" +
      "<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "text",
  );
  eq(rows[0].ids.slice(0, 3), [151644, 872, 198], "ids");
  eq(rows[0].data_source, "openai/gsm8k", "data_source");
  includesAll(r.err.join("\n"), [
    "3 rows, verl schema",
    "stop ids: 151645, 151643",
    "tokenizer ids: 151669",
    "vocab_size 151936",
  ], "summary");
});

Deno.test("data: text for people, --limit, --max-prompt drops with a count, --no-chat-template", async () => {
  const r = await capture(() => dataMain(["--model", dir, "--data", zstd, "--limit", "1"]));
  eq(r.code, 0, "exit");
  const text = r.out.join("\n");
  includesAll(text, [
    "=== row 1 (openai/gsm8k): 30 prompt tokens",
    "--- ids\n151644 872 198",
    "--- ground truth\n72",
  ]);
  if (text.includes("row 2")) throw new Error("--limit 1 showed row 2");
  const m = await capture(() => dataMain(["--model", dir, "--data", zstd, "--json", "--max-prompt", "30"]));
  eq(m.out.map((l) => JSON.parse(l).row), [1, 3], "kept");
  if (!m.err.join("\n").includes("dropped 1 longer than 30 tokens (rows 2)")) {
    throw new Error(m.err.join("\n"));
  }
  const plain = `${tmp}/plain.jsonl`;
  await Deno.writeTextFile(plain, JSON.stringify({ prompt: "Q: 1+1=", answer: "2" }) + "\n");
  // The small BPE tokenizer of the fixtures is enough here (and loads faster than Qwen3's).
  const tiny = `${FIX}hf_tiny_bpe`;
  const n = await capture(() => dataMain(["--model", tiny, "--data", plain, "--json", "--no-chat-template"]));
  eq(JSON.parse(n.out[0]).text, "Q: 1+1=", "as it is");
});

Deno.test("data: usage errors exit 2, bad files and rows exit 1, each one line naming the problem", async () => {
  const bad = `${tmp}/bad.jsonl`;
  await Deno.writeTextFile(bad, '{"prompt": "a", "answer": "1"}\n{"prompt": 5, "answer": "1"}\n');
  const cases: [string[], number, string][] = [
    [["--data", zstd], 2, "--model DIR is required"],
    [["--model", dir, "--data", zstd, "--bogus"], 2, "unknown flag --bogus"],
    [["--model", dir, "--data", `${tmp}/x.csv`], 2, "unknown data format"],
    [
      ["--model", dir, "--data", zstd, "--chat-template-kwargs", "{"],
      2,
      "--chat-template-kwargs: not valid JSON",
    ],
    [["--model", dir, "--data", zstd, "--no-chat-template"], 2, "row 1: --no-chat-template"],
    [["--model", dir, "--data", bad], 1, "RowError: " + bad + ": row 2 (line 2): prompt: expected a string"],
    [["--model", `${tmp}/none`, "--data", zstd], 1, "model folder does not exist"],
  ];
  for (const [argv, code, part] of cases) {
    const r = await capture(() => dataMain(argv));
    if (r.code !== code || r.err.length !== 1 || !r.err[0].includes(part)) {
      throw new Error(`${argv.join(" ")}: exit ${r.code}, stderr ${JSON.stringify(r.err)}`);
    }
  }
  const h = await capture(() => dataMain(["--help"]));
  if (h.code !== 0 || !h.out.join("\n").includes("--chat-template-kwargs JSON")) {
    throw new Error(h.out.join("\n"));
  }
});

Deno.test("reward: one JSON line per row with the weighted score and the parts; errors counted", async () => {
  const f = `${tmp}/completions.jsonl`;
  await Deno.writeTextFile(
    f,
    [
      { completion: "so $\\boxed{\\dfrac{3}{4}}$", ground_truth: "0.75", finish_reason: "stop" },
      { completion: "The answer is 72.", reward_model: { ground_truth: "72" }, finished: false },
      { completion: "no idea", ground_truth: "5" },
    ].map((r) => JSON.stringify(r)).join("\n"),
  );
  const r = await capture(() => rewardMain(["--reward", "math:1,format:0.5", "--data", f]));
  eq(r.code, 0, "exit");
  eq(r.out.map((l) => JSON.parse(l)), [
    {
      row: 1,
      score: 1.5,
      parts: { math: 1, "math/extracted": 1, format: 1, "format/stopped": 1, "format/answer": 1 },
    },
    {
      row: 2,
      score: 1,
      parts: { math: 1, "math/extracted": 1, format: 0, "format/stopped": 0, "format/answer": 1 },
    },
    {
      row: 3,
      score: 0,
      parts: { math: 0, "math/extracted": 0, format: 0, "format/stopped": 1, "format/answer": 0 },
    },
  ], "lines");
  const m = `${tmp}/modes.jsonl`;
  await Deno.writeTextFile(
    m,
    ["ok", "throw", "hang", "ok"].map((g) => JSON.stringify({ completion: "x", ground_truth: g })).join("\n"),
  );
  const e = await capture(() =>
    rewardMain(["--reward", `${FIX}rewards/misbehaving.ts`, "--data", m, "--reward-timeout", "0.3"])
  );
  eq(e.code, 0, "exit");
  const lines = e.out.map((l) => JSON.parse(l));
  eq(lines.map((l) => [l.score, l.errors ?? 0]), [[1, 0], [0, 1], [0, 1], [1, 0]], "scores and errors");
  if (!lines[2].failures[0].includes("timed out after 300 ms")) throw new Error(lines[2].failures[0]);
  if (!e.err.join("\n").includes("reward/errors 2")) throw new Error(e.err.join("\n"));
  const u = await capture(() => rewardMain(["--reward", "maths", "--data", f]));
  if (u.code !== 2 || !u.err[0].includes('unknown reward "maths"')) throw new Error(u.err.join("\n"));
  const noC = `${tmp}/noc.jsonl`;
  await Deno.writeTextFile(noC, JSON.stringify({ response: "x", ground_truth: "1" }) + "\n");
  const c = await capture(() => rewardMain(["--reward", "exact", "--data", noC]));
  if (c.code !== 1 || !c.err[0].includes("row 1: completion: is missing")) throw new Error(c.err.join("\n"));
  const k = await capture(() =>
    rewardMain(["--reward", "exact", "--data", noC, "--completion-key", "response"])
  );
  eq(JSON.parse(k.out[0]).score, 0, "--completion-key");
});

Deno.test({
  name: "deno task reward in a subprocess: exits once scored, with the module's worker closed",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const f = `${tmp}/one.jsonl`;
    await Deno.writeTextFile(f, JSON.stringify({ completion: "\\boxed{2}", ground_truth: "2" }) + "\n");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}reward.ts`, "--reward", `math,${FIX}rewards/length.ts:0.5`, "--data", f],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    if (out.code !== 0) throw new Error(`exit ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
    eq(JSON.parse(stdout).score, 1.5, "score");
  },
});
