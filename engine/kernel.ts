/** A kernel as one typed value: shape rule, CPU reference, WGSL generator and gradient rule declared together. */
import type { DType, Shape } from "../core/shape.ts";
import type { Tensor } from "./tensor.ts";

/** Host storage of a tensor. Float tensors are Float32Array on the GPU and f32 CPU backends, Float64Array on f64. */
export type HostArray = Float32Array | Float64Array | Int32Array | Uint32Array;

/** A host array with its shape: what a CPU reference reads and writes. */
export interface HostTensor {
  /** The elements, row-major. */
  readonly data: HostArray;
  /** Dimensions, outermost first. */
  readonly shape: Shape;
}

/** Shape and dtype of a tensor, without its data. */
export interface TensorSpec {
  /** Dimensions, outermost first ([] for a scalar). */
  readonly shape: Shape;
  /** Element type: f32, i32 or u32 (4 bytes each). */
  readonly dtype: DType;
}

/** An output's spec; `alias: i` makes the output reuse input i's storage (an in-place update). */
export interface OutSpec extends TensorSpec {
  /** The 0-based index of the input whose storage this output reuses; absent: fresh storage. */
  readonly alias?: number;
}

/**
 * One resource bound at `@group(0) @binding(position)` of a pass.
 * - input i: `var<storage, read>` (or `read_write` if an output aliases it); output i: `var<storage, read_write>`;
 * - scratch: a temporary storage buffer that lives for the passes of one run (keyed by `id`);
 * - texture: a temporary rgba32float 2-D texture, bound as `texture_storage_2d<rgba32float, write>` ("write")
 *   or `texture_storage_2d<rgba32float, read>` ("read");
 * - uniform: a small block of constants, `var<uniform>`, written once per dispatch.
 * Kernels state each binding once, declaration and entry together, with `bind` (engine/wgsl.ts).
 */
export type PassBinding =
  | { readonly kind: "input"; readonly index: number }
  | { readonly kind: "output"; readonly index: number }
  | { readonly kind: "scratch"; readonly id: string; readonly bytes: number }
  | {
    readonly kind: "texture";
    readonly id: string;
    readonly width: number;
    readonly height: number;
    readonly access: "write" | "read";
  }
  | { readonly kind: "uniform"; readonly data: Uint32Array };

/** One compute dispatch: shader text (its text keys the pipeline cache), grid and bindings. */
export interface GpuPass {
  /** The WGSL module with one `@compute` entry point `main`. */
  readonly wgsl: string;
  /** The dispatch grid: workgroups along x, y, z. */
  readonly workgroups: readonly [number, number, number];
  /** The resources at @group(0) @binding(0), (1), ... in order. */
  readonly bindings: readonly PassBinding[];
  /** Label for errors and profiles; defaults to the kernel name. */
  readonly label?: string;
}

/**
 * A copy of rows of an input buffer into a temporary texture by the driver (no shader; on llvmpipe ~5x faster
 * than a compute pass that stores texels). `offset` must be a multiple of 16 bytes and `bytesPerRow` of 256.
 */
export interface TextureCopy {
  /** Rows of input `input` from byte `offset`, `bytesPerRow` apart, into the texture `texture` from row `y`. */
  readonly copy: {
    readonly input: number;
    readonly offset: number;
    readonly bytesPerRow: number;
    readonly texture: { readonly id: string; readonly width: number; readonly height: number };
    /** First destination row. */
    readonly y: number;
    /** Copied texels: [width, height]. */
    readonly size: readonly [number, number];
  };
  /** Label for errors and profiles; defaults to the kernel name. */
  readonly label?: string;
}

/** One step of a kernel on the GPU: a compute dispatch or a buffer-to-texture copy. */
export type GpuStep = GpuPass | TextureCopy;

/** The compute passes of a list of steps (tests inspect shader texts). */
export const computePasses = (steps: readonly GpuStep[]): GpuPass[] =>
  steps.filter((s): s is GpuPass => !("copy" in s));

/** What a kernel may know of the adapter when it picks a variant. */
export interface GpuTarget {
  /** True on software adapters (llvmpipe, lavapipe, SwiftShader): register-blocked kernels win there. */
  readonly software: boolean;
  /** Invocations one SIMD vector of a software adapter runs together (llvmpipe: its vector width / 32). */
  readonly lanes?: number;
  /** The device's maxComputeWorkgroupsPerDimension (65,535 in WebGPU's defaults). */
  readonly maxWorkgroupsPerDimension: number;
  /** The device's maxComputeWorkgroupStorageSize, in bytes. */
  readonly maxWorkgroupStorageSize: number;
  /** The device's maxComputeInvocationsPerWorkgroup. */
  readonly maxInvocationsPerWorkgroup: number;
  /** Largest range one storage binding may cover, in bytes (absent: the WebGPU default, 128 MiB). */
  readonly maxStorageBufferBindingSize?: number;
}

/** What a gradient rule sees of the forward call. Saved tensors are retained by the tape until backward ends. */
export interface VjpContext<P> {
  /** The kernel's parameters in the forward call. */
  readonly params: P;
  /** The forward call's inputs, in order. */
  readonly inputs: readonly Tensor[];
  /** Its outputs, in order (disposed already when the kernel has `saveOutputs: false`). */
  readonly outputs: readonly Tensor[];
}

/**
 * A reverse-mode rule: given the cotangent of each output (null where none flowed), return one cotangent per
 * input (null where the input is not differentiable or gets none). It is written with ops, so it runs on any
 * backend; a fused kernel may recompute what it needs from its inputs instead of storing intermediates.
 */
export type VjpRule<P> = (
  ctx: VjpContext<P>,
  cotangents: readonly (Tensor | null)[],
) => readonly (Tensor | null)[];

/** A kernel: `infer` validates and gives output specs; `cpu` is the reference; `gpu` emits the passes. */
export interface Kernel<P> {
  /** The op's name: in errors, shader labels, profiles and kernels/index.ts's registry. */
  readonly name: string;
  /** Validate inputs against params; throw ShapeError naming the op and the tensor; return output specs. */
  readonly infer: (params: P, inputs: readonly TensorSpec[]) => readonly OutSpec[];
  /** The reference: naive loops, the living definition of the op. Writes into `outputs`. */
  readonly cpu: (params: P, inputs: readonly HostTensor[], outputs: readonly HostTensor[]) => void;
  /** The WGSL lowering. Pure: equal arguments give equal text. */
  readonly gpu: (params: P, inputs: readonly TensorSpec[], target: GpuTarget) => readonly GpuStep[];
  /** The gradient rule; absent for kernels that are not differentiated (optimizer, sampling). */
  readonly vjp?: VjpRule<P>;
  /** When false the tape does not keep the outputs alive for backward (the rule recomputes them). */
  readonly saveOutputs?: boolean;
}

/** Identity that fixes the params type; `defineKernel({...})` reads like a declaration. */
export const defineKernel = <P>(k: Kernel<P>): Kernel<P> => k;
