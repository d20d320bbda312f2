/** Row reductions over the last axis (sum, mean, max) with their gradients, and a whole-tensor sum of squares. */
import { ShapeError } from "../core/errors.ts";
import { type Shape, showShape, size } from "../core/shape.ts";
import { broadcastTo, scale } from "./elementwise.ts";
import { defineKernel, type GpuTarget, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import { reshape, type Tensor } from "../engine/tensor.ts";
import {
  bind,
  type BindSpec,
  grid1d,
  LOOP_SAFE,
  withinLoopBudget,
  workgroupReductions,
} from "../engine/wgsl.ts";

/** Threads per workgroup of the workgroup-per-row variant (the tree reductions assume this power of two). */
export const ROW_WG = 256;
/** Threads per workgroup of the thread-per-row variant (one row per invocation, no barriers). */
const THREAD_WG = 64;

/** Workgroup tree reductions over ROW_WG invocations (see `RowPlan`). */
const WG_HELPERS = workgroupReductions(ROW_WG);

/**
 * How a row kernel is laid out on the GPU. Two variants with the same kernel bodies:
 * - "workgroup" (real GPUs): one workgroup of 256 per row, strided loops, tree reductions in workgroup memory;
 * - "thread" (`target.software`, llvmpipe): one invocation per row, plain loops, no barriers. On llvmpipe a
 *   256-wide workgroup with barriers costs ~60 us, so a [4096, 512] row sum took 265 ms that way. Only when
 *   `passes * cols` fits the per-invocation loop budget (`LOOP_SAFE`, engine/wgsl.ts): llvmpipe silently
 *   cuts every loop short past 65,535 iterations per invocation, so longer rows (a 151,936-token vocabulary)
 *   take the workgroup variant there too, whose invocations loop passes * cols / 256 times.
 * Bodies loop `for (var j = t; j < C; j += stride)` and reduce with `wgSum(t, v)`, `wgMax(t, v)` and
 * `wgArgMax(t, v, i)` (the max's smallest index), which every invocation of a row must call (uniform
 * control flow). The shape travels in the `dims` uniform (rows, cols, grid row stride), so the text (the
 * pipeline cache key) does not depend on it. Fixed reduction order: results are deterministic.
 */
export interface RowPlan {
  /** The reduction helpers (after the bindings). */
  readonly helpers: string;
  /** Opening of `main` up to bindings of `row`, `t` and `C` (the row length); returns past the last row. */
  readonly main: string;
  /** Loop stride of a row's invocations. */
  readonly stride: number;
  /** True for the one-invocation-per-row variant. */
  readonly thread: boolean;
  readonly workgroups: [number, number, number];
  /** The `dims` uniform, the last binding of the pass. */
  readonly dims: BindSpec;
}

/**
 * The plan of a row kernel over `rows` rows of `cols`; `passes` is how many loops over the row the body runs
 * (it decides whether one invocation per row fits the loop budget).
 */
export const rowPlan = (rows: number, cols: number, target: GpuTarget, passes: number): RowPlan => {
  const thread = target.software && withinLoopBudget(passes * cols);
  const wg = thread ? THREAD_WG : ROW_WG;
  const workgroups = grid1d(thread ? rows : rows * ROW_WG, wg, target);
  const gx = thread ? workgroups[0] * THREAD_WG : workgroups[0];
  const helpers = thread
    ? `fn wgSum(t: u32, v: f32) -> f32 { return v; }
fn wgMax(t: u32, v: f32) -> f32 { return v; }
fn wgArgMax(t: u32, v: f32, i: u32) -> u32 { return i; }`
    : WG_HELPERS;
  // The workgroup variant's early return depends only on the workgroup id: barriers after it stay uniform.
  const main = thread
    ? `@compute @workgroup_size(${THREAD_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.x + gid.y * dims.gx;
  if (row >= dims.rows) { return; }
  let t = 0u;
  let C = dims.cols;`
    : `@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * dims.gx;
  if (row >= dims.rows) { return; }
  let C = dims.cols;`;
  return {
    helpers,
    main,
    stride: thread ? 1 : ROW_WG,
    thread,
    workgroups,
    dims: {
      uniform: new Uint32Array([rows, cols, gx, 0]),
      name: "dims",
      type: "RowDims",
      struct: "rows: u32, cols: u32, gx: u32, pad: u32",
    },
  };
};

/** Rows and columns of a tensor viewed as [rows, C] along its last axis. */
export const rowsCols = (shape: Shape): { rows: number; cols: number } => {
  const cols = shape[shape.length - 1];
  return { rows: cols === 0 ? size(shape.slice(0, -1)) : size(shape) / cols, cols };
};

/** Throw unless `x` is f32 with a non-empty last axis (`what` names the tensor in the message). */
export const requireRows = (op: string, what: string, x: TensorSpec): void => {
  if (x.dtype !== "f32") {
    throw new ShapeError({ op, message: `${op}: ${what} has dtype ${x.dtype}, expected f32` });
  }
  if (x.shape.length === 0) {
    throw new ShapeError({
      op,
      message: `${op}: ${what} has shape [] (rank 0); it needs a last axis to work along`,
    });
  }
  if (x.shape[x.shape.length - 1] === 0) {
    throw new ShapeError({
      op,
      message: `${op}: ${what} has shape ${showShape(x.shape)}; the last axis is empty`,
    });
  }
};

// ---- sum / mean / max over the last axis ---------------------------------------------------------------------

export type ReduceOp = "sum" | "mean" | "max";

export interface ReduceParams {
  readonly op: ReduceOp;
}

/** y[r] = reduce_j x[r, j] over the last axis: x [..., C] -> [...] (rank 0 for a rank-1 x). */
export const reduceRows: Kernel<ReduceParams> = defineKernel<ReduceParams>({
  name: "reduce",
  infer: ({ op }, [x]) => {
    requireRows(op, "x", x);
    return [{ shape: x.shape.slice(0, -1), dtype: "f32" }];
  },
  cpu: ({ op }, [x], [y]) => {
    const { rows, cols } = rowsCols(x.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let acc = op === "max" ? x.data[o] : 0;
      for (let j = 0; j < cols; j++) {
        const v = x.data[o + j];
        acc = op === "max" ? Math.max(acc, v) : acc + v;
      }
      y.data[r] = op === "mean" ? acc / cols : acc;
    }
  },
  gpu: ({ op }, [x], target) => {
    const { rows, cols } = rowsCols(x.shape);
    const p = rowPlan(rows, cols, target, 1);
    let init: string, step: string, finish: string;
    switch (op) {
      case "sum":
      case "mean":
        init = "0.0";
        step = "acc + v";
        finish = op === "sum" ? "wgSum(t, acc)" : "wgSum(t, acc) / f32(C)";
        break;
      case "max": // start from an element of the row (never from -inf, which WGSL cannot spell)
        init = "x[base + min(t, C - 1u)]";
        step = "max(acc, v)";
        finish = "wgMax(t, acc)";
        break;
      default:
        op satisfies never;
        throw new Error("unreachable");
    }
    const b = bind({ input: 0, name: "x" }, { output: 0, name: "y" }, p.dims);
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
  let base = row * C;
  var acc = ${init};
  for (var j = t; j < C; j += ${p.stride}u) {
    let v = x[base + j];
    acc = ${step};
  }
  let r = ${finish};
  if (t == 0u) { y[row] = r; }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
      label: `reduce.${op}`,
    }];
  },
  // sum: dx[r, j] = dy[r]; mean: dx[r, j] = dy[r] / C; max: dx[r, j] = dy[r] at the first argmax j, else 0.
  vjp: ({ params: { op }, inputs: [x] }, [dy]) => {
    const g = dy!; // (...)
    switch (op) {
      case "sum":
        return [broadcastTo(reshape(g, [...g.shape, 1]), x.shape)]; // (..., C)
      case "mean":
        return [scale(broadcastTo(reshape(g, [...g.shape, 1]), x.shape), 1 / x.shape[x.shape.length - 1])];
      case "max":
        return [apply1(maxGrad, {}, [x, g])]; // (..., C)
      default:
        return op satisfies never;
    }
  },
});

// ---- gradient of max: route dy to the first argmax of each row ------------------------------------------------

/** dx [..., C] from x [..., C] and dy [...]: dx[r, j] = dy[r] where j is the first index of the row's max. */
export const maxGrad: Kernel<Record<never, never>> = defineKernel<Record<never, never>>({
  name: "maxGrad",
  infer: (_p, [x, dy]) => {
    requireRows("maxGrad", "x", x);
    const lead = x.shape.slice(0, -1);
    if (dy.dtype !== "f32" || showShape(dy.shape) !== showShape(lead)) {
      throw new ShapeError({
        op: "maxGrad",
        message: `maxGrad: dy has shape ${showShape(dy.shape)} (${dy.dtype}), expected ${
          showShape(lead)
        } (f32)`,
      });
    }
    return [{ shape: x.shape, dtype: "f32" }];
  },
  cpu: (_p, [x, dy], [dx]) => {
    const { rows, cols } = rowsCols(x.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let best = 0;
      for (let j = 1; j < cols; j++) if (x.data[o + j] > x.data[o + best]) best = j;
      for (let j = 0; j < cols; j++) dx.data[o + j] = j === best ? dy.data[r] : 0;
    }
  },
  gpu: (_p, [x], target) => {
    const { rows, cols } = rowsCols(x.shape);
    const p = rowPlan(rows, cols, target, 2);
    // Each invocation keeps its first (value, index) best with a strict >; wgArgMax keeps the smaller index
    // on ties, so the result is the row's first argmax.
    const b = bind({ input: 0, name: "x" }, { input: 1, name: "dy" }, { output: 0, name: "dx" }, p.dims);
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
  let base = row * C;
  var best = x[base];
  var arg = 0u;
  for (var j = t; j < C; j += ${p.stride}u) {
    let v = x[base + j];
    if (v > best) { best = v; arg = j; }
  }
  let am = wgArgMax(t, best, arg);
  let g = dy[row];
  for (var j = t; j < C; j += ${p.stride}u) {
    dx[base + j] = select(0.0, g, j == am);
  }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
    }];
  },
});

// ---- sum of squares of a whole tensor -------------------------------------------------------------------------

/** s = sum_i x_i^2 over every element of x (any shape) -> []. Two levels: partial sums per workgroup, then one. */
export const sumSquaresKernel: Kernel<Record<never, never>> = defineKernel<Record<never, never>>({
  name: "sumSquares",
  infer: (_p, [x]) => {
    if (x.dtype !== "f32") {
      throw new ShapeError({ op: "sumSquares", message: `sumSquares: x has dtype ${x.dtype}, expected f32` });
    }
    return [{ shape: [], dtype: "f32" }];
  },
  cpu: (_p, [x], [y]) => {
    let acc = 0;
    for (let i = 0; i < x.data.length; i++) acc += x.data[i] * x.data[i];
    y.data[0] = acc;
  },
  gpu: (_p, [x], target) => {
    const n = size(x.shape);
    // First level: `groups` workgroups stride over x (n and the stride travel in a uniform). On llvmpipe a
    // workgroup with barriers is expensive, so fewer groups with more values per invocation, but never more
    // than LOOP_SAFE values per invocation (past 8 x 256 x 65,535 elements llvmpipe would cut the loop short).
    const [cap, per] = target.software ? [8, 256] : [1024, 16];
    const groups = Math.max(
      Math.min(cap, Math.max(1, Math.ceil(n / (ROW_WG * per)))),
      Math.ceil(n / (ROW_WG * LOOP_SAFE)),
    );
    const part = { kind: "scratch", id: "part", bytes: groups * 4 } as const;
    const dims: BindSpec = {
      uniform: new Uint32Array([n, groups * ROW_WG, groups, 0]),
      name: "dims",
      type: "SsDims",
      struct: "n: u32, stride: u32, groups: u32, pad: u32",
    };
    const first = bind({ input: 0, name: "x" }, { buffer: part, name: "part" }, dims);
    const second = bind({ buffer: part, name: "part", access: "read" }, { output: 0, name: "y" }, dims);
    const partial = `${first.decls}
${WG_HELPERS}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) t: u32) {
  var acc = 0.0;
  for (var i = wid.x * ${ROW_WG}u + t; i < dims.n; i += dims.stride) {
    let v = x[i];
    acc += v * v;
  }
  let r = wgSum(t, acc);
  if (t == 0u) { part[wid.x] = r; }
}`;
    const total = `${second.decls}
${WG_HELPERS}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) t: u32) {
  var acc = 0.0;
  for (var i = t; i < dims.groups; i += ${ROW_WG}u) { acc += part[i]; }
  let r = wgSum(t, acc);
  if (t == 0u) { y[0] = r; }
}`;
    return [
      {
        wgsl: partial,
        workgroups: [groups, 1, 1],
        bindings: first.bindings,
        label: "sumSquares.partial",
      },
      {
        wgsl: total,
        workgroups: [1, 1, 1],
        bindings: second.bindings,
        label: "sumSquares",
      },
    ];
  },
});

// ---- ops --------------------------------------------------------------------------------------------------

/** Sum over the last axis: x [..., C] -> [...]. */
export const sum = (x: Tensor): Tensor => apply1(reduceRows, { op: "sum" }, [x]);
/** Mean over the last axis: x [..., C] -> [...]. */
export const mean = (x: Tensor): Tensor => apply1(reduceRows, { op: "mean" }, [x]);
/** Max over the last axis: x [..., C] -> [...]; its gradient goes to the first argmax of each row. */
export const max = (x: Tensor): Tensor => apply1(reduceRows, { op: "max" }, [x]);
/** Sum of squares of every element: x (any shape) -> [] (for gradient-norm clipping; not differentiable). */
export const sumSquares = (x: Tensor): Tensor => apply1(sumSquaresKernel, {}, [x]);
