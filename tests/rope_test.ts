/**
 * Rotary embedding: GPU (f32 angles, HF style) vs f64 reference, inverse = transpose, gradients, errors; Llama 3
 * frequency scaling against values hand-computed from Hugging Face's published formula.
 */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { rope, ropeInvFreqs, ropeKernel, type RopeScaling } from "../kernels/rope.ts";
import { computePasses } from "../engine/kernel.ts";
import { f32Lit } from "../engine/wgsl.ts";
import { apply1 } from "../engine/apply.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest, softwareTarget } from "./gpu_util.ts";
import { assertClose, awkwardDim, closeness, cpu64, randomData, throwsShape } from "./util.ts";

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

/** The rotation of c.x in f64 by `angle(position, i)` for the pair (i, i + D/2) of each head. */
const rotate = (c: Case, angle: (p: number, i: number) => number): Float64Array => {
  const [nb, nt, nh, d] = c.shape, half = d / 2, out = new Float64Array(c.x.length);
  for (let b = 0; b < nb; b++) {
    for (let t = 0; t < nt; t++) {
      const p = c.pos[c.posShape.length === 2 ? b * nt + t : t];
      for (let h = 0; h < nh; h++) {
        const o = ((b * nt + t) * nh + h) * d;
        for (let i = 0; i < half; i++) {
          const a = angle(p, i);
          out[o + i] = c.x[o + i] * Math.cos(a) - c.x[o + i + half] * Math.sin(a);
          out[o + i + half] = c.x[o + i + half] * Math.cos(a) + c.x[o + i] * Math.sin(a);
        }
      }
    }
  }
  return out;
};

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
    const d = c.shape[3];
    const want = rotate(c, (p, i) => Math.fround(p * Math.fround(Math.pow(c.theta, -2 * i / d))));
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

// ---- Llama 3 scaling --------------------------------------------------------------------------------------
// transformers' _compute_llama3_parameters: wavelen = 2 pi / inv_freq; low_freq_wavelen = orig / low_freq_factor;
// high_freq_wavelen = orig / high_freq_factor; inv_freq / factor where wavelen > low_freq_wavelen; unchanged
// where wavelen < high_freq_wavelen; in between (1 - s) inv_freq / factor + s inv_freq with
// s = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor).

/** D = 8, theta 10^4: inv_freq = 1, 0.1, 0.01, 0.001; wavelengths 6.28, 62.8, 628, 6283. */
const SMALL: RopeScaling = {
  kind: "llama3",
  factor: 8,
  lowFreqFactor: 1,
  highFreqFactor: 4,
  originalMaxPositionEmbeddings: 1024, // low_freq_wavelen 1024, high_freq_wavelen 256
};
/** By hand: two frequencies above the high band (kept), one in the blend, one below the low band (/ 8). */
const SMALL_WANT = (() => {
  const s = (1024 / (2 * Math.PI / 0.01) - 1) / (4 - 1); // 0.20992...
  return [1, 0.1, (1 - s) * 0.01 / 8 + s * 0.01, 0.001 / 8];
})();

const { closeAll: closeRel } = closeness(1e-14, "relative");

Deno.test("llama3 rope scaling: frequencies hand-computed from the published formula (D = 8, all three bands)", () => {
  if (Math.abs(SMALL_WANT[2] - 0.0030868) > 1e-7) throw new Error(`hand value ${SMALL_WANT[2]}`);
  closeRel(ropeInvFreqs(10000, 8, SMALL), SMALL_WANT, "llama3 D=8");
  closeRel(ropeInvFreqs(10000, 8), [1, 0.1, 0.01, 0.001], "unscaled D=8");
});

Deno.test("llama3 rope scaling with Llama 3.2's parameters: 15 kept, 3 blended, 14 divided by 32 (D = 64)", () => {
  const s: RopeScaling = {
    kind: "llama3",
    factor: 32,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const plain = ropeInvFreqs(500000, 64), scaled = ropeInvFreqs(500000, 64, s);
  // wavelen_i = 2 pi 500000^(i/32): < 2048 for i <= 14, > 8192 for i >= 18 (by hand: ln 500000 = 13.122).
  for (let i = 0; i < 32; i++) {
    const r = scaled[i] / plain[i];
    const wavelen = 2 * Math.PI / plain[i];
    if (i <= 14 && r !== 1) throw new Error(`i=${i} (wavelen ${wavelen}) should be kept, ratio ${r}`);
    if (i >= 18 && Math.abs(r - 1 / 32) > 1e-15) {
      throw new Error(`i=${i} should be divided by 32, ratio ${r}`);
    }
    if (i >= 15 && i <= 17) {
      const sm = (8192 / wavelen - 1) / 3;
      if (!(sm > 0 && sm < 1) || Math.abs(r - ((1 - sm) / 32 + sm)) > 1e-14) {
        throw new Error(`i=${i}: ratio ${r}, smooth ${sm}`);
      }
    }
  }
});

const scaledCase = (): Case => {
  const c = fc.sample(caseArb(4096), { numRuns: 1, seed: 5 })[0];
  return {
    ...c,
    shape: [c.shape[0], c.shape[1], c.shape[2], 8],
    x: randomData(c.shape[0] * c.shape[1] * c.shape[2] * 8, 9),
  };
};

/** The rotation with the hand-computed frequencies, in f64. */
const rotateBy = (c: Case, inv: readonly number[]): Float64Array => rotate(c, (p, i) => p * inv[i]);

const runScaled = (be: Backend, c: Case, scaling: RopeScaling, inverse = false) =>
  tidy(() =>
    apply1(ropeKernel, { theta: 10000, scaling, inverse }, [
      tensor(be, c.x, c.shape),
      tensor(be, c.pos, c.posShape, "i32"),
    ]).data()
  );

Deno.test("llama3 rope scaling: the CPU kernel rotates by the hand-computed frequencies; rope() passes the scaling", async () => {
  const c = scaledCase();
  const want = rotateBy(c, SMALL_WANT);
  assertClose(await runScaled(cpu64, c, SMALL), want, { atol: 1e-12, rtol: 0 }, "scaled rope (f64)");
  const unscaled = rotateBy(c, [1, 0.1, 0.01, 0.001]);
  const diff = want.reduce((m, v, i) => Math.max(m, Math.abs(v - unscaled[i])), 0);
  if (diff < 0.1) throw new Error(`scaling changes the rotation by only ${diff}: the test could not fail`);
  const viaRope = await tidy(() =>
    rope(tensor(cpu64, c.x, c.shape), tensor(cpu64, c.pos, c.posShape, "i32"), 10000, SMALL).data()
  );
  assertClose(viaRope, want, { atol: 1e-12, rtol: 0 }, "rope(x, pos, theta, scaling)");
  // The gradient rule keeps the scaling: inverse(scaled(x)) = x.
  const back = await tidy(() => {
    const pos = tensor(cpu64, c.pos, c.posShape, "i32");
    const y = apply1(ropeKernel, { theta: 10000, scaling: SMALL }, [tensor(cpu64, c.x, c.shape), pos]);
    return apply1(ropeKernel, { theta: 10000, scaling: SMALL, inverse: true }, [y, pos]).data();
  });
  assertClose(back, c.x, { atol: 1e-12, rtol: 0 }, "R^-1 R x (scaled)");
});

Deno.test("llama3 rope scaling: the WGSL bakes the scaled frequencies as f32 literals", () => {
  const specs = [{ shape: [1, 3, 2, 8], dtype: "f32" as const }, { shape: [3], dtype: "i32" as const }];
  const wgsl =
    computePasses(ropeKernel.gpu({ theta: 10000, scaling: SMALL }, specs, softwareTarget()))[0].wgsl;
  const line = `const INV_FREQ = array<f32, 4>(${SMALL_WANT.map(f32Lit).join(", ")});`;
  if (!wgsl.includes(line)) throw new Error(`missing ${line} in\n${wgsl}`);
  const plain = computePasses(ropeKernel.gpu({ theta: 10000 }, specs, softwareTarget()))[0].wgsl;
  if (plain.includes(line)) throw new Error("the unscaled kernel has the scaled frequencies");
});

gpuTest("llama3 rope scaling: GPU equals the f64 reference (forward and inverse)", async (g) => {
  const c = scaledCase();
  for (const inverse of [false, true]) {
    const want = await runScaled(cpu64, c, SMALL, inverse);
    assertClose(await runScaled(g, c, SMALL, inverse), want, ropeTol(4096), `scaled rope inverse=${inverse}`);
  }
});

Deno.test("rope rejects a scaling it cannot use with a ShapeError", () => {
  const x = tensor(cpu64, new Float64Array(8), [1, 1, 1, 8]),
    p = tensor(cpu64, new Int32Array(1), [1], "i32");
  throwsShape(() => rope(x, p, 1e4, { ...SMALL, highFreqFactor: 1 }), /highFreqFactor = 1 must be greater/);
  throwsShape(() => rope(x, p, 1e4, { ...SMALL, factor: 0 }), /factor = 0 must be a positive finite number/);
});
