/**
 * Random tiny models for tests: the narrow decoder shape of the character-model tests, host tensors drawn per
 * parameter, and model folders (Hugging Face layout) written from seeded parameters. Nothing here opens a device.
 */
import { Effect } from "effect";
import { type Shape, size } from "../core/shape.ts";
import { paramsToHost, writeModelDir } from "../formats/hf.ts";
import { type CharTokenizer, saveTokenizer } from "../formats/tokenizer.ts";
import { type DecoderConfig, type ParamSpec, paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams, normals } from "../policies/params.ts";
import { cpu32 } from "./util.ts";

/** tinyConfig narrowed to d = 16: 2 query heads over 1 key/value head of width 8, FFN 32 (override any field). */
export const narrowConfig = (over: Partial<DecoderConfig> = {}): DecoderConfig =>
  tinyConfig({ hiddenSize: 16, numHeads: 2, numKvHeads: 1, headDim: 8, intermediateSize: 32, ...over });

/** One parameter on the host, as writeModelDir takes it. */
export interface HostTensor {
  readonly name: string;
  readonly shape: Shape;
  readonly data: Float32Array;
}

/**
 * Every parameter of `c` on the host, element by element `value(init, rnd)`, where `rnd` draws from one stream
 * of normals seeded with `seed` (drawn only when `value` calls it).
 */
export const hostTensors = (
  c: DecoderConfig,
  seed: number,
  value: (init: ParamSpec["init"], rnd: () => number) => number,
): HostTensor[] => {
  const rnd = normals(seed);
  return paramSpecs(c).map((s) => ({
    name: s.name,
    shape: s.shape,
    data: Float32Array.from({ length: size(s.shape) }, () => value(s.init, rnd)),
  }));
};

/**
 * Write a model folder of `config` with initParams' parameters (seed `seed`, normal std `std`) into `dir`, and
 * `tok` as its tokenizer where given.
 */
export const writeRandomModel = async (
  dir: string,
  config: DecoderConfig,
  seed: number,
  std: number,
  tok?: CharTokenizer,
): Promise<void> => {
  const p = initParams(cpu32, paramSpecs(config), seed, std);
  try {
    await Effect.runPromise(writeModelDir(dir, config, await paramsToHost(p)));
  } finally {
    p.dispose();
  }
  if (tok) await saveTokenizer(dir, tok);
};
