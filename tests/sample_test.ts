/** Sampling: GPU token = CPU token (away from CDF boundaries), frequencies, greedy, top-k/top-p sets, replay. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { rngUniform, splitmix32 } from "../core/rng.ts";
import type { Backend } from "../engine/backend.ts";
import {
  pickToken,
  rowDistribution,
  sample,
  sampleKernel,
  type SampleOptions,
  sampleWorkgroup,
} from "../kernels/sample.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest, softwareTarget } from "./gpu_util.ts";
import { awkwardDim, cpu32, cpu64, throwsShape } from "./util.ts";

type Opts = Omit<SampleOptions, "sequences" | "positions">;

/** Sample R rows on backend b; row n uses sequence seqs[n] and position pos[n]. */
const draw = (
  b: Backend,
  logits: Float32Array,
  R: number,
  V: number,
  o: Opts,
  seqs: number[],
  pos: number[],
) =>
  tidy(async () =>
    Array.from(
      await sample(tensor(b, logits, [R, V]), {
        ...o,
        sequences: tensor(b, seqs, [R], "i32"),
        positions: tensor(b, pos, [R], "i32"),
      }).data(),
    )
  );

/** Random logits; `ties` quantizes them to multiples of 1/4 so that equal logits are common. */
const makeLogits = (n: number, seed: number, spread: number, ties: boolean): Float32Array => {
  const r = splitmix32(seed);
  return Float32Array.from({ length: n }, () => {
    const x = (r() / 2 ** 32 * 2 - 1) * spread;
    return ties ? Math.round(x * 4) / 4 : x;
  });
};

/** Relative closeness, in units of total mass, that f32 masses (GPU) may shift a CDF boundary or top-p cut. */
const BOUNDARY = 1e-4;

/** Why GPU and CPU may legitimately differ on a row: u within BOUNDARY of a CDF step, or a near-tie top-p cut. */
const nearBoundary = (row: Float32Array, o: Opts, u: number): boolean => {
  const d = rowDistribution(row, { temperature: o.temperature, topK: o.topK ?? 0, topP: o.topP ?? 1 });
  if (d.topPMargin < BOUNDARY) return true;
  let cum = 0;
  for (let i = 0; i < d.weights.length; i++) {
    cum += d.weights[i];
    if (d.weights[i] > 0 && Math.abs(cum / d.total - u) < BOUNDARY) return true;
  }
  return false;
};

const compare = async (g: Backend, R: number, V: number, o: Opts, logits: Float32Array, seed: number) => {
  const seqs = Array.from({ length: R }, (_, n) => n + seed % 1000), pos = seqs.map((s) => 3 * s + 1);
  const a = await draw(g, logits, R, V, o, seqs, pos);
  const e = await draw(cpu32, logits, R, V, o, seqs, pos);
  let exceptions = 0;
  for (let n = 0; n < R; n++) {
    if (a[n] === e[n]) continue;
    const u = rngUniform({ seed: o.key.seed, step: o.key.step, sequence: seqs[n], position: pos[n] });
    const row = logits.subarray(n * V, (n + 1) * V);
    if (!nearBoundary(row, o, u)) {
      throw new Error(
        `row ${n}: GPU ${a[n]} (logit ${row[a[n]]}), CPU ${e[n]} (logit ${row[e[n]]}), u=${u}, ` +
          `R=${R} V=${V} ${JSON.stringify(o)}`,
      );
    }
    exceptions++;
  }
  return exceptions;
};

const optsArb = fc.record({
  temperature: fc.constantFrom(0, 0.3, 1, 1.7),
  topK: fc.constantFrom(0, 1, 2, 5, 40, 100000),
  topP: fc.constantFrom(1, 0.95, 0.6, 0.1),
  key: fc.record({ seed: fc.nat(), step: fc.nat({ max: 1000 }) }),
});

gpuTest(
  "sample: GPU token equals CPU token except within 1e-4 of a CDF boundary (random V, k, p, T)",
  async (g) => {
    let exceptions = 0, rows = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 6 }),
        fc.oneof(awkwardDim(300), fc.integer({ min: 257, max: 5000 })),
        optsArb,
        fc.boolean(),
        fc.constantFrom(1, 4, 12),
        async (R, V, o, ties, spread) => {
          exceptions += await compare(g, R, V, o, makeLogits(R * V, o.key.seed, spread, ties), o.key.seed);
          rows += R;
        },
      ),
      { numRuns: GPU_RUNS * 3 },
    );
    // Exceptions need u within 1e-4 of a step: expected ~ rows * (kept tokens) * 2e-4, a handful at most.
    if (Deno.env.get("BUPO_VERBOSE")) console.log(`${exceptions} boundary exceptions in ${rows} rows`);
    if (exceptions > Math.max(2, rows / 20)) {
      throw new Error(
        `${exceptions} boundary exceptions in ${rows} rows`,
      );
    }
  },
);

gpuTest(
  "sample: a 151936-token vocabulary (top-k 50 / top-p 0.9 / both / neither) matches the CPU",
  async (g) => {
    const V = 151936, R = 2;
    const logits = makeLogits(R * V, 5, 10, false);
    for (const [topK, topP] of [[50, 1], [0, 0.9], [50, 0.9], [0, 1]]) {
      await compare(g, R, V, { temperature: 0.8, topK, topP, key: { seed: 9, step: topK } }, logits, 17);
    }
  },
);

gpuTest(
  "sample: V = 262,144 with top-k and top-p (~70 passes over V: past llvmpipe's loop budget unless unrolled)",
  async (g) => {
    const V = 262144, R = 2;
    const logits = makeLogits(R * V, 6, 10, false);
    // A top-k set past the median key makes every top-p bisection round scan the row (64 scans in all).
    await compare(
      g,
      R,
      V,
      { temperature: 0.8, topK: 200000, topP: 0.9, key: { seed: 4, step: 1 } },
      logits,
      23,
    );
  },
);

gpuTest(
  "sample: empirical frequencies match the probabilities (chi-square, df = kept - 1, p = 0.001)",
  async (g) => {
    const V = 12, R = 2500;
    const base = makeLogits(V, 3, 2, false);
    const logits = new Float32Array(R * V);
    for (let n = 0; n < R; n++) logits.set(base, n * V);
    const seqs = Array.from({ length: R }, (_, n) => n), pos = seqs.map(() => 7);
    // Chi-square critical values at p = 0.001 for df = 1..11 (tables); deterministic seeds, so no flakiness.
    const crit = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26];
    for (const o of [{ temperature: 0.8 }, { temperature: 1.3, topK: 5 }, { temperature: 1, topP: 0.8 }]) {
      const opts = { topK: 0, topP: 1, ...o, key: { seed: 123, step: 4 } };
      const d = rowDistribution(base, opts);
      for (const b of [g, cpu32]) {
        const ids = await draw(b, logits, R, V, opts, seqs, pos);
        const counts = new Array(V).fill(0);
        for (const id of ids) counts[id]++;
        let chi2 = 0, kept = 0;
        for (let i = 0; i < V; i++) {
          if (d.weights[i] === 0) {
            if (counts[i] !== 0) throw new Error(`${b.name}: dropped token ${i} drawn ${counts[i]} times`);
            continue;
          }
          kept++;
          const expct = R * d.weights[i] / d.total;
          chi2 += (counts[i] - expct) ** 2 / expct;
        }
        if (kept > 1 && chi2 > crit[kept - 2]) {
          throw new Error(
            `${b.name} ${JSON.stringify(o)}: chi2 ${chi2} > ${crit[kept - 2]} (df ${kept - 1})`,
          );
        }
      }
    }
  },
);

gpuTest("sample: temperature 0 and top-k 1 are the argmax, lowest id among equal maxima", async (g) => {
  const V = 1000, R = 5;
  const logits = makeLogits(R * V, 11, 3, true);
  logits[2 * V + 999] = 50; // a unique max at the end of row 2
  logits[3 * V + 10] = logits[3 * V + 500] = 50; // a tie in row 3: id 10 wins
  logits[4 * V + 0] = -0; // -0 and +0 are equal logits
  const want = Array.from({ length: R }, (_, n) => {
    const row = logits.subarray(n * V, (n + 1) * V);
    return row.indexOf(Math.max(...row));
  });
  const seqs = [0, 1, 2, 3, 4];
  for (const b of [g, cpu32, cpu64]) {
    for (
      const o of [{ temperature: 0 }, { temperature: 1, topK: 1 }, { temperature: 0.5, topK: 1, topP: 0.3 }]
    ) {
      const got = await draw(b, logits, R, V, { ...o, key: { seed: 1, step: 2 } }, seqs, seqs);
      if (got.join() !== want.join()) {
        throw new Error(`${b.name} ${JSON.stringify(o)}: ${got} != argmax ${want}`);
      }
    }
  }
});

gpuTest("sample: top-k and top-p keep exactly the documented sets (ties by lower id)", async (g) => {
  const R = 300;
  const cases: { row: number[]; o: Omit<Opts, "key">; kept: number[] }[] = [
    // probabilities 0.1 0.4 0.2 0.3: top-p 0.65 keeps the prefix 0.4 + 0.3 = 0.7 >= 0.65
    { row: [0.1, 0.4, 0.2, 0.3].map(Math.log), o: { temperature: 1, topP: 0.65 }, kept: [1, 3] },
    { row: [0.1, 0.4, 0.2, 0.3].map(Math.log), o: { temperature: 1, topP: 0.75 }, kept: [1, 2, 3] },
    { row: [0.1, 0.4, 0.2, 0.3].map(Math.log), o: { temperature: 1, topP: 0.3 }, kept: [1] },
    // masses 1 1 1 1 e^-1 (S = 4.37): p = 0.5 needs 2.18 -> three of the tied tokens, lowest ids first
    { row: [1, 1, 1, 1, 0], o: { temperature: 1, topP: 0.5 }, kept: [0, 1, 2] },
    { row: [0, 1, 1, 1, 1], o: { temperature: 1, topP: 0.5 }, kept: [1, 2, 3] },
    // top-k 2 among a three-way tie: the two lowest ids
    { row: [0, 2, 2, 2, 1], o: { temperature: 1, topK: 2 }, kept: [1, 2] },
    // top-k 3 then top-p: within {1,2,3} (equal masses) p = 0.5 keeps two of them
    { row: [0, 2, 2, 2, 1], o: { temperature: 1, topK: 3, topP: 0.5 }, kept: [1, 2] },
    { row: [0, 2, 2, 2, 1], o: { temperature: 1, topK: 4 }, kept: [1, 2, 3, 4] },
    // -inf logits (masked tokens) have mass 0 and are never drawn
    { row: [-Infinity, 0, -Infinity, 1], o: { temperature: 1 }, kept: [1, 3] },
    { row: [-Infinity, 0, -Infinity, 1], o: { temperature: 2, topK: 3, topP: 0.9 }, kept: [1, 3] },
  ];
  for (const { row, o, kept } of cases) {
    const V = row.length;
    const logits = new Float32Array(R * V);
    for (let n = 0; n < R; n++) logits.set(row, n * V);
    const seqs = Array.from({ length: R }, (_, n) => n);
    const opts = { ...o, key: { seed: 77, step: 1 } };
    const ref = rowDistribution(Float32Array.from(row), { topK: 0, topP: 1, ...o });
    const refKept = [...ref.weights.keys()].filter((i) => ref.weights[i] > 0);
    if (refKept.join() !== kept.join()) throw new Error(`reference keeps ${refKept}, documented ${kept}`);
    for (const b of [g, cpu32, cpu64]) {
      const seen = [...new Set(await draw(b, logits, R, V, opts, seqs, seqs))].sort((x, y) => x - y);
      if (seen.join() !== kept.join()) {
        throw new Error(`${b.name} ${JSON.stringify(o)} drew ${seen}, kept ${kept}`);
      }
    }
  }
});

gpuTest("sample: replay — the same key gives the same ids; another step or seed gives others", async (g) => {
  const R = 64, V = 333;
  const logits = makeLogits(R * V, 21, 1, false);
  const seqs = Array.from({ length: R }, (_, n) => n), pos = seqs.map((s) => s + 100);
  const o = { temperature: 1, topK: 100, topP: 0.95, key: { seed: 2 ** 40 + 1, step: 5 } };
  const a = await draw(g, logits, R, V, o, seqs, pos), b = await draw(g, logits, R, V, o, seqs, pos);
  if (a.join() !== b.join()) throw new Error("GPU replay differs");
  const c = await draw(g, logits, R, V, { ...o, key: { ...o.key, step: 6 } }, seqs, pos);
  const d = await draw(g, logits, R, V, { ...o, key: { ...o.key, seed: 1 } }, seqs, pos);
  const same = (x: number[], y: number[]) => x.filter((v, i) => v === y[i]).length;
  // Flat-ish distributions over ~100 tokens: two independent draws agree with chance ~1/100 per row.
  if (same(a, c) > R / 4 || same(a, d) > R / 4) throw new Error(`step/seed barely change the ids`);
});

Deno.test("pickToken: first token whose cumulative weight exceeds u * total; skips zero weights", () => {
  const w = [0, 1, 0, 2, 1];
  const cases: [number, number][] = [[0, 1], [0.2499, 1], [0.25, 3], [0.7499, 3], [0.75, 4], [0.99, 4]];
  for (const [u, want] of cases) if (pickToken(w, u) !== want) throw new Error(`u=${u}: ${pickToken(w, u)}`);
});

Deno.test("sample: bad shapes and settings throw ShapeError naming the op and the shapes", () => {
  const b = cpu32;
  const l = tensor(b, new Float32Array(6), [2, 3]);
  const s2 = tensor(b, [0, 1], [2], "i32"), s3 = tensor(b, [0, 1, 2], [3], "i32");
  const key = { seed: 1, step: 0 };
  throwsShape(
    () => sample(l, { temperature: 1, key, sequences: s3, positions: s2 }),
    /sample: sequences has shape \[3\] dtype i32; expected i32 \[2\] for logits \[2,3\]/,
  );
  throwsShape(
    () => sample(tensor(b, new Float32Array(3), [3]), { temperature: 1, key, sequences: s2, positions: s2 }),
    /sample: logits has shape \[3\]/,
  );
  throwsShape(
    () => sample(l, { temperature: -1, key, sequences: s2, positions: s2 }),
    /sample: temperature -1/,
  );
  throwsShape(
    () => sample(l, { temperature: 1, topP: 0, key, sequences: s2, positions: s2 }),
    /sample: topP 0/,
  );
  throwsShape(
    () => sample(l, { temperature: 1, topK: 1.5, key, sequences: s2, positions: s2 }),
    /sample: topK 1.5/,
  );
});

Deno.test("sample: the workgroup is the smallest power of two >= V, within [16, 256]", () => {
  const cases: [number, number][] = [
    [1, 16],
    [12, 16],
    [16, 16],
    [17, 32],
    [19, 32],
    [200, 256],
    [256, 256],
    [
      257,
      256,
    ],
    [151936, 256],
  ];
  for (const [V, want] of cases) {
    const got = sampleWorkgroup(V);
    if (got !== want) throw new Error(`sampleWorkgroup(${V}) = ${got}, expected ${want}`);
    const steps = sampleKernel.gpu(
      { temperature: 1, topK: 0, topP: 1, seed: 1, step: 0 },
      [{ shape: [2, V], dtype: "f32" }, { shape: [2], dtype: "i32" }, { shape: [2], dtype: "i32" }],
      softwareTarget(),
    );
    const pass = steps[0];
    if (!("wgsl" in pass) || !pass.wgsl.includes(`@workgroup_size(${want})`)) {
      throw new Error(`V = ${V}: expected @workgroup_size(${want})`);
    }
  }
});

gpuTest(
  "sample with vocab < V: ids past it are never drawn (greedy too), GPU = CPU on the first vocab columns",
  async (g) => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 300 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 7 }),
        fc.constantFrom(0, 0.7, 1),
        fc.integer({ min: 0, max: 1e6 }),
        async (vocab, gap, R, temperature, seed) => {
          const V = vocab + gap;
          const logits = makeLogits(R * V, seed, 4, false);
          // The ids of the gap carry the largest logits: without the mask they would win every draw.
          for (let n = 0; n < R; n++) for (let i = vocab; i < V; i++) logits[n * V + i] = 50;
          const seqs = Array.from({ length: R }, (_, n) => n), pos = seqs.map((n) => 3 * n);
          const o: Opts = { temperature, key: { seed, step: 5 }, vocab };
          const [got, want] = await Promise.all([
            draw(g, logits, R, V, o, seqs, pos),
            draw(cpu32, logits, R, V, o, seqs, pos),
          ]);
          for (let n = 0; n < R; n++) {
            if (got[n] >= vocab || want[n] >= vocab) throw new Error(`row ${n}: id past vocab ${vocab}`);
            const row = logits.slice(n * V, n * V + vocab);
            const u = rngUniform({ seed, step: 5, sequence: seqs[n], position: pos[n] });
            if (got[n] !== want[n] && !nearBoundary(row, o, u)) {
              throw new Error(`row ${n}: GPU ${got[n]} CPU ${want[n]} (V ${V}, vocab ${vocab})`);
            }
          }
        },
      ),
      { numRuns: GPU_RUNS },
    );
    const bad = () =>
      tidy(() =>
        sample(tensor(cpu32, [1, 2, 3], [1, 3]), {
          temperature: 1,
          key: { seed: 1, step: 1 },
          vocab: 4,
          sequences: tensor(cpu32, [0], [1], "i32"),
          positions: tensor(cpu32, [0], [1], "i32"),
        })
      );
    let threw = false;
    try {
      bad();
    } catch (e) {
      threw = e instanceof ShapeError && /vocab 4/.test(e.message);
    }
    if (!threw) throw new Error("vocab past the row must be a ShapeError naming it");
  },
);
