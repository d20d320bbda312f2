/** Selection ops: `where` (NaN-safe masking: select, never multiply), tie-splitting max/min, closed-interval clamp. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { addc, mul, neg, scale } from "./elementwise.ts";
import { binary, maximum, minimum } from "./elementwise.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import { custom } from "../engine/tape.ts";
import { type Tensor, tensor } from "../engine/tensor.ts";
import { bind, flatPass } from "../engine/wgsl.ts";

const WG = 256;

export interface SelectParams {
  /** Pick `a` where cond == 0 instead of where cond != 0. */
  readonly invert: boolean;
}

/**
 * out_i = (cond_i != 0) XOR invert ? a_i : b_i, with b = 0 when only [cond, a] are given. Inputs f32, same shape.
 * Unlike `mul(a, mask)`, a NaN or inf in the unselected operand never reaches the output (0 * NaN is NaN).
 * Gradient: da = select(cond, g, 0), db = select(cond, 0, g) (cond gets none).
 */
export const selectKernel: Kernel<SelectParams> = defineKernel<SelectParams>({
  name: "select",
  infer: (_p, ins) => {
    if (ins.length < 2 || ins.length > 3) {
      throw new ShapeError({
        op: "select",
        message: `select: expected [cond, a] or [cond, a, b], got ${ins.length} inputs`,
      });
    }
    const [c] = ins;
    ins.forEach((t, i) => {
      if (t.dtype !== "f32") {
        throw new ShapeError({
          op: "select",
          message: `select: input ${i} has dtype ${t.dtype}, expected f32`,
        });
      }
      if (!sameShape(t.shape, c.shape)) {
        throw new ShapeError({
          op: "select",
          message: `select: ${["cond", "a", "b"][i]} has shape ${showShape(t.shape)}, cond has ${
            showShape(c.shape)
          }`,
        });
      }
    });
    return [{ shape: c.shape, dtype: "f32" }];
  },
  cpu: ({ invert }, [c, a, b], [y]) => {
    for (let i = 0; i < y.data.length; i++) {
      y.data[i] = (c.data[i] !== 0) !== invert ? a.data[i] : b ? b.data[i] : 0;
    }
  },
  gpu: ({ invert }, ins, target) => {
    const three = ins.length === 3;
    const b = bind(
      ...["c", "a", ...(three ? ["b"] : [])].map((name, input) => ({ input, name })),
      { output: 0, name: "y" },
    );
    const body = `  let keep = (c[i] != 0.0) != ${invert};
  y[i] = select(${three ? "b[i]" : "0.0"}, a[i], keep);`;
    return [flatPass(b, size(ins[0].shape), WG, target, body, "select")];
  },
  vjp: ({ params: { invert }, inputs }, [dy]) => [
    null,
    apply1(selectKernel, { invert }, [inputs[0], dy!]),
    inputs.length === 3 ? apply1(selectKernel, { invert: !invert }, [inputs[0], dy!]) : null,
  ],
});

/** `cond != 0 ? a : b` elementwise (same shapes); NaN-safe in the branch not taken. */
export const where = (cond: Tensor, a: Tensor, b: Tensor): Tensor =>
  apply1(selectKernel, { invert: false }, [cond, a, b]);
/** `cond != 0 ? a : 0` elementwise: masking that drops NaN/inf at masked positions. */
export const keepWhere = (cond: Tensor, a: Tensor): Tensor =>
  apply1(selectKernel, { invert: false }, [cond, a]);

const ge = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "ge" }, [a, b]);

const requireSame = (op: string, a: Tensor, b: Tensor) => {
  if (!sameShape(a.shape, b.shape)) {
    throw new ShapeError({
      op,
      message: `${op}: a has shape ${showShape(a.shape)}, b has ${showShape(b.shape)}`,
    });
  }
};

/**
 * max(a, b) elementwise (same shapes) with PyTorch's subgradient: at a tie the gradient is split evenly.
 * w = [a > b] + 0.5 [a = b] = (ge(a, b) + 1 - ge(b, a)) / 2;  da = g w, db = g (1 - w).
 */
export const maxSplit = (a: Tensor, b: Tensor): Tensor => {
  requireSame("maxSplit", a, b);
  return custom("maxSplit", {}, [a, b], () => [maximum(a, b)], ({ inputs: [x, y] }, [dy]) => {
    const wx = scale(addc(sub2(ge(x, y), ge(y, x)), 1), 0.5); // (ge(x,y) - ge(y,x) + 1) / 2
    return [mul(dy!, wx), mul(dy!, addc(neg(wx), 1))];
  })[0];
};

const sub2 = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "sub" }, [a, b]);

/** min(a, b) elementwise (same shapes), ties split evenly: w = [a < b] + 0.5 [a = b]; da = g w, db = g (1 - w). */
export const minSplit = (a: Tensor, b: Tensor): Tensor => {
  requireSame("minSplit", a, b);
  return custom("minSplit", {}, [a, b], () => [minimum(a, b)], ({ inputs: [x, y] }, [dy]) => {
    const wx = scale(addc(sub2(ge(y, x), ge(x, y)), 1), 0.5);
    return [mul(dy!, wx), mul(dy!, addc(neg(wx), 1))];
  })[0];
};

/**
 * clamp(x, lo, hi) = min(max(x, lo), hi), with derivative 1 on the closed interval [lo, hi] (boundaries
 * included, as torch.clamp) and 0 outside: dx = g [x >= lo] [x <= hi].
 */
export const clampClosed = (x: Tensor, lo: number, hi: number): Tensor => {
  const bounds = (b: Tensor) => [tensor(b.backend, [lo], []), tensor(b.backend, [hi], [])];
  return custom("clampClosed", { lo, hi }, [x], () => {
    const [L, H] = bounds(x);
    const y = minimum(maximum(x, L), H);
    L.dispose();
    H.dispose();
    return [y];
  }, ({ inputs: [v] }, [dy]) => {
    const [L, H] = bounds(v); // fresh constants: the forward's may be gone by the time backward runs
    return [mul(dy!, mul(ge(v, L), ge(H, v)))];
  })[0];
};
