/**
 * RL steps, timed: the default run (BuPO on the shipped model) and a random Qwen3 with Qwen3's real vocabulary
 * (151,936 rows of unembedding, d = 256, 4 layers, the real Qwen3 tokenizer and chat template) on math prompts
 * with the math reward. For each: seconds split into rollout, old log-probs and update, tokens per second of
 * each phase, and the GPU memory the step needs at its peak; then, for the default run, rollout tokens per
 * second of the same batches with and without the KV cache.
 */
import { Effect } from "effect";
import { withGpu } from "../engine/gpu/device.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { readModelDir, toParams } from "../formats/hf.ts";
import { type CharTokenizer, readTokenizerDir } from "../formats/tokenizer.ts";
import { readPromptSetup } from "../formats/generation.ts";
import { prepareRows } from "../formats/generation.ts";
import type { Row } from "../formats/dataset.ts";
import { resolveRewards } from "../formats/rewards.ts";
import { type DecoderConfig, paramSpecs } from "../policies/config.ts";
import { initParams, type Params } from "../policies/params.ts";
import { arithTask } from "../tasks/arith.ts";
import { DEFAULTS, type TrainConfig } from "../training/config.ts";
import { resolveObjective } from "../training/run.ts";
import { type RlContext, rlStep, rolloutPlan, type StepMetrics } from "../training/rl.ts";
import { datasetSource, taskSource } from "../training/source.ts";
import { generate } from "../policies/generate.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";
import { writeQwen3Folder } from "../tests/qwen3_folder.ts";

/** Seconds and sampled tokens of the rollouts of RL step `step` (as rlStep draws them), with or without cache. */
const timeRollout = async (ctx: RlContext, step: number, cache: boolean): Promise<[number, number]> => {
  const { prompts, options } = rolloutPlan(ctx, step);
  const t0 = performance.now();
  const roll = await generate(ctx.config, ctx.params, prompts, { ...options, cache });
  return [(performance.now() - t0) / 1000, roll.responseLens.reduce((a, b) => a + b, 0)];
};

/** The step table of `steps` RL steps after one warm-up step (which compiles every pipeline). */
const stepTable = async (
  gpu: GpuBackend,
  title: string,
  ctx: RlContext,
  steps: number,
): Promise<string[]> => {
  const { cfg } = ctx;
  await rlStep(ctx, 1);
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
  return [
    `## RL step: ${title}, ${cfg.objective} (${cfg.prompts} prompts x ${cfg.group}, ${cfg.maxNew} new tokens, ${cfg.minibatches} minibatches; ${gpu.name})`,
    "| phase | s / step | tokens / step | tokens / s |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map(([n, t, tok]) => `| ${n} | ${t.toFixed(2)} | ${tok.toFixed(0)} | ${(tok / t).toFixed(0)} |`),
    `| total | ${avg((m) => m.time.total).toFixed(2)} | | |`,
    `peak GPU memory above the model and optimizer state: ${(peak / 2 ** 20).toFixed(1)} MiB ` +
    `(model + AdamW state: ${
      (live0 / 2 ** 20).toFixed(1)
    } MiB); mean of ${steps} steps after one warm-up step`,
  ];
};

/** The default run's step table and its rollouts with and without the KV cache. */
const benchDemo = async (gpu: GpuBackend, steps: number): Promise<string[]> => {
  const cfg = DEFAULTS;
  const host = await Effect.runPromise(readModelDir(cfg.model));
  const tok = await Effect.runPromise(readTokenizerDir(cfg.model));
  const params = toParams(gpu, host);
  const opt = createOptimizer(params, {
    lr: cfg.lr,
    weightDecay: cfg.weightDecay,
    maxGradNorm: cfg.gradClip,
  });
  try {
    const ctx: RlContext = {
      cfg,
      config: host.config,
      params,
      opt,
      source: taskSource(tok as CharTokenizer, arithTask(), cfg.seed),
      objective: await resolveObjective(cfg),
    };
    const lines = await stepTable(gpu, cfg.model, ctx, steps);
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
    return lines;
  } finally {
    params.dispose();
    disposeOptimizer(opt);
  }
};

/** Qwen3-0.6B's shape (config.json of Qwen/Qwen3-0.6B) with `numLayers` layers (28 in the model). */
export const qwen3_0_6b = (numLayers = 28): DecoderConfig => ({
  architecture: "Qwen3ForCausalLM",
  vocabSize: 151936,
  hiddenSize: 1024,
  numLayers: numLayers,
  numHeads: 16,
  numKvHeads: 8,
  headDim: 128,
  intermediateSize: 3072,
  rmsNormEps: 1e-6,
  ropeTheta: 1000000,
  tieWordEmbeddings: true,
  qkvBias: false,
  qkNorm: true,
});

/** A random Qwen3 of Qwen3's real vocabulary: d = 256, 4 layers, 4 heads of 64 (2 KV heads), FFN 768. */
export const QWEN3_BENCH_CONFIG: DecoderConfig = {
  architecture: "Qwen3ForCausalLM",
  vocabSize: 151936,
  hiddenSize: 256,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
  intermediateSize: 768,
  rmsNormEps: 1e-6,
  ropeTheta: 1000000,
  tieWordEmbeddings: true,
  qkvBias: false,
  qkNorm: true,
};

/** Math prompts in verl's form (messages, a ground truth, a data_source), as a dataset's rows. */
export const mathRows = (n: number): Row[] =>
  Array.from({ length: n }, (_, i) => {
    const a = 12 + 7 * i, b = 3 + (5 * i) % 17;
    const content =
      `Compute ${a} * ${b} - ${b}. Let's think step by step and output the final answer within \\boxed{}.`;
    return {
      row: i + 1,
      prompt: [{ role: "user", content }],
      groundTruth: String(a * b - b),
      dataSource: "bench/arith",
      raw: {},
    };
  });

/**
 * The Qwen3 row: the real tokenizer and chat template (thinking off), its two stop ids, the 151,669-id
 * vocabulary masked inside the 151,936 rows, the math reward in its worker; BuPO on layer 2.
 */
const benchQwen3 = async (gpu: GpuBackend, steps: number): Promise<string[]> => {
  const dir = await writeQwen3Folder();
  const cfg: TrainConfig = {
    ...DEFAULTS,
    model: dir,
    prompts: 4,
    group: 4,
    maxNew: 32,
    minibatches: 2,
  };
  const setup = await Effect.runPromise(
    readPromptSetup(dir, { chatTemplateKwargs: { enable_thinking: false } }),
  );
  const prepared = prepareRows(setup, "bench", mathRows(64));
  const rewards = await resolveRewards("math:1");
  const params: Params = initParams(gpu, paramSpecs(QWEN3_BENCH_CONFIG), 1, 0.02);
  const opt = createOptimizer(params, {
    lr: cfg.lr,
    weightDecay: cfg.weightDecay,
    maxGradNorm: cfg.gradClip,
  });
  try {
    const source = datasetSource({
      setup,
      train: prepared.rows,
      trainFile: "bench",
      rewards,
      seed: cfg.seed,
    });
    const ctx: RlContext = {
      cfg,
      config: QWEN3_BENCH_CONFIG,
      params,
      opt,
      source,
      objective: await resolveObjective(cfg),
    };
    const plen = prepared.rows.map((r) => r.ids.length);
    const lines = await stepTable(gpu, "random Qwen3, vocab 151,936, d = 256, 4 layers", ctx, steps);
    lines.push(
      `prompts ${Math.min(...plen)}-${Math.max(...plen)} tokens (Qwen3's chat template, thinking off); ` +
        `stop ids ${
          setup.stopIds.join(", ")
        }; ${setup.tokenizerVocab} of ${QWEN3_BENCH_CONFIG.vocabSize} ids sampled`,
    );
    return lines;
  } finally {
    rewards.close();
    params.dispose();
    disposeOptimizer(opt);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
};

/** Both benchmarks, printed and returned as one markdown text. */
export async function benchRl(gpu: GpuBackend, steps = 3): Promise<string> {
  const lines = [...await benchDemo(gpu, steps), "", ...await benchQwen3(gpu, Math.min(steps, 2))];
  console.log(lines.join("\n"));
  return lines.join("\n");
}

if (import.meta.main) await withGpu((gpu) => benchRl(gpu));
