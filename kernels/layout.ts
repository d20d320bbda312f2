/** Layout kernels: `permute` (general transpose, materialized) and the ops built on it. */
import { ShapeError } from "../core/errors.ts";
import { type Shape, showShape, size, strides } from "../core/shape.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, flatPass, wgslType } from "../engine/wgsl.ts";

const WG = 256;

export interface PermuteParams {
  /** out axis i is input axis perm[i]. */
  readonly perm: readonly number[];
}

const permuted = (shape: Shape, perm: readonly number[]): Shape => perm.map((p) => shape[p]);

const inverse = (perm: readonly number[]): number[] => {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
};

/** out[i_0, ..., i_n] = x[i_{inv 0}, ...]: axis i of the output is axis perm[i] of the input. Any dtype. */
export const permuteKernel: Kernel<PermuteParams> = defineKernel<PermuteParams>({
  name: "permute",
  infer: ({ perm }, [x]) => {
    const ok = perm.length === x.shape.length && [...perm].sort((a, b) => a - b).every((p, i) => p === i);
    if (!ok) {
      throw new ShapeError({
        op: "permute",
        message: `permute: [${perm}] is not a permutation of the ${x.shape.length} axes of ${
          showShape(x.shape)
        }`,
      });
    }
    return [{ shape: permuted(x.shape, perm), dtype: x.dtype }];
  },
  cpu: ({ perm }, [x], [y]) => {
    const xs = strides(x.shape);
    const ys = strides(y.shape);
    for (let i = 0; i < y.data.length; i++) {
      let j = 0;
      for (let k = 0; k < perm.length; k++) j += (Math.floor(i / ys[k]) % y.shape[k]) * xs[perm[k]];
      y.data[i] = x.data[j];
    }
  },
  gpu: ({ perm }, [x], target) => {
    const shape = permuted(x.shape, perm);
    const n = size(shape);
    const xs = strides(x.shape);
    const ys = strides(shape);
    const terms = shape.map((d, k) => (d === 1 ? "" : `((i / ${ys[k]}u) % ${d}u) * ${xs[perm[k]]}u`)).filter((
      t,
    ) => t);
    const ty = wgslType(x.dtype);
    const b = bind({ input: 0, name: "x", type: ty }, { output: 0, name: "y", type: ty });
    return [flatPass(b, n, WG, target, `  y[i] = x[${terms.length ? terms.join(" + ") : "0u"}];`)];
  },
  vjp: ({ params: { perm } }, [dy]) => [permute(dy!, inverse(perm))],
});

/** Permute axes (materialized copy). The identity permutation returns `x` itself. */
export const permute = (x: Tensor, perm: readonly number[]): Tensor =>
  perm.every((p, i) => p === i) && perm.length === x.rank ? x : apply1(permuteKernel, { perm }, [x]);

/** Swap the last two axes. */
export const transpose = (x: Tensor): Tensor => {
  if (x.rank < 2) {
    throw new ShapeError({
      op: "transpose",
      message: `transpose: needs rank >= 2, got ${showShape(x.shape)}`,
    });
  }
  const perm = x.shape.map((_, i) => i);
  [perm[x.rank - 2], perm[x.rank - 1]] = [perm[x.rank - 1], perm[x.rank - 2]];
  return permute(x, perm);
};

/** dst := src, in place (dst may be a view into a larger tensor, e.g. one parameter of a flat buffer). */
export const copyKernel: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "copy",
  infer: (_p, [dst, src]) => {
    if (size(dst.shape) !== size(src.shape) || dst.dtype !== src.dtype) {
      throw new ShapeError({
        op: "copyInto",
        message: `copyInto: destination ${dst.dtype}${showShape(dst.shape)} and source ${src.dtype}${
          showShape(src.shape)
        } differ`,
      });
    }
    return [{ shape: dst.shape, dtype: dst.dtype, alias: 0 }];
  },
  cpu: (_p, [_dst, src], [out]) => out.data.set(src.data),
  gpu: (_p, [dst], target) => {
    const ty = wgslType(dst.dtype);
    const b = bind({ input: 0, name: "dst", type: ty, access: "read_write" }, {
      input: 1,
      name: "src",
      type: ty,
    });
    return [flatPass(b, size(dst.shape), WG, target, `  dst[i] = src[i];`)];
  },
});

/** Write `src` into `dst` in place; returns `dst` itself (no new reference). */
export const copyInto = (dst: Tensor, src: Tensor): Tensor => apply1(copyKernel, {}, [dst, src]);

export interface SliceRowsParams {
  /** First row (along axis 0) and row count. */
  readonly start: number;
  readonly count: number;
}

/** Rows [start, start + count) of x along axis 0 (a copy). Any dtype. */
export const sliceRowsKernel: Kernel<SliceRowsParams> = defineKernel<SliceRowsParams>({
  name: "sliceRows",
  infer: ({ start, count }, [x]) => {
    if (x.shape.length < 1 || start < 0 || count < 0 || start + count > x.shape[0]) {
      throw new ShapeError({
        op: "sliceRows",
        message: `sliceRows: rows [${start}, ${start + count}) out of range for ${showShape(x.shape)}`,
      });
    }
    return [{ shape: [count, ...x.shape.slice(1)], dtype: x.dtype }];
  },
  cpu: ({ start }, [x], [y]) => {
    const row = size(x.shape.slice(1));
    y.data.set(x.data.subarray(start * row, start * row + y.data.length));
  },
  gpu: ({ start, count }, [x], target) => {
    const row = size(x.shape.slice(1));
    const ty = wgslType(x.dtype);
    const b = bind({ input: 0, name: "x", type: ty }, { output: 0, name: "y", type: ty });
    return [flatPass(b, count * row, WG, target, `  y[i] = x[${start * row}u + i];`)];
  },
  vjp: ({ params: { start, count }, inputs: [x] }, [dy]) => {
    const parts: Tensor[] = [];
    const rest = x.shape.slice(1);
    if (start > 0) parts.push(zerosLike(dy!, [start, ...rest]));
    parts.push(dy!);
    if (start + count < x.shape[0]) parts.push(zerosLike(dy!, [x.shape[0] - start - count, ...rest]));
    return [concatRows(parts)];
  },
});

/** Zeros of `shape` (any dtype of `t`) on `t`'s backend, written by a kernel: no host upload. */
export const zerosLike = (t: Tensor, shape: readonly number[]): Tensor =>
  apply1(zerosLikeKernel, { shape }, [t]);

/** A kernel that ignores its input and writes zeros of `shape` (keeps the backend implicit). */
export const zerosLikeKernel: Kernel<{ readonly shape: readonly number[] }> = defineKernel<
  { readonly shape: readonly number[] }
>({
  name: "zerosLike",
  infer: ({ shape }, [t]) => [{ shape, dtype: t.dtype }],
  cpu: (_p, _i, [y]) => y.data.fill(0),
  gpu: ({ shape }, [t], target) => {
    const ty = wgslType(t.dtype);
    return [
      flatPass(bind({ output: 0, name: "y", type: ty }), size(shape), WG, target, `  y[i] = ${ty}(0);`),
    ];
  },
});

/** Concatenate tensors along axis 0 (all other extents and the dtype equal). Differentiable. */
export const concatKernel: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "concatRows",
  infer: (_p, xs) => {
    const rest = xs[0].shape.slice(1);
    for (const x of xs) {
      if (
        x.shape.length !== xs[0].shape.length || x.shape.slice(1).some((d, i) => d !== rest[i]) ||
        x.dtype !== xs[0].dtype
      ) {
        throw new ShapeError({
          op: "concatRows",
          message: `concatRows: ${xs.map((t) => t.dtype + showShape(t.shape)).join(", ")} differ past axis 0`,
        });
      }
    }
    return [{ shape: [xs.reduce((a, x) => a + x.shape[0], 0), ...rest], dtype: xs[0].dtype }];
  },
  cpu: (_p, xs, [y]) => {
    let at = 0;
    for (const x of xs) {
      y.data.set(x.data, at);
      at += x.data.length;
    }
  },
  gpu: (_p, xs, target) => {
    const ty = wgslType(xs[0].dtype);
    let at = 0;
    return xs.map((x, k) => {
      const n = size(x.shape);
      const off = at;
      at += n;
      const b = bind({ input: k, name: "x", type: ty }, { output: 0, name: "y", type: ty });
      return flatPass(b, n, WG, target, `  y[${off}u + i] = x[i];`, "concatRows");
    });
  },
  vjp: ({ inputs }, [dy]) => {
    let at = 0;
    return inputs.map((x) => {
      const g = apply1(sliceRowsKernel, { start: at, count: x.shape[0] }, [dy!]);
      at += x.shape[0];
      return g;
    });
  },
});

/** Concatenate along axis 0. */
export const concatRows = (
  xs: readonly Tensor[],
): Tensor => (xs.length === 1 ? xs[0] : apply1(concatKernel, {}, xs));
/** Rows [start, start + count) along axis 0. */
export const sliceRows = (x: Tensor, start: number, count: number): Tensor =>
  apply1(sliceRowsKernel, { start, count }, [x]);
