/** Ops on tensors larger than one storage binding: 64-aligned element ranges or row blocks, each bound alone. */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { allocLike, bindingElems, fitsBinding, ranges } from "../engine/binding.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { copyInto, zerosLike } from "./layout.ts";
import { apply1 } from "../engine/apply.ts";
import { type Tensor, tidy, view } from "../engine/tensor.ts";
import { bind, flatPass, wgslType } from "../engine/wgsl.ts";

const WG = 256;

/** Writes zeros into its input, in place. */
export const fillZeroKernel: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "fillZero",
  infer: (_p, [t]) => [{ shape: t.shape, dtype: t.dtype, alias: 0 }],
  cpu: (_p, _i, [y]) => y.data.fill(0),
  gpu: (_p, [t], target) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const ty = wgslType(t.dtype);
    return [
      flatPass(
        bind({ input: 0, name: "y", type: ty, access: "read_write" }),
        n,
        WG,
        target,
        `  y[i] = ${ty}(0);`,
      ),
    ];
  },
});

/** Zeros of `shape` on `like`'s backend, written one binding-sized range at a time when the tensor is large. */
export const zerosChunked = (like: Tensor, shape: readonly number[]): Tensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  if (fitsBinding(like.backend, n)) return zerosLike(like, shape);
  const out = allocLike(like, shape);
  for (const [s, len] of ranges(n, bindingElems(like.backend))) {
    tidy(() => apply1(fillZeroKernel, {}, [view(out, s, [len])]));
  }
  return out;
};

/**
 * dst := src (equal element counts), in place, one binding-sized range at a time when large. Both must start at
 * 64-aligned elements of their storage on the GPU (parameter views and fresh tensors do). Not differentiable.
 */
export const copyChunked = (dst: Tensor, src: Tensor): Tensor => {
  if (fitsBinding(dst.backend, dst.size)) return copyInto(dst, src);
  for (const [s, len] of ranges(dst.size, bindingElems(dst.backend))) {
    tidy(() => copyInto(view(dst, s, [len]), view(src, s, [len])));
  }
  return dst;
};

/** Columns [start, start + C) of y (R, V) := z (R, C), in place (inputs: y, z; output aliases y). */
export const putColumnsKernel: Kernel<{ readonly start: number }> = defineKernel<{ readonly start: number }>({
  name: "putColumns",
  infer: ({ start }, [y, z]) => {
    if (
      y.shape.length !== 2 || z.shape.length !== 2 || y.shape[0] !== z.shape[0] ||
      start < 0 || start + z.shape[1] > y.shape[1] || y.dtype !== z.dtype
    ) {
      throw new ShapeError({
        op: "putColumns",
        message: `putColumns: block ${showShape(z.shape)} at column ${start} does not fit ${
          showShape(y.shape)
        }`,
      });
    }
    return [{ shape: y.shape, dtype: y.dtype, alias: 0 }];
  },
  cpu: ({ start }, [y, z], [out]) => {
    const [R, V] = y.shape, C = z.shape[1];
    for (let n = 0; n < R; n++) out.data.set(z.data.subarray(n * C, (n + 1) * C), n * V + start);
  },
  gpu: ({ start }, [y, z], target) => {
    const [R, C] = z.shape, V = y.shape[1];
    const ty = wgslType(y.dtype);
    const b = bind({ input: 0, name: "y", type: ty, access: "read_write" }, {
      input: 1,
      name: "z",
      type: ty,
    });
    return [flatPass(b, R * C, WG, target, `  y[(i / ${C}u) * ${V}u + ${start}u + i % ${C}u] = z[i];`)];
  },
});

/** Columns [start, start + count) of y (R, V) as a new (R, count) tensor. */
export const takeColumnsKernel: Kernel<{ readonly start: number; readonly count: number }> = defineKernel<
  { readonly start: number; readonly count: number }
>({
  name: "takeColumns",
  infer: ({ start, count }, [y]) => {
    if (y.shape.length !== 2 || start < 0 || count < 0 || start + count > y.shape[1]) {
      throw new ShapeError({
        op: "takeColumns",
        message: `takeColumns: columns [${start}, ${start + count}) out of range for ${showShape(y.shape)}`,
      });
    }
    return [{ shape: [y.shape[0], count], dtype: y.dtype }];
  },
  cpu: ({ start, count }, [y], [out]) => {
    const [R, V] = y.shape;
    for (let n = 0; n < R; n++) {
      out.data.set(y.data.subarray(n * V + start, n * V + start + count), n * count);
    }
  },
  gpu: ({ start, count }, [y], target) => {
    const [R, V] = y.shape;
    const ty = wgslType(y.dtype);
    const b = bind({ input: 0, name: "y", type: ty }, { output: 0, name: "z", type: ty });
    return [
      flatPass(b, R * count, WG, target, `  z[i] = y[(i / ${count}u) * ${V}u + ${start}u + i % ${count}u];`),
    ];
  },
});
