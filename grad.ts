/** `deno task grad`: the loss of an objective on a batch and the gradient of every parameter, as safetensors. */
import { Effect } from "effect";
import { CpuBackend } from "./engine/cpu.ts";
import type { Backend } from "./engine/backend.ts";
import { adapterOptionsFromEnv, openGpu } from "./engine/gpu/device.ts";
import { decodeObjective } from "./objectives/codec.ts";
import { gradients, type GradientsBatch, normTable, writeGradients } from "./training/grad.ts";
import { bupo, grpo, type Objective, show } from "./objectives/objective.ts";
import { final, layer } from "./policies/internal.ts";

export const HELP = `deno task grad -- --model DIR --tokens "1,2,3;4,5,6" --prompt-len 2 --advantages 1,-1 \\
  --objective grpo|bupo|path/to/module.ts [--layer k] [--until n] [--norm raw|normed] [--step s] \\
  --out grads.safetensors

Writes the loss and the gradient of every parameter of the model in DIR (a Hugging Face folder: config.json +
model.safetensors) to a safetensors file keyed by the Hugging Face tensor names (loss, step and objective in
__metadata__), atomically, and prints a per-tensor gradient-norm table.

  --model DIR          model folder
  --tokens LIST        sequences (prompt + response ids), ';' between sequences, ',' between ids
  --prompt-len N|LIST  prompt length of every sequence, or one per sequence (comma-separated)
  --advantages LIST    one advantage per sequence (comma-separated)
  --rollout FILE       instead of --tokens/--prompt-len/--advantages: a rollout file (objectives/batch.ts
                       writeRolloutFile: ids, prompt_lens, response_lens, advantages, optional behaviour,
                       old.<policy>, ref.<policy>)
  --objective NAME     grpo: GRPO on the final policy, or on layer(k) with --layer k;
                       bupo: BuPO with --layer k (required) and --until n (default 30);
                       a path to a module that exports an Objective (default export or \`objective\`)
  --layer k            0-based layer index (the paper's layer 1 is 0)
  --norm raw|normed    readout of layer(k): raw (the paper's, default) or through the final norm
  --step s             1-based training step (selects the phase; default 1)
  --backend auto|gpu|cpu  auto (default): WebGPU when an adapter exists, else the CPU (f32)
  --out FILE           output safetensors file

Old log-probs: on-policy. The old log-probs of every policy the objective optimizes are the current model's,
detached (every importance ratio is exactly 1), unless a rollout file provides them (old.<policy>,
behaviour). Reference log-probs (KL-to-reference terms) must come from a rollout file.`;

/** A command-line problem: the message says which flag and why. */
export class UsageError extends Error {}

const parseFlags = (args: readonly string[]): Map<string, string> => {
  const m = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--help" || a === "-h") m.set("help", "");
    else if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      if (eq > 0) m.set(a.slice(2, eq), a.slice(eq + 1));
      else {
        if (i + 1 >= args.length) throw new UsageError(`${a} needs a value`);
        m.set(a.slice(2), args[++i]);
      }
    } else if (a !== "--") throw new UsageError(`unexpected argument ${a}`);
  }
  return m;
};

const numbers = (flag: string, s: string): number[] =>
  s.split(",").map((x) => {
    const v = Number(x.trim());
    if (x.trim() === "" || !Number.isFinite(v)) {
      throw new UsageError(`--${flag}: ${JSON.stringify(x)} is not a number`);
    }
    return v;
  });

const intFlag = (f: Map<string, string>, name: string): number | undefined => {
  const s = f.get(name);
  if (s === undefined) return undefined;
  const v = Number(s);
  if (!Number.isInteger(v) || v < 0) throw new UsageError(`--${name}: expected an integer >= 0, got ${s}`);
  return v;
};

/** Load an Objective from a module: its default export or its `objective` export, validated by the codec. */
export const objectiveFromModule = async (path: string): Promise<Objective> => {
  const cwd = Deno.cwd().replaceAll("\\", "/");
  const url = new URL(path.replaceAll("\\", "/"), `file://${cwd.startsWith("/") ? "" : "/"}${cwd}/`).href;
  // deno-lint-ignore no-explicit-any
  let mod: any;
  try {
    mod = await import(url);
  } catch (e) {
    throw new UsageError(`--objective ${path}: cannot import the module (${(e as Error).message})`);
  }
  const value = mod.default ?? mod.objective;
  if (value === undefined) {
    throw new UsageError(
      `--objective ${path}: the module exports no Objective (expected a default export or an export named \`objective\`)`,
    );
  }
  try {
    return decodeObjective(path, JSON.parse(JSON.stringify(value)));
  } catch (e) {
    throw new UsageError(`--objective ${path}: the export is not a valid Objective: ${(e as Error).message}`);
  }
};

const objectiveOf = async (f: Map<string, string>): Promise<Objective> => {
  const name = f.get("objective") ?? "grpo";
  const k = intFlag(f, "layer");
  const norm = f.get("norm") ?? "raw";
  if (norm !== "raw" && norm !== "normed") {
    throw new UsageError(`--norm: expected raw or normed, got ${norm}`);
  }
  if (name === "grpo") return grpo(k === undefined ? final : layer(k, norm));
  if (name === "bupo") {
    if (k === undefined) throw new UsageError("--objective bupo needs --layer k");
    return bupo({ layer: k, until: intFlag(f, "until") ?? 30, norm });
  }
  return await objectiveFromModule(name);
};

const batchOf = (f: Map<string, string>): GradientsBatch => {
  const file = f.get("rollout");
  if (file) return { rolloutFile: file };
  const tokens = f.get("tokens"), pl = f.get("prompt-len"), adv = f.get("advantages");
  if (!tokens || !pl || !adv) {
    throw new UsageError("give --tokens, --prompt-len and --advantages (or --rollout FILE)");
  }
  const ids = tokens.split(";").map((s) => numbers("tokens", s));
  const promptLen = numbers("prompt-len", pl);
  return {
    ids,
    promptLen: promptLen.length === 1 ? promptLen[0] : promptLen,
    advantages: numbers("advantages", adv),
  };
};

const backendOf = async (kind: string): Promise<Backend> => {
  if (kind === "cpu") return new CpuBackend("f32");
  if (kind !== "gpu" && kind !== "auto") {
    throw new UsageError(`--backend: expected auto, gpu or cpu, got ${kind}`);
  }
  const gpu = await Effect.runPromise(Effect.option(openGpu(adapterOptionsFromEnv())));
  if (gpu._tag === "Some") return gpu.value;
  if (kind === "gpu") throw new UsageError("--backend gpu: no WebGPU adapter");
  console.error("no WebGPU adapter: computing on the CPU");
  return new CpuBackend("f32");
};

/** Run the command; returns the exit code. */
export const main = async (args: readonly string[]): Promise<number> => {
  try {
    const f = parseFlags(args);
    if (f.has("help")) {
      console.log(HELP);
      return 0;
    }
    const dir = f.get("model"), out = f.get("out");
    if (!dir) throw new UsageError("--model DIR is required");
    if (!out) throw new UsageError("--out FILE is required");
    const objective = await objectiveOf(f);
    const step = intFlag(f, "step") ?? 1;
    const backend = await backendOf(f.get("backend") ?? "auto");
    const r = await Effect.runPromise(
      gradients({ backend, model: { dir }, batch: batchOf(f), objective, step }),
    );
    await Effect.runPromise(writeGradients(out, r));
    console.log(`objective at step ${step}:\n${show(objective)}`);
    console.log(`loss ${r.loss}\n`);
    console.log(normTable(r));
    console.log(`\nwrote ${out}`);
    return 0;
  } catch (e) {
    console.error(`grad: ${(e as Error).message ?? e}`);
    if (e instanceof UsageError) console.error("(deno task grad -- --help for usage)");
    return e instanceof UsageError ? 2 : 1;
  }
};

if (import.meta.main) Deno.exit(await main(Deno.args));
