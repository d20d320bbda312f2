/**
 * Checkpoints of an RL run: model (HF layout), optimizer moments, step, objective JSON and run config, written
 * into a temporary folder that is renamed into place, then `latest.json` is replaced atomically. A crash at any
 * moment leaves the previous checkpoint intact and `latest.json` pointing at a complete one.
 */
import { Effect } from "effect";
import { type ConfigError, FileFormatError } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, toF32 } from "../core/safetensors.ts";
import type { Shape } from "../core/shape.ts";
import { exists, readBytes, readJson, writeAtomic } from "../io/files.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { type HostModel, readModelDir, writeModelDir } from "../policies/hf.ts";
import { type CharTokenizer, writeTokenizerDir } from "../policies/tokenizer.ts";

export interface CheckpointState {
  /** Steps completed. */
  readonly step: number;
  /** AdamW steps taken (may exceed `step` with several minibatches). */
  readonly optimizerStep: number;
  /** The objective as JSON (objectives/codec.ts). */
  readonly objective: unknown;
  /** The run config as JSON. */
  readonly config: unknown;
  /** Metrics of the last step (for the report). */
  readonly metrics?: unknown;
}

export interface Checkpoint {
  readonly dir: string;
  readonly state: CheckpointState;
  readonly model: HostModel;
  readonly m: Float32Array;
  readonly v: Float32Array;
}

const fail = (file: string, message: string) => new FileFormatError({ file, message: `${file}: ${message}` });

/** Write a checkpoint for `state.step` into `<run>/checkpoints/step-NNNNNN` and point latest.json at it. */
export const saveCheckpoint = (
  run: string,
  config: DecoderConfig,
  tensors: readonly { name: string; shape: Shape; data: Float32Array }[],
  tok: CharTokenizer,
  m: Float32Array,
  v: Float32Array,
  state: CheckpointState,
  keep = 2,
): Effect.Effect<string, FileFormatError> =>
  Effect.gen(function* () {
    const root = `${run}/checkpoints`;
    const name = `step-${String(state.step).padStart(6, "0")}`;
    const tmp = `${root}/.tmp-${name}-${Deno.pid}`;
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
        await Deno.mkdir(tmp, { recursive: true });
      },
      catch: (e) => fail(tmp, `cannot create (${e})`),
    });
    yield* writeModelDir(tmp, config, tensors, { format: "pt", step: String(state.step) });
    yield* writeTokenizerDir(tmp, tok);
    yield* writeAtomic(
      `${tmp}/optimizer.safetensors`,
      serializeSafetensors([{ name: "m", shape: [m.length], data: m }, {
        name: "v",
        shape: [v.length],
        data: v,
      }], {
        optimizerStep: String(state.optimizerStep),
      }),
    );
    yield* writeAtomic(`${tmp}/state.json`, JSON.stringify(state, null, 1) + "\n");
    const final = `${root}/${name}`;
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.remove(final, { recursive: true }).catch(() => {});
        await Deno.rename(tmp, final);
      },
      catch: (e) => fail(final, `cannot move the checkpoint into place (${e})`),
    });
    yield* writeAtomic(
      `${run}/latest.json`,
      JSON.stringify({ checkpoint: `checkpoints/${name}`, step: state.step }) + "\n",
    );
    // Prune older checkpoints, keeping the newest `keep`.
    yield* Effect.promise(async () => {
      const names: string[] = [];
      for await (const e of Deno.readDir(root)) {
        if (e.isDirectory && /^step-\d+$/.test(e.name)) names.push(e.name);
      }
      names.sort();
      for (const n of names.slice(0, Math.max(0, names.length - keep))) {
        await Deno.remove(`${root}/${n}`, { recursive: true }).catch(() => {});
      }
    });
    return final;
  });

/** Read the checkpoint latest.json points at; every problem names the file. */
export const loadCheckpoint = (run: string): Effect.Effect<Checkpoint, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    const latestPath = `${run}/latest.json`;
    if (!(yield* exists(latestPath))) {
      return yield* fail(latestPath, "no checkpoint to resume from (latest.json missing)");
    }
    const latest = yield* readJson(latestPath);
    const rel = (latest as { checkpoint?: unknown })?.checkpoint;
    if (typeof rel !== "string") {
      return yield* fail(latestPath, `expected { "checkpoint": "checkpoints/step-N" }`);
    }
    const dir = `${run}/${rel}`;
    const stateRaw = yield* readJson(`${dir}/state.json`);
    const s = stateRaw as Partial<CheckpointState>;
    if (!s || !Number.isInteger(s.step) || !Number.isInteger(s.optimizerStep)) {
      return yield* fail(`${dir}/state.json`, "expected integer fields step and optimizerStep");
    }
    const model = yield* readModelDir(dir);
    const optPath = `${dir}/optimizer.safetensors`;
    const bytes = yield* readBytes(optPath);
    const st = yield* Effect.try({
      try: () => parseSafetensors(optPath, bytes),
      catch: (e) => e as FileFormatError,
    });
    const me = st.tensors.get("m"), ve = st.tensors.get("v");
    if (!me || !ve) return yield* fail(optPath, "tensors m and v are required");
    return {
      dir,
      state: s as CheckpointState,
      model,
      m: yield* Effect.try({ try: () => toF32(optPath, me), catch: (e) => e as FileFormatError }),
      v: yield* Effect.try({ try: () => toF32(optPath, ve), catch: (e) => e as FileFormatError }),
    };
  });
