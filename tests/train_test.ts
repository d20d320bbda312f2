/** A stack of transformer blocks trained on both backends: same loss curve; a steady loop does not grow memory. */
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { type SupervisedBatch, supervisedStep } from "../training/sft.ts";
import type { Backend } from "../engine/backend.ts";
import { gpuTest } from "./gpu_util.ts";
import { cpu64 } from "./util.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";

const config = tinyConfig({
  numLayers: 2,
  hiddenSize: 32,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  vocabSize: 40,
});

/** A fixed batch of token ids: B sequences of a repeating pattern the model can learn. */
const batchOf = (step: number, B = 3, T = 13): SupervisedBatch => {
  const ids = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) ids[b * T + t] = (3 * b + 5 * t + step) % config.vocabSize;
  }
  return { ids, B, T };
};

const curve = async (backend: Backend, steps: number): Promise<number[]> => {
  const p = initParams(backend, paramSpecs(config), 1234, 0.1);
  const opt = createOptimizer(p, { lr: 3e-3, weightDecay: 0.01, maxGradNorm: 1 });
  const losses = [];
  for (let s = 0; s < steps; s++) losses.push(supervisedStep(config, p, opt, batchOf(s % 2)).loss);
  const out = [];
  for (const l of losses) out.push((await l.data())[0]);
  losses.forEach((l) => l.dispose());
  p.dispose();
  disposeOptimizer(opt);
  return out;
};

gpuTest("two transformer blocks trained 8 steps: GPU loss curve equals the f64 CPU curve", async (g) => {
  const ref = await curve(cpu64, 8);
  const got = await curve(g, 8);
  // f32 on the GPU against f64 on the CPU. Measured drift over these 8 AdamW steps: at most 1.6e-7 relative
  // (about one f32 ulp of the loss). The bound, 1e-5 relative (~80 ulps), leaves room for other adapters'
  // summation orders while staying 4 orders of magnitude below the loss change per step (~0.2).
  for (let i = 0; i < ref.length; i++) {
    if (Math.abs(got[i] - ref[i]) > 1e-5 * Math.abs(ref[i])) {
      throw new Error(`step ${i}: GPU ${got[i]} vs CPU ${ref[i]}\nGPU ${got}\nCPU ${ref}`);
    }
  }
  if (!(ref[ref.length - 1] < ref[0] - 0.05)) throw new Error(`loss did not fall: ${ref}`);
});

gpuTest("1,000 training steps of the block stack allocate no new GPU memory", async (g) => {
  const p = initParams(g, paramSpecs(config), 7, 0.1);
  const opt = createOptimizer(p, { lr: 1e-3 });
  const batch = batchOf(0, 2, 8);
  const run = (n: number) => {
    for (let i = 0; i < n; i++) {
      const r = supervisedStep(config, p, opt, batch);
      r.loss.dispose();
      r.norm.dispose();
    }
  };
  run(3);
  await g.sync();
  const warm = g.memory();
  run(1000);
  await g.sync();
  const after = g.memory();
  if (after.allocations !== warm.allocations || after.live !== warm.live) {
    throw new Error(`GPU memory grew over 1,000 steps: ${JSON.stringify(warm)} -> ${JSON.stringify(after)}`);
  }
  p.dispose();
  disposeOptimizer(opt);
});
