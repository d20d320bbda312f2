/** Softmax, log-softmax and cross-entropy: GPU equals the CPU reference; identities; gradients; NaN targets. */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { log } from "../kernels/elementwise.ts";

import { uniforms } from "../core/rng.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { sum } from "../kernels/reduce.ts";
import { crossEntropy, logProbOf, logSoftmax, softmax } from "../kernels/softmax.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { bothVariants, GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

/** [...lead, C]: at most 289 rows, C up to 700. */
const rowShape = fc.tuple(fc.array(awkwardDim(17), { maxLength: 2 }), awkwardDim(700)).map(([lead, c]) => [
  ...lead,
  c,
]);

/** Logits in [-4, 4) and targets in [0, V) (or anywhere in [-2, V + 2) when `wild`). */
const problem = (shape: number[], seed: number, wild = false) => {
  const v = shape[shape.length - 1];
  const rnd = uniforms(seed);
  const n = size(shape.slice(0, -1));
  const targets = Int32Array.from({ length: n }, () => {
    const u = (rnd() + 1) / 2;
    return wild ? Math.floor(u * (v + 4)) - 2 : Math.min(v - 1, Math.floor(u * v));
  });
  return { logits: randomData(size(shape), seed, 4), targets, lead: shape.slice(0, -1) };
};

type Fn = (b: Backend) => Promise<Float32Array | Float64Array>;

/** Forward values on backend b. */
const fwd = (f: (b: Backend) => Tensor): Fn => (b) => tidy(() => f(b).data()) as Promise<Float32Array>;

/** Gradients of f(x) (one f32 input, seeded with a random cotangent) on backend b. */
const grad =
  (f: (x: Tensor, b: Backend) => Tensor, data: Float32Array, shape: number[], seed: number): Fn => (b) =>
    tidy(async () => {
      const x = tensor(b, data, shape);
      const tape = new Tape().watch(x);
      const y = tape.run(() => f(x, b));
      const [g] = tape.backward(y, [x], tensor(b, randomData(y.size, seed), y.shape));
      return (await g!.data()) as Float32Array;
    });

// Tolerances (f32 on the GPU vs the f32-rounded f64 reference). Logits in [-4, 4): softmax values in (0, 1]
// carry the error of exp (a few ulps on llvmpipe) and of the row sum ((C/256 + 8) u relative, C <= 4100),
// so rtol 1e-5 with atol 1e-7 for tiny probabilities; log-softmax values x - max - log(sum) are at most ~17
// in size, so an absolute 1e-5 (16 ulps at 16) covers the rounding of the three terms.
const SOFTMAX_TOL = { atol: 1e-7, rtol: 1e-5 };
const LOG_TOL = { atol: 1e-5, rtol: 1e-6 };

const compare = async (g: Backend, f: Fn, tol: { atol: number; rtol: number }, what: string) => {
  const want = await f(cpu32);
  for (const b of bothVariants(g)) assertClose(await f(b), want, tol, `${what} on ${b.name}`);
};

gpuTest("softmax and logSoftmax: GPU equals CPU reference on random shapes (both variants)", async (g) => {
  await fc.assert(
    fc.asyncProperty(rowShape, fc.boolean(), fc.nat(), async (shape, isLog, seed) => {
      const data = randomData(size(shape), seed, 4);
      const f = fwd((b) => (isLog ? logSoftmax : softmax)(tensor(b, data, shape)));
      await compare(g, f, isLog ? LOG_TOL : SOFTMAX_TOL, `${isLog ? "logSoftmax" : "softmax"} ${shape}`);
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest("rows longer than a workgroup (C > 1024): softmax, logSoftmax, crossEntropy", async (g) => {
  for (const shape of [[3, 1500], [2, 4099], [1025]]) {
    const { logits, targets, lead } = problem(shape, shape[0]);
    await compare(g, fwd((b) => softmax(tensor(b, logits, shape))), SOFTMAX_TOL, `softmax ${shape}`);
    await compare(g, fwd((b) => logSoftmax(tensor(b, logits, shape))), LOG_TOL, `logSoftmax ${shape}`);
    const ce = fwd((b) => crossEntropy(tensor(b, logits, shape), tensor(b, targets, lead, "i32")));
    await compare(g, ce, LOG_TOL, `crossEntropy ${shape}`);
  }
});

gpuTest("softmax rows sum to 1 and logSoftmax equals log(softmax) on the GPU", async (g) => {
  await fc.assert(
    fc.asyncProperty(rowShape, fc.nat(), async (shape, seed) => {
      const data = randomData(size(shape), seed, 4);
      const c = shape[shape.length - 1];
      for (const b of bothVariants(g)) {
        const [sums, ls, lsm] = await tidy(async () => {
          const x = tensor(b, data, shape);
          const p = softmax(x);
          return [await sum(p).data(), await log(p).data(), await logSoftmax(x).data()];
        });
        // Each of C probabilities has relative error ~1e-6 at most, so the sum is within C * 1e-6... but the
        // errors are shared (one division by the same sum), so 1e-5 + C u bounds it.
        assertClose(
          sums,
          new Float32Array(sums.length).fill(1),
          { atol: 1e-5 + c * 2 ** -24, rtol: 0 },
          "sum",
        );
        // log of a probability with relative error 1e-5 is off by 1e-5 absolute.
        assertClose(ls, lsm, { atol: 2e-5, rtol: 1e-6 }, `log(softmax) ${shape} on ${b.name}`);
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

/** The naive formula in f64: -log(exp(x_t) / sum_j exp(x_j)) (fine for logits in [-4, 4)). */
const naiveCe = (logits: Float32Array, targets: Int32Array, v: number): Float64Array =>
  Float64Array.from(targets, (t, r) => {
    let s = 0;
    for (let j = 0; j < v; j++) s += Math.exp(logits[r * v + j]);
    return -Math.log(Math.exp(logits[r * v + t]) / s);
  });

gpuTest("crossEntropy equals the naive formula; logProbOf is its negation (GPU and CPU)", async (g) => {
  await fc.assert(
    fc.asyncProperty(rowShape, fc.nat(), async (shape, seed) => {
      const { logits, targets, lead } = problem(shape, seed);
      const want = naiveCe(logits, targets, shape[shape.length - 1]);
      for (const b of [cpu32, ...bothVariants(g)]) {
        const [ce, lp] = await tidy(async () => {
          const x = tensor(b, logits, shape), t = tensor(b, targets, lead, "i32");
          return [await crossEntropy(x, t).data(), await logProbOf(x, t).data()];
        });
        assertClose(ce, want, LOG_TOL, `crossEntropy ${shape} on ${b.name}`);
        assertClose(lp, ce.map((v) => -v), { atol: 0, rtol: 0 }, `logProbOf ${shape} on ${b.name}`);
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

gpuTest(
  "out-of-range targets give NaN (loss and gradient row) on both backends; other rows unaffected",
  async (g) => {
    const shape = [6, 5];
    const { logits } = problem(shape, 3);
    const targets = Int32Array.from([0, -1, 4, 5, 2147483647, -2147483648]);
    const bad = [false, true, false, true, true, true];
    const run = (b: Backend) =>
      tidy(async () => {
        const x = tensor(b, logits, shape), t = tensor(b, targets, [6], "i32");
        const tape = new Tape().watch(x);
        const y = tape.run(() => crossEntropy(x, t));
        const [dx] = tape.backward(y, [x], tensor(b, new Float32Array(6).fill(1), [6]));
        return [await y.data(), await dx!.data()];
      });
    const [wantY, wantDx] = await run(cpu32);
    for (const b of bothVariants(g)) {
      const [y, dx] = await run(b);
      assertClose(y, wantY, LOG_TOL, `crossEntropy on ${b.name}`);
      assertClose(dx, wantDx, SOFTMAX_TOL, `d crossEntropy on ${b.name}`);
      bad.forEach((isBad, r) => {
        if (Number.isNaN(y[r]) !== isBad) throw new Error(`row ${r}: loss ${y[r]} on ${b.name}`);
        for (let j = 0; j < 5; j++) {
          if (Number.isNaN(dx[r * 5 + j]) !== isBad) {
            throw new Error(`row ${r}: grad ${dx[r * 5 + j]} on ${b.name}`);
          }
        }
      });
    }
  },
);

gpuTest("fused backward kernels on the GPU equal the CPU reference (both variants)", async (g) => {
  await fc.assert(
    fc.asyncProperty(
      rowShape,
      fc.constantFrom("softmax", "logSoftmax", "crossEntropy", "logProbOf"),
      fc.nat(),
      async (
        shape,
        op,
        seed,
      ) => {
        const { logits, targets, lead } = problem(shape, seed);
        const f = (x: Tensor, b: Backend) => {
          switch (op) {
            case "softmax":
              return softmax(x);
            case "logSoftmax":
              return logSoftmax(x);
            case "crossEntropy":
              return crossEntropy(x, tensor(b, targets, lead, "i32"));
            case "logProbOf":
              return logProbOf(x, tensor(b, targets, lead, "i32"));
          }
        };
        // Gradients are O(1) sums of products of values with the tolerances above; the row sums add
        // (C/256 + 8) u relative of sum|dy y| <= C, i.e. <= 3e-6 absolute for C <= 700.
        await compare(g, grad(f, logits, shape, seed + 1), { atol: 1e-5, rtol: 1e-5 }, `d${op} ${shape}`);
      },
    ),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("softmax/logSoftmax/crossEntropy/logProbOf gradients equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.tuple(fc.array(awkwardDim(5), { maxLength: 2 }), awkwardDim(30)),
      fc.constantFrom("softmax", "logSoftmax", "crossEntropy", "logProbOf"),
      fc.nat(),
      async ([lead, c], op, seed) => {
        const shape = [...lead, c];
        const { logits, targets } = problem(shape, seed);
        const tg = tensor(cpu64, targets, lead, "i32");
        const f = (x: Tensor) =>
          op === "softmax"
            ? softmax(x)
            : op === "logSoftmax"
            ? logSoftmax(x)
            : op === "crossEntropy"
            ? crossEntropy(x, tg)
            : logProbOf(x, tg);
        const r = await checkGrad(cpu64, f, [{ data: logits, shape }], { seed });
        // f64 central differences with eps 1e-5 on smooth functions: error ~ eps^2 |f'''| ~ 1e-9.
        if (r.error > 1e-6) throw new Error(`${op} ${shape}: analytic ${r.analytic}, numeric ${r.numeric}`);
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("bad inputs throw ShapeError naming the op and the shapes", () => {
  const x = tensor(cpu64, new Float32Array(6), [2, 3]);
  throwsShape(() => softmax(tensor(cpu64, [1], [])), /^softmax: x has shape \[\] \(rank 0\)/);
  throwsShape(
    () => logSoftmax(tensor(cpu64, [], [2, 0])),
    /^logSoftmax: x has shape \[2,0\]; the last axis is empty/,
  );
  throwsShape(
    () => crossEntropy(x, tensor(cpu64, [0, 1], [2])),
    /^crossEntropy: targets have dtype f32, expected i32/,
  );
  throwsShape(
    () => crossEntropy(x, tensor(cpu64, [0, 1, 2], [3], "i32")),
    /^crossEntropy: logits have shape \[2,3\], so targets need shape \[2\]; got \[3\]/,
  );
  throwsShape(
    () => logProbOf(tensor(cpu64, [1, 2], [2], "i32"), tensor(cpu64, [0], [], "i32")),
    /^logProbOf: logits has dtype i32, expected f32/,
  );
});
