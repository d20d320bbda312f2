/**
 * Issue 5's guarantees: short runs on both backends write every output; a killed run resumes to exactly the
 * uninterrupted result; BuPO's internal phase leaves everything above layer k untouched (weight decay off);
 * bad inputs fail clearly without touching good files; a non-finite loss stops the run, last checkpoint intact.
 */
import { Effect } from "effect";
import { parseSafetensors, toF32 } from "../core/safetensors.ts";
import type { Backend } from "../engine/backend.ts";
import type { TrainConfig } from "../training/config.ts";
import { runTraining } from "../training/run.ts";
import { gpu, gpuTest } from "./gpu_util.ts";
import { cpu32 } from "./util.ts";
import { config, modelDir, small, tmp } from "./train_fixture.ts";
import { runScript, tinyTrainArgs } from "./cli_util.ts";

const root = new URL("..", import.meta.url).pathname;

const run = (b: Backend, cfg: TrainConfig, resume = false) =>
  Effect.runPromise(runTraining(b, cfg, { resume, quiet: true }));

const cli = (args: string[], env: Record<string, string> = {}) => runScript("train.ts", args, { env });

const tensorsOf = async (file: string) => {
  const st = parseSafetensors(file, await Deno.readFile(file));
  return new Map([...st.tensors].map(([k, e]) => [k, toF32(file, e)]));
};

const OUTPUTS = [
  "metrics.jsonl",
  "eval.jsonl",
  "samples.jsonl",
  "plots.svg",
  "config.json",
  "objective.txt",
  "latest.json",
];
const CHECKPOINT = [
  "model.safetensors",
  "config.json",
  "tokenizer.json",
  "optimizer.safetensors",
  "state.json",
];

const assertOutputs = async (dir: string, steps: number) => {
  for (const f of OUTPUTS) await Deno.stat(`${dir}/${f}`);
  for (const f of CHECKPOINT) {
    await Deno.stat(`${dir}/checkpoints/step-${String(steps).padStart(6, "0")}/${f}`);
  }
  const lines = (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  if (
    lines.length !== steps ||
    lines.some((m, i) => m.step !== i + 1 || m.entropy.layers.length !== config.numLayers)
  ) {
    throw new Error(`metrics.jsonl: ${JSON.stringify(lines.map((m) => m.step))}`);
  }
  if (!/^(<\?xml[^>]*>\s*)?<svg/.test(await Deno.readTextFile(`${dir}/plots.svg`))) {
    throw new Error("plots.svg is not an SVG");
  }
};

Deno.test("a short run on the CPU backend completes and writes every output file", async () => {
  await run(cpu32, small(`${tmp}/cpu`));
  await assertOutputs(`${tmp}/cpu`, 2);
});

gpuTest("a short run on the GPU completes and writes every output file", async (g) => {
  await run(g, small(`${tmp}/gpu`));
  await assertOutputs(`${tmp}/gpu`, 2);
});

gpuTest(
  "BuPO's internal phase leaves every parameter above layer k unchanged (weight decay off)",
  async (g) => {
    // The shipped base model solves part of the task, so groups have reward variance and gradients flow.
    const shipped = `${root}models/tiny-arith`;
    const cfg = {
      model: shipped,
      objective: "bupo",
      layer: 1,
      phaseSteps: 5,
      weightDecay: 0,
      prompts: 4,
      group: 4,
    };
    await run(g, small(`${tmp}/bupo`, cfg));
    const before = await tensorsOf(`${shipped}/model.safetensors`);
    const after = await tensorsOf(`${tmp}/bupo/checkpoints/step-000002/model.safetensors`);
    let changedBelow = 0;
    for (const [name, a] of before) {
      const b = after.get(name)!;
      const same = a.every((x, i) => Object.is(x, b[i]));
      const above = /^model\.layers\.([2-9]|\d\d+)\./.test(name) || name === "model.norm.weight";
      if (above && !same) throw new Error(`${name} changed during BuPO's internal phase on layer 1`);
      if (!above && !same) changedBelow++;
    }
    if (changedBelow === 0) throw new Error("nothing at or below layer 1 was trained");
  },
);

/** Flags of a tiny CLI run: 2 prompts x 2, 5 new tokens, one minibatch, 2 eval problems at k = 1, a checkpoint
 * every step. */
const tinyRun = (out: string, steps: number, evalEvery: number): string[] =>
  tinyTrainArgs(modelDir, out, { steps, evalEvery, checkpointEvery: 1 });

gpuTest("a killed run resumes to exactly the parameters of an uninterrupted run", async (g) => {
  const args = (out: string) => [
    ...tinyRun(out, 4, 4),
    "--layer",
    "0",
    "--phase-steps",
    "1",
    "--quiet",
  ];
  await run(g, small(`${tmp}/whole`, { steps: 4, evalEvery: 4, evalProblems: 2 }));
  // Start the same run in a child process and kill it (SIGKILL) once it has checkpointed step 2.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}train.ts`, ...args(`${tmp}/killed`)],
    cwd: root,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const childErr = new Response(child.stderr).text();
  const t0 = Date.now();
  for (;;) {
    const step = await Deno.readTextFile(`${tmp}/killed/latest.json`).then(
      (t) => JSON.parse(t).step,
      () => 0,
    );
    if (step >= 2) break;
    if (Date.now() - t0 > 120_000) {
      child.kill("SIGKILL");
      throw new Error(`the child never checkpointed step 2: ${await childErr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  await child.status;
  await childErr;
  const resumed = await cli([...args(`${tmp}/killed`), "--resume"]);
  if (resumed.code !== 0) throw new Error(`resume failed: ${resumed.text}`);
  const a = await tensorsOf(`${tmp}/whole/checkpoints/step-000004/model.safetensors`);
  const b = await tensorsOf(`${tmp}/killed/checkpoints/step-000004/model.safetensors`);
  for (const [name, x] of a) {
    const y = b.get(name)!;
    const i = x.findIndex((v, j) => !Object.is(v, y[j]));
    if (i >= 0) throw new Error(`${name}[${i}]: uninterrupted ${x[i]} vs resumed ${y[i]}`);
  }
  const m = (await Deno.readTextFile(`${tmp}/killed/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l).step
  );
  if (m.join() !== "1,2,3,4") throw new Error(`metrics.jsonl after resume: steps ${m}`);
  void g;
});

Deno.test("bad inputs give clear errors and leave good files alone", async () => {
  const expectFail = async (args: string[], code: number, re: RegExp) => {
    const r = await cli([...args, "--device", "cpu"]);
    if (r.code !== code || !re.test(r.text)) throw new Error(`${args.join(" ")}: exit ${r.code}\n${r.text}`);
  };
  await expectFail(["--frobnicate", "3"], 2, /--frobnicate/);
  await expectFail(["--group", "-4"], 2, /--group/);
  await expectFail(["--group=-4"], 2, /--group: expected a positive number/);
  await expectFail(["--model", `${tmp}/nope`, "--out", `${tmp}/x1`], 1, new RegExp(`${tmp}/nope`));
  const mod = `${tmp}/not_objective.ts`;
  await Deno.writeTextFile(mod, "export const something = 3;\n");
  await expectFail(
    ["--model", modelDir, "--out", `${tmp}/x2`, "--objective", mod],
    2,
    /exports no Objective/,
  );
  // A finished run: rerunning into it without --resume is refused; a corrupt checkpoint fails to resume.
  const dir = `${tmp}/cpu`;
  const snapshot = () =>
    Promise.all(
      ["metrics.jsonl", "latest.json", "checkpoints/step-000001/model.safetensors"].map((f) =>
        Deno.readFile(`${dir}/${f}`)
      ),
    );
  const before = await snapshot();
  await expectFail(["--model", modelDir, "--out", dir], 2, /already holds a bupo run.*--resume.*--overwrite/);
  const ck = `${dir}/checkpoints/step-000002/model.safetensors`;
  const good = await Deno.readFile(ck);
  await Deno.writeFile(ck, good.subarray(0, good.length - 7));
  await expectFail(
    ["--model", modelDir, "--out", dir, "--resume", "--steps", "3"],
    1,
    /model\.safetensors.*truncated/,
  );
  const after = await snapshot();
  before.forEach((b, i) => {
    if (b.length !== after[i].length || b.some((x, j) => x !== after[i][j])) {
      throw new Error(`file ${i} was changed`);
    }
  });
  await Deno.writeFile(ck, good);
});

gpuTest(
  "a non-finite loss stops the run with an error naming it; the last good checkpoint stays",
  async () => {
    const mod = `${tmp}/exploding.ts`;
    // The weight is 1 at step 1 and 1e39 at step 2: finite as a number, infinite once the loss is computed in f32.
    await Deno.writeTextFile(
      mod,
      `import { grpo, piecewise, scale } from "${root}objectives/objective.ts";\n` +
        `import { final } from "${root}policies/internal.ts";\n` +
        `export default scale(piecewise([[1, 1], [2, 1e39]]))(grpo(final));\n`,
    );
    const out = `${tmp}/nan`;
    const r = await cli([...tinyRun(out, 3, 10), "--objective", mod, "--quiet"]);
    if (r.code !== 1 || !/NonFiniteError: step 2: the (loss|gradient norm)/.test(r.text)) {
      throw new Error(
        `exit ${r.code}: ${r.text}`,
      );
    }
    const latest = JSON.parse(await Deno.readTextFile(`${out}/latest.json`));
    if (latest.step !== 1) throw new Error(`latest.json points at step ${latest.step}`);
    await tensorsOf(`${out}/checkpoints/step-000001/model.safetensors`);
  },
);

void gpu;
