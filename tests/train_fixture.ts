/** A random tiny model folder (Hugging Face layout, the task's char tokenizer) and tiny run configs over it. */
import { CharTokenizer } from "../formats/tokenizer.ts";
import { arithTask } from "../tasks/arith.ts";
import { DEFAULTS, type TrainConfig } from "../training/config.ts";
import { narrowConfig, writeRandomModel } from "./model_util.ts";

/** A temporary folder for this test file, removed when the process ends. */
export const tmp = await Deno.makeTempDir({ prefix: "bupo-train-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(tmp, { recursive: true });
  } catch { /* already gone */ }
});

export const tok = new CharTokenizer(arithTask().alphabet);
export const config = narrowConfig({ vocabSize: tok.vocabSize });

/** A random tiny model folder in the Hugging Face layout with the task's char tokenizer. */
export const modelDir = `${tmp}/model`;
await writeRandomModel(modelDir, config, 5, 0.2, tok);

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
