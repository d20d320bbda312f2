/**
 * GPU test helpers: the shared GPU backend (a missing adapter fails under CI=true), its hardware-variant twin, the
 * GPU test wrapper and a device-free software target. Importing this file opens the devices (top-level await), so
 * device-free tests import only tests/util.ts.
 */
import { Effect } from "effect";
import fc from "fast-check";
import type { Backend } from "../engine/backend.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import type { GpuTarget } from "../engine/kernel.ts";
import { adapterOptionsFromEnv, openGpu } from "../engine/gpu/device.ts";

const ci = (() => {
  try {
    return Deno.env.get("CI") === "true";
  } catch {
    return false;
  }
})();

/** The GPU backend for this test file, or null where there is no adapter (never null under CI=true). */
export const gpu: GpuBackend | null = await Effect.runPromise(
  openGpu(adapterOptionsFromEnv()).pipe(
    Effect.catch((e) => {
      if (ci) return Effect.die(new Error(`CI=true but no WebGPU adapter: ${e.message}`));
      console.warn(`GPU tests skipped: ${e.message}`);
      return Effect.succeed(null);
    }),
  ),
);

/**
 * A second backend on the same adapter with the real-GPU ("hardware") kernel variants, so both variants of every
 * kernel are tested here (null where there is no adapter).
 */
export const hwGpu: GpuBackend | null = gpu
  ? await Effect.runPromise(openGpu({ ...adapterOptionsFromEnv(), variant: "hardware" }))
  : null;

/** The default backend and the hardware-variant one: kernels with two variants are checked on both. */
export const bothVariants = (g: Backend): Backend[] => [g, hwGpu!];

// Destroy the devices when the file's worker unloads instead of leaving them to its teardown. (This is not what
// prevents the GL abort at exit; see tests/zz_egl_exit_test.ts.)
globalThis.addEventListener("unload", () => {
  hwGpu?.destroy();
  gpu?.destroy();
});

/** Deno.test options for a GPU test: ignored only when there is no adapter outside CI. */
export const gpuTest = (name: string, fn: (g: GpuBackend) => Promise<void>): void =>
  Deno.test({ name, ignore: gpu === null, sanitizeResources: false, sanitizeOps: false, fn: () => fn(gpu!) });

/** A GPU test of one fast-check property: `body(g, x)` for `numRuns` values `x` of `arb`. */
export const gpuProperty = <T>(
  name: string,
  arb: fc.Arbitrary<T>,
  numRuns: number,
  body: (g: GpuBackend, x: T) => Promise<void>,
): void => gpuTest(name, (g) => fc.assert(fc.asyncProperty(arb, (x) => body(g, x)), { numRuns }));

/** A software target with WebGPU's default limits, for tests that only generate shader text. */
export const softwareTarget = (lanes?: number): GpuTarget => ({
  software: true,
  lanes,
  maxWorkgroupsPerDimension: 65535,
  maxWorkgroupStorageSize: 16384,
  maxInvocationsPerWorkgroup: 256,
});

/** Number of fast-check runs for GPU properties (each run compiles shaders; keep CI fast). */
export const GPU_RUNS = Number(
  (() => {
    try {
      return Deno.env.get("BUPO_GPU_RUNS");
    } catch {
      return undefined;
    }
  })() ?? 12,
);
