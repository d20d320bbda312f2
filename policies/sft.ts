/** Supervised (next-token) training steps on the decoder, identical on every backend; no read-back inside a step. */
import { type AdamWConfig, adamwHyper } from "../core/optim.ts";
import { adamwStep } from "../kernels/adamw.ts";
import { Tape } from "../kernels/tape.ts";
import { keep, type Tensor, tensor, tidy, zeros } from "../kernels/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import { lmLoss } from "./model.ts";
import { flattenGrads, type Params } from "./params.ts";

/** AdamW state over the flat parameter buffer. */
export interface Optimizer {
  readonly config: AdamWConfig;
  readonly m: Tensor;
  readonly v: Tensor;
  /** Steps taken so far (the next step is step + 1). */
  step: number;
}

/** Fresh AdamW moments for `params`. */
export const createOptimizer = (params: Params, config: AdamWConfig): Optimizer => ({
  config,
  m: keep(zeros(params.backend, [params.layout.total])),
  v: keep(zeros(params.backend, [params.layout.total])),
  step: 0,
});

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

/** Loss and gradients (one flat tensor laid out like the parameters) of the next-token loss on a batch. */
export const lossAndGrads = (
  c: DecoderConfig,
  p: Params,
  batch: TokenBatch,
): { loss: Tensor; grads: Tensor } =>
  tidy(() => {
    const ids = tensor(p.backend, batch.ids, [batch.B, batch.T], "i32");
    const tape = new Tape().watch(...p.views);
    const loss = tape.run(() => lmLoss(c, p, ids, positionsOf(p, batch.T), batch.ids, batch.mask));
    const grads = tape.backward(loss, p.views, tensor(p.backend, [1], []));
    return { loss, grads: flattenGrads(p, grads) };
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
    const { norm } = adamwStep(p.flat, grads, opt.m, opt.v, adamwHyper(opt.config, opt.step));
    return { loss, norm };
  });
