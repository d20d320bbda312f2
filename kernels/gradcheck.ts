/**
 * Gradient checking against central finite differences along a random direction (JAX's `check_grads`):
 * <grad f(x), v> must equal (f(x + eps v) - f(x - eps v)) / (2 eps). Run it on the f64 CPU backend.
 */
import { uniforms } from "../core/rng.ts";
import type { Shape } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { mul, sumTo } from "./elementwise.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";

/** A differentiable input: its data and shape. */
export interface GradInput {
  readonly data: ArrayLike<number>;
  readonly shape: Shape;
}

export interface GradCheckResult {
  /** Directional derivative from the tape. */
  readonly analytic: number;
  /** Central finite difference. */
  readonly numeric: number;
  /** |analytic - numeric| / max(1, |numeric|). */
  readonly error: number;
}

/**
 * Check the gradients of `f` (any output shape: it is projected on a random cotangent) with respect to
 * every input at once. `fixed` tensors are passed after the differentiated ones and not perturbed.
 */
export const checkGrad = async (
  backend: Backend,
  f: (...xs: Tensor[]) => Tensor,
  inputs: readonly GradInput[],
  opts: { seed?: number; eps?: number } = {},
): Promise<GradCheckResult> => {
  const rnd = uniforms(opts.seed ?? 7);
  const eps = opts.eps ?? 1e-5;
  const dirs = inputs.map((x) => Float64Array.from({ length: x.data.length }, () => rnd()));
  let proj: Float64Array | null = null;
  const evalAt = (t: number) =>
    tidy(async () => {
      const xs = inputs.map((x, i) =>
        tensor(backend, Float64Array.from(x.data, (v, j) => v + t * dirs[i][j]), x.shape)
      );
      const y = f(...xs);
      proj ??= Float64Array.from({ length: y.size }, () => rnd());
      const s = sumTo(mul(y, tensor(backend, proj, y.shape)), []);
      return (await s.toArray())[0];
    });
  const numeric = ((await evalAt(eps)) - (await evalAt(-eps))) / (2 * eps);
  const analytic = await tidy(async () => {
    const xs = inputs.map((x) => tensor(backend, x.data, x.shape));
    const tape = new Tape().watch(...xs);
    const s = tape.run(() => {
      const y = f(...xs);
      return sumTo(mul(y, tensor(backend, proj!, y.shape)), []);
    });
    const gs = tape.backward(s, xs, tensor(backend, [1], []));
    let acc = 0;
    for (let i = 0; i < gs.length; i++) {
      const g = gs[i];
      if (!g) continue;
      const d = await g.data();
      for (let j = 0; j < d.length; j++) acc += d[j] * dirs[i][j];
    }
    return acc;
  });
  return { analytic, numeric, error: Math.abs(analytic - numeric) / Math.max(1, Math.abs(numeric)) };
};
