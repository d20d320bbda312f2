/** Matmul family: every GPU variant = CPU reference on awkward shapes; gradients = finite differences. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { size } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";

import { computePasses, type GpuPass, type GpuStep } from "../engine/kernel.ts";
import {
  BUFFER_TILE,
  matmul,
  matmulKernel,
  type MatmulVariant,
  matmulVariant,
  SOFT_TILE,
  type SoftTile,
} from "../kernels/matmul.ts";
import { laneTile } from "../kernels/matmul_texture.ts";
import type { MatmulGeom } from "../kernels/matmul_wgsl.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy, view } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest, hwGpu, softwareTarget } from "./gpu_util.ts";
import { assertClose, awkwardDim, batchPair, cpu32, cpu64, randomData } from "./util.ts";

interface Problem {
  readonly sa: number[];
  readonly sb: number[];
  readonly transA: boolean;
  readonly transB: boolean;
  readonly K: number;
}

const problem = (maxDim: number): fc.Arbitrary<Problem> =>
  fc.record({
    M: awkwardDim(maxDim),
    K: awkwardDim(maxDim),
    N: awkwardDim(maxDim),
    batches: batchPair,
    transA: fc.boolean(),
    transB: fc.boolean(),
  }).map(({ M, K, N, batches: [ba, bb], transA, transB }) => ({
    sa: [...ba, ...(transA ? [K, M] : [M, K])],
    sb: [...bb, ...(transB ? [N, K] : [K, N])],
    transA,
    transB,
    K,
  }));

/** The problem op(A) [..ba, M, K] @ op(B) [..bb, K, N] with the stored shapes of those transposes. */
const problemOf = (
  ba: readonly number[],
  bb: readonly number[],
  [M, K, N]: readonly [number, number, number],
  transA: boolean,
  transB: boolean,
): Problem => ({
  sa: [...ba, ...(transA ? [K, M] : [M, K])],
  sb: [...bb, ...(transB ? [N, K] : [K, N])],
  transA,
  transB,
  K,
});

/** The GPU steps of the texture variant for problem `p` on `g`. */
const textureSteps = (g: GpuBackend, p: Problem, tile?: SoftTile) =>
  matmulKernel.gpu(
    { transA: p.transA, transB: p.transB, variant: "texture", tile },
    [{ shape: p.sa, dtype: "f32" }, { shape: p.sb, dtype: "f32" }],
    g.target,
  );

const runMatmul = (b: Backend, p: Problem, seed: number, variant?: MatmulVariant, tile?: SoftTile) =>
  tidy(() =>
    matmul(
      tensor(b, randomData(size(p.sa), seed), p.sa),
      tensor(b, randomData(size(p.sb), seed + 1), p.sb),
      { transA: p.transA, transB: p.transB, variant, tile },
    ).data()
  );

// Data in [-1, 1): each output is a K-term f32 sum (different order and fma on the GPU) against an f64 sum
// rounded once. Its error is at most K * u * sum |a_k b_k| <= K^2 * 6e-8 <= 1e-5 * K for K <= 168 (here K <= 70).
const tolFor = (K: number) => ({ atol: 1e-5 * K, rtol: 1e-6 });

const variantProperty = (variant: MatmulVariant) =>
  gpuTest(
    `matmul ${variant}: GPU equals CPU reference (awkward sizes, batch broadcast, transposes)`,
    async (g) => {
      await fc.assert(
        fc.asyncProperty(problem(70), fc.nat(), async (p, seed) => {
          const got = await runMatmul(g, p, seed, variant);
          const want = await runMatmul(cpu32, p, seed);
          assertClose(
            got,
            want,
            tolFor(p.K),
            `matmul ${variant} ${p.sa} x ${p.sb} tA=${p.transA} tB=${p.transB}`,
          );
        }),
        { numRuns: GPU_RUNS },
      );
    },
  );

variantProperty("texture");

/** The product passes of a matmul's steps. */
const products = (steps: readonly GpuStep[]): GpuPass[] =>
  computePasses(steps).filter((st) => st.label === "matmul.texture" || st.label === "matmul.buffer");

/** Whether a product pass spreads the workgroup's x (llvmpipe's SIMD lanes) over row blocks. */
const rowLanes = (st: GpuPass): boolean => st.wgsl.includes("let m0 = gid.x *");

gpuTest(
  "matmul texture and buffer with lanes along row blocks and along column blocks: all equal the CPU",
  async (g) => {
    await fc.assert(
      fc.asyncProperty(
        problem(70),
        fc.nat(),
        fc.constantFrom<MatmulVariant>("texture", "buffer"),
        fc.constantFrom<"rows" | "columns">("rows", "columns"),
        async (p, seed, variant, lanes) => {
          const tile = { ...(variant === "texture" ? SOFT_TILE : BUFFER_TILE), lanes };
          const steps = matmulKernel.gpu(
            { transA: p.transA, transB: p.transB, variant, tile },
            [{ shape: p.sa, dtype: "f32" }, { shape: p.sb, dtype: "f32" }],
            g.target,
          );
          if (!products(steps).every((st) => rowLanes(st) === (lanes === "rows"))) {
            throw new Error(`${variant}: expected lanes along ${lanes}`);
          }
          assertClose(
            await runMatmul(g, p, seed, variant, tile),
            await runMatmul(cpu32, p, seed),
            tolFor(p.K),
            `${variant} lanes=${lanes} ${p.sa} x ${p.sb} tA=${p.transA} tB=${p.transB}`,
          );
        },
      ),
      { numRuns: GPU_RUNS },
    );
  },
);

Deno.test("matmul: laneTile fits the block to 16-lane vectors (fullest vectors win), keeps it at 8 lanes", () => {
  const geom = (M: number, N: number): MatmulGeom => ({
    M,
    N,
    K: 64,
    transA: false,
    transB: false,
    batch: 1,
    aCount: 1,
    bCount: 1,
    aIndex: "0u",
    bIndex: "0u",
  });
  const show = (t: SoftTile) => `${t.TM}x${t.TN} ${t.lanes ?? "columns"}`;
  const cases: [number, number, number | undefined, string][] = [
    [1024, 1024, 16, "16x16 columns"], // a vector of 16 lanes x 16 columns (256) fills: as it is
    [4096, 512, 16, "16x16 columns"],
    [1024, 384, 16, "16x8 columns"], // 384 of 512 columns; 16 x 8 = 128 divides 384
    [1024, 128, 16, "16x8 columns"],
    [1024, 64, 16, "16x16 rows"], // 64 columns fill half of 128; 1024 rows fill every vector
    [8, 384, 16, "16x8 columns"], // decode
    [1024, 128, 8, "16x16 columns"], // 8 lanes: SOFT_TILE as it is
    [1024, 128, undefined, "16x16 columns"], // not llvmpipe
  ];
  for (const [M, N, lanes, want] of cases) {
    const got = show(laneTile(geom(M, N), SOFT_TILE, lanes));
    if (got !== want) throw new Error(`laneTile ${M}x${N} at ${lanes} lanes: ${got}, expected ${want}`);
  }
  // The choice reaches the product pass on a 16-lane target; a given tile is used as it is.
  const target = softwareTarget(16);
  const pass = (sb: number[], tile?: SoftTile) =>
    products(matmulKernel.gpu({ transA: false, transB: false, tile }, [{ shape: [1024, 64], dtype: "f32" }, {
      shape: sb,
      dtype: "f32",
    }], target))[0];
  if (!rowLanes(pass([64, 64])) || rowLanes(pass([64, 1024])) || rowLanes(pass([64, 64], SOFT_TILE))) {
    throw new Error("laneTile not applied as documented");
  }
  if (!pass([64, 128]).wgsl.includes("let n0 = gid.x * 8u;")) throw new Error("expected 8-column blocks");
});

gpuTest(
  "matmul texture: operands copied into textures by the driver (rows of 64k floats) equal the CPU, stale textures never leak",
  async (g) => {
    const dim64 = fc.constantFrom(64, 128, 192);
    await fc.assert(
      fc.asyncProperty(
        fc.record({ M: awkwardDim(70), K: dim64, N: dim64, batches: batchPair, transA: fc.boolean() }),
        fc.boolean(),
        fc.nat(),
        async ({ M, K, N, batches: [ba, bb], transA }, transB, seed) => {
          const p = problemOf(ba, bb, [M, K, N], transA, transB);
          const steps = textureSteps(g, p);
          const copied = (l: string) => steps.some((st) => "copy" in st && st.label === l);
          if (copied("matmul.copyA") !== (!transA && size(ba) <= 8)) throw new Error(`copyA for ${p.sa}`);
          if (copied("matmul.copyB") !== (!transB && size(bb) <= 8)) throw new Error(`copyB for ${p.sb}`);
          // Fill the pooled textures of this size with NaN first: rows and columns the copies leave unwritten
          // (padding past M) must never reach a stored output.
          tidy(() => {
            const nan = (s: number[]) => tensor(g, new Float32Array(size(s)).fill(NaN), s);
            matmul(nan(p.sa), nan(p.sb), { transA, transB, variant: "texture" });
          });
          // The operands as views 64 elements into a larger buffer (copies start at the view's offset).
          const got = await tidy(() => {
            const at = (data: Float32Array, s: number[]) => {
              const big = new Float32Array(64 + data.length);
              big.set(data, 64);
              return view(tensor(g, big, [big.length]), 64, s);
            };
            return matmul(
              at(randomData(size(p.sa), seed), p.sa),
              at(randomData(size(p.sb), seed + 1), p.sb),
              {
                transA,
                transB,
                variant: "texture",
              },
            ).data();
          });
          const want = await runMatmul(cpu32, p, seed);
          // K up to 192: K^2 * 6e-8 <= 2.3e-3 = 1.2e-5 K.
          assertClose(
            got,
            want,
            { atol: 1.2e-5 * K, rtol: 1e-6 },
            `copied ${p.sa} x ${p.sb} tA=${transA} tB=${transB}`,
          );
        },
      ),
      { numRuns: GPU_RUNS },
    );
  },
);
variantProperty("buffer");
// The tiled (hardware) kernel takes 20-50 s per shape to compile on llvmpipe (barriers): the random property
// runs with BUPO_SLOW_TESTS=1; by default one awkward case (both transposes, broadcast batch) runs below.
const slow = (() => {
  try {
    return Deno.env.get("BUPO_SLOW_TESTS") === "1";
  } catch {
    return false;
  }
})();
if (slow) variantProperty("tiled");

gpuTest(
  "matmul: default variant by adapter; a hardware backend runs the tiled kernel correctly",
  async (g) => {
    const p: Problem = { sa: [2, 1, 33, 17], sb: [3, 65, 33], transA: true, transB: true, K: 33 };
    const spec = (s: number[]) => ({ shape: s, dtype: "f32" as const });
    const params = { transA: true, transB: true };
    const soft = matmulVariant(params, spec(p.sa), spec(p.sb), g.target);
    if (g.target.software && soft !== "texture") throw new Error(`software default is ${soft}`);
    const hw = hwGpu!;
    try {
      const v = matmulVariant(params, spec(p.sa), spec(p.sb), hw.target);
      if (v !== "tiled") throw new Error(`hardware default is ${v}`);
      assertClose(await runMatmul(hw, p, 5), await runMatmul(cpu32, p, 5), tolFor(p.K), "hardware backend");
    } finally {
      hw.destroy();
    }
  },
);

gpuTest(
  "matmul texture: 4-aligned shapes (vec4 pack, 4x4 transposed pack, vec4 stores) and the old 8x16 block",
  async (g) => {
    // M, K, N multiples of 4 but not of the 16-row/16-column block: padded rows and columns, vec4 paths.
    for (const [transA, transB] of [[false, false], [true, false], [false, true], [true, true]]) {
      for (const tile of [undefined, { TM: 8, TN: 16, WX: 8, WY: 1 }]) {
        const [M, K, N] = [20, 36, 44];
        const p: Problem = {
          sa: [2, 1, ...(transA ? [K, M] : [M, K])],
          sb: [3, ...(transB ? [N, K] : [K, N])],
          transA,
          transB,
          K,
        };
        const got = await tidy(() =>
          matmul(
            tensor(g, randomData(size(p.sa), 7), p.sa),
            tensor(g, randomData(size(p.sb), 8), p.sb),
            { transA, transB, variant: "texture", tile },
          ).data()
        );
        assertClose(
          got,
          await runMatmul(cpu32, p, 7),
          tolFor(K),
          `aligned tA=${transA} tB=${transB} ${tile}`,
        );
      }
    }
  },
);

gpuTest(
  "matmul texture: a B of more than ROWS_FIRST_B floats walks row blocks first and equals the CPU",
  async (g) => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({ M: awkwardDim(40), transA: fc.boolean(), transB: fc.boolean(), seed: fc.nat() }),
        async ({ M, transA, transB, seed }) => {
          const [K, N] = [1030, 1033]; // 1032 * 1040 packed floats > 2^20, neither a multiple of the block
          const p = problemOf([2, 1], [3], [M, K, N], transA, transB);
          const product = textureSteps(g, p).find((st) => "wgsl" in st && st.label === "matmul.texture");
          if (!product || !("wgsl" in product) || !product.wgsl.includes("workgroup_id")) {
            throw new Error("expected the rows-first product");
          }
          // K = 1030: the worst-case bound K^2 * 6e-8 = 0.064 of the f32 sum (outputs are ~10 in size).
          assertClose(
            await runMatmul(g, p, seed, "texture"),
            await runMatmul(cpu32, p, seed),
            { atol: K * K * 6e-8, rtol: 1e-6 },
            `rows first ${p.sa} x ${p.sb} tA=${transA} tB=${transB}`,
          );
        },
      ),
      { numRuns: 4 },
    );
  },
);

/** Small integers in [-2, 2]: every product and partial sum below 2^24 is exact in f32, in any order. */
const intData = (n: number, seed: number): Float32Array => randomData(n, seed).map((x) => Math.round(x * 2));

gpuTest(
  "matmul texture: products too big for one texture run in windows (rows, columns, k) and equal the CPU exactly",
  async (g) => {
    // Each case needs more than one window: M past 8192 / aCount rows, N past 32768 columns, K past 32768 or
    // 8192 / bCount. Integer data make the f32 sums exact whatever the order, so the check is equality.
    const cases = [
      { ba: [3], M: 2800, K: 64, bb: [], N: 40 }, // rows: 3 slots of at most 2720 rows
      { ba: [], M: 5, K: 64, bb: [], N: 32832 }, // columns (N % 64 == 0: B copied)
      { ba: [], M: 3, K: 24, bb: [], N: 32801 }, // columns, B packed
      { ba: [], M: 3, K: 8200, bb: [], N: 7 }, // k: two blocks, the second adds
      { ba: [], M: 3, K: 8256, bb: [], N: 7 }, // k with A copied from k0 = 4128
      { ba: [], M: 256, K: 2100, bb: [], N: 5 }, // k split for speed (K_WINDOW): three windows of 700
      { ba: [3], M: 4, K: 3000, bb: [3], N: 6 }, // k with 3 B slots of at most 2728
      { ba: [2, 1], M: 4100, K: 3, bb: [3], N: 5 }, // rows with a broadcast batch (M folded to 8200 before)
    ];
    // Every case with every transpose (a random sample missed the copy offsets), lanes along column blocks;
    // and with lanes along row blocks for no transpose and both.
    const runs = [
      [false, false, "columns"],
      [true, false, "columns"],
      [false, true, "columns"],
      [true, true, "columns"],
      [false, false, "rows"],
      [true, true, "rows"],
    ] as const;
    for (const [i, c] of cases.entries()) {
      for (const [r, [transA, transB, lanes]] of runs.entries()) {
        const seed = 6 * i + r;
        const p = problemOf(c.ba, c.bb, [c.M, c.K, c.N], transA, transB);
        const spec = (s: number[]) => ({ shape: s, dtype: "f32" as const });
        const tile = { ...SOFT_TILE, lanes };
        const what = `${p.sa} x ${p.sb} tA=${transA} tB=${transB} lanes=${lanes}`;
        const params = { transA, transB, variant: "texture" as const, tile };
        if (matmulVariant(params, spec(p.sa), spec(p.sb), g.target) !== "texture") {
          throw new Error(`expected the texture path for ${what}`);
        }
        const ps = products(textureSteps(g, p, tile));
        if (ps.length < 2) throw new Error(`expected several windows for ${what}, got ${ps.length}`);
        if (!ps.every((st) => rowLanes(st) === (lanes === "rows"))) throw new Error(`lanes of ${what}`);
        const run = (b: Backend) =>
          tidy(() =>
            matmul(
              tensor(b, intData(size(p.sa), seed), p.sa),
              tensor(b, intData(size(p.sb), seed + 1), p.sb),
              b === g ? { transA, transB, variant: "texture", tile } : { transA, transB },
            ).data()
          );
        assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, `windows ${what}`);
      }
    }
  },
);

gpuTest("matmul: a product no texture windows can hold falls back to the buffer kernel", async (g) => {
  // 600 A matrices: one 16-row block of each does not fit 8192 texture rows.
  const p: Problem = { sa: [600, 5, 3], sb: [600, 3, 5], transA: false, transB: false, K: 3 };
  const spec = (s: number[]) => ({ shape: s, dtype: "f32" as const });
  const v = matmulVariant(
    { transA: false, transB: false, variant: "texture" },
    spec(p.sa),
    spec(p.sb),
    g.target,
  );
  if (v !== "buffer") throw new Error(`expected the buffer fallback, got ${v}`);
  assertClose(await runMatmul(g, p, 3, "texture"), await runMatmul(cpu32, p, 3), tolFor(3), "fallback");
});

gpuTest("matmul: K = 0 gives zeros, empty outputs give nothing", async (g) => {
  const z = await tidy(() => matmul(tensor(g, [], [3, 0]), tensor(g, [], [0, 2])).data());
  assertClose(z, [0, 0, 0, 0, 0, 0], { atol: 0, rtol: 0 }, "K=0");
  const e = await tidy(() => matmul(tensor(g, [], [0, 4]), tensor(g, randomData(8, 1), [4, 2])).data());
  if (e.length !== 0) throw new Error(`expected empty, got ${e.length}`);
});

const gradCase = fc.record({
  transA: fc.boolean(),
  transB: fc.boolean(),
  M: awkwardDim(5),
  K: awkwardDim(5),
  N: awkwardDim(5),
  layout: fc.constantFrom("2d", "weight", "weight1", "broadcast", "aShared"),
  seed: fc.nat(),
});

const gradShapes = (
  c: { transA: boolean; transB: boolean; M: number; K: number; N: number },
  layout: string,
) => {
  const [ba, bb] = layout === "2d"
    ? [[], []]
    : layout === "weight"
    ? [[2, 3], []]
    : layout === "weight1"
    ? [[2], [1]]
    : layout === "broadcast"
    ? [[2, 1], [3]]
    : [[], [2]];
  return {
    sa: [...ba, ...(c.transA ? [c.K, c.M] : [c.M, c.K])],
    sb: [...bb, ...(c.transB ? [c.N, c.K] : [c.K, c.N])],
  };
};

Deno.test("matmul gradients equal central finite differences (f64, all transposes, broadcast batch)", async () => {
  await fc.assert(
    fc.asyncProperty(gradCase, async (c) => {
      const { sa, sb } = gradShapes(c, c.layout);
      const f = (x: Tensor, y: Tensor) => matmul(x, y, { transA: c.transA, transB: c.transB });
      const r = await checkGrad(cpu64, f, [
        { data: randomData(size(sa), c.seed), shape: sa },
        { data: randomData(size(sb), c.seed + 1), shape: sb },
      ], { seed: c.seed });
      // Bilinear in each input: central differences are exact up to f64 rounding (~1e-10 here).
      if (r.error > 1e-6) {
        throw new Error(`${sa} x ${sb} ${JSON.stringify(c)}: ${r.analytic} vs ${r.numeric}`);
      }
    }),
    { numRuns: 80 },
  );
});

gpuTest("matmul gradients on the GPU equal the f64 CPU gradients", async (g) => {
  await fc.assert(
    fc.asyncProperty(gradCase, async (c) => {
      const { sa, sb } = gradShapes(c, c.layout);
      const da = randomData(size(sa), c.seed), db = randomData(size(sb), c.seed + 1);
      const grads = (b: Backend) =>
        tidy(async () => {
          const x = tensor(b, da, sa), y = tensor(b, db, sb);
          const tape = new Tape().watch(x, y);
          const out = tape.run(() => matmul(x, y, { transA: c.transA, transB: c.transB }));
          const dout = tensor(b, randomData(out.size, c.seed + 2), out.shape);
          const [gx, gy] = tape.backward(out, [x, y], dout);
          return [await gx!.data(), await gy!.data()];
        });
      const [want, got] = [await grads(cpu64), await grads(g)];
      // Each gradient entry sums at most batch * max(M, N) * K <= 6 * 5 products of values in [-1, 1].
      assertClose(got[0], want[0], { atol: 1e-5, rtol: 1e-5 }, `dA ${JSON.stringify(c)}`);
      assertClose(got[1], want[1], { atol: 1e-5, rtol: 1e-5 }, `dB ${JSON.stringify(c)}`);
    }),
    { numRuns: GPU_RUNS },
  );
});

const shapeError = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (e instanceof ShapeError) return e.message;
    throw e;
  }
  throw new Error("expected a ShapeError");
};

Deno.test("matmul: bad shapes throw ShapeError naming the op and both shapes", () => {
  const t = (s: number[]) => tensor(cpu64, new Float64Array(size(s)), s);
  const m1 = shapeError(() => matmul(t([2, 3]), t([4, 5])));
  if (!/^matmul: a has shape \[2,3\], b has shape \[4,5\]; inner dimensions 3 and 4 differ$/.test(m1)) {
    throw new Error(m1);
  }
  const m2 = shapeError(() => matmul(t([2, 3]), t([5, 4]), { transA: true, transB: true }));
  if (!/a has shape \[2,3\], b has shape \[5,4\]; inner dimensions 2 and 4 differ \(transA true/.test(m2)) {
    throw new Error(m2);
  }
  const m3 = shapeError(() => matmul(t([2, 3, 4]), t([3, 4, 5])));
  if (!/matmul: a has shape \[2,3,4\], b has shape \[3,4,5\]; batch dimensions \[2\] and \[3\]/.test(m3)) {
    throw new Error(m3);
  }
  const m4 = shapeError(() => matmul(t([3]), t([3, 4])));
  if (!/matmul: a has shape \[3\]; needs rank >= 2/.test(m4)) throw new Error(m4);
});
