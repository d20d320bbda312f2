/** Rotary embedding: GPU (f32 angles, HF style) vs f64 reference, inverse = transpose, gradients, errors. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { rope, ropeKernel } from "../kernels/rope.ts";
import { apply1 } from "../engine/apply.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { assertClose, awkwardDim, cpu64, GPU_RUNS, gpuTest, randomData } from "./util.ts";

interface Case {
  shape: number[];
  pos: Int32Array;
  posShape: number[];
  theta: number;
  x: Float32Array;
}

/** x (B,T,H,D) with B 1-2, T up to 40, H up to 6, even D; positions [T] or [B,T] below `maxPos`. */
const caseArb = (maxPos: number): fc.Arbitrary<Case> =>
  fc.record({
    b: fc.integer({ min: 1, max: 2 }),
    t: awkwardDim(40),
    h: fc.integer({ min: 1, max: 6 }),
    d: fc.constantFrom(2, 4, 8, 16, 64, 6, 10, 128),
    batched: fc.boolean(),
    theta: fc.constantFrom(10000, 500000, 100),
    seed: fc.nat(),
  }).map(({ b, t, h, d, batched, theta, seed }) => {
    const posShape = batched ? [b, t] : [t];
    const r = randomData(size(posShape), seed + 3);
    return {
      shape: [b, t, h, d],
      pos: Int32Array.from(r, (u) => Math.floor((u + 1) / 2 * maxPos)),
      posShape,
      theta,
      x: randomData(b * t * h * d, seed),
    };
  });

const run = (be: Backend, c: Case, inverse = false) =>
  tidy(() =>
    apply1(ropeKernel, { theta: c.theta, inverse }, [
      tensor(be, c.x, c.shape),
      tensor(be, c.pos, c.posShape, "i32"),
    ])
      .data()
  );

/**
 * Tolerance of the f32 GPU rotation (angle = f32(pos) * f32(inv_freq), rounded to f32, as Hugging Face does)
 * against the f64 definition, for |x| <= 1 and positions below maxPos. The angle a = pos inv_freq <= maxPos
 * carries two f32 roundings (inv_freq, then the product), each <= 2^-24 |a|: da <= 2^-23 maxPos; the
 * Cody-Waite reduction adds ~1e-7 and sin/cos a few ulps. A pair (x1, x2) rotated by an angle off by da moves
 * by |(x1, x2)| da <= sqrt(2) da; the products and sums add ~4 ulps. For maxPos = 4096 that is 6.9e-4: the
 * f32 angle itself, not the kernel, limits the agreement (a HF model in f32 sees the same error).
 */
const ropeTol = (maxPos: number) => ({ atol: Math.SQRT2 * (2 ** -23 * maxPos + 2e-7) + 1e-6, rtol: 0 });

for (const maxPos of [64, 4096]) {
  gpuTest(`rope: GPU equals the f64 reference, positions < ${maxPos} (forward and inverse)`, async (g) => {
    await fc.assert(
      fc.asyncProperty(caseArb(maxPos), fc.boolean(), async (c, inverse) => {
        const want = await run(cpu64, c, inverse);
        assertClose(await run(g, c, inverse), want, ropeTol(maxPos), `rope ${c.shape} theta ${c.theta}`);
      }),
      { numRuns: GPU_RUNS },
    );
  });
}

gpuTest(
  "rope: the GPU angle is the HF f32 angle (ties the tolerance to f32 angle rounding alone)",
  async (g) => {
    // Reference computed with the angle rounded the way HF does: f32(f32(pos) * f32(inv_freq)), then exact
    // trig in f64. Remaining differences: range reduction, sin/cos and the rotation arithmetic in f32, which
    // are 2.5e-7 measured at positions up to 4095 (the f32 angle itself is off by up to 4.9e-4 rad, see ropeTol).
    const c = await fc.sample(caseArb(4096), { numRuns: 1, seed: 11 })[0];
    const [nb, nt, nh, d] = c.shape;
    const half = d / 2, want = new Float64Array(c.x.length);
    for (let b = 0; b < nb; b++) {
      for (let t = 0; t < nt; t++) {
        const p = c.pos[c.posShape.length === 2 ? b * nt + t : t];
        for (let h = 0; h < nh; h++) {
          const o = ((b * nt + t) * nh + h) * d;
          for (let i = 0; i < half; i++) {
            const a = Math.fround(p * Math.fround(Math.pow(c.theta, -2 * i / d)));
            want[o + i] = c.x[o + i] * Math.cos(a) - c.x[o + i + half] * Math.sin(a);
            want[o + i + half] = c.x[o + i + half] * Math.cos(a) + c.x[o + i] * Math.sin(a);
          }
        }
      }
    }
    assertClose(await run(g, c), want, { atol: 1e-6, rtol: 0 }, "rope vs f32-angle reference");
  },
);

gpuTest("rope: inverse undoes forward on the GPU", async (g) => {
  await fc.assert(
    fc.asyncProperty(caseArb(4096), async (c) => {
      const back = await tidy(() => {
        const pos = tensor(g, c.pos, c.posShape, "i32");
        const y = apply1(ropeKernel, { theta: c.theta }, [tensor(g, c.x, c.shape), pos]);
        return apply1(ropeKernel, { theta: c.theta, inverse: true }, [y, pos]).data();
      });
      // Same f32 angle both ways: R(-a) R(a) = I up to cos^2 + sin^2 = 1 +- few ulps, and the products.
      assertClose(back, c.x, { atol: 2e-6, rtol: 0 }, "R^-1 R x");
    }),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("rope gradient equals central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb(4096), async (c) => {
      const f = (x: Tensor) => rope(x, tensor(cpu64, c.pos, c.posShape, "i32"), c.theta);
      const r = await checkGrad(cpu64, f, [{ data: c.x, shape: c.shape }], { seed: c.x.length });
      // rope is linear in x: central differences are exact up to f64 rounding (~1e-10 here).
      if (r.error > 1e-6) throw new Error(`rope ${c.shape}: ${JSON.stringify(r)}`);
    }),
    { numRuns: 30 },
  );
});

const throwsShape = (f: () => unknown, pattern: RegExp) => {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ShapeError) || !pattern.test(err.message)) {
    throw new Error(`expected ${pattern}, got ${err}`);
  }
};

Deno.test("rope rejects odd D, bad positions and wrong ranks with ShapeErrors", () => {
  const x = (shape: number[]) => tensor(cpu64, new Float64Array(size(shape)), shape);
  const p = (shape: number[], dtype: "i32" | "f32" = "i32") =>
    tensor(cpu64, new Int32Array(size(shape)), shape, dtype);
  throwsShape(
    () => rope(x([1, 3, 2, 5]), p([3]), 1e4),
    /rope: x has shape \[1,3,2,5\]; head dimension D = 5 must be even/,
  );
  throwsShape(
    () => rope(x([2, 3, 2, 4]), p([2, 4]), 1e4),
    /rope: positions has shape \[2,4\], expected \[3\] or \[2,3\] for x of shape \[2,3,2,4\]/,
  );
  throwsShape(() => rope(x([1, 3, 2, 4]), p([3], "f32"), 1e4), /rope: positions has dtype f32, expected i32/);
  throwsShape(() => rope(x([3, 2, 4]), p([3]), 1e4), /rope: x has shape \[3,2,4\], expected \[B, T, H, D\]/);
});
