/** Random objectives for the property tests of the loss algebra (laws, reference, GPU lowering). */
import fc from "fast-check";
import type { InternalPolicy } from "../policies/internal.ts";
import {
  type Agg,
  entropy,
  klPolicies,
  klToRef,
  nll,
  type Objective,
  pg,
  scale,
  seqMeanTokenSumNorm,
  sum,
  type Weight,
} from "../objectives/objective.ts";

/** Every aggregation, the Dr. GRPO constant from 1 to 8. */
export const aggArb: fc.Arbitrary<Agg> = fc.oneof(
  fc.constantFrom<Agg>("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"),
  fc.integer({ min: 1, max: 8 }).map(seqMeanTokenSumNorm),
);

/** One term over `policies`: a clipped surrogate (clip-low drawn from `clipLows`), KL to ref, entropy, NLL, KL. */
export const leafArb = (
  policies: readonly InternalPolicy[],
  clipLows: readonly number[],
): fc.Arbitrary<Objective> => {
  const policyArb = fc.constantFrom(...policies);
  const pgArb = fc.record({
    policy: policyArb,
    clipLow: fc.constantFrom(...clipLows),
    clipHigh: fc.constantFrom(0, 0.2, 0.28),
    dualClip: fc.constantFrom(null, 1.5, 3),
    ratio: fc.constantFrom("token" as const, "sequence" as const),
    agg: aggArb,
    tis: fc.constantFrom(null, { cap: 1.2 }, { cap: 5 }),
  }).map(({ policy, ...o }) => pg(policy, o));
  return fc.oneof(
    pgArb,
    fc.tuple(policyArb, fc.constantFrom("k1" as const, "k2" as const, "k3" as const), aggArb)
      .map(([p, estimator, agg]) => klToRef(p, { estimator, agg })),
    fc.tuple(policyArb, aggArb).map(([p, a]) => entropy(p, a)),
    fc.tuple(policyArb, aggArb).map(([p, a]) => nll(p, a)),
    fc.tuple(policyArb, policyArb, aggArb).map(([p, q, a]) => klPolicies(p, q, a)),
  );
};

/** Term trees up to depth 3: leaves, scaled subtrees, sums, and the phases `phased` builds from subtrees. */
export const objectiveArb = (
  leaf: fc.Arbitrary<Objective>,
  weight: fc.Arbitrary<Weight>,
  phased: (tree: fc.Arbitrary<Objective>) => fc.Arbitrary<Objective>,
): fc.Arbitrary<Objective> =>
  fc.letrec<{ objective: Objective }>((tie) => ({
    objective: fc.oneof(
      { depthSize: "small", maxDepth: 3 },
      leaf,
      fc.tuple(weight, tie("objective")).map(([w, o]) => scale(w)(o)),
      fc.array(tie("objective"), { maxLength: 3 }).map((os) => sum(...os)),
      phased(tie("objective")),
    ),
  })).objective;
