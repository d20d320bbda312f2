/** The pure f64 reference interpreter of objectives: loss, exact gradients w.r.t. every readout, and metrics. */
import { MissingReadoutError, ShapeError } from "../core/errors.ts";
import { showPolicy } from "../policies/internal.ts";
import { klKey } from "./readouts.ts";
import { activeAt, showActive, showTerm } from "./objective.ts";
import type { ActiveTerm, Agg, KlTerm, Objective, PgTerm, Term } from "./objective.ts";

/**
 * One batch of rollouts, row-major (B sequences x T padded positions). Values at positions where mask = 0 are
 * never read (padding may hold anything, NaN included).
 */
export interface ReferenceBatch {
  /** Sequences. */
  readonly B: number;
  /** Positions per sequence (padded); position t's values are about token t. */
  readonly T: number;
  /** (B*T) 1 on response tokens, 0 elsewhere (other values act as token weights). */
  readonly mask: Float64Array;
  /** (B) the sequence advantage, broadcast to its tokens. */
  readonly advantages: Float64Array;
  /** (B*T) the final policy's log-prob of each sampled token at sampling time. */
  readonly behaviour: Float64Array;
  /** (B*T) per policy key (`showPolicy`): old log-probs (detached), needed by pg terms. */
  readonly old: ReadonlyMap<string, Float64Array>;
  /** (B*T) per policy key: the reference model's log-probs read out at that policy, needed by kl terms. */
  readonly ref?: ReadonlyMap<string, Float64Array>;
}

/** Differentiable per-token readouts of the current parameters, each (B*T), keyed by `showPolicy` / `klKey`. */
export interface Readouts {
  /** log-prob of the sampled token under a policy. */
  readonly logp: ReadonlyMap<string, Float64Array>;
  /** full-vocabulary entropy of a policy. */
  readonly entropy: ReadonlyMap<string, Float64Array>;
  /** full-vocabulary KL(pi_from || pi_to), key `from|to`. */
  readonly kl: ReadonlyMap<string, Float64Array>;
}

/** d loss / d readout, shaped like `Readouts`, with an entry for exactly the readouts the step used. */
export interface Grads {
  /** d loss / d logp per policy key, each (B*T). */
  readonly logp: Map<string, Float64Array>;
  /** d loss / d entropy per policy key, each (B*T). */
  readonly entropy: Map<string, Float64Array>;
  /** d loss / d KL per `from|to` key, each (B*T). */
  readonly kl: Map<string, Float64Array>;
}

/** Metrics of one active term. `clipFraction`, `dualClipFraction`, `approxKl` only for pg terms. */
export interface TermMetric {
  /** The term as `showTerm` prints it, e.g. `pg(layer(5))`. */
  readonly show: string;
  /** Its weight at this step. */
  readonly weight: number;
  /** the term's unweighted value (its contribution to the loss is weight * value). */
  readonly value: number;
  /** pg terms: the fraction of response tokens whose ratio was clipped. */
  readonly clipFraction?: number;
  /** pg terms with dualClip: the fraction of response tokens the dual clip bound. */
  readonly dualClipFraction?: number;
  /** pg terms: the token-mean of logp_old - logp_new (verl's ppo_kl). */
  readonly approxKl?: number;
}

/** What `evaluate` returns. */
export interface Evaluation {
  /** The scalar loss: the sum over active terms of weight * value. */
  readonly loss: number;
  /** Its gradient with respect to every readout the step used. */
  readonly grads: Grads;
  /** What the logs show of the step. */
  readonly metrics: {
    /** mean over the pg terms of each term's clip fraction (0 without pg terms). */
    readonly clipFraction: number;
    /** mean over the pg terms of the token-mean of (logp_old - logp_new) (verl's ppo_kl; 0 without pg terms). */
    readonly approxKl: number;
    /** One entry per active term, in `activeAt` order. */
    readonly perTerm: readonly TermMetric[];
  };
}

/**
 * The linear aggregation coefficients c (B*T) of `agg`: loss = sum_{n,t} c[n,t] L[n,t], so c is also
 * d loss / d L. token-mean: M / sum M; seq-mean-token-sum: M / B; seq-mean-token-mean: M / (B len_n) (0 when
 * len_n = 0); seq-mean-token-sum-norm: M / (B maxLen).
 */
export const aggWeights = (agg: Agg, mask: Float64Array, B: number, T: number): Float64Array => {
  const c = new Float64Array(B * T);
  if (agg === "token-mean") {
    let total = 0;
    for (let i = 0; i < B * T; i++) total += mask[i];
    if (total !== 0) { for (let i = 0; i < B * T; i++) c[i] = mask[i] / total; }
    return c;
  }
  for (let n = 0; n < B; n++) {
    let denom: number;
    if (agg === "seq-mean-token-sum") denom = B;
    else if (agg === "seq-mean-token-mean") {
      let len = 0;
      for (let t = 0; t < T; t++) len += mask[n * T + t];
      denom = B * len;
    } else denom = B * agg.maxLen;
    if (denom !== 0) { for (let t = 0; t < T; t++) c[n * T + t] = mask[n * T + t] / denom; }
  }
  return c;
};

const LOG_RATIO_CLAMP = 20;

/**
 * The clipped surrogate of one ratio value r for advantage A, and d/dr, following PyTorch's subgradients:
 * clamp(r, lo, hi) has derivative 1 on [lo, hi] (boundaries included) and 0 outside; max / min of two equal
 * arguments split the gradient evenly between them (torch.maximum / torch.minimum).
 *   l1 = -A r, l2 = -A clamp(r, 1-eps_lo, 1+eps_hi), l = max(l1, l2); A < 0 with dual clip c: min(l, -A c).
 */
export const surrogate = (
  A: number,
  r: number,
  t: Pick<PgTerm, "clipLow" | "clipHigh" | "dualClip">,
): { loss: number; dr: number; clipped: boolean; dualClipped: boolean } => {
  const lo = 1 - t.clipLow, hi = 1 + t.clipHigh;
  const l1 = -A * r, d1 = -A;
  const inside = r >= lo && r <= hi;
  const l2 = -A * Math.min(Math.max(r, lo), hi), d2 = inside ? -A : 0;
  let loss: number, dr: number;
  if (l1 > l2) [loss, dr] = [l1, d1];
  else if (l2 > l1) [loss, dr] = [l2, d2];
  else [loss, dr] = [l1, 0.5 * (d1 + d2)];
  const clipped = l2 > l1;
  let dualClipped = false;
  if (t.dualClip !== null && A < 0) {
    const l3 = -A * t.dualClip; // constant: d/dr = 0
    if (loss > l3) [loss, dr, dualClipped] = [l3, 0, true];
    else if (loss === l3) dr *= 0.5;
  }
  return { loss, dr, clipped, dualClipped };
};

/** clamp(x, -20, 20) and its derivative (1 on the closed interval, 0 outside). */
const clampLogRatio = (x: number): [number, number] =>
  x < -LOG_RATIO_CLAMP ? [-LOG_RATIO_CLAMP, 0] : x > LOG_RATIO_CLAMP ? [LOG_RATIO_CLAMP, 0] : [x, 1];

interface Ctx {
  readonly b: ReferenceBatch;
  readonly r: Readouts;
  readonly grads: Grads;
  readonly term: Term;
}

const need = (
  ctx: Ctx,
  what: MissingReadoutError["what"],
  map: ReadonlyMap<string, Float64Array> | undefined,
  key: string,
): Float64Array => {
  const x = map?.get(key);
  if (!x) {
    throw new MissingReadoutError({
      what,
      key,
      message: `evaluate: missing ${what}[${key}] (needed by ${showTerm(ctx.term)})`,
    });
  }
  const n = ctx.b.B * ctx.b.T;
  if (x.length !== n) {
    throw new ShapeError({
      op: "evaluate",
      message:
        `evaluate: ${what}[${key}] has length ${x.length}, expected B*T = ${ctx.b.B}*${ctx.b.T} = ${n}`,
    });
  }
  return x;
};

const gradOf = (ctx: Ctx, kind: keyof Grads, key: string): Float64Array => {
  let g = ctx.grads[kind].get(key);
  if (!g) ctx.grads[kind].set(key, g = new Float64Array(ctx.b.B * ctx.b.T));
  return g;
};

/** Value (unweighted) of a pg term; adds w * d value / d logp into the grads. */
const evalPg = (ctx: Ctx, t: PgTerm, w: number): Omit<TermMetric, "show" | "weight"> => {
  const { B, T, mask, advantages, behaviour } = ctx.b;
  const key = showPolicy(t.policy);
  const logp = need(ctx, "logp", ctx.r.logp, key), old = need(ctx, "old", ctx.b.old, key);
  const g = gradOf(ctx, "logp", key);
  const c = aggWeights(t.agg, mask, B, T);
  // truncated importance weight (a constant): min(exp(old - behaviour), cap)
  const tis = (i: number) => (t.tis === null ? 1 : Math.min(Math.exp(old[i] - behaviour[i]), t.tis.cap));
  let value = 0, clipped = 0, dual = 0, kl = 0, count = 0;
  for (let n = 0; n < B; n++) {
    const A = advantages[n];
    if (t.ratio === "sequence") {
      // s = exp(clamp(xbar, -20, 20)), xbar = sum_t M x_t / len; ds/dlogp_t = s [|xbar| <= 20] M_t / len
      let len = 0, xs = 0, cw = 0;
      for (let k = n * T; k < (n + 1) * T; k++) {
        if (mask[k] === 0) continue;
        len += mask[k];
        xs += mask[k] * (logp[k] - old[k]);
        cw += c[k] * tis(k);
      }
      if (len === 0) continue;
      const [xc, dx] = clampLogRatio(xs / len);
      const s = Math.exp(xc);
      const sur = surrogate(A, s, t);
      value += cw * sur.loss; // sum_t c_t w_t f(s)
      const gs = w * cw * sur.dr * s * dx / len;
      for (let k = n * T; k < (n + 1) * T; k++) {
        if (mask[k] === 0) continue;
        g[k] += gs * mask[k];
        clipped += mask[k] * (sur.clipped ? 1 : 0);
        dual += mask[k] * (sur.dualClipped ? 1 : 0);
        kl += mask[k] * (old[k] - logp[k]);
        count += mask[k];
      }
    } else {
      for (let k = n * T; k < (n + 1) * T; k++) {
        if (mask[k] === 0) continue;
        // r = exp(clamp(x, -20, 20)), x = logp - old; dr/dlogp = r [|x| <= 20]
        const [xc, dx] = clampLogRatio(logp[k] - old[k]);
        const r = Math.exp(xc);
        const sur = surrogate(A, r, t);
        const cw = c[k] * tis(k);
        value += cw * sur.loss;
        g[k] += w * cw * sur.dr * r * dx;
        clipped += mask[k] * (sur.clipped ? 1 : 0);
        dual += mask[k] * (sur.dualClipped ? 1 : 0);
        kl += mask[k] * (old[k] - logp[k]);
        count += mask[k];
      }
    }
  }
  const frac = (x: number) => (count === 0 ? 0 : x / count);
  return { value, clipFraction: frac(clipped), dualClipFraction: frac(dual), approxKl: frac(kl) };
};

/**
 * Per-token KL estimator value and d/dlogp, with d = logref - logp:
 * k1 = logp - logref (d/dlogp = 1); k2 = (logp - logref)^2 / 2 (d/dlogp = logp - logref);
 * k3 = e^d - d - 1 (d/dlogp = 1 - e^d). No clamps (verl clamps d to [-20, 20] and k3 to [-10, 10]).
 */
export const klEstimate = (est: KlTerm["estimator"], logp: number, logref: number): [number, number] => {
  switch (est) {
    case "k1":
      return [logp - logref, 1];
    case "k2":
      return [0.5 * (logp - logref) ** 2, logp - logref];
    case "k3": {
      const d = logref - logp, e = Math.exp(d);
      return [e - d - 1, 1 - e];
    }
    default:
      return est satisfies never;
  }
};

/** Value of a term whose per-token loss is f(readout): sum c f; adds w c f' into that readout's grad. */
const evalPointwise = (
  ctx: Ctx,
  agg: Agg,
  x: Float64Array,
  g: Float64Array,
  w: number,
  f: (x: number, k: number) => [number, number],
): number => {
  const { B, T, mask } = ctx.b;
  const c = aggWeights(agg, mask, B, T);
  let value = 0;
  for (let k = 0; k < B * T; k++) {
    if (mask[k] === 0) continue;
    const [v, d] = f(x[k], k);
    value += c[k] * v;
    g[k] += w * c[k] * d;
  }
  return value;
};

const evalTerm = (ctx: Ctx, a: ActiveTerm): TermMetric => {
  const t = a.term, w = a.weight, head = { show: showActive(a), weight: w };
  switch (t.kind) {
    case "pg":
      return { ...head, ...evalPg(ctx, t, w) };
    case "kl": {
      const key = showPolicy(t.policy);
      const logp = need(ctx, "logp", ctx.r.logp, key), ref = need(ctx, "ref", ctx.b.ref, key);
      const g = gradOf(ctx, "logp", key);
      return {
        ...head,
        value: evalPointwise(ctx, t.agg, logp, g, w, (x, k) => klEstimate(t.estimator, x, ref[k])),
      };
    }
    case "nll": {
      const key = showPolicy(t.policy);
      const logp = need(ctx, "logp", ctx.r.logp, key), g = gradOf(ctx, "logp", key);
      return { ...head, value: evalPointwise(ctx, t.agg, logp, g, w, (x) => [-x, -1]) };
    }
    case "entropy": {
      const key = showPolicy(t.policy);
      const h = need(ctx, "entropy", ctx.r.entropy, key), g = gradOf(ctx, "entropy", key);
      return { ...head, value: evalPointwise(ctx, t.agg, h, g, w, (x) => [x, 1]) };
    }
    case "klPolicies": {
      const key = klKey(t.from, t.to);
      const kl = need(ctx, "kl", ctx.r.kl, key), g = gradOf(ctx, "kl", key);
      return { ...head, value: evalPointwise(ctx, t.agg, kl, g, w, (x) => [x, 1]) };
    }
    default:
      return t satisfies never;
  }
};

const checkBatch = (b: ReferenceBatch) => {
  const bad = (what: string, len: number, want: string, n: number) => {
    throw new ShapeError({
      op: "evaluate",
      message: `evaluate: batch.${what} has length ${len}, expected ${want} = ${n}`,
    });
  };
  if (!Number.isInteger(b.B) || !Number.isInteger(b.T) || b.B < 0 || b.T < 0) {
    throw new ShapeError({
      op: "evaluate",
      message: `evaluate: B and T must be integers >= 0, got ${b.B}, ${b.T}`,
    });
  }
  if (b.mask.length !== b.B * b.T) bad("mask", b.mask.length, `B*T = ${b.B}*${b.T}`, b.B * b.T);
  if (b.behaviour.length !== b.B * b.T) {
    bad("behaviour", b.behaviour.length, `B*T = ${b.B}*${b.T}`, b.B * b.T);
  }
  if (b.advantages.length !== b.B) bad("advantages", b.advantages.length, "B", b.B);
};

/**
 * Evaluate an objective at a 1-based step on a batch: the loss sum_terms weight * value, its exact gradient
 * with respect to every readout it reads (piecewise: PyTorch's subgradient conventions, see `surrogate`), and
 * metrics. Throws MissingReadoutError naming an absent readout, ShapeError on a length mismatch.
 */
export const evaluate = (
  objective: Objective,
  step: number,
  batch: ReferenceBatch,
  readouts: Readouts,
): Evaluation => {
  checkBatch(batch);
  const grads: Grads = { logp: new Map(), entropy: new Map(), kl: new Map() };
  const perTerm: TermMetric[] = [];
  let loss = 0;
  for (const a of activeAt(objective, step)) {
    const m = evalTerm({ b: batch, r: readouts, grads, term: a.term }, a);
    loss += a.weight * m.value;
    perTerm.push(m);
  }
  const pgs = perTerm.filter((m) => m.clipFraction !== undefined);
  const mean = (
    f: (m: TermMetric) => number,
  ) => (pgs.length === 0 ? 0 : pgs.reduce((s, m) => s + f(m), 0) / pgs.length);
  return {
    loss,
    grads,
    metrics: { clipFraction: mean((m) => m.clipFraction!), approxKl: mean((m) => m.approxKl!), perTerm },
  };
};
