/**
 * The WebGPU backend: buffer pool, pipeline cache keyed by shader text, batched command encoding (one
 * submission for many dispatches), read-back, error scopes that turn device errors into typed errors.
 */
import {
  DeviceLostError,
  GpuError,
  ShaderCompileError,
  ShapeError,
  type WgslMessage,
} from "../../core/errors.ts";
import {
  type Backend,
  type BackendLimits,
  byteSize,
  DEFAULT_SEGMENT_BYTES,
  type MemoryStats,
  type Storage,
} from "../backend.ts";
import type { GpuTarget, HostArray, Kernel, PassBinding, TensorSpec, TextureCopy } from "../kernel.ts";
import type { Tensor } from "../tensor.ts";
import { type KernelProfile, Profiler } from "./profiler.ts";

export type { KernelProfile } from "./profiler.ts";

/** GPU storage: a range of a pooled buffer. */
export interface GpuStorage extends Storage {
  /** The pooled buffer the range lies in. */
  readonly buffer: GPUBuffer;
  /** Byte offset of the range (a multiple of 256 for views). */
  readonly offset: number;
  /** Byte length of the range (the tensor's bytes, at least 4). */
  readonly size: number;
}

const BUFFER_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const ARENA_BYTES = 1 << 16;
const UNIFORM_ALIGN = 256;
const MAX_DISPATCHES_PER_SUBMIT = 512;
/** Staging buffers above this many bytes are destroyed after a read instead of pooled. */
const LARGE_STAGING = 64 * 1024 * 1024;

/** Round a byte count up to the pool's size classes: multiples of 256 bytes (at least 256). */
const bucket = (bytes: number): number => Math.max(256, Math.ceil(bytes / 256) * 256);

/** How a GpuBackend is set up beyond its device (AdapterOptions adds the adapter choice). */
export interface GpuBackendOptions {
  /** Force the kernel variant instead of choosing by adapter ("software" = llvmpipe-tuned). */
  readonly variant?: "software" | "hardware";
  /** Time every dispatch with timestamp queries (one compute pass per dispatch; slower). */
  readonly profile?: boolean;
  /**
   * Lower the device's limits (never raise them): tests use a few KiB so that small models take every chunked
   * and segmented path that a 2 GB checkpoint takes on llvmpipe. A binding or buffer over the (lowered) limit
   * throws ShapeError naming the kernel.
   */
  readonly limits?: Partial<BackendLimits>;
}

/** A WebGPU backend over one device. Create it through the `Gpu` service (kernels/gpu/device.ts). */
export class GpuBackend implements Backend {
  /** Always "gpu". */
  readonly kind = "gpu" as const;
  /** Float tensors are f32 on the GPU. */
  readonly floatArray = "f32" as const;
  /** `webgpu <adapter description>`, with ` (software kernels)` when the llvmpipe-tuned variants run. */
  readonly name: string;
  /** What kernels know of the adapter when they pick a variant (software or not, lanes, limits). */
  readonly target: GpuTarget;
  /** The limits kernels and the parameter store respect (the device's, lowered by `opts.limits`). */
  readonly limits: BackendLimits;
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  readonly #pool = new Map<number, GPUBuffer[]>();
  readonly #staging = new Map<number, GPUBuffer[]>();
  readonly #textures = new Map<string, GPUTexture[]>();
  readonly #arena: GPUBuffer;
  readonly #arenaHost = new Uint8Array(ARENA_BYTES);
  #arenaUsed = 0;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #dispatches = 0;
  /** Buffers referenced by commands encoded since the last submission. */
  #pending = new Set<GPUBuffer>();
  #scopeOpen = false;
  readonly #checks: Promise<void>[] = [];
  readonly #errors: Error[] = [];
  #lost: DeviceLostError | null = null;
  #destroyed = false;
  readonly #lostPromise: Promise<never>;
  #live = 0;
  #allocated = 0;
  #peak = 0;
  #allocations = 0;
  /** Present in profile mode (where the device has timestamp queries). */
  readonly #profiler: Profiler | null;

  /**
   * A backend over `device` (its adapter described by `adapterInfo`; software adapters get the llvmpipe-tuned
   * kernel variants unless `opts.variant` says otherwise). openGpu/GpuLive make one.
   */
  constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo,
    opts: GpuBackendOptions = {},
  ) {
    const software = opts.variant ? opts.variant === "software" : adapterInfo.isFallbackAdapter ||
      /llvmpipe|lavapipe|swiftshader|software/i.test(adapterInfo.description);
    const lower = (dev: number, opt?: number) => Math.min(dev, opt ?? Infinity);
    const maxBufferSize = lower(device.limits.maxBufferSize, opts.limits?.maxBufferSize);
    this.limits = {
      maxStorageBufferBindingSize: lower(
        device.limits.maxStorageBufferBindingSize,
        opts.limits?.maxStorageBufferBindingSize,
      ),
      maxBufferSize,
      paramSegmentBytes: Math.min(opts.limits?.paramSegmentBytes ?? DEFAULT_SEGMENT_BYTES, maxBufferSize),
    };
    // llvmpipe and lavapipe name their vector width: "llvmpipe (LLVM 15.0.6, 256 bits)".
    const bits = /(\d+) bits\)/.exec(adapterInfo.description)?.[1];
    this.target = {
      software,
      lanes: software && bits ? Number(bits) / 32 : undefined,
      maxWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
      maxInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBufferBindingSize: this.limits.maxStorageBufferBindingSize,
    };
    this.name = `webgpu ${adapterInfo.description || adapterInfo.vendor || "adapter"}${
      software ? " (software kernels)" : ""
    }`;
    this.#arena = device.createBuffer({
      size: ARENA_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#profiler = opts.profile && device.features.has("timestamp-query")
      ? new Profiler(device, MAX_DISPATCHES_PER_SUBMIT)
      : null;
    device.addEventListener("uncapturederror", (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.#errors.push(new GpuError({ kind: e.constructor.name, message: e.message }));
    });
    this.#lostPromise = device.lost.then((info) => {
      this.#lost = new DeviceLostError({
        reason: info.reason ?? "unknown",
        message:
          `WebGPU device lost (${info.reason}): ${info.message}. Tensors on it are gone; create a new backend.`,
      });
      throw this.#lost;
    });
    this.#lostPromise.catch(() => {});
  }

  // ---- memory -------------------------------------------------------------------------------------------

  #createBuffer(size: number, usage: number): GPUBuffer {
    this.#allocations++;
    this.#allocated += size;
    return this.device.createBuffer({ size, usage });
  }

  #take(bytes: number): GPUBuffer {
    const size = bucket(bytes);
    if (size > this.limits.maxBufferSize) {
      throw new ShapeError({
        op: "alloc",
        message:
          `alloc: a buffer of ${bytes} bytes exceeds the device's maxBufferSize ${this.limits.maxBufferSize}`,
      });
    }
    const free = this.#pool.get(size);
    const buf = free?.pop() ?? this.#createBuffer(size, BUFFER_USAGE);
    this.#live += size;
    if (this.#live > this.#peak) this.#peak = this.#live;
    return buf;
  }

  #give(buf: GPUBuffer): void {
    this.#live -= buf.size;
    let free = this.#pool.get(buf.size);
    if (!free) this.#pool.set(buf.size, free = []);
    free.push(buf);
  }

  alloc(spec: TensorSpec): GpuStorage {
    this.#assertUsable();
    const bytes = byteSize(spec.shape);
    const buffer = this.#take(bytes);
    return { buffer, offset: 0, size: Math.max(4, bytes), bytes: buffer.size };
  }

  upload(spec: TensorSpec, data: ArrayLike<number>): GpuStorage {
    const s = this.alloc(spec);
    if (data.length > 0) {
      // A recycled buffer may still be read by commands not yet submitted: submit them first, because
      // queue.writeBuffer runs before any later submission.
      if (this.#pending.has(s.buffer)) this.#submit();
      const host = spec.dtype === "f32"
        ? (data instanceof Float32Array ? data : Float32Array.from(data))
        : spec.dtype === "i32"
        ? (data instanceof Int32Array ? data : Int32Array.from(data))
        : (data instanceof Uint32Array ? data : Uint32Array.from(data));
      this.#openScope();
      this.device.queue.writeBuffer(
        s.buffer,
        0,
        host.buffer as ArrayBuffer,
        host.byteOffset,
        host.byteLength,
      );
    }
    return s;
  }

  view(base: Storage, offset: number, spec: TensorSpec): GpuStorage {
    const b = base as GpuStorage;
    const off = b.offset + offset * 4;
    if (off % 256 !== 0) {
      throw new ShapeError({
        op: "view",
        message:
          `view: GPU views must start at a multiple of 64 elements (256 bytes); offset ${offset} is not`,
      });
    }
    return { buffer: b.buffer, offset: off, size: Math.max(4, byteSize(spec.shape)), bytes: 0 };
  }

  release(s: Storage): void {
    if (s.bytes === 0 || this.#destroyed) return;
    this.#give((s as GpuStorage).buffer);
  }

  /** Bytes held by live tensors, allocated from the device (live + pooled), the peak, allocations made. */
  memory(): MemoryStats {
    return { live: this.#live, allocated: this.#allocated, peak: this.#peak, allocations: this.#allocations };
  }

  /** Start a new peak measurement from the current live bytes. */
  resetPeak(): void {
    this.#peak = this.#live;
  }

  /**
   * Destroy every pooled buffer, staging buffer and texture (none is held by a live tensor or a read in
   * flight). Work encoded so far is submitted first, so no unsubmitted command refers to them; work already
   * submitted may still use them, and WebGPU frees them once it is done. Returns the bytes given back.
   */
  trim(): number {
    if (this.#destroyed) return 0;
    this.#submit();
    let freed = 0;
    for (const pool of [this.#pool, this.#staging]) {
      for (const list of pool.values()) {
        for (const b of list) {
          freed += b.size;
          b.destroy();
        }
      }
      pool.clear();
    }
    for (const [size, list] of this.#textures) {
      const [w, h] = size.split("x").map(Number);
      for (const t of list) {
        freed += w * h * 16;
        t.destroy();
      }
    }
    this.#textures.clear();
    this.#allocated -= freed;
    return freed;
  }

  // ---- pipelines and errors -----------------------------------------------------------------------------

  #pipeline(kernel: string, wgsl: string): GPUComputePipeline {
    let p = this.#pipelines.get(wgsl);
    if (p) return p;
    this.#openScope();
    const module = this.device.createShaderModule({ code: wgsl, label: kernel });
    this.#checks.push(
      module.getCompilationInfo().then((info) => {
        const messages: WgslMessage[] = info.messages
          .filter((m) => m.type === "error")
          .map((m) => ({ type: m.type, line: m.lineNum, col: m.linePos, message: m.message }));
        if (messages.length > 0) {
          const first = messages[0];
          this.#errors.unshift(
            new ShaderCompileError({
              kernel,
              messages,
              source: wgsl,
              message: `kernel ${kernel}: WGSL failed to compile at ${first.line}:${first.col}: ${
                first.message.trim().split("\n")[0]
              }`,
            }),
          );
        }
      }),
    );
    p = this.device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
      label: kernel,
    });
    this.#pipelines.set(wgsl, p);
    return p;
  }

  #openScope(): void {
    if (this.#scopeOpen) return;
    this.device.pushErrorScope("validation");
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("internal");
    this.#scopeOpen = true;
  }

  #closeScope(): void {
    if (!this.#scopeOpen) return;
    this.#scopeOpen = false;
    for (const kind of ["internal", "out-of-memory", "validation"]) {
      this.#checks.push(
        this.device.popErrorScope().then((e) => {
          if (e) this.#errors.push(new GpuError({ kind, message: e.message }));
        }),
      );
    }
  }

  #assertUsable(): void {
    if (this.#lost) throw this.#lost;
    if (this.#destroyed) throw new GpuError({ kind: "destroyed", message: "the GPU backend was released" });
  }

  /** Wait for compile checks and error scopes; throw the first error (a compile error first). */
  async #surface(): Promise<void> {
    while (this.#checks.length) await Promise.race([Promise.all(this.#checks.splice(0)), this.#lostPromise]);
    if (this.#lost) throw this.#lost;
    if (this.#errors.length) {
      const e = this.#errors[0];
      this.#errors.length = 0;
      throw e;
    }
  }

  // ---- encoding -----------------------------------------------------------------------------------------

  #computePass(label: string): GPUComputePassEncoder {
    this.#openScope();
    this.#encoder ??= this.device.createCommandEncoder();
    if (this.#profiler) {
      this.#pass?.end();
      this.#pass = this.#encoder.beginComputePass(this.#profiler.pass(label));
      return this.#pass;
    }
    this.#pass ??= this.#encoder.beginComputePass();
    return this.#pass;
  }

  exec<P>(
    kernel: Kernel<P>,
    params: P,
    inputs: readonly Tensor[],
    outputs: readonly Storage[],
    _outSpecs: readonly TensorSpec[],
  ): void {
    this.#assertUsable();
    const passes = kernel.gpu(params, inputs, this.target);
    const temps: { buffers: GPUBuffer[]; textures: Map<string, GPUTexture> } = {
      buffers: [],
      textures: new Map(),
    };
    const scratch = new Map<string, GPUBuffer>();
    try {
      for (const pass of passes) {
        if ("copy" in pass) {
          this.#copyToTexture(pass, kernel.name, inputs, temps);
          continue;
        }
        const [x, y, z] = pass.workgroups;
        if (x * y * z === 0) continue;
        if (this.#dispatches >= MAX_DISPATCHES_PER_SUBMIT) this.#submit();
        const uniformBytes = pass.bindings.reduce(
          (n, b) => n + (b.kind === "uniform" ? UNIFORM_ALIGN : 0),
          0,
        );
        if (this.#arenaUsed + uniformBytes > ARENA_BYTES) this.#submit();
        const pipeline = this.#pipeline(kernel.name, pass.wgsl);
        const entries = pass.bindings.map((b, i) =>
          this.#entry(b, i, kernel.name, inputs, outputs, scratch, temps)
        );
        const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
        const enc = this.#computePass(pass.label ?? kernel.name);
        enc.setPipeline(pipeline);
        enc.setBindGroup(0, bindGroup);
        enc.dispatchWorkgroups(x, y, z);
        this.#dispatches++;
      }
    } finally {
      for (const b of temps.buffers) this.#give(b);
      for (const [key, t] of temps.textures) this.#textures.get(key.split("|")[1])!.push(t);
    }
    if (this.#dispatches >= MAX_DISPATCHES_PER_SUBMIT) this.#submit();
  }

  /** The run's temporary texture `id` of this size (from the pool). */
  #tempTexture(
    b: { readonly id: string; readonly width: number; readonly height: number },
    temps: { textures: Map<string, GPUTexture> },
  ): GPUTexture {
    const size = `${b.width}x${b.height}`;
    const key = `${b.id}|${size}`;
    let tex = temps.textures.get(key);
    if (!tex) {
      let free = this.#textures.get(size);
      if (!free) this.#textures.set(size, free = []);
      tex = free.pop() ?? this.#createTexture(b.width, b.height);
      temps.textures.set(key, tex);
    }
    return tex;
  }

  /** Encode a buffer-to-texture copy between compute passes (the open compute pass is ended first). */
  #copyToTexture(
    step: TextureCopy,
    kernel: string,
    inputs: readonly Tensor[],
    temps: { textures: Map<string, GPUTexture> },
  ): void {
    const c = step.copy;
    const t = inputs[c.input];
    if (!t) throw new ShapeError({ op: kernel, message: `${kernel}: copy names missing input ${c.input}` });
    const s = t.storage as GpuStorage;
    if (this.#dispatches >= MAX_DISPATCHES_PER_SUBMIT) this.#submit();
    this.#openScope();
    this.#encoder ??= this.device.createCommandEncoder();
    this.#pass?.end();
    this.#pass = null;
    this.#pending.add(s.buffer);
    this.#encoder.copyBufferToTexture(
      { buffer: s.buffer, offset: s.offset + c.offset, bytesPerRow: c.bytesPerRow, rowsPerImage: c.size[1] },
      { texture: this.#tempTexture(c.texture, temps), origin: [0, c.y] },
      [c.size[0], c.size[1]],
    );
    this.#dispatches++;
  }

  #entry(
    b: PassBinding,
    i: number,
    kernel: string,
    inputs: readonly Tensor[],
    outputs: readonly Storage[],
    scratch: Map<string, GPUBuffer>,
    temps: { buffers: GPUBuffer[]; textures: Map<string, GPUTexture> },
  ): GPUBindGroupEntry {
    const range = (s: GpuStorage): GPUBindGroupEntry => {
      if (s.size > this.limits.maxStorageBufferBindingSize) {
        throw new ShapeError({
          op: kernel,
          message:
            `${kernel}: binding ${i} covers ${s.size} bytes, more than maxStorageBufferBindingSize ${this.limits.maxStorageBufferBindingSize} (chunk the op through views)`,
        });
      }
      this.#pending.add(s.buffer);
      return { binding: i, resource: { buffer: s.buffer, offset: s.offset, size: s.size } };
    };
    const named = (s: Storage | undefined, what: "input" | "output", index: number): GpuStorage => {
      if (!s) {
        throw new ShapeError({
          op: kernel,
          message: `${kernel}: binding ${i} names missing ${what} ${index}`,
        });
      }
      return s as GpuStorage;
    };
    switch (b.kind) {
      case "input":
        return range(named(inputs[b.index]?.storage, "input", b.index));
      case "output":
        return range(named(outputs[b.index], "output", b.index));
      case "scratch": {
        let buf = scratch.get(b.id);
        if (!buf) {
          buf = this.#take(b.bytes);
          scratch.set(b.id, buf);
          temps.buffers.push(buf);
        }
        return range({ buffer: buf, offset: 0, size: Math.max(4, b.bytes), bytes: buf.size });
      }
      case "texture":
        return { binding: i, resource: this.#tempTexture(b, temps).createView() };
      case "uniform": {
        const off = this.#arenaUsed;
        this.#arenaHost.set(new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength), off);
        this.#arenaUsed += UNIFORM_ALIGN;
        return {
          binding: i,
          resource: { buffer: this.#arena, offset: off, size: Math.max(16, b.data.byteLength) },
        };
      }
      default:
        return b satisfies never;
    }
  }

  #createTexture(width: number, height: number): GPUTexture {
    this.#allocations++;
    this.#allocated += width * height * 16;
    return this.device.createTexture({
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
    });
  }

  /** Submit everything encoded so far (no wait). */
  #submit(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (this.#encoder) {
      if (this.#arenaUsed > 0) {
        this.device.queue.writeBuffer(this.#arena, 0, this.#arenaHost, 0, this.#arenaUsed);
      }
      const collect = this.#profiler?.resolve(this.#encoder);
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      collect?.();
    }
    this.#arenaUsed = 0;
    this.#dispatches = 0;
    this.#pending = new Set();
    this.#closeScope();
  }

  /** Per-kernel GPU time since the last call (profile mode only); resets the counters. */
  async profile(): Promise<KernelProfile[]> {
    await this.sync();
    return this.#profiler ? await this.#profiler.totals() : [];
  }

  // ---- host interaction ---------------------------------------------------------------------------------

  async read(t: Tensor): Promise<HostArray> {
    this.#assertUsable();
    const s = t.storage as GpuStorage;
    const n = t.size;
    const bytes = Math.max(4, n * 4);
    const size = bucket(bytes);
    const free = this.#staging.get(size);
    const staging = free?.pop() ??
      this.#createBuffer(size, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    this.#openScope();
    this.#computePass("read"); // make sure an encoder exists
    this.#pass!.end();
    this.#pass = null;
    this.#encoder!.copyBufferToBuffer(s.buffer, s.offset, staging, 0, bytes);
    this.#submit();
    try {
      await Promise.race([staging.mapAsync(GPUMapMode.READ, 0, bytes), this.#lostPromise]);
    } catch (e) {
      if (this.#lost) throw this.#lost;
      await this.#surface();
      throw new GpuError({ kind: "map", message: `reading tensor ${t}: ${(e as Error).message}` });
    }
    const copy = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    if (size > LARGE_STAGING) {
      staging.destroy(); // a parameter segment read for a checkpoint: do not hoard it
      this.#allocated -= size;
    } else {
      let list = this.#staging.get(size);
      if (!list) this.#staging.set(size, list = []);
      list.push(staging);
    }
    await this.#surface();
    const out = t.dtype === "f32"
      ? new Float32Array(copy)
      : t.dtype === "i32"
      ? new Int32Array(copy)
      : new Uint32Array(copy);
    return n === 0 ? out.subarray(0, 0) : out;
  }

  async sync(): Promise<void> {
    this.#assertUsable();
    this.#submit();
    await Promise.race([this.device.queue.onSubmittedWorkDone(), this.#lostPromise]);
    await this.#surface();
  }

  /** Destroy the device; every tensor on it becomes invalid. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#lostPromise.catch(() => {});
    this.device.destroy();
  }
}
