/**
 * Shapes, dtypes and broadcasting: pure helpers shared by every backend.
 *
 * Shape letters, in code and comments alike: `B` sequences in a batch, `T` positions per sequence, `R` rows of a
 * flattened (B*T, ...) tensor (or any other stack of rows, such as the rows of a readout or KL kernel), `V` the
 * vocabulary, `D` (or `d`) a hidden or head width, `C` a chunk of vocabulary columns, `H` heads. `M`, `K`, `N`
 * belong to matrix multiplication only: A is M x K, B is K x N, C = A B is M x N.
 */
import { ShapeError } from "./errors.ts";

/** A tensor shape: a list of non-negative integer extents, outermost first. */
export type Shape = readonly number[];

/** Element types a device tensor can hold. The CPU backend may store f32 tensors as f64 (its `precision`). */
export type DType = "f32" | "i32" | "u32";

/** Number of elements of a shape (1 for a scalar `[]`). */
export const size = (shape: Shape): number => shape.reduce((a, b) => a * b, 1);

/** True when two shapes are equal element by element. */
export const sameShape = (a: Shape, b: Shape): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/** Pretty form used in every error message: `[2,3,4]`. */
export const showShape = (s: Shape): string => `[${s.join(",")}]`;

/** Check that a shape is a list of non-negative integers; throws ShapeError naming `what`. */
export const checkShape = (op: string, what: string, shape: Shape): Shape => {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new ShapeError({
        op,
        message: `${op}: ${what} has shape ${showShape(shape)}; every extent must be a non-negative integer`,
      });
    }
  }
  return shape;
};

/** Row-major strides of a shape. */
export const strides = (shape: Shape): number[] => {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
};

/** NumPy broadcasting of two shapes; throws ShapeError naming the op when they are incompatible. */
export const broadcastShapes = (op: string, a: Shape, b: Shape): Shape => {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new ShapeError({
        op,
        message: `${op}: shapes ${showShape(a)} and ${
          showShape(b)
        } do not broadcast (axis ${i}: ${x} vs ${y})`,
      });
    }
    out[i] = x === 1 ? y : x;
  }
  return out;
};

/**
 * Strides of `from` when broadcast to `to` (0 along broadcast axes), padded on the left.
 * Index `to`-coordinates with these to read the broadcast operand.
 */
export const broadcastStrides = (from: Shape, to: Shape): number[] => {
  const s = strides(from);
  const out = new Array<number>(to.length).fill(0);
  const off = to.length - from.length;
  for (let i = 0; i < from.length; i++) out[off + i] = from[i] === 1 ? 0 : s[i];
  return out;
};
