/** Benchmark: loss + gradient of a GRPO batch (64 x 64 tokens, 4-layer tiny model), GPU lowering vs reference. */
import { Effect } from "effect";
import { lcg } from "../core/rng.ts";
import type { Backend } from "../engine/backend.ts";
import { adapterOptionsFromEnv, openGpu } from "../engine/gpu/device.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { lowerLoss, lowerStep } from "../objectives/lower.ts";
import { grpo } from "../objectives/objective.ts";
import { evaluate } from "../objectives/reference.ts";
import { type RolloutHost, rolloutTensors } from "../objectives/batch.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { showPolicy } from "../policies/internal.ts";
import { forward } from "../policies/model.ts";
import { initParams } from "../policies/params.ts";
import { readPolicies } from "../policies/policy.ts";

/** One timed configuration. */
export interface ObjectiveBenchRow {
  readonly name: string;
  /** Median wall time per iteration, read-back included. */
  readonly ms: number;
  /** What the timed region contains. */
  readonly includes: string;
}

const B = 64, T = 64, ITERS = 5;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const time = async (f: () => Promise<unknown>): Promise<number> => {
  await f(); // warm-up: shader compiles, pool fills
  const ts: number[] = [];
  for (let i = 0; i < ITERS; i++) {
    const t0 = performance.now();
    await f();
    ts.push(performance.now() - t0);
  }
  return median(ts);
};

/**
 * Time, in the same run, (1) the full lowered step on `backend` (forward, one streaming readout pass, loss,
 * backward to every parameter), (2) the lowered loss alone on readouts already on the device (loss and its
 * gradient w.r.t. the log-prob readout), and (3) the reference interpreter on the same readouts already on the
 * host (CPU, f64; loss and gradient w.r.t. the readout; no model, no upload).
 */
export const benchObjective = async (backend: Backend): Promise<ObjectiveBenchRow[]> => {
  const cfg = tinyConfig({ numLayers: 4 });
  const p = initParams(backend, paramSpecs(cfg), 1, 0.05);
  const next = lcg(7);
  const u = () => next() / 2 ** 32;
  const host: RolloutHost = {
    ids: Int32Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize)),
    B,
    T,
    promptLens: Array.from({ length: B }, () => 8 + Math.floor(u() * 8)),
    advantages: Array.from({ length: B }, () => 2 * u() - 1),
  };
  const o = grpo();
  const key = showPolicy({ kind: "final" });
  // old log-probs: the current readouts, perturbed (so clipping happens), computed once
  const b0 = rolloutTensors(backend, host);
  const cur = await tidy(async () => {
    const f = forward(cfg, p, b0.ids, b0.positions);
    const r = readPolicies(cfg, p, f, [{ kind: "final" }], b0.targets).get(key)!;
    return Float64Array.from(await r.logp.data());
  });
  b0.dispose();
  const old = cur.map((x) => Math.fround(x + 0.3 * (u() - 0.5)));
  const batch = rolloutTensors(backend, { ...host, old: new Map([[key, old]]) });
  const rows: ObjectiveBenchRow[] = [];

  rows.push({
    name: `lowerStep grpo(final), ${B}x${T} tokens, 4 layers, on ${backend.name}`,
    ms: await time(() =>
      tidy(async () => {
        const r = lowerStep(cfg, p, batch, o, 1);
        for (const g of r.grads) await g.data();
      })
    ),
    includes:
      "forward, streaming readout (entropy + log-prob), lowered loss, backward to all params, one read-back",
  });

  const lp = tensor(backend, cur, [B * T]);
  const ent = tensor(backend, new Float32Array(B * T), [B * T]);
  rows.push({
    name: `lowerLoss grpo(final) on device readouts, on ${backend.name}`,
    ms: await time(() =>
      tidy(async () => {
        const tape = new Tape().watch(lp);
        const r = tape.run(() =>
          lowerLoss(o, 1, batch, { readout: () => ({ logp: lp, entropy: ent }), kl: (): Tensor => lp })
        );
        const [g] = tape.backward(r.loss, [lp], tensor(backend, [1], []));
        await g!.data();
      })
    ),
    includes: "loss + d loss / d logp readout from readouts already on the device, one read-back",
  });
  lp.dispose();
  ent.dispose();

  const readouts = { logp: new Map([[key, cur]]), entropy: new Map(), kl: new Map() };
  rows.push({
    name: "reference evaluate grpo(final) (CPU, f64)",
    ms: await time(() => Promise.resolve(evaluate(o, 1, batch.host, readouts))),
    includes: "loss + d loss / d logp readout from readouts already on the host (no model, no upload)",
  });
  batch.dispose();
  p.dispose();
  return rows;
};

if (import.meta.main) {
  const gpu = await Effect.runPromise(openGpu(adapterOptionsFromEnv()));
  for (const r of await benchObjective(gpu)) {
    console.log(`${r.name.padEnd(70)} ${r.ms.toFixed(2).padStart(9)} ms   (${r.includes})`);
  }
}
