/** Objective algebra laws, structurally and semantically (same loss and grads), finite differences, JSON round trip. */
import fc from "fast-check";
import { leafArb, objectiveArb } from "./objective_arbs.ts";
import { attn, ffn, final, type InternalPolicy, layer, showPolicy } from "../policies/internal.ts";
import {
  activeAt,
  canonicalJson,
  EqObjective,
  linear,
  MonoidObjective,
  nll,
  type Objective,
  phaseAt,
  phases,
  piecewise,
  scale,
  show,
  sum,
  type Weight,
  weightAt,
  zero,
} from "../objectives/objective.ts";
import { decodeObjective, objectiveToJson } from "../objectives/codec.ts";
import {
  evaluate,
  type Evaluation,
  type Grads,
  type Readouts,
  type ReferenceBatch,
} from "../objectives/reference.ts";
import { klKey } from "../objectives/readouts.ts";
import { closeness } from "./util.ts";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

const assert = (ok: boolean, msg: string): void => {
  if (!ok) throw new Error(msg);
};

// Semantic laws compare sums taken in different orders and weights multiplied in different orders (f64):
// 1e-10 relative + 1e-10 absolute is ~1e6 ulps of headroom, far below any real mistake (O(1e-2) or more).
const TOL = 1e-10;
const { close } = closeness(TOL);

/** Grads maps compared entrywise; an absent entry counts as zeros. */
const gradsClose = (a: Grads, b: Grads, what: string): void => {
  for (const kind of ["logp", "entropy", "kl"] as const) {
    for (const key of new Set([...a[kind].keys(), ...b[kind].keys()])) {
      const x = a[kind].get(key), y = b[kind].get(key);
      const n = (x ?? y)!.length;
      for (let i = 0; i < n; i++) close(x?.[i] ?? 0, y?.[i] ?? 0, `${what}: grad ${kind}[${key}][${i}]`);
    }
  }
};

const sameEval = (a: Evaluation, b: Evaluation, what: string): void => {
  close(a.loss, b.loss, `${what}: loss`);
  gradsClose(a.grads, b.grads, what);
};

const addGrads = (a: Grads, b: Grads): Grads => {
  const out: Grads = { logp: new Map(), entropy: new Map(), kl: new Map() };
  for (const kind of ["logp", "entropy", "kl"] as const) {
    for (const key of new Set([...a[kind].keys(), ...b[kind].keys()])) {
      const x = a[kind].get(key), y = b[kind].get(key), n = (x ?? y)!.length;
      out[kind].set(key, Float64Array.from({ length: n }, (_, i) => (x?.[i] ?? 0) + (y?.[i] ?? 0)));
    }
  }
  return out;
};

const scaleGrads = (w: number, a: Grads): Grads => {
  const out: Grads = { logp: new Map(), entropy: new Map(), kl: new Map() };
  for (const kind of ["logp", "entropy", "kl"] as const) {
    for (const [key, x] of a[kind]) out[kind].set(key, x.map((v) => w * v));
  }
  return out;
};

/** mulberry32: a small deterministic PRNG in [0, 1). */
const rng = (seed: number) => {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

const POLICIES: InternalPolicy[] = [final, layer(0), layer(3, "normed"), attn(1), ffn(2)];

/**
 * A random batch with readouts for every policy and every ordered policy pair. Old log-probs differ from the new
 * ones by up to +-0.5 in log space, so ratios fall on both sides of the 0.2 clip boundaries; 20% of advantages
 * are exactly 0; 30% of positions are masked out and hold NaN (never read).
 */
const randomProblem = (B: number, T: number, seed: number): { batch: ReferenceBatch; readouts: Readouts } => {
  const u = rng(seed), n = B * T;
  const mask = Float64Array.from({ length: n }, () => (u() < 0.7 ? 1 : 0));
  const fill = (f: () => number) => Float64Array.from({ length: n }, (_, i) => (mask[i] ? f() : NaN));
  const logp = new Map<string, Float64Array>(), old = new Map<string, Float64Array>();
  const ref = new Map<string, Float64Array>(), ent = new Map<string, Float64Array>();
  const kl = new Map<string, Float64Array>();
  for (const p of POLICIES) {
    const k = showPolicy(p);
    const lp = fill(() => -0.01 - 4 * u());
    logp.set(k, lp);
    old.set(k, lp.map((x) => x + (u() - 0.5)));
    ref.set(k, lp.map((x) => x + (u() - 0.5)));
    ent.set(k, fill(() => 3 * u()));
    for (const q of POLICIES) kl.set(klKey(p, q), fill(() => 2 * u()));
  }
  const advantages = Float64Array.from({ length: B }, () => (u() < 0.2 ? 0 : 4 * u() - 2));
  const behaviour = old.get("final")!.map((x) => x + (u() - 0.5));
  return { batch: { B, T, mask, advantages, behaviour, old, ref }, readouts: { logp, entropy: ent, kl } };
};

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries

const num = (min: number, max: number) =>
  fc.double({ min, max, noNaN: true, noDefaultInfinity: true }).map((x) => x + 0);
const weightArb: fc.Arbitrary<Weight> = fc.oneof(
  num(-3, 3),
  fc.tuple(num(-3, 3), num(-3, 3), fc.integer({ min: 0, max: 20 }), fc.integer({ min: 1, max: 20 }))
    .map(([a, b, s, d]) => linear(a, b, s, s + d)),
  fc.uniqueArray(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 4 })
    .chain((ss) =>
      fc.tuple(fc.constant(ss.sort((x, y) => x - y)), fc.array(num(-3, 3), { minLength: 4, maxLength: 4 }))
    )
    .map(([ss, vs]) => piecewise(ss.map((s, i) => [s, vs[i]] as const))),
);
const objArb = objectiveArb(leafArb(POLICIES, [0, 0.1, 0.2]), weightArb, (tree) =>
  fc.tuple(
    fc.uniqueArray(fc.integer({ min: 1, max: 30 }), { maxLength: 2 }),
    fc.array(tree, { minLength: 3, maxLength: 3 }),
  ).map(([us, os]) => {
    const until = us.sort((a, b) => a - b);
    return phases([...until.map((u, i) => ({ until: u, objective: os[i] })), {
      objective: os[until.length],
    }]);
  }));
const stepArb = fc.integer({ min: 1, max: 45 });
const problemArb = fc.record({
  B: fc.integer({ min: 1, max: 4 }),
  T: fc.integer({ min: 1, max: 6 }),
  seed: fc.nat(),
})
  .map(({ B, T, seed }) => randomProblem(B, T, seed));

const { concat, empty } = MonoidObjective;
const eqObj = (a: Objective, b: Objective, what: string) =>
  assert(EqObjective.equals(a, b), `${what}:\n${show(a)}\n---\n${show(b)}`);

// ---------------------------------------------------------------------------------------------------------------
// Structural laws (after normalization)

Deno.test("monoid laws hold structurally: associativity and identity", () => {
  fc.assert(
    fc.property(objArb, objArb, objArb, (a, b, c) => {
      eqObj(concat(concat(a, b), c), concat(a, concat(b, c)), "associativity");
      eqObj(concat(empty, a), a, "left identity");
      eqObj(concat(a, empty), a, "right identity");
      eqObj(sum(a, b, c), concat(concat(a, b), c), "sum = fold of concat");
    }),
    { numRuns: 200 },
  );
});

Deno.test("scale distributes over +, scale(0) is zero, scale(1) is the identity (structurally)", () => {
  fc.assert(
    fc.property(weightArb, objArb, objArb, (w, a, b) => {
      eqObj(scale(w)(concat(a, b)), concat(scale(w)(a), scale(w)(b)), "distributivity");
      eqObj(scale(0)(a), zero, "scale(0)");
      eqObj(scale(1)(a), a, "scale(1)");
      eqObj(scale(w)(zero), zero, "scale of zero");
    }),
    { numRuns: 200 },
  );
});

Deno.test("activeAt is a monoid homomorphism and scale multiplies the evaluated weights", () => {
  fc.assert(
    fc.property(weightArb, objArb, objArb, stepArb, (w, a, b, s) => {
      const flat = (xs: ReturnType<typeof activeAt>) => canonicalJson(xs);
      assert(
        flat(activeAt(concat(a, b), s)) === flat([...activeAt(a, s), ...activeAt(b, s)]),
        "activeAt(a+b)",
      );
      const scaled = activeAt(scale(w)(a), s), base = activeAt(a, s), ws = weightAt(w, s);
      const kept = base.filter((t) => ws * t.weight !== 0);
      // a term whose weight product underflows to 0 may be dropped on one side only; it contributes 0 either way
      if (scaled.length === kept.length) {
        scaled.forEach((t, i) => {
          close(t.weight, ws * kept[i].weight, "scaled weight");
          assert(canonicalJson(t.term) === canonicalJson(kept[i].term), "same term");
        });
      }
    }),
    { numRuns: 200 },
  );
});

Deno.test("phases: exactly one phase is active at every step, a pure function of the step", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { maxLength: 5 }),
      fc.integer({ min: 1, max: 80 }),
      (us, s) => {
        const until = us.sort((a, b) => a - b);
        const objs = [...until, null].map((_, i) => nll(POLICIES[i % POLICIES.length], "token-mean"));
        const o = phases([...until.map((u, i) => ({ until: u, objective: objs[i] })), {
          objective: objs[until.length],
        }]);
        const node = o.terms[0];
        assert(node.kind === "phases", "a phases node");
        if (node.kind !== "phases") return;
        const bounds = [0, ...until, Infinity];
        const active = node.phases.map((_, i) => bounds[i] < s && s <= bounds[i + 1]);
        assert(active.filter((x) => x).length === 1, `exactly one phase active at step ${s}`);
        const i = phaseAt(node.phases, s);
        assert(active[i] && phaseAt(node.phases, s) === i, `phaseAt(${s}) = ${i}`);
        assert(
          canonicalJson(activeAt(o, s)) === canonicalJson(activeAt(objs[i], s)),
          "activeAt resolves the phase",
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("JSON round trip of arbitrary objectives is exact (value, Eq and show)", () => {
  fc.assert(
    fc.property(objArb, (o) => {
      const back = decodeObjective("roundtrip", JSON.parse(objectiveToJson(o)));
      eqObj(back, o, "decode(encode(o))");
      assert(show(back) === show(o), "show survives the round trip");
      assert(objectiveToJson(back) === objectiveToJson(o), "same JSON text");
    }),
    { numRuns: 300 },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// Semantic laws (same loss and gradients on random batches)

Deno.test("monoid laws hold semantically: equal loss and grads on random batches", () => {
  fc.assert(
    fc.property(objArb, objArb, objArb, stepArb, problemArb, (a, b, c, s, { batch, readouts }) => {
      const ev = (o: Objective) => evaluate(o, s, batch, readouts);
      sameEval(ev(concat(concat(a, b), c)), ev(concat(a, concat(b, c))), "associativity");
      sameEval(ev(concat(empty, a)), ev(a), "left identity");
      sameEval(ev(concat(a, empty)), ev(a), "right identity");
    }),
    { numRuns: 100 },
  );
});

Deno.test("grad(a + b) = grad a + grad b and loss(a + b) = loss a + loss b", () => {
  fc.assert(
    fc.property(objArb, objArb, stepArb, problemArb, (a, b, s, { batch, readouts }) => {
      const ea = evaluate(a, s, batch, readouts), eb = evaluate(b, s, batch, readouts);
      const eab = evaluate(concat(a, b), s, batch, readouts);
      close(eab.loss, ea.loss + eb.loss, "loss");
      gradsClose(eab.grads, addGrads(ea.grads, eb.grads), "grad(a+b)");
    }),
    { numRuns: 100 },
  );
});

Deno.test("scale commutes with grad; scale distributes semantically; scale(0) has zero loss and grads", () => {
  fc.assert(
    fc.property(weightArb, objArb, objArb, stepArb, problemArb, (w, a, b, s, { batch, readouts }) => {
      const ev = (o: Objective) => evaluate(o, s, batch, readouts);
      const ea = ev(a), esa = ev(scale(w)(a)), ws = weightAt(w, s);
      close(esa.loss, ws * ea.loss, "loss(scale w a)");
      gradsClose(esa.grads, scaleGrads(ws, ea.grads), "grad(scale w a)");
      sameEval(ev(scale(w)(concat(a, b))), ev(concat(scale(w)(a), scale(w)(b))), "distributivity");
      const z = ev(scale(0)(a));
      assert(z.loss === 0, "scale(0) loss is 0");
      assert(z.grads.logp.size + z.grads.entropy.size + z.grads.kl.size === 0, "scale(0) reads no readout");
    }),
    { numRuns: 100 },
  );
});

Deno.test("token-mean over two concatenated batches = count-weighted mean of each", () => {
  fc.assert(
    fc.property(objArb, stepArb, problemArb, problemArb, (o, s, p1, p2) => {
      // restrict to token-mean terms: re-aggregate every active term with token-mean
      const terms = activeAt(o, s).map(({ weight, term }) => ({
        weight,
        ...term,
        agg: "token-mean" as const,
      }));
      const obj: Objective = { terms };
      if (p1.batch.T !== p2.batch.T) return; // concatenation along B needs equal padded lengths
      const cat = (x: Float64Array, y: Float64Array) => Float64Array.of(...x, ...y);
      const catMap = (x: ReadonlyMap<string, Float64Array>, y: ReadonlyMap<string, Float64Array>) =>
        new Map([...x].map(([k, v]) => [k, cat(v, y.get(k)!)]));
      const { batch: b1, readouts: r1 } = p1, { batch: b2, readouts: r2 } = p2;
      const batch: ReferenceBatch = {
        B: b1.B + b2.B,
        T: b1.T,
        mask: cat(b1.mask, b2.mask),
        advantages: cat(b1.advantages, b2.advantages),
        behaviour: cat(b1.behaviour, b2.behaviour),
        old: catMap(b1.old, b2.old),
        ref: catMap(b1.ref!, b2.ref!),
      };
      const readouts: Readouts = {
        logp: catMap(r1.logp, r2.logp),
        entropy: catMap(r1.entropy, r2.entropy),
        kl: catMap(r1.kl, r2.kl),
      };
      const count = (m: Float64Array) => m.reduce((a, x) => a + x, 0);
      const c1 = count(b1.mask), c2 = count(b2.mask);
      if (c1 + c2 === 0) return;
      // GSPO terms are per sequence, but token-mean still weights each sequence's loss by its token count
      const l = evaluate(obj, 1, batch, readouts).loss;
      const l1 = evaluate(obj, 1, b1, r1).loss, l2 = evaluate(obj, 1, b2, r2).loss;
      close(l, (c1 * l1 + c2 * l2) / (c1 + c2), "token-mean of the concatenation");
    }),
    { numRuns: 100 },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// Gradients against finite differences

Deno.test("every gradient equals a central finite difference of the loss (away from kinks)", () => {
  let checked = 0, skipped = 0;
  fc.assert(
    fc.property(objArb, stepArb, problemArb, fc.nat(), (o, s, { batch, readouts }, pick) => {
      const g = evaluate(o, s, batch, readouts).grads;
      const u = rng(pick);
      for (const kind of ["logp", "entropy", "kl"] as const) {
        for (const key of g[kind].keys()) {
          const x = readouts[kind].get(key)!;
          for (let trial = 0; trial < 3; trial++) {
            const i = Math.floor(u() * x.length);
            if (batch.mask[i] === 0) continue;
            const h = 1e-6, x0 = x[i];
            const f = (v: number) => {
              x[i] = v;
              const l = evaluate(o, s, batch, readouts).loss;
              x[i] = x0;
              return l;
            };
            const fp = f(x0 + h), fm = f(x0 - h), f0 = f(x0);
            const central = (fp - fm) / (2 * h), left = (f0 - fm) / h, right = (fp - f0) / h;
            // a kink (clip boundary) inside [x - h, x + h] shows as unequal one-sided slopes: skip that entry
            if (Math.abs(left - right) > 1e-4 * (1 + Math.abs(central))) {
              skipped++;
              continue;
            }
            const an = g[kind].get(key)![i];
            // FD error: truncation ~h^2 f''' plus rounding ~1e-16 |loss| / h: well under 1e-6
            assert(
              Math.abs(an - central) <= 1e-6 * (1 + Math.abs(an)),
              `${kind}[${key}][${i}]: analytic ${an}, finite difference ${central}\n${show(o)}`,
            );
            checked++;
          }
        }
      }
    }),
    { numRuns: 150 },
  );
  assert(
    checked > 200 && skipped < checked / 10,
    `checked ${checked} entries, skipped ${skipped} near kinks`,
  );
});
