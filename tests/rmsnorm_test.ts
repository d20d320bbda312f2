/** RMSNorm: GPU equals the CPU reference (forward, fused backward, chunked dw); gradients; shape errors. */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";

import { checkGrad } from "../kernels/gradcheck.ts";
import { rmsNorm } from "../kernels/rmsnorm.ts";
import { Tape } from "../engine/tape.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { bothVariants, GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

const U = 2 ** -24;
const EPS = 1e-6;

/** [...lead, d]: rows 1..300 (lead of rank 0-2), d up to 700. */
const rowShape = fc.tuple(fc.array(awkwardDim(17), { maxLength: 2 }), awkwardDim(700)).map(([lead, d]) => [
  ...lead,
  d,
]);

/** x with |x| in [0.25, 1] (so r <= 4 and the error bounds below hold), weight and dy in [-1, 1). */
const problem = (shape: number[], seed: number) => ({
  x: randomData(size(shape), seed).map((v) => Math.sign(v || 1) * (0.25 + 0.75 * Math.abs(v))),
  w: randomData(shape[shape.length - 1], seed + 1),
  dy: randomData(size(shape), seed + 2),
});

const forward = (b: Backend, p: ReturnType<typeof problem>, shape: number[]) =>
  tidy(() => rmsNorm(tensor(b, p.x, shape), tensor(b, p.w, [shape[shape.length - 1]]), EPS).data());

const backward = (b: Backend, p: ReturnType<typeof problem>, shape: number[]) =>
  tidy(async () => {
    const x = tensor(b, p.x, shape), w = tensor(b, p.w, [shape[shape.length - 1]]);
    const tape = new Tape().watch(x, w);
    const y = tape.run(() => rmsNorm(x, w, EPS));
    const [dx, dw] = tape.backward(y, [x, w], tensor(b, p.dy, shape));
    return [await dx!.data(), await dw!.data()];
  });

// Forward: y = x r w with |y| <= 4; r carries the row sum's (d/256 + 8) u and the sqrt/division a few u:
// relative error <= (d/256 + 12) u <= 1.3e-6 for d <= 1500, so rtol 2e-6 plus atol 1e-7 for tiny y.
const FWD_TOL = { atol: 1e-7, rtol: 2e-6 };
// dx = r w dy - x r^3/d s: both terms are at most ~16 in size (|x| <= 1, r <= 4, Cauchy-Schwarz on s), and
// each carries ~(d/256 + 12) u relative, so an absolute 16 * 3 * (d/256 + 12) u ~ 5e-5 covers d <= 1500.
const DX_TOL = { atol: 5e-5, rtol: 1e-5 };
/** dw_j sums `rows` terms |dy x r| <= 4: chunks of 64 in order, then the chunks; error <= (64 + chunks + r's) u
 * of the absolute sum, i.e. <= (64 + 5 + 15) u 4 rows. */
const dwTol = (rows: number) => ({ atol: (64 + Math.ceil(rows / 64) + 15) * U * 4 * rows, rtol: 1e-6 });

gpuTest("rmsNorm forward: GPU equals CPU reference on random shapes (both variants)", async (g) => {
  await fc.assert(
    fc.asyncProperty(rowShape, fc.nat(), async (shape, seed) => {
      const p = problem(shape, seed);
      const want = await forward(cpu32, p, shape);
      for (const b of bothVariants(g)) {
        assertClose(await forward(b, p, shape), want, FWD_TOL, `rmsNorm ${shape} on ${b.name}`);
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest("rmsNorm backward (fused dx, chunked dw): GPU equals CPU reference (both variants)", async (g) => {
  await fc.assert(
    fc.asyncProperty(rowShape, fc.nat(), async (shape, seed) => {
      const p = problem(shape, seed);
      const rows = size(shape.slice(0, -1));
      const [wantDx, wantDw] = await backward(cpu32, p, shape);
      for (const b of bothVariants(g)) {
        const [dx, dw] = await backward(b, p, shape);
        assertClose(dx, wantDx, DX_TOL, `dx ${shape} on ${b.name}`);
        assertClose(dw, wantDw, dwTol(rows), `dw ${shape} on ${b.name}`);
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest("rmsNorm with d > 1024 (a workgroup loops), d = 1, one row, and many chunks of rows", async (g) => {
  for (const shape of [[3, 1500], [1100], [7, 1], [1], [300, 3], [129, 65]]) {
    const p = problem(shape, shape.length + shape[0]);
    const rows = size(shape.slice(0, -1));
    const want = await forward(cpu32, p, shape);
    const [wantDx, wantDw] = await backward(cpu32, p, shape);
    for (const b of bothVariants(g)) {
      assertClose(await forward(b, p, shape), want, FWD_TOL, `rmsNorm ${shape} on ${b.name}`);
      const [dx, dw] = await backward(b, p, shape);
      assertClose(dx, wantDx, DX_TOL, `dx ${shape} on ${b.name}`);
      assertClose(dw, wantDw, dwTol(rows), `dw ${shape} on ${b.name}`);
    }
  }
});

gpuTest(
  "rmsNorm matches the Hugging Face formula x * rsqrt(mean(x^2) + eps) * w on a known row",
  async (g) => {
    // Row [3, 4]: mean(x^2) = 12.5, r = 1/sqrt(12.5 + 1e-6).
    const r = 1 / Math.sqrt(12.5 + 1e-6);
    for (const b of [cpu64, ...bothVariants(g)]) {
      const y = await tidy(() => rmsNorm(tensor(b, [3, 4], [2]), tensor(b, [2, 0.5], [2]), 1e-6).data());
      assertClose(y, [3 * r * 2, 4 * r * 0.5], { atol: 0, rtol: 2e-7 }, `rmsNorm on ${b.name}`);
    }
  },
);

Deno.test("rmsNorm gradients (x and weight) equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.tuple(fc.array(awkwardDim(5), { maxLength: 2 }), awkwardDim(40)),
      fc.constantFrom(1e-6, 1e-5, 0.1),
      fc.nat(),
      async ([lead, d], eps, seed) => {
        const shape = [...lead, d];
        const p = problem(shape, seed);
        const r = await checkGrad(cpu64, (x, w) => rmsNorm(x, w, eps), [{ data: p.x, shape }, {
          data: p.w,
          shape: [d],
        }], { seed });
        // f64 central differences with eps 1e-5 on a smooth function with r <= 4: error ~1e-9.
        if (r.error > 1e-6) throw new Error(`rmsNorm ${shape}: analytic ${r.analytic}, numeric ${r.numeric}`);
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("bad inputs throw ShapeError naming the op and the shapes", () => {
  const x = tensor(cpu64, new Float32Array(6), [2, 3]);
  throwsShape(
    () => rmsNorm(x, tensor(cpu64, [1, 1], [2]), 1e-6),
    /^rmsNorm: x has shape \[2,3\], so weight needs shape \[3\] \(f32\); got \[2\] \(f32\)/,
  );
  throwsShape(
    () => rmsNorm(x, tensor(cpu64, [1, 1, 1], [1, 3]), 1e-6),
    /weight needs shape \[3\] \(f32\); got \[1,3\]/,
  );
  throwsShape(() => rmsNorm(x, tensor(cpu64, [1, 1, 1], [3], "i32"), 1e-6), /got \[3\] \(i32\)/);
  throwsShape(
    () => rmsNorm(tensor(cpu64, [1], []), tensor(cpu64, [1], [1]), 1e-6),
    /^rmsNorm: x has shape \[\]/,
  );
  throwsShape(
    () => rmsNorm(x, tensor(cpu64, [1, 1, 1], [3]), -1),
    /^rmsNorm: eps must be a finite number >= 0/,
  );
});
