/** Parameters as ONE flat f32 buffer with a named view per tensor (the optimizer updates the flat buffer). */
import { ShapeError } from "../core/errors.ts";
import { type Shape, showShape, size } from "../core/shape.ts";
import type { Backend } from "../kernels/backend.ts";
import { copyInto, zerosLike } from "../kernels/layout.ts";
import { keep, type Tensor, tensor, tidy, view } from "../kernels/tensor.ts";
import type { ParamSpec } from "./config.ts";

/** Views start at multiples of 64 elements (256 bytes), the GPU's storage-offset alignment. */
const ALIGN = 64;

/** Where each parameter lives in the flat buffer. */
export interface ParamLayout {
  readonly specs: readonly ParamSpec[];
  readonly offsets: readonly number[];
  /** Elements in the flat buffer, padding included. */
  readonly total: number;
}

/** Lay out parameters in order, each aligned to 64 elements. */
export const layoutOf = (specs: readonly ParamSpec[]): ParamLayout => {
  const offsets: number[] = [];
  let at = 0;
  for (const s of specs) {
    offsets.push(at);
    at += Math.ceil(size(s.shape) / ALIGN) * ALIGN;
  }
  return { specs, offsets, total: Math.max(at, ALIGN) };
};

/** A flat buffer and its named views. Dispose it to free the buffer. */
export class Params {
  readonly views: readonly Tensor[];
  readonly #byName = new Map<string, Tensor>();
  constructor(readonly layout: ParamLayout, readonly flat: Tensor) {
    if (flat.size !== layout.total) {
      throw new ShapeError({
        op: "Params",
        message: `Params: flat buffer has ${flat.size} elements, layout needs ${layout.total}`,
      });
    }
    this.views = layout.specs.map((s, i) => keep(view(flat, layout.offsets[i], s.shape)));
    layout.specs.forEach((s, i) => this.#byName.set(s.name, this.views[i]));
  }
  /** The view of a parameter by its Hugging Face name; throws naming it when absent. */
  get(name: string): Tensor {
    const t = this.#byName.get(name);
    if (!t) throw new ShapeError({ op: "Params.get", message: `no parameter named ${name}` });
    return t;
  }
  has(name: string): boolean {
    return this.#byName.has(name);
  }
  get backend(): Backend {
    return this.flat.backend;
  }
  dispose(): void {
    for (const v of this.views) v.dispose();
    this.flat.dispose();
  }
}

/** Build parameters from host arrays by name (every spec must be present with its exact shape). */
export const paramsFromHost = (
  backend: Backend,
  specs: readonly ParamSpec[],
  get: (name: string) => { data: ArrayLike<number>; shape: Shape } | undefined,
): Params => {
  const layout = layoutOf(specs);
  const host = new Float32Array(layout.total);
  specs.forEach((s, i) => {
    const t = get(s.name);
    if (!t) throw new ShapeError({ op: "params", message: `missing tensor ${s.name}` });
    if (t.shape.length !== s.shape.length || t.shape.some((d, j) => d !== s.shape[j])) {
      throw new ShapeError({
        op: "params",
        message: `tensor ${s.name} has shape ${showShape(t.shape)}, config says ${showShape(s.shape)}`,
      });
    }
    host.set(t.data, layout.offsets[i]);
  });
  return new Params(layout, keep(tensor(backend, host, [layout.total])));
};

/** A seeded normal(0, 1) stream (splitmix32 + Box-Muller), pure and identical on every machine. */
export const normals = (seed: number) => {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32;
  };
  return () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
};

/** Initialize parameters from a seed: normal(0, std) matrices, ones for norm scales, zeros for biases. */
export const initParams = (
  backend: Backend,
  specs: readonly ParamSpec[],
  seed: number,
  std = 0.02,
): Params => {
  const rnd = normals(seed);
  const host = new Map<string, { data: Float32Array; shape: Shape }>();
  for (const s of specs) {
    const data = new Float32Array(size(s.shape));
    if (s.init === "ones") data.fill(1);
    else if (s.init === "normal") { for (let i = 0; i < data.length; i++) data[i] = rnd() * std; }
    host.set(s.name, { data, shape: s.shape });
  }
  return paramsFromHost(backend, specs, (n) => host.get(n));
};

/** Gather per-parameter gradients into one flat tensor laid out like `params` (zeros where none flowed). */
export const flattenGrads = (params: Params, grads: readonly (Tensor | null)[]): Tensor =>
  tidy(() => {
    const flat = zerosLike(params.flat, [params.layout.total]);
    grads.forEach((g, i) => {
      if (g) copyInto(view(flat, params.layout.offsets[i], params.layout.specs[i].shape), g);
    });
    return flat;
  });
