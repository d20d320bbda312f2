/**
 * RL on data end to end (issue 11's Tests): a random tiny Qwen3 with Qwen3's 151,936-row vocabulary around the
 * real Qwen3 tokenizer, JSONL and snappy Parquet files in verl's format written here, the math reward; runs on
 * the CPU backend and on llvmpipe; resume gives the same bytes; --mask-truncated leaves cut responses out of
 * the loss; evaluation per data_source; checkpoints carry the tokenizer files.
 */
import { Effect } from "effect";
import type { Backend } from "../engine/backend.ts";
import { DEFAULTS, resolveConfig, type TrainConfig } from "../training/config.ts";
import { runTraining } from "../training/run.ts";
import type { StepMetrics } from "../training/rl.ts";
import type { EvalRecord } from "../training/report.ts";
import { TOKENIZER_FILES } from "../training/source.ts";
import { gpuTest } from "./gpu_util.ts";
import { cpu32 } from "./util.ts";
import { parseSafetensors, toF32 } from "../core/safetensors.ts";
import { paramSpecs } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { generate } from "../policies/generate.ts";
import { final } from "../policies/internal.ts";
import { grpo } from "../objectives/objective.ts";
import { arithTask } from "../tasks/arith.ts";
import type { Task } from "../tasks/task.ts";
import { lossLengths, rlStep, rolloutPlan } from "../training/rl.ts";
import { taskSource } from "../training/source.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";
import { config as fixtureConfig, small, tok } from "./train_fixture.ts";
import { jsonlOf, parquetOf, verlRows, writeTinyQwen3 } from "./qwen3_model.ts";

const root = new URL("..", import.meta.url).pathname;
const tmp = await Deno.makeTempDir({ prefix: "bupo-data-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(tmp, { recursive: true });
  } catch { /* already gone */ }
});

/** The random tiny Qwen3 (d = 32, 2 layers, vocab 151,936) with the real tokenizer. */
const qwen = await writeTinyQwen3(undefined, { dir: await Deno.makeTempDir({ dir: tmp, prefix: "qwen3-" }) });
const trainJsonl = `${tmp}/train.jsonl`, trainParquet = `${tmp}/train.parquet`;
const evalParquet = `${tmp}/test.parquet`, shortJsonl = `${tmp}/short.jsonl`;
await Deno.writeTextFile(trainJsonl, jsonlOf(verlRows(6)));
await Deno.writeFile(trainParquet, parquetOf(verlRows(6)));
await Deno.writeFile(evalParquet, parquetOf(verlRows(4, "test")));
// TRL-style string prompts of a few tokens (sent without the chat template): the CPU backend's short run.
await Deno.writeTextFile(
  shortJsonl,
  jsonlOf([{ prompt: "2+3=", solution: "5" }, { prompt: "7*6=", solution: "42" }, {
    prompt: "9-4=",
    solution: "5",
  }]),
);
const BY_SOURCE = `${root}tests/fixtures/rewards/by_source.ts`;
const PARITY = `${root}tests/fixtures/rewards/parity.ts`;

/** A small dataset run: 2 prompts x 2, 8 new tokens, one minibatch, no evaluation unless asked. */
const dataRun = (out: string, over: Partial<TrainConfig> = {}): TrainConfig =>
  resolveConfig({}, {
    model: qwen,
    data: trainJsonl,
    out,
    objective: "grpo",
    steps: 2,
    prompts: 2,
    group: 2,
    maxNew: 8,
    minibatches: 1,
    evalEvery: 2,
    evalProblems: 4,
    evalK: 2,
    checkpointEvery: 1,
    chatTemplateKwargs: '{"enable_thinking": false}',
    ...over,
  });

const run = (b: Backend, cfg: TrainConfig, o: { resume?: boolean; stopAfter?: number } = {}) =>
  Effect.runPromise(runTraining(b, cfg, { resume: o.resume ?? false, quiet: true, stopAfter: o.stopAfter }));

const jsonl = async <T>(file: string): Promise<T[]> =>
  (await Deno.readTextFile(file)).trim().split("\n").map((l) => JSON.parse(l) as T);
const noTime = (m: StepMetrics) => JSON.stringify({ ...m, time: 0 });
const same = async (a: string, b: string) => {
  const [x, y] = [await Deno.readFile(a), await Deno.readFile(b)];
  return x.length === y.length && x.every((v, i) => v === y[i]);
};
const ck = (out: string, step: number) => `${out}/checkpoints/step-${String(step).padStart(6, "0")}`;

/** The math reward's metrics of a step whose random-model responses hold no answer. */
const assertMathMetrics = (m: StepMetrics, what: string) => {
  for (const k of ["reward/math", "reward/math/extracted", "reward/errors"] as const) {
    if (m[k] !== 0) throw new Error(`${what}: ${k} is ${m[k]}, expected 0 (keys: ${Object.keys(m)})`);
  }
  // A random model over 151,669 ids almost never samples one of the two eos ids in 8 tokens.
  if (m.truncated !== 1 || m.tokens.rollout !== 2 * 2 * 8) {
    throw new Error(`${what}: truncated ${m.truncated}, rollout tokens ${m.tokens.rollout}`);
  }
};

Deno.test("CPU backend: a dataset run with the math reward (151,936-row vocabulary) logs reward parts and checkpoints the tokenizer", async () => {
  const out = `${tmp}/cpu`;
  const cfg = dataRun(out, {
    data: shortJsonl,
    noChatTemplate: true,
    chatTemplateKwargs: undefined,
  });
  const r = await run(cpu32, cfg);
  if (r.metrics.length !== 2 || r.evals.length !== 0) {
    throw new Error(`${r.metrics.length} steps, ${r.evals.length} evaluations (no --eval-data: none)`);
  }
  r.metrics.forEach((m) => assertMathMetrics(m, `cpu step ${m.step}`));
  if (!r.metrics[0].example.prompt.endsWith("=")) {
    throw new Error(`example ${JSON.stringify(r.metrics[0].example)}`);
  }
  for (const f of TOKENIZER_FILES) {
    const from = `${qwen}/${f}`;
    if (!(await Deno.stat(from).catch(() => null))) continue;
    if (!(await same(from, `${ck(out, 2)}/${f}`))) {
      throw new Error(`checkpoint ${f} differs from the model's`);
    }
  }
});

gpuTest(
  "llvmpipe: Parquet train and eval data, evaluation per data_source, reward parts in metrics and samples",
  async (g) => {
    const out = `${tmp}/gpu`;
    // The first reward decides correctness: 1 on toy/add rows, 0 on toy/mul; the math reward adds 0 (no answers).
    const r = await run(
      g,
      dataRun(out, { data: trainParquet, evalData: evalParquet, reward: `${BY_SOURCE}:0.5,math:1` }),
    );
    const evals = await jsonl<EvalRecord>(`${out}/eval.jsonl`);
    if (evals.length !== 2 || evals.map((e) => e.step).join() !== "0,2") {
      throw new Error(`evals ${JSON.stringify(evals)}`);
    }
    for (const e of evals) {
      const want = [
        { dataSource: "toy/add", problems: 2, avgAtK: 0.5, passAtK: 1, greedy: 1 },
        { dataSource: "toy/mul", problems: 2, avgAtK: 0, passAtK: 0, greedy: 0 },
      ];
      if (JSON.stringify(e.byDataSource) !== JSON.stringify(want)) {
        throw new Error(`per source ${JSON.stringify(e)}`);
      }
      if (e.avgAtK !== 0.25 || e.passAtK !== 0.5 || e.greedy !== 0.5) {
        throw new Error(`overall ${JSON.stringify(e)}`);
      }
    }
    for (const m of r.metrics) {
      const add = m["reward/by_source"];
      if (!(add >= 0 && add <= 1) || Math.abs(m.rewardMean - 0.5 * add) > 1e-12 || m.accuracy !== add) {
        throw new Error(`step ${m.step}: reward ${m.rewardMean}, accuracy ${m.accuracy}, by_source ${add}`);
      }
      if (m["reward/math"] !== 0 || m["reward/errors"] !== 0 || m.truncated !== 1) {
        throw new Error(`step ${m.step}: ${JSON.stringify(m)}`);
      }
    }
    const samples = await jsonl<Record<string, unknown>>(`${out}/samples.jsonl`);
    const s = samples[0];
    if (
      !(typeof s.prompt === "string" && s.prompt.startsWith("<|im_start|>user\n") &&
        s.prompt.includes("<think>\n\n</think>")) ||
      JSON.stringify(Object.keys(s.parts as object).sort()) !== '["by_source","math","math/extracted"]' ||
      s.truncated !== true || s.answer !== "5" || s.dataSource !== "toy/add"
    ) throw new Error(`sample ${JSON.stringify(s)}`);
  },
);

gpuTest(
  "llvmpipe: a dataset run killed after step 1 resumes to the same bytes as an uninterrupted run",
  async (g) => {
    const full = `${tmp}/full`, cut = `${tmp}/cut`;
    const cfg = (out: string) =>
      dataRun(out, { steps: 3, evalEvery: 10, evalData: evalParquet, evalProblems: 2, evalK: 1 });
    await run(g, cfg(full));
    await run(g, cfg(cut), { stopAfter: 1 });
    await run(g, cfg(cut), { resume: true });
    for (
      const f of ["model.safetensors", "optimizer.safetensors", "tokenizer.json", "generation_config.json"]
    ) {
      if (!(await same(`${ck(full, 3)}/${f}`, `${ck(cut, 3)}/${f}`))) throw new Error(`step 3 ${f} differs`);
    }
    const [a, b] = [
      await jsonl<StepMetrics>(`${full}/metrics.jsonl`),
      await jsonl<StepMetrics>(`${cut}/metrics.jsonl`),
    ];
    if (a.map(noTime).join("\n") !== b.map(noTime).join("\n")) throw new Error("metrics differ after resume");
    // The rows drawn differ between steps (the sampler's draw index is a function of the step).
    if (new Set(a.map((m) => m.example.prompt)).size < 2) throw new Error("every step drew the same rows");
  },
);

const tensorsOf = async (file: string) => {
  const st = parseSafetensors(file, await Deno.readFile(file));
  return new Map([...st.tensors].map(([k, e]) => [k, toF32(file, e)]));
};

gpuTest(
  "llvmpipe: --mask-truncated leaves every cut response out of the loss (nothing is trained)",
  async (g) => {
    // Every response of the random model is cut at --max-new: masked, the loss has no token, the gradient is 0
    // and (weight decay off) no parameter moves; unmasked, all 32 tokens are trained and the parameters move.
    const masked = `${tmp}/masked`, plain = `${tmp}/plain`;
    // The parity reward differs within groups, so the advantages (and an unmasked gradient) are not 0.
    const over = { steps: 1, weightDecay: 0, reward: PARITY };
    const [a] = (await run(g, dataRun(masked, { ...over, maskTruncated: true }))).metrics;
    const [b] = (await run(g, dataRun(plain, over))).metrics;
    if (a.truncated !== 1 || a.tokens.trained !== 0 || a.loss !== 0 || a.gradNorm !== 0) {
      throw new Error(`masked: ${JSON.stringify({ ...a, example: 0 })}`);
    }
    if (b.tokens.trained !== b.tokens.rollout || b.tokens.rollout !== 32 || !(b.gradNorm > 0)) {
      throw new Error(`unmasked: ${JSON.stringify({ ...b, example: 0 })}`);
    }
    // The logs' entropies cover every response token either way.
    if (a.entropy.final !== b.entropy.final) {
      throw new Error(
        `entropy ${a.entropy.final} vs ${b.entropy.final}`,
      );
    }
    const base = await tensorsOf(`${qwen}/model.safetensors`);
    const [ma, mb] = [
      await tensorsOf(`${ck(masked, 1)}/model.safetensors`),
      await tensorsOf(`${ck(plain, 1)}/model.safetensors`),
    ];
    let moved = 0;
    for (const [name, x] of base) {
      if (!x.every((v, i) => Object.is(v, ma.get(name)![i]))) {
        throw new Error(
          `${name} moved under --mask-truncated`,
        );
      }
      if (!x.every((v, i) => Object.is(v, mb.get(name)![i]))) moved++;
    }
    if (moved === 0) throw new Error("unmasked: no parameter moved");
  },
);

Deno.test("--mask-truncated: the loss mask keeps exactly the responses that ended with a stop id (CPU, char task)", async () => {
  // A random char model with 3 new tokens: some responses end at eos or the stop character, the rest are cut.
  const step = async (maskTruncated: boolean) => {
    const p = initParams(cpu32, paramSpecs(fixtureConfig), 5, 0.2);
    const opt = createOptimizer(p, { lr: 1e-3, weightDecay: 0, maxGradNorm: 1 });
    try {
      const cfg = small(`${tmp}/unused`, { prompts: 8, group: 2, maxNew: 3, maskTruncated });
      // A reward that varies within groups (the parity of the completion's length): advantages are not 0.
      const task: Task = { ...arithTask(), reward: (_q, c) => c.length % 2 };
      const source = taskSource(tok, task, cfg.seed);
      const ctx = { cfg, config: fixtureConfig, params: p, opt, source, objective: grpo(final) };
      const { prompts, options } = rolloutPlan(ctx, 1);
      const roll = await generate(fixtureConfig, p, prompts, options); // the rollout rlStep draws
      return { m: await rlStep(ctx, 1), roll };
    } finally {
      p.dispose();
      disposeOptimizer(opt);
    }
  };
  const [on, off] = [await step(true), await step(false)];
  const { roll } = on;
  const cut = roll.finished.map((f) => !f);
  if (!(on.m.truncated > 0 && on.m.truncated < 1)) throw new Error(`fixture: truncated ${on.m.truncated}`);
  if (on.m.truncated !== cut.filter(Boolean).length / cut.length) throw new Error("truncated fraction");
  const kept = lossLengths(roll.responseLens, cut, true).reduce((a, b) => a + b, 0);
  const all = roll.responseLens.reduce((a, b) => a + b, 0);
  if (kept !== roll.responseLens.reduce((a, n, b) => a + (roll.finished[b] ? n : 0), 0) || kept >= all) {
    throw new Error(`lossLengths kept ${kept} of ${all}`);
  }
  if (on.m.tokens.trained !== kept || off.m.tokens.trained !== all || on.m.tokens.rollout !== all) {
    throw new Error(
      `trained ${on.m.tokens.trained} (masked) / ${off.m.tokens.trained}, expected ${kept} / ${all}`,
    );
  }
  if (on.m.loss === off.m.loss) throw new Error("the masked loss equals the unmasked one");
  if (on.m.rewardMean !== off.m.rewardMean || on.m.entropy.final !== off.m.entropy.final) {
    throw new Error("masking changed the rewards or the logged entropy");
  }
});

Deno.test("dataset flags: bad combinations and bad data are errors naming the flag, the file and the row", async () => {
  const fails = async (cfg: () => TrainConfig, re: RegExp) => {
    let msg = "";
    try {
      await run(cpu32, cfg());
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!re.test(msg)) throw new Error(`expected ${re}, got "${msg}"`);
  };
  await fails(
    () => resolveConfig({}, { data: trainJsonl, task: "arith" }),
    /--task arith and --data .*not both/,
  );
  await fails(
    () => resolveConfig({}, { evalData: evalParquet }),
    /--eval-data applies to dataset runs; give --data/,
  );
  await fails(
    () => resolveConfig({}, { maskTruncated: true, reward: "math" }),
    /--reward applies to dataset runs/,
  );
  await fails(
    () => ({ ...DEFAULTS, model: qwen, out: `${tmp}/e1` }),
    /not a char tokenizer \(train it on a prompt dataset: --data FILE\)/,
  );
  await fails(
    () => dataRun(`${tmp}/e2`, { maxPrompt: 3 }),
    /--data .*train\.jsonl: every prompt is longer than --max-prompt 3 tokens/,
  );
  const bad = `${tmp}/bad.jsonl`;
  await Deno.writeTextFile(
    bad,
    jsonlOf([verlRows(1)[0], { ...verlRows(1)[0], reward_model: { style: "rule" } }]),
  );
  await fails(
    () => dataRun(`${tmp}/e3`, { data: bad }),
    /bad\.jsonl: row 2 \(line 2\): reward_model\.ground_truth: is missing/,
  );
  await fails(() => dataRun(`${tmp}/e4`, { reward: "nope" }), /--reward: unknown reward "nope"/);
  await fails(
    () => dataRun(`${tmp}/e5`, { chatTemplateKwargs: "[1]" }),
    /--chat-template-kwargs: expected a JSON object/,
  );
});

/** The words of a command line: single and double quotes group, backslash-newline continues. */
const shellWords = (line: string): string[] => {
  const out: string[] = [];
  let cur: string | null = null, quote: string | null = null;
  for (const c of line) {
    if (quote) {
      if (c === quote) quote = null;
      else cur += c;
    } else if (c === "'" || c === '"') (quote = c, cur ??= "");
    else if (/\s/.test(c)) cur !== null && (out.push(cur), cur = null);
    else cur = (cur ?? "") + c;
  }
  if (cur !== null) out.push(cur);
  return out;
};

/** The `deno task` command lines of README.md's "Train your own model" section, continuations joined. */
const readmeCommands = async (): Promise<string[][]> => {
  const md = await Deno.readTextFile(`${root}README.md`);
  const section = md.split("\n## Train your own model\n")[1]?.split("\n## ")[0];
  if (!section) throw new Error("README.md has no 'Train your own model' section");
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  const block = blocks.find((b) => b.includes("deno task train"));
  if (!block) throw new Error("no sh block with deno task train");
  return block.replace(/\\\n\s*/g, " ").split("\n").filter((l) => l.startsWith("deno task ")).map(shellWords);
};

gpuTest(
  "README's 'Train your own model' commands work as written on a folder with the real Qwen3 tokenizer",
  async () => {
    const cmds = await readmeCommands();
    if (cmds.map((c) => c[2]).join() !== "data,train") {
      throw new Error(
        `commands ${cmds.map((c) => c.join(" "))}`,
      );
    }
    const out = `${tmp}/readme-run`;
    const paths: Record<string, string> = {
      "models/Qwen3-0.6B": qwen,
      "data/gsm8k/train.parquet": trainParquet,
      "data/gsm8k/test.parquet": evalParquet,
      "runs/qwen3-gsm8k": out,
    };
    // The sizes shrink to a test's; every other flag stays as the README writes it.
    const sizes: Record<string, string> = {
      "--steps": "2",
      "--phase-steps": "1",
      "--prompts": "2",
      "--group": "2",
      "--max-new": "8",
      "--eval-every": "2",
      "--eval-problems": "2",
      "--eval-k": "1",
    };
    const [data, train] = cmds.map((c) => c.slice(3).map((w) => paths[w] ?? w));
    for (const f of Object.keys(sizes)) {
      const i = train.indexOf(f);
      if (i < 0) throw new Error(`the README's train command has no ${f}`);
      train[i + 1] = sizes[f];
    }
    for (const p of Object.keys(paths)) {
      if (![...cmds[0], ...cmds[1]].includes(p)) throw new Error(`the README's commands no longer name ${p}`);
    }
    const shown = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}data.ts`, ...data],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(shown.stdout);
    if (
      shown.code !== 0 || !text.includes("=== row 1 (toy/add)") || !text.includes("=== row 2 (toy/mul)") ||
      text.includes("=== row 3") || !text.includes("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ) {
      throw new Error(
        `deno task data exited ${shown.code}:\n${text}\n${new TextDecoder().decode(shown.stderr)}`,
      );
    }
    const { main } = await import("../train.ts");
    const code = await main([...train, "--quiet"]);
    if (code !== 0) throw new Error(`deno task train exited ${code}`);
    const evals = await jsonl<EvalRecord>(`${out}/eval.jsonl`);
    const metrics = await jsonl<StepMetrics>(`${out}/metrics.jsonl`);
    if (metrics.length !== 2 || evals.map((e) => e.step).join() !== "0,2" || !evals[1].byDataSource) {
      throw new Error(`metrics ${metrics.length}, evals ${JSON.stringify(evals)}`);
    }
    for (const k of ["reward/math", "reward/format", "reward/format/stopped", "reward/errors"] as const) {
      if (typeof metrics[1][k] !== "number") throw new Error(`metrics lack ${k}: ${Object.keys(metrics[1])}`);
    }
    const boundary = JSON.parse(await Deno.readTextFile(`${out}/boundary.json`));
    if (!(boundary.layer >= 0 && boundary.layer < 2)) throw new Error(`boundary ${JSON.stringify(boundary)}`);
  },
);
