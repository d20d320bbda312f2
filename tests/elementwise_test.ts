/** Elementwise family: GPU = CPU reference on random broadcast shapes; gradients = finite differences. */
import fc from "fast-check";
import { add, div, map, maximum, mul, sub, sumTo, type UnaryOp } from "../kernels/elementwise.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import type { Backend } from "../engine/backend.ts";
import type { Tensor } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { UNARY_OPS } from "./kernel_cases.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData } from "./util.ts";
import { size } from "../core/shape.ts";
import { ShapeError } from "../core/errors.ts";

/** The unary maps checked here: all but those with a constant (scale, addc, powc) and step. */
const unaryOps = UNARY_OPS.filter((op) => !["scale", "addc", "powc", "step"].includes(op));
const positive = new Set<UnaryOp>(["sqrt", "rsqrt", "log", "recip"]);

/** A shape of rank 0-4 and a second shape that broadcasts with it (some axes set to 1 or dropped). */
const broadcastPair = fc.array(awkwardDim(9), { minLength: 0, maxLength: 4 }).chain((s) =>
  fc.tuple(
    fc.constant(s),
    fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }),
    fc.integer({ min: 0, max: s.length }),
  ).map(([a, ones, drop]) => [a, a.map((d, i) => (ones[i] ? 1 : d)).slice(drop)] as const)
);

const run = (b: Backend, f: (...t: Tensor[]) => Tensor, ins: { data: Float32Array; shape: number[] }[]) =>
  tidy(() => f(...ins.map((x) => tensor(b, x.data, x.shape))).data());

// f32 on GPU against the f32 reference computed in f64: a few ulps for exp/log/etc; 1e-5 relative + 1e-6 abs.
const TOL = { atol: 1e-6, rtol: 1e-5 };

gpuTest("unary ops: GPU equals CPU reference on random shapes", async (g) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(awkwardDim(40), { maxLength: 3 }),
      fc.constantFrom(...unaryOps),
      fc.nat(),
      async (shape, op, seed) => {
        const data = randomData(size(shape), seed, 3).map((x) => (positive.has(op) ? Math.abs(x) + 0.1 : x));
        const ins = [{ data, shape }];
        const f = (x: Tensor) => map(x, op);
        assertClose(await run(g, f, ins), await run(cpu32, f, ins), TOL, `unary.${op}`);
      },
    ),
    { numRuns: GPU_RUNS * 2 },
  );
});

gpuTest("binary ops broadcast: GPU equals CPU reference", async (g) => {
  await fc.assert(
    fc.asyncProperty(
      broadcastPair,
      fc.boolean(),
      fc.constantFrom(add, sub, mul, div, maximum),
      fc.nat(),
      async ([sa, sb], swap, f, seed) => {
        const [x, y] = swap ? [sb, sa] : [sa, sb];
        const ins = [{ data: randomData(size(x), seed), shape: [...x] }, {
          data: randomData(size(y), seed + 1).map((v) => v + (v >= 0 ? 0.5 : -0.5)),
          shape: [...y],
        }];
        assertClose(await run(g, f, ins), await run(cpu32, f, ins), TOL, f.name);
      },
    ),
    { numRuns: GPU_RUNS * 2 },
  );
});

gpuTest("sumTo: GPU equals CPU reference", async (g) => {
  await fc.assert(
    fc.asyncProperty(broadcastPair, fc.nat(), async ([big, small], seed) => {
      const ins = [{ data: randomData(size(big), seed), shape: [...big] }];
      const f = (x: Tensor) => sumTo(x, small);
      // Summation order differs (f32 sequential on GPU vs f64 on CPU): 1e-5 relative of the sum of |x| <= n.
      assertClose(await run(g, f, ins), await run(cpu32, f, ins), {
        atol: 1e-5 * Math.max(1, size(big)),
        rtol: 1e-5,
      });
    }),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("elementwise gradients equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(broadcastPair, fc.constantFrom(...unaryOps), fc.nat(), async ([sa, sb], op, seed) => {
      const pos = (d: Float32Array) => d.map((x) => Math.abs(x) + 0.5);
      const a = { data: pos(randomData(size(sa), seed)), shape: sa };
      const b = { data: pos(randomData(size(sb), seed + 7)), shape: sb };
      const f = (x: Tensor, y: Tensor) => div(mul(map(x, op), add(y, x)), maximum(sub(x, y), y));
      const r = await checkGrad(cpu64, f, [a, b], { seed });
      // f64 central differences with eps 1e-5: truncation error ~ eps^2 |f'''| ~ 1e-9 here.
      if (r.error > 1e-6) {
        throw new Error(`${op} on ${sa} / ${sb}: analytic ${r.analytic}, numeric ${r.numeric}`);
      }
    }),
    { numRuns: 60 },
  );
});

Deno.test("binary op on shapes that do not broadcast throws ShapeError naming the op", () => {
  const a = tensor(cpu64, [1, 2, 3], [3]), b = tensor(cpu64, [1, 2], [2]);
  let err: unknown;
  try {
    add(a, b);
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ShapeError) || !/add: shapes \[3\] and \[2\]/.test(err.message)) {
    throw new Error(`got ${err}`);
  }
});
