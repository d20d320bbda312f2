/**
 * Supervised pretraining of the shipped base model on the embedded arithmetic task, to partial competence (well
 * above zero, well below perfect on the eval split), reproducible from its seed. `pretrain.ts` runs it from flags.
 */
import { Effect } from "effect";
import { DEVICE_FLAG, type FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import type { Tensor } from "../engine/tensor.ts";
import { paramsToHost, writeModelDir } from "../formats/hf.ts";
import { CharTokenizer, writeTokenizerDir } from "../formats/tokenizer.ts";
import { writeAtomic } from "../io/files.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { arithTask } from "../tasks/arith.ts";
import { batch } from "../tasks/task.ts";
import { sequenceLength, supervisedBatch } from "./data.ts";
import { evaluate } from "./evaluate.ts";
import { createOptimizer } from "./optimizer.ts";
import { supervisedStep } from "./sft.ts";

/** The flags of `deno task pretrain` (a core/flags.ts table). */
export const PRETRAIN_FLAGS = {
  out: { kind: "str", default: "models/tiny-arith", arg: "DIR", help: "model folder to write" },
  seed: { kind: "posint", default: 1, help: "seed of the initial weights and the training problems" },
  steps: { kind: "posint", default: 300, help: "supervised steps" },
  batch: { kind: "posint", default: 64, help: "problems per step" },
  lr: { kind: "posnum", default: 3e-3, help: "AdamW learning rate" },
  evalEvery: { kind: "posint", default: 100, help: "evaluate every N steps" },
  evalProblems: { kind: "posint", default: 128, help: "held-out problems per evaluation" },
  device: DEVICE_FLAG,
} as const satisfies FlagTable;

export interface PretrainOptions {
  readonly out: string;
  readonly seed: number;
  readonly steps: number;
  readonly batch: number;
  readonly lr: number;
  readonly evalEvery: number;
  readonly evalProblems: number;
}

/**
 * Pretrain the tiny Qwen3-style base model (4 layers) on `backend` with supervised next-token steps on worked
 * solutions, then write config.json, model.safetensors, tokenizer.json and pretrain.json (the settings, the
 * loss curve and the final eval accuracy) to `o.out`. Returns pretrain.json's object.
 */
export const pretrain = (backend: Backend, o: PretrainOptions) =>
  Effect.gen(function* () {
    const { seed, steps, batch: B } = o;
    const task = arithTask();
    const tok = new CharTokenizer(task.alphabet);
    const config = tinyConfig({
      vocabSize: tok.vocabSize,
      hiddenSize: 64,
      numLayers: 4,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      intermediateSize: 192,
      ropeTheta: 10000,
    });
    const T = sequenceLength(task);
    const params = initParams(backend, paramSpecs(config), seed, 0.05);
    const t0 = performance.now();
    const history: { step: number; loss: number }[] = [];
    const last = yield* Effect.tryPromise({
      try: async () => {
        const opt = createOptimizer(params, { lr: o.lr, weightDecay: 0.01, maxGradNorm: 1 });
        let pending: { step: number; loss: Tensor }[] = [];
        const flush = async () => {
          for (const x of pending) {
            history.push({ step: x.step, loss: (await x.loss.data())[0] });
            x.loss.dispose();
          }
          pending = [];
        };
        const evalNow = async (step: number) => {
          const r = await evaluate(config, params, tok, task, {
            problems: o.evalProblems,
            k: 4,
            temperature: 1,
            maxNew: (task.maxSolutionChars ?? 16) + 1,
            seed: 1000 + seed,
            taskSeed: seed,
          });
          const l = history[history.length - 1];
          console.log(
            `step ${step}/${steps}  loss ${l?.loss.toFixed(4)}  eval greedy ${
              (100 * r.greedy).toFixed(1)
            }%  ` +
              `avg@4 ${(100 * r.avgAtK).toFixed(1)}%  pass@4 ${(100 * r.passAtK).toFixed(1)}%  ` +
              `${((performance.now() - t0) / 1000).toFixed(0)} s`,
          );
          return r;
        };
        let r = await evalNow(0);
        for (let s = 1; s <= steps; s++) {
          const problems = batch(task, "train", seed, (s - 1) * B, B);
          const { loss, norm } = supervisedStep(config, params, opt, supervisedBatch(tok, problems, T));
          norm.dispose();
          pending.push({ step: s, loss });
          if (s % 10 === 0) await flush();
          if (s % o.evalEvery === 0 || s === steps) {
            await flush();
            r = await evalNow(s);
          }
        }
        return r;
      },
      catch: (e) => e,
    });
    const tensors = yield* Effect.promise(() => paramsToHost(params));
    const meta = { format: "pt", bupo: "pretrain", seed: String(seed), steps: String(steps) };
    yield* writeModelDir(o.out, config, tensors, meta);
    yield* writeTokenizerDir(o.out, tok);
    const report = {
      task: task.name,
      seed,
      steps,
      batch: B,
      lr: o.lr,
      sequenceLength: T,
      adapter: backend.name,
      seconds: (performance.now() - t0) / 1000,
      eval: { greedy: last.greedy, avgAt4: last.avgAtK, passAt4: last.passAtK, problems: last.problems },
      loss: history,
    };
    yield* writeAtomic(`${o.out}/pretrain.json`, JSON.stringify(report, null, 1) + "\n");
    console.log(
      `wrote ${o.out} (eval greedy ${(100 * last.greedy).toFixed(1)}%, avg@4 ${
        (100 * last.avgAtK).toFixed(1)
      }%)`,
    );
    return report;
  });
