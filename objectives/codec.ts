/** io-ts JSON codec of objectives: exact round trips, and ConfigErrors that name the JSON path of a problem. */
import * as E from "fp-ts/Either.js";
import * as t from "io-ts";
import type { JsonCodec } from "../core/codec.ts";
import { ConfigError, showValue } from "../core/errors.ts";
import { type InternalPolicy, InternalPolicyCodec } from "../policies/internal.ts";
import {
  type Agg,
  canonicalJson,
  fieldOf,
  type KlEstimator,
  type Node,
  type Objective,
  type Phase,
  phasesProblem,
  type Problem,
  type Term,
  termProblem,
  type Weight,
  weightProblem,
} from "./objective.ts";

/** A decoding failure at a context (thrown inside `validate`, turned into an io-ts failure there). */
class Bad {
  constructor(readonly u: unknown, readonly c: t.Context, readonly message: string) {}
}

const bad = (u: unknown, c: t.Context, message: string): never => {
  throw new Bad(u, c, message);
};

const at = (c: t.Context, key: string | number, u: unknown): t.Context =>
  t.appendContext(c, String(key), t.unknown, u);

const got = (u: unknown): string => showValue(u, 60);

/**
 * The deepest context decoding follows (about 100 levels of nested weights or phases): deeper JSON is an
 * error naming its path, never a stack overflow.
 */
const MAX_CONTEXT = 200;

const depth = (u: unknown, c: t.Context): void => {
  if (c.length > MAX_CONTEXT) bad(u, c, `nested too deeply (more than ${MAX_CONTEXT / 2} levels)`);
};

const finite = (u: unknown): u is number => typeof u === "number" && Number.isFinite(u);

const record = (u: unknown, c: t.Context, what: string): Record<string, unknown> => {
  depth(u, c);
  if (u === null || typeof u !== "object" || Array.isArray(u)) {
    return bad(u, c, `expected ${what}, got ${got(u)}`);
  }
  // A null-prototype copy of the own fields: every read below sees own fields only.
  return Object.assign(Object.create(null), Object.fromEntries(Object.entries(u))) as Record<string, unknown>;
};

const array = (u: unknown, c: t.Context, what: string): readonly unknown[] => {
  depth(u, c);
  return Array.isArray(u) ? u : bad(u, c, `expected ${what}, got ${got(u)}`);
};

const onlyKeys = (o: Record<string, unknown>, c: t.Context, allowed: readonly string[]): void => {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) {
      bad(o[k], at(c, k, o[k]), `unknown field "${k}" (expected one of ${allowed.join(", ")})`);
    }
  }
};

const num = (o: Record<string, unknown>, key: string, c: t.Context): number =>
  finite(o[key]) ? o[key] : bad(o[key], at(c, key, o[key]), `expected a finite number, got ${got(o[key])}`);

const oneOf = <A extends string>(u: unknown, c: t.Context, options: readonly A[], what: string): A =>
  options.includes(u as A) ? (u as A) : bad(
    u,
    c,
    u === undefined
      ? `missing ${what} (expected one of ${options.join(", ")})`
      : `unknown ${what} ${got(u)} (expected one of ${options.join(", ")})`,
  );

/** Report a semantic problem found by objective.ts's checks under context c. */
const problem = (p: Problem | null, u: unknown, c: t.Context): void => {
  if (p) bad(u, p[0].reduce<t.Context>((cc, k) => at(cc, k, u), c), p[1]);
};

// ---------------------------------------------------------------------------------------------------------------
// Pieces

const weight = (u: unknown, c: t.Context): Weight => {
  if (typeof u === "number") {
    problem(weightProblem(u), u, c);
    return u;
  }
  const o = record(u, c, `a finite number or a {kind: "linear" | "piecewise" | "product"} weight`);
  const kind = oneOf(
    o.kind,
    at(c, "kind", o.kind),
    ["linear", "piecewise", "product"] as const,
    "weight kind",
  );
  let w: Weight;
  switch (kind) {
    case "linear":
      onlyKeys(o, c, ["kind", "from", "to", "start", "end"]);
      w = {
        kind,
        from: num(o, "from", c),
        to: num(o, "to", c),
        start: num(o, "start", c),
        end: num(o, "end", c),
      };
      break;
    case "piecewise": {
      onlyKeys(o, c, ["kind", "points"]);
      const pc = at(c, "points", o.points);
      const points = array(o.points, pc, "an array of [step, value] points").map((p, i) => {
        const ps = array(p, at(pc, i, p), "a [step, value] pair");
        if (ps.length !== 2) bad(p, at(pc, i, p), `expected a [step, value] pair, got ${got(p)}`);
        const [s, v] = ps;
        if (!finite(s)) bad(s, at(at(pc, i, p), 0, s), `expected a finite number, got ${got(s)}`);
        if (!finite(v)) bad(v, at(at(pc, i, p), 1, v), `expected a finite number, got ${got(v)}`);
        return [s as number, v as number] as const;
      });
      w = { kind, points };
      break;
    }
    case "product": {
      onlyKeys(o, c, ["kind", "factors"]);
      const fc = at(c, "factors", o.factors);
      w = {
        kind,
        factors: array(o.factors, fc, "an array of weights").map((f, i) => weight(f, at(fc, i, f))),
      };
      break;
    }
    default:
      return kind satisfies never;
  }
  problem(weightProblem(w), u, c);
  return w;
};

const AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] as const;

const agg = (u: unknown, c: t.Context): Agg => {
  if (u === undefined) return "token-mean";
  if (typeof u === "string") {
    const a = oneOf(u, c, AGGS, "aggregation");
    return a === "seq-mean-token-sum-norm"
      ? bad(
        u,
        c,
        `"seq-mean-token-sum-norm" needs a maxLen: {"kind": "seq-mean-token-sum-norm", "maxLen": 4096}`,
      )
      : a;
  }
  const o = record(u, c, "an aggregation name or {kind, maxLen}");
  oneOf(o.kind, at(c, "kind", o.kind), ["seq-mean-token-sum-norm"] as const, "aggregation");
  onlyKeys(o, c, ["kind", "maxLen"]);
  return { kind: "seq-mean-token-sum-norm", maxLen: num(o, "maxLen", c) };
};

const policy = (u: unknown, c: t.Context): InternalPolicy => {
  const o = record(u, c, "an internal policy {kind: final | layer | attn | ffn, layer, norm}");
  const kind = oneOf(
    o.kind,
    at(c, "kind", o.kind),
    ["final", "layer", "attn", "ffn"] as const,
    "policy kind",
  );
  let p: unknown;
  if (kind === "final") {
    onlyKeys(o, c, ["kind"]);
    p = { kind };
  } else {
    onlyKeys(o, c, ["kind", "layer", "norm"]);
    if (!Number.isInteger(o.layer) || (o.layer as number) < 0) {
      bad(
        o.layer,
        at(c, "layer", o.layer),
        `expected a 0-based layer index (integer >= 0), got ${got(o.layer)}`,
      );
    }
    const norm = o.norm === undefined
      ? "raw"
      : oneOf(o.norm, at(c, "norm", o.norm), ["raw", "normed"], "norm");
    p = { kind, layer: o.layer, norm };
  }
  const d = InternalPolicyCodec.decode(p);
  return E.isRight(d) ? d.right : bad(u, c, `expected an internal policy, got ${got(u)}`);
};

const TERM_KINDS = ["pg", "kl", "entropy", "nll", "klPolicies", "phases"] as const;

const term = (u: unknown, c: t.Context): Node => {
  const o = record(u, c, "a term object {kind, weight, ...}");
  const w = o.weight === undefined ? 1 : weight(o.weight, at(c, "weight", o.weight));
  const kc = at(c, "kind", o.kind);
  if (typeof o.kind !== "string" || !(TERM_KINDS as readonly string[]).includes(o.kind)) {
    return bad(o.kind, kc, `unknown term ${got(o.kind)} (expected one of ${TERM_KINDS.join(", ")})`);
  }
  const kind = o.kind as typeof TERM_KINDS[number];
  const field = <A>(key: string, f: (u: unknown, c: t.Context) => A): A => f(o[key], at(c, key, o[key]));
  const ag = () => field("agg", agg);
  const pol = (key = "policy") => field(key, policy);
  let tm: Term;
  switch (kind) {
    case "phases": {
      onlyKeys(o, c, ["kind", "weight", "phases"]);
      const pc = at(c, "phases", o.phases);
      const ps: Phase[] = array(o.phases, pc, "an array of phases").map((p, i) => {
        const ic = at(pc, i, p), po = record(p, ic, "a phase {until, objective}");
        onlyKeys(po, ic, ["until", "objective"]);
        if (po.until !== undefined && po.until !== null && !finite(po.until)) {
          bad(po.until, at(ic, "until", po.until), `expected an integer step or null, got ${got(po.until)}`);
        }
        return {
          until: (po.until ?? null) as number | null,
          objective: objective(po.objective, at(ic, "objective", po.objective)),
        };
      });
      problem(phasesProblem(ps), o.phases, pc);
      return { weight: w, kind, phases: ps };
    }
    case "pg": {
      onlyKeys(o, c, ["kind", "weight", "policy", "clipLow", "clipHigh", "dualClip", "ratio", "agg", "tis"]);
      const opt = (key: string, dflt: number) => (o[key] === undefined ? dflt : num(o, key, c));
      let tis: { cap: number } | null = null;
      if (o.tis !== undefined && o.tis !== null) {
        const tc = at(c, "tis", o.tis), to = record(o.tis, tc, "null or {cap}");
        onlyKeys(to, tc, ["cap"]);
        tis = { cap: num(to, "cap", tc) };
      }
      tm = {
        kind,
        policy: pol(),
        clipLow: opt("clipLow", 0.2),
        clipHigh: opt("clipHigh", 0.2),
        dualClip: o.dualClip === undefined || o.dualClip === null ? null : num(o, "dualClip", c),
        ratio: o.ratio === undefined
          ? "token"
          : oneOf(o.ratio, at(c, "ratio", o.ratio), ["token", "sequence"], "ratio"),
        agg: ag(),
        tis,
      };
      break;
    }
    case "kl": {
      onlyKeys(o, c, ["kind", "weight", "policy", "estimator", "agg"]);
      const estimator: KlEstimator = o.estimator === undefined
        ? "k3"
        : oneOf(o.estimator, at(c, "estimator", o.estimator), ["k1", "k2", "k3"] as const, "estimator");
      tm = { kind, policy: pol(), estimator, agg: ag() };
      break;
    }
    case "entropy":
    case "nll":
      onlyKeys(o, c, ["kind", "weight", "policy", "agg"]);
      tm = { kind, policy: pol(), agg: ag() };
      break;
    case "klPolicies":
      onlyKeys(o, c, ["kind", "weight", "from", "to", "agg"]);
      tm = { kind, from: pol("from"), to: pol("to"), agg: ag() };
      break;
    default:
      return kind satisfies never;
  }
  problem(termProblem(tm), u, c);
  return { weight: w, ...tm } as Node;
};

const objective = (u: unknown, c: t.Context): Objective => {
  const o = record(u, c, "an objective {terms: [...]}");
  onlyKeys(o, c, ["terms"]);
  const tc = at(c, "terms", o.terms);
  return { terms: array(o.terms, tc, "an array of terms").map((x, i) => term(x, at(tc, i, x))) };
};

// ---------------------------------------------------------------------------------------------------------------
// The codec

const validate = (u: unknown, c: t.Context): t.Validation<Objective> => {
  try {
    return t.success(objective(u, c));
  } catch (e) {
    if (e instanceof Bad) return t.failure(e.u, e.c, e.message);
    throw e;
  }
};

/** The io-ts Type behind ObjectiveCodec (its errors carry io-ts contexts, which decodeObjective reads). */
const objectiveType: t.Type<Objective, unknown, unknown> = new t.Type<Objective, unknown, unknown>(
  "Objective",
  (u): u is Objective => {
    const d = validate(u, [{ key: "", type: t.unknown, actual: u }]);
    return E.isRight(d) && canonicalJson(d.right) === canonicalJson(u);
  },
  validate,
  (o) => o,
);

/**
 * The codec of an objective (an io-ts Type underneath). Encoding is the identity (an objective is plain JSON
 * data); decoding checks every field, fills documented defaults for omitted optional fields (weight 1, pg clip
 * 0.2/0.2, no dual clip, token ratio, token-mean, no tis; kl estimator k3; policy norm raw) and rejects unknown
 * fields, so decode(JSON.parse(JSON.stringify(o))) equals o exactly; `is` accepts canonical objectives only.
 */
export const ObjectiveCodec: JsonCodec<Objective> = objectiveType;

/** The JSON path of an io-ts error's context (`terms[2].kind`; `(root)` for the value itself). */
export const contextPath = (c: t.Context): string => fieldOf(c.slice(1).map((e) => e.key));

/**
 * Decode an objective from parsed JSON. Throws ConfigError { source, field, message } whose field is the JSON
 * path of the first problem, e.g. `terms[2].kind` with message `<source>: terms[2].kind: unknown term "foo" ...`.
 */
export const decodeObjective = (source: string, json: unknown): Objective => {
  const d = objectiveType.decode(json);
  if (E.isRight(d)) return d.right;
  const e = d.left[0];
  const field = contextPath(e.context);
  throw new ConfigError({ source, field, message: `${source}: ${field}: ${e.message ?? "invalid value"}` });
};

/** The JSON text of an objective (what checkpoints store). */
export const objectiveToJson = (o: Objective): string => JSON.stringify(objectiveType.encode(o));

/** Parse and decode JSON text; a syntax error is a ConfigError on `(root)`. */
export const objectiveFromJson = (source: string, text: string): Objective => {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError({
      source,
      field: "(root)",
      message: `${source}: (root): invalid JSON: ${(e as Error).message}`,
    });
  }
  return decodeObjective(source, json);
};
