/** Row reductions: GPU equals the CPU reference (sum, mean, max, sumSquares); gradients equal finite differences. */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";

import type { Kernel } from "../engine/kernel.ts";
import { max, mean, type ReduceParams, reduceRows, sum, sumSquares } from "../kernels/reduce.ts";
import { apply1 } from "../engine/apply.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { bothVariants, GPU_RUNS, gpuTest, hwGpu } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

const hw = hwGpu;

const U = 2 ** -24; // unit roundoff of f32

/** A shape [...lead, C]: lead of rank 0-2 with at most 17 per axis (so at most 289 rows), C up to 700. */
const rowShape = fc.tuple(fc.array(awkwardDim(17), { maxLength: 2 }), awkwardDim(700)).map(([lead, c]) => [
  ...lead,
  c,
]);

const run = (b: Backend, f: (x: Tensor) => Tensor, data: Float32Array, shape: number[]) =>
  tidy(() => f(tensor(b, data, shape)).data());

/** Gradients of f at x on backend b, seeded with a random cotangent. */
const gradOn = (b: Backend, f: (x: Tensor) => Tensor, data: Float32Array, shape: number[], seed: number) =>
  tidy(async () => {
    const x = tensor(b, data, shape);
    const tape = new Tape().watch(x);
    const y = tape.run(() => f(x));
    const [g] = tape.backward(y, [x], tensor(b, randomData(y.size, seed), y.shape));
    return await g!.data();
  });

/**
 * Tolerance of a row sum of C values in [-1, 1): each invocation sums ceil(C/256) values in f32, then an
 * 8-level tree; the error is at most (ceil(C/256) + 8) u sum|x| <= (ceil(C/256) + 8) u C, plus rounding of
 * the reference (one more u relative).
 */
const sumTol = (c: number) => ({ atol: (Math.ceil(c / 256) + 8) * U * c, rtol: U });

const ops = { sum, mean, max };

/** Check `body` on `numRuns` random row shapes, each with one of sum, mean and max and a seed. */
const forRowsAndOps = (
  numRuns: number,
  body: (shape: number[], op: keyof typeof ops, seed: number) => Promise<void>,
) =>
  fc.assert(fc.asyncProperty(rowShape, fc.constantFrom("sum", "mean", "max" as const), fc.nat(), body), {
    numRuns,
  });

gpuTest("sum/mean/max over the last axis: GPU equals CPU reference on random shapes", async (g) => {
  await forRowsAndOps(GPU_RUNS * 2, async (shape, op, seed) => {
    const data = randomData(size(shape), seed);
    const c = shape[shape.length - 1];
    const f = ops[op];
    const got = await run(g, f, data, shape);
    const want = await run(cpu32, f, data, shape);
    if (got.length !== size(shape.slice(0, -1))) {
      throw new Error(`${op}: ${got.length} outputs for ${shape}`);
    }
    // max is exact (a comparison); mean is the sum divided by C (one more rounding).
    const tol = op === "max" ? { atol: 0, rtol: 0 } : op === "sum" ? sumTol(c) : {
      atol: sumTol(c).atol / c,
      rtol: 2 * U,
    };
    assertClose(got, want, tol, `${op} ${JSON.stringify(shape)}`);
  });
});

gpuTest("reductions of rows longer than a workgroup (C > 1024) and of rank-1 inputs", async (g) => {
  for (const shape of [[3, 1500], [2, 4099], [1025], [1]]) {
    const data = randomData(size(shape), shape[0]);
    const c = shape[shape.length - 1];
    for (const op of ["sum", "mean", "max"] as const) {
      const want = await run(cpu32, ops[op], data, shape);
      for (const b of bothVariants(g)) {
        const got = await run(b, ops[op], data, shape);
        const tol = op === "max" ? { atol: 0, rtol: 0 } : { atol: sumTol(c).atol, rtol: 2 * U };
        assertClose(got, want, tol, `${op} ${shape} on ${b.name}`);
      }
    }
  }
  // rank 1 -> rank 0
  const y = tidy(() => sum(tensor(g, [1, 2, 3], [3])));
  if (y.shape.length !== 0 || (await y.toArray())[0] !== 6) throw new Error(`sum([1,2,3]) = ${y}`);
  y.dispose();
});

/** The kernel as if the device allowed only `limit` workgroups per dimension (exercises the folded grid). */
const limited = (k: Kernel<ReduceParams>, limit: number): Kernel<ReduceParams> => ({
  ...k,
  gpu: (p, inputs, target) => k.gpu(p, inputs, { ...target, maxWorkgroupsPerDimension: limit }),
});

gpuTest("more rows than workgroups per dimension fold the grid (both variants)", async (g) => {
  // A real fold on the software variant (64 rows per workgroup): 70,001 rows is two workgroups short of the
  // limit, so also run with the limit lowered to 7 (and on the workgroup variant, 7 rows per dimension).
  const cases: [number, number][] = [[70_001, 3], [300, 5], [50, 300]];
  for (const [rows, c] of cases) {
    const shape = [rows, c];
    const data = randomData(size(shape), rows);
    for (const op of ["sum", "max"] as const) {
      const want = await run(cpu32, ops[op], data, shape);
      const tol = op === "max" ? { atol: 0, rtol: 0 } : sumTol(c);
      for (const b of rows > 1000 ? [g] : bothVariants(g)) {
        for (const limit of [65_535, 7]) {
          const k = limited(reduceRows, limit);
          const got = await run(b, (x) => apply1(k, { op }, [x]), data, shape);
          assertClose(got, want, tol, `${op} ${shape} on ${b.name}, limit ${limit}`);
        }
      }
    }
  }
});

gpuTest("gradients on the GPU equal the CPU reference (max routes dy to the first argmax)", async (g) => {
  await forRowsAndOps(GPU_RUNS, async (shape, op, seed) => {
    // Quantized data has ties, so the first-argmax rule is exercised.
    const data = randomData(size(shape), seed).map((v) => Math.round(v * 4) / 4);
    const got = await gradOn(g, ops[op], data, shape, seed + 1);
    const want = await gradOn(cpu32, ops[op], data, shape, seed + 1);
    // Broadcasts and selects are exact; mean scales by 1/C, rounded to f32 first on the GPU (2 u).
    assertClose(
      got,
      want,
      { atol: 0, rtol: op === "mean" ? 2 * U : 0 },
      `d${op} ${JSON.stringify(shape)}`,
    );
  });
});

Deno.test("max gradient goes to the first index on ties", async () => {
  const x = tensor(cpu64, [1, 3, 3, 0, 2, 2, 2, 2], [2, 4]);
  const tape = new Tape().watch(x);
  const y = tape.run(() => max(x));
  const [gx] = tape.backward(y, [x], tensor(cpu64, [10, 20], [2]));
  assertClose(await gx!.data(), [0, 10, 0, 0, 20, 0, 0, 0], { atol: 0, rtol: 0 }, "dmax");
});

Deno.test("sum/mean/max gradients equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.tuple(fc.array(awkwardDim(5), { maxLength: 2 }), awkwardDim(40)),
      fc.constantFrom("sum", "mean", "max" as const),
      fc.nat(),
      async ([lead, c], op, seed) => {
        const shape = [...lead, c];
        const x = { data: randomData(size(shape), seed), shape };
        const r = await checkGrad(cpu64, ops[op], [x], { seed });
        // f64 central differences with eps 1e-5; sum and mean are linear, max is piecewise linear and the
        // random data have no ties within 1e-5 except with probability ~1e-5 * C^2.
        if (r.error > 1e-6) throw new Error(`${op} ${shape}: analytic ${r.analytic}, numeric ${r.numeric}`);
      },
    ),
    { numRuns: 40 },
  );
});

gpuTest("sumSquares: GPU equals CPU reference, including sizes past the first level's cap", async (g) => {
  // Sizes: empty, tiny, not multiples of 256, and 5e6 (> 1024 groups x 4096 values: the strided loop).
  for (const n of [0, 1, 7, 255, 257, 4097, 100_003, 5_000_000]) {
    const data = randomData(n, n + 3);
    const want = await run(cpu32, sumSquares, data, [n]);
    for (const b of bothVariants(g)) {
      const got = await run(b, sumSquares, data, [n]);
      // All terms are >= 0, so the f32 error is relative: at most (values per invocation + 8 + 1 + 8) u of
      // the sum; values per invocation <= 20 (workgroup variant) or <= 2442 (software: 8 groups) for
      // n <= 5e6, so the bound is 2.2e-6 or 1.5e-4; the tolerances are those bounds rounded up.
      const rtol = b === hw ? 3e-6 : 2e-4;
      assertClose(got, want, { atol: 0, rtol }, `sumSquares n=${n} on ${b.name}`);
    }
  }
  const y = tidy(() => sumSquares(tensor(g, [1, 2, 3, 4], [2, 1, 2])));
  if (y.shape.length !== 0 || (await y.toArray())[0] !== 30) throw new Error(`sumSquares: ${y}`);
  y.dispose();
});

Deno.test("bad inputs throw ShapeError naming the op and the shape", () => {
  throwsShape(() => sum(tensor(cpu64, [1], [])), /^sum: x has shape \[\] \(rank 0\)/);
  throwsShape(() => max(tensor(cpu64, [], [3, 0])), /^max: x has shape \[3,0\]; the last axis is empty/);
  throwsShape(() => mean(tensor(cpu64, [1, 2], [2], "i32")), /^mean: x has dtype i32, expected f32/);
  throwsShape(() => sumSquares(tensor(cpu64, [1, 2], [2], "u32")), /^sumSquares: x has dtype u32/);
});
