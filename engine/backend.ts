/** The backend interface: where tensors live and how a kernel runs. Two implementations: CPU and WebGPU. */
import type { DType, Shape } from "../core/shape.ts";
import type { HostArray, Kernel, TensorSpec } from "./kernel.ts";
import type { Tensor } from "./tensor.ts";

/** Opaque per-backend storage of one tensor (a GPU buffer range, a typed array). */
export interface Storage {
  /** Bytes this storage owns (0 for a view into another tensor's storage). */
  readonly bytes: number;
}

/** Memory accounting of a backend, in bytes. */
export interface MemoryStats {
  /** Bytes held by live tensors. */
  readonly live: number;
  /** Bytes allocated from the device in total (live + pooled for reuse). */
  readonly allocated: number;
  /** Highest `live` seen since creation or the last `resetPeak`. */
  readonly peak: number;
  /** Number of device allocations made so far (a steady loop makes none after warm-up). */
  readonly allocations: number;
}

/**
 * Size limits that ops and the parameter store respect, in bytes. On the GPU they come from the device (and can be
 * lowered for tests through `openGpu({ limits })`); absent fields take the defaults of `limitsOf`.
 */
export interface BackendLimits {
  /** Largest range one storage binding may cover (WebGPU maxStorageBufferBindingSize; llvmpipe: 128 MiB). */
  readonly maxStorageBufferBindingSize: number;
  /** Largest single buffer (WebGPU maxBufferSize; llvmpipe: 2 GiB - 1). */
  readonly maxBufferSize: number;
  /** Cap of one parameter-store segment (policies/params.ts); never above maxBufferSize. */
  readonly paramSegmentBytes: number;
}

/**
 * Default parameter segment cap: 256 MiB. Large enough that a 0.6B model is a dozen segments (few dispatches per
 * optimizer step), small enough that reading one segment back (checkpoints) needs a modest staging buffer and
 * that allocations never approach a device's maxBufferSize (2 GiB on llvmpipe, 256 MiB minimum in WebGPU).
 */
export const DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024;

/** The limits of a backend with defaults filled in (CPU: no binding or buffer limit, 256 MiB segments). */
export const limitsOf = (b: Backend): BackendLimits => ({
  maxStorageBufferBindingSize: b.limits?.maxStorageBufferBindingSize ?? Infinity,
  maxBufferSize: b.limits?.maxBufferSize ?? Infinity,
  paramSegmentBytes: Math.min(
    b.limits?.paramSegmentBytes ?? DEFAULT_SEGMENT_BYTES,
    b.limits?.maxBufferSize ?? Infinity,
  ),
});

/**
 * Where tensors live and how kernels run: the CPU reference (engine/cpu.ts) or WebGPU (engine/gpu/backend.ts).
 * Ops call it through `apply`; user code passes it to `tensor`, `zeros`, `readModelDir`/`toParams` and the like.
 */
export interface Backend {
  /** Which implementation this is. */
  readonly kind: "cpu" | "gpu";
  /** Size limits (absent or partial: see `limitsOf`). */
  readonly limits?: Partial<BackendLimits>;
  /** Human-readable description, e.g. "cpu f64" or the adapter's description. */
  readonly name: string;
  /** The host array type of float tensors on this backend. */
  readonly floatArray: "f32" | "f64";
  /** New storage for a tensor of this spec, contents unspecified. */
  alloc(spec: TensorSpec): Storage;
  /** New storage holding `data` (converted to the backend's array type). */
  upload(spec: TensorSpec, data: ArrayLike<number>): Storage;
  /** Storage sharing `base`, starting `offset` elements in; GPU views need offset*4 to be a multiple of 256. */
  view(base: Storage, offset: number, spec: TensorSpec): Storage;
  /** Run a kernel: inputs are live tensors, outputs fresh storages (or aliases of inputs). Asynchronous on GPU. */
  exec<P>(
    kernel: Kernel<P>,
    params: P,
    inputs: readonly Tensor[],
    outputs: readonly Storage[],
    outSpecs: readonly TensorSpec[],
  ): void;
  /** Copy a tensor's contents to the host; on the GPU this submits pending work and surfaces its errors. */
  read(t: Tensor): Promise<HostArray>;
  /** Wait until all submitted work is done; surfaces errors. */
  sync(): Promise<void>;
  /** Give a storage back (to the pool on the GPU). */
  release(s: Storage): void;
  /** Bytes held now, pooled, and the peak since creation or the last `resetPeak`. */
  memory(): MemoryStats;
  /** Start a new peak measurement: `peak` becomes the current `live`. */
  resetPeak(): void;
  /**
   * Give the device back what the pool keeps for reuse (freed buffers and textures; nothing a live tensor
   * holds), so that `allocated` falls to `live`. Returns the bytes given back (0 on the CPU).
   */
  trim(): number;
}

/** Bytes of one element. */
export const elemBytes = (_d: DType): number => 4;

/** Byte size of a shape of 4-byte elements. */
export const byteSize = (shape: Shape): number => shape.reduce((a, b) => a * b, 1) * 4;
