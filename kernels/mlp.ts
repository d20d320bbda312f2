/** The SwiGLU gate of a Llama MLP, silu(gate) * up, as one fused kernel with a fused two-output backward. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { defineKernel } from "../engine/kernel.ts";
import type { GpuPass, GpuTarget, Kernel, TensorSpec } from "../engine/kernel.ts";
import { apply, apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, flatPass } from "../engine/wgsl.ts";

const WG = 256;

const checkSame = (op: string, names: readonly string[], inputs: readonly TensorSpec[]): void => {
  const first = inputs[0];
  inputs.forEach((t, i) => {
    if (t.dtype !== "f32") {
      throw new ShapeError({ op, message: `${op}: ${names[i]} has dtype ${t.dtype}, expected f32` });
    }
    if (!sameShape(t.shape, first.shape)) {
      throw new ShapeError({
        op,
        message: `${op}: ${names[0]} has shape ${showShape(first.shape)}, ${names[i]} has shape ${
          showShape(t.shape)
        }; they must be equal`,
      });
    }
  });
};

/** One elementwise pass over `n` elements: `inputs` read arrays in0.., `outputs` written arrays out0... */
const mapPass = (
  n: number,
  inputs: number,
  outputs: number,
  body: string,
  target: GpuTarget,
  label: string,
): GpuPass => {
  const b = bind(
    ...Array.from({ length: inputs }, (_, input) => ({ input, name: `in${input}` })),
    ...Array.from({ length: outputs }, (_, output) => ({ output, name: `out${output}` })),
  );
  return flatPass(b, n, WG, target, body, label);
};

const sigmoidRef = (x: number) => 1 / (1 + Math.exp(-x));

/** y = silu(gate) * up = gate sigmoid(gate) up, elementwise over equal shapes. */
export const swigluKernel: Kernel<Record<never, never>> = defineKernel<Record<never, never>>({
  name: "swiglu",
  infer: (_p, inputs) => {
    checkSame("swiglu", ["gate", "up"], inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }];
  },
  cpu: (_p, [g, u], [y]) => {
    for (let i = 0; i < y.data.length; i++) y.data[i] = g.data[i] * sigmoidRef(g.data[i]) * u.data[i];
  },
  gpu: (_p, [g], target) => [
    mapPass(
      size(g.shape),
      2,
      1,
      "  let g = in0[i];\n  out0[i] = g / (1.0 + exp(-g)) * in1[i];",
      target,
      "swiglu",
    ),
  ],
  vjp: ({ inputs: [gate, up] }, [dy]) => apply(swigluBwdKernel, {}, [gate, up, dy!]),
  saveOutputs: false,
});

/**
 * The gradient of swiglu in one pass: inputs (gate, up, dy), outputs (dgate, dup). With s = sigmoid(gate):
 *   d silu(g)/dg = s + g s (1 - s) = s (1 + g (1 - s)),
 *   dgate = dy * up * s (1 + gate (1 - s)),   dup = dy * silu(gate) = dy * gate * s.
 */
export const swigluBwdKernel: Kernel<Record<never, never>> = defineKernel<Record<never, never>>({
  name: "swigluBwd",
  infer: (_p, inputs) => {
    checkSame("swigluBwd", ["gate", "up", "dy"], inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }, { shape: inputs[0].shape, dtype: "f32" }];
  },
  cpu: (_p, [g, u, dy], [dg, du]) => {
    for (let i = 0; i < g.data.length; i++) {
      const x = g.data[i], s = sigmoidRef(x);
      dg.data[i] = dy.data[i] * u.data[i] * s * (1 + x * (1 - s));
      du.data[i] = dy.data[i] * x * s;
    }
  },
  gpu: (_p, [g], target) => [
    mapPass(
      size(g.shape),
      3,
      2,
      `  let g = in0[i];
  let s = 1.0 / (1.0 + exp(-g));
  let dy = in2[i];
  out0[i] = dy * in1[i] * s * (1.0 + g * (1.0 - s));
  out1[i] = dy * g * s;`,
      target,
      "swigluBwd",
    ),
  ],
});

/** silu(gate) * up elementwise (gate and up of equal shape, f32): the gated unit of a Llama MLP. */
export const swiglu = (gate: Tensor, up: Tensor): Tensor => apply1(swigluKernel, {}, [gate, up]);
