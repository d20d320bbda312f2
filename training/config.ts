/**
 * The RL run's configuration: defaults, a JSON config file (io-ts decoded) and flags, merged in that order.
 * Every bad value is a ConfigError naming the flag or field and what was expected.
 */
import { parseArgs } from "node:util";
import * as t from "io-ts";
import { ConfigError } from "../core/errors.ts";

/** Everything `train.ts` reads. */
export interface TrainConfig {
  /** Model folder (config.json, model.safetensors, tokenizer.json). */
  readonly model: string;
  /** Where to run: the default WebGPU adapter, or the CPU reference backend (f32; slow, for checks). */
  readonly device: "gpu" | "cpu";
  /** Embedded task name. */
  readonly task: "arith";
  /** `grpo`, `bupo`, or the path of a TypeScript module exporting an Objective. */
  readonly objective: string;
  /** BuPO's internal layer k (0-based) and phase length (steps of the internal phase). */
  readonly layer: number;
  readonly phaseSteps: number;
  readonly steps: number;
  readonly prompts: number;
  readonly group: number;
  readonly temperature: number;
  readonly maxNew: number;
  readonly lr: number;
  readonly weightDecay: number;
  readonly clip: number;
  readonly clipHigh: number;
  readonly kl: number;
  readonly epochs: number;
  readonly minibatches: number;
  readonly gradClip: number;
  readonly advantage: "grpo" | "drgrpo" | "rloo";
  readonly seed: number;
  readonly out: string;
  readonly evalEvery: number;
  readonly evalProblems: number;
  readonly evalK: number;
  readonly checkpointEvery: number;
  /** Truncated importance correction cap for internal-policy terms (0 = off, as in the reference code). */
  readonly tisCap: number;
}

export const DEFAULTS: TrainConfig = {
  model: "models/tiny-arith",
  device: "gpu",
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
  checkpointEvery: 5,
  tisCap: 0,
};

type Kind = "int" | "posint" | "num" | "posnum" | "str" | "enum";
const FIELDS: Record<
  keyof TrainConfig,
  { kind: Kind; flag: string; values?: readonly string[]; help: string }
> = {
  model: { kind: "str", flag: "model", help: "model folder" },
  device: {
    kind: "enum",
    flag: "device",
    values: ["gpu", "cpu"],
    help: "WebGPU adapter or the CPU reference backend",
  },
  task: { kind: "enum", flag: "task", values: ["arith"], help: "embedded task" },
  objective: { kind: "str", flag: "objective", help: "grpo | bupo | path/to/objective.ts" },
  layer: { kind: "int", flag: "layer", help: "BuPO internal layer k (0-based; the paper's layer k+1)" },
  phaseSteps: { kind: "posint", flag: "phase-steps", help: "steps of BuPO's internal phase" },
  steps: { kind: "posint", flag: "steps", help: "RL steps" },
  prompts: { kind: "posint", flag: "prompts", help: "prompts per step" },
  group: { kind: "posint", flag: "group", help: "responses per prompt (group size)" },
  temperature: { kind: "posnum", flag: "temperature", help: "sampling temperature" },
  maxNew: { kind: "posint", flag: "max-new", help: "max response tokens" },
  lr: { kind: "posnum", flag: "lr", help: "AdamW learning rate" },
  weightDecay: { kind: "num", flag: "weight-decay", help: "AdamW decoupled weight decay" },
  clip: { kind: "posnum", flag: "clip", help: "PPO clip (low)" },
  clipHigh: { kind: "posnum", flag: "clip-high", help: "PPO clip (high; DAPO clip-higher)" },
  kl: { kind: "num", flag: "kl", help: "KL-to-reference coefficient (k3); 0 = off" },
  epochs: { kind: "posint", flag: "epochs", help: "passes over each step's rollouts" },
  minibatches: { kind: "posint", flag: "minibatches", help: "updates per epoch" },
  gradClip: { kind: "posnum", flag: "grad-clip", help: "global gradient-norm clip" },
  advantage: {
    kind: "enum",
    flag: "advantage",
    values: ["grpo", "drgrpo", "rloo"],
    help: "advantage estimator",
  },
  seed: { kind: "int", flag: "seed", help: "seed of sampling, problems and evaluation" },
  out: { kind: "str", flag: "out", help: "run folder" },
  evalEvery: { kind: "posint", flag: "eval-every", help: "evaluate every N steps" },
  evalProblems: { kind: "posint", flag: "eval-problems", help: "held-out problems per evaluation" },
  evalK: { kind: "posint", flag: "eval-k", help: "samples per eval problem (avg@k, pass@k)" },
  checkpointEvery: { kind: "posint", flag: "checkpoint-every", help: "checkpoint every N steps" },
  tisCap: { kind: "num", flag: "tis-cap", help: "truncated importance correction cap (0 = off)" },
};

const check = (source: string, key: keyof TrainConfig, v: unknown, raw: boolean): unknown => {
  const f = FIELDS[key];
  const where = raw ? `--${f.flag}` : key;
  const fail = (what: string): never => {
    throw new ConfigError({
      source,
      field: where,
      message: `${source}: ${where}: expected ${what}, got ${JSON.stringify(v)}`,
    });
  };
  if (f.kind === "str") return typeof v === "string" && v.length > 0 ? v : fail("a non-empty string");
  if (f.kind === "enum") {
    return typeof v === "string" && f.values!.includes(v) ? v : fail(f.values!.join(" | "));
  }
  const x = typeof v === "string" && raw ? Number(v) : v;
  if (typeof x !== "number" || !Number.isFinite(x)) return fail("a finite number");
  if ((f.kind === "int" || f.kind === "posint") && !Number.isInteger(x)) return fail("an integer");
  if ((f.kind === "posint" || f.kind === "posnum") && !(x > 0)) return fail("a positive number");
  if ((f.kind === "int" || f.kind === "num") && x < 0) return fail("a number >= 0");
  return x;
};

const ConfigFile = t.UnknownRecord;

/** Decode a JSON config object (a subset of TrainConfig's fields); unknown fields are errors. */
export const decodeConfigJson = (source: string, json: unknown): Partial<TrainConfig> => {
  if (!ConfigFile.is(json)) {
    throw new ConfigError({ source, field: "(root)", message: `${source}: expected a JSON object` });
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(json)) {
    if (!(k in FIELDS)) {
      throw new ConfigError({
        source,
        field: k,
        message: `${source}: unknown field ${JSON.stringify(k)}; known: ${Object.keys(FIELDS).join(", ")}`,
      });
    }
    out[k] = check(source, k as keyof TrainConfig, v, false);
  }
  return out as Partial<TrainConfig>;
};

/** Help text listing every flag with its default. */
export const flagHelp = (): string =>
  Object.entries(FIELDS).map(([k, f]) =>
    `  --${f.flag.padEnd(18)} ${f.help} (default ${JSON.stringify(DEFAULTS[k as keyof TrainConfig])})`
  ).join("\n");

/** Parsed command line: config-file path, resume flag and flag overrides. */
export interface ParsedArgs {
  readonly configFile?: string;
  readonly resume: boolean;
  readonly help: boolean;
  readonly quiet: boolean;
  readonly overrides: Partial<TrainConfig>;
}

/** Parse flags strictly: an unknown flag or a bad value is a ConfigError naming it. */
export const parseFlags = (args: readonly string[]): ParsedArgs => {
  const options: Record<string, { type: "string" | "boolean" }> = {
    config: { type: "string" },
    resume: { type: "boolean" },
    help: { type: "boolean" },
    quiet: { type: "boolean" },
  };
  for (const f of Object.values(FIELDS)) options[f.flag] = { type: "string" };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: [...args], options, strict: true, allowPositionals: false })
      .values as typeof values;
  } catch (e) {
    const m = /'(--?[^']+)'/.exec((e as Error).message);
    throw new ConfigError({
      source: "flags",
      field: m?.[1] ?? "(flags)",
      message: `train: ${(e as Error).message.split("\n")[0]}. Run with --help for the list of flags.`,
    });
  }
  const overrides: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(FIELDS)) {
    const v = values[f.flag];
    if (v !== undefined) overrides[k] = check("flags", k as keyof TrainConfig, v, true);
  }
  return {
    configFile: values.config as string | undefined,
    resume: !!values.resume,
    help: !!values.help,
    quiet: !!values.quiet,
    overrides: overrides as Partial<TrainConfig>,
  };
};

/** Merge defaults, file and flags, then check cross-field rules. */
export const resolveConfig = (file: Partial<TrainConfig>, flags: Partial<TrainConfig>): TrainConfig => {
  const c = { ...DEFAULTS, ...file, ...flags };
  if (c.group < 2) {
    throw new ConfigError({
      source: "config",
      field: "group",
      message: `group ${c.group}: GRPO needs at least 2 responses per prompt`,
    });
  }
  if ((c.prompts * c.group) % c.minibatches !== 0) {
    throw new ConfigError({
      source: "config",
      field: "minibatches",
      message: `minibatches ${c.minibatches} must divide prompts x group = ${c.prompts * c.group}`,
    });
  }
  return c;
};
