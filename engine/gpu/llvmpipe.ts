/**
 * Settings of Mesa's software rasterizer (llvmpipe, and lavapipe through Vulkan), applied before the first
 * adapter is requested: Mesa reads them once, when the driver starts.
 *
 * - LP_NATIVE_VECTOR_WIDTH: llvmpipe compiles every shader for SIMD vectors of this many bits (default 256:
 *   8 f32 lanes, so 8 invocations run together). On a CPU with AVX-512 bupo asks for 512 (16 lanes) unless the
 *   variable is already set. Measured on this project's 2-core Zen 5 machines (GL, shader cache off): the
 *   texture matmul product ran 74-79 GFLOP/s at 1024^3 against 48-61 at 256 bits; narrow products take
 *   blocks fitted to 16 lanes (see `laneTile`). Set LP_NATIVE_VECTOR_WIDTH=256 to keep
 *   Mesa's default.
 * - MESA_SHADER_CACHE_DIR: Mesa 22.3's on-disk shader cache does not key compiled shaders on the vector width,
 *   so a process at one width would run shaders compiled at the other (and measure the wrong thing). When the
 *   width is known and the variable unset, the cache goes to a directory of that width
 *   (`~/.cache/mesa_shader_cache_lp512`).
 */

/** The environment variables to set (only those not set already); pure, for tests. */
export const llvmpipeEnv = (
  env: (k: string) => string | undefined,
  cpuFlags: readonly string[] | undefined,
): Record<string, string> => {
  const out: Record<string, string> = {};
  let width = env("LP_NATIVE_VECTOR_WIDTH");
  if (width === undefined && cpuFlags?.includes("avx512f")) width = out.LP_NATIVE_VECTOR_WIDTH = "512";
  const cacheHome = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  if (width !== undefined && /^\d+$/.test(width) && env("MESA_SHADER_CACHE_DIR") === undefined && cacheHome) {
    out.MESA_SHADER_CACHE_DIR = `${cacheHome}/mesa_shader_cache_lp${width}`;
  }
  return out;
};

/** The CPU's feature flags (Linux /proc/cpuinfo), or undefined where they cannot be read. */
const cpuFlags = (): string[] | undefined => {
  try {
    const line = Deno.readTextFileSync("/proc/cpuinfo").split("\n").find((l) => l.startsWith("flags"));
    return line?.split(":")[1]?.trim().split(/\s+/);
  } catch {
    return undefined;
  }
};

/** Apply `llvmpipeEnv` to this process (quietly does nothing without env or read permission). */
export const applyLlvmpipeEnv = (): void => {
  try {
    const set = llvmpipeEnv((k) => Deno.env.get(k), cpuFlags());
    for (const [k, v] of Object.entries(set)) Deno.env.set(k, v);
  } catch {
    // no --allow-env: Mesa keeps its defaults
  }
};
