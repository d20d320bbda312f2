/**
 * Checkpoints of an RL run: model (HF layout), optimizer moments (per parameter), step, objective JSON and run config, written
 * into a temporary folder that is renamed into place, then `latest.json` is replaced atomically. A crash at any
 * moment leaves the previous checkpoint intact and `latest.json` pointing at a complete one.
 */
import { Effect } from "effect";
import { type ConfigError, FileFormatError } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, type StEntry, toF32 } from "../core/safetensors.ts";
import { type Shape, showShape, size } from "../core/shape.ts";
import { exists, readBytes, readJson, writeAtomic } from "../io/files.ts";
import { type DecoderConfig, paramSpecs } from "../policies/config.ts";
import { flatLayoutOf } from "../policies/params.ts";
import { type HostModel, readModelDir, writeModelDir } from "../formats/hf.ts";
import { CharTokenizer, writeTokenizerDir } from "../formats/tokenizer.ts";
import { checkpointFiles, isStepName, runDir } from "./rundir.ts";
import type { CheckpointTokenizer } from "./source.ts";

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

/** AdamW moments of one parameter, by its Hugging Face name. */
export interface ParamMoments {
  readonly name: string;
  readonly shape: Shape;
  readonly m: Float32Array;
  readonly v: Float32Array;
}

export interface Checkpoint {
  readonly dir: string;
  readonly state: CheckpointState;
  readonly model: HostModel;
  /**
   * AdamW moments per parameter in `paramSpecs(model.config)` order: independent of how a backend segments its
   * buffers. Older checkpoints (one flat "m" and one flat "v" in the single-buffer layout) are converted.
   */
  readonly moments: readonly ParamMoments[];
}

const fail = (file: string, message: string) => new FileFormatError({ file, message: `${file}: ${message}` });

/** Write `tok` into the checkpoint folder `dir`: a char tokenizer's tokenizer.json, or a copy of the files. */
const writeCheckpointTokenizer = (
  dir: string,
  tok: CheckpointTokenizer,
): Effect.Effect<void, FileFormatError> =>
  tok instanceof CharTokenizer ? writeTokenizerDir(dir, tok) : Effect.gen(function* () {
    for (const f of tok.files) {
      const from = `${tok.dir}/${f}`;
      if (yield* exists(from)) yield* writeAtomic(`${dir}/${f}`, yield* readBytes(from));
    }
  });

/**
 * A test hook: BUPO_TEST_CHECKPOINT_DELAY_MS milliseconds of sleep after each step of a checkpoint write, so
 * that tests/kill_resume_test.ts can kill a run inside one. Unset (always, outside that test): no pause.
 */
const pause = (() => {
  let ms = 0;
  try {
    ms = Number(Deno.env.get("BUPO_TEST_CHECKPOINT_DELAY_MS") ?? 0) || 0;
  } catch { /* no env permission */ }
  return ms > 0 ? Effect.promise(() => new Promise<void>((r) => setTimeout(r, ms))) : Effect.void;
})();

/**
 * Write a checkpoint for `state.step` into `<run>/checkpoints/step-NNNNNN` and point latest.json at it: the
 * model, the tokenizer (a char tokenizer, or a writer of a folder's tokenizer files) and the optimizer. The
 * optimizer file holds one tensor per parameter and moment, `m.<name>` and `v.<name>` (the parameter's shape), so it
 * reads back under any segmentation of the parameter store.
 */
export const saveCheckpoint = (
  run: string,
  config: DecoderConfig,
  tensors: readonly { name: string; shape: Shape; data: Float32Array }[],
  tok: CheckpointTokenizer,
  moments: readonly ParamMoments[],
  state: CheckpointState,
  keep = 2,
): Effect.Effect<string, FileFormatError> =>
  Effect.gen(function* () {
    const rd = runDir(run);
    const tmp = rd.checkpointTmp(state.step);
    const files = checkpointFiles(tmp);
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
        await Deno.mkdir(tmp, { recursive: true });
      },
      catch: (e) => fail(tmp, `cannot create (${e})`),
    });
    yield* writeModelDir(tmp, config, tensors, { format: "pt", step: String(state.step) });
    yield* pause;
    yield* writeCheckpointTokenizer(tmp, tok);
    yield* pause;
    yield* writeAtomic(
      files.optimizer,
      serializeSafetensors(
        moments.flatMap((x) => [
          { name: `m.${x.name}`, shape: x.shape, data: x.m },
          { name: `v.${x.name}`, shape: x.shape, data: x.v },
        ]),
        { optimizerStep: String(state.optimizerStep), layout: "per-parameter" },
      ),
    );
    yield* pause;
    yield* writeAtomic(files.state, JSON.stringify(state, null, 1) + "\n");
    yield* pause;
    const final = rd.checkpoint(state.step);
    yield* Effect.tryPromise({
      try: async () => {
        await Deno.remove(final, { recursive: true }).catch(() => {});
        await Deno.rename(tmp, final);
      },
      catch: (e) => fail(final, `cannot move the checkpoint into place (${e})`),
    });
    yield* pause;
    yield* writeAtomic(
      rd.latest,
      JSON.stringify({ checkpoint: rd.checkpointRef(state.step), step: state.step }) + "\n",
    );
    // Prune older checkpoints, keeping the newest `keep`.
    yield* Effect.promise(async () => {
      const names: string[] = [];
      for await (const e of Deno.readDir(rd.checkpoints)) {
        if (e.isDirectory && isStepName(e.name)) names.push(e.name);
      }
      names.sort();
      for (const n of names.slice(0, Math.max(0, names.length - keep))) {
        await Deno.remove(`${rd.checkpoints}/${n}`, { recursive: true }).catch(() => {});
      }
    });
    return final;
  });

/** Read the checkpoint latest.json points at; every problem names the file. */
export const loadCheckpoint = (run: string): Effect.Effect<Checkpoint, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    const rd = runDir(run);
    const latestPath = rd.latest;
    if (!(yield* exists(latestPath))) {
      return yield* fail(latestPath, "no checkpoint to resume from (latest.json missing)");
    }
    const latest = yield* readJson(latestPath);
    const rel = (latest as { checkpoint?: unknown })?.checkpoint;
    if (typeof rel !== "string") {
      return yield* fail(latestPath, `expected { "checkpoint": "checkpoints/step-N" }`);
    }
    const dir = rd.resolve(rel);
    const files = checkpointFiles(dir);
    const stateRaw = yield* readJson(files.state);
    const s = stateRaw as Partial<CheckpointState>;
    if (!s || !Number.isInteger(s.step) || !Number.isInteger(s.optimizerStep)) {
      return yield* fail(files.state, "expected integer fields step and optimizerStep");
    }
    const model = yield* readModelDir(dir);
    const optPath = files.optimizer;
    const bytes = yield* readBytes(optPath);
    const st = yield* Effect.try({
      try: () => parseSafetensors(optPath, bytes),
      catch: (e) => e as FileFormatError,
    });
    const f32 = (e: StEntry) =>
      Effect.try({ try: () => toF32(optPath, e), catch: (x) => x as FileFormatError });
    const specs = paramSpecs(model.config);
    const me = st.tensors.get("m"), ve = st.tensors.get("v");
    const moments: ParamMoments[] = [];
    if (me && ve) {
      // The old format: flat m and v in the single-buffer layout (every parameter 64-aligned, in order).
      const flat = flatLayoutOf(specs);
      const [m, v] = [yield* f32(me), yield* f32(ve)];
      if (m.length !== flat.total || v.length !== flat.total) {
        return yield* fail(
          optPath,
          `optimizer state has ${m.length} (m) and ${v.length} (v) elements, the model needs ${flat.total}`,
        );
      }
      specs.forEach((p, i) => {
        const at = flat.offsets[i], n = size(p.shape);
        moments.push({ name: p.name, shape: p.shape, m: m.slice(at, at + n), v: v.slice(at, at + n) });
      });
    } else {
      for (const p of specs) {
        const pm = st.tensors.get(`m.${p.name}`), pv = st.tensors.get(`v.${p.name}`);
        if (!pm || !pv) {
          return yield* fail(optPath, `moments m.${p.name} and v.${p.name} are required (or flat m and v)`);
        }
        const [m, v] = [yield* f32(pm), yield* f32(pv)];
        if (m.length !== size(p.shape) || v.length !== size(p.shape)) {
          return yield* fail(
            optPath,
            `moments of ${p.name} have ${m.length} and ${v.length} elements, the parameter ${
              showShape(p.shape)
            } has ${size(p.shape)}`,
          );
        }
        moments.push({ name: p.name, shape: p.shape, m, v });
      }
    }
    return { dir, state: s as CheckpointState, model, moments };
  });
