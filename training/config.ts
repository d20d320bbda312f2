/**
 * The RL run's configuration: defaults, a JSON config file (io-ts decoded) and flags, merged in that order.
 * TRAIN_FLAGS is the one table of its settings (core/flags.ts rows): train.ts parses flags with it (cli/flags.ts)
 * and decodeConfigJson checks a config file's fields with the same rows. Every bad value is a ConfigError
 * naming the flag or field and what was expected.
 */
import { Effect } from "effect";
import * as t from "io-ts";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { readJson } from "../io/files.ts";
import { checkValue, DEVICE_FLAG, type DeviceChoice, flagName, type FlagSpec } from "../core/flags.ts";
import { embeddedTaskNames } from "../tasks/index.ts";

/** Everything `train.ts` reads. */
export interface TrainConfig {
  /** Model folder (config.json, model.safetensors, tokenizer.json). */
  readonly model: string;
  /** Where to run: auto (WebGPU when an adapter exists, else the CPU), gpu, or the CPU reference backend. */
  readonly device: DeviceChoice;
  /** An embedded task's name (`arith`, `rewrite`) or the path of a module exporting a Task (`./t.ts[#export]`). */
  readonly task: string;
  /** `grpo`, `bupo`, or the path of a TypeScript module exporting an Objective (`path#export` picks one). */
  readonly objective: string;
  /**
   * BuPO's internal layer k (0-based) and phase length (steps of the internal phase). `auto`: the boundary layer
   * of the base model's entropy flow on training prompts (policies/analysis.ts boundaryLayer), chosen before step
   * 1 and logged to boundary.json; the config keeps `auto`.
   */
  readonly layer: number | "auto";
  /** Steps of BuPO's internal phase (steps 1..phaseSteps train pi_layer; then the final policy). */
  readonly phaseSteps: number;
  /** RL steps (1-based in logs and checkpoints). */
  readonly steps: number;
  /** Prompts per step. */
  readonly prompts: number;
  /** Responses per prompt (the GRPO group; at least 2). */
  readonly group: number;
  /** Sampling temperature of the rollouts. */
  readonly temperature: number;
  /** Most response tokens (eos included). */
  readonly maxNew: number;
  /** AdamW learning rate. */
  readonly lr: number;
  /** AdamW decoupled weight decay. */
  readonly weightDecay: number;
  /** PPO clip range below 1 (built-in objectives). */
  readonly clip: number;
  /** PPO clip range above 1 (DAPO's clip-higher; built-in objectives). */
  readonly clipHigh: number;
  /** Coefficient of the k3 KL to the frozen base model added to the objective (0 = off). */
  readonly kl: number;
  /** Passes over each step's rollouts. */
  readonly epochs: number;
  /** Optimizer updates per epoch (they must divide prompts x group). */
  readonly minibatches: number;
  /** Global gradient-norm clip. */
  readonly gradClip: number;
  /** Advantage estimator: GRPO (group-normalized), Dr. GRPO (mean-centred), RLOO (leave-one-out). */
  readonly advantage: "grpo" | "drgrpo" | "rloo";
  /** Seed of sampling, training problems and evaluation. */
  readonly seed: number;
  /** The run folder. */
  readonly out: string;
  /** Evaluate every this many steps (and before step 1 and after the last). */
  readonly evalEvery: number;
  /** Held-out problems per evaluation. */
  readonly evalProblems: number;
  /** Samples per evaluation problem (avg@k, pass@k). */
  readonly evalK: number;
  /** The policy evaluation samples from: `final`, or an internal one (`layer(2)`, `attn(0,normed)`, ...). */
  readonly evalPolicy: string;
  /** Checkpoint every this many steps (and after the last). */
  readonly checkpointEvery: number;
  /** Truncated importance correction cap for internal-policy terms (0 = off, as in the reference code). */
  readonly tisCap: number;
  /**
   * Train on a prompt dataset (.jsonl, .json or .parquet; verl's, TRL's or --prompt-key/--answer-key rows)
   * instead of `task`, with the model folder's own tokenizer, chat template and stop ids. The settings below
   * apply to datasets only; each is optional (absent: its default), so a task run's config never holds them.
   */
  readonly data?: string;
  /** Held-out rows evaluated every `evalEvery` steps (avg@k, pass@k, greedy, per data_source). */
  readonly evalData?: string;
  /** The prompt's field (a dotted path) when the schema is not detected. */
  readonly promptKey?: string;
  /** The answer's field (a dotted path) when the schema is not detected. */
  readonly answerKey?: string;
  /** Drop prompts longer than this many tokens (verl's filter_overlong_prompts); absent: keep all. */
  readonly maxPrompt?: number;
  /** Chat-template variables as a JSON object (vLLM's flag), e.g. `{"enable_thinking": false}`. */
  readonly chatTemplateKwargs?: string;
  /** Send string prompts as they are, without the chat template. */
  readonly noChatTemplate?: boolean;
  /** Weighted rewards: built-ins (math, exact, regex, format) or module paths; absent: `math:1`. */
  readonly reward?: string;
  /** Seconds per reward call; past it the reward scores 0 and counts in reward/errors (absent: 5). */
  readonly rewardTimeout?: number;
  /** The `regex` reward's pattern (`/body/flags` or a body). */
  readonly rewardPattern?: string;
  /** Leave responses cut at maxNew (no stop token) out of the loss (TRL's mask_truncated_completions). */
  readonly maskTruncated?: boolean;
}

/** The reward of a dataset run without `--reward`. */
export const DEFAULT_DATA_REWARD = "math:1";
/** Seconds per reward call without `--reward-timeout`. */
export const DEFAULT_REWARD_TIMEOUT_S = 5;

/** The settings of a run that neither a config file nor a flag gives: `deno run -A train.ts`'s demo. */
export const DEFAULTS: TrainConfig = {
  model: "models/tiny-arith",
  device: "auto",
  task: "arith",
  objective: "bupo",
  layer: 2,
  phaseSteps: 10,
  steps: 40,
  prompts: 16,
  group: 8,
  temperature: 1,
  maxNew: 14,
  lr: 1e-4,
  weightDecay: 0.01,
  clip: 0.2,
  clipHigh: 0.2,
  kl: 0,
  epochs: 1,
  minibatches: 2,
  gradClip: 1,
  advantage: "grpo",
  seed: 1,
  out: "runs/latest",
  evalEvery: 10,
  evalProblems: 128,
  evalK: 4,
  evalPolicy: "final",
  checkpointEvery: 5,
  tisCap: 0,
};

const ROWS: { readonly [K in keyof TrainConfig]-?: Omit<FlagSpec, "default"> } = {
  model: { kind: "str", arg: "DIR", help: "model folder" },
  device: DEVICE_FLAG,
  task: {
    kind: "str",
    arg: "NAME|FILE",
    help: `${embeddedTaskNames().join(" | ")} | path/to/task.ts[#export] (a module exporting a Task)`,
  },
  objective: { kind: "str", arg: "NAME|FILE", help: "grpo | bupo | path/to/objective.ts[#export]" },
  layer: {
    kind: "int",
    min: 0,
    words: ["auto"],
    arg: "K|auto",
    help: "BuPO internal layer k (0-based; the paper's layer k+1); auto: the boundary layer of the\n" +
      "base model's entropy flow on training prompts (logged to boundary.json)",
  },
  phaseSteps: { kind: "posint", help: "steps of BuPO's internal phase" },
  steps: { kind: "posint", help: "RL steps" },
  prompts: { kind: "posint", help: "prompts per step" },
  group: { kind: "posint", help: "responses per prompt (group size)" },
  temperature: { kind: "posnum", help: "sampling temperature" },
  maxNew: { kind: "posint", help: "max response tokens" },
  lr: { kind: "posnum", help: "AdamW learning rate" },
  weightDecay: { kind: "num", min: 0, help: "AdamW decoupled weight decay" },
  clip: { kind: "posnum", help: "PPO clip (low)" },
  clipHigh: { kind: "posnum", help: "PPO clip (high; DAPO clip-higher)" },
  kl: { kind: "num", min: 0, help: "KL-to-reference coefficient (k3); 0 = off" },
  epochs: { kind: "posint", help: "passes over each step's rollouts" },
  minibatches: { kind: "posint", help: "updates per epoch" },
  gradClip: { kind: "posnum", help: "global gradient-norm clip" },
  advantage: { kind: "enum", values: ["grpo", "drgrpo", "rloo"], help: "advantage estimator" },
  seed: { kind: "int", min: 0, help: "seed of sampling, problems and evaluation" },
  out: { kind: "str", arg: "DIR", help: "run folder" },
  evalEvery: { kind: "posint", help: "evaluate every N steps" },
  evalProblems: { kind: "posint", help: "held-out problems per evaluation" },
  evalK: { kind: "posint", help: "samples per eval problem (avg@k, pass@k)" },
  evalPolicy: {
    kind: "str",
    arg: "POLICY",
    help: "policy evaluation samples from: final, or layer(k) | attn(k) | ffn(k), optionally (k,normed)\n" +
      "(e.g. layer(2): how good pi_k itself gets during BuPO's internal phase)",
  },
  checkpointEvery: { kind: "posint", help: "checkpoint every N steps" },
  tisCap: { kind: "num", min: 0, help: "truncated importance correction cap (0 = off)" },
  data: {
    kind: "str",
    arg: "FILE",
    help: "train on a prompt dataset instead of --task: .jsonl, .json or .parquet (verl's or TRL's\n" +
      "rows, or --prompt-key/--answer-key), with the model's tokenizer, chat template and stop ids",
  },
  evalData: {
    kind: "str",
    arg: "FILE",
    help: "held-out rows for evaluation (avg@k, pass@k, greedy; per data_source); the first\n" +
      "--eval-problems of them. Without it a dataset run is not evaluated",
  },
  promptKey: { kind: "str", arg: "PATH", help: "the prompt's field, a dotted path (default: prompt)" },
  answerKey: {
    kind: "str",
    arg: "PATH",
    help: "the answer's field (default: reward_model.ground_truth, solution, answer or ground_truth)",
  },
  maxPrompt: { kind: "posint", help: "drop prompts longer than N tokens (the count is printed)" },
  chatTemplateKwargs: {
    kind: "str",
    arg: "JSON",
    help: `chat-template variables, e.g. '{"enable_thinking": false}'`,
  },
  noChatTemplate: { kind: "bool", help: "send string prompts as they are, without the chat template" },
  reward: {
    kind: "str",
    arg: "NAME[:W],...",
    help:
      `dataset rewards and weights: math, exact, regex, format or ./module.ts (default ${DEFAULT_DATA_REWARD}),\n` +
      "e.g. math:1,format:0.1",
  },
  rewardTimeout: {
    kind: "posnum",
    arg: "SECONDS",
    help: `per reward call (default ${DEFAULT_REWARD_TIMEOUT_S}); past it: 0, counted in reward/errors`,
  },
  rewardPattern: { kind: "str", arg: "PATTERN", help: "the regex reward's pattern (/body/flags or a body)" },
  maskTruncated: {
    kind: "bool",
    help: "leave responses cut at --max-new out of the loss (TRL's mask_truncated_completions)",
  },
};

/**
 * Every setting of a run as a flag-table row (kind, help, default from DEFAULTS); the flag of `maxNew` is
 * `--max-new`, its config-file field `maxNew`.
 */
export const TRAIN_FLAGS: { readonly [K in keyof TrainConfig]-?: FlagSpec } = Object.fromEntries(
  Object.entries(ROWS).map(([k, f]) => [k, { ...f, default: DEFAULTS[k as keyof TrainConfig] }]),
) as { readonly [K in keyof TrainConfig]-?: FlagSpec };

const ConfigFile = t.UnknownRecord;

/** Decode a JSON config object (a subset of TrainConfig's fields); unknown fields are errors. */
export const decodeConfigJson = (source: string, json: unknown): Partial<TrainConfig> => {
  if (!ConfigFile.is(json)) {
    throw new ConfigError({ source, field: "(root)", message: `${source}: expected a JSON object` });
  }
  const out: Record<string, unknown> = Object.create(null);
  for (const [k, v] of Object.entries(json)) {
    // Own keys only: `__proto__`, `constructor` or `toString` are unknown fields, not inherited members.
    if (!Object.hasOwn(TRAIN_FLAGS, k)) {
      throw new ConfigError({
        source,
        field: k,
        message: `${source}: unknown field ${JSON.stringify(k)}; known: ${
          Object.keys(TRAIN_FLAGS).join(", ")
        }`,
      });
    }
    out[k] = checkValue(
      TRAIN_FLAGS[k as keyof TrainConfig],
      v,
      { source, field: k, prefixSource: true },
      false,
    );
  }
  return { ...out } as Partial<TrainConfig>;
};

/**
 * Read and decode a JSON config file (`--config FILE`); a file that cannot be read or parsed is named with the
 * flag that gave it (`--config run.json: no such file`).
 */
export const readConfigFile = (
  path: string,
  flag = "--config",
): Effect.Effect<Partial<TrainConfig>, FileFormatError | ConfigError> =>
  Effect.flatMap(
    Effect.mapError(readJson(path), (e) =>
      new FileFormatError({ file: e.file, message: `${flag} ${e.message}` })),
    (j) =>
      Effect.try({ try: () => decodeConfigJson(path, j), catch: (e) => e as ConfigError }),
  );

/** Whether `--objective` names a module (a path, `path#export`) rather than a built-in objective. */
export const isObjectiveModule = (objective: string): boolean => objective !== "grpo" && objective !== "bupo";

/**
 * The settings an objective module makes meaningless: they build the built-in objectives (BuPO's layer and phase
 * length, the clip range and the TIS cap of grpo and bupo); a module's objective carries its own.
 */
export const BUILT_IN_OBJECTIVE_SETTINGS = ["layer", "phaseSteps", "clip", "clipHigh", "tisCap"] as const;

/** The flag of a setting: `--phase-steps` for `phaseSteps`. */
export const flagOf = (key: keyof TrainConfig): string => `--${flagName(key, TRAIN_FLAGS[key])}`;

/**
 * The config as a run records it (config.json, checkpoints): without the settings its objective does not use
 * (BUILT_IN_OBJECTIVE_SETTINGS when the objective is a module).
 */
export const recordedConfig = <C extends Partial<TrainConfig>>(c: C): Partial<C> => {
  if (c.objective === undefined || !isObjectiveModule(c.objective)) return c;
  const out: Partial<C> = { ...c };
  for (const k of BUILT_IN_OBJECTIVE_SETTINGS) delete out[k];
  return out;
};

/**
 * Merge defaults, file and flags, then check cross-field rules. An error names where the value came from: the
 * flag (`--group 1`), the config file's field (`run.json: group 1`, with `fileName`), or the default. With an
 * objective module, giving a setting it makes meaningless (BUILT_IN_OBJECTIVE_SETTINGS) in the file or as a flag
 * is an error naming it.
 */
export const resolveConfig = (
  file: Partial<TrainConfig>,
  flags: Partial<TrainConfig>,
  fileName = "the config file",
): TrainConfig => {
  const c = { ...DEFAULTS, ...file, ...flags };
  const where = (k: keyof TrainConfig): { field: string; shown: string } =>
    Object.hasOwn(flags, k)
      ? {
        field: flagOf(k),
        shown: `${flagOf(k)} ${c[k]}`,
      }
      : Object.hasOwn(file, k)
      ? { field: k, shown: `${fileName}: ${k} ${c[k]}` }
      : { field: k, shown: `${k} ${c[k]} (the default)` };
  if (isObjectiveModule(c.objective)) {
    for (const k of BUILT_IN_OBJECTIVE_SETTINGS) {
      const flag = k in flags, field = flag ? flagOf(k) : k;
      if (!flag && !(k in file)) continue;
      throw new ConfigError({
        source: flag ? "flags" : "config file",
        field,
        message: `${field} ${c[k]}: the objective module ${c.objective} defines its own ${
          k === "layer" || k === "phaseSteps" ? "policies and phases" : "clip range and importance correction"
        }; ${field} only applies to --objective grpo or bupo (remove it)`,
      });
    }
  }
  if (c.group < 2) {
    const w = where("group");
    throw new ConfigError({
      source: "config",
      field: w.field,
      message: `${w.shown}: GRPO needs at least 2 responses per prompt`,
    });
  }
  // A config file (a run's own config.json among them) always names a task; with data it is not used.
  if (c.data !== undefined && flags.task !== undefined) {
    throw new ConfigError({
      source: "flags",
      field: "--task",
      message: `--task ${c.task} and --data ${c.data}: a run trains on a task or on a dataset, not both`,
    });
  }
  if (c.data === undefined) {
    const dataOnly = ([
      "evalData",
      "promptKey",
      "answerKey",
      "maxPrompt",
      "chatTemplateKwargs",
      "noChatTemplate",
      "reward",
      "rewardTimeout",
      "rewardPattern",
    ] as const).find((k) => c[k] !== undefined && c[k] !== false);
    if (dataOnly) {
      const flag = `--${flagName(dataOnly, TRAIN_FLAGS[dataOnly])}`;
      throw new ConfigError({
        source: "config",
        field: flag,
        message: `${flag} applies to dataset runs; give --data FILE (the task ${c.task} has its own reward)`,
      });
    }
  }
  if ((c.prompts * c.group) % c.minibatches !== 0) {
    const w = where("minibatches"), p = where("prompts"), g = where("group");
    throw new ConfigError({
      source: "config",
      field: w.field,
      message: `${w.shown} must divide prompts x group = ${c.prompts * c.group} (${p.shown}, ${g.shown})`,
    });
  }
  return c;
};
