/** The optimizer: AdamW moments segmented like the parameters, and the one update step every trainer takes. */
import { type AdamWConfig, adamwHyper } from "../core/optim.ts";
import { keep, type Tensor, zeros } from "../engine/tensor.ts";
import { adamwSegments } from "../kernels/adamw.ts";
import { type Params, paramsToHostArrays, segmentsFromHost } from "../policies/params.ts";

/** AdamW state: first and second moments segmented exactly like the parameters (`params.segments`). */
export interface Optimizer {
  /** The AdamW settings (lr, betas, eps, weight decay, gradient clip). */
  readonly config: AdamWConfig;
  /** First moments, one tensor per parameter segment. */
  m: Tensor[];
  /** Second moments, one tensor per parameter segment. */
  v: Tensor[];
  /** Steps taken so far (the next step is step + 1). */
  step: number;
}

/** Fresh AdamW moments for `params` (zeros uploaded per segment: no kernel binds a whole segment). */
export const createOptimizer = (params: Params, config: AdamWConfig): Optimizer => ({
  config,
  m: params.layout.segmentSizes.map((n) => keep(zeros(params.backend, [n]))),
  v: params.layout.segmentSizes.map((n) => keep(zeros(params.backend, [n]))),
  step: 0,
});

/** Free the optimizer's moments. */
export const disposeOptimizer = (opt: Optimizer): void => {
  for (const t of [...opt.m, ...opt.v]) t.dispose();
};

/** AdamW moments per parameter (in `params.layout.specs` order), read back segment by segment. */
export const momentsToHost = async (
  params: Params,
  opt: Optimizer,
): Promise<{ m: Float32Array[]; v: Float32Array[] }> => ({
  m: await paramsToHostArrays(params, opt.m),
  v: await paramsToHostArrays(params, opt.v),
});

/**
 * Replace the optimizer's moments with host values per parameter (`m[i]`, `v[i]` for `params.layout.specs[i]`,
 * e.g. from a checkpoint) and set its step count. The padding between parameters is zero.
 */
export const loadMoments = (
  params: Params,
  opt: Optimizer,
  m: readonly Float32Array[],
  v: readonly Float32Array[],
  step: number,
): void => {
  const { layout } = params;
  const up = (xs: readonly Float32Array[]) =>
    segmentsFromHost(params.backend, layout, (i, seg, at) => seg.set(xs[i], at));
  const [nm, nv] = [up(m), up(v)];
  disposeOptimizer(opt);
  opt.m = nm;
  opt.v = nv;
  opt.step = step;
};

/**
 * One AdamW step: `grads` are segment tensors laid out like `params.segments` (`segmentGrads`). Clips by the global
 * norm, updates parameters and moments in place, counts the step; returns the (pre-clip) gradient norm as a scalar
 * tensor. Nothing is read back.
 */
export const optimizerStep = (params: Params, opt: Optimizer, grads: readonly Tensor[]): Tensor => {
  opt.step++;
  return adamwSegments(params.segments, grads, opt.m, opt.v, adamwHyper(opt.config, opt.step)).norm;
};
