/** The device as an Effect service: adapter and device acquired as a scoped resource and released on exit. */
import { Context, Effect, Layer } from "effect";
import { NoAdapterError } from "../../core/errors.ts";
import { GpuBackend, type GpuBackendOptions } from "./backend.ts";
import { applyLlvmpipeEnv } from "./llvmpipe.ts";

/** How to pick an adapter. `BUPO_ADAPTER=low-power|high-performance|fallback` sets it from the environment. */
export interface AdapterOptions extends GpuBackendOptions {
  /** Passed to `requestAdapter` ("low-power" or "high-performance"). */
  readonly powerPreference?: GPUPowerPreference;
  /** Ask for the software (fallback) adapter. */
  readonly forceFallbackAdapter?: boolean;
  /** Stands in for `navigator.gpu` (tests simulate a machine without an adapter with it). */
  readonly gpu?: Pick<GPU, "requestAdapter"> | undefined;
}

/** The base class of `Gpu`: effect's `Context.Service` keyed "bupo/Gpu" whose value is a GpuBackend. */
export const gpuServiceBase = (): Context.ServiceClass<Gpu, "bupo/Gpu", GpuBackend> =>
  Context.Service<Gpu, GpuBackend>()("bupo/Gpu");

/** The WebGPU backend as a service: `yield* Gpu` in an Effect gives the GpuBackend that GpuLive provides. */
export class Gpu extends gpuServiceBase() {}

export const NO_ADAPTER_HELP =
  "No WebGPU adapter was found. bupo needs one: any GPU with a Vulkan, Metal or D3D12 " +
  "driver, or on a Linux machine without a GPU Mesa's software rasterizer llvmpipe (Debian/Ubuntu: " +
  "`apt-get install mesa-vulkan-drivers libgl1-mesa-dri`). Deno exposes WebGPU without flags; check with " +
  "`deno eval 'console.log(await navigator.gpu.requestAdapter())'`.";

/** Adapter options from the environment (BUPO_ADAPTER, BUPO_KERNELS, BUPO_PROFILE). */
export const adapterOptionsFromEnv = (): AdapterOptions => {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined;
    }
  };
  const a = env("BUPO_ADAPTER");
  const k = env("BUPO_KERNELS");
  return {
    powerPreference: a === "low-power" || a === "high-performance" ? a : undefined,
    forceFallbackAdapter: a === "fallback" ? true : undefined,
    variant: k === "software" || k === "hardware" ? k : undefined,
    profile: env("BUPO_PROFILE") === "1",
  };
};

/** Acquire an adapter and a device with the adapter's largest buffer and binding limits. */
export const openGpu = (opts: AdapterOptions = {}): Effect.Effect<GpuBackend, NoAdapterError> =>
  Effect.gen(function* () {
    const gpu = "gpu" in opts ? opts.gpu : (globalThis.navigator as Navigator | undefined)?.gpu;
    if (!("gpu" in opts)) applyLlvmpipeEnv();
    if (!gpu) return yield* new NoAdapterError({ message: `navigator.gpu is undefined. ${NO_ADAPTER_HELP}` });
    const adapter = yield* Effect.tryPromise({
      try: () =>
        gpu.requestAdapter({
          powerPreference: opts.powerPreference,
          forceFallbackAdapter: opts.forceFallbackAdapter,
        }),
      catch: (e) => new NoAdapterError({ message: `requestAdapter failed: ${e}. ${NO_ADAPTER_HELP}` }),
    });
    if (!adapter) return yield* new NoAdapterError({ message: NO_ADAPTER_HELP });
    const l = adapter.limits;
    const features: GPUFeatureName[] = adapter.features.has("timestamp-query") ? ["timestamp-query"] : [];
    const device = yield* Effect.tryPromise({
      try: () =>
        adapter.requestDevice({
          requiredFeatures: features,
          requiredLimits: {
            maxBufferSize: l.maxBufferSize,
            maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
            maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
            maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
            maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
            maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
            maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
          },
        }),
      catch: (e) =>
        new NoAdapterError({ message: `requestDevice failed on ${adapter.info.description}: ${e}` }),
    });
    return new GpuBackend(device, adapter.info, opts);
  });

/** The scoped layer: the device is destroyed when the scope that provided it closes. */
export const GpuLive = (opts: AdapterOptions = adapterOptionsFromEnv()): Layer.Layer<Gpu, NoAdapterError> =>
  Layer.effect(Gpu, Effect.acquireRelease(openGpu(opts), (b) => Effect.sync(() => b.destroy())));

/** Run an async function with a GPU backend that is released afterwards (for scripts, tests and benches). */
export const withGpu = <A>(fn: (gpu: GpuBackend) => Promise<A>, opts?: AdapterOptions): Promise<A> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const gpu = yield* Gpu;
      return yield* Effect.promise(() => fn(gpu));
    }).pipe(Effect.provide(GpuLive(opts))),
  );
