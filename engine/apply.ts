/** Apply a kernel to tensors: validate, allocate outputs, execute on the inputs' backend, record on the tape. */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import type { Backend, Storage } from "./backend.ts";
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
  // In-place outputs are checked before anything is allocated or enqueued.
  specs.forEach((s, i) => {
    if (s.alias === undefined) return;
    const src = inputs[s.alias];
    if (!src) {
      throw new ShapeError({
        op: kernel.name,
        message: `${kernel.name}: output aliases missing input ${s.alias}`,
      });
    }
    if (src.dtype !== s.dtype || src.size !== specs[i].shape.reduce((a, b) => a * b, 1)) {
      throw new ShapeError({
        op: kernel.name,
        message: `${kernel.name}: in-place output ${showShape(s.shape)} does not match input ${
          showShape(src.shape)
        }`,
      });
    }
  });
  const fresh: Storage[] = [];
  let storages: Storage[];
  try {
    storages = specs.map((s) => {
      if (s.alias !== undefined) return inputs[s.alias].storage;
      const st = backend.alloc(s);
      fresh.push(st);
      return st;
    });
    backend.exec(kernel, params, inputs, storages, specs);
  } catch (e) {
    // A kernel that throws (or an allocation that fails) leaves no output storage behind.
    for (const st of fresh) backend.release(st);
    throw e;
  }
  // in place: the caller's tensor itself, no new reference
  const outputs = specs.map((s, i) =>
    s.alias === undefined ? new Tensor(backend, storages[i], s.shape, s.dtype) : inputs[s.alias]
  );
  record(kernel, params, inputs, outputs);
  return outputs;
};

/** `apply` for single-output kernels. */
export const apply1 = <P>(kernel: Kernel<P>, params: P, inputs: readonly Tensor[], on?: Backend): Tensor =>
  apply(kernel, params, inputs, on)[0];
