/** Internal policies: residual decomposition, final = layer(L-1), own-RMS normed readouts, streamed = naive readouts, gradient isolation. */
import fc from "fast-check";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { concatRows } from "../kernels/layout.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { type DecoderConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import { layer, type ReadoutNorm } from "../policies/internal.ts";
import { forward } from "../policies/model.ts";
import { normals, type Params, paramsFromHost } from "../policies/params.ts";
import { readPolicies } from "../policies/policy.ts";
import { streamReadout } from "../policies/readout.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, cpu32, cpu64, randomData } from "./util.ts";

/** Parameters with every tensor random (norm scales near 1, biases nonzero), optionally rescaled by name. */
const randomParams = (
  b: Backend,
  c: DecoderConfig,
  seed: number,
  std = 0.3,
  scaleOf: (name: string) => number = () => 1,
): Params => {
  const rnd = normals(seed);
  const host = new Map(
    paramSpecs(c).map((s) => {
      const n = s.shape.reduce((a, x) => a * x, 1);
      const k = scaleOf(s.name);
      const data = Float32Array.from(
        { length: n },
        () => k * (s.init === "ones" ? 1 + 0.2 * rnd() : s.init === "zeros" ? 0.1 * rnd() : std * rnd()),
      );
      return [s.name, { data, shape: s.shape }];
    }),
  );
  return paramsFromHost(b, paramSpecs(c), (n) => host.get(n));
};

const idsOf = (b: Backend, c: DecoderConfig, B: number, T: number, seed: number) => {
  const host = Int32Array.from({ length: B * T }, (_, i) => (seed * 7 + i * 13 + (i * i) % 5) % c.vocabSize);
  return {
    host,
    ids: tensor(b, host, [B, T], "i32"),
    pos: tensor(b, Int32Array.from({ length: T }, (_, i) => i), [T], "i32"),
  };
};

/** Naive f64 readout of one row: entropy and log-prob of `target` under softmax(E x / temp). */
const naiveReadout = (
  x: ArrayLike<number>,
  E: ArrayLike<number>,
  V: number,
  temp: number,
  target: number,
) => {
  const d = x.length;
  const z = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += x[j] * E[v * d + j];
    z[v] = s / temp;
  }
  const m = Math.max(...z);
  let se = 0;
  for (const v of z) se += Math.exp(v - m);
  const lse = m + Math.log(se);
  let ez = 0;
  for (const v of z) ez += Math.exp(v - lse) * v;
  return { entropy: lse - ez, logp: z[target] - lse };
};

const archs: DecoderConfig["architecture"][] = ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"];
const configArb = fc.record({
  arch: fc.constantFrom(...archs),
  layers: fc.integer({ min: 1, max: 3 }),
  kv: fc.constantFrom(1, 2),
  tie: fc.boolean(),
  vocab: fc.integer({ min: 5, max: 70 }),
}).map(({ arch, layers, kv, tie, vocab }) =>
  tinyConfig({
    architecture: arch,
    qkvBias: arch === "Qwen2ForCausalLM",
    qkNorm: arch === "Qwen3ForCausalLM",
    numLayers: layers,
    numHeads: 2,
    numKvHeads: kv,
    headDim: 4,
    hiddenSize: 8,
    intermediateSize: 12,
    vocabSize: vocab,
    tieWordEmbeddings: tie,
  })
);

Deno.test("residual decomposition: h_l = h_{-1} + sum_{i<=l} (A_i + F_i) (f64 CPU; Qwen3, Qwen2 bias, Llama)", async () => {
  await fc.assert(
    fc.asyncProperty(
      configArb,
      fc.integer({ min: 1, max: 2 }),
      fc.integer({ min: 1, max: 5 }),
      fc.nat(99),
      async (c, B, T, seed) => {
        await tidy(async () => {
          const p = randomParams(cpu64, c, seed);
          const { ids, pos } = idsOf(cpu64, c, B, T, seed);
          const f = forward(c, p, ids, pos);
          const acc = Float64Array.from(await f.embed.data());
          for (let l = 0; l < c.numLayers; l++) {
            const a = await f.layers[l].attn.data(), ff = await f.layers[l].ffn.data();
            for (let i = 0; i < acc.length; i++) acc[i] += a[i] + ff[i];
            // Same additions in the same order as the forward pass, in f64: only summation-order rounding differs.
            assertClose(
              await f.layers[l].out.data(),
              acc,
              { atol: 1e-12, rtol: 1e-12 },
              `${c.architecture} h_${l}`,
            );
          }
          p.dispose();
        });
      },
    ),
    { numRuns: 15 },
  );
});

const finalEqualsLast = async (b: Backend) => {
  const c = tinyConfig({ vocabSize: 37, numLayers: 3 });
  await tidy(async () => {
    const p = randomParams(b, c, 5);
    const { host, ids, pos } = idsOf(b, c, 2, 6, 1);
    const f = forward(c, p, ids, pos);
    const tg = tensor(b, Int32Array.from(host, (x) => (x + 1) % c.vocabSize), [12], "i32");
    const r = readPolicies(c, p, f, [{ kind: "final" }, layer(2, "raw"), layer(2, "normed")], tg, {
      chunk: 64,
    });
    for (const k of ["layer(2)", "layer(2,normed)"]) {
      // Same rows through the same kernels: equal bit for bit, token for token.
      assertClose(
        await r.get(k)!.entropy.data(),
        await r.get("final")!.entropy.data(),
        { atol: 0, rtol: 0 },
        k,
      );
      assertClose(await r.get(k)!.logp.data(), await r.get("final")!.logp.data(), { atol: 0, rtol: 0 }, k);
    }
    p.dispose();
  });
};
Deno.test("the final policy equals layer(L-1) raw (and normed) token for token (CPU)", () =>
  finalEqualsLast(cpu32));
gpuTest("the final policy equals layer(L-1) raw (and normed) token for token (GPU)", finalEqualsLast);

/**
 * Layer 1's output is scaled up 40x (o_proj and down_proj of layer 1), so h_1 has a far larger RMS than h_0.
 * layer(0, normed) must divide h_0 by h_0's own RMS; dividing by h_{L-1}'s RMS (the cached-norm bug) would shrink
 * the logits and give a visibly higher entropy.
 */
const ownRms = async (b: Backend, tol: number) => {
  const c = tinyConfig({ vocabSize: 29, numLayers: 2, tieWordEmbeddings: false });
  const scaleOf = (n: string) => (/layers\.1\.(self_attn\.o_proj|mlp\.down_proj)/.test(n) ? 40 : 1);
  await tidy(async () => {
    const p = randomParams(b, c, 11, 0.3, scaleOf);
    const { ids, pos } = idsOf(b, c, 1, 5, 2);
    const f = forward(c, p, ids, pos);
    const tg = tensor(b, new Int32Array(5), [5], "i32");
    const got = await readPolicies(c, p, f, [layer(0, "normed")], tg).get("layer(0,normed)")!.entropy.data();
    const h0 = await f.layers[0].out.data(), hL = await f.layers[1].out.data();
    const g = await p.get("model.norm.weight").data(), E = await p.get("lm_head.weight").data();
    const d = c.hiddenSize;
    const rms = (x: ArrayLike<number>, t: number) => {
      let s = 0;
      for (let j = 0; j < d; j++) s += x[t * d + j] ** 2;
      return Math.sqrt(s / d + c.rmsNormEps);
    };
    for (let t = 0; t < 5; t++) {
      const at = (r: number) => Array.from({ length: d }, (_, j) => (h0[t * d + j] / r) * g[j]);
      const own = naiveReadout(at(rms(h0, t)), E, c.vocabSize, 1, 0).entropy;
      const wrong = naiveReadout(at(rms(hL, t)), E, c.vocabSize, 1, 0).entropy;
      if (!(Math.abs(own - wrong) > 0.3)) {
        throw new Error(`test too weak at ${t}: own ${own}, last-layer RMS ${wrong}`);
      }
      assertClose([got[t]], [own], { atol: tol, rtol: 0 }, `H(layer(0,normed))[${t}]`);
    }
    p.dispose();
  });
};
Deno.test("normed readouts of early layers use their own RMS, not the last layer's (f64 CPU)", () =>
  ownRms(cpu64, 1e-9));
// f32 GPU against the f64 host reference: logits of size ~10 carry ~1e-6 relative error; entropy error stays ~1e-5.
gpuTest(
  "normed readouts of early layers use their own RMS, not the last layer's (GPU)",
  (g) => ownRms(g, 1e-4),
);

const readoutArb = fc.record({
  // A fixed menu of extents (each new shape compiles new shaders on the GPU): V = 1, not a multiple of 64,
  // and multiples of 64 that the chunk does and does not divide.
  R: fc.constantFrom(1, 4, 9),
  d: fc.constantFrom(1, 5, 12),
  V: fc.constantFrom(1, 7, 63, 64, 65, 100, 128, 129, 192, 300),
  chunk: fc.constantFrom(64, 128, 192, 8192),
  temperature: fc.constantFrom(1, 0.5, 1.7, 3),
  range: fc.constantFrom(0.5, 3),
  seed: fc.nat(1000),
});

const streamVsNaive = async (b: Backend, runs: number, tol: number) => {
  await fc.assert(
    fc.asyncProperty(readoutArb, async ({ R, d, V, chunk, temperature, range, seed }) => {
      const x = randomData(R * d, seed + 1, range), E = randomData(V * d, seed + 2, range);
      const tg = Int32Array.from({ length: R }, (_, i) => (seed + 3 * i) % V);
      const r = tidy(() =>
        streamReadout(tensor(b, x, [R, d]), tensor(b, E, [V, d]), tensor(b, tg, [R], "i32"), {
          chunk,
          temperature,
        })
      );
      const ent = await r.entropy.data(), lp = await r.logp.data();
      r.entropy.dispose();
      r.logp.dispose();
      const want = Array.from(
        { length: R },
        (_, i) => naiveReadout(x.subarray(i * d, (i + 1) * d), E, V, temperature, tg[i]),
      );
      for (let i = 0; i < R; i++) {
        if (!(ent[i] >= -tol && ent[i] <= Math.log(V) + tol)) {
          throw new Error(`entropy ${ent[i]} outside [0, log ${V}]`);
        }
      }
      assertClose(ent, want.map((w) => w.entropy), { atol: tol, rtol: tol }, `entropy V=${V} chunk=${chunk}`);
      assertClose(lp, want.map((w) => w.logp), { atol: tol, rtol: tol }, `logp V=${V} chunk=${chunk}`);
    }),
    { numRuns: runs },
  );
};
Deno.test("streamed entropy and log-prob equal the full softmax, entropy in [0, log V] (f64 CPU)", () =>
  streamVsNaive(cpu64, 40, 1e-10));
// f32 logits up to |z| ~ 3*3*12/0.5 = 216: log-sum-exp in f32 keeps ~1e-7 relative of that, so 2e-4 absolute.
gpuTest(
  "streamed entropy and log-prob equal the full softmax, entropy in [0, log V] (GPU)",
  (g) => streamVsNaive(g, GPU_RUNS, 2e-4),
);

const gradOf = async (
  b: Backend,
  x: Float32Array,
  E: Float32Array,
  tg: Int32Array,
  shape: number[],
  opts: { chunk: number; temperature: number },
  proj: Float32Array,
) =>
  await tidy(async () => {
    const [R, d, V] = shape;
    const xt = tensor(b, x, [R, d]), Et = tensor(b, E, [V, d]);
    const tape = new Tape().watch(xt, Et);
    const s = tape.run(() => {
      const r = streamReadout(xt, Et, tensor(b, tg, [R], "i32"), opts);
      return concatRows([r.entropy, r.logp]); // (2N)
    });
    const [dx, dE] = tape.backward(s, [xt, Et], tensor(b, proj, [2 * R]));
    return [...await dx!.data(), ...await dE!.data()];
  });

Deno.test("streamed readout gradients w.r.t. x and E_u equal finite differences (f64 CPU)", async () => {
  for (
    const [R, d, V, chunk, temperature] of [[3, 5, 70, 64, 1], [2, 4, 128, 64, 0.7], [4, 3, 40, 8192, 2]]
  ) {
    const x = randomData(R * d, R + V, 1.5), E = randomData(V * d, d + V, 1.5);
    const tg = Int32Array.from({ length: R }, (_, i) => (7 * i + 1) % V);
    const f = (xt: Tensor, Et: Tensor) => {
      const r = streamReadout(xt, Et, tensor(cpu64, tg, [R], "i32"), { chunk, temperature });
      return concatRows([r.entropy, r.logp]);
    };
    const res = await checkGrad(cpu64, f, [{ data: x, shape: [R, d] }, { data: E, shape: [V, d] }], {
      seed: V,
    });
    if (!(res.error < 1e-6)) throw new Error(`gradcheck V=${V} chunk=${chunk}: ${JSON.stringify(res)}`);
  }
});

gpuTest("streamed readout gradients: GPU equals the f64 CPU gradient", async (g) => {
  for (const [R, d, V, chunk, temperature] of [[5, 8, 200, 128, 0.7]]) {
    const x = randomData(R * d, R + V, 1.5), E = randomData(V * d, d + V, 1.5);
    const tg = Int32Array.from({ length: R }, (_, i) => (7 * i + 1) % V);
    const proj = randomData(2 * R, 5);
    const o = { chunk, temperature };
    const want = await gradOf(cpu64, x, E, tg, [R, d, V], o, proj);
    // f32 recompute of p_v and (z_v - E[z]) per chunk: gradients of size ~1 agree to ~1e-6; 2e-5 leaves room.
    assertClose(
      await gradOf(g, x, E, tg, [R, d, V], o, proj),
      want,
      { atol: 2e-5, rtol: 1e-4 },
      `grad V=${V}`,
    );
  }
});

/** d/dtheta of the mean log-prob of targets under layer(k): zero above k and for the final norm (raw). */
const isolation = async (b: Backend, norm: ReadoutNorm) => {
  const c = tinyConfig({ vocabSize: 33, numLayers: 4 });
  const k = 1;
  await tidy(async () => {
    const p = randomParams(b, c, 21);
    const { host, ids, pos } = idsOf(b, c, 2, 5, 3);
    const tg = tensor(b, Int32Array.from(host, (x) => (x + 2) % c.vocabSize), [10], "i32");
    const tape = new Tape().watch(...p.views);
    const obj = tape.run(() => {
      const f = forward(c, p, ids, pos);
      return readPolicies(c, p, f, [layer(k, norm)], tg).get(showKey(k, norm))!.logp;
    });
    const grads = tape.backward(obj, p.views, tensor(b, new Float32Array(10).fill(0.1), [10]));
    const zeroAbove: string[] = [], zeroBelow: string[] = [];
    for (let i = 0; i < p.views.length; i++) {
      const name = p.layout.specs[i].name;
      const gd = grads[i] ? await grads[i]!.data() : new Float32Array(1);
      const nonzero = gd.some((v) => v !== 0);
      const l = /model\.layers\.(\d+)\./.exec(name);
      const above = (l && Number(l[1]) > k) || (name === "model.norm.weight" && norm === "raw");
      if (above && nonzero) zeroAbove.push(name);
      if (!above && !nonzero) zeroBelow.push(name);
    }
    if (zeroAbove.length) {
      throw new Error(`${norm}: nonzero gradient above layer ${k}: ${zeroAbove.join(", ")}`);
    }
    if (zeroBelow.length) {
      throw new Error(`${norm}: zero gradient at or below layer ${k}: ${zeroBelow.join(", ")}`);
    }
    p.dispose();
  });
};
const showKey = (k: number, n: ReadoutNorm) => (n === "normed" ? `layer(${k},normed)` : `layer(${k})`);
Deno.test("gradient of an objective on layer(k): exactly zero above k and for the final norm (raw), nonzero below (CPU)", async () => {
  await isolation(cpu32, "raw");
  await isolation(cpu32, "normed"); // normed reads through the final norm, so that one gets a gradient
});
gpuTest(
  "gradient of an objective on layer(k): exactly zero above k and for the final norm (raw), nonzero below (GPU)",
  (g) => isolation(g, "raw"),
);
