/** The CPU backend: runs every kernel's reference on host arrays, in f32 or f64. The oracle for the GPU. */
import { type Backend, type BackendLimits, byteSize, type MemoryStats, type Storage } from "./backend.ts";
import type { HostArray, TensorSpec } from "./kernel.ts";
import type { Tensor } from "./tensor.ts";

/** CPU storage: a typed array (a subarray for views). */
export interface CpuStorage extends Storage {
  /** The elements, row-major (a view's subarray of its base). */
  readonly data: HostArray;
}

const arrayFor = (spec: TensorSpec, n: number, precision: "f32" | "f64"): HostArray =>
  spec.dtype === "i32"
    ? new Int32Array(n)
    : spec.dtype === "u32"
    ? new Uint32Array(n)
    : precision === "f64"
    ? new Float64Array(n)
    : new Float32Array(n);

/** A CPU backend. `precision: "f64"` stores float tensors as Float64Array (for gradient checks). */
export class CpuBackend implements Backend {
  /** Always "cpu". */
  readonly kind = "cpu" as const;
  /** "cpu f32" or "cpu f64". */
  readonly name: string;
  #live = 0;
  #peak = 0;
  #allocations = 0;
  /** `limits` (optional) makes CPU runs take the same chunked and segmented paths as a GPU with those limits. */
  constructor(readonly floatArray: "f32" | "f64" = "f32", readonly limits?: Partial<BackendLimits>) {
    this.name = `cpu ${floatArray}`;
  }
  #note(bytes: number) {
    this.#live += bytes;
    this.#allocations++;
    if (this.#live > this.#peak) this.#peak = this.#live;
  }
  alloc(spec: TensorSpec): CpuStorage {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const bytes = byteSize(spec.shape);
    this.#note(bytes);
    return { bytes, data: arrayFor(spec, n, this.floatArray) };
  }
  upload(spec: TensorSpec, data: ArrayLike<number>): CpuStorage {
    const s = this.alloc(spec);
    s.data.set(data);
    return s;
  }
  view(base: Storage, offset: number, spec: TensorSpec): CpuStorage {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    return { bytes: 0, data: (base as CpuStorage).data.subarray(offset, offset + n) };
  }
  /** Runs the kernel's CPU reference on the host arrays, at once. */
  readonly exec: Backend["exec"] = (kernel, params, inputs, outputs, outSpecs) =>
    kernel.cpu(
      params,
      inputs.map((t) => ({ data: (t.storage as CpuStorage).data, shape: t.shape })),
      outputs.map((s, i) => ({ data: (s as CpuStorage).data, shape: outSpecs[i].shape })),
    );
  read(t: Tensor): Promise<HostArray> {
    return Promise.resolve((t.storage as CpuStorage).data.slice());
  }
  sync(): Promise<void> {
    return Promise.resolve();
  }
  release(s: Storage): void {
    this.#live -= s.bytes;
  }
  /** Bytes held by live tensors (the CPU has no pool: allocated = live) and the peak. */
  memory(): MemoryStats {
    return { live: this.#live, allocated: this.#live, peak: this.#peak, allocations: this.#allocations };
  }
  /** Start a new peak measurement from the current live bytes. */
  resetPeak(): void {
    this.#peak = this.#live;
  }
  /** Nothing is pooled on the CPU. */
  trim(): number {
    return 0;
  }
}
