/** What an objective reads at a step: the readouts, old and reference log-probs its active terms need. */
import { type InternalPolicy, showPolicy } from "../policies/internal.ts";
import { activeAt, type Objective } from "./objective.ts";

/** Key of a `kl(from, to)` readout: `final|layer(3)`. */
export const klKey = (from: InternalPolicy, to: InternalPolicy): string =>
  `${showPolicy(from)}|${showPolicy(to)}`;

/** Which inputs a step needs (each list deduplicated by key, in order of first use). */
export interface Requirements {
  /** new log-probs (differentiated). */
  readonly logp: readonly InternalPolicy[];
  /** old log-probs (detached) of pg terms. */
  readonly old: readonly InternalPolicy[];
  /** reference model log-probs of kl terms. */
  readonly ref: readonly InternalPolicy[];
  readonly entropy: readonly InternalPolicy[];
  readonly kl: readonly { readonly from: InternalPolicy; readonly to: InternalPolicy }[];
}

/** The readouts and old/reference log-probs that `evaluate(objective, step, ...)` reads; nothing else. */
export const requiredReadouts = (objective: Objective, step: number): Requirements => {
  const lists = { logp: new Map(), old: new Map(), ref: new Map(), entropy: new Map(), kl: new Map() } as {
    [K in keyof Requirements]: Map<string, Requirements[K][number]>;
  };
  const add = (p: InternalPolicy, ...into: ("logp" | "old" | "ref" | "entropy")[]) => {
    for (const k of into) if (!lists[k].has(showPolicy(p))) lists[k].set(showPolicy(p), p);
  };
  for (const { term: t } of activeAt(objective, step)) {
    switch (t.kind) {
      case "pg":
        add(t.policy, "logp", "old");
        break;
      case "kl":
        add(t.policy, "logp", "ref");
        break;
      case "nll":
        add(t.policy, "logp");
        break;
      case "entropy":
        add(t.policy, "entropy");
        break;
      case "klPolicies":
        if (!lists.kl.has(klKey(t.from, t.to))) lists.kl.set(klKey(t.from, t.to), { from: t.from, to: t.to });
        break;
      default:
        t satisfies never;
    }
  }
  return {
    logp: [...lists.logp.values()],
    old: [...lists.old.values()],
    ref: [...lists.ref.values()],
    entropy: [...lists.entropy.values()],
    kl: [...lists.kl.values()],
  };
};
