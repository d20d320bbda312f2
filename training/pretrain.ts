/**
 * Supervised pretraining of a tiny char base model on a task (embedded or a module), to partial competence
 * (well above zero, well below perfect on the eval split), reproducible from its settings: the shipped models
 * are presets (PRETRAIN_PRESETS) that re-create their folders byte for byte. `pretrain.ts` runs it from flags.
 */
import { Effect } from "effect";
import { ConfigError, type FileFormatError } from "../core/errors.ts";
import { DEVICE_FLAG, type FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import type { Tensor } from "../engine/tensor.ts";
import { paramsToHost, writeModelDir } from "../formats/hf.ts";
import { resolveTask } from "../formats/task.ts";
import { CharTokenizer, writeTokenizerDir } from "../formats/tokenizer.ts";
import { writeAtomic } from "../io/files.ts";
import { type DecoderConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams, type Params } from "../policies/params.ts";
import { drawProblems, type Task } from "../tasks/task.ts";
import { sequenceLength, supervisedBatch } from "./data.ts";
import { evaluate } from "./evaluate.ts";
import { createOptimizer, disposeOptimizer, type Optimizer } from "./optimizer.ts";
import { supervisedStep } from "./sft.ts";

/** The decoder families pretrain builds: Qwen3 (q/k RMSNorm, tied lm_head) and Llama (neither). */
export const ARCHS = ["qwen3", "llama"] as const;
/** A decoder family pretrain builds. */
export type Arch = typeof ARCHS[number];

/** Everything that decides a pretrained model (and its reported eval). */
export interface PretrainSettings {
  /** An embedded task's name or a module path (`./t.ts[#export]`). */
  readonly task: string;
  /** The decoder family. */
  readonly arch: Arch;
  /** Decoder layers. */
  readonly layers: number;
  /** Hidden (residual stream) width. */
  readonly hidden: number;
  /** Query heads. */
  readonly heads: number;
  /** Key/value heads (divides `heads`). */
  readonly kvHeads: number;
  /** Width of one head (even). */
  readonly headDim: number;
  /** The FFN's intermediate width. */
  readonly ffn: number;
  /** Standard deviation of the normal initial weights. */
  readonly initStd: number;
  /** Seed of the initial weights and of the training problems (also the eval problem set's seed). */
  readonly seed: number;
  /** Supervised steps. */
  readonly steps: number;
  /** Problems per step. */
  readonly batch: number;
  /** AdamW learning rate (constant). */
  readonly lr: number;
  /** AdamW decoupled weight decay. */
  readonly weightDecay: number;
  /** Evaluate every this many steps (and after the last). */
  readonly evalEvery: number;
  /** Held-out problems per evaluation. */
  readonly evalProblems: number;
}

/** The shipped models' shape and initialization: 6 layers, d = 64, 4 query and 2 key/value heads of 16, FFN 192. */
const TINY_SHAPE = {
  layers: 6,
  hidden: 64,
  heads: 4,
  kvHeads: 2,
  headDim: 16,
  ffn: 192,
  initStd: 0.05,
  seed: 1,
} as const;

/** The shipped models' optimization and evaluation settings (their step counts differ). */
const TINY_TRAINING = { batch: 64, lr: 3e-3, weightDecay: 0.01, evalEvery: 100, evalProblems: 128 } as const;

/**
 * The shipped base models' settings: `deno task pretrain --preset NAME --out DIR` re-creates models/NAME byte
 * for byte (models/manifest.json holds the hashes; tests/pretrain_test.ts pins them).
 */
export const PRETRAIN_PRESETS = {
  "tiny-arith": {
    task: "arith",
    arch: "qwen3",
    ...TINY_SHAPE,
    steps: 300,
    ...TINY_TRAINING,
  },
  "tiny-arith-llama": {
    task: "arith",
    arch: "llama",
    ...TINY_SHAPE,
    steps: 300,
    ...TINY_TRAINING,
  },
  "tiny-rewrite": {
    task: "rewrite",
    arch: "qwen3",
    ...TINY_SHAPE,
    steps: 150,
    ...TINY_TRAINING,
  },
} as const satisfies { readonly [name: string]: PretrainSettings };

/** The name of a preset (a shipped model folder under models/). */
export type PresetName = keyof typeof PRETRAIN_PRESETS;
/** The preset names, in table order. */
export const PRESET_NAMES = Object.keys(PRETRAIN_PRESETS) as PresetName[];

const fromPreset = "default: the preset's";

/**
 * The flags of `deno task pretrain` (a core/flags.ts table). Every model and training setting defaults to the
 * `--preset`'s value; a flag given overrides it.
 */
export const PRETRAIN_FLAGS = {
  preset: {
    kind: "enum",
    values: PRESET_NAMES,
    default: "tiny-arith",
    help: "the settings of a shipped model (models/NAME); the flags below override them",
  },
  out: {
    kind: "str",
    arg: "DIR",
    help: "model folder to write (default runs/pretrain/PRESET, or .../custom)",
  },
  task: { kind: "str", arg: "NAME|FILE", help: `arith | rewrite | path/to/task.ts[#export] (${fromPreset})` },
  arch: {
    kind: "enum",
    values: ARCHS,
    help: `qwen3: q/k norm, tied lm_head; llama: neither (${fromPreset})`,
  },
  layers: { kind: "posint", help: `decoder layers (${fromPreset})` },
  hidden: { kind: "posint", help: `hidden size (${fromPreset})` },
  heads: { kind: "posint", help: `attention heads (${fromPreset})` },
  kvHeads: { kind: "posint", help: `key/value heads; must divide --heads (${fromPreset})` },
  headDim: { kind: "posint", multipleOf: 2, help: `width of one head, even (${fromPreset})` },
  ffn: { kind: "posint", help: `FFN intermediate size (${fromPreset})` },
  initStd: { kind: "posnum", help: `std of the normal initial weights (${fromPreset})` },
  seed: {
    kind: "int",
    min: 0,
    help: `seed of the initial weights and the training problems (${fromPreset})`,
  },
  steps: { kind: "posint", help: `supervised steps (${fromPreset})` },
  batch: { kind: "posint", help: `problems per step (${fromPreset})` },
  lr: { kind: "posnum", help: `AdamW learning rate (${fromPreset})` },
  weightDecay: { kind: "num", min: 0, help: `AdamW decoupled weight decay (${fromPreset})` },
  evalEvery: { kind: "posint", help: `evaluate every N steps (${fromPreset})` },
  evalProblems: { kind: "posint", help: `held-out problems per evaluation (${fromPreset})` },
  device: DEVICE_FLAG,
} as const satisfies FlagTable;

/** The keys of PretrainSettings, in a fixed order (the order pretrain.json records them in). */
export const SETTING_KEYS = Object.keys(PRETRAIN_PRESETS["tiny-arith"]) as (keyof PretrainSettings)[];

/** A preset's settings with `over` applied (flags given on the command line). */
export const settingsOf = (preset: PresetName, over: Partial<PretrainSettings> = {}): PretrainSettings => ({
  ...PRETRAIN_PRESETS[preset],
  ...Object.fromEntries(Object.entries(over).filter(([, v]) => v !== undefined)),
});

const badFlag = (field: string, message: string) =>
  new ConfigError({ source: "flags", field, message: `${field}: ${message}` });

/** The decoder config the settings describe, for a tokenizer of `vocabSize`; bad head shapes are ConfigErrors. */
export const modelConfigOf = (s: PretrainSettings, vocabSize: number): DecoderConfig => {
  if (s.heads % s.kvHeads !== 0) {
    throw badFlag("--kv-heads", `${s.kvHeads} must divide --heads ${s.heads}`);
  }
  if (s.headDim % 2 !== 0) throw badFlag("--head-dim", `${s.headDim} must be even (rotary embedding)`);
  const qwen = s.arch === "qwen3";
  return tinyConfig({
    architecture: qwen ? "Qwen3ForCausalLM" : "LlamaForCausalLM",
    qkNorm: qwen,
    tieWordEmbeddings: qwen,
    qkvBias: false,
    vocabSize,
    hiddenSize: s.hidden,
    numLayers: s.layers,
    numHeads: s.heads,
    numKvHeads: s.kvHeads,
    headDim: s.headDim,
    intermediateSize: s.ffn,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
  });
};

/** One held-out evaluation during pretraining. */
export interface PretrainEval {
  /** Steps done before it (0: the initial weights). */
  readonly step: number;
  /** Fraction of problems whose greedy response is correct. */
  readonly greedy: number;
  /** Mean reward of 4 samples per problem at temperature 1. */
  readonly avgAt4: number;
  /** Fraction of problems with a correct sample among 4. */
  readonly passAt4: number;
  /** Problems evaluated. */
  readonly problems: number;
  /** Seconds since the first step started. */
  readonly seconds: number;
}

/** pretrain.json: the settings, where and how long it ran, the evaluations and every step's loss. */
export interface PretrainReport {
  /** The preset whose settings these are exactly; null when flags overrode any. */
  readonly preset: string | null;
  /** Every setting of the run. */
  readonly settings: PretrainSettings;
  /** The task's name (its `name` field). */
  readonly taskName: string;
  /** Tokens per training row (bos + longest prompt + longest solution + eos). */
  readonly sequenceLength: number;
  /** The backend's description (the llvmpipe vector width shows here). */
  readonly adapter: string;
  /** Wall time from the first evaluation to the last. */
  readonly seconds: number;
  /** The last evaluation (after the last step). */
  readonly eval: PretrainEval;
  /** Every evaluation, in step order. */
  readonly evals: readonly PretrainEval[];
  /** The mean next-token loss of every step's batch (before its update), as read back in f32. */
  readonly loss: readonly { step: number; loss: number }[];
}

interface Setup {
  readonly task: Task;
  readonly tok: CharTokenizer;
  readonly config: DecoderConfig;
  readonly T: number;
  readonly params: Params;
  readonly opt: Optimizer;
}

/** The task, tokenizer, config, fresh parameters and optimizer, as a resource of the enclosing scope. */
const setUp = (backend: Backend, s: PretrainSettings) =>
  Effect.gen(function* () {
    const task = yield* resolveTask(s.task, "--task", s.seed);
    const tok = new CharTokenizer(task.alphabet);
    const config = yield* Effect.try({
      try: () => modelConfigOf(s, tok.vocabSize),
      catch: (e) => e as ConfigError,
    });
    const T = sequenceLength(task);
    return yield* Effect.acquireRelease(
      Effect.sync((): Setup => {
        const params = initParams(backend, paramSpecs(config), s.seed, s.initStd);
        const opt = createOptimizer(params, { lr: s.lr, weightDecay: s.weightDecay, maxGradNorm: 1 });
        return { task, tok, config, T, params, opt };
      }),
      (x) =>
        Effect.sync(() => {
          disposeOptimizer(x.opt);
          x.params.dispose();
        }),
    );
  });

/**
 * Steps `1..n` (problems `(s-1)*batch ..` of the train split under the seed), with `between(step)` awaited after
 * each step (evaluations); losses are read back every 10 steps so the GPU queue stays full. Returns the losses.
 */
const steps = async (
  x: Setup,
  s: PretrainSettings,
  n: number,
  between: (step: number, history: { step: number; loss: number }[]) => Promise<void>,
) => {
  const history: { step: number; loss: number }[] = [];
  let pending: { step: number; loss: Tensor }[] = [];
  const flush = async () => {
    for (const p of pending) {
      history.push({ step: p.step, loss: (await p.loss.data())[0] });
      p.loss.dispose();
    }
    pending = [];
  };
  for (let step = 1; step <= n; step++) {
    const problems = drawProblems(x.task, "train", s.seed, (step - 1) * s.batch, s.batch);
    const { loss, norm } = supervisedStep(x.config, x.params, x.opt, supervisedBatch(x.tok, problems, x.T));
    norm.dispose();
    pending.push({ step, loss });
    if (step % 10 === 0 || step === n) await flush();
    await between(step, history);
  }
  await flush();
  return history;
};

/**
 * The losses of the first `n` steps of a pretraining run with settings `s` (no evaluation, nothing written):
 * bit for bit the first `n` losses of the full run, which tests compare with a shipped model's pretrain.json.
 */
export const pretrainLosses = (
  backend: Backend,
  s: PretrainSettings,
  n: number,
): Effect.Effect<number[], ConfigError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const x = yield* setUp(backend, s);
      const h = yield* Effect.promise(() => steps(x, s, n, () => Promise.resolve()));
      return h.map((e) => e.loss);
    }),
  );

/** Where `deno task pretrain` writes when no --out is given: never into models/. */
export const defaultOut = (preset: PresetName, overridden: boolean): string =>
  `runs/pretrain/${overridden ? "custom" : preset}`;

/**
 * Pretrain a base model with settings `s` on `backend`: supervised next-token steps on the task's worked
 * solutions, held-out evaluations every `evalEvery` steps (greedy, avg@4 and pass@4 on `evalProblems`), then
 * config.json, model.safetensors, tokenizer.json and pretrain.json (PretrainReport) written to `out`.
 */
export const pretrain = (
  backend: Backend,
  s: PretrainSettings,
  o: { readonly out: string; readonly preset: string | null; readonly quiet?: boolean },
): Effect.Effect<PretrainReport, ConfigError | FileFormatError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const x = yield* setUp(backend, s);
      const log = (m: string) => o.quiet || console.log(m);
      const { task, tok, config, T, params } = x;
      log(
        `pretrain ${o.preset ?? "(custom)"}: ${s.arch} ${s.layers} layers d=${s.hidden} on ${task.name}, ` +
          `${s.steps} steps of ${s.batch} -> ${o.out}`,
      );
      const t0 = performance.now();
      const evals: PretrainEval[] = [];
      const evalNow = async (step: number, history: { step: number; loss: number }[]) => {
        const r = await evaluate(config, params, tok, task, {
          problems: s.evalProblems,
          k: 4,
          temperature: 1,
          maxNew: (task.maxSolutionChars ?? 16) + 1,
          seed: 1000 + s.seed,
          taskSeed: s.seed,
        });
        const e: PretrainEval = {
          step,
          greedy: r.greedy,
          avgAt4: r.avgAtK,
          passAt4: r.passAtK,
          problems: r.problems,
          seconds: (performance.now() - t0) / 1000,
        };
        evals.push(e);
        const l = history[history.length - 1];
        log(
          `step ${step}/${s.steps}  loss ${l ? l.loss.toFixed(4) : "-"}  eval greedy ${
            (100 * e.greedy).toFixed(1)
          }%  avg@4 ${(100 * e.avgAt4).toFixed(1)}%  pass@4 ${(100 * e.passAt4).toFixed(1)}%  ${
            e.seconds.toFixed(0)
          } s`,
        );
      };
      const history = yield* Effect.promise(async () => {
        await evalNow(0, []);
        return await steps(x, s, s.steps, async (step, h) => {
          if (step % s.evalEvery === 0 || step === s.steps) {
            // The losses up to this step are read back before the evaluation so its log line shows the latest.
            await evalNow(step, h);
          }
        });
      });
      const seconds = (performance.now() - t0) / 1000;
      const tensors = yield* Effect.promise(() => paramsToHost(params));
      const meta = { format: "pt", bupo: "pretrain", seed: String(s.seed), steps: String(s.steps) };
      yield* writeModelDir(o.out, config, tensors, meta);
      yield* writeTokenizerDir(o.out, tok);
      const settings = Object.fromEntries(SETTING_KEYS.map((k) => [k, s[k]])) as unknown as PretrainSettings;
      const report: PretrainReport = {
        preset: o.preset,
        settings,
        taskName: task.name,
        sequenceLength: T,
        adapter: backend.name,
        seconds,
        eval: evals[evals.length - 1],
        evals,
        loss: history,
      };
      yield* writeAtomic(`${o.out}/pretrain.json`, JSON.stringify(report, null, 1) + "\n");
      const last = report.eval;
      log(
        `wrote ${o.out} in ${seconds.toFixed(0)} s (eval greedy ${(100 * last.greedy).toFixed(1)}%, avg@4 ${
          (100 * last.avgAt4).toFixed(1)
        }%)`,
      );
      return report;
    }),
  );
