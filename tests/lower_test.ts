/** The GPU lowering equals the reference interpreter (loss and readout gradients) on arbitrary objectives; BuPO end to end. */
import fc from "fast-check";
import { leafArb, objectiveArb } from "./objective_arbs.ts";
import type { Backend } from "../engine/backend.ts";
import { ShapeError } from "../core/errors.ts";
import { lcg } from "../core/rng.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { clampClosed, keepWhere, maxSplit, minSplit, where } from "../kernels/select.ts";
import { Tape } from "../engine/tape.ts";
import { add, sumTo } from "../kernels/elementwise.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { rolloutFromSequences, rolloutTensors } from "../objectives/batch.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { attn, final, type InternalPolicy, layer, showPolicy } from "../policies/internal.ts";
import { initParams, type Params, paramsToHostArrays } from "../policies/params.ts";
import { lowerLoss, lowerStep } from "../objectives/lower.ts";
import {
  bupo,
  entropyBonus,
  grpo,
  linear,
  type Objective,
  phases,
  scale,
  selfDistill,
  sum,
  type Weight,
} from "../objectives/objective.ts";
import { evaluate } from "../objectives/reference.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData } from "./util.ts";
import { klKey, requiredReadouts } from "../objectives/readouts.ts";

const POLICIES: InternalPolicy[] = [final, layer(0), layer(1, "normed"), attn(0)];

// ---- the select kernels the lowering relies on -----------------------------------------------------------------

/** where / keepWhere with NaN and inf in the branch not taken, and the tie-aware ops, with their gradients. */
const selectOps = (be: Backend, n: number, seed: number) =>
  tidy(async () => {
    const cond = randomData(n, seed).map((x) => (x > 0 ? 1 : 0));
    const bad = randomData(n, seed + 1).map((x, i) => (cond[i] ? x : i % 2 ? NaN : Infinity));
    const a = tensor(be, bad, [n]), b = tensor(be, randomData(n, seed + 2), [n]), c = tensor(be, cond, [n]);
    const tape = new Tape().watch(a, b);
    const y = tape.run(() =>
      add3(where(c, a, b), keepWhere(c, a), maxSplit(b, b), minSplit(b, clampClosed(b, -0.5, 0.5)))
    );
    const gs = tape.backward(y, [a, b], tensor(be, [1], []));
    return [await y.data(), ...(await Promise.all(gs.map((g) => g!.data())))];
  });
const add3 = (...xs: Tensor[]) => xs.map((x) => sumTo(x, [])).reduce((s, x) => add(s, x));

Deno.test("select ops: NaN/inf in the unselected branch never leak; ties split the gradient evenly", async () => {
  const [y, da, db] = await selectOps(cpu64, 64, 3);
  if (!Number.isFinite(y[0]) || da.some((x) => !Number.isFinite(x))) throw new Error(`leak: ${y} ${da}`);
  const b = randomData(64, 5);
  // d/db: where (1 where cond = 0) + maxSplit(b, b) (0.5 + 0.5) + minSplit(b, clamp b) (0.5 + 0.5 inside
  // [-0.5, 0.5] where they tie; outside, the smaller side alone, with the clamp's 0 outside its interval)
  const cond = randomData(64, 3).map((x) => (x > 0 ? 1 : 0));
  const want = Float64Array.from(b, (x, i) => {
    const c = Math.max(-0.5, Math.min(0.5, x));
    const minPart = x === c ? 1 : x < c ? 1 : 0;
    return (cond[i] ? 0 : 1) + 1 + minPart;
  });
  assertClose(db, want, { atol: 1e-12, rtol: 0 }, "d/db");
  const r = await checkGrad(cpu64, (x) => clampClosed(maxSplit(x, minSplit(x, x)), -0.3, 0.3), [
    { data: randomData(9, 8), shape: [9] },
  ]);
  if (r.error > 1e-6) throw new Error(JSON.stringify(r));
  let msg = "";
  try {
    where(tensor(cpu32, [1, 0], [2]), tensor(cpu32, [1, 2, 3], [3]), tensor(cpu32, [1, 2], [2]));
  } catch (e) {
    if (e instanceof ShapeError) msg = e.message;
  }
  if (msg !== "select: a has shape [3], cond has [2]") throw new Error(msg);
});

gpuTest("select ops: GPU equals CPU (values and gradients)", async (g) => {
  await fc.assert(
    fc.asyncProperty(awkwardDim(300), fc.nat(), async (n, seed) => {
      const want = await selectOps(cpu32, n, seed), got = await selectOps(g, n, seed);
      // selections and comparisons are exact; the scalar sums differ in order only: f32 rounding of a sum of n
      want.forEach((w, i) => assertClose(got[i], w, { atol: 1e-5 * n, rtol: 1e-5 }, `output ${i}`));
    }),
    { numRuns: GPU_RUNS },
  );
});

// ---- arbitraries ----------------------------------------------------------------------------------------------

const weightArb: fc.Arbitrary<Weight> = fc.oneof(
  fc.constantFrom(1, -1, 0.5, 2.5, -0.01),
  fc.tuple(fc.constantFrom(-1, 2), fc.constantFrom(0.5, 3), fc.integer({ min: 0, max: 10 })).map((
    [a, b, s],
  ) => linear(a, b, s, s + 7)),
);
const objArb = objectiveArb(
  leafArb(POLICIES, [0, 0.2]),
  weightArb,
  (tree) =>
    fc.tuple(fc.integer({ min: 1, max: 12 }), tree, tree)
      .map(([u, a, b]) => phases([{ until: u, objective: a }, { objective: b }])),
);

/** Log-ratio offsets: on-policy, at and around the clip edges and the +-20 clamp (exact ties in f64). */
const TIES = [0, Math.log(0.8), Math.log(1.2), Math.log(1.28), 20, -20, 25, -25, 0.05, -0.3];

/** A random batch and readouts; every position the mask excludes holds NaN in every per-token input. */
const problem = (B: number, T: number, seed: number, ties: boolean) => {
  const next = lcg(seed);
  const u = () => next() / 2 ** 32;
  const mask = Float64Array.from({ length: B * T }, () => (u() < 0.3 ? 0 : u() < 0.15 ? 0.5 : 1));
  const fill = (f: () => number) => Float64Array.from(mask, (m) => (m === 0 ? NaN : Math.fround(f())));
  const logp = new Map<string, Float64Array>(), old = new Map<string, Float64Array>();
  const ref = new Map<string, Float64Array>(), ent = new Map<string, Float64Array>();
  const kl = new Map<string, Float64Array>();
  for (const p of POLICIES) {
    const k = showPolicy(p);
    const lp = fill(() => -4 * u());
    logp.set(k, lp);
    // ties: exact f64 offsets (cpu64 only); otherwise f32-representable old log-probs (GPU: no branch flips)
    old.set(k, lp.map((x) => ties ? x - TIES[Math.floor(u() * TIES.length)] : Math.fround(x + (u() - 0.5))));
    ref.set(k, fill(() => -4 * u()));
    ent.set(k, fill(() => 3 * u()));
    for (const q of POLICIES) kl.set(klKey(p, q), fill(() => 2 * u()));
  }
  const advantages = Float64Array.from({ length: B }, () => (u() < 0.2 ? 0 : Math.fround(4 * u() - 2)));
  const behaviour = fill(() => -4 * u());
  return { B, T, mask, advantages, behaviour, old, ref, readouts: { logp, entropy: ent, kl } };
};
type Problem = ReturnType<typeof problem>;

/** Lower the objective on a backend with the readouts as watched leaves: loss and d loss / d readout. */
const lowered = (be: Backend, o: Objective, step: number, pb: Problem) =>
  tidy(async () => {
    const b = rolloutTensors(be, {
      ids: new Int32Array(pb.B * pb.T),
      B: pb.B,
      T: pb.T,
      promptLens: [],
      mask: pb.mask,
      advantages: pb.advantages,
      behaviour: pb.behaviour,
      old: pb.old,
      ref: pb.ref,
    });
    const leaves = new Map<string, Tensor>();
    const leaf = (kind: string, key: string, data: Float64Array) => {
      const id = `${kind}:${key}`;
      if (!leaves.has(id)) leaves.set(id, tensor(be, data, [pb.B * pb.T]));
      return leaves.get(id)!;
    };
    const tape = new Tape();
    const src = {
      readout: (q: InternalPolicy) => {
        const k = showPolicy(q);
        const lp = leaf("logp", k, pb.readouts.logp.get(k)!),
          h = leaf("entropy", k, pb.readouts.entropy.get(k)!);
        tape.watch(lp, h);
        return { logp: lp, entropy: h };
      },
      kl: (a: InternalPolicy, c: InternalPolicy) => {
        const t = leaf("kl", klKey(a, c), pb.readouts.kl.get(klKey(a, c))!);
        tape.watch(t);
        return t;
      },
    };
    const r = tape.run(() => lowerLoss(o, step, b, src));
    const loss = (await r.loss.data())[0];
    const clip = (await r.metrics.clipFraction.data())[0], akl = (await r.metrics.approxKl.data())[0];
    const ids = [...leaves.keys()];
    const gs = tape.backward(r.loss, ids.map((k) => leaves.get(k)!), tensor(be, [1], []));
    const grads = new Map<string, Float64Array | null>();
    for (let i = 0; i < ids.length; i++) {
      grads.set(ids[i], gs[i] ? Float64Array.from(await gs[i]!.data()) : null);
    }
    b.dispose();
    return { loss, clip, akl, grads };
  });

/** Compare the lowering with `evaluate` on the same problem. */
const compare = async (
  be: Backend,
  o: Objective,
  step: number,
  pb: Problem,
  tol: { loss: number; grad: number },
) => {
  const want = evaluate(o, step, pb, pb.readouts);
  const got = await lowered(be, o, step, pb);
  // scale: the largest |weight * value| of a term (cancellation between terms is bounded by it)
  const scaleL = want.metrics.perTerm.reduce((m, t) => Math.max(m, Math.abs(t.weight * t.value)), 1);
  assertClose([got.loss], [want.loss], { atol: tol.loss * scaleL, rtol: tol.loss }, "loss");
  assertClose([got.clip, got.akl], [want.metrics.clipFraction, want.metrics.approxKl], {
    atol: tol.loss,
    rtol: tol.loss,
  }, "clipFraction, approxKl");
  const wantG = new Map<string, Float64Array>();
  for (const kind of ["logp", "entropy", "kl"] as const) {
    for (const [k, g] of want.grads[kind]) wantG.set(`${kind}:${k}`, g);
  }
  let gmax = 1e-30;
  for (const g of wantG.values()) for (const x of g) gmax = Math.max(gmax, Math.abs(x));
  for (const [id, g] of got.grads) {
    const w = wantG.get(id) ?? new Float64Array(pb.B * pb.T);
    const gg = g ?? new Float64Array(pb.B * pb.T);
    if (gg.some((x) => !Number.isFinite(x))) throw new Error(`${id}: non-finite gradient ${gg}`);
    assertClose(gg, w, { atol: tol.grad * gmax, rtol: tol.grad }, `d loss / d ${id}`);
  }
  for (const id of wantG.keys()) if (!got.grads.has(id)) throw new Error(`lowering never read ${id}`);
};

const caseArb = fc.record({
  o: objArb,
  step: fc.integer({ min: 1, max: 20 }),
  B: fc.integer({ min: 1, max: 4 }),
  T: fc.integer({ min: 1, max: 6 }),
  seed: fc.nat(),
});

Deno.test("lowering on cpu64 equals the reference interpreter on arbitrary term trees (ties and NaN padding)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ o, step, B, T, seed }) => {
      // Both in f64; the lowering sums in another association order (mul then sum, weights applied last):
      // a few ulps of the largest term, far below any branch flip (ties are exact in both).
      await compare(cpu64, o, step, problem(B, T, seed, true), { loss: 1e-12, grad: 1e-12 });
    }),
    { numRuns: 150 },
  );
});

gpuTest("lowering on the GPU equals the reference interpreter on arbitrary term trees (f32)", async (g) => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ o, step, B, T, seed }) => {
      // f32 on the GPU: inputs are f32-representable and away from clip edges, so both sides take the same
      // branches; a term's value is a sum of <= 24 products of O(1..e^20) numbers, each exp within 2 ulps:
      // 1e-5 of the largest term (about 100 f32 ulps) for the loss and of the largest gradient element.
      await compare(g, o, step, problem(B, T, seed, false), { loss: 1e-5, grad: 1e-5 });
    }),
    { numRuns: GPU_RUNS * 3 },
  );
});

Deno.test("lowering: missing old log-probs are a MissingReadoutError naming the policy and the term", async () => {
  const pb = problem(2, 3, 1, false);
  pb.old.delete("layer(0)");
  let msg = "";
  await lowered(cpu64, grpo(layer(0)), 1, pb).catch((e) => (msg = e.message));
  if (!/missing old\[layer\(0\)\] \(needed by pg\(layer\(0\)/.test(msg)) throw new Error(`got: ${msg}`);
});

// ---- end to end on a tiny model -------------------------------------------------------------------------------

const cfg = tinyConfig({ numLayers: 3, vocabSize: 70, hiddenSize: 16, numHeads: 2, numKvHeads: 1 });
const seqs = [[5, 9, 3, 7, 1, 2], [4, 4, 8, 60, 13], [11, 2, 3, 5, 8, 13]];
const host = rolloutFromSequences(seqs, 2, [1.5, -1, 0.25]);

/** Flat gradient of an objective on the tiny model, split by Hugging Face name. */
const gradsOf = (be: Backend, p: Params, o: Objective, step: number) =>
  tidy(async () => {
    const b = rolloutTensors(be, host);
    const r = lowerStep(cfg, p, b, o, step, { onPolicy: true, chunk: 64 });
    const gs = await paramsToHostArrays(p, r.grads), loss = (await r.loss.data())[0];
    b.dispose();
    const by = new Map<string, Float64Array>();
    p.layout.specs.forEach((s, i) => by.set(s.name, Float64Array.from(gs[i])));
    return { loss, by };
  });
const norm = (x: Float64Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0));

Deno.test("grpo(layer(k)): the gradient is exactly zero above layer k and in the final norm, nonzero below", async () => {
  const p = initParams(cpu64, paramSpecs(cfg), 11, 0.3);
  for (const k of [0, 1]) {
    const { by } = await gradsOf(cpu64, p, grpo(layer(k)), 1);
    for (const [name, g] of by) {
      const l = /layers\.(\d+)\./.exec(name)?.[1];
      const above = (l !== undefined && Number(l) > k) || name === "model.norm.weight";
      if (above && g.some((x) => x !== 0)) throw new Error(`k=${k}: ${name} has gradient norm ${norm(g)}`);
      const reads = name === "model.embed_tokens.weight" || /(proj|mlp)/.test(name);
      if (!above && reads && norm(g) === 0) throw new Error(`k=${k}: ${name} has no gradient`);
    }
  }
  p.dispose();
});

Deno.test("BuPO at step <= until equals grpo(layer(k)) exactly; after, grpo(final)", async () => {
  const p = initParams(cpu64, paramSpecs(cfg), 12, 0.3);
  const b = bupo({ layer: 1, until: 3 });
  const internal = await gradsOf(cpu64, p, grpo(layer(1)), 1), fin = await gradsOf(cpu64, p, grpo(final), 1);
  for (const [step, want] of [[1, internal], [3, internal], [4, fin], [30, fin]] as const) {
    const got = await gradsOf(cpu64, p, b, step);
    if (got.loss !== want.loss) throw new Error(`step ${step}: loss ${got.loss} vs ${want.loss}`);
    for (const [name, g] of got.by) {
      assertClose(g, want.by.get(name)!, { atol: 0, rtol: 0 }, `step ${step} ${name}`);
    }
  }
  if (norm(internal.by.get("model.norm.weight")!) !== 0 || norm(fin.by.get("model.norm.weight")!) === 0) {
    throw new Error("the final norm must get a gradient only in the final phase");
  }
  p.dispose();
});

gpuTest(
  "lowerStep on the GPU equals the f32 CPU: BuPO + internal entropy bonus + self-distillation",
  async (g) => {
    const o = sum(
      bupo({ layer: 0, until: 2, dualClip: 3 }),
      entropyBonus(layer(1), 0.01),
      scale(0.1)(selfDistill(layer(0))),
    );
    const pc = initParams(cpu32, paramSpecs(cfg), 13, 0.3), pg_ = initParams(g, paramSpecs(cfg), 13, 0.3);
    for (const step of [1, 3]) {
      const want = await gradsOf(cpu32, pc, o, step), got = await gradsOf(g, pg_, o, step);
      // f32 both sides; the GPU's matmul and attention sum in other orders: 1e-4 of each tensor's largest
      // element (gradients here are O(0.1-1), f32 ulp ~1e-7; the backward chains ~20 ops).
      assertClose([got.loss], [want.loss], { atol: 1e-6, rtol: 1e-5 }, `step ${step} loss`);
      for (const [name, w] of want.by) {
        const m = w.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
        assertClose(got.by.get(name)!, w, { atol: 1e-4 * m + 1e-9, rtol: 1e-3 }, `step ${step} ${name}`);
      }
    }
    pc.dispose();
    pg_.dispose();
  },
);

Deno.test("requiredReadouts of BuPO names layer(k) in phase 1 and final after", () => {
  const b = bupo({ layer: 2, until: 5 });
  if (requiredReadouts(b, 5).logp.map(showPolicy).join() !== "layer(2)") throw new Error("phase 1");
  if (requiredReadouts(b, 6).logp.map(showPolicy).join() !== "final") throw new Error("phase 2");
});
