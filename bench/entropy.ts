/**
 * Entropy of all L layer policies and 2L modular policies for T tokens: streaming over the vocabulary (one pass
 * for all 3L readouts) against materializing each [T, V] logits matrix then softmax / log-softmax / entropy.
 * Reports tokens per second and peak extra GPU memory of each, in the same run.
 */
import { mul, scale } from "../kernels/elementwise.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { withGpu } from "../engine/gpu/device.ts";
import { concatRows, copyInto, transpose } from "../kernels/layout.ts";
import { matmul } from "../kernels/matmul.ts";
import { sum } from "../kernels/reduce.ts";
import { logProbOf, logSoftmax, softmax } from "../kernels/softmax.ts";
import { reshape, type Tensor, tensor, tidy, view, zeros } from "../engine/tensor.ts";
import { type DecoderConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import { attn, ffn, layer } from "../policies/internal.ts";
import { forward, unembedding } from "../policies/model.ts";
import { layoutOn, Params, segmentsFromHost } from "../policies/params.ts";
import { policyPoint, readPoints } from "../policies/policy.ts";

/** Random parameters built straight into the host segments (no per-tensor copies: the Qwen3 shape is 0.6 GB). */
const fastParams = (gpu: GpuBackend, c: DecoderConfig, seed: number, std = 0.02): Params => {
  const layout = layoutOn(gpu, paramSpecs(c));
  let s = seed >>> 0 || 1;
  return new Params(
    layout,
    segmentsFromHost(gpu, layout, (i, host, o) => {
      const spec = layout.specs[i];
      const n = spec.shape.reduce((a, x) => a * x, 1);
      if (spec.init === "ones") host.fill(1, o, o + n);
      else if (spec.init === "normal") {
        for (let j = 0; j < n; j++) {
          s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
          host[o + j] = (s / 2 ** 31 - 1) * std * 1.732; // uniform with standard deviation `std`
        }
      }
    }),
  );
};

interface Measure {
  readonly ms: number;
  readonly peak: number;
  readonly entropy: Float32Array;
}

/** Time `run` (after one warm-up) and record peak live bytes above what was live before it. */
const measure = async (gpu: GpuBackend, run: () => Tensor, reps: number): Promise<Measure> => {
  const warm = run();
  const entropy = (await warm.data()) as Float32Array;
  warm.dispose();
  await gpu.sync();
  const live = gpu.memory().live;
  gpu.resetPeak();
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) {
    const out = run();
    await out.data();
    out.dispose();
  }
  const ms = (performance.now() - t0) / reps;
  return { ms, peak: gpu.memory().peak - live, entropy };
};

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** WebGPU's default storage-binding limit (llvmpipe's too): a bigger E_u cannot be bound whole. */
const BINDING_LIMIT = 128 * 2 ** 20;

/** Full logits (T, V) of x (T, d): one matmul, or (when E_u exceeds a binding) chunks of E_u^T x^T then a transpose. */
const fullLogits = (x: Tensor, E: Tensor): Tensor => {
  const [V, d] = E.shape, T = x.shape[0];
  if (V * d * 4 <= BINDING_LIMIT) return matmul(x, E, { transB: true }); // (T, V)
  return tidy(() => {
    const zT = zeros(x.backend, [V, T]); // (V, T)
    for (let start = 0; start < V; start += 8192) {
      tidy(() => {
        const C = Math.min(8192, V - start);
        copyInto(view(zT, start * T, [C, T]), matmul(view(E, start * d, [C, d]), x, { transB: true })); // (C, T)
      });
    }
    return transpose(zT); // (T, V)
  });
};

/** One model shape: rows of the result table. */
const benchOne = async (gpu: GpuBackend, label: string, c: DecoderConfig, T: number, reps: number) => {
  const p = fastParams(gpu, c, 7);
  const d = c.hiddenSize;
  try {
    return await tidy(async () => {
      const pols = Array.from({ length: c.numLayers }, (_, l) => [layer(l), attn(l), ffn(l)]).flat();
      // The points come from a real forward pass (beyond one binding the embedding gathers from row blocks).
      const ids = tensor(
        gpu,
        Int32Array.from({ length: T }, (_, i) => (i * 7919 + 11) % c.vocabSize),
        [1, T],
        "i32",
      );
      const f = forward(c, p, ids, tensor(gpu, Int32Array.from({ length: T }, (_, i) => i), [T], "i32"));
      const points = pols.map((q) => reshape(policyPoint(c, p, f, q), [T, d])); // each (T, d)
      const targets = tensor(
        gpu,
        Int32Array.from({ length: T }, (_, i) => (i * 31 + 5) % c.vocabSize),
        [T],
        "i32",
      );
      const E = unembedding(c, p);
      await gpu.sync();
      const streaming = await measure(gpu, () =>
        tidy(() => {
          const r = readPoints(c, p, points.map((x) => reshape(x, [1, T, d])), targets);
          return concatRows(r.map((o) => o.entropy)); // (3L*T)
        }), reps);
      const materialized = await measure(gpu, () => {
        const parts: Tensor[] = [];
        for (const x of points) {
          parts.push(tidy(() => {
            const z = fullLogits(x, E); // (T, V): the whole logits matrix
            logProbOf(z, targets).dispose(); // (T): what a trainer would also read
            return scale(sum(mul(softmax(z), logSoftmax(z))), -1); // (T): H = -sum p log p
          }));
        }
        const out = concatRows(parts);
        parts.forEach((t) => t.dispose());
        return out;
      }, reps);
      let maxDiff = 0;
      for (let i = 0; i < streaming.entropy.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(streaming.entropy[i] - materialized.entropy[i]));
      }
      const what = label;
      const row = (how: string, m: Measure) =>
        `| ${what} | ${how} | ${T} | ${3 * c.numLayers} | ${(T / (m.ms / 1000)).toFixed(1)} | ${
          m.ms.toFixed(1)
        } | ${mib(m.peak)} |`;
      return [
        row("streaming (one pass, 8192-id chunks)", streaming),
        row("materialized [T, V] per readout", materialized),
        `| ${what} | max abs entropy difference | | | | | ${maxDiff.toExponential(1)} nats${
          maxDiff > 1e-2 ? " (the two disagree: a bug)" : ""
        } |`,
      ];
    });
  } finally {
    p.dispose();
  }
};

/** The benchmark table (markdown) for both shapes on one GPU backend. */
export const benchEntropy = async (gpu: GpuBackend): Promise<string> => {
  const tiny = tinyConfig({
    vocabSize: 512,
    numLayers: 4,
    hiddenSize: 64,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    intermediateSize: 128,
  });
  const qwen3 = tinyConfig({
    vocabSize: 151936,
    hiddenSize: 1024,
    numLayers: 2,
    numHeads: 16,
    numKvHeads: 8,
    headDim: 128,
    intermediateSize: 3072,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    tieWordEmbeddings: true,
  });
  const rows = [
    `entropy of all L layer + 2L modular policies on ${gpu.name}`,
    "| model | method | T | readouts | tokens/s | ms per call | peak extra GPU memory |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...(await benchOne(gpu, "tiny (d=64, V=512, L=4)", tiny, 64, 5)),
    ...(await benchOne(gpu, "Qwen3-shaped (d=1024, V=151936, L=2)", qwen3, 32, 2)),
  ];
  return rows.join("\n");
};

if (import.meta.main) {
  console.log(await withGpu(benchEntropy));
}
