/** Fused AdamW step on the GPU: global gradient norm (two-level reduction), clipping and the update in place. */
import { ShapeError } from "../core/errors.ts";
import {
  type AdamWHyper,
  adamwProblem,
  adamwReference,
  type FloatArray,
  requireFinite,
} from "../core/optim.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { defineKernel, type GpuTarget, type Kernel } from "./kernel.ts";
import { apply } from "./run.ts";
import type { Tensor } from "./tensor.ts";
import { flatIndex, grid1d, LOOP_SAFE, storage } from "./wgsl.ts";

const WG = 256;
/**
 * Most workgroups of the partial-sum pass (the finishing pass folds up to this many partials). A GPU wants
 * many; llvmpipe pays per workgroup for the barrier tree and runs 2 cores, so 16 is ~7x faster there
 * (100k elements: 20 ms vs 150 ms per step).
 */
const maxPartials = (target: GpuTarget): number => (target.software ? 16 : 1024);

/** The kernel's params: the step's hyperparameters (they travel in a uniform; the shader text never sees them). */
export type AdamWParams = AdamWHyper;

/** The uniform block: 12 f32 (48 bytes) computed on the host in f64, rounded once to f32. */
const hyperUniform = (h: AdamWHyper): Uint32Array => {
  const c1 = 1 - h.beta1 ** h.step, c2 = 1 - h.beta2 ** h.step;
  const f = new Float32Array([
    h.lr,
    h.beta1,
    1 - h.beta1,
    h.beta2,
    1 - h.beta2,
    h.eps,
    h.lr * h.weightDecay,
    c1,
    c2,
    h.maxGradNorm ?? -1, // <= 0: no clipping
    0,
    0,
  ]);
  return new Uint32Array(f.buffer);
};

/** Pass 1: each workgroup folds a strided slice of g into sum(g^2) and a flag (1 = saw inf, 2 = saw NaN). */
const partialWgsl = (n: number, groups: number): string =>
  `${storage(0, "g", "f32", "read")}
${storage(1, "part", "f32", "read_write")}
${storage(2, "flag", "u32", "read_write")}
var<workgroup> ss: array<f32, ${WG}>;
var<workgroup> sf: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) l3: vec3u, @builtin(workgroup_id) w3: vec3u) {
  let lid = l3.x;
  var acc = 0.0;
  var fl = 0u;
  for (var i = w3.x * ${WG}u + lid; i < ${n}u; i += ${groups * WG}u) {
    let x = g[i];
    let e = bitcast<u32>(x) & 0x7fffffffu;
    if (e >= 0x7f800000u) { fl = max(fl, select(1u, 2u, e > 0x7f800000u)); }
    acc += x * x;
  }
  ss[lid] = acc;
  sf[lid] = fl;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      ss[lid] += ss[lid + s];
      sf[lid] = max(sf[lid], sf[lid + s]);
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    part[w3.x] = ss[0];
    flag[w3.x] = sf[0];
  }
}`;

/** Pass 2: one workgroup folds the partials; norm = sqrt(sum), or +inf / NaN when the flags say so. */
const finishWgsl = (groups: number): string =>
  `${storage(0, "part", "f32", "read_write")}
${storage(1, "flag", "u32", "read_write")}
${storage(2, "norm", "f32", "read_write")}
var<workgroup> ss: array<f32, ${WG}>;
var<workgroup> sf: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) l3: vec3u) {
  let lid = l3.x;
  var acc = 0.0;
  var fl = 0u;
  for (var j = lid; j < ${groups}u; j += ${WG}u) {
    acc += part[j];
    fl = max(fl, flag[j]);
  }
  ss[lid] = acc;
  sf[lid] = fl;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      ss[lid] += ss[lid + s];
      sf[lid] = max(sf[lid], sf[lid + s]);
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let f = sf[0];
    // A runtime bit pattern (0x7f800000 = +inf, 0x7fc00000 = NaN): constant-folding NaN is a WGSL error.
    norm[0] = select(sqrt(ss[0]), bitcast<f32>(0x7f800000u | ((f - 1u) << 22u)), f > 0u);
  }
}`;

/** Pass 3: clip + AdamW per element, reading the norm written by pass 2; a non-finite norm changes nothing. */
const updateWgsl = (n: number, grid: [number, number, number], mask: boolean): string => {
  const b = mask ? 5 : 4;
  return `${storage(0, "p", "f32", "read_write")}
${storage(1, "g", "f32", "read")}
${storage(2, "m", "f32", "read_write")}
${storage(3, "v", "f32", "read_write")}
${mask ? storage(4, "dmask", "f32", "read") : ""}
${storage(b, "norm", "f32", "read_write")}
struct Hyper { lr: f32, b1: f32, omb1: f32, b2: f32, omb2: f32, eps: f32, lrwd: f32, c1: f32, c2: f32,
  maxNorm: f32, pad0: f32, pad1: f32 }
@group(0) @binding(${b + 1}) var<uniform> h: Hyper;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${flatIndex(WG, grid)};
  if (i >= ${n}u) { return; }
  let nrm = norm[0];
  if ((bitcast<u32>(nrm) & 0x7f800000u) == 0x7f800000u) { return; }
  var s = 1.0;
  if (h.maxNorm > 0.0) { s = min(1.0, h.maxNorm / (nrm + 1e-6)); }
  let gi = g[i] * s;
  let p0 = p[i];
  var pi = p0 - h.lrwd * ${mask ? "dmask[i] * " : ""}p0;
  let mi = h.b1 * m[i] + h.omb1 * gi;
  let vi = h.b2 * v[i] + h.omb2 * gi * gi;
  pi -= h.lr * (mi / h.c1) / (sqrt(vi / h.c2) + h.eps);
  p[i] = pi;
  m[i] = mi;
  v[i] = vi;
}`;
};

const NAMES = ["params", "grads", "m", "v", "decayMask"];

/**
 * AdamW with global-norm clipping. Inputs (params, grads, m, v[, decayMask]) of one shape, f32; outputs
 * (params, m, v) in place (aliases of inputs 0, 2, 3) and the scalar global gradient norm before clipping.
 */
export const adamwKernel: Kernel<AdamWParams> = defineKernel<AdamWParams>({
  name: "adamw",
  infer: (h, inputs) => {
    if (inputs.length !== 4 && inputs.length !== 5) {
      throw new ShapeError({ op: "adamw", message: `adamw: expected 4 or 5 inputs, got ${inputs.length}` });
    }
    const problem = adamwProblem(h);
    if (problem) throw new ShapeError({ op: "adamw", message: `adamw: ${problem}` });
    const shape = inputs[0].shape;
    inputs.forEach((t, i) => {
      if (t.dtype !== "f32") {
        throw new ShapeError({
          op: "adamw",
          message: `adamw: ${NAMES[i]} has dtype ${t.dtype}, expected f32`,
        });
      }
      if (!sameShape(t.shape, shape)) {
        throw new ShapeError({
          op: "adamw",
          message: `adamw: ${NAMES[i]} has shape ${showShape(t.shape)} but params has shape ${
            showShape(shape)
          }`,
        });
      }
    });
    return [
      { shape, dtype: "f32", alias: 0 },
      { shape, dtype: "f32", alias: 2 },
      { shape, dtype: "f32", alias: 3 },
      { shape: [], dtype: "f32" },
    ];
  },
  cpu: (h, [, g, , , mask], [p, m, v, norm]) => {
    norm.data[0] = adamwReference(
      p.data as FloatArray,
      g.data,
      m.data as FloatArray,
      v.data as FloatArray,
      h,
      mask?.data,
    );
  },
  gpu: (h, inputs, target) => {
    const n = size(inputs[0].shape);
    // At least n / (WG LOOP_SAFE) groups: each invocation of the partial pass loops n / (groups WG) times, and
    // llvmpipe silently cuts loops short past 65,535 iterations per invocation (16 groups alone would break
    // past 2.7e8 elements there).
    const groups = Math.max(
      1,
      Math.min(maxPartials(target), Math.ceil(n / WG)),
      Math.ceil(n / (WG * LOOP_SAFE)),
    );
    const grid = grid1d(n, WG, target);
    const mask = inputs.length === 5;
    const scratch = [
      { kind: "scratch", id: "part", bytes: groups * 4 },
      { kind: "scratch", id: "flag", bytes: groups * 4 },
    ] as const;
    return [
      {
        wgsl: partialWgsl(n, groups),
        workgroups: [groups, 1, 1],
        bindings: [{ kind: "input", index: 1 }, ...scratch],
        label: "adamw.sumsq",
      },
      {
        wgsl: finishWgsl(groups),
        workgroups: [1, 1, 1],
        bindings: [...scratch, { kind: "output", index: 3 }],
        label: "adamw.norm",
      },
      {
        wgsl: updateWgsl(n, grid, mask),
        workgroups: grid,
        bindings: [
          { kind: "output", index: 0 },
          { kind: "input", index: 1 },
          { kind: "output", index: 1 },
          { kind: "output", index: 2 },
          ...(mask ? [{ kind: "input", index: 4 } as const] : []),
          { kind: "output", index: 3 },
          { kind: "uniform", data: hyperUniform(h) },
        ],
        label: "adamw.update",
      },
    ];
  },
});

/**
 * One AdamW step, in place on `params`, `m` and `v` (same shape, f32). `hyper.step` is 1-based. Elements
 * where `decayMask` is 0 get no weight decay (the mask holds 0/1 per element; absent = decay everywhere).
 * Returns the global gradient norm before clipping as a scalar tensor, without reading it back; when it is
 * NaN or infinite the step changed nothing. Read it once per step (or use `adamwStepChecked`).
 */
export const adamwStep = (
  params: Tensor,
  grads: Tensor,
  m: Tensor,
  v: Tensor,
  hyper: AdamWHyper,
  decayMask?: Tensor,
): { norm: Tensor } => {
  const outs = apply(
    adamwKernel,
    hyper,
    decayMask ? [params, grads, m, v, decayMask] : [params, grads, m, v],
  );
  // outs[0..2] are params, m and v themselves (updated in place).
  return { norm: outs[3] };
};

/**
 * `adamwStep`, then one small read of the norm: returns it, or throws NonFiniteError naming `what` when it is
 * NaN or infinite (the step was refused; params, m and v are unchanged).
 */
export const adamwStepChecked = async (
  params: Tensor,
  grads: Tensor,
  m: Tensor,
  v: Tensor,
  hyper: AdamWHyper,
  decayMask?: Tensor,
  what = "adamw",
): Promise<number> => {
  const { norm } = adamwStep(params, grads, m, v, hyper, decayMask);
  try {
    const n = (await norm.data())[0];
    requireFinite(n, what);
    return n;
  } finally {
    norm.dispose();
  }
};
