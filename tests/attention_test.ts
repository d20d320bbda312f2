/** Causal GQA attention: GPU = CPU = definition, grouped heads = repeated heads, causality, gradients, errors. */
import fc from "fast-check";
import { computePasses } from "../engine/kernel.ts";
import { size } from "../core/shape.ts";
import {
  attention,
  attentionBwdKVKernel,
  attentionBwdQKernel,
  attentionKernel,
  type AttentionVariant,
  attentionWithLse,
} from "../kernels/attention.ts";
import type { Backend } from "../engine/backend.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { Tape } from "../engine/tape.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuProperty, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData, throwsShape } from "./util.ts";

/** One attention problem: sizes, optional explicit offset, scale, and data. */
interface Case {
  b: number;
  t: number;
  s: number;
  hq: number;
  hkv: number;
  d: number;
  offset?: number;
  scale?: number;
  /** GPU lowering; both are tested on every adapter. */
  variant: AttentionVariant;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

const divisors = (n: number) => Array.from({ length: n }, (_, i) => i + 1).filter((x) => n % x === 0);

/** Random cases: B 1-2, T 1-40, S >= T (or S < T with an explicit offset), Hq in {1,2,4,6}, Hkv | Hq. */
const caseArb = (maxT = 40, ds = [2, 4, 8, 16, 64, 3, 5, 7]): fc.Arbitrary<Case> =>
  fc.record({
    b: fc.integer({ min: 1, max: 2 }),
    t: awkwardDim(maxT),
    extra: fc.integer({ min: 0, max: 9 }),
    hq: fc.constantFrom(1, 2, 4, 6),
    pick: fc.nat(),
    d: fc.constantFrom(...ds),
    mode: fc.constantFrom("default", "offset", "offset", "scale"),
    seed: fc.nat(),
    range: fc.constantFrom(1, 3),
    variant: fc.constantFrom<AttentionVariant>("row", "tile"),
  }).map(({ b, t, extra, hq, pick, d, mode, seed, range, variant }) => {
    const hkv = divisors(hq)[pick % divisors(hq).length];
    // "offset": a preallocated cache longer than needed (keys past offset + T - 1 are ignored), or fewer keys.
    const s = mode === "offset" ? Math.max(1, t + extra - 4) : t + extra;
    const offset = mode === "offset" ? pick % (s + 1) : undefined;
    return {
      b,
      t,
      s,
      hq,
      hkv,
      d,
      offset,
      scale: mode === "scale" ? 0.3 : undefined,
      variant,
      q: randomData(b * t * hq * d, seed, range),
      k: randomData(b * s * hkv * d, seed + 1, range),
      v: randomData(b * s * hkv * d, seed + 2),
    };
  });

const opts = (c: Case) => ({ offset: c.offset, scale: c.scale, variant: c.variant });
const qShape = (c: Case) => [c.b, c.t, c.hq, c.d];
const kShape = (c: Case) => [c.b, c.s, c.hkv, c.d];

/** The definition, in f64 loops: scores, causal mask, softmax, weighted sum. Returns O and L. */
const naive = (c: Case): { o: Float64Array; l: Float64Array } => {
  const o = new Float64Array(c.q.length), l = new Float64Array(c.b * c.hq * c.t);
  const scale = c.scale ?? 1 / Math.sqrt(c.d), offset = c.offset ?? c.s - c.t;
  for (let b = 0; b < c.b; b++) {
    for (let h = 0; h < c.hq; h++) {
      const g = Math.floor(h / (c.hq / c.hkv));
      for (let t = 0; t < c.t; t++) {
        const scores = Array.from({ length: c.s }, (_, s) => {
          if (s > offset + t) return -Infinity; // mask
          let dot = 0;
          for (let e = 0; e < c.d; e++) {
            dot += c.q[((b * c.t + t) * c.hq + h) * c.d + e] * c.k[((b * c.s + s) * c.hkv + g) * c.d + e];
          }
          return scale * dot;
        });
        const m = Math.max(...scores);
        const w = scores.map((x) => Math.exp(x - m));
        const z = w.reduce((a, x) => a + x, 0);
        l[(b * c.hq + h) * c.t + t] = m + Math.log(z);
        for (let e = 0; e < c.d; e++) {
          let acc = 0;
          for (let s = 0; s < c.s; s++) acc += (w[s] / z) * c.v[((b * c.s + s) * c.hkv + g) * c.d + e];
          o[((b * c.t + t) * c.hq + h) * c.d + e] = acc;
        }
      }
    }
  }
  return { o, l };
};

const forward = (be: Backend, c: Case) =>
  tidy(async () => {
    const [o, l] = attentionWithLse(
      tensor(be, c.q, qShape(c)),
      tensor(be, c.k, kShape(c)),
      tensor(be, c.v, kShape(c)),
      opts(c),
    );
    return { o: await o.data(), l: await l.data() };
  });

/**
 * Gradients w.r.t. q, k, v of <O, r> (withL false) or of <L, r> (withL true: O gets no cotangent, which
 * exercises the dL path with dO = zeros), r a fixed random cotangent; the tape on one backend.
 */
const grads = (be: Backend, c: Case, withL: boolean) =>
  tidy(async () => {
    const xs = [tensor(be, c.q, qShape(c)), tensor(be, c.k, kShape(c)), tensor(be, c.v, kShape(c))];
    const tape = new Tape().watch(...xs);
    const [o, l] = tape.run(() => attentionWithLse(xs[0], xs[1], xs[2], opts(c)));
    const out = withL ? l : o;
    const gs = tape.backward(out, xs, tensor(be, randomData(out.size, 99), out.shape));
    return await Promise.all(gs.map((g) => g!.data()));
  });

// GPU forward vs the f64 definition. Scores: a D-term f32 dot product of values |q|,|k| <= 3 scaled by
// 1/sqrt(D), absolute error <= D 2^-24 * 9 / sqrt(D) ~ 4e-6 for D = 64; exp adds a few ulps. A relative error
// e in the weights moves O (a convex combination of |v| <= 1) by <= 2e, and L by e: atol 3e-5 covers it with
// margin, rtol 1e-5 covers L's magnitude (up to ~ log S + max score ~ 30).
const TOL = { atol: 3e-5, rtol: 1e-5 };

gpuProperty(
  "attention forward: GPU equals the definition (scores, mask, softmax, sum) on random shapes",
  caseArb(),
  GPU_RUNS * 3,
  async (g, c) => {
    const want = naive(c);
    const got = await forward(g, c);
    assertClose(got.o, want.o, TOL, `O ${JSON.stringify(qShape(c))} S=${c.s} offset=${c.offset}`);
    assertClose(got.l, want.l, TOL, "L");
  },
);

Deno.test("attention forward: CPU reference (f64) equals the definition to rounding", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb(20), async (c) => {
      const want = naive(c);
      const got = await forward(cpu64, c);
      assertClose(got.o, want.o, { atol: 1e-12, rtol: 1e-12 }, "O");
      assertClose(got.l, want.l, { atol: 1e-12, rtol: 1e-12 }, "L");
    }),
    { numRuns: 40 },
  );
});

/** Repeat each kv head Hq/Hkv times along the head axis (host side). */
const repeatHeads = (x: Float32Array, c: Case): Float32Array => {
  const grp = c.hq / c.hkv, out = new Float32Array(c.b * c.s * c.hq * c.d);
  for (let bs = 0; bs < c.b * c.s; bs++) {
    for (let h = 0; h < c.hq; h++) {
      for (let e = 0; e < c.d; e++) {
        out[(bs * c.hq + h) * c.d + e] = x[(bs * c.hkv + Math.floor(h / grp)) * c.d + e];
      }
    }
  }
  return out;
};

gpuProperty(
  "grouped KV heads equal attention with K/V heads repeated (forward and gradients)",
  caseArb(17, [2, 4, 8, 5]).filter((c) => c.hkv < c.hq),
  GPU_RUNS,
  async (g, c) => {
    const rep = { ...c, hkv: c.hq, k: repeatHeads(c.k, c), v: repeatHeads(c.v, c) };
    const a = await forward(g, c), b = await forward(g, rep);
    // Same arithmetic in the same order on the same values: equal up to compiler reassociation.
    assertClose(a.o, b.o, { atol: 1e-6, rtol: 1e-6 }, "O");
    const [gq, gk, gv] = await grads(g, c, false);
    const [rq, rk, rv] = await grads(g, rep, false);
    assertClose(gq, rq, { atol: 1e-5, rtol: 1e-5 }, "dq");
    // The grouped dk/dv is the sum of the repeated heads' dk/dv over the group.
    const fold = (x: Float32Array) => {
      const out = new Float64Array(c.b * c.s * c.hkv * c.d), grp = c.hq / c.hkv;
      for (let bs = 0; bs < c.b * c.s; bs++) {
        for (let h = 0; h < c.hq; h++) {
          for (let e = 0; e < c.d; e++) {
            out[(bs * c.hkv + Math.floor(h / grp)) * c.d + e] += x[(bs * c.hq + h) * c.d + e];
          }
        }
      }
      return out;
    };
    assertClose(gk, fold(rk as Float32Array), { atol: 1e-5, rtol: 1e-5 }, "dk");
    assertClose(gv, fold(rv as Float32Array), { atol: 1e-5, rtol: 1e-5 }, "dv");
  },
);

gpuTest("causality: changing k/v after position offset + t0 leaves outputs t <= t0 unchanged", async (g) => {
  await fc.assert(
    fc.asyncProperty(caseArb(24), fc.nat(), async (c, pick) => {
      const offset = c.offset ?? c.s - c.t;
      const t0 = pick % c.t;
      const cut = offset + t0 + 1; // first key position query t0 must not see
      if (cut >= c.s) return;
      const k = c.k.slice(), v = c.v.slice();
      const noise = randomData(k.length, pick + 5, 10);
      for (let i = 0; i < k.length; i++) {
        const s = Math.floor(i / (c.hkv * c.d)) % c.s;
        if (s >= cut) {
          k[i] = noise[i];
          v[i] = -noise[i];
        }
      }
      const a = await forward(g, c), b = await forward(g, { ...c, k, v });
      const rowLen = c.hq * c.d;
      for (let bb = 0; bb < c.b; bb++) {
        for (let t = 0; t <= t0; t++) {
          const o = (bb * c.t + t) * rowLen;
          // The kernel never reads those keys: bit-for-bit equal.
          assertClose(
            a.o.subarray(o, o + rowLen),
            b.o.subarray(o, o + rowLen),
            { atol: 0, rtol: 0 },
            `O t=${t}`,
          );
        }
      }
    }),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("attention gradients (q, k, v) equal central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb(9, [2, 3, 4, 8]), fc.boolean(), async (c, viaL) => {
      const f = (q: Tensor, k: Tensor, v: Tensor) =>
        viaL ? attentionWithLse(q, k, v, opts(c))[1] : attention(q, k, v, opts(c));
      const r = await checkGrad(cpu64, f, [
        { data: c.q, shape: qShape(c) },
        { data: c.k, shape: kShape(c) },
        { data: c.v, shape: kShape(c) },
      ], { seed: c.q.length });
      // f64 central differences with eps 1e-5: truncation error ~ eps^2 |f'''| ~ 1e-9 on O(1) values.
      if (r.error > 1e-6) {
        throw new Error(`${JSON.stringify(opts(c))} q ${qShape(c)} k ${kShape(c)}: ${JSON.stringify(r)}`);
      }
    }),
    { numRuns: 40 },
  );
});

gpuTest("attention backward kernels: GPU equals CPU reference (via O and via L)", async (g) => {
  await fc.assert(
    fc.asyncProperty(caseArb(), fc.boolean(), async (c, withL) => {
      const got = await grads(g, c, withL);
      const want = await grads(cpu32, c, withL);
      // Each gradient entry sums up to Hq/Hkv * T (<= 240) terms P (dP - Delta) q or k, |P| <= 1,
      // |dP - Delta| <= ~2 sum|dO| |v|: f32 error in P (~3e-6 relative, see TOL) and in the accumulation
      // (n 2^-24) give ~1e-5 of the gradient scale; atol 1e-4, rtol 1e-4.
      const names = ["dq", "dk", "dv"];
      got.forEach((x, i) =>
        assertClose(x, want[i], { atol: 1e-4, rtol: 1e-4 }, `${names[i]} withL=${withL}`)
      );
    }),
    { numRuns: GPU_RUNS * 2 },
  );
});

gpuTest("shader text does not depend on T, S or offset (one pipeline while a KV cache grows)", (g) => {
  const spec = (s: number[]) => ({ shape: s, dtype: "f32" as const });
  for (const variant of ["row", "tile"] as const) {
    for (const kernel of [attentionKernel, attentionBwdQKernel, attentionBwdKVKernel]) {
      const texts = [[1, 5, 0], [1, 6, 5], [3, 40, 2], [1, 7, 6]].map(([t, s, offset]) => {
        const q = spec([2, t, 4, 8]), k = spec([2, s, 2, 8]), l = spec([2, 4, t]);
        const ins = kernel === attentionBwdKVKernel ? [q, k, k, q, l, l] : [q, k, k, q, q, l];
        return computePasses(kernel.gpu({ offset, variant }, ins, g.target))[0].wgsl;
      });
      if (new Set(texts).size !== 1) {
        throw new Error(`${kernel.name}.${variant}: text changed with T/S/offset`);
      }
    }
  }
  return Promise.resolve();
});

gpuTest(
  "KV-cache decoding: one query at offset t (cache S >= t + 1) equals row t of full causal attention",
  async (g) => {
    const c = fc.sample(caseArb(24, [8, 64]), { numRuns: 1, seed: 3 })[0];
    const full = { ...c, s: c.t, offset: undefined, k: c.k.slice(0, c.b * c.t * c.hkv * c.d) };
    full.v = c.v.slice(0, full.k.length);
    for (const variant of ["row", "tile"] as const) {
      const want = await forward(g, { ...full, variant });
      for (let t = 0; t < c.t; t++) {
        // Row t alone against a cache holding positions 0..t (plus stale entries past it that must be ignored).
        const pick = (x: Float32Array, len: number, row: number, start: number) => {
          const out = new Float32Array(c.b * len * row);
          for (let b = 0; b < c.b; b++) {
            out.set(
              x.subarray((b * c.t + start) * row, (b * c.t + start + len) * row),
              b * len * row,
            );
          }
          return out;
        };
        const s = Math.min(c.t, t + 3);
        const kv = c.hkv * c.d;
        const step = {
          ...full,
          t: 1,
          s,
          offset: t,
          variant,
          q: pick(full.q, 1, c.hq * c.d, t),
          k: pick(full.k, s, kv, 0),
          v: pick(full.v, s, kv, 0),
        };
        const got = await forward(g, step);
        assertClose(
          got.o,
          pick(want.o as Float32Array, 1, c.hq * c.d, t),
          { atol: 1e-6, rtol: 1e-6 },
          `${variant} t=${t}`,
        );
      }
    }
  },
);

Deno.test("attention rejects bad shapes with ShapeErrors naming the op and the shapes", () => {
  const t = (shape: number[]) => tensor(cpu64, new Float64Array(size(shape)), shape);
  throwsShape(
    () => attention(t([1, 4, 6, 8]), t([1, 4, 4, 8]), t([1, 4, 4, 8])),
    /attention: query heads Hq = 6 must be a multiple of key\/value heads Hkv = 4; got q \[1,4,6,8\], k \[1,4,4,8\]/,
  );
  throwsShape(
    () => attention(t([1, 4, 2, 8]), t([1, 4, 2, 4]), t([1, 4, 2, 4])),
    /attention: head dimensions differ \(q has D = 8, k has D = 4\)/,
  );
  throwsShape(
    () => attention(t([1, 5, 2, 8]), t([1, 3, 2, 8]), t([1, 3, 2, 8])),
    /attention: S = 3 keys < T = 5 queries and no offset given .*q \[1,5,2,8\], k \[1,3,2,8\]/,
  );
  throwsShape(
    () => attention(t([1, 4, 2, 8]), t([1, 4, 2, 8]), t([1, 5, 2, 8])),
    /attention: k and v must have equal shapes/,
  );
  throwsShape(
    () => attention(t([2, 4, 2, 8]), t([1, 4, 2, 8]), t([1, 4, 2, 8])),
    /attention: batch sizes differ/,
  );
  throwsShape(
    () => attention(t([4, 2, 8]), t([1, 4, 2, 8]), t([1, 4, 2, 8])),
    /attention: q has shape \[4,2,8\], expected rank 4/,
  );
  throwsShape(
    () => attention(t([1, 4, 2, 8]), t([1, 4, 2, 8]), t([1, 4, 2, 8]), { offset: -1 }),
    /attention: offset = -1 must be a non-negative integer/,
  );
  // S < T is fine with an explicit offset (queries past the cache see every key).
  attention(t([1, 5, 2, 8]), t([1, 3, 2, 8]), t([1, 3, 2, 8]), { offset: 0 }).dispose();
});
