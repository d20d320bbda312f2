/** AdamW: GPU equals the f64 reference over several steps; clipping, zero-gradient and NaN-refusal semantics. */
import { NonFiniteError } from "../core/errors.ts";
import { type AdamWHyper, adamwHyper, adamwReference, globalNorm } from "../core/optim.ts";
import { adamwKernel, adamwStep, adamwStepChecked } from "../kernels/adamw.ts";
import type { Backend } from "../engine/backend.ts";
import { computePasses } from "../engine/kernel.ts";

import { type Tensor, tensor } from "../engine/tensor.ts";
import { gpu, gpuTest, hwGpu, softwareTarget } from "./gpu_util.ts";
import { assertClose, cpu32, randomData, throwsShape } from "./util.ts";

const SIZES = [1, 63, 64, 65, 1000, 100003];

/** The same adapter forced to the hardware variant (1024 partial sums instead of llvmpipe's 16). */
const hw = hwGpu;
/** Both kernel variants: the adapter's own choice and the other one. */
const variants = (g: Backend): Backend[] => (hw ? [g, hw] : [g]);

interface State {
  p: Tensor;
  m: Tensor;
  v: Tensor;
}
const init = (b: Backend, n: number, seed: number): State => ({
  p: tensor(b, randomData(n, seed), [n]),
  m: tensor(b, new Float32Array(n), [n]),
  v: tensor(b, new Float32Array(n), [n]),
});
const read = async (s: State) => ({
  p: await s.p.data(),
  m: await s.m.data(),
  v: await s.v.data(),
});
const free = (s: State) => [s.p, s.m, s.v].forEach((t) => t.dispose());

/** Run `steps` AdamW steps on backend b; gradient of step t is randomData(n, seed + t) * gscale. */
const runSteps = async (
  b: Backend,
  n: number,
  seed: number,
  steps: number,
  cfg: Omit<AdamWHyper, "step">,
  gscale: number,
  mask?: Float32Array,
) => {
  const s = init(b, n, seed);
  const dm = mask ? tensor(b, mask, [n]) : undefined;
  const norms: number[] = [];
  for (let t = 1; t <= steps; t++) {
    const g = tensor(b, randomData(n, seed + 100 * t).map((x) => x * gscale), [n]);
    const { norm } = adamwStep(s.p, g, s.m, s.v, { ...cfg, step: t }, dm);
    norms.push((await norm.data())[0]);
    norm.dispose();
    g.dispose();
  }
  const out = await read(s);
  free(s);
  dm?.dispose();
  return { ...out, norms };
};

Deno.test("adamw reference: one step by hand (t = 1: mhat = g, vhat = g^2)", () => {
  const p = new Float64Array([1, -2]), m = new Float64Array(2), v = new Float64Array(2);
  const h = adamwHyper({ lr: 0.1, weightDecay: 0.01 }, 1);
  const norm = adamwReference(p, [0.5, -0.25], m, v, h);
  // p = p (1 - lr wd) - lr g / (|g| + eps)
  const want = [1 * 0.999 - 0.1 * 0.5 / (0.5 + 1e-8), -2 * 0.999 + 0.1 * 0.25 / (0.25 + 1e-8)];
  assertClose(p, want, { atol: 1e-15, rtol: 1e-15 }, "p");
  assertClose(m, [0.05, -0.025], { atol: 1e-15, rtol: 1e-12 }, "m");
  assertClose(v, [0.00025, 0.0000625], { atol: 1e-18, rtol: 1e-12 }, "v");
  assertClose([norm], [Math.sqrt(0.25 + 0.0625)], { atol: 0, rtol: 1e-15 }, "norm");
});

gpuTest(
  "adamw: GPU equals CPU reference over 4 steps (sizes 1..100003, clip/mask; both variants)",
  async (g0) => {
    for (const g of variants(g0)) {
      for (const n of SIZES) {
        for (const variant of [0, 1, 2]) {
          const cfg = {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weightDecay: 0.05,
            // variant 1 clips (norm of n uniforms in [-1,1] is ~sqrt(n/3), so 0.5 sqrt(n) always clips)
            maxGradNorm: variant === 1 ? 0.5 * Math.sqrt(n) * 0.5 : undefined,
          };
          const mask = variant === 2
            ? Float32Array.from({ length: n }, (_, i) => i % 3 === 0 ? 0 : 1)
            : undefined;
          const a = await runSteps(g, n, n + variant, 4, cfg, 1, mask);
          const e = await runSteps(cpu32, n, n + variant, 4, cfg, 1, mask);
          const what = `${g.name} n=${n} variant=${variant}`;
          // Norm: f32 tree sum of n squares vs f64: relative error <= ~log2(n) ulps; 1e-5 relative is ample.
          assertClose(a.norms, e.norms, { atol: 0, rtol: 1e-5 }, `${what} norm`);
          // m, v: f32 multiply-adds of O(1) values (a few ulps per step) plus the clip factor's 1e-5 relative.
          assertClose(a.m, e.m, { atol: 1e-7, rtol: 2e-5 }, `${what} m`);
          assertClose(a.v, e.v, { atol: 1e-8, rtol: 2e-5 }, `${what} v`);
          // p ~ 1 moves by ~lr per step; the update ratio m/sqrt(v) carries ~1e-5 relative error at worst
          // (v ~ g^2 can be small), so per step |dp error| <= lr * 1e-4 = 1e-6, plus f32 rounding of p (6e-8).
          assertClose(a.p, e.p, { atol: 4e-6, rtol: 1e-6 }, `${what} p`);
        }
      }
    }
  },
);

gpuTest("adamw clipping: exact no-op below the max, exact rescale to the max above it", async (g) => {
  for (const n of [1, 65, 1000]) {
    const gr = randomData(n, 7 * n);
    const norm = globalNorm([gr]);
    const base = { lr: 1e-3, beta1: 0, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    // Below: maxGradNorm = 2 norm gives min(1, 2n/(n+1e-6)) = 1, so the step is bit-identical to no clipping.
    const below = await runSteps(g, n, 1, 1, { ...base, maxGradNorm: 2 * norm }, 1);
    const none = await runSteps(g, n, 1, 1, base, 1);
    for (const k of ["p", "m", "v"] as const) {
      for (let i = 0; i < n; i++) {
        if (below[k][i] !== none[k][i]) {
          throw new Error(`n=${n} ${k}[${i}] changed by a clip that should not act`);
        }
      }
    }
    // Above: with beta1 = 0, m after one step IS the clipped gradient g * max / (norm + 1e-6).
    const max = norm / 4;
    const s = init(g, n, 1);
    const gt = tensor(g, gr, [n]);
    const { norm: nt } = adamwStep(s.p, gt, s.m, s.v, { ...base, step: 1, maxGradNorm: max });
    const reported = (await nt.data())[0];
    const m = await s.m.data();
    const scale = max / (reported + 1e-6);
    // f32: the factor is one f32 division (WGSL allows 2.5 ulp), the product one more rounding: 1e-6 relative.
    assertClose(m, gr.map((x) => x * scale), { atol: 0, rtol: 1e-6 }, `n=${n} clipped m`);
    assertClose([globalNorm([m])], [max * norm / (norm + 1e-6)], { atol: 0, rtol: 1e-5 }, `n=${n} |m|`);
    assertClose([reported], [norm], { atol: 0, rtol: 1e-5 }, `n=${n} reported norm`);
    free(s);
    gt.dispose();
    nt.dispose();
  }
});

gpuTest("adamw: weightDecay 0 and a zero gradient leave params exactly where they were", async (g) => {
  for (const n of [1, 64, 1000]) {
    const s = init(g, n, 3);
    const before = await s.p.data();
    const z = tensor(g, new Float32Array(n), [n]);
    for (let t = 1; t <= 3; t++) {
      adamwStep(s.p, z, s.m, s.v, { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: t })
        .norm
        .dispose();
    }
    const after = await read(s);
    for (let i = 0; i < n; i++) {
      if (after.p[i] !== before[i] || after.m[i] !== 0 || after.v[i] !== 0) {
        throw new Error(`n=${n}: moved at ${i}`);
      }
    }
    free(s);
    z.dispose();
  }
});

const nonFiniteCase = async (b: Backend, n: number, bad: number, at: number) => {
  const s = init(b, n, 5);
  // One good step first so that m and v are non-zero.
  const g0 = tensor(b, randomData(n, 9), [n]);
  const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 };
  adamwStep(s.p, g0, s.m, s.v, { ...h, step: 1 }).norm.dispose();
  const before = await read(s);
  const gd = randomData(n, 11);
  gd[at] = bad;
  const gt = tensor(b, gd, [n]);
  const { norm } = adamwStep(s.p, gt, s.m, s.v, { ...h, step: 2 });
  const reported = (await norm.data())[0];
  const after = await read(s);
  for (const k of ["p", "m", "v"] as const) {
    for (let i = 0; i < n; i++) {
      if (!Object.is(after[k][i], before[k][i])) throw new Error(`${b.name} n=${n}: ${k}[${i}] changed`);
    }
  }
  let err: unknown;
  try {
    await adamwStepChecked(s.p, gt, s.m, s.v, { ...h, step: 2 }, undefined, "layer0.w");
  } catch (e) {
    err = e;
  }
  if (!(err instanceof NonFiniteError) || !/layer0\.w: the global gradient norm is/.test(err.message)) {
    throw new Error(`expected NonFiniteError, got ${err}`);
  }
  free(s);
  [g0, gt, norm].forEach((t) => t.dispose());
  return reported;
};

gpuTest(
  "adamw: a NaN gradient leaves params, m, v unchanged and reports NaN; inf reports +inf",
  async (g) => {
    for (const b of [...variants(g), cpu32]) {
      for (const n of [1, 65, 100003]) {
        const at = (n * 7) >> 3;
        const r = await nonFiniteCase(b, n, NaN, at);
        if (!Number.isNaN(r)) throw new Error(`${b.name} n=${n}: NaN gradient reported norm ${r}`);
        const ri = await nonFiniteCase(b, n, -Infinity, at);
        if (ri !== Infinity) throw new Error(`${b.name} n=${n}: inf gradient reported norm ${ri}`);
      }
    }
  },
);

Deno.test("adamw: the shader text does not depend on lr, step or clipping (no recompiles)", () => {
  const target = gpu?.target ?? softwareTarget();
  const spec = { shape: [1000], dtype: "f32" as const };
  const text = (h: AdamWHyper) =>
    computePasses(adamwKernel.gpu(h, [spec, spec, spec, spec], target)).map((p) => p.wgsl).join();
  const a = text(adamwHyper({ lr: 1e-3 }, 1)), b = text(adamwHyper({ lr: 5e-4, maxGradNorm: 1 }, 77));
  if (a !== b) throw new Error("adamw shader text changed with the hyperparameters");
});

Deno.test("adamw: mismatched shapes and bad hyperparameters throw ShapeError naming the tensor", () => {
  const t = (n: number) => tensor(cpu32, new Float32Array(n), [n]);
  const h = adamwHyper({ lr: 1e-3 }, 1);
  throwsShape(
    () => adamwStep(t(4), t(5), t(4), t(4), h),
    /adamw: grads has shape \[5\] but params has shape \[4\]/,
  );
  throwsShape(() => adamwStep(t(4), t(4), t(4), t(4), h, t(3)), /adamw: decayMask has shape \[3\]/);
  throwsShape(
    () => adamwStep(t(4), t(4), t(4), t(4), { ...h, step: 0 }),
    /adamw: step 0 must be an integer >= 1/,
  );
  throwsShape(() => adamwStep(t(4), t(4), t(4), t(4), { ...h, maxGradNorm: 0 }), /adamw: maxGradNorm 0/);
});
