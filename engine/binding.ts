/** Storage-binding limits as ranges and row blocks: how ops split tensors larger than one binding. */
import { type Backend, limitsOf } from "./backend.ts";
import { Tensor } from "./tensor.ts";

/** GPU views start at multiples of 64 elements (256 bytes, WebGPU's minStorageBufferOffsetAlignment). */
export const VIEW_ALIGN = 64;

/** Whether `n` 4-byte elements fit one storage binding on `b`. */
export const fitsBinding = (b: Backend, n: number): boolean =>
  n * 4 <= limitsOf(b).maxStorageBufferBindingSize;

/** Elements one binding covers: the largest multiple of 64 whose bytes fit the limit (at least 64). */
export const bindingElems = (b: Backend): number => {
  const lim = limitsOf(b).maxStorageBufferBindingSize;
  return Number.isFinite(lim)
    ? Math.max(VIEW_ALIGN, Math.floor(lim / 4 / VIEW_ALIGN) * VIEW_ALIGN)
    : Infinity;
};

/**
 * Rows of `rowElems` elements per block such that a block fits one binding and every block starts 64-aligned:
 * a multiple of 64 rows (at least 64, even if 64 rows exceed the limit: the backend then names the kernel).
 */
export const rowsPerBinding = (b: Backend, rowElems: number): number => {
  const lim = limitsOf(b).maxStorageBufferBindingSize;
  if (!Number.isFinite(lim)) return Infinity;
  return Math.max(VIEW_ALIGN, Math.floor(lim / (4 * Math.max(1, rowElems)) / VIEW_ALIGN) * VIEW_ALIGN);
};

/**
 * A vocabulary chunk for streaming readouts: `want` rows, lowered so that a (rows, rowElems) block still fits one
 * binding (at least 64 rows; a multiple of 64 whenever it is lowered).
 */
export const chunkRows = (b: Backend, want: number, rowElems: number): number =>
  Math.min(want, rowsPerBinding(b, rowElems));

/** [start, length) ranges covering [0, n), each at most `max` long; starts are multiples of `max`. */
export const ranges = (n: number, max: number): [number, number][] => {
  const out: [number, number][] = [];
  if (!Number.isFinite(max)) return n > 0 ? [[0, n]] : [];
  for (let s = 0; s < n; s += max) out.push([s, Math.min(max, n - s)]);
  return out;
};

/** A new tensor of `shape` on `like`'s backend with unspecified contents (every element must be written). */
export const allocLike = (like: Tensor, shape: readonly number[]): Tensor => {
  const spec = { shape, dtype: like.dtype };
  return new Tensor(like.backend, like.backend.alloc(spec), shape, like.dtype);
};
