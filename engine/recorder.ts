/** The recording slot of reverse-mode autodiff: which tape (if any) receives each kernel run. */
import type { Kernel } from "./kernel.ts";
import type { Tensor } from "./tensor.ts";

/** What receives kernel runs while it records (engine/tape.ts's Tape). */
export interface Recorder {
  /** One kernel run: its kernel, parameters, input and output tensors. */
  push(kernel: Kernel<unknown>, params: unknown, inputs: readonly Tensor[], outputs: readonly Tensor[]): void;
}

/** The recorder in effect, if any. Only ops on tensors that depend on a watched tensor are kept by a tape. */
let active: Recorder | null = null;

/** Called by `apply` (and reshape) after every kernel run. */
export const record = <P>(
  kernel: Kernel<P>,
  params: P,
  inputs: readonly Tensor[],
  outputs: readonly Tensor[],
): void => {
  if (active) active.push(kernel as Kernel<unknown>, params, inputs, outputs);
};

/** Run `fn` with `r` recording (null: nothing records), restoring the previous recorder afterwards. */
export const recordingInto = <R>(r: Recorder | null, fn: () => R): R => {
  const prev = active;
  active = r;
  try {
    return fn();
  } finally {
    active = prev;
  }
};
