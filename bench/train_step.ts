/**
 * Forward + backward of a 6-layer, d = 128 block stack: tokens per second, and the share of GPU time spent in
 * matmul (measured with timestamp queries on every dispatch, so the profiled run itself is a little slower).
 */
import { withGpu } from "../engine/gpu/device.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { lossAndGrads } from "../training/sft.ts";

const config = tinyConfig({
  vocabSize: 256,
  hiddenSize: 128,
  numLayers: 6,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 32,
  intermediateSize: 384,
});

const run = async (gpu: GpuBackend, B: number, T: number, iters: number) => {
  const params = initParams(gpu, paramSpecs(config), 1, 0.05);
  const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 31 + 7) % config.vocabSize);
  const step = () => {
    const r = lossAndGrads(config, params, { ids, B, T });
    r.loss.dispose();
    r.grads.forEach((g) => g.dispose());
  };
  // Two warm-up steps: the second still compiled shader variants in some runs.
  step();
  step();
  await gpu.sync();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) step();
  await gpu.sync();
  const ms = (performance.now() - t0) / iters;
  params.dispose();
  return ms;
};

/** Tokens/s of forward+backward and the matmul share of GPU time. */
export async function benchTrainStep(gpu: GpuBackend): Promise<string> {
  const lines = [
    `## forward + backward, 6 layers, d = 128 (Qwen3-style, vocab 256) on ${gpu.name}`,
    "| batch x tokens | ms / step | tokens / s |",
    "| --- | ---: | ---: |",
  ];
  for (const [B, T] of [[4, 64], [8, 128]]) {
    const ms = await run(gpu, B, T, 5);
    lines.push(`| ${B} x ${T} | ${ms.toFixed(1)} | ${(B * T / ms * 1000).toFixed(0)} |`);
  }
  console.log(lines.join("\n"));
  return lines.join("\n");
}

/** The same step on a profiling backend: GPU time per kernel family. */
export async function profileTrainStep(gpu: GpuBackend): Promise<string> {
  await run(gpu, 8, 128, 2);
  const prof = await gpu.profile();
  const total = prof.reduce((a, p) => a + p.ms, 0);
  const mm = prof.filter((p) => p.name.startsWith("matmul")).reduce((a, p) => a + p.ms, 0);
  const lines = [
    `matmul share of GPU time (8 x 128 tokens, timestamp queries): ${(100 * mm / total).toFixed(1)}% ` +
    `(pack passes included; operand copies into textures are driver copies, outside any pass, not timed); top kernels:`,
    ...prof.slice(0, 8).map((p) => `  ${p.name.padEnd(24)} ${(100 * p.ms / total).toFixed(1)}%`),
  ];
  console.log(lines.join("\n"));
  return lines.join("\n");
}

if (import.meta.main) {
  await withGpu((gpu) => benchTrainStep(gpu));
  await withGpu((gpu) => profileTrainStep(gpu), { profile: true });
}
