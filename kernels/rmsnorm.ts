/** RMSNorm over the last axis (Hugging Face Llama/Qwen convention): fused forward and fused backward kernels. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape } from "../core/shape.ts";
import { defineKernel, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { requireRows, ROW_WG, type RowPlan, rowPlan, rowsCols } from "./reduce.ts";
import { apply, apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, f32Lit, grid1d, LOOP_SAFE, output, type StorageBinding } from "../engine/wgsl.ts";

export interface RmsNormParams {
  /** Added to mean(x^2) before the square root (1e-6 for Qwen2, 1e-5 or 1e-6 for Llama). */
  readonly eps: number;
}

/**
 * Rows per chunk of the first level of the dw reduction (the second level sums the chunks per column). Past
 * 64 x LOOP_SAFE rows the chunks grow so that the second level's loop over chunks stays in the loop budget.
 */
const DW_CHUNK = 64;

/** Validate x [..., d] f32 and weight [d] f32 (and eps); returns d. */
const check = (op: string, p: RmsNormParams, x: TensorSpec, w: TensorSpec): number => {
  requireRows(op, "x", x);
  const d = x.shape[x.shape.length - 1];
  if (w.dtype !== "f32" || !sameShape(w.shape, [d])) {
    throw new ShapeError({
      op,
      message: `${op}: x has shape ${showShape(x.shape)}, so weight needs shape [${d}] (f32); got ${
        showShape(w.shape)
      } (${w.dtype})`,
    });
  }
  if (!(Number.isFinite(p.eps) && p.eps >= 0)) {
    throw new ShapeError({ op, message: `${op}: eps must be a finite number >= 0, got ${p.eps}` });
  }
  return d;
};

/** r = 1 / sqrt(mean_j x_j^2 + eps) of one row, in f64. */
const refR = (x: ArrayLike<number>, o: number, d: number, eps: number): number => {
  let ss = 0;
  for (let j = 0; j < d; j++) ss += x[o + j] * x[o + j];
  return 1 / Math.sqrt(ss / d + eps);
};

/** WGSL fragment (after `RowPlan.main`): `base` and `r` = 1 / sqrt(mean(x^2) + eps) of the row. */
const rowR = (p: RowPlan, eps: number) =>
  `  let base = row * C;
  var ss = 0.0;
  for (var j = t; j < C; j += ${p.stride}u) { let v = x[base + j]; ss += v * v; }
  let r = 1.0 / sqrt(wgSum(t, ss) / f32(C) + ${f32Lit(eps)});`;

/** y = x / sqrt(mean(x^2) + eps) * weight over the last axis: x [..., d], weight [d] -> [..., d]. */
export const rmsNormKernel: Kernel<RmsNormParams> = defineKernel<RmsNormParams>({
  name: "rmsNorm",
  infer: (p, [x, w]) => {
    check("rmsNorm", p, x, w);
    return [{ shape: x.shape, dtype: "f32" }];
  },
  cpu: ({ eps }, [x, w], [y]) => {
    const { rows, cols: d } = rowsCols(x.shape);
    for (let i = 0; i < rows; i++) {
      const o = i * d, r = refR(x.data, o, d, eps);
      for (let j = 0; j < d; j++) y.data[o + j] = x.data[o + j] * r * w.data[j];
    }
  },
  gpu: ({ eps }, [x], target) => {
    const { rows, cols: d } = rowsCols(x.shape);
    const p = rowPlan(rows, d, target, 2);
    const b = bind({ input: 0, name: "x" }, { input: 1, name: "w" }, { output: 0, name: "y" }, p.dims);
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
${rowR(p, eps)}
  for (var j = t; j < C; j += ${p.stride}u) { y[base + j] = x[base + j] * r * w[j]; }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
    }];
  },
  // With r = (mean(x^2) + eps)^(-1/2), y_j = x_j r w_j and dr/dx_j = -r^3 x_j / d:
  //   dx_j = r w_j dy_j - x_j r^3 / d * sum_k w_k dy_k x_k,   dw_j = sum over rows of dy_j x_j r.
  // One fused kernel recomputes r (the forward does not store it).
  vjp: ({ params, inputs: [x, w] }, [dy]) => apply(rmsNormGrad, params, [x, w, dy!]),
  saveOutputs: false,
});

/**
 * [dx, dw] from x [..., d], weight [d], dy [..., d]. Passes: (1) per row, dx and r into scratch; (2) per
 * (chunk of DW_CHUNK rows or more, column) partial sums of dy x r; (3) per column, the sum of its chunk partials.
 * Every sum runs in a fixed order, so dw is deterministic.
 */
export const rmsNormGrad: Kernel<RmsNormParams> = defineKernel<RmsNormParams>({
  name: "rmsNormGrad",
  infer: (p, [x, w, dy]) => {
    check("rmsNormGrad", p, x, w);
    if (dy.dtype !== "f32" || !sameShape(dy.shape, x.shape)) {
      throw new ShapeError({
        op: "rmsNormGrad",
        message: `rmsNormGrad: dy has shape ${showShape(dy.shape)} (${dy.dtype}), expected ${
          showShape(x.shape)
        } (f32)`,
      });
    }
    return [{ shape: x.shape, dtype: "f32" }, { shape: w.shape, dtype: "f32" }];
  },
  cpu: ({ eps }, [x, w, dy], [dx, dw]) => {
    const { rows, cols: d } = rowsCols(x.shape);
    const acc = new Float64Array(d);
    for (let i = 0; i < rows; i++) {
      const o = i * d, r = refR(x.data, o, d, eps);
      let s = 0;
      for (let j = 0; j < d; j++) s += w.data[j] * dy.data[o + j] * x.data[o + j];
      const c = r * r * r / d * s;
      for (let j = 0; j < d; j++) {
        dx.data[o + j] = r * w.data[j] * dy.data[o + j] - x.data[o + j] * c;
        acc[j] += dy.data[o + j] * x.data[o + j] * r;
      }
    }
    dw.data.set(acc);
  },
  gpu: ({ eps }, [x], target) => {
    const { rows, cols: d } = rowsCols(x.shape);
    const p = rowPlan(rows, d, target, 3);
    const rBuf: StorageBinding = { kind: "scratch", id: "r", bytes: Math.max(1, rows) * 4 };
    const rowBinds = bind(
      { input: 0, name: "x" },
      { input: 1, name: "w" },
      { input: 2, name: "dy" },
      { output: 0, name: "dx" },
      { buffer: rBuf, name: "rs" },
      p.dims,
    );
    const rowPass = `${rowBinds.decls}
${p.helpers}
${p.main}
${rowR(p, eps)}
  var p = 0.0;
  for (var j = t; j < C; j += ${p.stride}u) { p += w[j] * dy[base + j] * x[base + j]; }
  let c = r * r * r / f32(C) * wgSum(t, p);
  for (var j = t; j < C; j += ${p.stride}u) {
    let k = base + j;
    dx[k] = r * w[j] * dy[k] - x[k] * c;
  }
  if (t == 0u) { rs[row] = r; }
}`;
    const chunk = Math.max(DW_CHUNK, Math.ceil(rows / LOOP_SAFE));
    const chunks = Math.max(1, Math.ceil(rows / chunk));
    const direct = chunks === 1;
    const n2 = chunks * d;
    const g2 = grid1d(n2, ROW_WG, target);
    const g3 = grid1d(d, ROW_WG, target);
    const part: StorageBinding = { kind: "scratch", id: "part", bytes: n2 * 4 };
    const dwOut = output(1);
    const data = (gx: number) => new Uint32Array([rows, d, chunks, gx]);
    // Invocation (k, j): rows [k*chunk, min((k+1)*chunk, rows)) of column j, in row order. With one
    // chunk it writes dw itself.
    const chunkBinds = bind(
      { input: 0, name: "x" },
      { input: 2, name: "dy" },
      { buffer: rBuf, name: "rs", access: "read" },
      { buffer: direct ? dwOut : part, name: "part" },
      {
        uniform: data(g2[0] * ROW_WG),
        name: "dims",
        type: "DwDims",
        struct: "rows: u32, d: u32, chunks: u32, gx: u32",
      },
    );
    const chunkPass = `${chunkBinds.decls}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * dims.gx;
  if (i >= dims.chunks * dims.d) { return; }
  let k = i / dims.d;
  let j = i % dims.d;
  let end = min((k + 1u) * ${chunk}u, dims.rows);
  var acc = 0.0;
  for (var row = k * ${chunk}u; row < end; row++) {
    let q = row * dims.d + j;
    acc += dy[q] * x[q] * rs[row];
  }
  part[i] = acc;
}`;
    const columnBinds = bind(
      { buffer: part, name: "part", access: "read" },
      { buffer: dwOut, name: "dw" },
      { uniform: data(g3[0] * ROW_WG), name: "dims", type: "vec4u" },
    );
    const columnPass = `${columnBinds.decls}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x + gid.y * dims.w;
  let d = dims.y;
  if (j >= d) { return; }
  var acc = 0.0;
  for (var k = 0u; k < dims.z; k++) { acc += part[k * d + j]; }
  dw[j] = acc;
}`;
    return [
      {
        wgsl: rowPass,
        workgroups: p.workgroups,
        bindings: rowBinds.bindings,
        label: "rmsNormGrad.dx",
      },
      {
        wgsl: chunkPass,
        workgroups: g2,
        bindings: chunkBinds.bindings,
        label: "rmsNormGrad.dwChunks",
      },
      ...(direct ? [] : [{
        wgsl: columnPass,
        workgroups: g3,
        bindings: columnBinds.bindings,
        label: "rmsNormGrad.dw",
      }]),
    ];
  },
});

/**
 * RMSNorm over the last axis: x [..., d], weight [d] -> [..., d], y = x / sqrt(mean(x^2) + eps) * weight,
 * computed in f32 on the GPU (f64 in the reference). Differentiable in x and weight.
 */
export const rmsNorm = (x: Tensor, weight: Tensor, eps: number): Tensor =>
  apply1(rmsNormKernel, { eps }, [x, weight]);
