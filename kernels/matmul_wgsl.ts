/**
 * WGSL generators of the matmul family: the problem geometry, the register-block pieces the llvmpipe kernels
 * share, the buffer register-blocked kernel (llvmpipe) and the shared-memory tiled kernel (GPUs). The
 * texture-packed kernel, llvmpipe's default, is in matmul_texture.ts.
 */
import type { GpuPass } from "../engine/kernel.ts";
import { bind, type BindSpec } from "../engine/wgsl.ts";

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

/** The default on llvmpipe: 16x16 blocks, 16-wide workgroups (see texturePasses in matmul_texture.ts). */
export const SOFT_TILE: SoftTile = { TM: 16, TN: 16, WX: 16, WY: 1 };

/** The measured default of the buffer kernel (a larger block measured no faster there, and compiles slower). */
export const BUFFER_TILE: SoftTile = { TM: 8, TN: 16, WX: 8, WY: 1 };

/** Texture limit every WebGPU device has (maxTextureDimension2D default); larger operands use buffers. */
export const MAX_TEXTURE = 8192;

export const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;
export const u = (x: number): string => `${x}u`;
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Flat index of element (row m, col k) of stored A matrix `ia` (WGSL expressions). */
const addrA = (g: MatmulGeom, ia: string, m: string, k: string): string =>
  `${ia} * ${u(g.M * g.K)} + ` + (g.transA ? `${k} * ${u(g.M)} + ${m}` : `${m} * ${u(g.K)} + ${k}`);
/** Flat index of element (row k, col n) of stored B matrix `ib`. */
const addrB = (g: MatmulGeom, ib: string, k: string, n: string): string =>
  `${ib} * ${u(g.K * g.N)} + ` + (g.transB ? `${n} * ${u(g.K)} + ${k}` : `${k} * ${u(g.N)} + ${n}`);

/** Whether the output is bound as `array<vec4f>` (every row starts on a vec4 when N % 4 == 0). */
const vecOut = (g: MatmulGeom): boolean => g.N % 4 === 0;

/** The output binding `out` of the register-blocked kernels (vec4 rows when N % 4 == 0). */
export const outBinding = (g: MatmulGeom): BindSpec => ({
  output: 0,
  name: "out",
  type: vecOut(g) ? "vec4f" : "f32",
});

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
export const storeBlock = (g: MatmulGeom, TM: number, TN: number, w: Window = whole(g)): string => {
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

/** The geometry, the tile, the counts of column and row blocks, and whether rows go first (see `blockHead`). */
export type BlockArgs = [g: MatmulGeom, t: SoftTile, ncb: number, nrb: number, rowsFirst?: boolean];

/**
 * Entry point of the register-blocked kernels down to the block origin: invocation (x, y, z) owns rows m0 .. of
 * C[z] (TM of them) and columns n0 .. (TN); ia / ib index the operands' matrices. x walks column blocks, or row
 * blocks with `t.lanes` "rows". With `rowsFirst` (columns along x only) the workgroups are dispatched row blocks
 * first (workgroup id x walks rows), so the workgroups running together read one column strip of B (see
 * ROWS_FIRST_B).
 */
export const blockHead = (...[g, t, ncb, nrb, rowsFirst = false]: BlockArgs): string => {
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
export const blockGrid = (...[g, t, ncb, nrb, rowsFirst = false]: BlockArgs): [number, number, number] => {
  const [x, y] = t.lanes === "rows" ? [nrb, ncb] : [ncb, nrb];
  return rowsFirst && t.lanes !== "rows"
    ? [Math.ceil(y / t.WY), Math.ceil(x / t.WX), g.batch]
    : [Math.ceil(x / t.WX), Math.ceil(y / t.WY), g.batch];
};

export const accDecl = (TM: number, TN: number): string =>
  range(TM).map((i) => range(TN / 4).map((j) => `  var c${i}_${j} = vec4f(0.0);`).join("\n")).join("\n");

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
  const b = bind(
    { input: 0, name: "A", type: vecA ? "vec4f" : "f32" },
    { input: 1, name: "B", type: vecB ? "vec4f" : "f32" },
    outBinding(g),
  );
  const wgsl = `${b.decls}
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
    bindings: b.bindings,
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
  const b = bind({ input: 0, name: "A" }, { input: 1, name: "B" }, { output: 0, name: "out" });
  const wgsl = `${b.decls}
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
    bindings: b.bindings,
    label: "matmul.tiled",
  };
};

/** Fill the output with zeros (K = 0: an empty sum). */
export const zeroPass = (n: number, wgs: [number, number, number], index: string): GpuPass => {
  const b = bind({ output: 0, name: "out" });
  return {
    wgsl: `${b.decls}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = ${index};
  if (i < ${u(n)}) { out[i] = 0.0; }
}`,
    workgroups: wgs,
    bindings: b.bindings,
    label: "matmul.zero",
  };
};
