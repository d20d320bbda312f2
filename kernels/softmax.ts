/** Softmax and log-softmax over the last axis, and fused cross-entropy / log-probability of target ids. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape } from "../core/shape.ts";
import { defineKernel, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { requireRows, type RowPlan, rowPlan, rowsCols } from "./reduce.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind } from "../engine/wgsl.ts";

export interface SoftmaxParams {
  /** True for log-softmax. */
  readonly log: boolean;
}

const opName = (log: boolean) => (log ? "logSoftmax" : "softmax");

/** Throw unless `t` is f32 with exactly `shape`. */
const requireLike = (op: string, what: string, t: TensorSpec, shape: readonly number[], dtype = "f32") => {
  if (t.dtype !== dtype || !sameShape(t.shape, shape)) {
    throw new ShapeError({
      op,
      message: `${op}: ${what} has shape ${showShape(t.shape)} (${t.dtype}), expected ${
        showShape(shape)
      } (${dtype})`,
    });
  }
};

/**
 * WGSL body fragment (after `RowPlan.main`) that leaves `base`, the row max `mx` and `tot` = sum_j exp(x_j - mx)
 * for the row of `x`.
 */
const rowStats = (x: string, p: RowPlan): string =>
  `  let base = row * C;
  var m = ${x}[base + min(t, C - 1u)];
  for (var j = t; j < C; j += ${p.stride}u) { m = max(m, ${x}[base + j]); }
  let mx = wgMax(t, m);
  var s = 0.0;
  for (var j = t; j < C; j += ${p.stride}u) { s += exp(${x}[base + j] - mx); }
  let tot = wgSum(t, s);`;

/** Reference row statistics in f64: the max and sum_j exp(x_j - max). */
const refStats = (x: ArrayLike<number>, o: number, cols: number): { mx: number; tot: number } => {
  let mx = x[o];
  for (let j = 1; j < cols; j++) mx = Math.max(mx, x[o + j]);
  let tot = 0;
  for (let j = 0; j < cols; j++) tot += Math.exp(x[o + j] - mx);
  return { mx, tot };
};

// ---- softmax / log-softmax ---------------------------------------------------------------------------------

/** y = softmax(x) or log_softmax(x) along the last axis; stable (the row max is subtracted first). */
export const softmaxKernel: Kernel<SoftmaxParams> = defineKernel<SoftmaxParams>({
  name: "softmax",
  infer: ({ log }, [x]) => {
    requireRows(opName(log), "x", x);
    return [{ shape: x.shape, dtype: "f32" }];
  },
  cpu: ({ log }, [x], [y]) => {
    const { rows, cols } = rowsCols(x.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      const { mx, tot } = refStats(x.data, o, cols);
      const lse = Math.log(tot);
      for (let j = 0; j < cols; j++) {
        y.data[o + j] = log ? x.data[o + j] - mx - lse : Math.exp(x.data[o + j] - mx) / tot;
      }
    }
  },
  gpu: ({ log }, [x], target) => {
    const { rows, cols } = rowsCols(x.shape);
    const p = rowPlan(rows, cols, target, 3);
    const write = log ? "x[base + j] - mx - lse" : "exp(x[base + j] - mx) / tot";
    const b = bind({ input: 0, name: "x" }, { output: 0, name: "y" }, p.dims);
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
${rowStats("x", p)}
  let lse = log(tot);
  for (var j = t; j < C; j += ${p.stride}u) { y[base + j] = ${write}; }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
      label: opName(log),
    }];
  },
  // softmax: dx = y * (dy - sum_j dy_j y_j); log-softmax: dx = dy - exp(y) * sum_j dy_j. One fused kernel.
  vjp: ({ params, outputs: [y] }, [dy]) => [apply1(softmaxGrad, params, [y, dy!])],
});

/** dx from the forward output y and dy (both [..., C]); see the rule beside `softmaxKernel.vjp`. */
export const softmaxGrad: Kernel<SoftmaxParams> = defineKernel<SoftmaxParams>({
  name: "softmaxGrad",
  infer: ({ log }, [y, dy]) => {
    const op = `${opName(log)}Grad`;
    requireRows(op, "y", y);
    requireLike(op, "dy", dy, y.shape);
    return [{ shape: y.shape, dtype: "f32" }];
  },
  cpu: ({ log }, [y, dy], [dx]) => {
    const { rows, cols } = rowsCols(y.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let s = 0;
      for (let j = 0; j < cols; j++) s += log ? dy.data[o + j] : dy.data[o + j] * y.data[o + j];
      for (let j = 0; j < cols; j++) {
        const k = o + j;
        dx.data[k] = log ? dy.data[k] - Math.exp(y.data[k]) * s : y.data[k] * (dy.data[k] - s);
      }
    }
  },
  gpu: ({ log }, [y], target) => {
    const { rows, cols } = rowsCols(y.shape);
    const p = rowPlan(rows, cols, target, 2);
    const term = log ? "dy[base + j]" : "dy[base + j] * y[base + j]";
    const write = log ? "dy[k] - exp(y[k]) * sg" : "y[k] * (dy[k] - sg)";
    const b = bind({ input: 0, name: "y" }, { input: 1, name: "dy" }, { output: 0, name: "dx" }, p.dims);
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
  let base = row * C;
  var s = 0.0;
  for (var j = t; j < C; j += ${p.stride}u) { s += ${term}; }
  let sg = wgSum(t, s);
  for (var j = t; j < C; j += ${p.stride}u) {
    let k = base + j;
    dx[k] = ${write};
  }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
      label: `${opName(log)}Grad`,
    }];
  },
});

// ---- cross-entropy / log-probability of targets -------------------------------------------------------------

export interface CrossEntropyParams {
  /** False: loss = logsumexp(row) - row[target]; true: its negation, log p(target) (`logProbOf`). */
  readonly negate: boolean;
}

const ceName = (negate: boolean) => (negate ? "logProbOf" : "crossEntropy");

/** Validate logits [..., V] f32 and targets [...] i32; returns the row shape. */
const ceInfer = (op: string, logits: TensorSpec, targets: TensorSpec): readonly number[] => {
  requireRows(op, "logits", logits);
  const lead = logits.shape.slice(0, -1);
  if (targets.dtype !== "i32") {
    throw new ShapeError({ op, message: `${op}: targets have dtype ${targets.dtype}, expected i32` });
  }
  if (!sameShape(targets.shape, lead)) {
    throw new ShapeError({
      op,
      message: `${op}: logits have shape ${showShape(logits.shape)}, so targets need shape ${
        showShape(lead)
      }; got ${showShape(targets.shape)}`,
    });
  }
  return lead;
};

/** A NaN the WGSL front end cannot fold into a (forbidden) non-finite constant: it depends on a loaded value. */
const nanOf = (runtimeU32: string) => `bitcast<f32>(0x7fc00000u | (${runtimeU32} & 0u))`;

/**
 * loss[r] = logsumexp_j x[r, j] - x[r, target[r]] (or its negation) for logits x [..., V], targets i32 [...].
 * A target outside [0, V) gives NaN on every backend (GPU data cannot be checked on the host).
 */
export const crossEntropyKernel: Kernel<CrossEntropyParams> = defineKernel<CrossEntropyParams>({
  name: "crossEntropy",
  infer: (
    { negate },
    [logits, targets],
  ) => [{ shape: ceInfer(ceName(negate), logits, targets), dtype: "f32" }],
  cpu: ({ negate }, [x, tg], [y]) => {
    const { rows, cols } = rowsCols(x.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols, k = tg.data[r];
      if (!(k >= 0 && k < cols)) {
        y.data[r] = NaN;
        continue;
      }
      const { mx, tot } = refStats(x.data, o, cols);
      const loss = mx + Math.log(tot) - x.data[o + k];
      y.data[r] = negate ? -loss : loss;
    }
  },
  gpu: ({ negate }, [x], target) => {
    const { rows, cols } = rowsCols(x.shape);
    const p = rowPlan(rows, cols, target, 2);
    const b = bind(
      { input: 0, name: "x" },
      { input: 1, name: "tg", type: "i32" },
      { output: 0, name: "y" },
      p.dims,
    );
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
${rowStats("x", p)}
  if (t == 0u) {
    let k = tg[row];
    if (k < 0 || k >= i32(C)) {
      y[row] = ${nanOf("u32(k)")};
    } else {
      let loss = mx + log(tot) - x[base + u32(k)];
      y[row] = ${negate ? "-loss" : "loss"};
    }
  }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
      label: ceName(negate),
    }];
  },
  // d loss / d x[r, j] = softmax(x[r])_j - [j == target[r]]; times dy[r] (negated for logProbOf). Targets get
  // no gradient. Fused kernel that recomputes the row statistics.
  vjp: ({ params, inputs: [x, tg] }, [dy]) => [apply1(crossEntropyGrad, params, [x, tg, dy!]), null],
  saveOutputs: false,
});

/** d logits [..., V] from logits, targets and dy [...]; rows with an out-of-range target are all NaN. */
export const crossEntropyGrad: Kernel<CrossEntropyParams> = defineKernel<CrossEntropyParams>({
  name: "crossEntropyGrad",
  infer: ({ negate }, [logits, targets, dy]) => {
    const op = `${ceName(negate)}Grad`;
    const lead = ceInfer(op, logits, targets);
    requireLike(op, "dy", dy, lead);
    return [{ shape: logits.shape, dtype: "f32" }];
  },
  cpu: ({ negate }, [x, tg, dy], [dx]) => {
    const { rows, cols } = rowsCols(x.shape);
    for (let r = 0; r < rows; r++) {
      const o = r * cols, k = tg.data[r];
      const ok = k >= 0 && k < cols;
      const { mx, tot } = refStats(x.data, o, cols);
      const g = negate ? -dy.data[r] : dy.data[r];
      for (let j = 0; j < cols; j++) {
        dx.data[o + j] = ok ? (Math.exp(x.data[o + j] - mx) / tot - (j === k ? 1 : 0)) * g : NaN;
      }
    }
  },
  gpu: ({ negate }, [x], target) => {
    const { rows, cols } = rowsCols(x.shape);
    const p = rowPlan(rows, cols, target, 3);
    const b = bind(
      { input: 0, name: "x" },
      { input: 1, name: "tg", type: "i32" },
      { input: 2, name: "dy" },
      { output: 0, name: "dx" },
      p.dims,
    );
    const wgsl = `${b.decls}
${p.helpers}
${p.main}
${rowStats("x", p)}
  let k = tg[row];
  let ok = k >= 0 && k < i32(C);
  let g = ${negate ? "-dy[row]" : "dy[row]"};
  let nan = ${nanOf("u32(k)")};
  for (var j = t; j < C; j += ${p.stride}u) {
    let q = exp(x[base + j] - mx) / tot - select(0.0, 1.0, i32(j) == k);
    dx[base + j] = select(nan, q * g, ok);
  }
}`;
    return [{
      wgsl,
      workgroups: p.workgroups,
      bindings: b.bindings,
      label: `${ceName(negate)}Grad`,
    }];
  },
});

// ---- ops --------------------------------------------------------------------------------------------------

/** Softmax over the last axis: x [..., C] -> [..., C]; rows sum to 1. */
export const softmax = (x: Tensor): Tensor => apply1(softmaxKernel, { log: false }, [x]);
/** Log-softmax over the last axis: x [..., C] -> [..., C]. */
export const logSoftmax = (x: Tensor): Tensor => apply1(softmaxKernel, { log: true }, [x]);
/**
 * Per-row cross-entropy: logits [..., V], targets i32 [...] -> [...], loss = logsumexp(row) - row[target].
 * Differentiable in the logits. A target outside [0, V) gives NaN (loss and gradient row) on every backend.
 */
export const crossEntropy = (logits: Tensor, targets: Tensor): Tensor =>
  apply1(crossEntropyKernel, { negate: false }, [logits, targets]);
/** log p(id) under softmax(logits) per row: logits [..., V], ids i32 [...] -> [...]; = -crossEntropy. */
export const logProbOf = (logits: Tensor, ids: Tensor): Tensor =>
  apply1(crossEntropyKernel, { negate: true }, [logits, ids]);
