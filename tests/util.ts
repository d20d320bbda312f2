/** Test helpers: the shared GPU backend (a missing adapter fails under CI=true), closeness checks, arbitraries. */
import { Effect } from "effect";
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { uniforms } from "../core/rng.ts";
import type { Backend } from "../engine/backend.ts";
import { CpuBackend } from "../engine/cpu.ts";
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

/** A software target with WebGPU's default limits, for tests that only generate shader text. */
export const softwareTarget = (lanes?: number): GpuTarget => ({
  software: true,
  lanes,
  maxWorkgroupsPerDimension: 65535,
  maxWorkgroupStorageSize: 16384,
  maxInvocationsPerWorkgroup: 256,
});

export const cpu64 = new CpuBackend("f64");
export const cpu32 = new CpuBackend("f32");

/** Assert |a - b| <= atol + rtol |b| elementwise, with a message naming the first bad index. */
export const assertClose = (
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol: number; rtol: number },
  what = "value",
): void => {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length}, expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    const ok = Math.abs(a - e) <= tol.atol + tol.rtol * Math.abs(e) || (Number.isNaN(a) && Number.isNaN(e)) ||
      (a === e);
    if (!ok) throw new Error(`${what}[${i}] = ${a}, expected ${e} (atol ${tol.atol}, rtol ${tol.rtol})`);
  }
};

/** Random f32-representable data in [-range, range). */
export const randomData = (n: number, seed: number, range = 1): Float32Array => {
  const u = uniforms(seed);
  return Float32Array.from({ length: n }, () => u() * range);
};

/** A dimension extent biased toward awkward sizes: 1, primes, tile sizes plus or minus one. */
export const awkwardDim = (max: number): fc.Arbitrary<number> =>
  fc.oneof(
    fc.constantFrom(...[1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 65].filter((d) => d <= max)),
    fc.integer({ min: 1, max }),
  );

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

/** Assert that `f` throws a ShapeError whose message matches `re`. */
export const throwsShape = (f: () => unknown, re: RegExp): void => {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ShapeError) || !re.test(err.message)) {
    throw new Error(`expected ShapeError ${re}, got ${err}`);
  }
};
