/**
 * Fused AdamW step on the GPU: global gradient norm (two-level reduction), clipping and the update in place; over
 * several parameter segments and in binding-sized chunks for models past one storage binding (`adamwSegments`).
 */
import { ShapeError } from "../core/errors.ts";
import {
  type AdamWHyper,
  adamwProblem,
  adamwReference,
  adamwUpdateReference,
  type FloatArray,
  requireFinite,
} from "../core/optim.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { defineKernel, type GpuPass, type GpuTarget, type Kernel } from "../engine/kernel.ts";
import { bindingElems, fitsBinding, ranges } from "../engine/binding.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { type Tensor, tidy, view, zeros } from "../engine/tensor.ts";
import { bind, flatPass, input, LOOP_SAFE, output, type StorageBinding, treeReduce } from "../engine/wgsl.ts";

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

/** The workgroup tree of passes 1 and 2: sums of squares in `ss`, flags in `sf`, folded into slot 0. */
const SUMSQ_TREE = treeReduce(WG, "lid", "s", [
  "ss[lid] += ss[lid + s];",
  "sf[lid] = max(sf[lid], sf[lid + s]);",
]);

/**
 * Pass 1: each of `groups` workgroups folds a strided slice of g into sum(g^2) and a flag (1 = saw inf, 2 =
 * saw NaN), written to part[w] and flag[w]; with `base`, to part[base + w] and flag[base + w] (one chunk of a
 * segmented step; base travels in a uniform).
 */
const partialPass = (
  n: number,
  groups: number,
  { g, part, flag }: {
    readonly g: StorageBinding;
    readonly part: StorageBinding;
    readonly flag: StorageBinding;
  },
  base?: number,
): GpuPass => {
  const based = base !== undefined;
  const b = bind(
    { buffer: g, name: "g" },
    { buffer: part, name: "part", access: "read_write" },
    { buffer: flag, name: "flag", type: "u32", access: "read_write" },
    based && { uniform: new Uint32Array([base, 0, 0, 0]), name: "base", type: "vec4u" },
  );
  return {
    wgsl: `${b.decls}
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
${SUMSQ_TREE}
  if (lid == 0u) {
    part[${based ? "base.x + " : ""}w3.x] = ss[0];
    flag[${based ? "base.x + " : ""}w3.x] = sf[0];
  }
}`,
    workgroups: [groups, 1, 1],
    bindings: b.bindings,
    label: "adamw.sumsq",
  };
};

/** Pass 2: one workgroup folds the partials; norm = sqrt(sum), or +inf / NaN when the flags say so. */
const finishPass = (
  groups: number,
  { part, flag, norm }: {
    readonly part: StorageBinding;
    readonly flag: StorageBinding;
    readonly norm: StorageBinding;
  },
): GpuPass => {
  const b = bind(
    { buffer: part, name: "part" },
    { buffer: flag, name: "flag", type: "u32" },
    { buffer: norm, name: "norm" },
  );
  return {
    wgsl: `${b.decls}
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
${SUMSQ_TREE}
  if (lid == 0u) {
    let f = sf[0];
    // A runtime bit pattern (0x7f800000 = +inf, 0x7fc00000 = NaN): constant-folding NaN is a WGSL error.
    norm[0] = select(sqrt(ss[0]), bitcast<f32>(0x7f800000u | ((f - 1u) << 22u)), f > 0u);
  }
}`,
    workgroups: [1, 1, 1],
    bindings: b.bindings,
    label: "adamw.norm",
  };
};

/** The buffers of the update pass: p, m and v are updated in place; the decay mask is optional. */
interface UpdateBuffers {
  readonly p: StorageBinding;
  readonly g: StorageBinding;
  readonly m: StorageBinding;
  readonly v: StorageBinding;
  readonly mask?: StorageBinding;
  readonly norm: StorageBinding;
}

/** Pass 3: clip + AdamW per element, reading the norm written by pass 2; a non-finite norm changes nothing. */
const updatePass = (
  n: number,
  h: AdamWHyper,
  { p, g, m, v, mask, norm }: UpdateBuffers,
  target: GpuTarget,
): GpuPass => {
  const b = bind(
    { buffer: p, name: "p", access: "read_write" },
    { buffer: g, name: "g" },
    { buffer: m, name: "m", access: "read_write" },
    { buffer: v, name: "v", access: "read_write" },
    mask !== undefined && { buffer: mask, name: "dmask" },
    { buffer: norm, name: "norm" },
    {
      uniform: hyperUniform(h),
      name: "h",
      type: "Hyper",
      struct: `lr: f32, b1: f32, omb1: f32, b2: f32, omb2: f32, eps: f32, lrwd: f32, c1: f32, c2: f32,
  maxNorm: f32, pad0: f32, pad1: f32`,
    },
  );
  return flatPass(
    b,
    n,
    WG,
    target,
    `  let nrm = norm[0];
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
  v[i] = vi;`,
    "adamw.update",
  );
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
    const groups = partialGroups(n, target);
    const g = input(1), norm = output(3);
    const part = { kind: "scratch", id: "part", bytes: groups * 4 } as const;
    const flag = { kind: "scratch", id: "flag", bytes: groups * 4 } as const;
    const mask = inputs.length === 5 ? input(4) : undefined;
    return [
      partialPass(n, groups, { g, part, flag }),
      finishPass(groups, { part, flag, norm }),
      updatePass(n, h, { p: output(0), g, m: output(1), v: output(2), mask, norm }, target),
    ];
  },
});

/** Workgroups of the partial-sum pass over n elements. */
const partialGroups = (n: number, target: GpuTarget): number =>
  // At least n / (WG LOOP_SAFE) groups: each invocation of the partial pass loops n / (groups WG) times, and
  // llvmpipe silently cuts loops short past 65,535 iterations per invocation (16 groups alone would break
  // past 2.7e8 elements there).
  Math.max(
    1,
    Math.min(maxPartials(target), Math.ceil(n / WG)),
    Math.ceil(n / (WG * LOOP_SAFE)),
  );

// ---- segmented steps: one global norm over several buffers, every binding within the device limit ----------

/**
 * Partial-sum slots per chunk of a segmented step: the chunk's partial pass uses at most this many workgroups, so
 * the norm pass binds only 256 bytes per chunk (a 2.4 GB model in 128 MiB chunks: about 5 KB).
 */
export const SLOT = 64;

/**
 * Chunk `slot` of a segmented step: inputs (sums (S), flags (S) u32, g chunk); sums/flags[slot SLOT ..] get the
 * chunk's partial sums of g^2 and non-finite flags (the other slots of its range stay as they were: zeros).
 */
export const adamwSumsqKernel: Kernel<{ readonly slot: number }> = defineKernel<{ readonly slot: number }>({
  name: "adamwSumsq",
  infer: ({ slot }, [sums, flags, g]) => {
    if (
      sums.dtype !== "f32" || flags.dtype !== "u32" || g.dtype !== "f32" ||
      sums.shape.length !== 1 || !sameShape(sums.shape, flags.shape) || (slot + 1) * SLOT > sums.shape[0]
    ) {
      throw new ShapeError({
        op: "adamw",
        message: `adamw: partial sums ${sums.dtype}${showShape(sums.shape)}, flags ${flags.dtype}${
          showShape(flags.shape)
        }, grads ${g.dtype}${showShape(g.shape)} at slot ${slot} disagree`,
      });
    }
    return [{ shape: sums.shape, dtype: "f32", alias: 0 }, { shape: flags.shape, dtype: "u32", alias: 1 }];
  },
  cpu: ({ slot }, [, , g], [sums, flags]) => {
    let acc = 0, fl = 0;
    for (let i = 0; i < g.data.length; i++) {
      const x = g.data[i];
      if (!Number.isFinite(x)) fl = Math.max(fl, Number.isNaN(x) ? 2 : 1);
      acc += x * x;
    }
    sums.data[slot * SLOT] = acc;
    flags.data[slot * SLOT] = fl;
  },
  gpu: ({ slot }, [, , g], target) => {
    const n = size(g.shape);
    // At most SLOT groups; a chunk within one binding (<= 2^30 elements) never needs more for the loop budget.
    const groups = Math.max(Math.min(SLOT, partialGroups(n, target)), Math.ceil(n / (WG * LOOP_SAFE)));
    if (groups > SLOT) {
      throw new ShapeError({
        op: "adamw",
        message: `adamw: a chunk of ${n} elements needs ${groups} partials`,
      });
    }
    return [partialPass(n, groups, { g: input(2), part: input(0), flag: input(1) }, slot * SLOT)];
  },
});

/** The global norm from all chunks' partial sums and flags: sqrt(sum), or +inf / NaN when a flag says so. */
export const adamwNormKernel: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "adamwNorm",
  infer: (_p, [sums, flags]) => {
    if (sums.dtype !== "f32" || flags.dtype !== "u32" || !sameShape(sums.shape, flags.shape)) {
      throw new ShapeError({
        op: "adamw",
        message: `adamw: partial sums ${sums.dtype}${showShape(sums.shape)} and flags ${flags.dtype}${
          showShape(flags.shape)
        } disagree`,
      });
    }
    return [{ shape: [], dtype: "f32" }];
  },
  cpu: (_p, [sums, flags], [norm]) => {
    let acc = 0, fl = 0;
    for (let i = 0; i < sums.data.length; i++) {
      acc += sums.data[i];
      fl = Math.max(fl, flags.data[i]);
    }
    norm.data[0] = fl === 2 ? NaN : fl === 1 ? Infinity : Math.sqrt(acc);
  },
  gpu: (_p, [sums]) => [finishPass(sums.shape[0], { part: input(0), flag: input(1), norm: output(0) })],
});

/**
 * Clip + AdamW on one chunk with the global norm given: inputs (params, grads, m, v, norm[, decayMask]) chunks of
 * one shape; outputs params, m, v in place. A non-finite norm changes nothing.
 */
export const adamwUpdateKernel: Kernel<AdamWParams> = defineKernel<AdamWParams>({
  name: "adamwUpdate",
  infer: (h, inputs) => {
    const [p, g, m, v, norm, mask] = inputs;
    if (!norm || norm.dtype !== "f32" || norm.shape.length !== 0) {
      throw new ShapeError({ op: "adamw", message: `adamw: the norm must be an f32 scalar` });
    }
    return adamwKernel.infer(h, mask ? [p, g, m, v, mask] : [p, g, m, v]).slice(0, 3);
  },
  cpu: (h, [, g, , , norm, mask], [p, m, v]) =>
    adamwUpdateReference(
      p.data as FloatArray,
      g.data,
      m.data as FloatArray,
      v.data as FloatArray,
      h,
      norm.data[0],
      mask?.data,
    ),
  gpu: (h, inputs, target) => {
    const n = size(inputs[0].shape);
    const mask = inputs.length === 6 ? input(5) : undefined;
    const io = { p: input(0), g: input(1), m: input(2), v: input(3), mask, norm: input(4) };
    return [updatePass(n, h, io, target)];
  },
});

/**
 * One AdamW step over parameters stored in several segments (policies/params.ts): `params[k]`, `grads[k]`, `m[k]`,
 * `v[k]` (and `decayMasks[k]`) share a shape per k. The clipping norm is ONE global norm over all segments. A
 * single segment that fits one storage binding runs the fused `adamwKernel` (3 dispatches); otherwise every
 * segment is cut into views of at most maxStorageBufferBindingSize (64-element aligned): one partial-sum dispatch
 * per chunk, one norm dispatch, one update dispatch per chunk. The chunked norm sums the same squares in another
 * order (agrees with the fused kernel to f32 rounding). Returns the norm before clipping, not read back.
 */
export const adamwSegments = (
  params: readonly Tensor[],
  grads: readonly Tensor[],
  m: readonly Tensor[],
  v: readonly Tensor[],
  hyper: AdamWHyper,
  decayMasks?: readonly Tensor[],
): { norm: Tensor } => {
  const k = params.length;
  if (
    k === 0 || grads.length !== k || m.length !== k || v.length !== k ||
    (decayMasks && decayMasks.length !== k)
  ) {
    throw new ShapeError({
      op: "adamw",
      message: `adamw: ${k} parameter segments, ${grads.length} gradient, ${m.length} m, ${v.length} v${
        decayMasks ? `, ${decayMasks.length} mask` : ""
      } segments`,
    });
  }
  const b = params[0].backend;
  const single = (i: number) =>
    apply(
      adamwKernel,
      hyper,
      decayMasks ? [params[i], grads[i], m[i], v[i], decayMasks[i]] : [
        params[i],
        grads[i],
        m[i],
        v[i],
      ],
    );
  if (k === 1 && fitsBinding(b, params[0].size)) return { norm: single(0)[3] };
  params.forEach((p, i) =>
    adamwKernel.infer(
      hyper,
      decayMasks ? [p, grads[i], m[i], v[i], decayMasks[i]] : [p, grads[i], m[i], v[i]],
    )
  );
  const chunks = params.flatMap((p, seg) => ranges(p.size, bindingElems(b)).map(([s, n]) => ({ seg, s, n })));
  const sums = zeros(b, [chunks.length * SLOT]);
  const flags = zeros(b, [chunks.length * SLOT], "u32");
  const part = (t: Tensor, s: number, n: number) => view(t, s, [n]);
  chunks.forEach(({ seg, s, n }, slot) =>
    tidy(() => apply(adamwSumsqKernel, { slot }, [sums, flags, part(grads[seg], s, n)]))
  );
  const norm = apply1(adamwNormKernel, {}, [sums, flags]);
  sums.dispose();
  flags.dispose();
  for (const { seg, s, n } of chunks) {
    tidy(() => {
      const ins = [params, grads, m, v].map((ts) => part(ts[seg], s, n));
      apply(adamwUpdateKernel, hyper, [...ins, norm, ...(decayMasks ? [part(decayMasks[seg], s, n)] : [])]);
    });
  }
  return { norm };
};

/**
 * One AdamW step, in place on `params`, `m` and `v` (same shape, f32). `hyper.step` is 1-based. Elements
 * where `decayMask` is 0 get no weight decay (the mask holds 0/1 per element; absent = decay everywhere).
 * Returns the global gradient norm before clipping as a scalar tensor, without reading it back; when it is
 * NaN or infinite the step changed nothing. Read it once per step (or use `adamwStepChecked`).
 */
export const adamwStep = (...[params, grads, m, v, hyper, decayMask]: AdamWArgs): { norm: Tensor } =>
  // params, m and v are updated in place; one fused kernel when they fit one binding, else chunked.
  adamwSegments([params], [grads], [m], [v], hyper, decayMask && [decayMask]);

/** The arguments of `adamwStep`: parameters, gradients, both moments (one shape, f32), settings, decay mask. */
export type AdamWArgs = [
  params: Tensor,
  grads: Tensor,
  m: Tensor,
  v: Tensor,
  hyper: AdamWHyper,
  decayMask?: Tensor,
];

/**
 * `adamwStep`, then one small read of the norm: returns it, or throws NonFiniteError naming `what` when it is
 * NaN or infinite (the step was refused; params, m and v are unchanged).
 */
export const adamwStepChecked = async (
  ...[params, grads, m, v, hyper, decayMask, what = "adamw"]: [...AdamWArgs, what?: string]
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
