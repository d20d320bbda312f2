/**
 * Parameters in a few large buffers ("segments", each at most the backend's segment cap) with a named view per
 * tensor; gradients and AdamW moments use the same segmentation, so the optimizer updates segment by segment.
 */
import { ShapeError } from "../core/errors.ts";
import { type Shape, showShape, size } from "../core/shape.ts";
import { type Backend, limitsOf } from "../engine/backend.ts";
import { VIEW_ALIGN as ALIGN } from "../engine/binding.ts";
import { copyChunked, zerosChunked } from "../kernels/chunked.ts";
import { keep, type Tensor, tensor, tidy, view } from "../engine/tensor.ts";
import type { ParamSpec } from "./config.ts";

/** Parameters start where views may: at multiples of ALIGN = 64 elements (256 bytes). */
const aligned = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

/** Where each parameter lives: its segment and its element offset in it. */
export interface ParamLayout {
  /** The parameters, in storage order. */
  readonly specs: readonly ParamSpec[];
  /** Segment of each parameter. */
  readonly segment: readonly number[];
  /** Element offset of each parameter within its segment (a multiple of 64). */
  readonly offsets: readonly number[];
  /** Elements of each segment, padding included (each a multiple of 64, at least 64). */
  readonly segmentSizes: readonly number[];
  /** Elements over all segments, padding included. */
  readonly total: number;
}

/** Caps of a layout, in bytes (defaults: one segment holds everything, no buffer limit). */
export interface LayoutLimits {
  /** Most bytes per segment; a parameter larger than this gets a segment of its own. */
  readonly segmentBytes?: number;
  /** Most bytes of any one buffer: a parameter larger than this cannot be stored (ShapeError naming it). */
  readonly maxBufferBytes?: number;
}

/**
 * Lay out parameters in order, each aligned to 64 elements, filling a segment until the next parameter would
 * take it past `segmentBytes`; a parameter larger than the cap gets a segment of its own. A parameter larger
 * than `maxBufferBytes` throws ShapeError naming it, its size and the limit.
 */
export const layoutOf = (specs: readonly ParamSpec[], limits: LayoutLimits = {}): ParamLayout => {
  const cap = Math.max(ALIGN, Math.floor((limits.segmentBytes ?? Infinity) / 4 / ALIGN) * ALIGN);
  const maxBuffer = limits.maxBufferBytes ?? Infinity;
  const segment: number[] = [], offsets: number[] = [], sizes: number[] = [];
  let at = 0;
  for (const s of specs) {
    const n = aligned(size(s.shape));
    if (n * 4 > maxBuffer) {
      throw new ShapeError({
        op: "params",
        message: `params: tensor ${s.name} ${showShape(s.shape)} needs ${size(s.shape) * 4} bytes (${
          n * 4
        } aligned), more than the device's maxBufferSize ${maxBuffer} bytes; it cannot be stored`,
      });
    }
    if (at > 0 && at + n > cap) {
      sizes.push(at);
      at = 0;
    }
    segment.push(sizes.length);
    offsets.push(at);
    at += n;
  }
  if (at > 0 || sizes.length === 0) sizes.push(Math.max(at, ALIGN));
  return { specs, segment, offsets, segmentSizes: sizes, total: sizes.reduce((a, b) => a + b, 0) };
};

/** The layout of `specs` on `backend`: its segment cap (256 MiB by default) and maxBufferSize. */
export const layoutOn = (backend: Backend, specs: readonly ParamSpec[]): ParamLayout => {
  const l = limitsOf(backend);
  return layoutOf(specs, { segmentBytes: l.paramSegmentBytes, maxBufferBytes: l.maxBufferSize });
};

/**
 * The single-buffer layout older checkpoints used: every parameter in order, 64-aligned, in one flat vector.
 * Reading an old optimizer file goes through it.
 */
export const flatLayoutOf = (specs: readonly ParamSpec[]): ParamLayout => layoutOf(specs);

/** Segment buffers and their named views. Dispose it to free the buffers. */
export class Params {
  /** One view per parameter, in `layout.specs` order. */
  readonly views: readonly Tensor[];
  readonly #byName = new Map<string, Tensor>();
  /** Named views over `segments` (one tensor per layout segment, of its size); a mismatch is a ShapeError. */
  constructor(readonly layout: ParamLayout, readonly segments: readonly Tensor[]) {
    if (
      segments.length !== layout.segmentSizes.length ||
      segments.some((t, i) => t.size !== layout.segmentSizes[i])
    ) {
      throw new ShapeError({
        op: "Params",
        message: `Params: segments of ${segments.map((t) => t.size).join(", ")} elements, layout needs ${
          layout.segmentSizes.join(", ")
        }`,
      });
    }
    this.views = layout.specs.map((s, i) =>
      keep(view(segments[layout.segment[i]], layout.offsets[i], s.shape))
    );
    layout.specs.forEach((s, i) => this.#byName.set(s.name, this.views[i]));
  }
  /** The view of a parameter by its Hugging Face name; throws naming it when absent. */
  get(name: string): Tensor {
    const t = this.#byName.get(name);
    if (!t) throw new ShapeError({ op: "Params.get", message: `no parameter named ${name}` });
    return t;
  }
  /** Whether a parameter of that Hugging Face name exists (e.g. `lm_head.weight` for untied models). */
  has(name: string): boolean {
    return this.#byName.has(name);
  }
  /** The backend the segments live on. */
  get backend(): Backend {
    return this.segments[0].backend;
  }
  /** Free the views and the segment buffers. */
  dispose(): void {
    for (const v of this.views) v.dispose();
    for (const s of this.segments) s.dispose();
  }
}

/** Host segments of a layout filled by `fill(i, segmentArray, offset)` per parameter, uploaded one at a time. */
export const segmentsFromHost = (
  backend: Backend,
  layout: ParamLayout,
  fill: (i: number, seg: Float32Array, offset: number) => void,
): Tensor[] =>
  layout.segmentSizes.map((n, k) => {
    const host = new Float32Array(n);
    layout.specs.forEach((_, i) => {
      if (layout.segment[i] === k) fill(i, host, layout.offsets[i]);
    });
    return keep(tensor(backend, host, [n]));
  });

/**
 * Build parameters from host arrays by name (every spec must be present with its exact shape), segmented by the
 * backend's limits (`layout` overrides). A segment's host copy lives only while it is uploaded.
 */
export const paramsFromHost = (
  backend: Backend,
  specs: readonly ParamSpec[],
  get: (name: string) => { data: ArrayLike<number>; shape: Shape } | undefined,
  layout: ParamLayout = layoutOn(backend, specs),
): Params => {
  specs.forEach((s) => {
    const t = get(s.name);
    if (!t) throw new ShapeError({ op: "params", message: `missing tensor ${s.name}` });
    if (t.shape.length !== s.shape.length || t.shape.some((d, j) => d !== s.shape[j])) {
      throw new ShapeError({
        op: "params",
        message: `tensor ${s.name} has shape ${showShape(t.shape)}, config says ${showShape(s.shape)}`,
      });
    }
  });
  return new Params(
    layout,
    segmentsFromHost(backend, layout, (i, seg, at) => seg.set(get(specs[i].name)!.data, at)),
  );
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
  layout?: ParamLayout,
): Params => {
  const rnd = normals(seed);
  const host = new Map<string, { data: Float32Array; shape: Shape }>();
  for (const s of specs) {
    const data = new Float32Array(size(s.shape));
    if (s.init === "ones") data.fill(1);
    else if (s.init === "normal") { for (let i = 0; i < data.length; i++) data[i] = rnd() * std; }
    host.set(s.name, { data, shape: s.shape });
  }
  return paramsFromHost(backend, specs, (n) => host.get(n), layout);
};

/**
 * Gather per-parameter gradients into segment tensors laid out like `params` (zeros where none flowed and in the
 * padding). Large segments are zeroed and large gradients copied one binding-sized range at a time, so no binding
 * ever covers a whole 600 MB embedding gradient.
 */
export const segmentGrads = (params: Params, grads: readonly (Tensor | null)[]): Tensor[] =>
  tidy(() => {
    const { layout } = params;
    const segs = params.segments.map((s) => zerosChunked(s, [s.size]));
    grads.forEach((g, i) => {
      if (g) copyChunked(view(segs[layout.segment[i]], layout.offsets[i], layout.specs[i].shape), g);
    });
    return segs;
  });

/** Read every parameter back to the host, segment by segment, in layout order. */
export const paramsToHostArrays = async (
  p: Params,
  segments: readonly Tensor[] = p.segments,
): Promise<Float32Array[]> => {
  const out: Float32Array[] = [];
  for (let k = 0; k < segments.length; k++) {
    const seg = await segments[k].data();
    p.layout.specs.forEach((s, i) => {
      if (p.layout.segment[i] !== k) return;
      const at = p.layout.offsets[i];
      out[i] = Float32Array.from(seg.subarray(at, at + size(s.shape)));
    });
  }
  return out;
};
