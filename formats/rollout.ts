/** Rollout files: a batch of rollouts (ids, lengths, advantages, old and reference log-probs) as safetensors. */
import { Effect } from "effect";
import { FileFormatError } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, type StWrite, toF32, toI32 } from "../core/safetensors.ts";
import { readBytes, writeAtomic } from "../io/files.ts";
import type { RolloutHost } from "../objectives/batch.ts";

/**
 * A rollout file is a safetensors file: `ids` I32 (B, T), `prompt_lens` I32 (B), `response_lens` I32 (B),
 * `advantages` F32 (B); optional F32 (B, T) per position: `behaviour`, `old.<policy>` and `ref.<policy>` (policy
 * keys as `showPolicy`: `old.final`, `old.layer(5)`). Written atomically.
 */
export const writeRolloutFile = (path: string, r: RolloutHost): Effect.Effect<void, FileFormatError> => {
  const { B, T } = r;
  const f32 = (name: string, x: ArrayLike<number>, shape: number[]): StWrite => ({
    name,
    shape,
    data: Float32Array.from(x),
  });
  const tensors: StWrite[] = [
    { name: "ids", shape: [B, T], data: r.ids },
    { name: "prompt_lens", shape: [B], data: Int32Array.from(r.promptLens) },
    {
      name: "response_lens",
      shape: [B],
      data: Int32Array.from(r.responseLens ?? r.promptLens.map((p) => T - p)),
    },
    f32("advantages", r.advantages, [B]),
  ];
  if (r.behaviour) tensors.push(f32("behaviour", r.behaviour, [B, T]));
  for (const [k, v] of r.old ?? []) tensors.push(f32(`old.${k}`, v, [B, T]));
  for (const [k, v] of r.ref ?? []) tensors.push(f32(`ref.${k}`, v, [B, T]));
  return writeAtomic(path, serializeSafetensors(tensors, { format: "bupo-rollout" }));
};

/** Read a rollout file (see `writeRolloutFile`); a missing or mis-shaped tensor is a FileFormatError naming it. */
export const readRolloutFile = (path: string): Effect.Effect<RolloutHost, FileFormatError> =>
  Effect.gen(function* () {
    const bytes = yield* readBytes(path);
    return yield* Effect.try({
      try: () => {
        const st = parseSafetensors(path, bytes);
        const get = (name: string) => {
          const e = st.tensors.get(name);
          if (!e) {
            throw new FileFormatError({ file: path, message: `${path}: rollout file has no tensor ${name}` });
          }
          return e;
        };
        const idsE = get("ids");
        if (idsE.shape.length !== 2) {
          throw new FileFormatError({
            file: path,
            message: `${path}: ids must be (B, T), got [${idsE.shape}]`,
          });
        }
        const [B, T] = idsE.shape;
        const old = new Map<string, Float32Array>(), ref = new Map<string, Float32Array>();
        for (const [name, e] of st.tensors) {
          if (name.startsWith("old.")) old.set(name.slice(4), toF32(path, e));
          if (name.startsWith("ref.")) ref.set(name.slice(4), toF32(path, e));
        }
        const beh = st.tensors.get("behaviour");
        return {
          ids: toI32(path, idsE),
          B,
          T,
          promptLens: Array.from(toI32(path, get("prompt_lens"))),
          responseLens: Array.from(toI32(path, get("response_lens"))),
          advantages: toF32(path, get("advantages")),
          behaviour: beh ? toF32(path, beh) : undefined,
          old,
          ref,
        };
      },
      catch: (e) =>
        e instanceof FileFormatError
          ? e
          : new FileFormatError({ file: path, message: `${path}: ${String(e)}` }),
    });
  });
