/** SwiGLU: fused forward and fused backward on the GPU equal the CPU reference; gradients = finite differences. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { swiglu } from "../kernels/mlp.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData } from "./util.ts";

const shapeArb = fc.array(awkwardDim(70), { minLength: 0, maxLength: 3 });

/** Forward output and the gradients (dgate, dup) for a random cotangent, on a backend. */
const run = (be: Backend, shape: number[], seed: number) =>
  tidy(async () => {
    const n = size(shape);
    const gate = tensor(be, randomData(n, seed, 8), shape),
      up = tensor(be, randomData(n, seed + 1, 2), shape);
    const tape = new Tape().watch(gate, up);
    const y = tape.run(() => swiglu(gate, up));
    const yd = await y.data();
    const [dg, du] = tape.backward(y, [gate, up], tensor(be, randomData(n, seed + 2), shape));
    return [yd, await dg!.data(), await du!.data()];
  });

gpuTest("swiglu forward and backward: GPU equals CPU reference on random shapes", async (g) => {
  await fc.assert(
    fc.asyncProperty(shapeArb, fc.nat(), async (shape, seed) => {
      const got = await run(g, shape, seed), want = await run(cpu32, shape, seed);
      // Gate in [-8, 8]: exp and the division carry a few f32 ulps (relative 1e-6 of each factor); the
      // products of up to four factors of size <= 8 give absolute errors ~ 1e-5 at most, relative ~5e-6.
      const names = ["y", "dgate", "dup"];
      got.forEach((x, i) => assertClose(x, want[i], { atol: 1e-6, rtol: 1e-5 }, `${names[i]} ${shape}`));
    }),
    { numRuns: GPU_RUNS * 2 },
  );
});

Deno.test("swiglu gradients equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(shapeArb, fc.nat(), async (shape, seed) => {
      const n = size(shape);
      const r = await checkGrad(cpu64, (g: Tensor, u: Tensor) => swiglu(g, u), [
        { data: randomData(n, seed, 6), shape },
        { data: randomData(n, seed + 1, 2), shape },
      ], { seed });
      // f64 central differences with eps 1e-5: truncation ~ eps^2 |f'''| ~ 1e-10.
      if (r.error > 1e-6) throw new Error(`swiglu ${shape}: ${JSON.stringify(r)}`);
    }),
    { numRuns: 40 },
  );
});

Deno.test("swiglu rejects unequal shapes with a ShapeError naming both", () => {
  const t = (shape: number[]) => tensor(cpu64, new Float64Array(size(shape)), shape);
  let err: unknown;
  try {
    swiglu(t([2, 3]), t([3, 2]));
  } catch (e) {
    err = e;
  }
  if (
    !(err instanceof ShapeError) || !/swiglu: gate has shape \[2,3\], up has shape \[3,2\]/.test(err.message)
  ) {
    throw new Error(`got ${err}`);
  }
});
