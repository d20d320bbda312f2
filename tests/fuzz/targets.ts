/**
 * What the fuzzer attacks: the loaders (safetensors, model folders with their index and shards, config.json,
 * tokenizer folders, rollout files, objective JSON, train config files), the flag parsers of every CLI and the
 * CLIs' main(argv) in-process. Each case builds its inputs from pristine templates, mutates one thing, runs
 * the target and classifies what happened: accepted, a clean error (a tagged error whose message names the
 * file or the flag, no stack trace) or a failure (anything else).
 */
import { Effect, Exit } from "effect";
import { parseSafetensors, serializeSafetensors, toF32, toI32 } from "../../core/safetensors.ts";
import { type Command, parseFlags } from "../../cli/flags.ts";
import { readModelDir, writeModelDir } from "../../formats/hf.ts";
import { readRolloutFile, writeRolloutFile } from "../../formats/rollout.ts";
import { CharTokenizer, readTokenizerDir, saveTokenizer } from "../../formats/tokenizer.ts";
import { decodeObjective, objectiveFromJson, objectiveToJson } from "../../objectives/codec.ts";
import {
  bupo,
  entropyBonus,
  grpo,
  klPolicies,
  klToRef,
  linear,
  nll,
  piecewise,
  sum,
} from "../../objectives/objective.ts";
import { attn, ffn, final, layer } from "../../policies/internal.ts";
import {
  decodeHfConfig,
  type DecoderConfig,
  encodeHfConfig,
  paramSpecs,
  tinyConfig,
} from "../../policies/config.ts";
import { ARITH_ALPHABET } from "../../tasks/arith.ts";
import { decodeConfigJson, readConfigFile, resolveConfig, type TrainConfig } from "../../training/config.ts";
import { COMPARE } from "../../compare.ts";
import { ENTROPY, main as entropyMain } from "../../entropy.ts";
import { GRAD, main as gradMain } from "../../grad.ts";
import { PRETRAIN } from "../../pretrain.ts";
import { main as trainMain, TRAIN } from "../../train.ts";
import {
  mutateBytes,
  mutatedJsonBytes,
  mutateJson,
  mutateSafetensors,
  PROTO_KEYS,
  type Rng,
} from "./mutate.ts";
import { hostTensors, narrowConfig } from "../model_util.ts";

/** What a case did. */
export type Outcome =
  | { readonly kind: "accepted" }
  | { readonly kind: "clean"; readonly message: string }
  /** A failure of a bug filed and not yet fixed (KNOWN): counted apart, never hidden. */
  | { readonly kind: "known"; readonly issue: string; readonly message: string }
  | { readonly kind: "failure"; readonly why: string };

/**
 * Bugs the fuzzer finds that are filed and fixed elsewhere: a CLI error line of `target` matching `pattern` is
 * counted as "known (issue)" instead of a failure. Remove an entry when its fix lands.
 */
export const KNOWN: readonly { readonly target: string; readonly issue: string; readonly pattern: RegExp }[] =
  [];

/** A case's result: the target, what was mutated, the outcome. */
export interface CaseResult {
  readonly target: string;
  readonly what: readonly string[];
  readonly outcome: Outcome;
}

// ---- classification --------------------------------------------------------------------------------------

/** The tagged errors a loader may fail with. */
const LOADER_TAGS = new Set(["FileFormatError", "ConfigError"]);
/** The tags a CLI's error line may carry (exit 1), beside usage errors (exit 2, no tag). */
const CLI_TAGS = [
  "FileFormatError",
  "NonFiniteError",
  "ShapeError",
  "MissingReadoutError",
  "UnknownCharError",
  "NoAdapterError",
  "GpuError",
];
const STACK = /^\s+at .*(:\d+:\d+\)?|<anonymous>\)?|native\)?)$/m;

const failure = (why: string): Outcome => ({ kind: "failure", why });

const describe = (e: unknown): string => {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message}\n${e.stack ?? ""}`.slice(0, 2000);
  return `${typeof e}: ${String(e)}`.slice(0, 2000);
};

/**
 * A thrown or failed value: clean when it is a loader's tagged error with a non-empty message, no stack trace,
 * and the message names one of `names` (the file, the folder, the source) or, for a ConfigError, its field.
 */
export const classifyError = (e: unknown, names: readonly string[]): Outcome => {
  const tag = typeof e === "object" && e !== null ? (e as { _tag?: unknown })._tag : undefined;
  if (typeof tag !== "string" || !LOADER_TAGS.has(tag)) return failure(`unnamed error: ${describe(e)}`);
  const msg = (e as { message?: unknown }).message;
  if (typeof msg !== "string" || msg.trim() === "") return failure(`${tag} with an empty message`);
  if (STACK.test(msg)) return failure(`${tag} message holds a stack trace: ${msg.slice(0, 500)}`);
  const field = (e as { field?: unknown }).field;
  const named = names.some((n) => msg.includes(n)) ||
    (tag === "ConfigError" && typeof field === "string" && field !== "" && msg.includes(field));
  if (!named) {
    return failure(`${tag} names neither ${names.join(" nor ")} nor its field: ${msg.slice(0, 500)}`);
  }
  return { kind: "clean", message: msg.slice(0, 300) };
};

/** Run a synchronous or Effect-returning loader and classify it (what it prints is dropped). */
const attempt = async (names: readonly string[], f: () => unknown): Promise<Outcome> => {
  const saved = { error: console.error, log: console.log, warn: console.warn, info: console.info };
  const quiet = () => {};
  Object.assign(console, { error: quiet, log: quiet, warn: quiet, info: quiet });
  try {
    const r = f();
    if (Effect.isEffect(r)) {
      const exit = await Effect.runPromiseExit(r as Effect.Effect<unknown, unknown>);
      if (Exit.isSuccess(exit)) return { kind: "accepted" };
      const reasons = exit.cause.reasons;
      const first = reasons[0] as { _tag: string; error?: unknown; defect?: unknown } | undefined;
      const err = first?._tag === "Fail" ? first.error : first?._tag === "Die" ? first.defect : first;
      return classifyError(err, names);
    }
    if (r instanceof Promise) await r;
    return { kind: "accepted" };
  } catch (e) {
    return classifyError(e, names);
  } finally {
    Object.assign(console, saved);
  }
};

/** Run a CLI's main(argv) with console output captured, and classify its exit code and error line. */
const runCli = async (
  name: string,
  main: (argv: readonly string[]) => Promise<number>,
  argv: readonly string[],
  names: readonly string[],
): Promise<Outcome> => {
  const err: string[] = [], out: string[] = [];
  const saved = { error: console.error, log: console.log, warn: console.warn, info: console.info };
  console.error = (...a: unknown[]) => void err.push(a.map(String).join(" "));
  console.warn = console.error;
  console.log = (...a: unknown[]) => void out.push(a.map(String).join(" "));
  console.info = console.log;
  let code: number;
  try {
    code = await main(argv);
  } catch (e) {
    return failure(`${name} main threw: ${describe(e)}`);
  } finally {
    Object.assign(console, saved);
  }
  const all = [...err, ...out].join("\n");
  if (STACK.test(all)) return failure(`${name} printed a stack trace:\n${all.slice(0, 1500)}`);
  if (code === 0) return { kind: "accepted" };
  const line = err[err.length - 1];
  if (line === undefined) return failure(`${name} exit ${code} without an error line`);
  if (!line.startsWith(`${name}: `)) return failure(`${name} exit ${code}: line without its name: ${line}`);
  const rest = line.slice(name.length + 2);
  if (rest.trim() === "") return failure(`${name} exit ${code}: empty message`);
  const namesPath = names.some((n) => rest.includes(n));
  if (code === 2) {
    return namesPath || /(^|[\s(])--[a-z]/.test(rest)
      ? { kind: "clean", message: rest.slice(0, 300) }
      : failure(`${name} usage error names no flag or file: ${rest.slice(0, 500)}`);
  }
  if (code !== 1) return failure(`${name} exit code ${code}: ${rest}`);
  const known = KNOWN.find((k) => k.target === name && k.pattern.test(rest));
  if (known) return { kind: "known", issue: known.issue, message: rest.slice(0, 300) };
  const tag = CLI_TAGS.find((t) => rest.startsWith(`${t}: `));
  if (!tag) return failure(`${name} exit 1 with an unnamed error: ${rest.slice(0, 500)}`);
  if (tag === "FileFormatError" && !namesPath && !/(^|[\s(])--[a-z]/.test(rest)) {
    return failure(`${name}: FileFormatError names no file or flag: ${rest}`);
  }
  return { kind: "clean", message: rest.slice(0, 300) };
};

// ---- templates -------------------------------------------------------------------------------------------

/** The pristine inputs every case copies from (built once, never written by a case). */
export interface Templates {
  readonly root: string;
  /** Model folders by variant (config.json, weights, tokenizer files). */
  readonly models: readonly string[];
  /** A model folder whose config.json lacks hidden_size: every command that reads it fails fast. */
  readonly broken: string;
  readonly tokenizers: readonly string[];
  readonly rollout: string;
  readonly safetensors: Uint8Array;
  readonly objectives: readonly unknown[];
  readonly trainConfig: Record<string, unknown>;
  /** A safetensors file outside every case folder (a symlink target that leads out). */
  readonly outside: string;
}

const VARIANTS: [string, Partial<DecoderConfig>][] = [
  ["qwen3", {}],
  ["qwen2", { architecture: "Qwen2ForCausalLM", qkvBias: true, qkNorm: false, tieWordEmbeddings: false }],
  ["llama", { architecture: "LlamaForCausalLM", qkNorm: false }],
  [
    "llama3",
    {
      architecture: "LlamaForCausalLM",
      qkNorm: false,
      ropeTheta: 500000,
      ropeScaling: {
        kind: "llama3",
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 64,
      },
    },
  ],
];

const tinyTensors = (c: DecoderConfig, seed: number) =>
  hostTensors(c, seed, (init, rnd) => (init === "ones" ? 1 : init === "zeros" ? 0 : 0.3 * rnd()));

/** Build the templates under `root/templates` (once per run, by the runner). */
export const buildTemplates = async (root: string): Promise<Templates> => {
  const t = `${root}/templates`;
  await Deno.mkdir(t, { recursive: true });
  const tok = new CharTokenizer(ARITH_ALPHABET + " ");
  const models: string[] = [];
  for (const [name, over] of VARIANTS) {
    const c = narrowConfig({ vocabSize: 24, intermediateSize: 24, ...over });
    const ts = tinyTensors(c, models.length + 1);
    const single = `${t}/${name}-single`;
    await Effect.runPromise(writeModelDir(single, c, ts));
    await saveTokenizer(single, tok);
    models.push(single);
    // The same weights as two shards with model.safetensors.index.json.
    const sharded = `${t}/${name}-sharded`;
    await Deno.mkdir(sharded, { recursive: true });
    const half = Math.ceil(ts.length / 2),
      files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    const weight_map: Record<string, string> = {};
    for (const [i, part] of [ts.slice(0, half), ts.slice(half)].entries()) {
      await Deno.writeFile(`${sharded}/${files[i]}`, serializeSafetensors(part, { format: "pt" }));
      for (const x of part) weight_map[x.name] = files[i];
    }
    await Deno.writeTextFile(
      `${sharded}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: 0 }, weight_map }),
    );
    await Deno.writeTextFile(`${sharded}/config.json`, JSON.stringify(encodeHfConfig(c)));
    await saveTokenizer(sharded, tok);
    models.push(sharded);
  }
  const broken = `${t}/broken`;
  await Deno.mkdir(broken, { recursive: true });
  const { hidden_size: _, ...noHidden } = encodeHfConfig(tinyConfig());
  await Deno.writeTextFile(`${broken}/config.json`, JSON.stringify(noHidden));
  const charTok = `${t}/tok-char`;
  await saveTokenizer(charTok, tok);
  const bpe = `${t}/tok-bpe`;
  await Deno.mkdir(bpe, { recursive: true });
  const fixtures = new URL("../fixtures/hf_tiny_bpe/", import.meta.url);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(new URL(f, fixtures), `${bpe}/${f}`);
  }
  const rollout = `${t}/rollout.safetensors`;
  const B = 2, T = 4;
  await Effect.runPromise(writeRolloutFile(rollout, {
    ids: Int32Array.from([1, 2, 3, 4, 5, 6, 7, 2]),
    B,
    T,
    promptLens: [1, 2],
    responseLens: [3, 2],
    advantages: Float32Array.from([1, -1]),
    behaviour: new Float32Array(B * T).fill(-1),
    old: new Map([["final", new Float32Array(B * T).fill(-1.5)]]),
    ref: new Map(),
  }));
  const safetensors = serializeSafetensors([
    { name: "a", shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    { name: "b.weight", shape: [4], data: Int32Array.from([1, -2, 3, 4]) },
    { name: "c", shape: [], data: Float32Array.from([7]) },
    { name: "d", shape: [0, 3], data: new Float32Array(0) },
  ], { format: "pt", note: "fuzz" });
  const objectives = [
    grpo(),
    grpo(layer(1), { clipLow: 0.1, clipHigh: 0.3, dualClip: 3, ratio: "sequence", tis: { cap: 2 } }),
    bupo({ layer: 1, until: 5, norm: "normed" }),
    sum(grpo(), entropyBonus(attn(0), linear(0.1, 0, 1, 10)), klToRef(final, { coef: 0.05 })),
    sum(nll(ffn(1), { kind: "seq-mean-token-sum-norm", maxLen: 64 }), klPolicies(layer(0), final)),
    sum(grpo(), entropyBonus(final, piecewise([[0, 1], [5, 0.5]]))),
  ].map((o) => JSON.parse(objectiveToJson(o)));
  const trainConfig = {
    group: 4,
    prompts: 4,
    steps: 2,
    lr: 0.001,
    objective: "grpo",
    seed: 3,
    device: "cpu",
  };
  const outside = `${t}/outside.safetensors`;
  await Deno.writeFile(outside, await Deno.readFile(`${models[0]}/model.safetensors`));
  return {
    root: t,
    models,
    broken,
    tokenizers: [charTok, bpe],
    rollout,
    safetensors,
    objectives,
    trainConfig,
    outside,
  };
};

// ---- helpers ---------------------------------------------------------------------------------------------

const copyDir = async (from: string, to: string) => {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
};

const files = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile) out.push(e.name);
  return out.sort();
};

/** Damage one file of a folder: JSON-level for JSON files, header/byte-level for safetensors, or the file system. */
const damageFolder = async (rng: Rng, dir: string, tpl: Templates): Promise<string[]> => {
  const names = await files(dir);
  const f = rng.pick(names);
  const path = `${dir}/${f}`;
  const r = rng.int(20);
  if (r === 0) {
    await Deno.remove(path);
    return [`${f} deleted`];
  }
  if (r === 1) {
    await Deno.remove(path);
    await Deno.mkdir(path);
    return [`${f} is a folder`];
  }
  if (r === 2) {
    await Deno.remove(path);
    await Deno.symlink(rng.chance(0.5) ? tpl.outside : `${tpl.root}/../templates/broken/config.json`, path);
    return [`${f} links out of the folder`];
  }
  if (r === 3) {
    await Deno.writeFile(path, new Uint8Array(0));
    return [`${f} empty`];
  }
  if (r === 4 && !(await Deno.lstat(`${dir}/model.safetensors.index.json`).then(() => true, () => false))) {
    // An index where there was none, naming files in and out of the folder.
    const wm: Record<string, string> = {};
    for (const s of paramSpecs(tinyConfig())) {
      wm[s.name] = rng.pick([
        "model.safetensors",
        "../outside.safetensors",
        "/etc/hostname",
        "nope.safetensors",
      ]);
    }
    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify({ weight_map: wm }));
    return ["index added"];
  }
  const bytes = await Deno.readFile(path);
  // A link left by an earlier damage points at a template: replace the link, never write through it.
  if ((await Deno.lstat(path)).isSymlink) await Deno.remove(path);
  if (f.endsWith(".safetensors")) {
    const m = mutateSafetensors(rng, bytes);
    await Deno.writeFile(path, m.bytes);
    return [f, ...m.what];
  }
  if (f.endsWith(".json")) {
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      json = null;
    }
    const m = mutatedJsonBytes(rng, json);
    await Deno.writeFile(path, m.bytes);
    return [f, ...m.what];
  }
  const m = mutateBytes(rng, bytes);
  await Deno.writeFile(path, m.bytes);
  return [f, m.what];
};

/** A copy of the folder `from` at `to`, damaged once; what was damaged. */
const damagedCopy = async (rng: Rng, from: string, to: string, tpl: Templates): Promise<string[]> => {
  await copyDir(from, to);
  return await damageFolder(rng, to, tpl);
};

/** A copy of one of the template models at `dir`/model, damaged three times in ten; what was damaged. */
const modelCopy = async (
  rng: Rng,
  dir: string,
  tpl: Templates,
): Promise<{ model: string; what: string[] }> => {
  const model = `${dir}/model`;
  await copyDir(rng.pick(tpl.models), model);
  const what: string[] = [];
  if (rng.chance(0.3)) what.push(...await damageFolder(rng, model, tpl));
  return { model, what };
};

// ---- flag vectors ----------------------------------------------------------------------------------------

/** Small integers, -0 among them: the start of both value lists. */
const SMALL_INTS = ["-3", "-0", "0", "1", "2"];
/** Empty, separator-only, flag-like and non-numeric words: in both value lists. */
const ODD_WORDS = ["", "3,", ",", "1,,2", "--", "-", "=", "true", "maybe"];
const FLAG_VALUES = [
  ...SMALL_INTS,
  "-1.5",
  "1e999",
  "NaN",
  "0x10",
  " 3",
  ...ODD_WORDS,
  "9".repeat(400),
  "2147483648",
  "-2147483649",
  "1e308",
  "cpu",
  "gpu",
  "raw",
  "grpo",
  "bupo",
];
/** Values that cannot make a valid run large (for commands that really run on a working model). */
const SMALL_VALUES = [
  ...SMALL_INTS,
  "3",
  "-1.5",
  "0.5",
  "1e999",
  "NaN",
  "x",
  ...ODD_WORDS,
  "64",
  "100",
  "1,2",
  "1;2",
  "-1,2",
];

/** A mutated flag vector for `cmd`: known and unknown flags, both value forms, bad values, `--`, stray words. */
const flagVector = (
  rng: Rng,
  cmd: Command,
  values: readonly string[],
  paths: readonly string[],
): string[] => {
  const names = Object.entries(cmd.flags).flatMap((
    [k, s],
  ) => [s.flag ?? k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), ...(s.aliases ?? [])]);
  const argv: string[] = [];
  const value = () => (rng.chance(0.25) ? rng.pick(paths) : rng.pick(values));
  for (let i = rng.int(7); i >= 0; i--) {
    const r = rng.int(12);
    const name = rng.pick(names);
    if (r < 5) argv.push(`--${name}`, value());
    else if (r < 7) argv.push(`--${name}=${value()}`);
    else if (r === 7) argv.push(`--${name}`);
    else if (r === 8) {
      argv.push(
        rng.pick(["--frobnicate", "-x", "-", "--", "stray", `--${rng.pick(PROTO_KEYS)}`, "--=3", "---group"]),
      );
    } else if (r === 9) argv.push(rng.pick(values));
    else argv.push(`--${name}`, rng.pick(values), `--${name}`, value());
  }
  return argv;
};

/**
 * A flag vector of valid, small values only (for commands that really run): 0-3 flags of the table, each with
 * a value of its kind (numbers 1..3, enum values, existing or missing paths), so the run gets past the parser
 * and reaches the files and the model.
 */
const validFlags = (rng: Rng, cmd: Command, skip: RegExp, paths: readonly string[]): string[] => {
  const argv: string[] = [];
  const keys = Object.keys(cmd.flags).filter((k) =>
    !skip.test(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`)
  );
  for (let i = rng.int(4); i > 0; i--) {
    const k = rng.pick(keys), spec = cmd.flags[k];
    const flag = `--${spec.flag ?? k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    const small = () =>
      String(spec.multipleOf ? spec.multipleOf * rng.range(1, 2) : rng.range(spec.min ?? 1, 3));
    switch (spec.kind) {
      case "bool":
        argv.push(flag);
        break;
      case "enum":
        argv.push(flag, rng.pick(spec.values!));
        break;
      case "str":
        argv.push(flag, rng.pick(paths));
        break;
      case "list":
        argv.push(flag, [small(), small()].join(spec.sep ?? ","));
        break;
      case "num":
      case "posnum":
        argv.push(flag, rng.pick(["0.5", "1", "2"]));
        break;
      default:
        argv.push(flag, small());
    }
  }
  return argv;
};

// ---- targets ---------------------------------------------------------------------------------------------

/** A prepared case: what was mutated, and the run of the target on it. */
export interface Prepared {
  readonly what: readonly string[];
  readonly exec: () => Promise<Outcome>;
}

/** One target: builds a case's inputs in `dir` from the templates; the runner hashes them, then calls exec. */
export interface Target {
  readonly name: string;
  readonly weight: number;
  readonly prepare: (rng: Rng, dir: string, tpl: Templates) => Promise<Prepared>;
}

export const TARGETS: readonly Target[] = [
  {
    name: "safetensors",
    weight: 14,
    prepare: (rng, dir, tpl) => {
      const m = mutateSafetensors(rng, tpl.safetensors);
      const file = `${dir}/fuzz.safetensors`;
      const exec = () =>
        attempt([file], () => {
          const st = parseSafetensors(file, m.bytes);
          for (const e of st.tensors.values()) {
            if (e.dtype === "I32" || e.dtype === "I64") toI32(file, e);
            else toF32(file, e);
          }
        });
      return Promise.resolve({ what: m.what, exec });
    },
  },
  {
    name: "model-folder",
    weight: 22,
    prepare: async (rng, dir, tpl) => {
      const model = `${dir}/model`;
      const what = await damagedCopy(rng, rng.pick(tpl.models), model, tpl);
      if (rng.chance(0.3)) what.push(...await damageFolder(rng, model, tpl));
      const allowNonFinite = rng.chance(0.2);
      if (allowNonFinite) what.push("allowNonFinite");
      return { what, exec: () => attempt([model], () => readModelDir(model, { allowNonFinite })) };
    },
  },
  {
    name: "config.json",
    weight: 10,
    prepare: async (rng, _dir, tpl) => {
      const base = JSON.parse(await Deno.readTextFile(`${rng.pick(tpl.models)}/config.json`));
      const m = mutateJson(rng, base);
      return {
        what: m.what,
        exec: () => attempt(["fuzz/config.json"], () => decodeHfConfig("fuzz/config.json", m.json)),
      };
    },
  },
  {
    name: "tokenizer",
    weight: 14,
    prepare: async (rng, dir, tpl) => {
      const t = `${dir}/tok`;
      const what = await damagedCopy(rng, rng.pick(tpl.tokenizers), t, tpl);
      return { what, exec: () => attempt([t], () => readTokenizerDir(t)) };
    },
  },
  {
    name: "rollout",
    weight: 5,
    prepare: async (rng, dir, tpl) => {
      const file = `${dir}/rollout.safetensors`;
      const m = mutateSafetensors(rng, await Deno.readFile(tpl.rollout));
      await Deno.writeFile(file, m.bytes);
      return { what: m.what, exec: () => attempt([file], () => readRolloutFile(file)) };
    },
  },
  {
    name: "objective",
    weight: 10,
    prepare: (rng, _dir, tpl) => {
      const src = "fuzz/objective.json";
      if (rng.chance(0.2)) {
        const m = mutatedJsonBytes(rng, rng.pick(tpl.objectives));
        const text = new TextDecoder().decode(m.bytes);
        return Promise.resolve({
          what: m.what,
          exec: () => attempt([src], () => objectiveFromJson(src, text)),
        });
      }
      const m = mutateJson(rng, rng.pick(tpl.objectives));
      return Promise.resolve({
        what: m.what,
        exec: () => attempt([src], () => decodeObjective(src, m.json)),
      });
    },
  },
  {
    name: "train-config",
    weight: 6,
    prepare: async (rng, dir, tpl) => {
      const file = `${dir}/run.json`;
      const m = mutatedJsonBytes(rng, tpl.trainConfig);
      await Deno.writeFile(file, m.bytes);
      const j = mutateJson(rng, tpl.trainConfig);
      const exec = async () => {
        const fromFile = await attempt([file], () =>
          Effect.flatMap(
            readConfigFile(file),
            (c) => Effect.try({ try: () => resolveConfig(c, {}, file), catch: (e) => e }),
          ));
        if (fromFile.kind === "failure") return fromFile;
        return attempt(["fuzz/run.json"], () => decodeConfigJson("fuzz/run.json", j.json));
      };
      return { what: [...m.what, "|", ...j.what], exec };
    },
  },
  {
    name: "flags",
    weight: 9,
    prepare: (rng, dir) => {
      const cmds: Command[] = [TRAIN, GRAD, ENTROPY, COMPARE, PRETRAIN];
      const cmd = rng.pick(cmds);
      const argv = flagVector(rng, cmd, FLAG_VALUES, [`${dir}/nope.json`, dir]);
      const exec = () =>
        attempt([dir], () => {
          const p = parseFlags(cmd, argv);
          if (cmd === TRAIN && !p.help) {
            const given = Object.fromEntries(
              [...p.given].filter((k) => !["config", "resume", "quiet"].includes(k)).map((
                k,
              ) => [k, (p.values as Record<string, unknown>)[k]]),
            );
            resolveConfig({}, given as Partial<TrainConfig>);
          }
        });
      return Promise.resolve({ what: [`${cmd.name} ${JSON.stringify(argv)}`], exec });
    },
  },
  {
    name: "cli-train",
    weight: 3,
    prepare: async (rng, dir, tpl) => {
      const cfg = `${dir}/run.json`;
      await Deno.writeFile(cfg, mutatedJsonBytes(rng, tpl.trainConfig).bytes);
      const argv = [
        ...flagVector(rng, TRAIN, FLAG_VALUES, [cfg, `${dir}/nope.ts`, dir]),
        ...(rng.chance(0.4) ? ["--config", cfg] : []),
        "--model",
        rng.chance(0.7) ? tpl.broken : `${dir}/missing`,
        "--out",
        `${dir}/out/run`,
        "--device",
        "cpu",
        "--quiet",
      ];
      return { what: [JSON.stringify(argv)], exec: () => runCli("train", trainMain, argv, [dir, tpl.root]) };
    },
  },
  {
    name: "cli-entropy",
    weight: 4,
    prepare: async (rng, dir, tpl) => {
      const { model, what } = await modelCopy(rng, dir, tpl);
      const prompts = `${dir}/prompts.txt`;
      let text: Uint8Array = new TextEncoder().encode("1+2=\n3+4=\n");
      if (rng.chance(0.4)) text = mutateBytes(rng, text).bytes;
      await Deno.writeFile(prompts, text);
      const input = rng.chance(0.5)
        ? ["--tokens", rng.pick(["1,2,3", "4,5,6,7,8", "0", "23,1", "24", "1,-2", "1,,2", "", "a"])]
        : ["--prompts", prompts, "--max-new", rng.pick(["1", "3", "0", "-1"])];
      const argv = [
        "--model",
        model,
        ...input,
        ...(rng.chance(0.5)
          ? validFlags(rng, ENTROPY, /^--(model|max-new|svg|out|prompts|tokens|device|chunk)$/, [
            `${dir}/out/x.svg`,
          ])
          : flagVector(rng, ENTROPY, SMALL_VALUES, [prompts, `${dir}/none.txt`, dir]).filter((a) =>
            !/^--(model|max-new|svg|out)\b/.test(a)
          )),
        "--out",
        `${dir}/out/r.json`,
        "--device",
        "cpu",
        "--quiet",
      ];
      what.push(JSON.stringify(argv));
      return { what, exec: () => runCli("entropy", entropyMain, argv, [dir]) };
    },
  },
  {
    name: "cli-grad",
    weight: 3,
    prepare: async (rng, dir, tpl) => {
      const { model, what } = await modelCopy(rng, dir, tpl);
      const roll = `${dir}/rollout.safetensors`;
      const rollBytes = await Deno.readFile(tpl.rollout);
      await Deno.writeFile(roll, rng.chance(0.5) ? mutateSafetensors(rng, rollBytes).bytes : rollBytes);
      const batch = rng.chance(0.5) ? ["--rollout", roll] : [
        "--tokens",
        rng.pick(["1,2,3;4,5,6", "1,2", "1;2", "30,1", ""]),
        "--prompt-len",
        rng.pick(["1", "1,2", "5", "-1"]),
        "--advantages",
        rng.pick(["1,-1", "1", "NaN,1", "1e999,0"]),
      ];
      const argv = [
        "--model",
        model,
        ...batch,
        ...(rng.chance(0.5)
          ? validFlags(rng, GRAD, /^--(model|out|objective|tokens|prompt-len|advantages|rollout|device)$/, [
            roll,
          ])
          : flagVector(rng, GRAD, SMALL_VALUES, [roll, `${dir}/nope.ts`, dir]).filter((a) =>
            !/^--(model|out|objective)\b/.test(a)
          )),
        "--objective",
        rng.pick(["grpo", "bupo", `${dir}/nope.ts`, "x"]),
        "--out",
        `${dir}/out/g.safetensors`,
        "--device",
        "cpu",
      ];
      what.push(JSON.stringify(argv));
      return { what, exec: () => runCli("grad", gradMain, argv, [dir]) };
    },
  },
];
