/** Philox4x32-10: Random123 known answers, mulhi exactness, uniform01 range, and GPU bits = CPU bits. */
import fc from "fast-check";
import { mulhi32, philox4x32, rngUniform, seedKey, splitmix32, uniform01 } from "../core/rng.ts";
import { ShapeError } from "../core/errors.ts";
import { philoxBits } from "../kernels/philox_wgsl.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { cpu32 } from "./util.ts";

const hex = (w: readonly number[]) => w.map((x) => x.toString(16).padStart(8, "0")).join(" ");

// Random123 tests/kat_vectors, the three "philox4x32 10" lines (columns: counter[4] key[2] -> output[4]);
// cross-checked against several independent copies of that file found with the code search tool.
const KAT: [number[], [number, number], string][] = [
  [[0, 0, 0, 0], [0, 0], "6627e8d5 e169c58d bc57ac4c 9b00dbd8"],
  [
    [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    [0xffffffff, 0xffffffff],
    "408f276d 41c83b0e a20bc7c6 6d5451fd",
  ],
  [
    [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    [0xa4093822, 0x299f31d0],
    "d16cfe09 94fdcceb 5001e420 24126ea1",
  ],
];

Deno.test("philox4x32-10 equals the Random123 known-answer vectors", () => {
  for (const [ctr, key, want] of KAT) {
    const got = hex(philox4x32(key, ctr));
    if (got !== want) throw new Error(`philox(${hex(ctr)}; ${hex(key)}) = ${got}, expected ${want}`);
  }
});

Deno.test("mulhi32 equals the exact high word of the 64-bit product (BigInt)", () => {
  fc.assert(
    fc.property(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), (a, b) => {
      const want = Number((BigInt(a) * BigInt(b)) >> 32n);
      if (mulhi32(a, b) !== want) throw new Error(`mulhi32(${a}, ${b}) = ${mulhi32(a, b)}, expected ${want}`);
    }),
    { numRuns: 2000 },
  );
  for (const [a, b] of [[0xffffffff, 0xffffffff], [0, 0xffffffff], [0x10000, 0x10000], [0xffff, 0xffff]]) {
    if (mulhi32(a, b) !== Number((BigInt(a) * BigInt(b)) >> 32n)) throw new Error(`mulhi32(${a}, ${b})`);
  }
});

Deno.test("uniform01 is in [0, 1), exact in f32, and hits both ends", () => {
  for (const bits of [0, 1, 255, 256, 0x80000000, 0xffffff00, 0xffffffff]) {
    const u = uniform01(bits);
    if (!(u >= 0 && u < 1) || Math.fround(u) !== u) throw new Error(`uniform01(${bits}) = ${u}`);
  }
  if (uniform01(0xffffffff) !== 1 - 2 ** -24 || uniform01(0xff) !== 0) throw new Error("uniform01 ends");
});

Deno.test("rngUniform: counters give independent-looking uniforms (mean, variance, replay)", () => {
  const n = 20000;
  let s = 0, s2 = 0;
  for (let i = 0; i < n; i++) {
    const u = rngUniform({ seed: 42, step: 3, sequence: i % 7, position: i });
    s += u;
    s2 += u * u;
  }
  // Mean of n uniforms has sd 1/sqrt(12 n) = 0.002; 5 sd = 0.01. Variance 1/12 within 0.005 likewise.
  if (Math.abs(s / n - 0.5) > 0.01) throw new Error(`mean ${s / n}`);
  if (Math.abs(s2 / n - (s / n) ** 2 - 1 / 12) > 0.005) throw new Error(`variance ${s2 / n - (s / n) ** 2}`);
  const k = { seed: 2 ** 40 + 5, step: 1, sequence: 2, position: 3 };
  if (rngUniform(k) !== rngUniform({ ...k })) throw new Error("replay differs");
  if (rngUniform(k) === rngUniform({ ...k, seed: 5 })) throw new Error("high seed word ignored");
  if (hex(seedKey(2 ** 40 + 5)) !== "00000005 00000100") {
    throw new Error(`seedKey ${hex(seedKey(2 ** 40 + 5))}`);
  }
});

Deno.test("splitmix32 is deterministic and spreads nearby seeds", () => {
  const a = splitmix32(1), b = splitmix32(1), c = splitmix32(2);
  const xa = [a(), a(), a()], xb = [b(), b(), b()], xc = [c(), c(), c()];
  if (hex(xa) !== hex(xb) || hex(xa) === hex(xc)) throw new Error(`${hex(xa)} / ${hex(xb)} / ${hex(xc)}`);
});

const runPhilox = (b: typeof cpu32 | Parameters<Parameters<typeof gpuTest>[1]>[0], rows: Uint32Array) =>
  tidy(() => philoxBits(tensor(b, rows, [rows.length / 6, 6], "u32")).data());

gpuTest("philox WGSL: GPU bits equal CPU bits for random keys and counters (and the KAT)", async (g) => {
  const kat = new Uint32Array(KAT.flatMap(([c, k]) => [...c, ...k]));
  const got = await runPhilox(g, kat);
  KAT.forEach(([, , want], r) => {
    const w = hex(Array.from(got.subarray(4 * r, 4 * r + 4)));
    if (w !== want) throw new Error(`GPU KAT row ${r}: ${w}, expected ${want}`);
  });
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 300 }), fc.nat(), async (n, seed) => {
      const next = splitmix32(seed);
      const rows = Uint32Array.from({ length: 6 * n }, next);
      const [gb, cb] = [await runPhilox(g, rows), await runPhilox(cpu32, rows)];
      for (let i = 0; i < gb.length; i++) {
        if (gb[i] !== cb[i]) throw new Error(`row ${i >> 2} word ${i & 3}: GPU ${gb[i]}, CPU ${cb[i]}`);
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("philoxBits rejects a non-[R,6] u32 input with a ShapeError naming the shape", () => {
  let err: unknown;
  try {
    philoxBits(tensor(cpu32, [1, 2, 3, 4, 5], [5], "u32"));
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ShapeError) || !/philox: input has shape \[5\]/.test(err.message)) {
    throw new Error(`got ${err}`);
  }
});
