/** Tensors with explicit lifetimes: reference counts, scopes that dispose what they created, views. */
import { DisposedError, ShapeError } from "../core/errors.ts";
import { checkShape, type DType, type Shape, showShape, size } from "../core/shape.ts";
import type { Backend, Storage } from "./backend.ts";
import type { HostArray, Kernel } from "./kernel.ts";
import { record } from "./recorder.ts";

let nextId = 1;

/** A tensor on some backend. Create with `tensor`/`zeros` or as the output of an op; free with `dispose`. */
export class Tensor {
  /** A number unique in the process (tapes track tensors by it). */
  readonly id = nextId++;
  #refs = 1;
  /** Wrap `storage` of `backend` (ops and `tensor` call this; the new tensor joins the current `tidy` scope). */
  constructor(
    readonly backend: Backend,
    readonly storage: Storage,
    readonly shape: Shape,
    readonly dtype: DType,
    /** The tensor whose storage a view shares (kept alive while the view lives). */
    readonly base?: Tensor,
    /** Element offset of a view into its base's storage. */
    readonly offset = 0,
  ) {
    currentScope()?.track(this);
  }
  /** Number of elements: the product of the shape. */
  get size(): number {
    return size(this.shape);
  }
  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }
  /** Whether every reference was dropped (using it is then a DisposedError). */
  get disposed(): boolean {
    return this.#refs <= 0;
  }
  /** Add a reference: the tensor survives one more `dispose`. */
  retain(): this {
    this.assertLive("retain");
    this.#refs++;
    return this;
  }
  /** Drop a reference; storage goes back to the backend when none remain. Disposing twice is a no-op. */
  dispose(): void {
    if (this.#refs <= 0) return;
    if (--this.#refs === 0) {
      if (this.base) this.base.dispose();
      else this.backend.release(this.storage);
    }
  }
  /** Throw DisposedError naming `op` when the tensor was disposed. */
  assertLive(op: string): void {
    if (this.#refs <= 0) {
      throw new DisposedError({
        message: `${op}: tensor #${this.id} ${showShape(this.shape)} was already disposed`,
      });
    }
  }
  /** Read the contents to the host (a copy). */
  data(): Promise<HostArray> {
    this.assertLive("data");
    return this.backend.read(this);
  }
  /** Read as a plain number array. */
  async toArray(): Promise<number[]> {
    return Array.from(await this.data());
  }
  /** `Tensor#id(dtype[shape] on backend)`, for messages. */
  toString(): string {
    return `Tensor#${this.id}(${this.dtype}${showShape(this.shape)} on ${this.backend.name})`;
  }
}

/** A host-side value that can become a tensor. */
export type TensorData = ArrayLike<number>;

/** Upload `data` as a tensor of `shape`; the element count must match. */
export const tensor = (backend: Backend, data: TensorData, shape: Shape, dtype: DType = "f32"): Tensor => {
  checkShape("tensor", "data", shape);
  if (data.length !== size(shape)) {
    throw new ShapeError({
      op: "tensor",
      message: `tensor: ${data.length} values given for shape ${showShape(shape)} (needs ${size(shape)})`,
    });
  }
  return new Tensor(backend, backend.upload({ shape, dtype }, data), shape, dtype);
};

/** A tensor of zeros. */
export const zeros = (backend: Backend, shape: Shape, dtype: DType = "f32"): Tensor =>
  tensor(backend, new Float32Array(size(checkShape("zeros", "shape", shape))), shape, dtype);

/** A scalar tensor. */
export const scalar = (backend: Backend, x: number, dtype: DType = "f32"): Tensor =>
  tensor(backend, [x], [], dtype);

/** A view of `count(shape)` elements of `base` starting at element `offset` (shares storage). */
export const view = (base: Tensor, offset: number, shape: Shape): Tensor => {
  base.assertLive("view");
  checkShape("view", "shape", shape);
  if (offset < 0 || offset + size(shape) > base.size) {
    throw new ShapeError({
      op: "view",
      message: `view: elements [${offset}, ${offset + size(shape)}) fall outside a tensor of ${base.size}`,
    });
  }
  const root = base.base ?? base;
  const rootOffset = offset + base.offset;
  root.retain();
  return new Tensor(
    base.backend,
    base.backend.view(root.storage, rootOffset, { shape, dtype: base.dtype }),
    shape,
    base.dtype,
    root,
    rootOffset,
  );
};

/**
 * Same storage, another shape of the same size (a view at offset 0). Recorded on the gradient tape, so
 * gradients flow through it (the cotangent is reshaped back).
 */
export const reshape = (t: Tensor, shape: Shape): Tensor => {
  const out = reshapeKernel.infer({ shape }, [t]);
  const v = view(t, 0, out[0].shape);
  record(reshapeKernel, { shape }, [t], [v]);
  return v;
};

/** The tape's record of a reshape; it never runs (a reshape is a view), it only carries the gradient rule. */
const reshapeKernel: Kernel<{ readonly shape: Shape }> = {
  name: "reshape",
  infer: ({ shape }, [t]) => {
    checkShape("reshape", "target", shape);
    if (size(shape) !== size(t.shape)) {
      throw new ShapeError({
        op: "reshape",
        message: `reshape: cannot view ${showShape(t.shape)} (${size(t.shape)} elements) as ${
          showShape(shape)
        }`,
      });
    }
    return [{ shape, dtype: t.dtype }];
  },
  cpu: () => {
    throw new Error("reshape is a view and never runs");
  },
  gpu: () => {
    throw new Error("reshape is a view and never runs");
  },
  vjp: ({ inputs: [x] }, [dy]) => [reshape(dy!, x.shape)],
};

// ---- scopes ---------------------------------------------------------------------------------------------

class Scope {
  readonly tensors = new Set<Tensor>();
  track(t: Tensor) {
    this.tensors.add(t);
  }
}
const scopes: Scope[] = [];
const currentScope = (): Scope | undefined => scopes[scopes.length - 1];

const collect = (x: unknown, out: Set<Tensor>, seen = new Set<unknown>()): void => {
  if (x instanceof Tensor) out.add(x);
  else if (x && typeof x === "object" && !seen.has(x)) {
    seen.add(x);
    for (const v of x instanceof Map ? x.values() : Object.values(x)) collect(v, out, seen);
  }
};

/**
 * Run `fn`; every tensor created inside and not reachable from its result is disposed when it returns
 * (or throws). Tensors in the result move to the enclosing scope. Works with async `fn` too, but scopes
 * must not interleave across concurrent tasks.
 */
export function tidy<R>(fn: () => R): R;
/** `tidy` of an async `fn`: the scope ends when its promise settles. */
export function tidy<R>(fn: () => Promise<R>): Promise<R>;
export function tidy<R>(fn: () => R | Promise<R>): R | Promise<R> {
  const scope = new Scope();
  scopes.push(scope);
  const end = (result: unknown) => {
    const i = scopes.lastIndexOf(scope);
    if (i >= 0) scopes.splice(i, 1);
    const keep = new Set<Tensor>();
    collect(result, keep);
    for (const t of scope.tensors) if (!keep.has(t)) t.dispose();
    const parent = currentScope();
    if (parent) { for (const t of keep) if (scope.tensors.has(t)) parent.track(t); }
  };
  let r: R | Promise<R>;
  try {
    r = fn();
  } catch (e) {
    end(undefined);
    throw e;
  }
  if (r instanceof Promise) {
    return r.then((v) => {
      end(v);
      return v;
    }, (e) => {
      end(undefined);
      throw e;
    });
  }
  end(r);
  return r;
}

/** Take a tensor out of the current scope so that `tidy` will not dispose it. */
export const keep = <T extends Tensor>(t: T): T => {
  for (const s of scopes) s.tensors.delete(t);
  return t;
};
