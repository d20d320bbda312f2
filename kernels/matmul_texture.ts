/**
 * The texture-packed register-blocked matmul (llvmpipe's default): operands packed or copied into rgba32float
 * textures, products too big for one texture split into windows, the block fitted to the adapter's SIMD lanes.
 */
import type { GpuPass, GpuStep, TextureCopy } from "../engine/kernel.ts";
import { bind } from "../engine/wgsl.ts";
import {
  accDecl,
  blockGrid,
  blockHead,
  type MatmulGeom,
  MAX_TEXTURE,
  outBinding,
  range,
  roundUp,
  type SoftTile,
  storeBlock,
  u,
  type Window,
} from "./matmul_wgsl.ts";

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
 * The Source of an operand stored as [X, Y] ([Y, X] when `trans`) of which a window reads x = [X, x0, length]
 * and y = [Y, y0, length].
 */
const operand = (
  input: number,
  tex: Source["tex"],
  count: number,
  H: number,
  trans: boolean,
  x: [number, number, number],
  y: [number, number, number],
): Source => {
  const [[R, r0, PR], [C, c0, PC]] = trans ? [y, x] : [x, y];
  return { input, tex, count, R, C, H, part: { r0, R: PR, c0, C: PC } };
};

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
  const b = bind(
    { input, name: "src", type: vec ? "vec4f" : "f32" },
    { texture: tex, access: "write", name: "dst" },
  );
  const wgsl = `${b.decls}
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= ${u(grid[0])} || gid.y >= ${u(grid[1])}) { return; }
  let z = gid.z;
${body.join("\n")}
}`;
  return {
    wgsl,
    workgroups: [Math.ceil(grid[0] / WX), Math.ceil(grid[1] / WY), count],
    bindings: b.bindings,
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
  // each a chain of 4 fma() into its accumulator (see texturePasses for why this form).
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
  const aTex = { id: "A", ...d.a };
  const bTex = { id: "B", ...d.b };
  const b = bind(
    { texture: aTex, access: "read", name: "tA" },
    { texture: bTex, access: "read", name: "tB" },
    outBinding(g),
  );
  const main = `${b.decls}
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
  // A row-major operand whose rows are whole 256-byte multiples is copied by the driver instead (no padding
  // inside a row is needed; rows past M in each slot are never stored, and B's K rows need no zero padding
  // when K % 4 == 0).
  // (Windows start at multiples of 4 in k and of TM / TN in m / n, so a copy's offset and width stay aligned.)
  const copyA = !g.transA && g.K % 64 === 0 && g.aCount <= MAX_COPIES;
  const copyB = !g.transB && g.N % 64 === 0 && g.K % 4 === 0 && g.N % t.TN === 0 && g.bCount <= MAX_COPIES;
  // The stored matrices and their parts: A is [M, K] (transA: [K, M]), B is [K, N] (transB: [N, K]).
  const srcA = operand(0, aTex, g.aCount, d.Mp, g.transA, [g.M, w.m0, w.M], [g.K, w.k0, w.K]);
  const srcB = operand(1, bTex, g.bCount, d.Kp, g.transB, [g.K, w.k0, w.K], [g.N, w.n0, w.N]);
  return [
    ...(copyA ? copies(srcA, "matmul.copyA") : [packPass(srcA, g.transA, "matmul.packA")]),
    ...(copyB ? copies(srcB, "matmul.copyB") : [packPass(srcB, g.transB, "matmul.packB")]),
    {
      wgsl: main,
      workgroups: blockGrid(g, t, ncb, nrb, rowsFirst),
      bindings: b.bindings,
      label: "matmul.texture",
    },
  ];
};
