/** Elementwise kernels: unary maps, binary ops with NumPy broadcasting, and `sumTo` (the un-broadcast). */
import { ShapeError } from "../core/errors.ts";
import { broadcastShapes, broadcastStrides, type Shape, showShape, size, strides } from "../core/shape.ts";
import { defineKernel, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, type Bound, f32Lit, flatPass, LOOP_SAFE } from "../engine/wgsl.ts";

const WG = 256;
/** sumTo reductions up to this length run one invocation per output; longer ones take two levels. */
const SUMTO_DIRECT = 4096;
/** Smallest chunk of the first level of a two-level sumTo. */
const SUMTO_CHUNK = 1024;

const requireF32 = (op: string, inputs: readonly TensorSpec[]) => {
  inputs.forEach((t, i) => {
    if (t.dtype !== "f32") {
      throw new ShapeError({ op, message: `${op}: input ${i} has dtype ${t.dtype}, expected f32` });
    }
  });
};

// ---- unary ------------------------------------------------------------------------------------------------

/** Unary maps. `scale`, `addc`, `powc` and `clampmin` take the constant `c`. */
export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "square"
  | "abs"
  | "recip"
  | "relu"
  | "sigmoid"
  | "silu"
  | "tanh"
  | "scale"
  | "addc"
  | "powc"
  | "step";

/** The parameters of the unary kernel. */
export interface UnaryParams {
  /** The map applied to every element. */
  readonly op: UnaryOp;
  /** The constant of `scale`, `addc`, `powc` (default 0). */
  readonly c?: number;
}

/** Reference semantics of each unary op, in f64. */
const unaryRef = (op: UnaryOp, c: number): (x: number) => number => {
  switch (op) {
    case "neg":
      return (x) => -x;
    case "exp":
      return Math.exp;
    case "log":
      return Math.log;
    case "sqrt":
      return Math.sqrt;
    case "rsqrt":
      return (x) => 1 / Math.sqrt(x);
    case "square":
      return (x) => x * x;
    case "abs":
      return Math.abs;
    case "recip":
      return (x) => 1 / x;
    case "relu":
      return (x) => (x > 0 ? x : 0);
    case "sigmoid":
      return (x) => 1 / (1 + Math.exp(-x));
    case "silu":
      return (x) => x / (1 + Math.exp(-x));
    case "tanh":
      return Math.tanh;
    case "scale":
      return (x) => x * c;
    case "addc":
      return (x) => x + c;
    case "powc":
      return (x) => Math.pow(x, c);
    case "step":
      return (x) => (x > 0 ? 1 : 0);
    default:
      return op satisfies never;
  }
};

/** WGSL expression of each unary op applied to `x`. */
const unaryWgsl = (op: UnaryOp, c: number): string => {
  switch (op) {
    case "neg":
      return "-x";
    case "exp":
      return "exp(x)";
    case "log":
      return "log(x)";
    case "sqrt":
      return "sqrt(x)";
    case "rsqrt":
      return "inverseSqrt(x)";
    case "square":
      return "x * x";
    case "abs":
      return "abs(x)";
    case "recip":
      return "1.0 / x";
    case "relu":
      return "max(x, 0.0)";
    case "sigmoid":
      return "1.0 / (1.0 + exp(-x))";
    case "silu":
      return "x / (1.0 + exp(-x))";
    case "tanh":
      return "tanh(clamp(x, -15.0, 15.0))";
    case "scale":
      return `x * ${f32Lit(c)}`;
    case "addc":
      return `x + ${f32Lit(c)}`;
    case "powc":
      return `pow(x, ${f32Lit(c)})`;
    case "step":
      return "select(0.0, 1.0, x > 0.0)";
    default:
      return op satisfies never;
  }
};

/** Bindings of a one-input elementwise pass: input 0 as `in0`, output 0 as `out`. */
const unaryBindings = (): Bound => bind({ input: 0, name: "in0" }, { output: 0, name: "out" });

/** y = f(x) elementwise. */
export const unary: Kernel<UnaryParams> = defineKernel<UnaryParams>({
  name: "unary",
  infer: (_p, [x]) => {
    requireF32("unary", [x]);
    return [{ shape: x.shape, dtype: "f32" }];
  },
  cpu: ({ op, c = 0 }, [{ data: x }], [{ data: y }]) => {
    const f = unaryRef(op, c);
    for (let i = 0; i < x.length; i++) y[i] = f(x[i]);
  },
  gpu: ({ op, c = 0 }, [x], target) => {
    const body = `  let x = in0[i];\n  out[i] = ${unaryWgsl(op, c)};`;
    return [flatPass(unaryBindings(), size(x.shape), WG, target, body, `unary.${op}`)];
  },
  vjp: ({ params: { op, c = 0 }, inputs: [x], outputs: [y] }, [dy]) => {
    const g = dy!;
    switch (op) {
      case "neg":
        return [neg(g)];
      case "exp":
        return [mul(g, y)];
      case "log":
        return [div(g, x)];
      case "sqrt":
        return [div(scale(g, 0.5), y)];
      case "rsqrt": // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
        return [mul(g, scale(mul(y, mul(y, y)), -0.5))];
      case "square":
        return [mul(g, scale(x, 2))];
      case "abs":
        return [mul(g, sub(map(x, "step"), map(neg(x), "step")))];
      case "recip":
        return [neg(mul(g, mul(y, y)))];
      case "relu":
        return [mul(g, map(x, "step"))];
      case "sigmoid": // y (1 - y)
        return [mul(g, mul(y, addc(neg(y), 1)))];
      case "silu": { // s + x s (1 - s), s = sigmoid(x)
        const s = map(x, "sigmoid");
        return [mul(g, add(s, mul(mul(x, s), addc(neg(s), 1))))];
      }
      case "tanh":
        return [mul(g, addc(neg(mul(y, y)), 1))];
      case "scale":
        return [scale(g, c)];
      case "addc":
        return [g];
      case "powc":
        return [mul(g, scale(map(x, "powc", c - 1), c))];
      case "step":
        return [null];
      default:
        return op satisfies never;
    }
  },
});

// ---- binary with broadcasting -----------------------------------------------------------------------------

/** Binary ops, elementwise after broadcasting; `ge` gives 1 where a >= b, else 0. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "ge";

/** The parameters of the binary kernel. */
export interface BinaryParams {
  /** The op. */
  readonly op: BinaryOp;
}

const binaryRef = (op: BinaryOp): (a: number, b: number) => number => {
  switch (op) {
    case "add":
      return (a, b) => a + b;
    case "sub":
      return (a, b) => a - b;
    case "mul":
      return (a, b) => a * b;
    case "div":
      return (a, b) => a / b;
    case "max":
      return Math.max;
    case "min":
      return Math.min;
    case "ge":
      return (a, b) => (a >= b ? 1 : 0);
    default:
      return op satisfies never;
  }
};

const binaryWgsl = (op: BinaryOp): string => {
  switch (op) {
    case "add":
      return "a + b";
    case "sub":
      return "a - b";
    case "mul":
      return "a * b";
    case "div":
      return "a / b";
    case "max":
      return "max(a, b)";
    case "min":
      return "min(a, b)";
    case "ge":
      return "select(0.0, 1.0, a >= b)";
    default:
      return op satisfies never;
  }
};

/** WGSL that maps flat output index `i` to the flat index of a broadcast operand. */
const broadcastIndex = (name: string, from: Shape, to: Shape): string => {
  if (size(from) === size(to)) return `let ${name} = i;`;
  if (size(from) === 1) return `let ${name} = 0u;`;
  const bs = broadcastStrides(from, to);
  const os = strides(to);
  const terms = to.map((d, k) => (bs[k] === 0 || d === 1 ? "" : `((i / ${os[k]}u) % ${d}u) * ${bs[k]}u`))
    .filter((
      x,
    ) => x);
  return `let ${name} = ${terms.length ? terms.join(" + ") : "0u"};`;
};

/** Reference helper: for each flat index of `to`, the flat index into `from` broadcast to it. */
const broadcastMap = (from: Shape, to: Shape): (i: number) => number => {
  const bs = broadcastStrides(from, to);
  const os = strides(to);
  return (i) => {
    let j = 0;
    for (let k = 0; k < to.length; k++) j += Math.floor(i / os[k]) % to[k] * bs[k];
    return j;
  };
};

/** c = a (op) b with NumPy broadcasting. */
export const binary: Kernel<BinaryParams> = defineKernel<BinaryParams>({
  name: "binary",
  infer: ({ op }, [a, b]) => {
    requireF32(op, [a, b]);
    return [{ shape: broadcastShapes(op, a.shape, b.shape), dtype: "f32" }];
  },
  cpu: ({ op }, [a, b], [c]) => {
    const f = binaryRef(op);
    const ia = broadcastMap(a.shape, c.shape), ib = broadcastMap(b.shape, c.shape);
    for (let i = 0; i < c.data.length; i++) c.data[i] = f(a.data[ia(i)], b.data[ib(i)]);
  },
  gpu: ({ op }, [a, b], target) => {
    const shape = broadcastShapes(op, a.shape, b.shape);
    const body = `  ${broadcastIndex("ia", a.shape, shape)}
  ${broadcastIndex("ib", b.shape, shape)}
  let a = in0[ia];
  let b = in1[ib];
  out[i] = ${binaryWgsl(op)};`;
    return [
      flatPass(
        bind({ input: 0, name: "in0" }, { input: 1, name: "in1" }, { output: 0, name: "out" }),
        size(shape),
        WG,
        target,
        body,
        `binary.${op}`,
      ),
    ];
  },
  vjp: ({ params: { op }, inputs: [a, b], outputs: [c] }, [dy]) => {
    const g = dy!;
    const to = (t: Tensor | null, like: Tensor) => (t ? sumTo(t, like.shape) : null);
    switch (op) {
      case "add":
        return [to(g, a), to(g, b)];
      case "sub":
        return [to(g, a), to(neg(g), b)];
      case "mul":
        return [to(mul(g, b), a), to(mul(g, a), b)];
      case "div": // d/da = 1/b, d/db = -a/b^2 = -c/b
        return [to(div(g, b), a), to(neg(div(mul(g, c), b)), b)];
      case "max": { // ties send the gradient to a
        const m = apply1(binary, { op: "ge" }, [a, b]);
        return [to(mul(g, m), a), to(mul(g, addc(neg(m), 1)), b)];
      }
      case "min": {
        const m = apply1(binary, { op: "ge" }, [b, a]);
        return [to(mul(g, m), a), to(mul(g, addc(neg(m), 1)), b)];
      }
      case "ge":
        return [null, null];
      default:
        return op satisfies never;
    }
  },
});

/** Throws a ShapeError for `op` unless `from` broadcasts to exactly `to`. */
const requireBroadcast = (op: string, from: Shape, to: Shape): void => {
  const b = broadcastShapes(op, from, to);
  if (b.length !== to.length || b.some((d, i) => d !== to[i])) {
    throw new ShapeError({ op, message: `${op}: ${showShape(from)} does not broadcast to ${showShape(to)}` });
  }
};

// ---- sumTo: the un-broadcast --------------------------------------------------------------------------------

/** The parameters of the sumTo kernel. */
export interface SumToParams {
  /** The target shape (it must broadcast to the input's). */
  readonly shape: Shape;
}

/** Sum `x` down to `shape`, which must broadcast to x's shape (the adjoint of broadcasting). */
export const sumToKernel: Kernel<SumToParams> = defineKernel<SumToParams>({
  name: "sumTo",
  infer: ({ shape }, [x]) => {
    requireF32("sumTo", [x]);
    requireBroadcast("sumTo", shape, x.shape);
    return [{ shape, dtype: "f32" }];
  },
  cpu: ({ shape }, [x], [y]) => {
    const m = broadcastMap(shape, x.shape);
    y.data.fill(0);
    const acc = new Float64Array(y.data.length);
    for (let i = 0; i < x.data.length; i++) acc[m(i)] += x.data[i];
    y.data.set(acc);
  },
  gpu: ({ shape }, [x], target) => {
    const n = size(shape);
    // Output coordinate -> base offset in x; reduced axes walked by a flat counter r.
    const xs = strides(x.shape);
    const pad = x.shape.length - shape.length;
    const full = x.shape.map((_d, k) => (k < pad ? 1 : shape[k - pad]));
    const os = strides(full);
    const kept = x.shape.map((_, k) => k).filter((k) => full[k] !== 1 || x.shape[k] === 1);
    const red = x.shape.map((_, k) => k).filter((k) => full[k] === 1 && x.shape[k] !== 1);
    const rsize = red.reduce((a, k) => a * x.shape[k], 1);
    const base = kept.filter((k) => full[k] !== 1).map((k) => `((i / ${os[k]}u) % ${full[k]}u) * ${xs[k]}u`);
    let rstride = 1;
    const rterms: string[] = [];
    for (let j = red.length - 1; j >= 0; j--) {
      const k = red[j];
      rterms.push(`((r / ${rstride}u) % ${x.shape[k]}u) * ${xs[k]}u`);
      rstride *= x.shape[k];
    }
    const load = `acc += in0[base + ${rterms.length ? rterms.join(" + ") : "0u"}];`;
    const baseLine = `let base = ${base.length ? base.join(" + ") : "0u"};`;
    if (rsize <= SUMTO_DIRECT) {
      // One invocation per output element loops over its rsize inputs.
      const body = `  ${baseLine}
  var acc = 0.0;
  for (var r = 0u; r < ${rsize}u; r++) { ${load} }
  out[i] = acc;`;
      return [flatPass(unaryBindings(), n, WG, target, body)];
    }
    // Two levels (long reductions, e.g. a bias gradient over B*T rows): invocation (c, i) sums chunk c of
    // output i's inputs into part[c n + i], then one invocation per output sums its chunks in order. Chunks of
    // at least SUMTO_CHUNK, and at most LOOP_SAFE of them, so both loops stay in the loop budget (llvmpipe cuts
    // a longer loop short, silently) up to rsize = LOOP_SAFE^2.
    const chunk = Math.max(SUMTO_CHUNK, Math.ceil(rsize / LOOP_SAFE));
    const chunks = Math.ceil(rsize / chunk);
    const partial = `  let c = i / ${n}u;
  let o = i % ${n}u;
  {
    let i = o;
    ${baseLine}
    var acc = 0.0;
    for (var r = c * ${chunk}u; r < min((c + 1u) * ${chunk}u, ${rsize}u); r++) { ${load} }
    out[c * ${n}u + o] = acc;
  }`;
    const total = `  var acc = 0.0;
  for (var c = 0u; c < ${chunks}u; c++) { acc += in0[c * ${n}u + i]; }
  out[i] = acc;`;
    const part = { kind: "scratch", id: "part", bytes: n * chunks * 4 } as const;
    return [
      flatPass(
        bind({ input: 0, name: "in0" }, { buffer: part, name: "out" }),
        n * chunks,
        WG,
        target,
        partial,
        "sumTo.partial",
      ),
      flatPass(
        bind({ buffer: part, name: "in0", access: "read" }, { output: 0, name: "out" }),
        n,
        WG,
        target,
        total,
        "sumTo",
      ),
    ];
  },
  vjp: ({ inputs: [x] }, [dy]) => [broadcastTo(dy!, x.shape)],
});

/** The parameters of the expand kernel. */
export interface ExpandParams {
  /** The shape to broadcast to (the input's shape must broadcast to it). */
  readonly shape: Shape;
}

/** Broadcast `x` to `shape`, materialized: a copy with NumPy broadcasting (the adjoint of sumTo). */
export const expandKernel: Kernel<ExpandParams> = defineKernel<ExpandParams>({
  name: "expand",
  infer: ({ shape }, [x]) => {
    requireF32("expand", [x]);
    requireBroadcast("expand", x.shape, shape);
    return [{ shape: [...shape], dtype: "f32" }];
  },
  cpu: ({ shape }, [x], [y]) => {
    const ix = broadcastMap(x.shape, shape);
    for (let i = 0; i < y.data.length; i++) y.data[i] = x.data[ix(i)];
  },
  gpu: ({ shape }, [x], target) => [
    flatPass(
      bind({ input: 0, name: "in0" }, { output: 0, name: "out" }),
      size(shape),
      WG,
      target,
      `  ${broadcastIndex("ix", x.shape, shape)}
  out[i] = in0[ix];`,
      "expand",
    ),
  ],
  vjp: ({ inputs: [x] }, [dy]) => [sumTo(dy!, x.shape)],
});

/** Broadcast `x` to `shape` (materialized by `expandKernel`; `x` itself when the shapes are equal). */
export const broadcastTo = (x: Tensor, shape: Shape): Tensor => {
  if (x.shape.length === shape.length && x.shape.every((d, i) => d === shape[i])) return x;
  return apply1(expandKernel, { shape }, [x]);
};

// ---- ops --------------------------------------------------------------------------------------------------

/** Apply a unary op. */
export const map = (x: Tensor, op: UnaryOp, c?: number): Tensor => apply1(unary, { op, c }, [x]);
/** -x, elementwise. */
export const neg = (x: Tensor): Tensor => map(x, "neg");
/** e^x, elementwise. */
export const exp = (x: Tensor): Tensor => map(x, "exp");
/** The natural log, elementwise (NaN below 0, -Infinity at 0). */
export const log = (x: Tensor): Tensor => map(x, "log");
/** The square root, elementwise. */
export const sqrt = (x: Tensor): Tensor => map(x, "sqrt");
/** x^2, elementwise. */
export const square = (x: Tensor): Tensor => map(x, "square");
/** SiLU: x * sigmoid(x) = x / (1 + e^-x), elementwise. */
export const silu = (x: Tensor): Tensor => map(x, "silu");
/** 1 / (1 + e^-x), elementwise. */
export const sigmoid = (x: Tensor): Tensor => map(x, "sigmoid");
/** x * c for a constant c. */
export const scale = (x: Tensor, c: number): Tensor => map(x, "scale", c);
/** x + c for a constant c. */
export const addc = (x: Tensor, c: number): Tensor => map(x, "addc", c);
/** a + b with NumPy broadcasting. */
export const add = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "add" }, [a, b]);
/** a - b with NumPy broadcasting. */
export const sub = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "sub" }, [a, b]);
/** a * b with NumPy broadcasting. */
export const mul = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "mul" }, [a, b]);
/** a / b with NumPy broadcasting. */
export const div = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "div" }, [a, b]);
/** The larger of a and b, elementwise, with NumPy broadcasting. */
export const maximum = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "max" }, [a, b]);
/** The smaller of a and b, elementwise, with NumPy broadcasting. */
export const minimum = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "min" }, [a, b]);
/** Sum `x` down to `shape` (no-op when equal). */
export const sumTo = (x: Tensor, shape: Shape): Tensor =>
  x.shape.length === shape.length && x.shape.every((d, i) => d === shape[i])
    ? x
    : apply1(sumToKernel, { shape }, [x]);
