/**
 * Objectives as values: weighted loss terms over internal policies, a Monoid under +, scaling, phases, show.
 *
 * Laws (checked as properties in tests/objective_laws_test.ts; `≡` is `EqObjective`, structural equality of the
 * canonical JSON; `loss`/`grad` are either interpreter, objectives/reference.ts `evaluate` or objectives/lower.ts
 * `lowerStep`, at any step on any batch):
 * - Associativity: `concat(concat(a, b), c) ≡ concat(a, concat(b, c))`.
 * - Identity: `concat(zero, a) ≡ a ≡ concat(a, zero)`.
 * - Scale distributes: `scale(w)(a + b) ≡ scale(w)(a) + scale(w)(b)`; `scale(1)(a) ≡ a`; `scale(0)(a) ≡ zero`.
 * - Homomorphism: `activeAt(a + b, s)` = `activeAt(a, s)` followed by `activeAt(b, s)`; `scale(w)` multiplies every
 *   active weight by `weightAt(w, s)`.
 * - Phases: at every step exactly one phase of a `phases` term is active, as a pure function of the step.
 * - Linearity: `loss(a + b) = loss(a) + loss(b)`, `grad(a + b) = grad(a) + grad(b)`,
 *   `grad(scale(c)(a)) = c grad(a)`.
 * - Round trip (objectives/codec.ts): `objectiveFromJson(src, objectiveToJson(a)) ≡ a`, with equal `show`.
 * - Agreement: `lowerStep` equals the f64 reference `evaluate` within the f32 tolerance of tests/lower_test.ts, and
 *   every reference gradient equals a central finite difference of its loss away from kinks.
 */
import type { Eq } from "fp-ts/Eq.js";
import { concatAll } from "fp-ts/Monoid.js";
import type { Semigroup } from "fp-ts/Semigroup.js";
import { ConfigError } from "../core/errors.ts";
import { final, type InternalPolicy, layer as layerPolicy, showPolicy } from "../policies/internal.ts";

// ---------------------------------------------------------------------------------------------------------------
// Weights

/**
 * A term's weight, possibly a function of the 1-based training step (evaluated by `weightAt`):
 * - a number: constant;
 * - `linear`: `from` for step <= start, `to` for step >= end, linear in between (requires start < end);
 * - `piecewise`: piecewise-linear through `points` ([step, value], steps strictly increasing), constant before the
 *   first point and after the last;
 * - `product`: the product of its factors (what `scale` builds when both weights depend on the step).
 */
export type Weight =
  | number
  | {
    readonly kind: "linear";
    readonly from: number;
    readonly to: number;
    readonly start: number;
    readonly end: number;
  }
  | { readonly kind: "piecewise"; readonly points: readonly (readonly [number, number])[] }
  | { readonly kind: "product"; readonly factors: readonly Weight[] };

/** The value of a weight at a (1-based) step. Pure. */
export const weightAt = (w: Weight, step: number): number => {
  if (typeof w === "number") return w;
  switch (w.kind) {
    case "linear":
      if (step <= w.start) return w.from;
      if (step >= w.end) return w.to;
      return w.from + ((w.to - w.from) * (step - w.start)) / (w.end - w.start);
    case "piecewise": {
      const p = w.points;
      if (step <= p[0][0]) return p[0][1];
      for (let i = 1; i < p.length; i++) {
        if (step <= p[i][0]) {
          const [s0, v0] = p[i - 1], [s1, v1] = p[i];
          return v0 + ((v1 - v0) * (step - s0)) / (s1 - s0);
        }
      }
      return p[p.length - 1][1];
    }
    case "product":
      return w.factors.reduce<number>((acc, f) => acc * weightAt(f, step), 1);
    default:
      return w satisfies never;
  }
};

const noNegZero = (x: number): number => x + 0; // -0 + 0 === +0: keeps JSON round trips exact

/** A weight ramping linearly from `from` (at step <= start) to `to` (at step >= end). */
export const linear = (from: number, to: number, start: number, end: number): Weight =>
  checked("weight", { kind: "linear", from: noNegZero(from), to: noNegZero(to), start, end }, weightProblem);

/** A piecewise-linear weight through [step, value] points (steps strictly increasing). */
export const piecewise = (points: readonly (readonly [number, number])[]): Weight =>
  checked(
    "weight",
    { kind: "piecewise", points: points.map(([s, v]) => [s, noNegZero(v)] as const) },
    weightProblem,
  );

const splitWeight = (w: Weight): [number, Weight[]] => {
  if (typeof w === "number") return [w, []];
  if (w.kind !== "product") return [1, [w]];
  const [head, ...rest] = w.factors;
  return typeof head === "number" ? [head, rest] : [1, [...w.factors]];
};

const foldCoefficient = (c: number, w: Weight): Weight => {
  if (c === 1 || typeof w === "number") return typeof w === "number" ? noNegZero(c * w) : w;
  switch (w.kind) {
    case "linear":
      return { ...w, from: noNegZero(c * w.from), to: noNegZero(c * w.to) };
    case "piecewise":
      return { kind: "piecewise", points: w.points.map(([s, v]) => [s, noNegZero(c * v)] as const) };
    case "product":
      return { kind: "product", factors: [c, ...w.factors] };
    default:
      return w satisfies never;
  }
};

/**
 * Product of two weights in normal form: numbers multiply; a number folds into a single linear/piecewise weight;
 * otherwise a flat `product` with the numeric coefficient (if not 1) first.
 */
export const mulWeight = (a: Weight, b: Weight): Weight => {
  const [ca, ra] = splitWeight(a), [cb, rb] = splitWeight(b);
  const c = noNegZero(ca * cb), rest = [...ra, ...rb];
  if (c === 0) return 0;
  if (rest.length === 0) return c;
  if (rest.length === 1) return foldCoefficient(c, rest[0]);
  return { kind: "product", factors: c === 1 ? rest : [c, ...rest] };
};

// ---------------------------------------------------------------------------------------------------------------
// Terms

/**
 * How a per-token loss matrix L (B sequences x T positions, mask M) becomes a scalar (verl's `agg_loss`):
 * - `token-mean`: sum_{n,t} M L / sum_{n,t} M (0 when the batch has no response token);
 * - `seq-mean-token-sum`: (1/B) sum_n sum_t M L;
 * - `seq-mean-token-mean`: (1/B) sum_n (sum_t M L / sum_t M) (a sequence with no response token adds 0);
 * - `seq-mean-token-sum-norm` (Dr. GRPO): sum_{n,t} M L / (B * maxLen), maxLen a declared constant (verl's own
 *   version divides by the padded length T only, without B).
 */
export type Agg =
  | "token-mean"
  | "seq-mean-token-sum"
  | "seq-mean-token-mean"
  | { readonly kind: "seq-mean-token-sum-norm"; readonly maxLen: number };

/** Dr. GRPO aggregation with a declared constant maximum response length. */
export const seqMeanTokenSumNorm = (maxLen: number): Agg => ({ kind: "seq-mean-token-sum-norm", maxLen });

/**
 * PPO/GRPO clipped surrogate. `policy` supplies both the new and the old log-probs (BuPO). Per token, with A the
 * sequence's advantage: r = exp(clamp(logp_new - logp_old, -20, 20)); loss = max(-A r, -A clip(r, 1-clipLow,
 * 1+clipHigh)); for A < 0 with `dualClip` c: min(loss, -A c). `ratio: "sequence"` (GSPO) uses per sequence
 * s = exp(clamp(mean over response tokens of (logp_new - logp_old), -20, 20)) in place of r. `tis: { cap }`
 * multiplies each token's loss by the constant w = min(exp(old - behaviour), cap) (old: this term's policy's old
 * log-prob; behaviour: the final policy's log-prob at sampling). The sequence ratio is differentiated exactly:
 * ds/dlogp_t = s / len (verl's GSPO uses a stop-gradient "token" form and clamps the log-ratio at 10 only; with
 * seq-mean-token-mean its gradient equals this one).
 */
export interface PgTerm {
  /** The term's tag. */
  readonly kind: "pg";
  /** The policy whose new and old log-probs form the ratio. */
  readonly policy: InternalPolicy;
  /** Lower clip: the ratio is clipped below at 1 - clipLow (default 0.2). */
  readonly clipLow: number;
  /** Upper clip: above at 1 + clipHigh (default 0.2; DAPO's clip-higher raises it). */
  readonly clipHigh: number;
  /** Dual-clip constant c > 1 for negative advantages, or null for none. */
  readonly dualClip: number | null;
  /** `token`: one ratio per token (PPO/GRPO); `sequence`: one per sequence (GSPO). */
  readonly ratio: "token" | "sequence";
  /** How per-token losses become a scalar. */
  readonly agg: Agg;
  /** Truncated importance correction with its cap, or null for none. */
  readonly tis: { readonly cap: number } | null;
}

/** Per-token KL estimator between the policy (logp) and the reference model (logref), on sampled tokens. */
export type KlEstimator = "k1" | "k2" | "k3";

/** KL to a reference model: k1 = logp - logref, k2 = (logp - logref)^2 / 2, k3 = e^d - d - 1 with d = logref - logp. */
export interface KlTerm {
  /** The term's tag. */
  readonly kind: "kl";
  /** The policy compared with the reference model's own policy. */
  readonly policy: InternalPolicy;
  /** The per-token estimator (default k3). */
  readonly estimator: KlEstimator;
  /** How per-token values become a scalar. */
  readonly agg: Agg;
}

/** The policy's full-vocabulary entropy (value = +entropy; a bonus needs a negative weight, see `entropyBonus`). */
export interface EntropyTerm {
  /** The term's tag. */
  readonly kind: "entropy";
  /** The policy whose entropy (nats, full vocabulary) is taken at each response position. */
  readonly policy: InternalPolicy;
  /** How per-token values become a scalar. */
  readonly agg: Agg;
}

/** Negative log-likelihood of the batch tokens: per token -logp. */
export interface NllTerm {
  /** The term's tag. */
  readonly kind: "nll";
  /** The policy whose log-probs of the batch tokens are taken. */
  readonly policy: InternalPolicy;
  /** How per-token values become a scalar. */
  readonly agg: Agg;
}

/** Per-token full-vocabulary KL(pi_from || pi_to), read from the `kl(from,to)` readout. */
export interface KlPoliciesTerm {
  /** The term's tag. */
  readonly kind: "klPolicies";
  /** The first argument of KL: the distribution expectations are taken under (the teacher in selfDistill). */
  readonly from: InternalPolicy;
  /** The second argument. */
  readonly to: InternalPolicy;
  /** How per-token values become a scalar. */
  readonly agg: Agg;
}

/** A loss term (without its weight). */
export type Term = PgTerm | KlTerm | EntropyTerm | NllTerm | KlPoliciesTerm;

/** One phase: active for steps <= `until` after the previous phase; the last phase has `until: null`. */
export interface Phase {
  /** The last (1-based, absolute) step of this phase; null for the last phase. */
  readonly until: number | null;
  /** What the loss is during the phase. */
  readonly objective: Objective;
}

/** A schedule of objectives by (1-based, absolute) training step. */
export interface PhasesTerm {
  /** The term's tag. */
  readonly kind: "phases";
  /** The phases in order; at every step exactly one is active (`phaseAt`). */
  readonly phases: readonly Phase[];
}

/** One weighted summand of an objective. */
export type Node = { readonly weight: Weight } & (Term | PhasesTerm);

/** An objective: the sum of its weighted terms (the empty sum is `zero`). A plain JSON-ready value. */
export interface Objective {
  /** The weighted summands, in order (show, the logs and the codec keep it). */
  readonly terms: readonly Node[];
}

// ---------------------------------------------------------------------------------------------------------------
// Validation (shared by the constructors and the codec)

/** A problem with a value: the path below it (keys / indices) and the message. */
export type Problem = readonly [path: readonly (string | number)[], message: string];

const finite = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x);

/** Semantic problem of a well-typed weight, or null. */
export const weightProblem = (w: Weight): Problem | null => {
  if (typeof w === "number") return finite(w) ? null : [[], "expected a finite number"];
  switch (w.kind) {
    case "linear":
      for (const k of ["from", "to", "start", "end"] as const) {
        if (!finite(w[k])) return [[k], "expected a finite number"];
      }
      return w.start < w.end ? null : [["end"], `linear weight needs start < end, got ${w.start}..${w.end}`];
    case "piecewise":
      if (w.points.length === 0) return [["points"], "expected at least one [step, value] point"];
      for (let i = 0; i < w.points.length; i++) {
        const [s, v] = w.points[i];
        if (!finite(s)) return [["points", i, 0], "expected a finite number"];
        if (!finite(v)) return [["points", i, 1], "expected a finite number"];
        if (i > 0 && !(s > w.points[i - 1][0])) return [["points", i, 0], "steps must strictly increase"];
      }
      return null;
    case "product":
      for (let i = 0; i < w.factors.length; i++) {
        const p = weightProblem(w.factors[i]);
        if (p) return [["factors", i, ...p[0]], p[1]];
      }
      return null;
    default:
      return w satisfies never;
  }
};

/** Semantic problem of an aggregation, or null. */
export const aggProblem = (a: Agg): Problem | null =>
  typeof a === "string" || (Number.isInteger(a.maxLen) && a.maxLen >= 1)
    ? null
    : [["maxLen"], `expected a positive integer, got ${a.maxLen}`];

/** Semantic problem of a term's numeric fields, or null. */
export const termProblem = (t: Term): Problem | null => {
  const agg = aggProblem(t.agg);
  if (agg) return [["agg", ...agg[0]], agg[1]];
  if (t.kind !== "pg") return null;
  if (!finite(t.clipLow) || t.clipLow < 0 || t.clipLow >= 1) {
    return [["clipLow"], `expected a number in [0, 1), got ${t.clipLow}`];
  }
  if (!finite(t.clipHigh) || t.clipHigh < 0) {
    return [["clipHigh"], `expected a number >= 0, got ${t.clipHigh}`];
  }
  if (t.dualClip !== null && (!finite(t.dualClip) || t.dualClip <= 1)) {
    return [["dualClip"], `expected null or a number > 1, got ${t.dualClip}`];
  }
  if (t.tis !== null && (!finite(t.tis.cap) || t.tis.cap <= 0)) {
    return [["tis", "cap"], `expected a number > 0, got ${t.tis.cap}`];
  }
  return null;
};

/** Problem of a phase list's shape (counts and `until` values), or null. */
export const phasesProblem = (ps: readonly { readonly until?: number | null }[]): Problem | null => {
  if (ps.length === 0) return [[], "expected at least one phase"];
  let prev = 0;
  for (let i = 0; i < ps.length; i++) {
    const u = ps[i].until ?? null;
    if (i === ps.length - 1) {
      if (u !== null) return [[i, "until"], "the last phase has no `until` (it runs to the end)"];
    } else if (u === null || !Number.isInteger(u) || u <= prev) {
      return [[i, "until"], `expected an integer step > ${prev} (1-based, increasing), got ${u}`];
    } else prev = u;
  }
  return null;
};

/** Render a problem path as a field: `terms[2].policy`, `phases[1].until`. */
export const fieldOf = (path: readonly (string | number)[]): string =>
  path.reduce<string>(
    (acc, k) => (typeof k === "number" || /^\d+$/.test(k) ? `${acc}[${k}]` : acc === "" ? k : `${acc}.${k}`),
    "",
  ) || "(root)";

const checked = <A>(field: string, value: A, problem: (a: A) => Problem | null): A => {
  const p = problem(value);
  if (p) {
    const f = fieldOf([field, ...p[0]]);
    throw new ConfigError({ source: "objective", field: f, message: `objective: ${f}: ${p[1]}` });
  }
  return value;
};

// ---------------------------------------------------------------------------------------------------------------
// Algebra

/** The empty objective: loss 0, no readouts. */
export const zero: Objective = { terms: [] };

/** Sum of objectives: concatenation of the term lists (associative, `zero` is the identity, structurally). */
export const SemigroupObjective: Semigroup<Objective> = {
  concat: (
    a,
    b,
  ) => (a.terms.length === 0 ? b : b.terms.length === 0 ? a : { terms: [...a.terms, ...b.terms] }),
};

/** A monoid of objectives (fp-ts's Monoid<Objective>, by structure): an associative `concat` and its identity. */
export interface ObjectiveMonoid {
  /** a + b: the terms of a, then those of b. */
  readonly concat: (a: Objective, b: Objective) => Objective;
  /** The identity: `zero`, no terms. */
  readonly empty: Objective;
}

/** The Monoid of objectives under +, with `zero`. */
export const MonoidObjective: ObjectiveMonoid = { ...SemigroupObjective, empty: zero };

/** Sum of any number of objectives. */
export const sum = (...os: readonly Objective[]): Objective => concatAll(MonoidObjective)(os);

/**
 * `scale(w)(o)`: multiply every term's weight by w (distributes into the sum; `scale(0)` gives `zero`; a term
 * whose weight becomes exactly 0 is dropped).
 */
export const scale = (w: Weight): (o: Objective) => Objective => (o: Objective): Objective => {
  checked("weight", w, weightProblem);
  if (w === 0) return zero;
  if (w === 1) return o;
  const terms: Node[] = [];
  for (const n of o.terms) {
    const nw = mulWeight(w, n.weight);
    if (nw !== 0) terms.push({ ...n, weight: nw });
  }
  return { terms };
};

/**
 * A phase schedule by 1-based absolute step: phase i is active for until_{i-1} < step <= until_i; the last phase
 * (no `until`) for every later step. `until` values must be increasing integers >= 1 (ConfigError otherwise).
 */
export const phases = (
  ps: readonly { readonly until?: number; readonly objective: Objective }[],
): Objective => {
  checked("phases", ps, phasesProblem);
  return {
    terms: [{
      weight: 1,
      kind: "phases",
      phases: ps.map((p, i) => ({ until: i === ps.length - 1 ? null : p.until!, objective: p.objective })),
    }],
  };
};

/** The index of the phase active at a 1-based step: the first with step <= until, else the last. */
export const phaseAt = (ps: readonly Phase[], step: number): number => {
  for (let i = 0; i < ps.length - 1; i++) if (step <= ps[i].until!) return i;
  return ps.length - 1;
};

/** A term in force at a step with its weight evaluated: the normal form interpreters consume. */
export interface ActiveTerm {
  /** The weight at the step, nested phase and scale factors multiplied in (never 0). */
  readonly weight: number;
  /** The term itself. */
  readonly term: Term;
}

const stripWeight = (n: Node): Term | PhasesTerm => {
  const { weight: _w, ...rest } = n;
  return rest as Term | PhasesTerm;
};

/**
 * The flat list of weighted terms in force at a 1-based integer step (phases resolved, weights evaluated and
 * multiplied down nested phases, terms of weight exactly 0 dropped), in tree order.
 */
export const activeAt = (o: Objective, step: number): ActiveTerm[] => {
  if (!Number.isInteger(step) || step < 1) {
    throw new ConfigError({
      source: "objective",
      field: "step",
      message: `step must be an integer >= 1, got ${step}`,
    });
  }
  const out: ActiveTerm[] = [];
  const go = (obj: Objective, factor: number) => {
    for (const n of obj.terms) {
      const w = factor * weightAt(n.weight, step);
      if (w === 0) continue;
      const t = stripWeight(n);
      if (t.kind === "phases") go(t.phases[phaseAt(t.phases, step)].objective, w);
      else out.push({ weight: w, term: t });
    }
  };
  go(o, 1);
  return out;
};

// ---------------------------------------------------------------------------------------------------------------
// Constructors a researcher writes

const single = (weight: Weight, t: Term): Objective => ({
  terms: [{ weight, ...checked("term", t, termProblem) } as Node],
});

/** Options of a clipped-surrogate term (all optional; defaults: 0.2/0.2, no dual clip, token ratio, token-mean). */
export interface PgOptions {
  /** PgTerm.clipLow (default 0.2). */
  readonly clipLow?: number;
  /** PgTerm.clipHigh (default 0.2). */
  readonly clipHigh?: number;
  /** PgTerm.dualClip (default null: none). */
  readonly dualClip?: number | null;
  /** PgTerm.ratio (default `token`). */
  readonly ratio?: "token" | "sequence";
  /** PgTerm.agg (default `token-mean`). */
  readonly agg?: Agg;
  /** PgTerm.tis (default null: none). */
  readonly tis?: { readonly cap: number } | null;
}

/** The clipped surrogate term with weight 1 (see `PgTerm`). */
export const pg = (policy: InternalPolicy, o: PgOptions = {}): Objective =>
  single(1, {
    kind: "pg",
    policy,
    clipLow: o.clipLow ?? 0.2,
    clipHigh: o.clipHigh ?? 0.2,
    dualClip: o.dualClip ?? null,
    ratio: o.ratio ?? "token",
    agg: o.agg ?? "token-mean",
    tis: o.tis ?? null,
  });

/** GRPO on a policy: clipped surrogate, token ratio, clip 0.2/0.2, token-mean (the BuPO reference settings). */
export const grpo = (policy: InternalPolicy = final, o: PgOptions = {}): Objective => pg(policy, o);

/** GSPO: sequence-level ratio, seq-mean-token-mean, clip 3e-4/4e-4 unless given. */
export const gspo = (policy: InternalPolicy = final, o: PgOptions = {}): Objective =>
  pg(policy, { clipLow: 3e-4, clipHigh: 4e-4, agg: "seq-mean-token-mean", ...o, ratio: "sequence" });

/**
 * BuPO: GRPO on the internal layer policy `layer` (0-based index, or any internal policy) for steps 1..until,
 * then GRPO on the final policy. `norm` picks the readout of `layer(k)` (default raw, the paper's convention).
 */
export const bupo = (
  o:
    & { readonly layer: number | InternalPolicy; readonly until: number; readonly norm?: "raw" | "normed" }
    & PgOptions,
): Objective => {
  const { layer: k, until, norm, ...pgo } = o;
  const internal = typeof k === "number" ? layerPolicy(k, norm ?? "raw") : k;
  return phases([{ until, objective: grpo(internal, pgo) }, { objective: grpo(final, pgo) }]);
};

/** The (positive) entropy term with weight 1. Adding it to a loss LOWERS entropy; see `entropyBonus`. */
export const entropy = (policy: InternalPolicy = final, agg: Agg = "token-mean"): Objective =>
  single(1, { kind: "entropy", policy, agg });

/** Entropy bonus: `scale(-coef)(entropy(policy))`, so minimizing the loss RAISES entropy for coef > 0. */
export const entropyBonus = (policy: InternalPolicy, coef: Weight, agg: Agg = "token-mean"): Objective =>
  scale(mulWeight(-1, coef))(entropy(policy, agg));

/** KL to the reference model (a penalty: coef > 0), estimator k3 and token-mean unless given. */
export const klToRef = (
  policy: InternalPolicy = final,
  o: { readonly estimator?: KlEstimator; readonly agg?: Agg; readonly coef?: Weight } = {},
): Objective =>
  scale(o.coef ?? 1)(
    single(1, { kind: "kl", policy, estimator: o.estimator ?? "k3", agg: o.agg ?? "token-mean" }),
  );

/** Negative log-likelihood of the batch tokens under a policy (supervised steps). */
export const nll = (policy: InternalPolicy = final, agg: Agg = "token-mean"): Objective =>
  single(1, { kind: "nll", policy, agg });

/** Full-vocabulary KL(pi_from || pi_to) per token, weight 1. */
export const klPolicies = (from: InternalPolicy, to: InternalPolicy, agg: Agg = "token-mean"): Objective =>
  single(1, { kind: "klPolicies", from, to, agg });

/**
 * Self-distillation of a lower internal policy towards an upper one: KL(pi_upper || pi_lower) (forward KL,
 * teacher first). Whether the teacher side is detached is the readout's business, not the objective's.
 */
export const selfDistill = (
  lower: InternalPolicy,
  upper: InternalPolicy = final,
  agg: Agg = "token-mean",
): Objective => klPolicies(upper, lower, agg);

// ---------------------------------------------------------------------------------------------------------------
// Show and equality

/** Stable one-line text of a weight: `0.5`, `linear(1,0;10..100)`, `piecewise(0:1,100:0)`, `(2 * linear(...))`. */
export const showWeight = (w: Weight): string => {
  if (typeof w === "number") return String(w);
  switch (w.kind) {
    case "linear":
      return `linear(${w.from},${w.to};${w.start}..${w.end})`;
    case "piecewise":
      return `piecewise(${w.points.map(([s, v]) => `${s}:${v}`).join(",")})`;
    case "product":
      return `(${w.factors.map(showWeight).join(" * ")})`;
    default:
      return w satisfies never;
  }
};

/** Stable text of an aggregation. */
export const showAgg = (a: Agg): string => (typeof a === "string" ? a : `${a.kind}(${a.maxLen})`);

/** Stable one-line text of a term (without weight). */
export const showTerm = (t: Term): string => {
  switch (t.kind) {
    case "pg": {
      const extra = [
        t.dualClip === null ? "" : `, dualClip=${t.dualClip}`,
        t.tis === null ? "" : `, tis=${t.tis.cap}`,
      ].join("");
      return `pg(${showPolicy(t.policy)}, clip=${t.clipLow}/${t.clipHigh}${extra}, ratio=${t.ratio}, agg=${
        showAgg(t.agg)
      })`;
    }
    case "kl":
      return `kl(${showPolicy(t.policy)}, ${t.estimator}, agg=${showAgg(t.agg)})`;
    case "entropy":
    case "nll":
      return `${t.kind}(${showPolicy(t.policy)}, agg=${showAgg(t.agg)})`;
    case "klPolicies":
      return `klPolicies(${showPolicy(t.from)} || ${showPolicy(t.to)}, agg=${showAgg(t.agg)})`;
    default:
      return t satisfies never;
  }
};

/** `weight * term` on one line (the form used in metrics). */
export const showActive = (a: ActiveTerm): string => `${a.weight} * ${showTerm(a.term)}`;

/**
 * The term tree, multi-line and stable (logs, checkpoints): one `+ weight * term` line per summand, phases as
 * indented `steps a..b:` blocks; `zero` prints as `0`.
 */
export const show = (o: Objective): string => {
  const lines: string[] = [];
  const go = (obj: Objective, indent: string) => {
    if (obj.terms.length === 0) lines.push(`${indent}0`);
    for (const n of obj.terms) {
      const t = stripWeight(n);
      if (t.kind !== "phases") {
        lines.push(`${indent}+ ${showWeight(n.weight)} * ${showTerm(t)}`);
        continue;
      }
      lines.push(`${indent}+ ${showWeight(n.weight)} * phases`);
      let from = 1;
      for (const p of t.phases) {
        lines.push(`${indent}    steps ${from}..${p.until ?? ""}:`);
        go(p.objective, indent + "      ");
        if (p.until !== null) from = p.until + 1;
      }
    }
  };
  go(o, "");
  return lines.join("\n");
};

/** JSON text with object keys sorted: a canonical form for structural equality. */
export const canonicalJson = (x: unknown): string =>
  JSON.stringify(
    x,
    (_k, v) =>
      v !== null && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]))
        : v,
  );

/** Structural equality of objectives (same tree, same numbers). */
export const EqObjective: Eq<Objective> = { equals: (a, b) => canonicalJson(a) === canonicalJson(b) };
