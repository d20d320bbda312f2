/** Apply a kernel to tensors: validate, allocate outputs, execute on the inputs' backend, record on the tape. */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import type { Backend } from "./backend.ts";
import type { Kernel } from "./kernel.ts";
import { record } from "./recorder.ts";
import { Tensor } from "./tensor.ts";

/** The backend shared by all `inputs`; throws if they live on different backends. */
export const backendOf = (op: string, inputs: readonly Tensor[]): Backend => {
  const b = inputs[0]?.backend;
  if (!b) throw new ShapeError({ op, message: `${op}: needs at least one input tensor` });
  for (const t of inputs) {
    if (t.backend !== b) {
      throw new ShapeError({
        op,
        message: `${op}: inputs live on different backends (${b.name}, ${t.backend.name})`,
      });
    }
  }
  return b;
};

/**
 * Run `kernel` on `inputs` and return its outputs. The shape rule runs first, so a bad call throws a
 * ShapeError before anything is enqueued. Outputs that alias an input share its storage (in-place).
 */
export const apply = <P>(kernel: Kernel<P>, params: P, inputs: readonly Tensor[], on?: Backend): Tensor[] => {
  const backend = on ?? backendOf(kernel.name, inputs);
  for (const t of inputs) t.assertLive(kernel.name);
  const specs = kernel.infer(params, inputs);
  const storages = specs.map((s) => {
    if (s.alias === undefined) return backend.alloc(s);
    const src = inputs[s.alias];
    if (!src) {
      throw new ShapeError({
        op: kernel.name,
        message: `${kernel.name}: output aliases missing input ${s.alias}`,
      });
    }
    return src.storage;
  });
  backend.exec(kernel, params, inputs, storages, specs);
  const outputs = specs.map((s, i) => {
    if (s.alias === undefined) return new Tensor(backend, storages[i], s.shape, s.dtype);
    const src = inputs[s.alias];
    if (src.dtype !== s.dtype || src.size !== specs[i].shape.reduce((a, b) => a * b, 1)) {
      throw new ShapeError({
        op: kernel.name,
        message: `${kernel.name}: in-place output ${showShape(s.shape)} does not match input ${
          showShape(src.shape)
        }`,
      });
    }
    return src; // in place: the caller's tensor itself, no new reference
  });
  record(kernel, params, inputs, outputs);
  return outputs;
};

/** `apply` for single-output kernels. */
export const apply1 = <P>(kernel: Kernel<P>, params: P, inputs: readonly Tensor[], on?: Backend): Tensor =>
  apply(kernel, params, inputs, on)[0];
