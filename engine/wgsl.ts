/** Small helpers for generating WGSL text: grids over the 65,535-workgroup limit, number literals, headers. */
import type { DType } from "../core/shape.ts";
import type { GpuTarget } from "./kernel.ts";

/** WGSL scalar type of a dtype. */
export const wgslType = (d: DType): string => (d === "f32" ? "f32" : d === "i32" ? "i32" : "u32");

/** A float literal WGSL accepts for any finite number (always has a decimal point or exponent). */
export const f32Lit = (x: number): string => {
  if (!Number.isFinite(x)) throw new Error(`f32Lit: ${x} is not finite`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
};

/**
 * A 1-D grid of `n` invocations in workgroups of `wg`, folded into x and y so that no dimension exceeds the
 * device limit. The shader recovers the flat index with `flatIndex(wg, grid)`.
 */
export const grid1d = (n: number, wg: number, target: GpuTarget): [number, number, number] => {
  const groups = Math.max(1, Math.ceil(n / wg));
  const max = target.maxWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1, 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y, 1];
};

/** WGSL expression of the flat invocation index for a grid from `grid1d`. */
export const flatIndex = (wg: number, grid: readonly [number, number, number]): string =>
  `(gid.x + gid.y * ${grid[0] * wg}u)`;

/** Binding declaration line. */
export const storage = (binding: number, name: string, type: string, access: "read" | "read_write"): string =>
  `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<${type}>;`;

/**
 * Loop-iteration budget of one shader invocation on Mesa's llvmpipe/lavapipe (gallivm's
 * LP_MAX_TGSI_LOOP_ITERATIONS): one counter per invocation, decremented by every iteration of every loop
 * (sequential and nested loops, inner iterations included; loops in called functions too), never reset. Past
 * it every loop exits after its first iteration, silently: results are wrong, with no error. Measured: a loop
 * of n counts min(n, 65535); two sequential loops of n >= 65535 give 65536; nested 700 x 100 gives 64251.
 * Loops the compiler unrolls (constant trip counts of about 32 or less, or loops unrolled in the generated
 * WGSL text) do not count. Real GPUs have no such cap, but the hardware variants also run on llvmpipe (tests,
 * forced variants), so every kernel keeps each invocation's total loop count under `LOOP_SAFE`.
 */
export const LOOP_BUDGET = 65535;
/**
 * The per-invocation loop count a plan may spend: `LOOP_BUDGET` less a margin for the small loops a plan does
 * not count exactly (workgroup tree reductions, prologues, loop-exit checks).
 */
export const LOOP_SAFE = 49152;

/** Whether a plan whose invocations each run `iterations` loop iterations stays within `LOOP_SAFE`. */
export const withinLoopBudget = (iterations: number): boolean => iterations <= LOOP_SAFE;

/**
 * A shader with one invocation per flat index i in [0, n) over a `grid1d` grid of workgroups of `wg`:
 * `decls` (bindings), then `body` run for every i (the bounds check is included).
 */
export const flatWgsl = (
  decls: string,
  n: number,
  wg: number,
  grid: readonly [number, number, number],
  body: string,
): string =>
  `${decls}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${flatIndex(wg, grid)};
  if (i >= ${n}u) { return; }
${body}
}`;
