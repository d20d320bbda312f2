/** llvmpipe's per-invocation loop budget: the cap itself, and every kernel at a size that used to exceed it. */
import { apply, apply1 } from "../engine/apply.ts";
import type { Backend } from "../engine/backend.ts";
import { attentionWithLse } from "../kernels/attention.ts";
import { sumTo } from "../kernels/elementwise.ts";
import { EMB_BLOCK, embeddingGrad } from "../kernels/embedding.ts";
import { NEG_BIG, readoutFold } from "../kernels/readout.ts";
import { rowPlan, sum } from "../kernels/reduce.ts";
import { crossEntropy, crossEntropyGrad, logSoftmax, softmax } from "../kernels/softmax.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { LOOP_BUDGET } from "../engine/wgsl.ts";
import { streamKl } from "../policies/kl.ts";
import { bothVariants, gpu, gpuTest } from "./gpu_util.ts";
import { assertClose, cpu32, randomData } from "./util.ts";

/** Both kernel variants: the adapter's own (software on llvmpipe) and the forced hardware one. */
const read = (f: () => Tensor): Promise<Float32Array> => tidy(() => f().data()) as Promise<Float32Array>;

gpuTest(
  "llvmpipe caps one invocation's loop iterations at 65,535 (elsewhere a loop runs in full)",
  async (g) => {
    const device = g.device;
    const module = device.createShaderModule({
      code: `@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() {
  var c = 0u;
  for (var i = 0u; i < 70000u; i++) { c++; }
  out[0] = c;
}`,
    });
    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const buf = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
    const rd = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(
      0,
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer: buf } }],
      }),
    );
    pass.dispatchWorkgroups(1);
    pass.end();
    enc.copyBufferToBuffer(buf, 0, rd, 0, 4);
    device.queue.submit([enc.finish()]);
    await rd.mapAsync(GPUMapMode.READ);
    const count = new Uint32Array(rd.getMappedRange().slice(0))[0];
    rd.unmap();
    buf.destroy();
    rd.destroy();
    const capped = /llvmpipe|lavapipe/i.test(g.adapterInfo.description);
    const want = capped ? LOOP_BUDGET : 70000;
    if (count !== want) {
      throw new Error(
        `${g.adapterInfo.description}: a 70,000-iteration loop ran ${count} times`,
      );
    }
  },
);

// Tolerances: f32 sums over 151,936 terms of magnitude <= e^0 in a fixed order (a few 1e-7 relative each step,
// ~1e-5 accumulated); softmax entries are ~1e-5, so atol 1e-9 + rtol 1e-4 on probabilities, 1e-4 absolute on
// log-probabilities and losses (of size ~12), 1e-3 relative on the row sum.
const V = 151936;

gpuTest(
  "softmax, logSoftmax, crossEntropy and its gradient, sum: rows of 151,936 on both variants",
  async (g) => {
    const x = randomData(2 * V, 7, 3);
    const ids = new Int32Array([5, V - 2]);
    const dy = new Float32Array([1, -0.5]);
    const run = (b: Backend) =>
      Promise.all([
        read(() => softmax(tensor(b, x, [2, V]))),
        read(() => logSoftmax(tensor(b, x, [2, V]))),
        read(() => crossEntropy(tensor(b, x, [2, V]), tensor(b, ids, [2], "i32"))),
        read(() =>
          apply1(crossEntropyGrad, { negate: false }, [
            tensor(b, x, [2, V]),
            tensor(b, ids, [2], "i32"),
            tensor(b, dy, [2]),
          ])
        ),
        read(() => sum(tensor(b, x, [2, V]))),
      ]);
    const want = await run(cpu32);
    for (const b of bothVariants(g)) {
      const got = await run(b);
      assertClose(got[0], want[0], { atol: 1e-9, rtol: 1e-4 }, `${b.name} softmax`);
      assertClose(got[1], want[1], { atol: 1e-4, rtol: 1e-5 }, `${b.name} logSoftmax`);
      assertClose(got[2], want[2], { atol: 1e-4, rtol: 1e-5 }, `${b.name} crossEntropy`);
      assertClose(got[3], want[3], { atol: 1e-8, rtol: 1e-4 }, `${b.name} crossEntropyGrad`);
      assertClose(got[4], want[4], { atol: 1e-2, rtol: 1e-3 }, `${b.name} sum`);
    }
    // The row plan's choice: one invocation per row only while passes x cols fits the budget.
    if (!rowPlan(1, 4096, { ...g.target, software: true }, 3).thread) {
      throw new Error(
        "short rows: thread plan",
      );
    }
    if (rowPlan(1, V, { ...g.target, software: true }, 3).thread) {
      throw new Error(
        "long rows: workgroup plan",
      );
    }
  },
);

gpuTest("sumTo: [70000, 3] -> [3] and [2, 70000, 3] -> [1, 1, 3] (two-level reduction)", async (g) => {
  for (const [shape, to] of [[[70000, 3], [3]], [[2, 70000, 3], [1, 1, 3]]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = randomData(n, 11);
    const want = await read(() => sumTo(tensor(cpu32, x, shape), to));
    for (const b of bothVariants(g)) {
      const got = await read(() => sumTo(tensor(b, x, shape), to));
      // ~1.4e5 terms in [-1, 1): partial sums of 1024 in order, then the chunks; f32 error ~1e-4 absolute.
      assertClose(got, want, { atol: 2e-3, rtol: 1e-4 }, `${b.name} sumTo ${shape} -> ${to}`);
    }
  }
});

gpuTest(
  "embeddingGrad: 70,000 positions, one id repeated (padding) and a mix, in blocks of positions",
  async (g) => {
    const T = 70000, d = 3, vocab = 5;
    if (T <= EMB_BLOCK) throw new Error("the test must cover the blocked path");
    const dy = randomData(T * d, 3);
    const mixed = Int32Array.from(
      { length: T },
      (_, t) => (t % 7 === 0 ? 2 : t % 11 === 0 ? -1 : (t * 31) % vocab),
    );
    for (const ids of [new Int32Array(T).fill(4), mixed]) {
      const f = (b: Backend) =>
        read(() => apply1(embeddingGrad, { vocab }, [tensor(b, dy, [T, d]), tensor(b, ids, [T], "i32")]));
      const want = await f(cpu32);
      const got = await f(g);
      // Sums of up to 70,000 terms in [-1, 1) in position order (blocks of 16,384): f32 error ~1e-4 absolute.
      assertClose(got, want, { atol: 2e-3, rtol: 1e-4 }, "embeddingGrad");
    }
  },
);

gpuTest("readoutFold: one chunk of 70,000 vocabulary ids (past the thread plan's budget)", async (g) => {
  const R = 2, C = 70000;
  const z = randomData(R * C, 5, 4);
  const ids = new Int32Array([3, C - 1]);
  const st0 = new Float32Array([NEG_BIG, 0, 0, 0, NEG_BIG, 0, 0, 0]);
  const f = (b: Backend) =>
    read(() =>
      apply(readoutFold, { start: 0, vocab: C, temperature: 0.7 }, [
        tensor(b, st0, [R, 4]),
        tensor(b, z, [R, C]),
        tensor(b, ids, [R], "i32"),
      ])[0]
    );
  const want = await f(cpu32);
  for (const b of bothVariants(g)) {
    // State = (max, sum of exp, sum of exp * z/T, target z/T); sums of 70,000 terms ~1: rtol 1e-4.
    assertClose(await f(b), want, { atol: 1e-4, rtol: 1e-4 }, `${b.name} readoutFold`);
  }
});

gpuTest(
  "attention: T = S = 1100, D = 64 (S (2D + 1) > 65,535), forward and gradients on both lowerings",
  async (g) => {
    const T = 1100, D = 64;
    const q = randomData(T * D, 1),
      k = randomData(T * D, 2),
      v = randomData(T * D, 3),
      dO = randomData(T * D, 4);
    const shape = [1, T, 1, D];
    const run = async (b: Backend, opts: { variant?: "row" | "tile"; kvChunk?: number }) => {
      const [tq, tk, tv] = [q, k, v].map((x) => tensor(b, x, shape));
      const tape = new Tape().watch(tq, tk, tv);
      const o = tape.run(() => attentionWithLse(tq, tk, tv, opts)[0]);
      const grads = tape.backward(o, [tq, tk, tv], tensor(b, dO, shape));
      const out = [await o.data(), ...await Promise.all(grads.map((x) => x!.data()))];
      [tq, tk, tv, o, ...grads].forEach((x) => x?.dispose());
      return out;
    };
    const want = await run(cpu32, {});
    // The tile lowering also takes the split dk/dv path (chunks of 256 queries summed by a second pass).
    for (const [b, opts] of [[g, { variant: "row" }], [g, { variant: "tile", kvChunk: 256 }]] as const) {
      const got = await run(b, opts);
      // Softmax over up to 1100 keys of f32 scores (|q.k| <= ~20 scaled by 1/8): ~1e-5 relative in P; gradient
      // sums of 1100 terms: atol 1e-4, rtol 1e-3.
      ["o", "dq", "dk", "dv"].forEach((name, i) =>
        assertClose(got[i], want[i], { atol: 1e-4, rtol: 1e-3 }, `${b.name} ${JSON.stringify(opts)} ${name}`)
      );
    }
  },
);

if (gpu === null) console.warn("loop_budget_test: no adapter, GPU tests skipped");

gpuTest(
  "streamKl over a 70,000-id chunk stays correct on llvmpipe (the per-row plan would pass the budget)",
  async (g) => {
    const V = 70_016, d = 4, R = 2;
    // The last 4,000 ids carry most of pi_a's mass: a loop cut at 65,535 iterations would miss them entirely.
    const E = Float32Array.from(
      { length: V * d },
      (_, i) => (Math.floor(i / d) >= 66_000 ? 1 : Math.sin(i * 0.37) * 0.1),
    );
    const run = async (b: typeof g | typeof cpu32) => {
      const xa = tensor(b, [3, 3, 3, 3, 2, 2, 2, 2], [R, d]),
        xb = tensor(b, [-1, 0, 1, 0, 0, 1, 0, -1], [R, d]);
      return await streamKl(xa, xb, tensor(b, E, [V, d]), { chunk: V }).data();
    };
    // One chunk of 70,016 ids: f32 sums of 7e4 terms in different orders.
    assertClose(await run(g), await run(cpu32), { atol: 2e-5, rtol: 1e-3 }, "kl");
  },
);
