/**
 * One RL step of the default run (BuPO on the shipped model): seconds split into rollout, old log-probs and
 * update, tokens per second of each phase, and the GPU memory the step needs at its peak; then rollout tokens per
 * second of the same batches with and without the KV cache.
 */
import { Effect } from "effect";
import { withGpu } from "../engine/gpu/device.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { readModelDir, toParams } from "../formats/hf.ts";
import { type CharTokenizer, readTokenizerDir } from "../formats/tokenizer.ts";
import { taskSource } from "../training/source.ts";
import { arithTask } from "../tasks/arith.ts";
import { DEFAULTS } from "../training/config.ts";
import { resolveObjective } from "../training/run.ts";
import { type RlContext, rlStep, rolloutPlan, type StepMetrics } from "../training/rl.ts";
import { generate } from "../policies/generate.ts";
import { createOptimizer } from "../training/optimizer.ts";

/** Seconds and sampled tokens of the rollouts of RL step `step` (as rlStep draws them), with or without cache. */
const timeRollout = async (ctx: RlContext, step: number, cache: boolean): Promise<[number, number]> => {
  const { prompts, options } = rolloutPlan(ctx, step);
  const t0 = performance.now();
  const roll = await generate(ctx.config, ctx.params, prompts, { ...options, cache });
  return [(performance.now() - t0) / 1000, roll.responseLens.reduce((a, b) => a + b, 0)];
};

export async function benchRl(gpu: GpuBackend, steps = 3): Promise<string> {
  const cfg = DEFAULTS;
  const host = await Effect.runPromise(readModelDir(cfg.model));
  const tok = await Effect.runPromise(readTokenizerDir(cfg.model));
  const params = toParams(gpu, host);
  const opt = createOptimizer(params, {
    lr: cfg.lr,
    weightDecay: cfg.weightDecay,
    maxGradNorm: cfg.gradClip,
  });
  const objective = await resolveObjective(cfg);
  const ctx: RlContext = {
    cfg,
    config: host.config,
    params,
    opt,
    source: taskSource(tok as CharTokenizer, arithTask(), cfg.seed),
    objective,
  };
  await rlStep(ctx, 1); // warm-up: compiles every pipeline
  await gpu.sync();
  gpu.resetPeak();
  const live0 = gpu.memory().live;
  const ms: StepMetrics[] = [];
  for (let s = 2; s < 2 + steps; s++) ms.push(await rlStep(ctx, s));
  const peak = gpu.memory().peak - live0;
  const avg = (f: (m: StepMetrics) => number) => ms.reduce((a, m) => a + f(m), 0) / ms.length;
  const rows = [
    ["rollout", avg((m) => m.time.rollout), avg((m) => m.tokens.rollout)],
    ["old log-probs", avg((m) => m.time.old), avg((m) => m.tokens.trained / cfg.epochs)],
    ["update", avg((m) => m.time.update), avg((m) => m.tokens.trained)],
  ] as const;
  const lines = [
    `## RL step: ${cfg.objective} on ${cfg.model}, ${cfg.prompts} prompts x ${cfg.group}, ${cfg.minibatches} minibatches (${gpu.name})`,
    "| phase | s / step | tokens / step | tokens / s |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map(([n, t, tok]) => `| ${n} | ${t.toFixed(2)} | ${tok.toFixed(0)} | ${(tok / t).toFixed(0)} |`),
    `| total | ${avg((m) => m.time.total).toFixed(2)} | | |`,
    `peak GPU memory above the model and optimizer state: ${(peak / 2 ** 20).toFixed(1)} MiB ` +
    `(model + AdamW state: ${
      (live0 / 2 ** 20).toFixed(1)
    } MiB); mean of ${steps} steps after one warm-up step`,
  ];
  // Rollouts alone, the same batches both ways (after one warm-up each): KV cache vs a full forward per token.
  const rate = { cache: [0, 0], full: [0, 0] };
  await timeRollout(ctx, 1, true);
  await timeRollout(ctx, 1, false);
  for (let s = 2; s < 2 + steps; s++) {
    for (const cache of [true, false]) {
      const [sec, n] = await timeRollout(ctx, s, cache);
      const r = rate[cache ? "cache" : "full"];
      r[0] += sec;
      r[1] += n;
    }
  }
  const tps = (r: number[]) => r[1] / r[0];
  lines.push(
    "| rollout | s / step | tokens / step | tokens / s |",
    "| --- | ---: | ---: | ---: |",
    ...([["KV cache", rate.cache], ["full forward per token", rate.full]] as const).map(([n, r]) =>
      `| ${n} | ${(r[0] / steps).toFixed(2)} | ${(r[1] / steps).toFixed(0)} | ${tps(r).toFixed(0)} |`
    ),
    `rollout speed-up of the KV cache: ${(tps(rate.cache) / tps(rate.full)).toFixed(2)}x`,
  );
  params.dispose();
  console.log(lines.join("\n"));
  return lines.join("\n");
}

if (import.meta.main) await withGpu((gpu) => benchRl(gpu));
