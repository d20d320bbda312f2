/** The reference interpreter on hand-derived cases; required readouts and their errors; codec errors; show. */
import { ConfigError, MissingReadoutError, ShapeError } from "../core/errors.ts";
import { final, layer, showPolicy } from "../policies/internal.ts";
import {
  activeAt,
  type Agg,
  bupo,
  canonicalJson,
  entropyBonus,
  EqObjective,
  grpo,
  gspo,
  klToRef,
  linear,
  nll,
  type Objective,
  pg,
  type PgOptions,
  phases,
  scale,
  seqMeanTokenSumNorm,
  show,
  sum,
  weightAt,
} from "../objectives/objective.ts";
import { decodeObjective, ObjectiveCodec } from "../objectives/codec.ts";
import { evaluate, type Readouts, type ReferenceBatch } from "../objectives/reference.ts";
import { requiredReadouts } from "../objectives/readouts.ts";
import { closeness } from "./util.ts";

const assert = (ok: boolean, msg: string): void => {
  if (!ok) throw new Error(msg);
};
// Hand cases are a handful of f64 operations: 1e-12 relative is ~1e4 ulps.
const { close, closeAll } = closeness(1e-12);
const throws = <E>(
  f: () => unknown,
  cls: new (...a: never[]) => E,
  check: (e: E) => boolean,
  what: string,
) => {
  try {
    f();
  } catch (e) {
    if (e instanceof cls && check(e)) return;
    throw new Error(`${what}: wrong error ${e}`);
  }
  throw new Error(`${what}: did not throw`);
};

const F = Float64Array;
/** A batch and readouts where every policy in `logp` uses the same arrays for everything else. */
interface Setup {
  B: number;
  T: number;
  mask: number[];
  A: number[];
  logp: Record<string, number[]>;
  old?: Record<string, number[]>;
  behaviour?: number[];
  ref?: Record<string, number[]>;
  entropy?: Record<string, number[]>;
}
const setup = (o: Setup): { batch: ReferenceBatch; readouts: Readouts } => {
  const m = (r?: Record<string, number[]>) =>
    new Map(Object.entries(r ?? {}).map(([k, v]) => [k, F.from(v)]));
  return {
    batch: {
      B: o.B,
      T: o.T,
      mask: F.from(o.mask),
      advantages: F.from(o.A),
      behaviour: F.from(o.behaviour ?? o.mask.map(() => 0)),
      old: m(o.old ?? o.logp),
      ref: m(o.ref),
    },
    readouts: { logp: m(o.logp), entropy: m(o.entropy), kl: new Map() },
  };
};
/** One sequence of two tokens, both in the loss. */
const twoTokens = (o: Omit<Setup, "B" | "T" | "mask">) => setup({ B: 1, T: 2, mask: [1, 1], ...o });

/** One token of one sequence: the pg loss, d loss / d logp and the clip flags for ratio r and advantage A. */
const oneToken = (A: number, r: number, opts: PgOptions = {}) => {
  const { batch, readouts } = setup({
    B: 1,
    T: 1,
    mask: [1],
    A: [A],
    logp: { final: [Math.log(r) - 1] },
    old: { final: [-1] },
  });
  const e = evaluate(grpo(final, opts), 1, batch, readouts);
  return {
    loss: e.loss,
    g: e.grads.logp.get("final")![0],
    clip: e.metrics.clipFraction,
    m: e.metrics.perTerm[0],
  };
};

Deno.test("pg: zero advantage gives zero loss and zero gradient for every ratio mode and aggregation", () => {
  const aggs: Agg[] = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", seqMeanTokenSumNorm(5)];
  for (const agg of aggs) {
    for (const ratio of ["token", "sequence"] as const) {
      const { batch, readouts } = setup({
        B: 2,
        T: 3,
        mask: [1, 1, 0, 1, 1, 1],
        A: [0, 0],
        logp: { final: [-1, -2, NaN, -0.5, -3, -1] },
        old: { final: [-1.3, -1.7, NaN, -0.1, -3.5, -0.2] },
      });
      const e = evaluate(pg(final, { agg, ratio, dualClip: 3 }), 1, batch, readouts);
      assert(e.loss === 0, `loss ${e.loss}`);
      assert(
        e.grads.logp.get("final")!.every((x) => x === 0),
        `${ratio}/${JSON.stringify(agg)}: grads not 0`,
      );
    }
  }
});

Deno.test("pg on-policy: ratio 1, loss -mean A, gradient -A/count per token (token-mean), no clipping", () => {
  const lp = [-1, -2, NaN, -0.5, -3, -1];
  const { batch, readouts } = setup({
    B: 2,
    T: 3,
    mask: [1, 1, 0, 1, 1, 1],
    A: [0.7, -1.3],
    logp: { final: lp },
  });
  const e = evaluate(grpo(), 1, batch, readouts);
  close(e.loss, -(2 * 0.7 + 3 * -1.3) / 5, "loss");
  closeAll(e.grads.logp.get("final")!, [-0.7 / 5, -0.7 / 5, 0, 1.3 / 5, 1.3 / 5, 1.3 / 5], "grad");
  assert(e.metrics.clipFraction === 0 && e.metrics.approxKl === 0, "no clipping, approx KL 0");
});

Deno.test("pg clipping zeroes the gradient exactly where the formula says", () => {
  // A > 0: r > 1+hi clipped (loss -A(1+hi), grad 0); r below 1+hi and below 1-lo is NOT clipped (grad -A r)
  let c = oneToken(2, 1.5);
  close(c.loss, -2 * 1.2, "A>0 r>1+hi loss");
  assert(c.g === 0 && c.clip === 1, "A>0 r>1+hi: grad 0, clipped");
  c = oneToken(2, 1.1);
  close(c.loss, -2.2, "A>0 inside loss");
  close(c.g, -2 * 1.1, "A>0 inside grad = -A r (d r / d logp = r)");
  c = oneToken(2, 0.5);
  close(c.g, -2 * 0.5, "A>0 r<1-lo: unclipped grad");
  assert(c.clip === 0, "A>0 r<1-lo not clipped");
  // A < 0: r < 1-lo clipped (loss -A(1-lo), grad 0); r > 1+hi NOT clipped
  c = oneToken(-2, 0.5);
  close(c.loss, 2 * 0.8, "A<0 r<1-lo loss");
  assert(c.g === 0 && c.clip === 1, "A<0 r<1-lo: grad 0");
  c = oneToken(-2, 1.5);
  close(c.g, 2 * 1.5, "A<0 r>1+hi: unclipped grad -A r");
  // clip-higher (DAPO): hi = 0.28 keeps r = 1.25 inside
  c = oneToken(2, 1.25, { clipHigh: 0.28 });
  close(c.g, -2 * 1.25, "clip-higher inside");
  // dual clip, A < 0, c = 3: r = 4 -> loss -A c, grad 0; r = 2 -> -A r, grad -A r
  c = oneToken(-2, 4, { dualClip: 3 });
  close(c.loss, 6, "dual clip loss");
  assert(c.g === 0 && c.m.dualClipFraction === 1, "dual clip region: grad 0");
  c = oneToken(-2, 2, { dualClip: 3 });
  close(c.loss, 4, "below the dual clip");
  close(c.g, 4, "below the dual clip grad");
  // dual clip does not apply for A > 0
  c = oneToken(2, 4, { dualClip: 3 });
  close(c.loss, -2 * 1.2, "A>0 ignores dual clip");
  // log-ratio clamp at 20: beyond it the gradient is 0
  c = oneToken(-1, Math.exp(25));
  close(c.loss, Math.exp(20), "log-ratio clamped to 20");
  assert(c.g === 0, "clamped log-ratio: grad 0");
});

Deno.test("pg at the clip boundary follows PyTorch: clamp passes the gradient at the boundary", () => {
  // r exactly 1 + hi (chosen so exp(log r) is exact is not possible in general; use log-ratio 0 and hi = 0)
  const c = oneToken(2, 1, { clipLow: 0, clipHigh: 0 });
  // l1 = l2 = -2, both branch grads -A r = -2 (clamp is inclusive), tie split evenly: -2
  close(c.g, -2, "tie at the boundary");
});

Deno.test("GSPO sequence ratio: hand case", () => {
  // one sequence of 2 response tokens with log-ratios 0.1, 0.3: s = exp(0.2); A = 1, clip 0.3/0.3 (inside)
  const opts = { clipLow: 0.3, clipHigh: 0.3 };
  const { batch, readouts } = setup({
    B: 1,
    T: 3,
    mask: [1, 1, 0],
    A: [1],
    logp: { final: [-1 + 0.1, -2 + 0.3, NaN] },
    old: { final: [-1, -2, NaN] },
  });
  const s = Math.exp(0.2);
  let e = evaluate(gspo(final, opts), 1, batch, readouts);
  close(e.loss, -s, "loss = -A s (seq-mean-token-mean)");
  closeAll(e.grads.logp.get("final")!, [-s / 2, -s / 2, 0], "ds/dlogp_t = s/len");
  // with the GSPO default clip 3e-4/4e-4, s = 1.22 is clipped: loss -A (1 + 4e-4), grad 0
  e = evaluate(gspo(final), 1, batch, readouts);
  close(e.loss, -(1 + 4e-4), "clipped sequence");
  assert(e.grads.logp.get("final")!.every((x) => x === 0) && e.metrics.clipFraction === 1, "clipped: grad 0");
  // token-mean aggregation weights the sequence's loss by its token count: 2 tokens / 2 -> -s
  e = evaluate(pg(final, { ...opts, ratio: "sequence" }), 1, batch, readouts);
  close(e.loss, -s, "token-mean");
});

Deno.test("kl estimators k1/k2/k3: values and gradients", () => {
  const logp = -1, logref = -1.5, d = logref - logp;
  const cases = [["k1", 0.5, 1], ["k2", 0.125, 0.5], ["k3", Math.exp(d) - d - 1, 1 - Math.exp(d)]] as const;
  for (const [estimator, v, g] of cases) {
    const { batch, readouts } = setup({
      B: 1,
      T: 1,
      mask: [1],
      A: [0],
      logp: { final: [logp] },
      ref: { final: [logref] },
    });
    const e = evaluate(klToRef(final, { estimator }), 1, batch, readouts);
    close(e.loss, v, `${estimator} value`);
    close(e.grads.logp.get("final")![0], g, `${estimator} grad`);
  }
  // hand values of k3: exp(-0.5) + 0.5 - 1, 1 - exp(-0.5)
  close(Math.exp(-0.5) + 0.5 - 1, 0.10653065971263342, "k3 value");
});

Deno.test("aggregations follow verl's agg_loss (Dr. GRPO divides by B * maxLen)", () => {
  // nll of per-token values a, b | c with mask [[1,1,0],[1,0,0]]
  const a = 1, b = 2, c = 4;
  const { batch, readouts } = setup({
    B: 2,
    T: 3,
    mask: [1, 1, 0, 1, 0, 0],
    A: [0, 0],
    logp: { final: [-a, -b, 9, -c, 9, 9] },
  });
  const cases: [Agg, number, number[]][] = [
    ["token-mean", (a + b + c) / 3, [1 / 3, 1 / 3, 0, 1 / 3, 0, 0]],
    ["seq-mean-token-sum", (a + b + c) / 2, [0.5, 0.5, 0, 0.5, 0, 0]],
    ["seq-mean-token-mean", ((a + b) / 2 + c) / 2, [0.25, 0.25, 0, 0.5, 0, 0]],
    [seqMeanTokenSumNorm(4), (a + b + c) / 8, [1 / 8, 1 / 8, 0, 1 / 8, 0, 0]],
  ];
  for (const [agg, v, g] of cases) {
    const e = evaluate(nll(final, agg), 1, batch, readouts);
    close(e.loss, v, `${JSON.stringify(agg)} value`);
    closeAll(e.grads.logp.get("final")!, g.map((x) => -x), `${JSON.stringify(agg)} grad`);
  }
});

Deno.test("entropyBonus(p, coef) = -coef * mean entropy: minimizing the loss raises entropy", () => {
  const { batch, readouts } = twoTokens({
    A: [0],
    logp: {},
    entropy: { final: [1, 3] },
  });
  const e = evaluate(entropyBonus(final, 0.01), 1, batch, readouts);
  close(e.loss, -0.01 * 2, "loss");
  closeAll(e.grads.entropy.get("final")!, [-0.005, -0.005], "d loss / d entropy < 0");
});

Deno.test("tis: each token's loss is multiplied by min(exp(old - behaviour), cap)", () => {
  const { batch, readouts } = twoTokens({
    A: [1],
    logp: { "layer(5)": [-1, -2] },
    old: { "layer(5)": [-1, -2] },
    behaviour: [-2, -1], // old - behaviour = +1 (capped at 2), -1 (weight e^-1)
  });
  const e = evaluate(pg(layer(5), { tis: { cap: 2 } }), 1, batch, readouts);
  const w = [2, Math.exp(-1)];
  close(e.loss, -(w[0] + w[1]) / 2, "weighted on-policy loss");
  closeAll(e.grads.logp.get("layer(5)")!, [-w[0] / 2, -w[1] / 2], "weighted grads");
});

Deno.test("bupo: layer policy for steps 1..until, final afterwards; readouts follow the phase", () => {
  const o = bupo({ layer: 5, until: 30 });
  const p30 = activeAt(o, 30), p31 = activeAt(o, 31);
  assert(
    p30.length === 1 && p30[0].term.kind === "pg" && showPolicy(p30[0].term.policy) === "layer(5)",
    "step 30",
  );
  assert(
    p31.length === 1 && p31[0].term.kind === "pg" && showPolicy(p31[0].term.policy) === "final",
    "step 31",
  );
  const withKl = sum(o, klToRef(final, { coef: 0.1 }));
  const r = requiredReadouts(withKl, 1);
  assert(canonicalJson(r.logp.map(showPolicy)) === '["layer(5)","final"]', "logp at step 1");
  assert(canonicalJson(r.old.map(showPolicy)) === '["layer(5)"]', "old at step 1");
  assert(canonicalJson(r.ref.map(showPolicy)) === '["final"]', "ref at step 1");
  assert(requiredReadouts(withKl, 31).old.map(showPolicy).join() === "final", "old at step 31");
  // a weight that ramps to 0 needs no readout once it is 0
  assert(requiredReadouts(scale(linear(1, 0, 1, 10))(nll()), 10).logp.length === 0, "zero weight: nothing");
  close(weightAt(linear(1, 0, 1, 10), 4), 2 / 3, "linear weight");
});

Deno.test("missing readouts and bad lengths are named errors", () => {
  const { batch, readouts } = twoTokens({ A: [1], logp: { final: [-1, -1] } });
  const o = bupo({ layer: 5, until: 30 });
  throws(
    () => evaluate(o, 3, batch, readouts),
    MissingReadoutError,
    (e) => e.what === "logp" && e.message.includes("logp[layer(5)]") && e.message.includes("pg(layer(5)"),
    "missing logp",
  );
  const r2: Readouts = { ...readouts, logp: new Map([...readouts.logp, ["layer(5)", F.of(-1, -1)]]) };
  throws(
    () => evaluate(o, 3, batch, r2),
    MissingReadoutError,
    (e) => e.message.includes("old[layer(5)]"),
    "old",
  );
  throws(() => evaluate(klToRef(), 1, batch, readouts), MissingReadoutError, (e) => e.key === "final", "ref");
  const short: Readouts = { ...readouts, logp: new Map([["final", F.of(-1)]]) };
  throws(
    () => evaluate(nll(), 1, batch, short),
    ShapeError,
    (e) => e.message.includes("logp[final] has length 1"),
    "len",
  );
  throws(() => evaluate(nll(), 0, batch, readouts), ConfigError, (e) => e.field === "step", "step 0");
});

Deno.test("constructors validate: phases until increasing, last open; pg clip ranges", () => {
  const a = nll(), b = grpo();
  throws(
    () => phases([{ until: 5, objective: a }, { until: 5, objective: b }, { objective: a }]),
    ConfigError,
    (e) => e.field === "phases[1].until",
    "non-increasing until",
  );
  throws(
    () => phases([{ until: 5, objective: a }, { until: 9, objective: b }]),
    ConfigError,
    (e) => e.field === "phases[1].until" && e.message.includes("last phase"),
    "last phase with until",
  );
  throws(() => phases([]), ConfigError, (e) => e.field === "phases", "no phase");
  throws(() => grpo(final, { clipLow: 1 }), ConfigError, (e) => e.field === "term.clipLow", "clipLow");
  throws(() => grpo(final, { dualClip: 0.5 }), ConfigError, (e) => e.field === "term.dualClip", "dualClip");
  throws(
    () => scale(NaN)(a),
    ConfigError,
    (e) => e.message.includes("expected a finite number"),
    "NaN weight",
  );
  throws(() => linear(1, 0, 5, 5), ConfigError, (e) => e.field === "weight.end", "linear start < end");
});

Deno.test("decoding errors name the JSON path: unknown term, bad weight, unknown field, bad policy", () => {
  const ok = { kind: "nll", policy: { kind: "final" } };
  const cases: [unknown, string, string][] = [
    [{ terms: [ok, ok, { kind: "foo" }] }, "terms[2].kind", 'unknown term "foo"'],
    [{ terms: [{ ...ok, weight: "x" }] }, "terms[0].weight", "expected a finite number"],
    [
      { terms: [{ ...ok, weight: { kind: "linear", from: 1, to: 0, start: 1, end: null } }] },
      "terms[0].weight.end",
      "finite",
    ],
    [{ terms: [{ ...ok, clip: 1 }] }, "terms[0].clip", 'unknown field "clip"'],
    [
      { terms: [{ kind: "pg", policy: { kind: "layer", layer: -1 } }] },
      "terms[0].policy.layer",
      "integer >= 0",
    ],
    [{ terms: [{ kind: "pg", policy: final, clipLow: 2 }] }, "terms[0].clipLow", "[0, 1)"],
    [{ terms: [{ kind: "pg", policy: final, agg: "mean" }] }, "terms[0].agg", 'unknown aggregation "mean"'],
    [
      {
        terms: [{
          kind: "phases",
          phases: [{ until: 3, objective: { terms: [{ kind: "bar" }] } }, { objective: { terms: [] } }],
        }],
      },
      "terms[0].phases[0].objective.terms[0].kind",
      'unknown term "bar"',
    ],
    [
      { terms: [{ kind: "phases", phases: [{ until: 3, objective: { terms: [] } }] }] },
      "terms[0].phases[0].until",
      "last",
    ],
    [[1, 2], "(root)", "expected an objective"],
  ];
  for (const [json, field, msg] of cases) {
    throws(
      () => decodeObjective("cfg.json", json),
      ConfigError,
      (e) =>
        e.source === "cfg.json" && e.field === field && e.message.includes(`cfg.json: ${field}: `) &&
        e.message.includes(msg),
      `${field} (${msg})`,
    );
  }
});

Deno.test("decoding fills documented defaults; ObjectiveCodec.is accepts only canonical values", () => {
  const o = decodeObjective("cfg", { terms: [{ kind: "pg", policy: { kind: "layer", layer: 5 } }] });
  assert(EqObjective.equals(o, grpo(layer(5))), "defaults = grpo(layer(5))");
  assert(ObjectiveCodec.is(grpo()), "is(grpo())");
  assert(!ObjectiveCodec.is({ terms: [{ kind: "pg", policy: final }] }), "is() rejects non-canonical input");
});

Deno.test("show prints a stable term tree", () => {
  const o: Objective = sum(
    bupo({ layer: 5, until: 30, dualClip: 3 }),
    entropyBonus(final, 0.01),
    scale(linear(1, 0, 10, 20))(nll()),
  );
  const expected = [
    "+ 1 * phases",
    "    steps 1..30:",
    "      + 1 * pg(layer(5), clip=0.2/0.2, dualClip=3, ratio=token, agg=token-mean)",
    "    steps 31..:",
    "      + 1 * pg(final, clip=0.2/0.2, dualClip=3, ratio=token, agg=token-mean)",
    "+ -0.01 * entropy(final, agg=token-mean)",
    "+ linear(1,0;10..20) * nll(final, agg=token-mean)",
  ].join("\n");
  assert(show(o) === expected, `show:\n${show(o)}`);
  assert(show(sum()) === "0", "zero prints as 0");
});
