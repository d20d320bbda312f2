/** Supervised (next-token) training steps on the decoder, identical on every backend; no read-back inside a step. */
import { type AdamWConfig, adamwHyper } from "../core/optim.ts";
import { adamwSegments } from "../kernels/adamw.ts";
import { Tape } from "../kernels/tape.ts";
import { keep, type Tensor, tensor, tidy, zeros } from "../kernels/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import { lmLoss } from "./model.ts";
import { type Params, paramsToHostArrays, segmentGrads, segmentsFromHost } from "./params.ts";

/** AdamW state: first and second moments segmented exactly like the parameters (`params.segments`). */
export interface Optimizer {
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

/** A token batch: B sequences of T ids, row-major; `mask` (B*T) marks positions whose next token counts. */
export interface TokenBatch {
  readonly ids: Int32Array;
  readonly B: number;
  readonly T: number;
  readonly mask?: Float32Array;
}

/** Positions 0..T-1 as an i32 tensor. */
export const positionsOf = (params: Params, T: number): Tensor =>
  tensor(params.backend, Int32Array.from({ length: T }, (_, i) => i), [T], "i32");

/** Loss and gradients (segment tensors laid out like the parameters) of the next-token loss on a batch. */
export const lossAndGrads = (
  c: DecoderConfig,
  p: Params,
  batch: TokenBatch,
): { loss: Tensor; grads: Tensor[] } =>
  tidy(() => {
    const ids = tensor(p.backend, batch.ids, [batch.B, batch.T], "i32");
    const tape = new Tape().watch(...p.views);
    const loss = tape.run(() => lmLoss(c, p, ids, positionsOf(p, batch.T), batch.ids, batch.mask));
    const grads = tape.backward(loss, p.views, tensor(p.backend, [1], []));
    return { loss, grads: segmentGrads(p, grads) };
  });

/**
 * One AdamW step on the next-token loss. Returns the loss (before the update) and the gradient norm as
 * scalar tensors; nothing is read back, so steps queue up on the GPU.
 */
export const supervisedStep = (
  c: DecoderConfig,
  p: Params,
  opt: Optimizer,
  batch: TokenBatch,
): { loss: Tensor; norm: Tensor } =>
  tidy(() => {
    const { loss, grads } = lossAndGrads(c, p, batch);
    opt.step++;
    const { norm } = adamwSegments(p.segments, grads, opt.m, opt.v, adamwHyper(opt.config, opt.step));
    return { loss, norm };
  });
