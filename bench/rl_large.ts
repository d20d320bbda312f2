/**
 * One RL step of a Qwen3-0.6B-shaped model (random weights, the real Qwen3 tokenizer and chat template, math
 * prompts, the math reward) on the default adapter: seconds of rollout, old log-probs and update, peak device
 * memory and process RSS. Not in CI; it needs ~16 GB of RAM on llvmpipe. The figure README.md quotes.
 * Run: `deno run -A bench/rl_large.ts [--prompts 2] [--group 2] [--max-new 16] [--layers 28] [--objective bupo]
 * [--steps 1]`.
 */
import { Effect } from "effect";
import { withGpu } from "../engine/gpu/device.ts";
import { prepareRows, readPromptSetup } from "../formats/generation.ts";
import { resolveRewards } from "../formats/rewards.ts";
import { type DecoderConfig, paramSpecs } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { DEFAULTS, type TrainConfig } from "../training/config.ts";
import { resolveObjective } from "../training/run.ts";
import { type RlContext, rlStep } from "../training/rl.ts";
import { datasetSource } from "../training/source.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";
import { writeQwen3Folder } from "../tests/qwen3_folder.ts";
import { mathRows, qwen3_0_6b } from "./rl.ts";

const arg = (name: string, dflt: string) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : dflt;
};

/** Qwen3-0.6B's shape. */
const config: DecoderConfig = qwen3_0_6b(Number(arg("layers", "28")));

const GiB = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

await withGpu(async (gpu) => {
  const cfg: TrainConfig = {
    ...DEFAULTS,
    objective: arg("objective", "bupo"),
    prompts: Number(arg("prompts", "2")),
    group: Number(arg("group", "2")),
    maxNew: Number(arg("max-new", "16")),
    minibatches: 1,
  };
  const dir = await writeQwen3Folder();
  const setup = await Effect.runPromise(
    readPromptSetup(dir, { chatTemplateKwargs: { enable_thinking: false } }),
  );
  const rows = prepareRows(setup, "bench", mathRows(16)).rows;
  const rewards = await resolveRewards("math:1");
  let t = performance.now();
  const params = initParams(gpu, paramSpecs(config), 1, 0.02);
  const opt = createOptimizer(params, {
    lr: cfg.lr,
    weightDecay: cfg.weightDecay,
    maxGradNorm: cfg.gradClip,
  });
  await gpu.sync();
  console.log(`init ${((performance.now() - t) / 1000).toFixed(1)} s; device ${GiB(gpu.memory().live)}`);
  try {
    const source = datasetSource({ setup, train: rows, trainFile: "bench", rewards, seed: cfg.seed });
    const ctx: RlContext = { cfg, config, params, opt, source, objective: await resolveObjective(cfg) };
    for (let s = 1; s <= Number(arg("steps", "1")); s++) {
      gpu.resetPeak();
      t = performance.now();
      const m = await rlStep(ctx, s);
      console.log(
        `step ${s} (${cfg.objective}, ${cfg.prompts} prompts x ${cfg.group}, ${cfg.maxNew} new tokens, ` +
          `${config.numLayers} layers; ${gpu.name}): rollout ${m.time.rollout.toFixed(1)} s, old log-probs ` +
          `${m.time.old.toFixed(1)} s, update ${m.time.update.toFixed(1)} s, total ${
            m.time.total.toFixed(1)
          } s ` +
          `(${((performance.now() - t) / 1000).toFixed(1)} s wall); tokens ${m.tokens.rollout} rolled out, ` +
          `${m.tokens.trained} trained; peak device ${GiB(gpu.memory().peak)}, RSS ${
            GiB(Deno.memoryUsage().rss)
          }`,
      );
    }
  } finally {
    rewards.close();
    params.dispose();
    disposeOptimizer(opt);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
