/** Batched matrix multiplication with optional transposes and NumPy batch broadcasting, and its gradient. */
import { ShapeError } from "../core/errors.ts";
import { type Shape, showShape, size, strides } from "../core/shape.ts";
import { sumTo } from "./elementwise.ts";
import { defineKernel, type GpuStep, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { laneTile, texturePasses, texturesFit } from "./matmul_texture.ts";
import {
  BUFFER_TILE,
  bufferPass,
  type MatmulGeom,
  SOFT_TILE,
  type SoftTile,
  tiledPass,
  zeroPass,
} from "./matmul_wgsl.ts";
import { apply1 } from "../engine/apply.ts";
import { reshape, type Tensor } from "../engine/tensor.ts";
import { flatIndex, grid1d } from "../engine/wgsl.ts";

export { BUFFER_TILE, MAX_TEXTURE, SOFT_TILE, type SoftTile } from "./matmul_wgsl.ts";

/**
 * GPU lowering: "texture" packs both operands into rgba32float textures (a row-major operand whose rows are
 * multiples of 64 floats is copied by the driver instead, ~5x cheaper) then runs a register-blocked kernel
 * (the default on software adapters, where texture loads vectorize); "buffer" is the same register-blocked
 * kernel reading storage buffers (used where a texture would exceed the 8192-texel limit); "tiled" is the
 * shared-memory kernel for hardware GPUs.
 */
export type MatmulVariant = "texture" | "buffer" | "tiled";

export interface MatmulParams {
  /** a is stored [...batch, K, M]. */
  readonly transA: boolean;
  /** b is stored [...batch, N, K]. */
  readonly transB: boolean;
  /** Force a GPU lowering (tests, benchmarks); chosen by the adapter when absent. */
  readonly variant?: MatmulVariant;
  /**
   * Register block of the software variants (tuning), used as given; when absent, `BUFFER_TILE` for the
   * buffer variant and for the texture variant `SOFT_TILE` fitted to the adapter's SIMD lanes (`laneTile`).
   */
  readonly tile?: SoftTile;
}

/** Everything shape-derived about one call: sizes, batch broadcast, output shape. */
interface Plan {
  readonly M: number;
  readonly N: number;
  readonly K: number;
  /** Output batch shape (broadcast of both batch shapes). */
  readonly batch: Shape;
  /** Matrix index of a (resp. b) for each output batch index. */
  readonly aOf: (z: number) => number;
  readonly bOf: (z: number) => number;
  readonly aCount: number;
  readonly bCount: number;
  readonly aIndex: string;
  readonly bIndex: string;
  readonly out: Shape;
}

const describe = (p: MatmulParams): string =>
  p.transA || p.transB ? ` (transA ${p.transA}, transB ${p.transB})` : "";

/** Index maps of an operand's batch shape broadcast to the output batch shape: JS and WGSL forms. */
const batchMap = (own: Shape, to: Shape): { js: (z: number) => number; wgsl: string; count: number } => {
  const count = size(own);
  if (count === 1) return { js: () => 0, wgsl: "0u", count };
  if (count === size(to)) return { js: (z) => z, wgsl: "z", count };
  const padded = [...Array(to.length - own.length).fill(1), ...own];
  const os = strides(to), ms = strides(padded);
  const axes = to.map((_, k) => k).filter((k) => padded[k] !== 1);
  return {
    js: (z) => axes.reduce((acc, k) => acc + Math.floor(z / os[k]) % to[k] * ms[k], 0),
    wgsl: axes.map((k) => `((z / ${os[k]}u) % ${to[k]}u) * ${ms[k]}u`).join(" + "),
    count,
  };
};

const plan = (p: MatmulParams, a: { readonly shape: Shape }, b: { readonly shape: Shape }): Plan => {
  for (const [name, t] of [["a", a], ["b", b]] as const) {
    if (t.shape.length < 2) {
      throw new ShapeError({
        op: "matmul",
        message: `matmul: ${name} has shape ${
          showShape(t.shape)
        }; needs rank >= 2 (a matrix or a batch of them)`,
      });
    }
  }
  const ra = a.shape.length, rb = b.shape.length;
  const [M, Ka] = p.transA ? [a.shape[ra - 1], a.shape[ra - 2]] : [a.shape[ra - 2], a.shape[ra - 1]];
  const [Kb, N] = p.transB ? [b.shape[rb - 1], b.shape[rb - 2]] : [b.shape[rb - 2], b.shape[rb - 1]];
  if (Ka !== Kb) {
    throw new ShapeError({
      op: "matmul",
      message: `matmul: a has shape ${showShape(a.shape)}, b has shape ${
        showShape(b.shape)
      }; inner dimensions ${Ka} and ${Kb} differ${describe(p)}`,
    });
  }
  const ba = a.shape.slice(0, ra - 2), bb = b.shape.slice(0, rb - 2);
  const n = Math.max(ba.length, bb.length);
  const batch: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = ba[ba.length - n + i] ?? 1, y = bb[bb.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new ShapeError({
        op: "matmul",
        message: `matmul: a has shape ${showShape(a.shape)}, b has shape ${
          showShape(b.shape)
        }; batch dimensions ${showShape(ba)} and ${showShape(bb)} do not broadcast`,
      });
    }
    batch.push(x === 1 ? y : x);
  }
  const am = batchMap(ba, batch), bm = batchMap(bb, batch);
  return {
    M,
    N,
    K: Ka,
    batch,
    aOf: am.js,
    bOf: bm.js,
    aCount: am.count,
    bCount: bm.count,
    aIndex: am.wgsl,
    bIndex: bm.wgsl,
    out: [...batch, M, N],
  };
};

/** The shader geometry; a shared weight (b without batch) folds a row-major a's batch into M. */
const geometry = (p: MatmulParams, pl: Plan): MatmulGeom => {
  const base = { N: pl.N, K: pl.K, transA: p.transA, transB: p.transB, bCount: pl.bCount, bIndex: pl.bIndex };
  if (pl.bCount === 1 && !p.transA) {
    return { ...base, M: pl.M * pl.aCount, batch: 1, aCount: 1, aIndex: "0u" };
  }
  return { ...base, M: pl.M, batch: size(pl.batch), aCount: pl.aCount, aIndex: pl.aIndex };
};

/** The texture variant's tile: `p.tile` as given, else SOFT_TILE fitted to the adapter's lanes (`laneTile`). */
const textureTile = (p: MatmulParams, g: MatmulGeom, target: { readonly lanes?: number }): SoftTile =>
  p.tile ?? laneTile(g, SOFT_TILE, target.lanes);

/** The variant `gpu` uses for these params on this target (a forced texture falls back to buffer if too big). */
export const matmulVariant = (
  p: MatmulParams,
  a: TensorSpec,
  b: TensorSpec,
  target: { readonly software: boolean; readonly lanes?: number },
): MatmulVariant => {
  const g = geometry(p, plan(p, a, b));
  const v = p.variant ?? (target.software ? "texture" : "tiled");
  return v === "texture" && !texturesFit(g, textureTile(p, g, target)) ? "buffer" : v;
};

/** C = op(A) @ op(B) over broadcast batches, op = identity or transpose of the last two axes. */
export const matmulKernel: Kernel<MatmulParams> = defineKernel<MatmulParams>({
  name: "matmul",
  infer: (p, [a, b]) => {
    for (const [name, t] of [["a", a], ["b", b]] as const) {
      if (t.dtype !== "f32") {
        throw new ShapeError({ op: "matmul", message: `matmul: ${name} has dtype ${t.dtype}, expected f32` });
      }
    }
    return [{ shape: plan(p, a, b).out, dtype: "f32" }];
  },
  cpu: (p, [a, b], [c]) => {
    const pl = plan(p, a, b);
    const { M, N, K } = pl;
    const A = a.data, B = b.data, C = c.data;
    for (let z = 0; z < size(pl.batch); z++) {
      const ao = pl.aOf(z) * M * K, bo = pl.bOf(z) * K * N, co = z * M * N;
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let k = 0; k < K; k++) {
            s += A[ao + (p.transA ? k * M + m : m * K + k)] * B[bo + (p.transB ? n * K + k : k * N + n)];
          }
          C[co + m * N + n] = s;
        }
      }
    }
  },
  gpu: (p, [a, b], target): GpuStep[] => {
    const pl = plan(p, a, b);
    const total = size(pl.out);
    if (total === 0) return [];
    if (pl.K === 0) {
      const grid = grid1d(total, 256, target);
      return [zeroPass(total, grid, flatIndex(256, grid))];
    }
    const g = geometry(p, pl);
    if (g.batch > target.maxWorkgroupsPerDimension) {
      throw new ShapeError({
        op: "matmul",
        message:
          `matmul: ${g.batch} batch matrices exceed the ${target.maxWorkgroupsPerDimension} dispatch limit`,
      });
    }
    const v = matmulVariant(p, a, b, target);
    switch (v) {
      case "texture":
        return texturePasses(g, textureTile(p, g, target));
      case "buffer":
        return [bufferPass(g, p.tile ?? BUFFER_TILE)];
      case "tiled":
        return [tiledPass(g)];
      default:
        return v satisfies never;
    }
  },
  // With Ā = op(A) [M, K], B̄ = op(B) [K, N], C = Ā B̄:  dĀ = dC B̄ᵀ,  dB̄ = Āᵀ dC.
  // transA stores A = Āᵀ, so dA = dĀᵀ = B̄ dCᵀ; transB stores B = B̄ᵀ, so dB = dB̄ᵀ = dCᵀ Ā.
  // Broadcast batch axes are summed back (sumTo), or folded into the K-sum when b is a shared weight.
  vjp: ({ params: p, inputs: [a, b] }, [dc]) => {
    const g = dc!; // (...batch, M, N)
    const o = { variant: p.variant, tile: p.tile };
    const dA = p.transA
      ? matmul(b, g, { ...o, transA: p.transB, transB: true }) // (...batch, K, M) = B̄ dCᵀ
      : matmul(g, b, { ...o, transB: !p.transB }); // (...batch, M, K) = dC B̄ᵀ
    const pl = plan(p, a, b);
    let dB: Tensor;
    if (pl.bCount === 1 && !p.transA && a.rank > 2) {
      const a2 = reshape(a, [pl.aCount * pl.M, pl.K]); // (batch*M, K)
      const g2 = reshape(g, [pl.aCount * pl.M, pl.N]); // (batch*M, N)
      dB = p.transB
        ? matmul(g2, a2, { ...o, transA: true }) // (N, K) = dCᵀ Ā, summed over the batch by the K-sum
        : matmul(a2, g2, { ...o, transA: true }); // (K, N) = Āᵀ dC
      if (b.rank !== 2) dB = reshape(dB, b.shape);
    } else {
      dB = p.transB
        ? matmul(g, a, { ...o, transA: true, transB: p.transA }) // (...batch, N, K) = dCᵀ Ā
        : matmul(a, g, { ...o, transA: !p.transA }); // (...batch, K, N) = Āᵀ dC
      dB = sumTo(dB, b.shape);
    }
    return [sumTo(dA, a.shape), dB];
  },
});

/**
 * Batched matmul: a [...batch, M, K] (or [..., K, M] with transA) times b [...batch, K, N] (or [..., N, K]
 * with transB) gives [...batch, M, N]; batch axes broadcast NumPy-style. A weight b of shape [K, N] applied
 * to a row-major a runs as one [batch*M, K] @ [K, N] product.
 */
export const matmul = (
  a: Tensor,
  b: Tensor,
  opts: { transA?: boolean; transB?: boolean; variant?: MatmulVariant; tile?: SoftTile } = {},
): Tensor =>
  apply1(matmulKernel, {
    transA: opts.transA ?? false,
    transB: opts.transB ?? false,
    variant: opts.variant,
    tile: opts.tile,
  }, [a, b]);
