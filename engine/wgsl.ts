/**
 * Small helpers for generating WGSL text: bindings, grids over the 65,535-workgroup limit, number literals,
 * headers, workgroup reductions.
 */
import type { DType } from "../core/shape.ts";
import type { GpuPass, GpuTarget, PassBinding } from "./kernel.ts";

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

/**
 * A grid of one workgroup per row over `rows` rows, folded into x and y past the device limit (`grid1d` with
 * workgroups of one); the shader recovers the row as `wid.x + wid.y * grid[0]`.
 */
export const rowGrid = (rows: number, target: GpuTarget): [number, number, number] => grid1d(rows, 1, target);

/**
 * `n` invocations in workgroups of `wg`, the workgroups folded into y past the device limit with x as full as it
 * can be (`gx`, unlike `grid1d`'s balanced fold); the shader recovers the index as `gid.x + gid.y * gx * wg`.
 */
export const foldedThreads = (
  n: number,
  wg: number,
  target: GpuTarget,
): { gx: number; workgroups: [number, number, number] } => {
  const groups = Math.max(1, Math.ceil(n / wg));
  const gx = Math.min(groups, target.maxWorkgroupsPerDimension);
  return { gx, workgroups: [gx, Math.ceil(groups / gx), 1] };
};

/** A storage binding's buffer: an input or output of the kernel, or a scratch buffer of the run. */
export type StorageBinding = Extract<PassBinding, { readonly kind: "input" | "output" | "scratch" }>;

/** The storage binding of the kernel's input `index` (for a `buffer` spec or a list of buffers). */
export const input = (index: number): StorageBinding => ({ kind: "input", index });
/** The storage binding of the kernel's output `index`. */
export const output = (index: number): StorageBinding => ({ kind: "output", index });

/** A storage buffer as the shader declares it: `var<storage, access> name: array<type>`. */
interface StorageDecl {
  readonly name: string;
  /** Element type (default f32). */
  readonly type?: string;
  /**
   * Default: read for an input (also one given as `buffer`), read_write otherwise. Give read_write for an input
   * that an output aliases (an in-place update), read for a scratch buffer that the pass only reads.
   */
  readonly access?: "read" | "read_write";
}

/**
 * One binding of a pass, stated once: what is bound and how the shader declares it (`bind`).
 * - `input: i` / `output: i`: the kernel's input or output i, a storage buffer;
 * - `buffer`: a storage binding given whole (a scratch buffer, shared by the passes of a run, or an input or
 *   output picked at generation time);
 * - `texture`: a temporary rgba32float texture, `texture_storage_2d<rgba32float, access>`;
 * - `uniform`: constants written once per dispatch, `var<uniform> name: type`; with `struct` (its fields) the
 *   declaration `struct type { struct }` comes first.
 */
export type BindSpec =
  | (StorageDecl & { readonly input: number })
  | (StorageDecl & { readonly output: number })
  | (StorageDecl & { readonly buffer: StorageBinding })
  | {
    readonly texture: { readonly id: string; readonly width: number; readonly height: number };
    readonly access: "write" | "read";
    readonly name: string;
  }
  | { readonly uniform: Uint32Array; readonly name: string; readonly type: string; readonly struct?: string };

/** The declarations (one line each, in binding order) and the `GpuPass.bindings` of a list of `BindSpec`. */
export interface Bound {
  readonly decls: string;
  readonly bindings: readonly PassBinding[];
}

/**
 * The bindings of a pass from one list: binding numbers are list positions, declarations and `PassBinding`
 * entries come from the same entry. A `false` entry (an optional binding left out) binds nothing and leaves
 * its line empty, as the hand-written shader texts did (the text is the pipeline cache key).
 */
export const bind = (...specs: readonly (BindSpec | false)[]): Bound => {
  const decls: string[] = [];
  const bindings: PassBinding[] = [];
  for (const s of specs) {
    if (s === false) {
      decls.push("");
      continue;
    }
    const at = `@group(0) @binding(${bindings.length})`;
    if ("uniform" in s) {
      const struct = s.struct === undefined ? "" : `struct ${s.type} { ${s.struct} }\n`;
      decls.push(`${struct}${at} var<uniform> ${s.name}: ${s.type};`);
      bindings.push({ kind: "uniform", data: s.uniform });
    } else if ("texture" in s) {
      const { id, width, height } = s.texture;
      decls.push(`${at} var ${s.name}: texture_storage_2d<rgba32float, ${s.access}>;`);
      bindings.push({ kind: "texture", id, width, height, access: s.access });
    } else {
      const b = "input" in s ? input(s.input) : "output" in s ? output(s.output) : s.buffer;
      const access = s.access ?? (b.kind === "input" ? "read" : "read_write");
      decls.push(`${at} var<storage, ${access}> ${s.name}: array<${s.type ?? "f32"}>;`);
      bindings.push(b);
    }
  }
  return { decls: decls.join("\n"), bindings };
};

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

/**
 * The pass of a `flatWgsl` shader over the bindings `b`: one invocation per flat index i in [0, n) (workgroups
 * of `wg` on a `grid1d` grid) runs `body`.
 */
export const flatPass = (
  b: Bound,
  n: number,
  wg: number,
  target: GpuTarget,
  body: string,
  label?: string,
): GpuPass => {
  const grid = grid1d(n, wg, target);
  return { wgsl: flatWgsl(b.decls, n, wg, grid, body), workgroups: grid, bindings: b.bindings, label };
};

/**
 * A tree reduction over workgroup memory of `wg` invocations (a power of two): a barrier (the values are
 * stored), then for strides `stride` = wg / 2, wg / 4, ..., 1 the invocations `lane < stride` run `combine`
 * (folding slot `lane + stride` into slot `lane`), each level closed by a barrier. Slot 0 holds the result.
 * `combine` is one line, or several (each on its own line). Every invocation of the workgroup must run it.
 */
export const treeReduce = (
  wg: number,
  lane: string,
  stride: string,
  combine: string | readonly string[],
): string =>
  `  workgroupBarrier();
  for (var ${stride} = ${wg / 2}u; ${stride} > 0u; ${stride} >>= 1u) {
    if (${lane} < ${stride}) {${
    typeof combine === "string" ? ` ${combine} ` : `\n${combine.map((l) => `      ${l}\n`).join("")}    `
  }}
    workgroupBarrier();
  }`;

/**
 * WGSL functions reducing one value per invocation over a workgroup of `wg` (a power of two) through
 * workgroup memory, in a fixed order: `wgSum(t, v)`, `wgMax(t, v)` and `wgArgMax(t, v, i)` (the index of the
 * max, the smallest on ties), `t` the local invocation index. Every invocation must call them (uniform
 * control flow).
 */
export const workgroupReductions = (wg: number): string =>
  `var<workgroup> wgRed: array<f32, ${wg}>;
var<workgroup> wgIdx: array<u32, ${wg}>;
fn wgSum(t: u32, v: f32) -> f32 {
  wgRed[t] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { wgRed[t] = wgRed[t] + wgRed[t + s]; }
    workgroupBarrier();
  }
  let r = wgRed[0];
  workgroupBarrier();
  return r;
}
fn wgMax(t: u32, v: f32) -> f32 {
  wgRed[t] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { wgRed[t] = max(wgRed[t], wgRed[t + s]); }
    workgroupBarrier();
  }
  let r = wgRed[0];
  workgroupBarrier();
  return r;
}
fn wgArgMax(t: u32, v: f32, i: u32) -> u32 {
  wgRed[t] = v;
  wgIdx[t] = i;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) {
      let w = wgRed[t + s];
      let k = wgIdx[t + s];
      if (w > wgRed[t] || (w == wgRed[t] && k < wgIdx[t])) { wgRed[t] = w; wgIdx[t] = k; }
    }
    workgroupBarrier();
  }
  let r = wgIdx[0];
  workgroupBarrier();
  return r;
}`;
