/** Streaming readout kernels (fold, finish, grad): both GPU variants equal the CPU reference, chunk by chunk. */
import fc from "fast-check";

import { NEG_BIG, readoutFinish, readoutFold, readoutGrad } from "../kernels/readout.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import type { Backend } from "../engine/backend.ts";
import { GPU_RUNS, gpuTest, hwGpu } from "./gpu_util.ts";
import { assertClose, cpu32, randomData } from "./util.ts";

const hw = hwGpu;

/** Shared random inputs of one case: logits (R, V), target ids, the two gradient coefficient vectors. */
const caseData = (R: number, V: number, seed: number) => ({
  z: randomData(R * V, seed, 4),
  ids: Int32Array.from({ length: R }, (_, i) => (i * 7 + seed) % V),
  a: randomData(R, seed + 1),
  b: randomData(R, seed + 2),
});

/** Columns [start, start + C) of (R, V) logits, zero past V. */
const chunkOf = (b: Backend, z: Float32Array, R: number, V: number, C: number, start: number) => {
  const c = new Float32Array(R * C);
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < C && start + j < V; j++) c[i * C + j] = z[i * V + start + j];
  }
  return tensor(b, c, [R, C]);
};

/** readoutGrad of chunk 0 given a finished state `fin` (R, 3). */
const gradOn = (
  b: Backend,
  R: number,
  V: number,
  C: number,
  T: number,
  seed: number,
  fin: ArrayLike<number>,
) =>
  tidy(() => {
    const d = caseData(R, V, seed);
    return apply1(readoutGrad, { start: 0, vocab: V, temperature: T }, [
      chunkOf(b, d.z, R, V, C, 0),
      tensor(b, d.ids, [R], "i32"),
      tensor(b, Float32Array.from(fin), [R, 3]),
      tensor(b, d.a, [R]),
      tensor(b, d.b, [R]),
    ]).data();
  });

/** Fold every chunk of a (R, V) logits matrix, then finish and take the gradient of chunk 0. */
const run = (b: Backend, R: number, V: number, C: number, T: number, seed: number) =>
  tidy(async () => {
    const d = caseData(R, V, seed);
    const targets = tensor(b, d.ids, [R], "i32");
    const state = tensor(b, new Float32Array(4 * R).map((_, i) => (i % 4 === 0 ? NEG_BIG : 0)), [R, 4]);
    for (let start = 0; start < V; start += C) {
      apply(readoutFold, { start, vocab: V, temperature: T }, [
        state,
        chunkOf(b, d.z, R, V, C, start),
        targets,
      ]);
    }
    const [fin, ent, lp] = apply(readoutFinish, {}, [state]);
    const finData = await fin.data();
    return {
      fin: finData,
      ent: await ent.data(),
      lp: await lp.data(),
      dz: await gradOn(b, R, V, C, T, seed, finData),
    };
  });

gpuTest("readout fold/finish/grad: software and hardware variants equal the CPU reference", async (g) => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(1, 7, 33, 70),
      fc.integer({ min: 1, max: 300 }),
      fc.constantFrom(64, 128),
      fc.constantFrom(1, 0.7),
      fc.nat(),
      async (R, V, C, T, seed) => {
        const ref = await run(cpu32, R, V, C, T, seed);
        for (const be of [g, hw!]) {
          const got = await run(be, R, V, C, T, seed);
          const name = be.target.software ? "sw" : "hw";
          // f32 online log-sum-exp over <= 300 terms in a different order: a few ulps of values of size ~log V.
          assertClose(got.fin, ref.fin, { atol: 2e-5, rtol: 2e-5 }, `state (${name})`);
          assertClose(got.ent, ref.ent, { atol: 2e-5, rtol: 2e-5 }, `entropy (${name})`);
          assertClose(got.lp, ref.lp, { atol: 2e-5, rtol: 2e-5 }, `logp (${name})`);
          // The entropy gradient holds p (log p + H), a cancelling difference: the state's accepted few-ulp
          // differences would come back amplified, so the gradient kernel is checked on the backend's own state.
          const want = await gradOn(cpu32, R, V, C, T, seed, got.fin);
          assertClose(got.dz, want, { atol: 2e-6, rtol: 1e-4 }, `dz (${name})`);
        }
      },
    ),
    { numRuns: Math.max(4, GPU_RUNS / 2) }, // each new (R, C) compiles 6 pipelines on llvmpipe
  );
});

gpuTest("streamed top-k: ids and log-probs equal a full sort of log-softmax (GPU and CPU)", async (g) => {
  const { streamReadout } = await import("../policies/readout.ts");
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(1, 5, 33),
      fc.integer({ min: 20, max: 300 }),
      fc.constantFrom(1, 4, 16),
      fc.nat(),
      async (R, V, k, seed) => {
        const d = 8;
        const x = randomData(R * d, seed, 2), E = randomData(V * d, seed + 1, 2);
        // Duplicate a row of E so two ids tie exactly: the lower id must come first.
        E.copyWithin(d * (V - 1), d * 3, d * 4);
        const run = (b: Backend) =>
          tidy(async () => {
            const r = streamReadout(
              tensor(b, x, [R, d]),
              tensor(b, E, [V, d]),
              tensor(b, new Int32Array(R), [R], "i32"),
              {
                chunk: 64,
                topK: k,
              },
            );
            return { ids: await r.top!.ids.data(), lp: await r.top!.logp.data() };
          });
        const kk = Math.min(k, V);
        for (const b of [g, cpu32]) {
          const got = await run(b);
          for (let i = 0; i < R; i++) {
            const z = Array.from({ length: V }, (_, v) => {
              let s = 0;
              for (let j = 0; j < d; j++) s += Math.fround(x[i * d + j]) * Math.fround(E[v * d + j]);
              return s;
            });
            const m = Math.max(...z), lse = m + Math.log(z.reduce((a, zv) => a + Math.exp(zv - m), 0));
            const order = z.map((zv, v) => [zv, v] as const).sort((p, q) => q[0] - p[0] || p[1] - q[1]);
            for (let j = 0; j < kk; j++) {
              const [zv, v] = order[j];
              const gotId = got.ids[i * k + j], gotLp = got.lp[i * k + j];
              // f32 logits: ids may swap only where two logits are within 1e-5 of each other.
              if (gotId !== v && Math.abs(z[gotId] - zv) > 1e-5) {
                throw new Error(`row ${i} rank ${j}: id ${gotId}, expected ${v}`);
              }
              if (Math.abs(gotLp - (zv - lse)) > 1e-4) {
                throw new Error(`row ${i} rank ${j}: logp ${gotLp}, expected ${zv - lse}`);
              }
            }
          }
        }
      },
    ),
    { numRuns: Math.max(3, GPU_RUNS / 3) },
  );
});
