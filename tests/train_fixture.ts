/** A random tiny model folder (Hugging Face layout, the task's char tokenizer) and tiny run configs over it. */
import { Effect } from "effect";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { paramsToHost, writeModelDir } from "../formats/hf.ts";
import { initParams } from "../policies/params.ts";
import { CharTokenizer, saveTokenizer } from "../formats/tokenizer.ts";
import { arithTask } from "../tasks/arith.ts";
import { DEFAULTS, type TrainConfig } from "../training/config.ts";
import { cpu32 } from "./util.ts";

/** A temporary folder for this test file, removed when the process ends. */
export const tmp = await Deno.makeTempDir({ prefix: "bupo-train-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(tmp, { recursive: true });
  } catch { /* already gone */ }
});

export const tok = new CharTokenizer(arithTask().alphabet);
export const config = tinyConfig({
  vocabSize: tok.vocabSize,
  hiddenSize: 16,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 8,
  intermediateSize: 32,
});

/** A random tiny model folder in the Hugging Face layout with the task's char tokenizer. */
export const modelDir = `${tmp}/model`;
{
  const p = initParams(cpu32, paramSpecs(config), 5, 0.2);
  await Effect.runPromise(writeModelDir(modelDir, config, await paramsToHost(p)));
  await saveTokenizer(modelDir, tok);
  p.dispose();
}

/** A 2-step run of 2 prompts x 2 into `out`, evaluating 3 problems at k = 1, checkpointing every step. */
export const small = (out: string, over: Partial<TrainConfig> = {}): TrainConfig => ({
  ...DEFAULTS,
  model: modelDir,
  out,
  steps: 2,
  prompts: 2,
  group: 2,
  maxNew: 5,
  minibatches: 1,
  evalEvery: 2,
  evalProblems: 3,
  evalK: 1,
  checkpointEvery: 1,
  layer: 0,
  phaseSteps: 1,
  ...over,
});
