/**
 * `deno task pretrain`: supervised pretraining of the shipped base model on the embedded arithmetic task, to
 * partial competence (well above zero, well below perfect on the eval split). Reproducible from its seed.
 */
import { parseArgs } from "node:util";
import { Effect } from "effect";
import { paramSpecs, tinyConfig } from "./policies/config.ts";
import { paramsToHost, writeModelDir } from "./formats/hf.ts";
import { initParams } from "./policies/params.ts";
import { supervisedStep } from "./training/sft.ts";
import { CharTokenizer } from "./formats/tokenizer.ts";
import { saveTokenizer } from "./formats/tokenizer.ts";
import { arithTask } from "./tasks/arith.ts";
import { batch } from "./tasks/task.ts";
import { sequenceLength, supervisedBatch } from "./training/data.ts";
import { evaluate } from "./training/evaluate.ts";
import { withGpu } from "./engine/gpu/device.ts";
import { writeAtomic } from "./io/files.ts";
import { createOptimizer } from "./training/optimizer.ts";

const HELP = `deno task pretrain [--out DIR] [--seed N] [--steps N] [--batch N] [--lr X] [--eval-every N]
Pretrains the tiny Qwen3-style base model (4 layers) on the embedded arithmetic task with supervised
next-token steps on worked solutions, then writes config.json, model.safetensors, tokenizer.json and
pretrain.json (the run's settings and eval accuracy) to --out (default models/tiny-arith).`;

const { values: a } = parseArgs({
  options: {
    out: { type: "string", default: "models/tiny-arith" },
    seed: { type: "string", default: "1" },
    steps: { type: "string", default: "300" },
    batch: { type: "string", default: "64" },
    lr: { type: "string", default: "3e-3" },
    "eval-every": { type: "string", default: "100" },
    "eval-problems": { type: "string", default: "128" },
    help: { type: "boolean", default: false },
  },
  strict: true,
});
if (a.help) {
  console.log(HELP);
  Deno.exit(0);
}
const num = (name: string, v: string, int = true): number => {
  const x = Number(v);
  if (!Number.isFinite(x) || (int && !Number.isInteger(x)) || x <= 0) {
    console.error(`pretrain: --${name} ${v}: expected a positive ${int ? "integer" : "number"}`);
    Deno.exit(2);
  }
  return x;
};
const seed = num("seed", a.seed!), steps = num("steps", a.steps!), B = num("batch", a.batch!);
const lr = num("lr", a.lr!, false), evalEvery = num("eval-every", a["eval-every"]!);
const evalProblems = num("eval-problems", a["eval-problems"]!);

const task = arithTask();
const tok = new CharTokenizer(task.alphabet);
const config = tinyConfig({
  vocabSize: tok.vocabSize,
  hiddenSize: 64,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  intermediateSize: 192,
  ropeTheta: 10000,
});
const T = sequenceLength(task);

await withGpu(async (gpu) => {
  const params = initParams(gpu, paramSpecs(config), seed, 0.05);
  const opt = createOptimizer(params, { lr, weightDecay: 0.01, maxGradNorm: 1 });
  const t0 = performance.now();
  const history: { step: number; loss: number; greedy?: number; avg?: number }[] = [];
  let pending: { step: number; loss: import("./engine/tensor.ts").Tensor }[] = [];
  const flush = async () => {
    for (const x of pending) {
      history.push({ step: x.step, loss: (await x.loss.data())[0] });
      x.loss.dispose();
    }
    pending = [];
  };
  const evalNow = async (step: number) => {
    const r = await evaluate(config, params, tok, task, {
      problems: evalProblems,
      k: 4,
      temperature: 1,
      maxNew: (task.maxSolutionChars ?? 16) + 1,
      seed: 1000 + seed,
      taskSeed: seed,
    });
    const last = history[history.length - 1];
    console.log(
      `step ${step}/${steps}  loss ${last?.loss.toFixed(4)}  eval greedy ${(100 * r.greedy).toFixed(1)}%  ` +
        `avg@4 ${(100 * r.avgAtK).toFixed(1)}%  pass@4 ${(100 * r.passAtK).toFixed(1)}%  ` +
        `${((performance.now() - t0) / 1000).toFixed(0)} s`,
    );
    return r;
  };
  let last = await evalNow(0);
  for (let s = 1; s <= steps; s++) {
    const problems = batch(task, "train", seed, (s - 1) * B, B);
    const { loss, norm } = supervisedStep(config, params, opt, supervisedBatch(tok, problems, T));
    norm.dispose();
    pending.push({ step: s, loss });
    if (s % 10 === 0) await flush();
    if (s % evalEvery === 0 || s === steps) {
      await flush();
      last = await evalNow(s);
    }
  }
  const tensors = await paramsToHost(params);
  const meta = { format: "pt", bupo: "pretrain", seed: String(seed), steps: String(steps) };
  await Effect.runPromise(writeModelDir(a.out!, config, tensors, meta));
  await saveTokenizer(a.out!, tok);
  const report = {
    task: task.name,
    seed,
    steps,
    batch: B,
    lr,
    sequenceLength: T,
    adapter: gpu.name,
    seconds: (performance.now() - t0) / 1000,
    eval: { greedy: last.greedy, avgAt4: last.avgAtK, passAt4: last.passAtK, problems: last.problems },
    loss: history,
  };
  await Effect.runPromise(writeAtomic(`${a.out}/pretrain.json`, JSON.stringify(report, null, 1) + "\n"));
  console.log(
    `wrote ${a.out} (eval greedy ${(100 * last.greedy).toFixed(1)}%, avg@4 ${
      (100 * last.avgAtK).toFixed(1)
    }%)`,
  );
});
