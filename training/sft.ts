/** Supervised (next-token) training steps on the decoder, identical on every backend; no read-back inside a step. */
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { type Optimizer, optimizerStep } from "./optimizer.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { lmLoss } from "../policies/model.ts";
import { type Params, segmentGrads } from "../policies/params.ts";

/** A token batch: B sequences of T ids, row-major; `mask` (B*T) marks positions whose next token counts. */
export interface SupervisedBatch {
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
  batch: SupervisedBatch,
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
  batch: SupervisedBatch,
): { loss: Tensor; norm: Tensor } =>
  tidy(() => {
    const { loss, grads } = lossAndGrads(c, p, batch);
    return { loss, norm: optimizerStep(p, opt, grads) };
  });
