/**
 * The GPU lowering of objectives: an objective at a step becomes engine ops over per-token readout tensors, so
 * the tape differentiates it and the per-token coefficients flow into the fused streaming readout backward (the
 * logits are never materialized). Semantics match objectives/reference.ts exactly, ties included.
 */
import { MissingReadoutError, ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { add, addc, div, exp, minimum, mul, neg, scale, square, sub, sumTo } from "../kernels/elementwise.ts";
import { binary } from "../kernels/elementwise.ts";
import { copyInto, zerosLike } from "../kernels/layout.ts";
import { sum as sumRows } from "../kernels/reduce.ts";
import { apply1 } from "../engine/apply.ts";
import { clampClosed, keepWhere, maxSplit, minSplit, where } from "../kernels/select.ts";
import { Tape } from "../engine/tape.ts";
import { reshape, type Tensor, tensor, tidy } from "../engine/tensor.ts";
import type { RolloutTensors } from "./batch.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { final, type InternalPolicy, showPolicy } from "../policies/internal.ts";
import { readKl } from "../policies/kl.ts";
import { type Params, segmentGrads } from "../policies/params.ts";
import { forwardPolicies } from "../policies/policy.ts";
import { activeAt, showActive, showTerm } from "./objective.ts";
import type { ActiveTerm, Objective, PgTerm, Term } from "./objective.ts";
import { klKey, requiredReadouts } from "./readouts.ts";

/** Differentiable per-token readouts of one policy, each (B*T). */
export interface PolicyTensors {
  readonly logp: Tensor;
  readonly entropy: Tensor;
}

/** Where the lowering gets its readouts: called once per policy / pair that an active term reads. */
export interface ReadoutSource {
  readonly readout: (policy: InternalPolicy) => PolicyTensors;
  readonly kl: (from: InternalPolicy, to: InternalPolicy) => Tensor;
}

/** Metrics of one active term, as scalar tensors (read them back once, after the step). */
export interface LoweredTermMetric {
  readonly show: string;
  readonly weight: number;
  /** the term's unweighted value. */
  readonly value: Tensor;
  readonly clipFraction?: Tensor;
  readonly dualClipFraction?: Tensor;
  readonly approxKl?: Tensor;
}

/** What `lowerLoss` returns: the scalar loss and metrics shaped like the reference's. */
export interface Lowered {
  readonly loss: Tensor;
  readonly metrics: {
    readonly clipFraction: Tensor;
    readonly approxKl: Tensor;
    readonly perTerm: readonly LoweredTermMetric[];
  };
}

const LOG_RATIO_CLAMP = 20;

const ge = (a: Tensor, b: Tensor): Tensor => apply1(binary, { op: "ge" }, [a, b]);
/** [a > b] as 0/1 (not differentiated). */
const gt = (a: Tensor, b: Tensor): Tensor => addc(neg(ge(b, a)), 1);
const total = (x: Tensor): Tensor => sumTo(x, []); // (..) -> []

interface Ctx {
  readonly b: RolloutTensors;
  readonly src: ReadoutSource;
  readonly term: Term;
  readonly scalar: (x: number) => Tensor;
}

const missing = (ctx: Ctx, what: MissingReadoutError["what"], key: string): never => {
  throw new MissingReadoutError({
    what,
    key,
    message: `lowerLoss: missing ${what}[${key}] (needed by ${showTerm(ctx.term)})`,
  });
};

/** A per-token input with its masked positions replaced by 0 (select, not multiply: padding may be NaN). */
const safe = (ctx: Ctx, what: string, x: Tensor | undefined, key: string): Tensor => {
  if (!x) return missing(ctx, what as MissingReadoutError["what"], key);
  const n = ctx.b.B * ctx.b.T;
  if (x.size !== n) {
    throw new ShapeError({
      op: "lowerLoss",
      message: `lowerLoss: ${what}[${key}] has shape ${
        showShape(x.shape)
      }, expected B*T = ${ctx.b.B}*${ctx.b.T} = ${n}`,
    });
  }
  return keepWhere(ctx.b.mask, reshape(x, [n])); // (B*T)
};

/**
 * The clipped surrogate with the reference's subgradients (see reference.ts `surrogate`): l1 = -A r,
 * l2 = -A clamp(r, lo, hi) (derivative 1 on the closed interval), l = max(l1, l2) with ties split evenly; for
 * A < 0 with dual clip c: min(l, -A c), ties split evenly. Works per token (B*T) or per sequence (B).
 */
const surrogateOps = (ctx: Ctx, negA: Tensor, r: Tensor, t: PgTerm) => {
  const l1 = mul(negA, r);
  const l2 = mul(negA, clampClosed(r, 1 - t.clipLow, 1 + t.clipHigh));
  let loss = maxSplit(l1, l2);
  const clipped = gt(l2, l1);
  let dual: Tensor | null = null;
  if (t.dualClip !== null) {
    const l3 = mul(negA, ctx.scalar(t.dualClip)); // -A c, a constant
    const aNeg = gt(negA, ctx.scalar(0)); // [A < 0]
    dual = mul(aNeg, gt(loss, l3));
    loss = where(aNeg, minSplit(loss, l3), loss);
  }
  return { loss, clipped, dual };
};

const lowerPg = (ctx: Ctx, t: PgTerm): Omit<LoweredTermMetric, "show" | "weight"> => {
  const { b } = ctx;
  const key = showPolicy(t.policy);
  const logp = safe(ctx, "logp", ctx.src.readout(t.policy).logp, key); // (B*T)
  const old = safe(ctx, "old", b.old.get(key), key); // (B*T)
  let coef = b.agg(t.agg); // (B*T) c
  if (t.tis !== null) {
    if (!b.behaviour) {
      throw new MissingReadoutError({
        what: "old",
        key: "behaviour",
        message: `lowerLoss: the batch has no behaviour log-probs (needed by ${showTerm(t)}'s tis)`,
      });
    }
    const beh = safe(ctx, "behaviour", b.behaviour, "final");
    coef = mul(coef, minimum(exp(sub(old, beh)), ctx.scalar(t.tis.cap))); // c * min(e^(old - behaviour), cap)
  }
  const x = sub(logp, old); // (B*T) log-ratio
  let value: Tensor, clippedW: Tensor, dualW: Tensor | null;
  if (t.ratio === "sequence") {
    // s = exp(clamp(xbar, -20, 20)), xbar = sum_t M x_t / len; the loss of sequence n is sum_t c_t w_t f(s_n)
    const xs = sumRows(reshape(mul(x, b.mask), [b.B, b.T])); // (B)
    // xs / len as the reference divides (len 0 -> 0 / 1 = 0; such a sequence has c = 0 everywhere)
    const s = exp(clampClosed(div(xs, b.lensOrOne), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)); // (B)
    const sur = surrogateOps(ctx, neg(b.seqAdvantages), s, t);
    const cw = sumRows(reshape(coef, [b.B, b.T])); // (B)
    value = total(mul(sur.loss, cw));
    clippedW = mul(sur.clipped, b.lens); // (B) clipped sequences weigh their token count
    dualW = sur.dual && mul(sur.dual, b.lens);
  } else {
    const r = exp(clampClosed(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)); // (B*T)
    const sur = surrogateOps(ctx, neg(b.advantages), r, t);
    value = total(mul(sur.loss, coef));
    clippedW = mul(sur.clipped, b.mask);
    dualW = sur.dual && mul(sur.dual, b.mask);
  }
  const frac = (w: Tensor | null) => (w ? mul(total(w), b.invCount) : ctx.scalar(0));
  return {
    value,
    clipFraction: frac(clippedW),
    dualClipFraction: frac(dualW),
    approxKl: mul(total(mul(neg(x), b.mask)), b.invCount), // token-mean of old - new
  };
};

/** sum_k c_k f_k over a per-token loss f (B*T). */
const pointwise = (ctx: Ctx, t: Exclude<Term, PgTerm>, f: Tensor): Tensor => total(mul(f, ctx.b.agg(t.agg)));

const lowerTerm = (ctx: Ctx, a: ActiveTerm): LoweredTermMetric => {
  const t = a.term, head = { show: showActive(a), weight: a.weight };
  switch (t.kind) {
    case "pg":
      return { ...head, ...lowerPg(ctx, t) };
    case "kl": {
      const key = showPolicy(t.policy);
      const lp = safe(ctx, "logp", ctx.src.readout(t.policy).logp, key);
      const ref = safe(ctx, "ref", ctx.b.ref.get(key), key);
      let f: Tensor;
      switch (t.estimator) {
        case "k1": // logp - logref
          f = sub(lp, ref);
          break;
        case "k2": // (logp - logref)^2 / 2
          f = scale(square(sub(lp, ref)), 0.5);
          break;
        case "k3": { // e^d - d - 1, d = logref - logp
          const d = sub(ref, lp);
          f = addc(sub(exp(d), d), -1);
          break;
        }
        default:
          return t.estimator satisfies never;
      }
      return { ...head, value: pointwise(ctx, t, f) };
    }
    case "nll": {
      const key = showPolicy(t.policy);
      return {
        ...head,
        value: pointwise(ctx, t, neg(safe(ctx, "logp", ctx.src.readout(t.policy).logp, key))),
      };
    }
    case "entropy": {
      const key = showPolicy(t.policy);
      return {
        ...head,
        value: pointwise(ctx, t, safe(ctx, "entropy", ctx.src.readout(t.policy).entropy, key)),
      };
    }
    case "klPolicies": {
      const key = klKey(t.from, t.to);
      return { ...head, value: pointwise(ctx, t, safe(ctx, "kl", ctx.src.kl(t.from, t.to), key)) };
    }
    default:
      return t satisfies never;
  }
};

/**
 * Lower an objective at a 1-based step into ops: loss = sum over active terms of weight * value, each value
 * built from the readouts `src` supplies (each (B*T) over positions) and the batch's constants. Differentiate
 * it with a Tape that watches the readouts (or the parameters they come from). Positions where the mask is 0
 * contribute nothing and get an exact zero gradient, whatever their readouts or old log-probs hold (NaN too).
 */
export const lowerLoss = (
  objective: Objective,
  step: number,
  batch: RolloutTensors,
  src: ReadoutSource,
): Lowered => {
  const be = batch.backend;
  const scalar = (x: number) => tensor(be, [x], []);
  const perTerm: LoweredTermMetric[] = [];
  let loss: Tensor = scalar(0);
  for (const a of activeAt(objective, step)) {
    const m = lowerTerm({ b: batch, src, term: a.term, scalar }, a);
    loss = add(loss, mul(m.value, scalar(a.weight))); // the weight as data: schedules never recompile shaders
    perTerm.push(m);
  }
  const pgs = perTerm.filter((m) => m.clipFraction !== undefined);
  const mean = (f: (m: LoweredTermMetric) => Tensor) =>
    pgs.length === 0 ? scalar(0) : scale(pgs.map(f).reduce((s, x) => add(s, x)), 1 / pgs.length);
  return {
    loss,
    metrics: { clipFraction: mean((m) => m.clipFraction!), approxKl: mean((m) => m.approxKl!), perTerm },
  };
};

/** Options of a lowered training step. */
export interface StepOptions {
  /** Readout temperature (default 1) and vocabulary chunk (default 8192). */
  readonly temperature?: number;
  readonly chunk?: number;
  /** Which side of every KL(from || to) readout is a detached teacher ("a" = from, "b" = to; default none). */
  readonly klDetach?: "none" | "a" | "b";
  /**
   * Old log-probs (and behaviour) absent from the batch are taken on-policy: the current readouts, detached
   * (so every ratio is exactly 1). Default false: an absent old log-prob is a MissingReadoutError.
   */
  readonly onPolicy?: boolean;
}

/** A tensor's value with no gradient path (a copy through a kernel without a gradient rule). */
export const detach = (x: Tensor): Tensor => copyInto(zerosLike(x, x.shape), x);

/**
 * One lowered step: forward with taps, the policies `requiredReadouts` lists read in ONE streaming pass (KL
 * pairs in one more), the loss built by `lowerLoss`, and its gradient w.r.t. every parameter as segment
 * tensors laid out like `p.segments` (exact zeros where no gradient flows). Nothing is read back.
 */
export const lowerStep = (
  c: DecoderConfig,
  p: Params,
  batch: RolloutTensors,
  objective: Objective,
  step: number,
  o: StepOptions = {},
): Lowered & { grads: Tensor[] } =>
  tidy(() => {
    const req = requiredReadouts(objective, step);
    const needsBehaviour = activeAt(objective, step).some((a) => a.term.kind === "pg" && a.term.tis !== null);
    const policies = [...req.logp, ...req.entropy];
    if (o.onPolicy && needsBehaviour && !batch.behaviour) policies.push(final);
    const tape = new Tape().watch(...p.views);
    const lowered = tape.run(() => {
      const anything = policies.length + req.kl.length > 0;
      const model = anything ? forwardPolicies(c, p, batch.ids, batch.positions) : null;
      const opts = { temperature: o.temperature, chunk: o.chunk };
      const reads = model && policies.length ? model.read(policies, batch.targets, opts) : new Map();
      const kls = model && req.kl.length
        ? readKl(c, p, model.taps, req.kl, { ...opts, detach: o.klDetach })
        : new Map();
      let b = batch;
      if (o.onPolicy) {
        const old = new Map(batch.old);
        for (const q of req.old) {
          if (!old.has(showPolicy(q))) old.set(showPolicy(q), detach(reads.get(showPolicy(q))!.logp));
        }
        const behaviour = batch.behaviour ?? (needsBehaviour ? detach(reads.get("final")!.logp) : undefined);
        b = { ...batch, old, behaviour };
      }
      return lowerLoss(objective, step, b, {
        readout: (q) => reads.get(showPolicy(q))!,
        kl: (from, to) => kls.get(klKey(from, to))!,
      });
    });
    const grads = tape.backward(lowered.loss, p.views, tensor(p.backend, [1], []));
    return { ...lowered, grads: segmentGrads(p, grads) };
  });
