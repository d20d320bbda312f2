/** KV cache: decode attention = reference = causal attention, decodeStep = forward's column, cached = uncached ids. */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import { attention } from "../kernels/attention.ts";
import type { Backend } from "../engine/backend.ts";
import { column } from "../kernels/decode.ts";
import { decodeAttention, decodeChunk, idsColumn, kvWrite } from "../kernels/kvcache.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { type DecoderConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import { generate, type GenerateOptions, type Rollout } from "../policies/generate.ts";
import { decodeStep, forward, kvCache, unembedding } from "../policies/model.ts";
import { type Params, paramsFromHost } from "../policies/params.ts";
import { unembed } from "../policies/readout.ts";
import { GPU_RUNS, gpuProperty, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

// ---- decodeAttention --------------------------------------------------------------------------------------

interface Case {
  b: number;
  tlen: number;
  t: number;
  hq: number;
  hkv: number;
  d: number;
  chunk?: number;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/** B 1-5, T 1-40, Hkv 1-3 with G = Hq / Hkv in 1-4, awkward D; t = 0, T - 1 or any; sometimes forced chunks. */
const caseArb = (maxT = 40): fc.Arbitrary<Case> =>
  fc.record({
    b: awkwardDim(5),
    tlen: awkwardDim(maxT),
    hkv: fc.integer({ min: 1, max: 3 }),
    g: fc.integer({ min: 1, max: 4 }),
    d: fc.oneof(awkwardDim(33), fc.constantFrom(16, 64)),
    where: fc.constantFrom("first", "last", "any"),
    pick: fc.nat(),
    split: fc.boolean(),
    seed: fc.nat(),
  }).map(({ b, tlen, hkv, g, d, where, pick, split, seed }) => {
    const hq = g * hkv;
    const t = where === "first" ? 0 : where === "last" ? tlen - 1 : pick % tlen;
    const cache = b * tlen * hkv * d;
    return {
      b,
      tlen,
      t,
      hq,
      hkv,
      d,
      chunk: split ? 1 + (pick % tlen) : undefined,
      q: randomData(b * hq * d, seed, 2),
      k: randomData(cache, seed + 1, 2),
      v: randomData(cache, seed + 2),
    };
  });

/** Columns past t filled with NaN: a kernel that reads them (it must not) returns NaN. */
const poisoned = (c: Case, x: Float32Array): Float32Array => {
  const y = x.slice(), row = c.hkv * c.d;
  for (let b = 0; b < c.b; b++) y.fill(NaN, (b * c.tlen + c.t + 1) * row, (b + 1) * c.tlen * row);
  return y;
};

const decode = (be: Backend, c: Case, poison = false): Promise<ArrayLike<number>> =>
  tidy(() => {
    const kv = [c.k, c.v].map((x) => tensor(be, poison ? poisoned(c, x) : x, [c.b, c.tlen, c.hkv, c.d]));
    const q = tensor(be, c.q, [c.b, 1, c.hq, c.d]);
    return decodeAttention(q, kv[0], kv[1], c.t, { chunk: c.chunk }).data();
  });

// GPU f32 against the reference on the same f32 inputs, accumulated in f64. Scores reach |scale q.k| <= 4 sqrt(D)
// (q, k in [-2, 2]); the online softmax rescales in f32 and sums at most 40 keys of f32 exp, outputs are convex
// combinations of v in [-1, 1]: a few ulps. Measured max |error| 3.8e-7 over 60 cases; 5e-6 + 1e-5 relative.
const TOL = { atol: 5e-6, rtol: 1e-5 };

gpuProperty(
  "decodeAttention: GPU equals the CPU reference (GQA, t = 0 and T - 1, split chunks, poisoned tail)",
  caseArb(),
  GPU_RUNS * 3,
  async (g, c) => {
    assertClose(
      await decode(g, c, true),
      await decode(cpu32, c),
      TOL,
      `decodeAttention ${JSON.stringify({ ...c, q: 0, k: 0, v: 0 })}`,
    );
  },
);

Deno.test("decodeAttention: the reference equals causal attention of one query at offset t (cpu64)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb(20), async (c) => {
      const want = await tidy(() => {
        const kv = [c.k, c.v].map((x) => tensor(cpu64, x, [c.b, c.tlen, c.hkv, c.d]));
        return attention(tensor(cpu64, c.q, [c.b, 1, c.hq, c.d]), kv[0], kv[1], { offset: c.t }).data();
      });
      // Both are f64 sums of the same terms in different orders: 1e-12.
      assertClose(await decode(cpu64, c), want, { atol: 1e-12, rtol: 1e-12 }, "decode vs attention");
    }),
    { numRuns: 40 },
  );
});

gpuTest(
  "decodeAttention: long caches at the loop budget (one full chunk; several default chunks)",
  async (g) => {
    // D = 64: one chunk of decodeChunk(64) keys visited whole (the single-pass loop at its budget); D = 128 and
    // T = 600 > decodeChunk(128): the default split into chunks plus the combine pass. llvmpipe silently truncates
    // loops past its budget, which would show here as a wrong result.
    for (const [d, tlen] of [[64, decodeChunk(64)], [128, 600]]) {
      const c: Case = {
        b: 1,
        tlen,
        t: tlen - 1,
        hq: 2,
        hkv: 1,
        d,
        q: randomData(2 * d, 7, 2),
        k: randomData(tlen * d, 8, 2),
        v: randomData(tlen * d, 9),
      };
      // Up to 600 keys summed in f32 (chunk partials combined in f32): the same few-ulp error on outputs ~0.1.
      assertClose(await decode(g, c), await decode(cpu32, c), TOL, `decodeAttention D ${d} T ${tlen}`);
    }
  },
);

gpuTest("kvWrite and idsColumn: GPU equals CPU exactly", async (g) => {
  const run = async (be: Backend, t: number, n: number) =>
    await tidy(async () => {
      const kc = tensor(be, randomData(2 * 6 * 3 * 5, 1), [2, 6, 3, 5]);
      const vc = tensor(be, randomData(2 * 6 * 3 * 5, 2), [2, 6, 3, 5]);
      kvWrite(
        kc,
        vc,
        tensor(be, randomData(2 * n * 15, 3), [2, n, 3, 5]),
        tensor(be, randomData(2 * n * 15, 4), [2, n, 3, 5]),
        t,
      );
      const ids = tensor(be, Int32Array.from({ length: 12 }, (_, i) => i * 7), [3, 4], "i32");
      return [...await kc.data(), ...await vc.data(), ...await idsColumn(ids, t % 4).data()];
    });
  for (const [t, n] of [[0, 1], [5, 1], [2, 3], [0, 6]]) {
    assertClose(await run(g, t, n), await run(cpu32, t, n), { atol: 0, rtol: 0 }, `kvWrite t ${t} n ${n}`);
  }
});

// ---- decodeStep -------------------------------------------------------------------------------------------

/** Random parameters for every spec (biases and norm scales included, so those paths are exercised). */
const randomParams = (be: Backend, c: DecoderConfig, seed: number): Params => {
  const specs = paramSpecs(c);
  const host = new Map(specs.map((s, i) => {
    const x = randomData(size(s.shape), seed + i, s.init === "normal" ? 0.4 : 0.3);
    return [s.name, { data: s.init === "ones" ? x.map((v) => 1 + v) : x, shape: s.shape }];
  }));
  return paramsFromHost(be, specs, (n) => host.get(n));
};

const configs: DecoderConfig[] = [
  tinyConfig({ vocabSize: 19, numLayers: 2 }), // Qwen3: per-head q/k RMSNorm, GQA 2
  tinyConfig({ architecture: "Qwen2ForCausalLM", qkNorm: false, qkvBias: true, numKvHeads: 1, headDim: 6 }),
  tinyConfig({ architecture: "LlamaForCausalLM", qkNorm: false, numHeads: 3, numKvHeads: 3, hiddenSize: 24 }),
];

/** forward's final column t and decodeStep's state at t, for every t, decoding from an empty cache. */
const stepVsForward = async (be: Backend, c: DecoderConfig, B: number, T: number, seed: number) => {
  const p = randomParams(be, c, seed);
  const idsHost = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + seed) % c.vocabSize);
  const kv = kvCache(c, be, B, T);
  try {
    const ids = tensor(be, idsHost, [B, T], "i32");
    const f = forward(c, p, ids, tensor(be, Int32Array.from({ length: T }, (_, i) => i), [T], "i32"));
    for (let t = 0; t < T; t++) {
      const [got, want] = await tidy(() =>
        Promise.all([decodeStep(c, p, kv, idsColumn(ids, t), t).data(), column(f.final, t).data()])
      );
      const tol = be === cpu64 ? { atol: 1e-10, rtol: 1e-10 } : { atol: 1e-5, rtol: 1e-5 };
      assertClose(got, want, tol, `${c.architecture} decodeStep t ${t}`);
    }
  } finally {
    kv.dispose();
    p.dispose();
  }
};

Deno.test("decodeStep: the state at every position equals forward's column (cpu64, three architectures)", async () => {
  // Same f64 arithmetic in another order (matmul over B rows vs B T rows, attention over a cache): 1e-10.
  for (const [i, c] of configs.entries()) await tidy(() => stepVsForward(cpu64, c, 3, 9, 10 + i));
});

gpuTest(
  "decodeStep: the state at every position equals forward's column (GPU, three architectures)",
  async (g) => {
    // f32 through two layers to the final RMSNorm (outputs |x| <= 3.5): the two paths sum in other orders (matmul
    // over B rows vs B T rows, cache attention vs causal attention). Measured max |error| 2e-6; 1e-5 + 1e-5 relative.
    for (const [i, c] of configs.entries()) await tidy(() => stepVsForward(g, c, 5, 11, 20 + i));
  },
);

// ---- generate ---------------------------------------------------------------------------------------------

const genConfig = tinyConfig({ vocabSize: 24, numLayers: 2 });
const prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 3], [1, 4, 4, 4, 4, 4], [1, 8, 8]];
const opts = (seed: number, cache: boolean): GenerateOptions => ({
  maxNew: 12,
  eos: 2,
  pad: 0,
  temperature: 1,
  seed,
  step: 3,
  cache,
  checkEvery: 4,
});

const rolls = async (be: Backend, seed: number): Promise<[Rollout, Rollout]> => {
  const p = randomParams(be, genConfig, 40);
  try {
    return [
      await generate(genConfig, p, prompts, opts(seed, true)),
      await generate(genConfig, p, prompts, opts(seed, false)),
    ];
  } finally {
    p.dispose();
  }
};

Deno.test("generate: cached ids equal uncached ids exactly on cpu64 (fixed seeds)", async () => {
  // In f64 the two paths' logits differ by ~1e-15; a flip would need a Philox draw that close to a CDF boundary.
  for (const seed of [1, 2, 3]) {
    const [a, b] = await rolls(cpu64, seed);
    if (a.ids.join() !== b.ids.join()) throw new Error(`seed ${seed}\ncached   ${a.ids}\nuncached ${b.ids}`);
    if (a.responseLens.join() !== b.responseLens.join() || a.finished.join() !== b.finished.join()) {
      throw new Error(`seed ${seed}: lengths or finished flags differ`);
    }
  }
});

/** Logits (V) of row b predicting column t, from the full forward and from decode steps over ids. */
const logitsBoth = async (be: Backend, ids: Int32Array, B: number, T: number, b: number, t: number) => {
  const p = randomParams(be, genConfig, 40);
  const kv = kvCache(genConfig, be, B, T);
  try {
    return await tidy(async () => {
      const x = tensor(be, ids, [B, T], "i32");
      const E = unembedding(genConfig, p);
      const f = forward(genConfig, p, x, tensor(be, Int32Array.from({ length: T }, (_, i) => i), [T], "i32"));
      const full = await unembed(column(f.final, t - 1), E).data();
      let h!: Tensor;
      for (let s = 0; s < t; s++) h = decodeStep(genConfig, p, kv, idsColumn(x, s), s);
      const step = await unembed(h, E).data();
      const V = genConfig.vocabSize;
      return [full.slice(b * V, (b + 1) * V), step.slice(b * V, (b + 1) * V)];
    });
  } finally {
    kv.dispose();
    p.dispose();
  }
};

gpuTest(
  "generate: cached ids equal uncached ids on the GPU (a flip only at a near-tie of equal logits)",
  async (g) => {
    // f32 logits of the two paths differ by ~1e-6, so a sample can flip only when the Philox draw lies within
    // ~1e-6 of a CDF boundary (~1e-5 per token). Rather than let such a flip fail the test on another adapter, the
    // first differing column is accepted when both paths' logits there agree to 1e-4 (the ids before it are equal,
    // so both paths saw the same prefix); with these seeds on llvmpipe the ids are equal.
    for (const seed of [1, 2]) {
      const [a, b] = await rolls(g, seed);
      if (a.ids.join() === b.ids.join()) continue;
      let first = a.T, row = 0;
      for (let r = 0; r < a.B; r++) {
        for (let t = 0; t < a.T; t++) {
          if (a.ids[r * a.T + t] !== b.ids[r * a.T + t] && t < first) [first, row] = [t, r];
        }
      }
      const [full, step] = await logitsBoth(g, a.ids, a.B, a.T, row, first);
      assertClose(
        step,
        full,
        { atol: 1e-4, rtol: 1e-4 },
        `logits at the first flip (row ${row}, t ${first})`,
      );
    }
  },
);

gpuTest(
  "generate: cached rollouts on the GPU equal cpu32's; the buffer pool is steady across calls",
  async (g) => {
    const [a] = await rolls(g, 5), [b] = await rolls(cpu32, 5);
    // Same key, f32 logits agreeing to ~1e-6 across backends (as in generate_test.ts).
    if (a.ids.join() !== b.ids.join()) throw new Error(`GPU ${a.ids}\nCPU ${b.ids}`);
    const p = randomParams(g, genConfig, 40);
    try {
      await generate(genConfig, p, prompts, opts(5, true)); // warm: every buffer size the loop needs is pooled
      const before = g.memory();
      await generate(genConfig, p, prompts, { ...opts(5, true), maxNew: 12, checkEvery: 0 });
      const after = g.memory();
      if (after.allocations !== before.allocations || after.live !== before.live) {
        throw new Error(`memory not steady: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
      }
    } finally {
      p.dispose();
    }
  },
);

// ---- errors -----------------------------------------------------------------------------------------------

Deno.test("kv cache ops: bad shapes throw ShapeError naming the op and the shapes", () => {
  const t = (shape: number[], dtype: "f32" | "i32" = "f32") =>
    tensor(cpu32, new Float32Array(shape.reduce((a, b) => a * b, 1)), shape, dtype);
  const kc = t([2, 5, 2, 4]);
  throwsShape(
    () => decodeAttention(t([2, 2, 4, 4]), kc, kc, 0),
    /decodeAttention: q must hold one query.*q \[2,2,4,4\]/,
  );
  throwsShape(
    () => decodeAttention(t([2, 1, 3, 4]), kc, kc, 0),
    /decodeAttention: query heads Hq = 3 .* Hkv = 2/,
  );
  throwsShape(
    () => decodeAttention(t([2, 1, 4, 4]), kc, kc, 5),
    /decodeAttention: need an integer 0 <= t < T = 5; got .*kCache \[2,5,2,4\]/,
  );
  throwsShape(() => decodeAttention(t([2, 1, 4, 3]), kc, kc, 1), /decodeAttention: head dimensions differ/);
  throwsShape(
    () => decodeAttention(t([3, 1, 4, 4]), kc, kc, 1),
    /decodeAttention: batch sizes differ \(3 vs 2\)/,
  );
  throwsShape(
    () => decodeAttention(t([2, 1, 4, 4]), kc, t([2, 5, 2, 3]), 1),
    /decodeAttention: kCache and vCache/,
  );
  throwsShape(
    () => kvWrite(kc, kc, t([2, 2, 2, 4]), t([2, 2, 2, 4]), 4),
    /kvWrite: need 0 <= t and t \+ n <= T; got kCache \[2,5,2,4\].*k \[2,2,2,4\].*t = 4/,
  );
  throwsShape(
    () => kvWrite(kc, kc, t([2, 1, 1, 4]), t([2, 1, 1, 4]), 0),
    /kvWrite: k must be \(B, n, Hkv, D\)/,
  );
  throwsShape(
    () => idsColumn(t([2, 5], "i32"), 5),
    /idsColumn: need i32 ids \(B, T\) and 0 <= t < T; got \[2,5\] \(i32\), t = 5/,
  );
  const c = tinyConfig({ vocabSize: 19, numLayers: 2 });
  const p = randomParams(cpu32, c, 1);
  const kv = kvCache(c, cpu32, 2, 5);
  try {
    throwsShape(
      () => decodeStep(c, p, kv, t([3], "i32"), 0),
      /decodeStep: ids \[3\]; the cache holds 2 layers of \[2,5,2,8\], the model needs 2 layers of \[3,5,2,8\]/,
    );
    throwsShape(
      () => decodeStep(c, p, kv, t([2], "i32"), 5),
      /decodeStep: position t = 5 outside the cache's 5 columns/,
    );
    throwsShape(
      () => decodeStep(c, p, kv, t([2, 1], "i32"), 0),
      /decodeStep: ids has shape \[2,1\] \(i32\), expected i32 \(B\)/,
    );
  } finally {
    kv.dispose();
    p.dispose();
  }
});
