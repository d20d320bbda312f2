/** WGSL generators of the matmul family: texture-packed and buffer register-blocked (llvmpipe), shared-memory tiled (GPUs). */
import type { GpuPass, GpuStep, TextureCopy } from "./kernel.ts";

/**
 * One batched matmul problem as the shaders see it: `batch` output matrices C[z] = op(A)[ia(z)] @ op(B)[ib(z)],
 * op(A) of shape [M, K] stored as [M, K] (or [K, M] when transA), op(B) [K, N] stored as [K, N] (or [N, K]).
 * `aIndex`/`bIndex` are WGSL expressions in `z` giving the operand's matrix index (broadcast batches).
 */
export interface MatmulGeom {
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly transA: boolean;
  readonly transB: boolean;
  readonly batch: number;
  readonly aCount: number;
  readonly bCount: number;
  readonly aIndex: string;
  readonly bIndex: string;
}

/** Register block of the software kernels: TM rows x TN columns of C per invocation (TN a multiple of 4). */
export interface SoftTile {
  readonly TM: number;
  readonly TN: number;
  /** Workgroup size (x over column blocks, y over row blocks; the other way round with `lanes: "rows"`). */
  readonly WX: number;
  readonly WY: number;
  /**
   * What the workgroup's x axis walks: column blocks (absent, the default) or row blocks. llvmpipe runs
   * consecutive x of a workgroup together in one SIMD vector, so this is the axis its lanes spread over (see
   * `laneTile`).
   */
  readonly lanes?: "columns" | "rows";
}

/** The default on llvmpipe: 16x16 blocks, 16-wide workgroups (see the note above texturePasses). */
export const SOFT_TILE: SoftTile = { TM: 16, TN: 16, WX: 16, WY: 1 };

/** The measured default of the buffer kernel (a larger block measured no faster there, and compiles slower). */
export const BUFFER_TILE: SoftTile = { TM: 8, TN: 16, WX: 8, WY: 1 };

/** Texture limit every WebGPU device has (maxTextureDimension2D default); larger operands use buffers. */
export const MAX_TEXTURE = 8192;

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;
const u = (x: number): string => `${x}u`;
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Flat index of element (row m, col k) of stored A matrix `ia` (WGSL expressions). */
const addrA = (g: MatmulGeom, ia: string, m: string, k: string): string =>
  `${ia} * ${u(g.M * g.K)} + ` + (g.transA ? `${k} * ${u(g.M)} + ${m}` : `${m} * ${u(g.K)} + ${k}`);
/** Flat index of element (row k, col n) of stored B matrix `ib`. */
const addrB = (g: MatmulGeom, ib: string, k: string, n: string): string =>
  `${ib} * ${u(g.K * g.N)} + ` + (g.transB ? `${n} * ${u(g.K)} + ${k}` : `${k} * ${u(g.N)} + ${n}`);

/** Whether the output is bound as `array<vec4f>` (every row starts on a vec4 when N % 4 == 0). */
const vecOut = (g: MatmulGeom): boolean => g.N % 4 === 0;

/** Declaration of the output binding `out` at `binding`. */
const outDecl = (g: MatmulGeom, binding: number): string =>
  `@group(0) @binding(${binding}) var<storage, read_write> out: array<${vecOut(g) ? "vec4f" : "f32"}>;`;

/**
 * One block of a product: rows [m0, m0 + M) of op(A), columns [n0, n0 + N) of op(B), the k in [k0, k0 + K).
 * The texture path splits a product whose operands do not fit one texture into such blocks.
 */
export interface Window {
  readonly m0: number;
  readonly M: number;
  readonly n0: number;
  readonly N: number;
  readonly k0: number;
  readonly K: number;
}

/** The whole product as one window. */
const whole = (g: MatmulGeom): Window => ({ m0: 0, M: g.M, n0: 0, N: g.N, k0: 0, K: g.K });

/**
 * Guarded stores of the register block c_i_j (vec4 over 4 columns) to out[z, w.m0 + m0 + i, w.n0 + n0 + 4j ..]:
 * one vec4 store per c_i_j when N % 4 == 0 (scalar stores at dynamic addresses run one lane at a time on
 * llvmpipe), else 4 scalar stores. Guards keep to the window `w`; a window past k = 0 adds to what is there.
 */
const storeBlock = (g: MatmulGeom, TM: number, TN: number, w: Window = whole(g)): string => {
  const vec = vecOut(g);
  const lines: string[] = [`  let cbase = z * ${u(g.M * g.N)};`];
  const rowGuard = w.M % TM !== 0, colGuard = w.N % TN !== 0;
  const put = (at: string, v: string) => w.k0 > 0 ? `out[${at}] = out[${at}] + ${v};` : `out[${at}] = ${v};`;
  for (const i of range(TM)) {
    const body: string[] = [
      `    let r${i} = cbase + (m0 + ${u(w.m0 + i)}) * ${u(g.N)} + n0${w.n0 > 0 ? ` + ${u(w.n0)}` : ""};`,
    ];
    for (const j of range(TN / 4)) {
      if (vec) {
        const st = put(`r${i} / 4u + ${u(j)}`, `c${i}_${j}`);
        body.push(colGuard ? `    if (n0 + ${u(4 * j)} < ${u(w.N)}) { ${st} }` : `    ${st}`);
        continue;
      }
      for (const e of range(4)) {
        const c = 4 * j + e;
        const st = put(`r${i} + ${u(c)}`, `c${i}_${j}[${e}]`);
        body.push(colGuard ? `    if (n0 + ${u(c)} < ${u(w.N)}) { ${st} }` : `    ${st}`);
      }
    }
    lines.push(rowGuard ? `  if (m0 + ${u(i)} < ${u(w.M)}) {` : "  {", ...body, "  }");
  }
  return lines.join("\n");
};

/**
 * Entry point of the register-blocked kernels down to the block origin: invocation (x, y, z) owns rows m0 .. of
 * C[z] (TM of them) and columns n0 .. (TN); ia / ib index the operands' matrices. x walks column blocks, or row
 * blocks with `t.lanes` "rows". With `rowsFirst` (columns along x only) the workgroups are dispatched row blocks
 * first (workgroup id x walks rows), so the workgroups running together read one column strip of B (see
 * ROWS_FIRST_B).
 */
const blockHead = (g: MatmulGeom, t: SoftTile, ncb: number, nrb: number, rowsFirst = false): string => {
  const rows = t.lanes === "rows";
  const entry = rowsFirst && !rows
    ? `fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let gid = vec3u(wid.y * ${u(t.WX)} + lid.x, wid.x * ${u(t.WY)} + lid.y, wid.z);`
    : "fn main(@builtin(global_invocation_id) gid: vec3u) {";
  const [bm, bn] = rows ? ["gid.x", "gid.y"] : ["gid.y", "gid.x"];
  return `@compute @workgroup_size(${t.WX}, ${t.WY})
${entry}
  if (${bn} >= ${u(ncb)} || ${bm} >= ${u(nrb)}) { return; }
  let z = gid.z;
  let ia = ${g.aIndex};
  let ib = ${g.bIndex};
  let m0 = ${bm} * ${u(t.TM)};
  let n0 = ${bn} * ${u(t.TN)};`;
};

/** The workgroup grid of `blockHead` over ncb column blocks and nrb row blocks. */
const blockGrid = (
  g: MatmulGeom,
  t: SoftTile,
  ncb: number,
  nrb: number,
  rowsFirst = false,
): [number, number, number] => {
  const [x, y] = t.lanes === "rows" ? [nrb, ncb] : [ncb, nrb];
  return rowsFirst && t.lanes !== "rows"
    ? [Math.ceil(y / t.WY), Math.ceil(x / t.WX), g.batch]
    : [Math.ceil(x / t.WX), Math.ceil(y / t.WY), g.batch];
};

/**
 * The texture product's tile on an adapter whose SIMD vectors hold `lanes` invocations (llvmpipe: its vector
 * width / 32). One vector of invocations covers lanes x TN columns (or lanes x TM rows with `lanes: "rows"`),
 * so a product narrower than that leaves lanes idle. At 16 lanes (LP_NATIVE_VECTOR_WIDTH=512) the candidates
 * are `t`, `t` with half as many columns, and `t` along rows; the one whose vectors are fullest wins (ties:
 * that order). At 8 lanes `t` is kept: the narrower and row-wise tiles measured no better there.
 * Measured at 16 lanes (product pass alone, GL, shader cache off; GFLOP/s for 16x16 / 16x8 / 16x16 rows):
 * 1024x384 @ 384x128 23 / 29 / 34, 4096x128 @ 128x384 36 / 37 / -, 4096x512 @ 512x512 59 / 49 / -, 1024^3
 * 78 / 70 / -; over the 15 product shapes of the d = 128 training step (through the library, packs
 * included): 349 ms (16x16) / 258 (16x8) / 331 (rows) / 251 (the best of each), against 246-286 at 8 lanes.
 */
export const laneTile = (g: MatmulGeom, t: SoftTile, lanes: number | undefined): SoftTile => {
  if (lanes === undefined || lanes < 16) return t;
  const fill = (n: number, block: number) => n / roundUp(n, lanes * block);
  const candidates: SoftTile[] = [{ ...t, lanes: "columns" }];
  if ((t.TN / 2) % 4 === 0) candidates.push({ ...t, TN: t.TN / 2, lanes: "columns" });
  candidates.push({ ...t, lanes: "rows" });
  const score = (c: SoftTile) => c.lanes === "rows" ? fill(g.M, c.TM) : fill(g.N, c.TN);
  return candidates.reduce((best, c) => (score(c) > score(best) ? c : best));
};

const accDecl = (TM: number, TN: number): string =>
  range(TM).map((i) => range(TN / 4).map((j) => `  var c${i}_${j} = vec4f(0.0);`).join("\n")).join("\n");

// ---- texture path (llvmpipe) ------------------------------------------------------------------------------

/**
 * Floats of packed B above which the product walks row blocks first. Measured (product pass alone, through GL,
 * interleaved): 4096 x 1024 @ 1024 x 3072 48 -> 59 GFLOP/s, 1024 x 1024 @ 1024 x 2048 45 -> 57, 4096 x 2048 @
 * 2048 x 2048 40 -> 50, but 1024^3 77 -> 57: with B at 4 MiB or less, walking column blocks first is better.
 */
export const ROWS_FIRST_B = 1 << 20;

/** Texture sizes of the packed operands: A as [aCount*Mp, Kp/4] texels, B as [bCount*Kp, Np/4]. */
export const textureDims = (g: MatmulGeom, t: SoftTile) => {
  const Mp = roundUp(g.M, t.TM), Np = roundUp(g.N, t.TN), Kp = roundUp(g.K, 4);
  return {
    Mp,
    Np,
    Kp,
    a: { width: Kp / 4, height: g.aCount * Mp },
    b: { width: Np / 4, height: g.bCount * Kp },
  };
};

/**
 * Long sums are split into k windows of at most this many k when K > 2 K_WINDOW and M >= 256 (C is then
 * stored once and added to K / K_WINDOW - 1 times). Measured through the library, GL, in alternating processes:
 * 1024x4096 @ 4096x1024 34 -> 58, 24 -> 41, 27 -> 41 GFLOP/s; 2048x6144 @ 6144x1024 25 -> 44, 26 -> 42;
 * 1024x8192 @ 8192x512 45 -> 62; 256x8192 @ 8192x256 28 -> 33; 4096x3072 @ 3072x1024 58 -> 58, 44 -> 54. Not
 * for fewer rows (8x4096 @ 4096x1024 10 -> 9, 128x4096 @ 4096x384 22 -> 20, 26 -> 22) nor for K = 2048
 * (1024x2048 @ 2048x2048 56 -> 52, 50 -> 41).
 */
export const K_WINDOW = 1024;

/** Most windows one product may be split into before the buffer kernel is used instead. */
export const MAX_WINDOWS = 64;

/** `n` split into the fewest parts of at most `most` (a multiple of `step`), as even as multiples of `step` allow. */
const split = (n: number, most: number, step: number): [number, number][] => {
  const parts = Math.ceil(n / most);
  const len = roundUp(Math.ceil(n / parts), step);
  const out: [number, number][] = [];
  for (let at = 0; at < n; at += len) out.push([at, Math.min(len, n - at)]);
  return out;
};

/**
 * The windows of the texture path: the whole product when its packed operands fit the guaranteed texture size,
 * else blocks of rows (A's texture holds aCount slots of at most 8192 / aCount rows), columns (B's texture is at
 * most 8192 texels = 32768 columns wide) and k (A's is at most 32768 k wide, B's holds bCount slots of k; and
 * see K_WINDOW); null
 * when a slot cannot hold one block or more than MAX_WINDOWS would be needed (the buffer kernel then).
 */
export const textureWindows = (g: MatmulGeom, t: SoftTile): Window[] | null => {
  const most = {
    M: Math.floor(MAX_TEXTURE / g.aCount / t.TM) * t.TM,
    N: Math.floor((4 * MAX_TEXTURE) / t.TN) * t.TN,
    K: Math.min(
      g.K > 2 * K_WINDOW && g.M >= 256 ? K_WINDOW : 4 * MAX_TEXTURE,
      4 * MAX_TEXTURE,
      Math.floor(MAX_TEXTURE / g.bCount / 4) * 4,
    ),
  };
  if (most.M < t.TM || most.K < 4) return null;
  const count = Math.ceil(g.M / most.M) * Math.ceil(g.N / most.N) * Math.ceil(g.K / most.K);
  if (count > MAX_WINDOWS) return null;
  const out: Window[] = [];
  for (const [k0, K] of split(g.K, most.K, 4)) {
    for (const [m0, M] of split(g.M, most.M, t.TM)) {
      for (const [n0, N] of split(g.N, most.N, t.TN)) out.push({ m0, M, n0, N, k0, K });
    }
  }
  return out;
};

/** Whether the texture path can run this product (in one window or several). */
export const texturesFit = (g: MatmulGeom, t: SoftTile): boolean => textureWindows(g, t) !== null;

/** The part of each stored matrix a pack or copy reads: rows [r0, r0 + R), columns [c0, c0 + C). */
interface Part {
  readonly r0: number;
  readonly c0: number;
  readonly R: number;
  readonly C: number;
}

/**
 * Where a texture's operand comes from: `count` stored row-major matrices S[z] of R x C (input `input`), of
 * which `part` goes into texture rows z * H .. of `tex`.
 */
interface Source {
  readonly input: number;
  readonly tex: { readonly id: string; readonly width: number; readonly height: number };
  readonly count: number;
  readonly R: number;
  readonly C: number;
  readonly H: number;
  readonly part: Part;
}

/**
 * One pack pass: the part `p` of the source's matrices S[z] into its texture, whose texel (x, z * H + y) holds 4
 * consecutive entries along one axis of S[z]'s part, zero padded:
 * - `across` false: texel = S[z][y, 4x .. 4x+3] (op(A) = A, op(B) = B: the texel runs along S's rows);
 * - `across` true: texel = S[z][4x .. 4x+3, y] (the transposed operands).
 * (x and y counted from the part's origin). Neighbouring lanes (x of the dispatch) always walk S's contiguous
 * axis; with C, the part's origin and width all multiples of 4 they load vec4s (and the transposed case
 * transposes a 4x4 block in registers, storing 4 texels).
 */
const packPass = (src: Source, across: boolean, label: string): GpuPass => {
  const { input, tex, count, R, C, H, part: p } = src;
  const vec = C % 4 === 0 && p.c0 % 4 === 0 && p.C % 4 === 0;
  const [WX, WY] = [16, 4];
  const PR = 1;
  const body: string[] = [];
  let grid: [number, number];
  if (!across && vec) {
    // (x = texel column, y = row of S)
    grid = [tex.width, Math.ceil(H / PR)];
    for (const r of range(PR)) {
      body.push(
        `  { let y = gid.y * ${u(PR)} + ${u(r)};`,
        `    let v = select(vec4f(0.0), src[min(z * ${u(R * C / 4)} + (y + ${u(p.r0)}) * ${u(C / 4)} + ${
          u(p.c0 / 4)
        } + gid.x, ${u(count * R * C / 4 - 1)})], y < ${u(p.R)} && gid.x < ${u(p.C / 4)});`,
        `    if (y < ${u(H)}) { textureStore(dst, vec2u(gid.x, z * ${u(H)} + y), v); } }`,
      );
    }
  } else if (!across) {
    grid = [tex.width, H];
    const el = (e: number) =>
      `select(0.0, src[min(z * ${u(R * C)} + (gid.y + ${u(p.r0)}) * ${u(C)} + ${u(p.c0)} + gid.x * 4u + ${
        u(e)
      }, ${u(count * R * C - 1)})], gid.y < ${u(p.R)} && gid.x * 4u + ${u(e)} < ${u(p.C)})`;
    body.push(
      `  textureStore(dst, vec2u(gid.x, z * ${u(H)} + gid.y), vec4f(${range(4).map(el).join(", ")}));`,
    );
  } else if (vec) {
    // (x = group of 4 columns of S, y = texel column = group of 4 rows of S): a 4x4 block, transposed.
    grid = [Math.ceil(H / 4), tex.width];
    for (const e of range(4)) {
      body.push(
        `  let r${e} = select(vec4f(0.0), src[min(z * ${u(R * C / 4)} + (gid.y * 4u + ${u(p.r0 + e)}) * ${
          u(C / 4)
        } + ${u(p.c0 / 4)} + gid.x, ${u(count * R * C / 4 - 1)})], gid.y * 4u + ${u(e)} < ${
          u(p.R)
        } && gid.x < ${u(p.C / 4)});`,
      );
    }
    for (const q of range(4)) {
      const c = "xyzw"[q];
      body.push(
        `  if (gid.x * 4u + ${u(q)} < ${u(H)}) { textureStore(dst, vec2u(gid.y, z * ${u(H)} + gid.x * 4u + ${
          u(q)
        }), vec4f(r0.${c}, r1.${c}, r2.${c}, r3.${c})); }`,
      );
    }
  } else {
    // (x = column of S, y = texel column = group of 4 rows of S)
    grid = [H, tex.width];
    const el = (e: number) =>
      `select(0.0, src[min(z * ${u(R * C)} + (gid.y * 4u + ${u(p.r0 + e)}) * ${u(C)} + ${u(p.c0)} + gid.x, ${
        u(count * R * C - 1)
      })], gid.y * 4u + ${u(e)} < ${u(p.R)} && gid.x < ${u(p.C)})`;
    body.push(
      `  textureStore(dst, vec2u(gid.y, z * ${u(H)} + gid.x), vec4f(${range(4).map(el).join(", ")}));`,
    );
  }
  const wgsl = `@group(0) @binding(0) var<storage, read> src: array<${vec ? "vec4f" : "f32"}>;
@group(0) @binding(1) var dst: texture_storage_2d<rgba32float, write>;
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= ${u(grid[0])} || gid.y >= ${u(grid[1])}) { return; }
  let z = gid.z;
${body.join("\n")}
}`;
  return {
    wgsl,
    workgroups: [Math.ceil(grid[0] / WX), Math.ceil(grid[1] / WY), count],
    bindings: [{ kind: "input", index: input }, { kind: "texture", ...tex, access: "write" }],
    label,
  };
};

/** Most per-matrix copies one operand may take before a single pack pass is cheaper to encode. */
const MAX_COPIES = 8;

/**
 * The driver's copy of the part `p` of the source's matrices (C % 64 == 0; p.c0 and p.C multiples of 4) into
 * texture rows z * H ..: texel (x, z H + y) = S[z][p.r0 + y, p.c0 + 4x .. +3], as the row-major pack pass would
 * store it (minus the zero padding of rows past p.R, which the product never stores).
 */
const copies = ({ input, tex, count, R, C, H, part: p }: Source, label: string): TextureCopy[] =>
  range(count).map((z) => ({
    copy: {
      input,
      offset: (z * R * C + p.r0 * C + p.c0) * 4,
      bytesPerRow: C * 4,
      texture: { id: tex.id, width: tex.width, height: tex.height },
      y: z * H,
      size: [p.C / 4, p.R] as const,
    },
    label,
  }));

/**
 * Three passes: pack op(A) row-major into texture "A" (texel = 4 consecutive k of one row, zero padded),
 * pack op(B) into texture "B" (texel = 4 consecutive n of one k), then the register-blocked product; a
 * row-major operand with rows of a multiple of 64 floats is copied into its texture by the driver instead of
 * packed (at 1024^3 through GL: 40 -> 45.5 GFLOP/s, same process, three alternations). The
 * product reads the textures as read-only storage textures: on llvmpipe that image path measured ~1.4x
 * faster than `texture_2d` + textureLoad (whose sampler path dominated the loop), and both bind the same view.
 *
 * The update is a chain of `fma()` (Mesa 22.3's llvmpipe lowers it to a multiply and an add; its JIT code has
 * no FMA instructions) and workgroups are 16 wide (SOFT_TILE). Measured with Mesa's shader cache off (it does
 * not key compiled shaders on the vector width, which spoiled earlier comparisons): at llvmpipe's default
 * 256-bit vectors the `+=` sum of products with 8-wide workgroups, this form with 8-wide and with 16-wide
 * workgroups all ran 50-60 GFLOP/s at 1024^3 and 44-46 at 4096 x 256 @ 256 x 768 (product pass alone,
 * through GL); with LP_NATIVE_VECTOR_WIDTH=512 the 16-wide workgroups fill 16-lane vectors and the product
 * ran 74 at 1024^3 and 70 at 4096 x 1024 @ 1024 x 1024 (8-wide ones: 39 and 36).
 */
export const texturePasses = (g: MatmulGeom, t: SoftTile): GpuStep[] => {
  const windows = textureWindows(g, t);
  if (!windows) {
    throw new Error(`matmul: no texture windows for ${g.M}x${g.K}x${g.N} (check texturesFit first)`);
  }
  return windows.flatMap((w) => windowPasses(g, t, w));
};

/**
 * The passes of one window: its parts of op(A) and op(B) packed (or copied) into textures "A" and "B" sized
 * for the window, then the product storing into (or, past the first k block, adding to) its block of C. The
 * windows of one product run in order and reuse the textures.
 */
const windowPasses = (g: MatmulGeom, t: SoftTile, w: Window): GpuStep[] => {
  const { TM, TN } = t;
  const d = textureDims({ ...g, M: w.M, N: w.N, K: w.K }, t);
  const ncb = d.Np / TN, nrb = d.Mp / TM;
  // Per 4-step of k: TM texels of A (4 k's of one row each), 4 x TN/4 texels of B; TM x TN/4 vec4 updates,
  // each a chain of 4 fma() into its accumulator (see SOFT_TILE for why this form).
  const step: string[] = [];
  for (const i of range(TM)) step.push(`    let a${i} = textureLoad(tA, vec2i(k4, ay + ${i}));`);
  step.push("    let kb = by + k4 * 4;");
  for (const kk of range(4)) {
    for (const j of range(TN / 4)) {
      step.push(`    let b${kk}_${j} = textureLoad(tB, vec2i(bx + ${j}, kb + ${kk}));`);
    }
  }
  for (const i of range(TM)) {
    for (const j of range(TN / 4)) {
      const c = `c${i}_${j}`;
      const chain = range(4).reduce((acc, kk) => `fma(vec4f(a${i}.${"xyzw"[kk]}), b${kk}_${j}, ${acc})`, c);
      step.push(`    ${c} = ${chain};`);
    }
  }
  const rowsFirst = d.Kp * d.Np > ROWS_FIRST_B;
  const main = `@group(0) @binding(0) var tA: texture_storage_2d<rgba32float, read>;
@group(0) @binding(1) var tB: texture_storage_2d<rgba32float, read>;
${outDecl(g, 2)}
${blockHead(g, t, ncb, nrb, rowsFirst)}
  let ay = i32(ia * ${u(d.Mp)} + m0);
  let by = i32(ib * ${u(d.Kp)});
  let bx = i32(${t.lanes === "rows" ? "gid.y" : "gid.x"} * ${u(TN / 4)});
${accDecl(TM, TN)}
  for (var k4 = 0; k4 < ${d.Kp / 4}; k4++) {
${step.join("\n")}
  }
${storeBlock(g, TM, TN, w)}
}`;
  const aTex = { kind: "texture", id: "A", ...d.a } as const;
  const bTex = { kind: "texture", id: "B", ...d.b } as const;
  // A row-major operand whose rows are whole 256-byte multiples is copied by the driver instead (no padding
  // inside a row is needed; rows past M in each slot are never stored, and B's K rows need no zero padding
  // when K % 4 == 0).
  // (Windows start at multiples of 4 in k and of TM / TN in m / n, so a copy's offset and width stay aligned.)
  const copyA = !g.transA && g.K % 64 === 0 && g.aCount <= MAX_COPIES;
  const copyB = !g.transB && g.N % 64 === 0 && g.K % 4 === 0 && g.N % t.TN === 0 && g.bCount <= MAX_COPIES;
  // The stored matrices and their parts: A is [M, K] (transA: [K, M]), B is [K, N] (transB: [N, K]).
  const srcA: Source = g.transA
    ? {
      input: 0,
      tex: aTex,
      count: g.aCount,
      R: g.K,
      C: g.M,
      H: d.Mp,
      part: { r0: w.k0, R: w.K, c0: w.m0, C: w.M },
    }
    : {
      input: 0,
      tex: aTex,
      count: g.aCount,
      R: g.M,
      C: g.K,
      H: d.Mp,
      part: { r0: w.m0, R: w.M, c0: w.k0, C: w.K },
    };
  const srcB: Source = g.transB
    ? {
      input: 1,
      tex: bTex,
      count: g.bCount,
      R: g.N,
      C: g.K,
      H: d.Kp,
      part: { r0: w.n0, R: w.N, c0: w.k0, C: w.K },
    }
    : {
      input: 1,
      tex: bTex,
      count: g.bCount,
      R: g.K,
      C: g.N,
      H: d.Kp,
      part: { r0: w.k0, R: w.K, c0: w.n0, C: w.N },
    };
  return [
    ...(copyA ? copies(srcA, "matmul.copyA") : [packPass(srcA, g.transA, "matmul.packA")]),
    ...(copyB ? copies(srcB, "matmul.copyB") : [packPass(srcB, g.transB, "matmul.packB")]),
    {
      wgsl: main,
      workgroups: blockGrid(g, t, ncb, nrb, rowsFirst),
      bindings: [{ ...aTex, access: "read" }, { ...bTex, access: "read" }, { kind: "output", index: 0 }],
      label: "matmul.texture",
    },
  ];
};

// ---- buffer path (llvmpipe, no workgroup memory) ----------------------------------------------------------

/**
 * Register-blocked product straight from the storage buffers. Rows and columns past the edge are clamped
 * (they read valid memory, and their results are never stored). A is read as vec4 along k when it is
 * row-major with K % 4 == 0, B as vec4 along n when it is row-major with N % 4 == 0; otherwise scalars.
 */
export const bufferPass = (g: MatmulGeom, t: SoftTile): GpuPass => {
  const { TM, TN } = t;
  const vecA = !g.transA && g.K % 4 === 0;
  const vecB = !g.transB && g.N % 4 === 0;
  const KS = vecA ? 4 : 1;
  const ncb = Math.ceil(g.N / TN), nrb = Math.ceil(g.M / TM);
  const pre: string[] = [];
  for (const i of range(TM)) pre.push(`  let rm${i} = min(m0 + ${u(i)}, ${u(g.M - 1)});`);
  if (vecB) {
    for (const j of range(TN / 4)) pre.push(`  let cn${j} = min(n0 / 4u + ${u(j)}, ${u(g.N / 4 - 1)});`);
  } else {
    for (const c of range(TN)) pre.push(`  let cn${c} = min(n0 + ${u(c)}, ${u(g.N - 1)});`);
  }
  const step: string[] = [];
  for (const i of range(TM)) {
    step.push(
      vecA
        ? `    let a${i} = A[(ia * ${u(g.M * g.K)} + rm${i} * ${u(g.K)}) / 4u + k / 4u];`
        : `    let a${i} = A[${addrA(g, "ia", `rm${i}`, "k")}];`,
    );
  }
  for (const kk of range(KS)) {
    const k = KS === 1 ? "k" : `(k + ${u(kk)})`;
    for (const j of range(TN / 4)) {
      step.push(
        vecB
          ? `    let b${kk}_${j} = B[(ib * ${u(g.K * g.N)} + ${k} * ${u(g.N)}) / 4u + cn${j}];`
          : `    let b${kk}_${j} = vec4f(${
            range(4).map((e) => `B[${addrB(g, "ib", k, `cn${4 * j + e}`)}]`).join(", ")
          });`,
      );
    }
  }
  for (const i of range(TM)) {
    for (const j of range(TN / 4)) {
      const terms = vecA
        ? range(4).map((kk) => `a${i}.${"xyzw"[kk]} * b${kk}_${j}`).join(" + ")
        : `a${i} * b0_${j}`;
      step.push(`    c${i}_${j} += ${terms};`);
    }
  }
  const wgsl = `@group(0) @binding(0) var<storage, read> A: array<${vecA ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read> B: array<${vecB ? "vec4f" : "f32"}>;
${outDecl(g, 2)}
${blockHead(g, t, ncb, nrb)}
${pre.join("\n")}
${accDecl(TM, TN)}
  for (var k = 0u; k < ${u(g.K)}; k += ${u(KS)}) {
${step.join("\n")}
  }
${storeBlock(g, TM, TN)}
}`;
  return {
    wgsl,
    workgroups: blockGrid(g, t, ncb, nrb),
    bindings: [{ kind: "input", index: 0 }, { kind: "input", index: 1 }, { kind: "output", index: 0 }],
    label: "matmul.buffer",
  };
};

// ---- tiled path (hardware GPUs) ---------------------------------------------------------------------------

/** Shape of the tiled kernel: TX x TY threads, each an RM x RN micro-tile; K staged in slabs of BK. */
export interface HardTile {
  readonly TX: number;
  readonly TY: number;
  readonly RM: number;
  readonly RN: number;
  readonly BK: number;
}

/**
 * 64x64 tiles by 16x16 threads of 4x4 outputs. On llvmpipe (where the tests run it) any such kernel with
 * barriers takes 20-50 s to compile (64 threads of 8x8 and loop-carried accumulator arrays were no faster).
 */
export const HARD_TILE: HardTile = { TX: 16, TY: 16, RM: 4, RN: 4, BK: 16 };

/**
 * The classic shared-memory tiled kernel: a (TY RM) x (TX RN) tile of C per workgroup, K in slabs of BK
 * staged through workgroup memory (zero padded at the edges), an RM x RN register micro-tile per thread with
 * rows ty + TY i and columns tx + TX j (consecutive threads read consecutive words of the staged slabs).
 */
export const tiledPass = (g: MatmulGeom, t: HardTile = HARD_TILE): GpuPass => {
  const { TX, TY, RM, RN, BK } = t;
  const BM = TY * RM, BN = TX * RN, NT = TX * TY;
  const acc = range(RM).map((i) => range(RN).map((j) => `c${i}_${j}`));
  const inner: string[] = [];
  for (const i of range(RM)) inner.push(`      let a${i} = As[kk * ${u(BM)} + ty + ${u(TY * i)}];`);
  for (const j of range(RN)) inner.push(`      let b${j} = Bs[kk * ${u(BN)} + tx + ${u(TX * j)}];`);
  for (const i of range(RM)) {
    for (const j of range(RN)) inner.push(`      ${acc[i][j]} = fma(a${i}, b${j}, ${acc[i][j]});`);
  }
  const stores: string[] = [];
  for (const i of range(RM)) {
    for (const j of range(RN)) {
      stores.push(
        `  { let m = m0 + ty + ${u(TY * i)}; let n = n0 + tx + ${u(TX * j)}; if (m < ${u(g.M)} && n < ${
          u(g.N)
        }) { out[z * ${u(g.M * g.N)} + m * ${u(g.N)} + n] = ${acc[i][j]}; } }`,
      );
    }
  }
  const wgsl = `@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> As: array<f32, ${BM * BK}>;
var<workgroup> Bs: array<f32, ${BK * BN}>;
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let z = wid.z;
  let ia = ${g.aIndex};
  let ib = ${g.bIndex};
  let tx = lid.x; let ty = lid.y;
  let tid = ty * ${u(TX)} + tx;
  let m0 = wid.y * ${u(BM)};
  let n0 = wid.x * ${u(BN)};
${acc.flat().map((c) => `  var ${c} = 0.0;`).join("\n")}
  for (var k0 = 0u; k0 < ${u(g.K)}; k0 += ${u(BK)}) {
    // A slab, stored k-major: element e -> (row e / BK, col e % BK)
    for (var e = tid; e < ${u(BM * BK)}; e += ${u(NT)}) {
      let m = m0 + e / ${u(BK)}; let k = k0 + e % ${u(BK)};
      As[(e % ${u(BK)}) * ${u(BM)} + e / ${u(BK)}] =
        select(0.0, A[min(${addrA(g, "ia", "m", "k")}, arrayLength(&A) - 1u)], m < ${u(g.M)} && k < ${
    u(g.K)
  });
    }
    // B slab: element e -> (row e / BN, col e % BN)
    for (var e = tid; e < ${u(BK * BN)}; e += ${u(NT)}) {
      let k = k0 + e / ${u(BN)}; let n = n0 + e % ${u(BN)};
      Bs[e] = select(0.0, B[min(${addrB(g, "ib", "k", "n")}, arrayLength(&B) - 1u)], k < ${u(g.K)} && n < ${
    u(g.N)
  });
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${u(BK)}; kk++) {
${inner.join("\n")}
    }
    workgroupBarrier();
  }
${stores.join("\n")}
}`;
  return {
    wgsl,
    workgroups: [Math.ceil(g.N / BN), Math.ceil(g.M / BM), g.batch],
    bindings: [{ kind: "input", index: 0 }, { kind: "input", index: 1 }, { kind: "output", index: 0 }],
    label: "matmul.tiled",
  };
};

/** Fill the output with zeros (K = 0: an empty sum). */
export const zeroPass = (n: number, wgs: [number, number, number], index: string): GpuPass => ({
  wgsl: `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i < ${u(n)}) { out[i] = 0.0; }
}`,
  workgroups: wgs,
  bindings: [{ kind: "output", index: 0 }],
  label: "matmul.zero",
});
