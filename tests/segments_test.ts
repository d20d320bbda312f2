/** Segmented parameters and binding-limited ops: a tiny model under KiB-sized limits equals the normal-limit run. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { adamwReference } from "../core/optim.ts";
import { adamwSegments } from "../kernels/adamw.ts";
import type { Backend } from "../engine/backend.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { add } from "../kernels/elementwise.ts";
import { embeddingGrad, embeddingGradOf } from "../kernels/embedding.ts";
import { apply1 } from "../engine/apply.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { attn, final, layer } from "../policies/internal.ts";
import { streamKl } from "../policies/kl.ts";
import { forward, logits } from "../policies/model.ts";
import { initParams, layoutOf, type Params, paramsToHostArrays } from "../policies/params.ts";
import { readPolicies } from "../policies/policy.ts";
import { lossAndGrads, supervisedStep } from "../training/sft.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, cpu64, randomData } from "./util.ts";
import { cfg, LIMITS, low } from "./segments_fixture.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";

/** The f64 CPU backend under the same limits: the chunked and segmented paths of every CPU reference. */
const lowCpu = new CpuBackend("f64", LIMITS);

const B = 2, T = 8;
const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 389 + 7) % cfg.vocabSize);
const init = (b: Backend, c = cfg) => initParams(b, paramSpecs(c), 5, 0.3);

const names = paramSpecs(cfg).map((s) => s.name);
const hostGrads = async (p: Params, gs: readonly Tensor[]) => await paramsToHostArrays(p, gs);

Deno.test("layout: segments in order, 64-aligned, at most the cap unless one tensor alone; too big names it", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 30 }),
      fc.integer({ min: 1, max: 8192 }),
      (sizes, capBytes) => {
        const specs = sizes.map((n, i) => ({ name: `t${i}`, shape: [n], init: "zeros" as const }));
        const l = layoutOf(specs, { segmentBytes: capBytes });
        const capElems = Math.max(64, Math.floor(capBytes / 256) * 64);
        let prev = -1, prevEnd = 0;
        specs.forEach((s, i) => {
          const seg = l.segment[i], at = l.offsets[i], n = Math.ceil(s.shape[0] / 64) * 64;
          if (at % 64 !== 0) throw new Error(`offset ${at} not aligned`);
          if (seg === prev) {
            if (at !== prevEnd) throw new Error(`tensor ${i} not packed in order`);
          } else if (seg !== prev + 1 || at !== 0) throw new Error(`tensor ${i} skips a segment`);
          if (at + n > Math.max(capElems, n)) throw new Error(`segment ${seg} exceeds the cap`);
          if (at + n > l.segmentSizes[seg]) throw new Error(`tensor ${i} past its segment's end`);
          prev = seg;
          prevEnd = at + n;
        });
        if (l.total !== l.segmentSizes.reduce((a, b) => a + b, 0)) throw new Error("total");
      },
    ),
  );
  const specs = [{ name: "a", shape: [10], init: "zeros" as const }, {
    name: "model.embed_tokens.weight",
    shape: [151936, 1024],
    init: "normal" as const,
  }];
  layoutOf(specs, { maxBufferBytes: 2147483647 }); // 151936 x 1024 x 4 = 622 MB fits llvmpipe's 2 GiB
  try {
    layoutOf(specs, { maxBufferBytes: 512 * 1024 * 1024 });
    throw new Error("a 622 MB tensor passed a 512 MiB buffer limit");
  } catch (e) {
    if (!(e instanceof ShapeError)) throw e;
    if (!/model\.embed_tokens\.weight .*622329856 bytes.*maxBufferSize 536870912/.test(e.message)) {
      throw new Error(`message: ${e.message}`);
    }
  }
});

gpuTest("a parameter larger than the (lowered) maxBufferSize is a ShapeError naming it", async () => {
  const big = tinyConfig({ vocabSize: 20000, hiddenSize: 16, numHeads: 2, numKvHeads: 1, headDim: 8 });
  try {
    init(low!, big).dispose();
    throw new Error("no error");
  } catch (e) {
    if (!(e instanceof ShapeError)) throw e;
    if (
      !/tensor model\.embed_tokens\.weight \[20000, ?16\] needs 1280000 bytes.*maxBufferSize 1048576/.test(
        e.message,
      )
    ) {
      throw new Error(`message: ${e.message}`);
    }
  }
  // And a binding over the lowered limit names the kernel and both sizes instead of a device validation error.
  const a = tensor(low!, new Float32Array(8192), [8192]);
  try {
    add(a, a).dispose();
    throw new Error("no error");
  } catch (e) {
    if (
      !(e instanceof ShapeError) ||
      !/32768 bytes, more than maxStorageBufferBindingSize 16384/.test(e.message)
    ) {
      throw e;
    }
  } finally {
    a.dispose();
  }
  await low!.sync(); // nothing was enqueued past the errors
});

gpuTest("the tiny model spans several segments and its embedding several bindings", async () => {
  const p = init(low!);
  try {
    const l = p.layout;
    if (l.segmentSizes.length < 5) throw new Error(`only ${l.segmentSizes.length} segments`);
    if (l.segmentSizes.some((n, k) => n * 4 > 4096 && l.segment.filter((s) => s === k).length > 1)) {
      throw new Error("a segment over the cap holds more than one tensor");
    }
    if (cfg.vocabSize * cfg.hiddenSize * 4 <= LIMITS.maxStorageBufferBindingSize) {
      throw new Error("table fits");
    }
    await low!.sync();
  } finally {
    p.dispose();
  }
});

gpuTest(
  "AdamW over segments in binding-sized chunks equals the f64 reference with one global norm",
  async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 9000 }), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 1000 }),
        async (sizes, clip, seed) => {
          const h = { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1, step: 2 };
          const hyper = clip ? { ...h, maxGradNorm: 0.5 } : h;
          const ps = sizes.map((n, k) => randomData(n, seed + k));
          const gs = sizes.map((n, k) => randomData(n, seed + 100 + k));
          const ms = sizes.map((n, k) => randomData(n, seed + 200 + k, 0.1));
          const vs = sizes.map((n, k) => randomData(n, seed + 300 + k, 0.1).map(Math.abs));
          const up = (xs: Float32Array[]) => xs.map((x) => tensor(low!, x, [x.length]));
          const [P, G, M, V] = [up(ps), up(gs), up(ms), up(vs)];
          const { norm } = adamwSegments(P, G, M, V, hyper);
          // Reference: the concatenation is ONE vector (one norm over all segments), in f64.
          const cat = (xs: Float32Array[]) => Float64Array.from(xs.flatMap((x) => [...x]));
          const [rp, rm, rv] = [cat(ps), cat(ms), cat(vs)];
          const rn = adamwReference(rp, cat(gs), rm, rv, hyper);
          // f32 storage and f32 arithmetic of the update: 2e-5 relative, as in adamw_test.ts.
          assertClose(await norm.data(), [rn], { atol: 1e-6, rtol: 1e-5 }, "norm");
          const gp = cat(await Promise.all(P.map(async (t) => Float32Array.from(await t.data()))));
          const gm = cat(await Promise.all(M.map(async (t) => Float32Array.from(await t.data()))));
          assertClose(gp, rp, { atol: 1e-6, rtol: 2e-5 }, "params");
          assertClose(gm, rm, { atol: 1e-7, rtol: 2e-5 }, "m");
          [...P, ...G, ...M, ...V, norm].forEach((t) => t.dispose());
        },
      ),
      { numRuns: Math.max(4, GPU_RUNS / 2) }, // every chunk length is a new shader text: ~3 s per run on llvmpipe
    );
  },
);

gpuTest(
  "the embedding gradient written in row blocks is bit-identical to the one-binding kernel",
  async (g) => {
    const V = 700, d = 16, n = 40; // 44,800 bytes: 3 row blocks of 256 rows under 16 KiB
    const idsH = Int32Array.from({ length: n }, (_, i) => (i * 37) % (V + 3) - 1); // some out of range
    const dyH = randomData(n * d, 3);
    const whole = await tidy(async () =>
      Float32Array.from(
        await apply1(embeddingGrad, { vocab: V }, [tensor(g, dyH, [n, d]), tensor(g, idsH, [n], "i32")])
          .data(),
      )
    );
    const blocks = await tidy(async () =>
      Float32Array.from(
        await embeddingGradOf(tensor(low!, dyH, [n, d]), tensor(low!, idsH, [n], "i32"), V).data(),
      )
    );
    const cpu = await tidy(async () =>
      await embeddingGradOf(tensor(lowCpu, dyH, [n, d]), tensor(lowCpu, idsH, [n], "i32"), V).data()
    );
    if (blocks.some((x, i) => !Object.is(x, whole[i]))) throw new Error("row blocks differ from one binding");
    // The CPU prep/rows references: each sum in f64 from f32 data, then rounded (the GPU sums in f32).
    assertClose(cpu, whole, { atol: 1e-6, rtol: 1e-6 }, "cpu rows");
  },
);

/** Logits, readouts, every parameter's loss gradient, on one backend. */
const modelRun = async (b: Backend) => {
  const p = init(b);
  try {
    const small = Int32Array.from(ids.subarray(0, 4));
    const lg = await tidy(async () => {
      const f = forward(cfg, p, tensor(b, small, [1, 4], "i32"), tensor(b, [0, 1, 2, 3], [4], "i32"));
      return Float64Array.from(await logits(cfg, p, f).data()); // (1, 4, V): 16,000 bytes, one binding
    });
    const reads = await tidy(async () => {
      const f = forward(cfg, p, tensor(b, ids, [B, T], "i32"), tensor(b, [...Array(T).keys()], [T], "i32"));
      const r = readPolicies(cfg, p, f, [final, layer(0), attn(1)], tensor(b, ids, [B * T], "i32"));
      const out: number[] = [];
      for (const v of r.values()) out.push(...await v.entropy.data(), ...await v.logp.data());
      return out;
    });
    const { loss, grads } = lossAndGrads(cfg, p, { ids, B, T });
    const gs = await hostGrads(p, grads);
    const l = (await loss.data())[0];
    loss.dispose();
    grads.forEach((t) => t.dispose());
    return { lg, reads, gs, loss: l };
  } finally {
    p.dispose();
  }
};

gpuTest(
  "segmented, chunked model equals the normal-limit run: logits, readouts, loss gradients",
  async (g) => {
    const [a, z, c, cl] = [
      await modelRun(g),
      await modelRun(low!),
      await modelRun(cpu64),
      await modelRun(lowCpu),
    ];
    // Logits: the same dot products over d = 16, written column block by column block (the matmul may tile the
    // (4, 256) blocks differently from (4, 1000)): f32 rounding of 16-term sums, 1e-6.
    assertClose(z.lg, a.lg, { atol: 1e-6, rtol: 1e-6 }, "logits");
    // Readouts: the online log-sum-exp folds 4 chunks of 256 instead of 1 chunk of 1000 (reassociation of f32
    // sums near log V = 6.9, a few ulps): 1e-5.
    assertClose(z.reads, a.reads, { atol: 1e-5, rtol: 1e-6 }, "readouts");
    assertClose([z.loss], [a.loss], { atol: 1e-5, rtol: 1e-6 }, "loss");
    // Gradients: the readout backward accumulates dx over 4 chunks instead of 1 (f32 reassociation, amplified by
    // the backward through 2 layers); every table row block is the same sum. 2e-5 relative to the largest entry.
    names.forEach((n, i) => {
      const scale = Math.max(...a.gs[i].map(Math.abs), 1e-3);
      assertClose(z.gs[i], a.gs[i], { atol: 2e-5 * scale, rtol: 1e-4 }, `grad ${n}`);
    });
    // The f64 CPU references under the same limits (block gathers, row-block gradients, column logits, segmented
    // gradients) equal the unlimited f64 run up to f64 reassociation.
    assertClose(cl.lg, c.lg, { atol: 1e-12, rtol: 1e-12 }, "cpu logits");
    assertClose(cl.reads, c.reads, { atol: 1e-12, rtol: 1e-12 }, "cpu readouts");
    names.forEach((n, i) => assertClose(cl.gs[i], c.gs[i], { atol: 1e-12, rtol: 1e-10 }, `cpu grad ${n}`));
    // And the GPU agrees with f64 (the usual f32 model tolerance).
    names.forEach((n, i) => {
      const scale = Math.max(...c.gs[i].map(Math.abs), 1e-3);
      assertClose(z.gs[i], c.gs[i], { atol: 1e-4 * scale, rtol: 1e-3 }, `gpu vs f64 grad ${n}`);
    });
  },
);

gpuTest("one clipped SFT step with segmented moments equals the single-buffer step", async (g) => {
  const step = async (b: Backend) => {
    const p = init(b);
    const opt = createOptimizer(p, { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 0.05 });
    try {
      const { loss, norm } = supervisedStep(cfg, p, opt, { ids, B, T });
      const out = {
        norm: (await norm.data())[0],
        loss: (await loss.data())[0],
        p: await paramsToHostArrays(p),
        m: await paramsToHostArrays(p, opt.m),
        segs: p.segments.length,
      };
      loss.dispose();
      norm.dispose();
      return out;
    } finally {
      disposeOptimizer(opt);
      p.dispose();
    }
  };
  const [a, z] = [await step(g), await step(low!)];
  if (a.segs !== 1 || z.segs < 5) throw new Error(`segments: ${a.segs} vs ${z.segs}`);
  if (!(a.norm > 0.05)) throw new Error(`clipping inactive: norm ${a.norm}`);
  // The norm: the same squares summed in another order over 40+ chunks (f32): 1e-5 relative. m is linear in the
  // gradient: the gradient tolerance. Parameters: a first AdamW step moves each element by lr g / (|g| + eps), which
  // amplifies the f32 difference of gradient elements within a few orders of eps = 1e-8 of zero (no useful bound
  // exists for such elements; with this fixed data the largest difference measured 2.2e-6): 1e-5, 1e-3 of lr = 1e-2.
  assertClose([z.norm], [a.norm], { atol: 0, rtol: 1e-5 }, "norm");
  assertClose([z.loss], [a.loss], { atol: 1e-5, rtol: 1e-6 }, "loss");
  names.forEach((n, i) => {
    assertClose(z.p[i], a.p[i], { atol: 1e-5, rtol: 1e-6 }, `param ${n}`);
    const scale = Math.max(...a.m[i].map(Math.abs), 1e-6);
    assertClose(z.m[i], a.m[i], { atol: 2e-5 * scale, rtol: 1e-4 }, `m ${n}`);
  });
});

gpuTest(
  "KL between policies: the unembedding gradient in row blocks equals the one-binding gradient",
  async (g) => {
    const R = 16, V = 1000, d = 16;
    const xa = randomData(R * d, 11), xb = randomData(R * d, 12), E = randomData(V * d, 13, 0.5);
    const run = async (b: Backend) =>
      await tidy(async () => {
        const [ta, tb, tE] = [tensor(b, xa, [R, d]), tensor(b, xb, [R, d]), tensor(b, E, [V, d])];
        const tape = new Tape().watch(ta, tE);
        const kl = tape.run(() => streamKl(ta, tb, tE));
        const [dxa, dE] = tape.backward(kl, [ta, tE], tensor(b, new Float32Array(R).fill(1), [R]));
        return { kl: await kl.data(), dxa: await dxa!.data(), dE: await dE!.data() };
      });
    const [a, z] = [await run(g), await run(low!)];
    // 8 chunks of 128 vocabulary rows (2N = 32 stacked rows per chunk) against one chunk: f32 reassociation of
    // the online statistics; KL values are O(1): 1e-5.
    assertClose(z.kl, a.kl, { atol: 1e-5, rtol: 1e-5 }, "kl");
    assertClose(z.dxa, a.dxa, { atol: 1e-5, rtol: 1e-4 }, "dxa");
    assertClose(z.dE, a.dE, { atol: 1e-6, rtol: 1e-4 }, "dE");
  },
);
