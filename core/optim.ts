/** AdamW with decoupled weight decay and global-norm clipping: the pure reference math, in f64 per element. */
import { NonFiniteError } from "./errors.ts";

/** AdamW settings; the defaults are torch.optim.AdamW's (beta1 0.9, beta2 0.999, eps 1e-8, weightDecay 0.01). */
export interface AdamWConfig {
  /** Learning rate (> 0). */
  readonly lr: number;
  /** Decay of the first-moment average (default 0.9). */
  readonly beta1?: number;
  /** Decay of the second-moment average (default 0.999). */
  readonly beta2?: number;
  /** Added to sqrt(v-hat) in the denominator (default 1e-8). */
  readonly eps?: number;
  /** Decoupled weight decay: each step multiplies a parameter by 1 - lr * weightDecay (default 0.01). */
  readonly weightDecay?: number;
  /** Clip the global gradient norm to this (torch clip_grad_norm_ semantics); absent = no clipping. */
  readonly maxGradNorm?: number;
}

/** Everything one step needs: the config with defaults filled in and the 1-based step number t. */
export interface AdamWHyper {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** 1-based step number used in the bias corrections 1 - beta^t. */
  readonly step: number;
  readonly maxGradNorm?: number;
}

/** Fill the defaults (beta1 0.9, beta2 0.999, eps 1e-8, weightDecay 0.01) and attach step `t`. */
export const adamwHyper = (cfg: AdamWConfig, step: number): AdamWHyper => ({
  lr: cfg.lr,
  beta1: cfg.beta1 ?? 0.9,
  beta2: cfg.beta2 ?? 0.999,
  eps: cfg.eps ?? 1e-8,
  weightDecay: cfg.weightDecay ?? 0.01,
  step,
  maxGradNorm: cfg.maxGradNorm,
});

/** Why a hyperparameter set is unusable, or null when it is fine. */
export const adamwProblem = (h: AdamWHyper): string | null => {
  if (!Number.isFinite(h.lr) || h.lr < 0) return `lr ${h.lr} must be finite and >= 0`;
  if (!(h.beta1 >= 0 && h.beta1 < 1)) return `beta1 ${h.beta1} must be in [0, 1)`;
  if (!(h.beta2 >= 0 && h.beta2 < 1)) return `beta2 ${h.beta2} must be in [0, 1)`;
  if (!(h.eps > 0) || !Number.isFinite(h.eps)) return `eps ${h.eps} must be finite and > 0`;
  if (!Number.isFinite(h.weightDecay) || h.weightDecay < 0) {
    return `weightDecay ${h.weightDecay} must be >= 0`;
  }
  if (!Number.isInteger(h.step) || h.step < 1) return `step ${h.step} must be an integer >= 1`;
  if (h.maxGradNorm !== undefined && !(h.maxGradNorm > 0 && Number.isFinite(h.maxGradNorm))) {
    return `maxGradNorm ${h.maxGradNorm} must be finite and > 0`;
  }
  return null;
};

/** sqrt of the sum of squares over all gradients (f64 accumulation); NaN/inf propagate. */
export const globalNorm = (grads: readonly ArrayLike<number>[]): number => {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
};

/** torch clip_grad_norm_: the gradient factor min(1, maxGradNorm / (norm + 1e-6)); 1 when not clipping. */
export const clipScale = (norm: number, maxGradNorm?: number): number =>
  maxGradNorm === undefined ? 1 : Math.min(1, maxGradNorm / (norm + 1e-6));

/** Float arrays the reference updates in place (f64 on the f64 CPU backend, f32 elsewhere). */
export type FloatArray = Float32Array | Float64Array;

/**
 * One AdamW step on one flat parameter vector, in place, every element in f64 (stores round to the array
 * type). With s = clipScale(norm), g' = s g, and bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t:
 *   p -= lr wd mask p                      (decoupled decay, torch.optim.AdamW; mask = 1 when absent)
 *   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
 *   p -= lr (m / c1) / (sqrt(v / c2) + eps)
 * The norm is over ALL of `g`. When it is not finite the step is refused: p, m and v are left as they were.
 * Returns the norm before clipping (the caller turns a non-finite one into NonFiniteError: `requireFinite`).
 */
export const adamwReference = (
  p: FloatArray,
  g: ArrayLike<number>,
  m: FloatArray,
  v: FloatArray,
  h: AdamWHyper,
  decayMask?: ArrayLike<number>,
): number => {
  const norm = globalNorm([g]);
  adamwUpdateReference(p, g, m, v, h, norm, decayMask);
  return norm;
};

/**
 * The update half of `adamwReference` with the global norm given (it may span several parameter segments): the
 * same per-element math; nothing changes when `norm` is not finite.
 */
export const adamwUpdateReference = (
  p: FloatArray,
  g: ArrayLike<number>,
  m: FloatArray,
  v: FloatArray,
  h: AdamWHyper,
  norm: number,
  decayMask?: ArrayLike<number>,
): void => {
  if (!Number.isFinite(norm)) return;
  const s = clipScale(norm, h.maxGradNorm);
  const c1 = 1 - h.beta1 ** h.step, c2 = 1 - h.beta2 ** h.step;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * s;
    let pi = p[i] - h.lr * h.weightDecay * (decayMask ? decayMask[i] : 1) * p[i];
    const mi = h.beta1 * m[i] + (1 - h.beta1) * gi;
    const vi = h.beta2 * v[i] + (1 - h.beta2) * gi * gi;
    pi -= h.lr * (mi / c1) / (Math.sqrt(vi / c2) + h.eps);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
};

/** Throw NonFiniteError naming `what` when a gradient norm is NaN or infinite (the step was refused). */
export const requireFinite = (norm: number, what: string): void => {
  if (!Number.isFinite(norm)) {
    throw new NonFiniteError({
      what,
      index: -1,
      value: norm,
      message:
        `${what}: the global gradient norm is ${norm}; the AdamW step was refused (parameters, m and v` +
        ` unchanged). Look for a NaN/inf gradient or loss; lower the learning rate or enable clipping.`,
    });
  }
};
