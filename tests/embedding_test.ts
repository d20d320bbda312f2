/** Embedding: GPU gather equals the CPU reference; the deterministic scatter-add gradient; out-of-range ids. */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { embedding } from "../kernels/embedding.ts";
import { uniforms } from "../core/rng.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { Tape } from "../engine/tape.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

const U = 2 ** -24;

/** V (1..50, so ids repeat), d (up to 700), ids shape of rank 0-2 (up to 289 positions). */
const problemShape = fc.record({
  v: fc.integer({ min: 1, max: 50 }),
  d: awkwardDim(700),
  lead: fc.array(awkwardDim(17), { maxLength: 2 }),
  wild: fc.boolean(),
});

/** ids in [0, V), or in [-3, V + 3) when `wild` (out-of-range ids included). */
const idsFor = (n: number, v: number, seed: number, wild: boolean): Int32Array => {
  const rnd = uniforms(seed);
  return Int32Array.from({ length: n }, () => {
    const u = (rnd() + 1) / 2;
    return wild ? Math.floor(u * (v + 6)) - 3 : Math.min(v - 1, Math.floor(u * v));
  });
};

const forward = (b: Backend, table: Float32Array, v: number, d: number, ids: Int32Array, lead: number[]) =>
  tidy(() => embedding(tensor(b, table, [v, d]), tensor(b, ids, lead, "i32")).data());

const tableGrad = (b: Backend, table: Float32Array, v: number, d: number, ids: Int32Array, lead: number[]) =>
  tidy(async () => {
    const t = tensor(b, table, [v, d]);
    const tape = new Tape().watch(t);
    const y = tape.run(() => embedding(t, tensor(b, ids, lead, "i32")));
    const [g] = tape.backward(y, [t], tensor(b, randomData(y.size, 99), y.shape));
    return await g!.data();
  });

gpuTest("embedding forward: GPU equals CPU reference exactly; out-of-range ids read zeros", async (g) => {
  await fc.assert(
    fc.asyncProperty(problemShape, fc.nat(), async ({ v, d, lead, wild }, seed) => {
      const ids = idsFor(size(lead), v, seed, wild);
      const table = randomData(v * d, seed);
      const want = await forward(cpu32, table, v, d, ids, lead);
      const got = await forward(g, table, v, d, ids, lead);
      // A gather copies values: exact.
      assertClose(got, want, { atol: 0, rtol: 0 }, `embedding V=${v} d=${d} ids ${lead}`);
      ids.forEach((id, t) => {
        if (id < 0 || id >= v) {
          for (let j = 0; j < d; j++) if (got[t * d + j] !== 0) throw new Error(`id ${id}: not a zero row`);
        }
      });
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest("embedding backward (scatter-add): GPU equals CPU reference, deterministic", async (g) => {
  await fc.assert(
    fc.asyncProperty(problemShape, fc.nat(), async ({ v, d, lead, wild }, seed) => {
      const n = size(lead);
      const ids = idsFor(n, v, seed, wild);
      const table = randomData(v * d, seed);
      const want = await tableGrad(cpu32, table, v, d, ids, lead);
      const got = await tableGrad(g, table, v, d, ids, lead);
      // Each entry sums at most n values in [-1, 1), in position order in f32 on the GPU: the error is at most
      // (n - 1) u sum|dy| <= n^2 u; plus the rounding of the f64 reference to f32 (u relative).
      assertClose(got, want, { atol: n * n * U, rtol: U }, `dTable V=${v} d=${d} ids ${lead}`);
      const again = await tableGrad(g, table, v, d, ids, lead);
      assertClose(again, got, { atol: 0, rtol: 0 }, "a second backward run (determinism)");
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest("embedding backward with many positions and a large vocabulary", async (g) => {
  // 2,000 positions over V = 5,000 (few repeats: the next-occurrence scan runs long) and over V = 3 (long
  // chains), d = 33; plus no positions at all (the gradient is all zeros).
  for (const [v, n] of [[5000, 2000], [3, 2000], [4, 0]]) {
    const d = 33;
    const ids = idsFor(n, v, v, false);
    const table = randomData(v * d, 1);
    const want = await tableGrad(cpu32, table, v, d, ids, [n]);
    const got = await tableGrad(g, table, v, d, ids, [n]);
    // Chains of up to n terms in [-1, 1): the error is at most n^2 u (see above).
    assertClose(got, want, { atol: n * n * U, rtol: U }, `dTable V=${v} n=${n}`);
  }
});

Deno.test("embedding gradient equals central finite differences (f64), including out-of-range ids", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 12 }),
      awkwardDim(20),
      fc.array(awkwardDim(6), { maxLength: 2 }),
      fc.nat(),
      async (v, d, lead, seed) => {
        const ids = tensor(cpu64, idsFor(size(lead), v, seed, true), lead, "i32");
        const r = await checkGrad(cpu64, (t) => embedding(t, ids), [{
          data: randomData(v * d, seed),
          shape: [v, d],
        }], {
          seed,
        });
        // The map is linear in the table: the central difference is exact up to f64 rounding.
        if (r.error > 1e-6) {
          throw new Error(`embedding V=${v} d=${d}: analytic ${r.analytic}, numeric ${r.numeric}`);
        }
      },
    ),
    { numRuns: 40 },
  );
});

Deno.test("bad inputs throw ShapeError naming the op and the shapes", () => {
  const table = tensor(cpu64, new Float32Array(6), [3, 2]);
  throwsShape(
    () => embedding(table, tensor(cpu64, [0, 1], [2])),
    /^embedding: ids have dtype f32 and shape \[2\], expected i32/,
  );
  throwsShape(() => embedding(table, tensor(cpu64, [0, 1], [2], "u32")), /^embedding: ids have dtype u32/);
  throwsShape(
    () => embedding(tensor(cpu64, [1, 2], [2]), tensor(cpu64, [0], [1], "i32")),
    /^embedding: table has shape \[2\] \(f32\), expected \[V, d\] \(f32\)/,
  );
  throwsShape(
    () => embedding(tensor(cpu64, [1, 2], [1, 2], "i32"), tensor(cpu64, [0], [1], "i32")),
    /^embedding: table has shape \[1,2\] \(i32\)/,
  );
});

Deno.test("embedding of scalar ids gives [d]; ids of shape [2, 3] give [2, 3, d]", async () => {
  const table = tensor(cpu64, [1, 2, 3, 4, 5, 6], [3, 2]);
  const a = embedding(table, tensor(cpu64, [2], [], "i32"));
  const b = embedding(table, tensor(cpu64, [0, 1, 2, 2, 1, 0], [2, 3], "i32"));
  if (a.shape.join() !== "2" || b.shape.join() !== "2,3,2") throw new Error(`${a}, ${b}`);
  assertClose(await a.data(), [5, 6], { atol: 0, rtol: 0 });
});

gpuTest(
  "embedding of a table larger than one storage binding (135 MB > 128 MiB) gathers from row blocks",
  async (g) => {
    const V = 33_000, d = 1024; // 135 MB: past llvmpipe's 128 MiB maxStorageBufferBindingSize
    const table = new Float32Array(V * d);
    for (let i = 0; i < table.length; i += 97) table[i] = (i % 1013) / 1013;
    for (let v = 0; v < V; v++) table[v * d] = v; // column 0 names the row
    const ids = [0, 32_767, 32_768, 32_999, 5, -1, 33_000, 16_383, 16_384];
    const out = await tidy(() => embedding(tensor(g, table, [V, d]), tensor(g, ids, [3, 3], "i32")).data());
    ids.forEach((id, t) => {
      const ok = id >= 0 && id < V;
      for (const j of [0, 1, 97 % d, 500, d - 1]) {
        const want = ok ? table[id * d + j] : 0;
        if (out[t * d + j] !== want) {
          throw new Error(`row ${t} (id ${id}) col ${j}: ${out[t * d + j]} != ${want}`);
        }
      }
    });
  },
);
