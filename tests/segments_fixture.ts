/** Shared by the segment tests: KiB-sized device limits, the llvmpipe device opened with them, a tiny tied model. */
import { Effect } from "effect";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { adapterOptionsFromEnv, openGpu } from "../engine/gpu/device.ts";
import { type DecoderConfig } from "../policies/config.ts";
import { gpu } from "./gpu_util.ts";
import { narrowConfig } from "./model_util.ts";

/** Lowered limits: 16 KiB per binding, 4 KiB segments, 1 MiB buffers (llvmpipe: 128 MiB, 256 MiB, 2 GiB). */
export const LIMITS = { maxStorageBufferBindingSize: 16384, paramSegmentBytes: 4096, maxBufferSize: 1 << 20 };

/** The same adapter with the lowered limits (null without an adapter). */
export const low: GpuBackend | null = gpu
  ? await Effect.runPromise(openGpu({ ...adapterOptionsFromEnv(), limits: LIMITS }))
  : null;
globalThis.addEventListener("unload", () => low?.destroy());

/**
 * Tied Qwen3 shape whose embedding (1000 x 16 f32 = 64,000 bytes) spans 4 row blocks of 256 rows under the
 * 16 KiB binding limit, and whose other tensors and activations (2 x 8 tokens) each fit one binding.
 */
export const cfg: DecoderConfig = narrowConfig({ vocabSize: 1000 });
