/**
 * An objective checked against a model's depth before it runs: every policy that any term of any phase reads
 * (pg, kl, entropy, nll, both sides of klPolicies) must name a layer the model has. Pure: objective and layer
 * count in, problems out; the callers (training/run.ts set-up, training/grad.ts) turn them into errors that
 * name the flag or file the objective came from.
 */
import type { InternalPolicy } from "../policies/internal.ts";
import { showPolicy } from "../policies/internal.ts";
import { fieldOf, type Objective, showTerm, type Term } from "./objective.ts";

/** One policy of one term that the model cannot supply. */
export interface LayerProblem {
  /** Where the term sits in the objective: `terms[0].phases[1].objective.terms[0]`. */
  readonly field: string;
  /** `showTerm` of the term. */
  readonly term: string;
  /** `showPolicy` of the policy it reads. */
  readonly policy: string;
  /** The 0-based layer the policy reads (at or past the model's layer count). */
  readonly layer: number;
  /** The 1-based steps of the phase the term is in force: `1..10`, `11..` (every step outside phases). */
  readonly steps: string;
  /** One line: the term, its policy, its steps and the model's layer count. */
  readonly message: string;
}

/** Every term of an objective, in every phase whatever its weight, in tree order. */
export const allTerms = (objective: Objective): Term[] => {
  const out: Term[] = [];
  const go = (o: Objective) => {
    for (const n of o.terms) {
      if (n.kind === "phases") n.phases.forEach((p) => go(p.objective));
      else out.push(n as unknown as Term);
    }
  };
  go(objective);
  return out;
};

const policiesOf = (t: Term): readonly InternalPolicy[] => {
  switch (t.kind) {
    case "pg":
    case "kl":
    case "entropy":
    case "nll":
      return [t.policy];
    case "klPolicies":
      return [t.from, t.to];
    default:
      return t satisfies never;
  }
};

/**
 * Every (term, policy) of `objective`, in every phase whatever its weight, whose layer is not one of the
 * `numLayers` layers of the model (0-based: 0..numLayers-1). Empty when the objective fits the model.
 */
export const layerProblems = (objective: Objective, numLayers: number): LayerProblem[] => {
  const out: LayerProblem[] = [];
  const go = (o: Objective, path: (string | number)[], steps: string) => {
    o.terms.forEach((n, i) => {
      const here = [...path, "terms", i];
      if (n.kind === "phases") {
        let from = 1;
        n.phases.forEach((p, j) => {
          const span = `${from}..${p.until ?? ""}`;
          go(p.objective, [...here, "phases", j, "objective"], span);
          if (p.until !== null) from = p.until + 1;
        });
        return;
      }
      const term = n as unknown as Term;
      for (const q of policiesOf(term)) {
        if (q.kind === "final") continue;
        if (Number.isInteger(q.layer) && q.layer >= 0 && q.layer < numLayers) continue;
        const shown = showTerm(term);
        out.push({
          field: fieldOf(here),
          term: shown,
          policy: showPolicy(q),
          layer: q.layer,
          steps,
          message: `term ${shown} (steps ${steps}) reads ${
            showPolicy(q)
          }, but the model has ${numLayers} layers (0-based: 0..${numLayers - 1})`,
        });
      }
    });
  };
  go(objective, [], "1..");
  return out;
};
