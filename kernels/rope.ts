/** Rotary position embedding (Hugging Face rotate-half convention) as one fused kernel; its vjp is the inverse. */
import { ShapeError } from "../core/errors.ts";
import { showShape, size } from "../core/shape.ts";
import { defineKernel, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, f32Lit, flatIndex, grid1d } from "../engine/wgsl.ts";

const WG = 64;

/**
 * Llama 3 frequency scaling (Hugging Face `rope_type: "llama3"`, `_compute_llama3_parameters`): with
 * wavelen_i = 2 pi / inv_freq_i, low = originalMaxPositionEmbeddings / lowFreqFactor and
 * high = originalMaxPositionEmbeddings / highFreqFactor, a frequency is kept where wavelen < high, divided by
 * `factor` where wavelen > low, and in between blended: (1 - s) inv_freq / factor + s inv_freq with
 * s = (originalMaxPositionEmbeddings / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor).
 */
export interface RopeScaling {
  /** The rule (`rope_type` "llama3"); the only one supported. */
  readonly kind: "llama3";
  /** `factor`: low frequencies are divided by it (Llama 3.1: 8, Llama 3.2: 32). */
  readonly factor: number;
  /** `low_freq_factor` (Llama 3.x: 1). */
  readonly lowFreqFactor: number;
  /** `high_freq_factor` (Llama 3.x: 4). */
  readonly highFreqFactor: number;
  /** `original_max_position_embeddings`: the context the model was pretrained at (Llama 3: 8192). */
  readonly originalMaxPositionEmbeddings: number;
}

export interface RopeParams {
  /** Frequency base (10000 in Llama 2, 500000 in Llama 3). */
  readonly theta: number;
  /** Frequency scaling (Llama 3.1 / 3.2); absent: the plain theta^(-2i/D). */
  readonly scaling?: RopeScaling;
  /** Rotate by -angle instead of +angle (the transpose of the rotation: the gradient rule). */
  readonly inverse?: boolean;
}

/**
 * The rotary frequencies of head dimension `d`: inv_freq_i = theta^(-2i/D), i in [0, D/2), then `scaling`'s
 * rule (see RopeScaling), all in f64 (the GPU kernel rounds each to f32 once).
 */
export const ropeInvFreqs = (theta: number, d: number, scaling?: RopeScaling): number[] => {
  const base = Array.from({ length: d / 2 }, (_, i) => Math.pow(theta, -(2 * i) / d));
  if (!scaling) return base;
  const { factor, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositionEmbeddings: orig } = scaling;
  const lowWavelen = orig / lo, highWavelen = orig / hi;
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / factor;
    const s = (orig / wavelen - lo) / (hi - lo);
    return ((1 - s) * f) / factor + s * f;
  });
};

/** Why a scaling cannot be used (or undefined): every factor positive and finite, high > low, orig a positive integer. */
export const ropeScalingProblem = (s: RopeScaling): string | undefined => {
  for (const k of ["factor", "lowFreqFactor", "highFreqFactor", "originalMaxPositionEmbeddings"] as const) {
    if (!(s[k] > 0) || !Number.isFinite(s[k])) return `${k} = ${s[k]} must be a positive finite number`;
  }
  if (!Number.isInteger(s.originalMaxPositionEmbeddings)) {
    return `originalMaxPositionEmbeddings = ${s.originalMaxPositionEmbeddings} must be an integer`;
  }
  if (!(s.highFreqFactor > s.lowFreqFactor)) {
    return `highFreqFactor = ${s.highFreqFactor} must be greater than lowFreqFactor = ${s.lowFreqFactor}`;
  }
  return undefined;
};

const check = ({ theta, scaling }: RopeParams, [x, pos]: readonly TensorSpec[]): void => {
  const bad = (message: string) => new ShapeError({ op: "rope", message: `rope: ${message}` });
  if (!x || !pos) throw bad("needs x and positions");
  if (x.dtype !== "f32") throw bad(`x has dtype ${x.dtype}, expected f32`);
  if (x.shape.length !== 4) throw bad(`x has shape ${showShape(x.shape)}, expected [B, T, H, D]`);
  const [b, t, , d] = x.shape;
  if (d % 2 !== 0) throw bad(`x has shape ${showShape(x.shape)}; head dimension D = ${d} must be even`);
  if (pos.dtype !== "i32") throw bad(`positions has dtype ${pos.dtype}, expected i32`);
  const okPos = (pos.shape.length === 1 && pos.shape[0] === t) ||
    (pos.shape.length === 2 && pos.shape[0] === b && pos.shape[1] === t);
  if (!okPos) {
    throw bad(
      `positions has shape ${showShape(pos.shape)}, expected [${t}] or [${b},${t}] for x of shape ${
        showShape(x.shape)
      }`,
    );
  }
  if (!(theta > 0) || !Number.isFinite(theta)) throw bad(`theta = ${theta} must be a positive finite number`);
  if (scaling && scaling.kind !== "llama3") throw bad(`unknown rope scaling ${JSON.stringify(scaling.kind)}`);
  const problem = scaling && ropeScalingProblem(scaling);
  if (problem) throw bad(`rope scaling: ${problem}`);
};

/**
 * The rotation. Each invocation owns one pair (x_i, x_{i+D/2}) of one (b, t, h) row:
 *   out_i = x_i cos a - x_{i+D/2} sin a,  out_{i+D/2} = x_{i+D/2} cos a + x_i sin a,  a = pos * inv_freq_i.
 * The angle is formed as HF does it, f32(pos) * f32(inv_freq_i) rounded to f32; the inverse negates sin.
 * `inv_freq` is baked as f32 literals (computed in f64, rounded once: as close as f32 can hold). Before sin and
 * cos the angle is reduced modulo 2 pi with a two-constant Cody-Waite split (C1 = 6.28125 has 8 significant
 * bits, so k * C1 is exact for k < 2^15): GPU sin/cos are only accurate on [-pi, pi], and angles reach 4096.
 */
export const ropeKernel: Kernel<RopeParams> = defineKernel<RopeParams>({
  name: "rope",
  infer: (p, inputs) => {
    check(p, inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }];
  },
  cpu: ({ theta, scaling, inverse = false }, [x, pos], [y]) => {
    const [nb, nt, nh, d] = x.shape;
    const half = d / 2;
    const inv = ropeInvFreqs(theta, d, scaling);
    const sign = inverse ? -1 : 1;
    for (let b = 0; b < nb; b++) {
      for (let t = 0; t < nt; t++) {
        const p = pos.data[pos.shape.length === 2 ? b * nt + t : t];
        for (let h = 0; h < nh; h++) {
          const o = ((b * nt + t) * nh + h) * d;
          for (let i = 0; i < half; i++) {
            const a = p * inv[i]; // f64 angle: the exact definition
            const c = Math.cos(a), s = sign * Math.sin(a);
            const x1 = x.data[o + i], x2 = x.data[o + i + half];
            y.data[o + i] = x1 * c - x2 * s;
            y.data[o + i + half] = x2 * c + x1 * s;
          }
        }
      }
    }
  },
  gpu: ({ theta, scaling, inverse = false }, [x, pos], target) => {
    const [, nt, nh, d] = x.shape;
    const half = d / 2;
    const n = size(x.shape) / 2;
    const grid = grid1d(n, WG, target);
    const freqs = ropeInvFreqs(theta, d, scaling).map(f32Lit).join(", ");
    const posIndex = pos.shape.length === 2 ? "bt" : `bt % ${nt}u`;
    const b = bind({ input: 0, name: "x" }, { input: 1, name: "pos", type: "i32" }, { output: 0, name: "y" });
    const wgsl = `${b.decls}
const INV_FREQ = array<f32, ${half}>(${freqs});
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let j = ${flatIndex(WG, grid)};
  if (j >= ${n}u) { return; }
  let i = j % ${half}u;
  let row = j / ${half}u; // (b * T + t) * H + h
  let bt = row / ${nh}u;
  let a = f32(pos[${posIndex}]) * INV_FREQ[i];
  let k = round(a * 0.15915494309189535);
  let r = (a - k * 6.28125) - k * 0.0019353071795864769;
  let c = cos(r);
  let s = ${inverse ? "-" : ""}sin(r);
  let o = row * ${d}u + i;
  let x1 = x[o];
  let x2 = x[o + ${half}u];
  y[o] = x1 * c - x2 * s;
  y[o + ${half}u] = x2 * c + x1 * s;
}`;
    return [{
      wgsl,
      workgroups: grid,
      bindings: b.bindings,
      label: inverse ? "rope.inverse" : "rope",
    }];
  },
  // y = R(pos) x with R orthogonal, so dx = R^T dy = R(-pos) dy: the same kernel with sin negated.
  // Positions are integers and get no gradient.
  vjp: ({ params, inputs: [, pos] }, [dy]) => [
    apply1(ropeKernel, { ...params, inverse: !params.inverse }, [dy!, pos]),
    null,
  ],
  saveOutputs: false,
});

/**
 * Rotary position embedding of `x` (B, T, H, D) at integer `positions` (i32, shape [T] or [B, T]) with
 * frequency base `theta` and optional frequency `scaling` (Llama 3); D must be even. Returns a tensor of x's
 * shape.
 */
export const rope = (x: Tensor, positions: Tensor, theta: number, scaling?: RopeScaling): Tensor =>
  apply1(ropeKernel, scaling ? { theta, scaling } : { theta }, [x, positions]);
