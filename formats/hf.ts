/**
 * Hugging Face model folders: config.json + model.safetensors (or shards through model.safetensors.index.json),
 * read into a parameter set whose every tensor is checked against the config's shapes.
 */
import { Effect } from "effect";
import * as t from "io-ts";
import { isLeft } from "fp-ts/Either.js";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, type StEntry, toF32 } from "../core/safetensors.ts";
import { type Shape, showShape } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { exists, readBytes, readJson, writeAtomic } from "../io/files.ts";
import { decodeHfConfig, type DecoderConfig, encodeHfConfig, paramSpecs } from "../policies/config.ts";
import { Params, paramsFromHost, paramsToHostArrays } from "../policies/params.ts";

const IndexJson = t.type({ weight_map: t.record(t.string, t.string) });

/** A model read from a folder: its config and the host tensors by Hugging Face name. */
export interface HostModel {
  readonly dir: string;
  readonly config: DecoderConfig;
  readonly tensors: ReadonlyMap<string, { data: Float32Array; shape: Shape; file: string }>;
}

/** Read config.json and every safetensors shard of a folder; check names and shapes against the config. */
export const readModelDir = (dir: string): Effect.Effect<HostModel, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    const cfgPath = `${dir}/config.json`;
    if (!(yield* exists(dir))) {
      return yield* new FileFormatError({ file: dir, message: `${dir}: model folder does not exist` });
    }
    const json = yield* readJson(cfgPath);
    const config = yield* Effect.try({
      try: () => decodeHfConfig(cfgPath, json),
      catch: (e) => e as ConfigError,
    });
    const indexPath = `${dir}/model.safetensors.index.json`;
    let files: string[];
    if (yield* exists(indexPath)) {
      const idx = IndexJson.decode(yield* readJson(indexPath));
      if (isLeft(idx)) {
        return yield* new FileFormatError({
          file: indexPath,
          message: `${indexPath}: expected { weight_map: { name: file } }`,
        });
      }
      files = [...new Set(Object.values(idx.right.weight_map))].sort();
    } else files = ["model.safetensors"];
    const entries = new Map<string, { e: StEntry; file: string }>();
    for (const f of files) {
      const path = `${dir}/${f}`;
      const bytes = yield* readBytes(path);
      const st = yield* Effect.try({
        try: () => parseSafetensors(path, bytes),
        catch: (e) => e as FileFormatError,
      });
      for (const [name, e] of st.tensors) entries.set(name, { e, file: path });
    }
    const tensors = new Map<string, { data: Float32Array; shape: Shape; file: string }>();
    for (const spec of paramSpecs(config)) {
      const found = entries.get(spec.name);
      if (!found) {
        return yield* new FileFormatError({
          file: dir,
          message: `${dir}: tensor ${spec.name} is missing (config.json implies ${showShape(spec.shape)}); ` +
            `files read: ${files.join(", ")}`,
        });
      }
      const { e, file } = found;
      if (e.shape.length !== spec.shape.length || e.shape.some((d, i) => d !== spec.shape[i])) {
        return yield* new FileFormatError({
          file,
          message: `${file}: tensor ${spec.name} has shape ${showShape(e.shape)}, config.json says ${
            showShape(spec.shape)
          }`,
        });
      }
      const data = yield* Effect.try({ try: () => toF32(file, e), catch: (x) => x as FileFormatError });
      tensors.set(spec.name, { data, shape: spec.shape, file });
    }
    return { dir, config, tensors };
  });

/** Upload a host model to a backend, segmented by the backend's limits (policies/params.ts). */
export const toParams = (backend: Backend, m: HostModel): Params =>
  paramsFromHost(backend, paramSpecs(m.config), (n) => m.tensors.get(n));

/** Read the parameters back to host arrays by name. */
export const paramsToHost = async (
  p: Params,
): Promise<{ name: string; shape: Shape; data: Float32Array }[]> => {
  const data = await paramsToHostArrays(p);
  return p.layout.specs.map((s, i) => ({ name: s.name, shape: s.shape, data: data[i] }));
};

/** Write config.json and model.safetensors (F32) into `dir`, each atomically. */
export const writeModelDir = (
  dir: string,
  config: DecoderConfig,
  tensors: readonly { name: string; shape: Shape; data: Float32Array }[],
  metadata: Record<string, string> = { format: "pt" },
): Effect.Effect<void, FileFormatError> =>
  Effect.gen(function* () {
    yield* Effect.tryPromise({
      try: () => Deno.mkdir(dir, { recursive: true }),
      catch: (e) => new FileFormatError({ file: dir, message: `${dir}: cannot create folder (${e})` }),
    });
    yield* writeAtomic(`${dir}/model.safetensors`, serializeSafetensors(tensors, metadata));
    yield* writeAtomic(`${dir}/config.json`, JSON.stringify(encodeHfConfig(config), null, 2) + "\n");
  });
