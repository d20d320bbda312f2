/**
 * Hugging Face model folders: config.json + model.safetensors (or shards through model.safetensors.index.json),
 * read into a parameter set whose every tensor is checked against the config's shapes.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError, showValue } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, type StEntry, toF32 } from "../core/safetensors.ts";
import { type Shape, showShape } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { exists, folderRoots, insideFolder, readBytes, readJson, writeAtomic } from "../io/files.ts";
import {
  decodeHfConfig,
  type DecoderConfig,
  encodeHfConfig,
  iterParamSpecs,
  paramSpecs,
} from "../policies/config.ts";
import { Params, paramsFromHost, paramsToHostArrays } from "../policies/params.ts";

/** A tensor that holds NaN or infinite values (read with `allowNonFinite`). */
export interface NonFiniteTensor {
  /** The Hugging Face tensor name. */
  readonly name: string;
  /** The safetensors file it was read from. */
  readonly file: string;
  /** How many of its values are not finite. */
  readonly count: number;
  /** The flat index of the first one and its value. */
  readonly first: number;
  /** The value at `first` (NaN, Infinity or -Infinity). */
  readonly value: number;
}

/** A model read from a folder: its config and the host tensors by Hugging Face name. */
export interface HostModel {
  /** The folder read. */
  readonly dir: string;
  /** Its config.json, decoded. */
  readonly config: DecoderConfig;
  /** Every tensor by Hugging Face name, as f32 on the host, with its shape and file. */
  readonly tensors: ReadonlyMap<string, { data: Float32Array; shape: Shape; file: string }>;
  /** Tensors with NaN or infinite values (only with `allowNonFinite`; otherwise they fail the read). */
  readonly nonFinite?: readonly NonFiniteTensor[];
}

/** Options of readModelDir. */
export interface ReadModelOptions {
  /**
   * Load tensors that hold NaN or infinite values (for the analysis of a broken checkpoint) and list them in
   * `nonFinite`, instead of failing. Default false: a non-finite weight is a FileFormatError.
   */
  readonly allowNonFinite?: boolean;
}

/** The multi-index of flat index `i` in `shape` (`[3,17]`). */
const multiIndex = (i: number, shape: Shape): string => {
  const out: number[] = [];
  for (let k = shape.length - 1; k >= 0; k--) {
    out.unshift(i % shape[k]);
    i = Math.floor(i / shape[k]);
  }
  return `[${out.join(",")}]`;
};

/** Count the non-finite values of `data`: undefined when there are none. */
const nonFiniteOf = (data: Float32Array): { count: number; first: number; value: number } | undefined => {
  let first = -1, count = 0;
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      if (first < 0) first = i;
      count++;
    }
  }
  return first < 0 ? undefined : { count, first, value: data[first] };
};

/** How many decoder layers a set of tensor names holds: one more than the largest `model.layers.<i>.` index. */
const layersIn = (names: Iterable<string>): number => {
  let n = 0;
  for (const name of names) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) n = Math.max(n, Number(m[1]) + 1);
  }
  return n;
};

/** Decode model.safetensors.index.json: `{ weight_map: { tensor name: shard file } }` (other fields ignored). */
const decodeIndex = (indexPath: string, json: unknown): Map<string, string> => {
  const fail = (message: string): never => {
    throw new FileFormatError({ file: indexPath, message: `${indexPath}: ${message}` });
  };
  if (!json || typeof json !== "object" || Array.isArray(json)) fail("expected a JSON object { weight_map }");
  const o = json as Record<string, unknown>;
  const wm = Object.hasOwn(o, "weight_map") ? o.weight_map : undefined;
  if (!wm || typeof wm !== "object" || Array.isArray(wm)) {
    fail(
      `weight_map: expected an object { tensor name: file name }, got ${
        wm === undefined ? "nothing" : showValue(wm)
      }`,
    );
  }
  const map = new Map<string, string>();
  for (const [name, f] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof f !== "string") {
      fail(`weight_map[${JSON.stringify(name)}]: expected a file name, got ${showValue(f)}`);
    }
    map.set(name, f as string);
  }
  if (map.size === 0) fail("weight_map is empty (expected the shard file of every tensor)");
  return map;
};

/**
 * Read config.json and every safetensors shard of a folder; check names and shapes against the config. Every
 * file read must resolve inside the folder (shards named by model.safetensors.index.json included); with an
 * index, every tensor must be in the shard the index names and in no other. Weights must be finite unless
 * `allowNonFinite`.
 */
export const readModelDir = (
  dir: string,
  opts: ReadModelOptions = {},
): Effect.Effect<HostModel, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    const roots = yield* folderRoots(dir);
    if (roots === undefined) {
      return yield* new FileFormatError({ file: dir, message: `${dir}: model folder does not exist` });
    }
    const own = (name: string) =>
      insideFolder(dir, roots, name, `${dir}/${name}`, (p) => `${dir}/${name}: ${p}`);
    const cfgPath = yield* own("config.json");
    const json = yield* readJson(cfgPath);
    const config = yield* Effect.try({
      try: () => decodeHfConfig(cfgPath, json),
      catch: (e) => e as ConfigError,
    });
    const indexPath = yield* own("model.safetensors.index.json");
    let files: string[];
    let index: Map<string, string> | undefined;
    const paths = new Map<string, string>();
    if (yield* exists(indexPath)) {
      const idx = yield* readJson(indexPath);
      index = yield* Effect.try({
        try: () => decodeIndex(indexPath, idx),
        catch: (e) => e as FileFormatError,
      });
      const firstTensor = new Map<string, string>();
      for (const [name, f] of index) if (!firstTensor.has(f)) firstTensor.set(f, name);
      files = [...firstTensor.keys()].sort();
      for (const f of files) {
        const tensor = firstTensor.get(f)!;
        paths.set(
          f,
          yield* insideFolder(
            dir,
            roots,
            f,
            indexPath,
            (p) =>
              `${indexPath}: weight_map[${JSON.stringify(tensor)}] = ${JSON.stringify(f)} ${p}; ` +
              "expected a file name inside the model folder",
          ),
        );
      }
    } else {
      files = ["model.safetensors"];
      paths.set("model.safetensors", yield* own("model.safetensors"));
    }
    const entries = new Map<string, { e: StEntry; file: string; shard: string }>();
    for (const f of files) {
      const path = paths.get(f)!;
      const bytes = yield* readBytes(path);
      const st = yield* Effect.try({
        try: () => parseSafetensors(path, bytes),
        catch: (e) => e as FileFormatError,
      });
      for (const [name, e] of st.tensors) {
        const before = entries.get(name);
        if (before) {
          return yield* new FileFormatError({
            file: path,
            message: `${path}: tensor ${name} is also in ${before.file}; a tensor must be in one shard only` +
              (index ? ` (the index names ${JSON.stringify(index.get(name) ?? "none")})` : ""),
          });
        }
        entries.set(name, { e, file: path, shard: f });
      }
    }
    if (index) {
      for (const [name, f] of index) {
        const found = entries.get(name);
        if (!found) {
          return yield* new FileFormatError({
            file: indexPath,
            message: `${indexPath}: weight_map names ${JSON.stringify(f)} for tensor ${name || '""'}, but ${
              paths.get(f)
            } does not hold it`,
          });
        }
      }
      for (const [name, { file, shard }] of entries) {
        const named = index.get(name);
        if (named !== undefined && named !== shard) {
          return yield* new FileFormatError({
            file: indexPath,
            message: `${indexPath}: weight_map names ${
              JSON.stringify(named)
            } for tensor ${name}, but it is in ${file}`,
          });
        }
      }
    }
    const tensors = new Map<string, { data: Float32Array; shape: Shape; file: string }>();
    const nonFinite: NonFiniteTensor[] = [];
    // One spec at a time: a config.json that claims more layers than the files hold stops at the first gap.
    for (const spec of iterParamSpecs(config)) {
      const found = entries.get(spec.name);
      if (!found) {
        const layers = layersIn(entries.keys());
        const m = /^model\.layers\.(\d+)\./.exec(spec.name);
        const why = m && Number(m[1]) >= layers
          ? `; config.json's num_hidden_layers is ${config.numLayers}, the files hold ${layers} layer${
            layers === 1 ? "" : "s"
          }`
          : "";
        return yield* new FileFormatError({
          file: dir,
          message:
            `${dir}: tensor ${spec.name} is missing (config.json implies ${showShape(spec.shape)})${why}; ` +
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
      const bad = nonFiniteOf(data);
      if (bad) {
        if (!opts.allowNonFinite) {
          return yield* new FileFormatError({
            file,
            message:
              `${file}: tensor ${spec.name}: element ${bad.first} ${
                multiIndex(bad.first, spec.shape)
              } is ${bad.value} (${bad.count} of ${data.length} values are not finite); expected finite weights ` +
              "(--allow-nonfinite loads them for analysis)",
          });
        }
        nonFinite.push({ name: spec.name, file, ...bad });
      }
      tensors.set(spec.name, { data, shape: spec.shape, file });
    }
    return { dir, config, tensors, ...(opts.allowNonFinite ? { nonFinite } : {}) };
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
