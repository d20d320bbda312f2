/**
 * One case per registered kernel for the registry sweep (tests/registry_test.ts): a fast-check arbitrary of valid
 * problems (params and input data) over small, awkward shapes, and how the GPU's outputs must compare with the CPU
 * reference, with the reason. `CASES` is typed over `KernelName`, so a kernel added to the registry without a case
 * does not type-check.
 *
 * Data conventions. "Dyadic" data are multiples of 1/16 in [-1, 1]: products are multiples of 2^-8 and every sum
 * below 2^15 in size is exact in f32 whatever its order, so the linear kernels (sums, matmul, gathers and scatters)
 * compare exactly and any difference is an indexing or bounds bug, not rounding. The other kernels use uniform
 * data and tolerances derived (as in their own tests) from the f32 error of what they compute, with U = 2^-24.
 */
import fc from "fast-check";
import { rngUniform, splitmix32 } from "../core/rng.ts";
import { type DType, type Shape, size } from "../core/shape.ts";
import type { HostArray, Kernel } from "../engine/kernel.ts";
import { type KernelName, type KernelParams, KERNELS } from "../kernels/index.ts";
import type { UnaryOp } from "../kernels/elementwise.ts";
import type { MatmulVariant } from "../kernels/matmul.ts";
import { NEG_BIG } from "../kernels/readout.ts";
import { rowDistribution } from "../kernels/sample.ts";
import { SLOT } from "../kernels/adamw.ts";
import { awkwardDim, batchPair, broadcastOperand } from "./util.ts";

const U = 2 ** -24;

// ---- problems -----------------------------------------------------------------------------------------------

/** An input tensor as host data (f32 data is f32-representable, so every backend sees the same values). */
export interface HostInput {
  readonly shape: Shape;
  readonly dtype: DType;
  readonly data: HostArray;
}

/** A kernel call: its params and input tensors. Prints as params and shapes in fast-check reports. */
export interface Problem<P> extends fc.WithToStringMethod {
  readonly params: P;
  readonly inputs: readonly HostInput[];
}

/** |got - want| <= atol + rtol |want| elementwise; "exact": bit-equal values (NaN equal to NaN). */
export type Check = "exact" | { readonly atol: number; readonly rtol: number };

/** Outputs of a run, as host arrays, in the kernel's output order. */
export type Outputs = readonly HostArray[];

export interface Case<P> {
  /** Valid problems over small awkward shapes (not multiples of tiles or workgroups, size-1 axes). */
  readonly arb: fc.Arbitrary<Problem<P>>;
  /** How each f32 output compares with the reference (one check for all outputs, or one per output). */
  readonly tol?: (p: Problem<P>) => Check | readonly Check[];
  /** Why that tolerance. */
  readonly why: string;
  /** The reference backend: the f64 CPU (default) or the f32 CPU (where the GPU must match f32 rounding). */
  readonly ref?: "f64" | "f32";
  /** A comparison that replaces `tol` (samplers, unspecified parts, per-column tolerances); throws on a mismatch. */
  readonly compare?: (got: Outputs, want: Outputs, p: Problem<P>) => void;
  /**
   * Why the hardware variant runs on llvmpipe only with BUPO_SLOW_TESTS=1 (its WGSL is still checked device-free);
   * absent: it runs wherever it generates other steps than the software variant.
   */
  readonly slowHardware?: string;
  /**
   * Fewer GPU problems than BUPO_REGISTRY_RUNS, or fewer of them also on the hardware variant: for kernels whose
   * WGSL embeds the shape and whose 256-wide barrier shaders take seconds to compile on llvmpipe.
   */
  readonly gpuRuns?: number;
  readonly hardwareRuns?: number;
  /** Whether output `out` must be finite everywhere (default: every f32 output). */
  readonly finite?: (p: Problem<P>, out: number) => boolean;
}

const describe = (params: unknown, inputs: readonly HostInput[]): string =>
  `${JSON.stringify(params)} on ${inputs.map((x) => `${x.dtype}[${x.shape.join(",")}]`).join(", ")}`;

/** A problem value (its fast-check printout names the params and the input shapes). */
export const problem = <P>(params: P, inputs: readonly HostInput[]): Problem<P> => ({
  params,
  inputs,
  [fc.toStringMethod]: () => describe(params, inputs),
});

// ---- data -----------------------------------------------------------------------------------------------------

const seedArb = fc.integer({ min: 1, max: 0x7fffffff });
const dim = awkwardDim;

/** Uniform f32 values in [lo, hi). */
const uniform = (n: number, seed: number, lo = -1, hi = 1): Float32Array => {
  const r = splitmix32(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * (r() / 2 ** 32));
};
/** Multiples of 1/16 in [-1, 1] (see the module comment). */
const dyadic = (n: number, seed: number): Float32Array => {
  const r = splitmix32(seed);
  return Float32Array.from({ length: n }, () => ((r() % 33) - 16) / 16);
};
/** Integers in [lo, hi). */
const ints = (n: number, seed: number, lo: number, hi: number): Int32Array => {
  const r = splitmix32(seed);
  return Int32Array.from({ length: n }, () => lo + (r() % (hi - lo)));
};
const bits = (n: number, seed: number): Uint32Array => {
  const r = splitmix32(seed);
  return Uint32Array.from({ length: n }, () => r());
};

const f32 = (shape: Shape, data: Float32Array): HostInput => ({ shape, dtype: "f32", data });
const U32 = (shape: Shape, data: Uint32Array): HostInput => ({ shape, dtype: "u32", data });
const I32 = (shape: Shape, data: Int32Array): HostInput => ({ shape, dtype: "i32", data });
/** Uniform f32 data of `shape` in [lo, hi). */
const F = (shape: Shape, seed: number, lo = -1, hi = 1): HostInput =>
  f32(shape, uniform(size(shape), seed, lo, hi));
/** Dyadic f32 data of `shape`. */
const D = (shape: Shape, seed: number): HostInput => f32(shape, dyadic(size(shape), seed));
/** i32 data of `shape` in [lo, hi). */
const I = (shape: Shape, seed: number, lo: number, hi: number): HostInput =>
  I32(shape, ints(size(shape), seed, lo, hi));

const DTYPES: readonly DType[] = ["f32", "i32", "u32"];
/** Data of any dtype (for the layout kernels, which copy values). */
const anyData = (shape: Shape, dtype: DType, seed: number): HostInput =>
  dtype === "f32"
    ? F(shape, seed)
    : dtype === "i32"
    ? I(shape, seed, -100000, 100000)
    : U32(shape, bits(size(shape), seed));

/** Shapes of rank in [minRank, maxRank] with awkward extents up to maxDim. */
const shapeArb = (maxRank: number, maxDim: number, minRank = 0): fc.Arbitrary<number[]> =>
  fc.array(dim(maxDim), { minLength: minRank, maxLength: maxRank });
/**
 * `arb`'s shapes and, one time in seven, one of them emptied: an axis set to 0, or with `keepLast` (row kernels,
 * whose last axis must not be empty) a leading 0 axis (no rows).
 */
const sometimesEmpty = (arb: fc.Arbitrary<number[]>, keepLast = false): fc.Arbitrary<number[]> =>
  fc.oneof({ weight: 6, arbitrary: arb }, {
    weight: 1,
    arbitrary: arb.chain((s) =>
      keepLast || s.length === 0
        ? fc.constant<number[]>([0, ...s])
        : fc.nat(s.length - 1).map((i) => s.map((d, j) => (j === i ? 0 : d)))
    ),
  });
/** A small awkward shape or a long vector (past one 256-wide workgroup), sometimes empty. */
const elementwiseShape: fc.Arbitrary<number[]> = sometimesEmpty(
  fc.oneof(shapeArb(3, 9), dim(700).map((n) => [n])),
);
/** Rows for the row kernels: small awkward ones, a few rows longer than a 256-wide workgroup, or none. */
const rowShape: fc.Arbitrary<number[]> = sometimesEmpty(
  fc.oneof(shapeArb(3, 9, 1), fc.tuple(dim(3), fc.integer({ min: 250, max: 700 }))),
  true,
);

/** Run a kernel's CPU reference in f64 on host inputs (to derive valid inputs of another kernel). */
const reference = <P>(k: Kernel<P>, params: P, inputs: readonly HostInput[]): HostArray[] => {
  const ins = inputs.map((x) => ({
    shape: x.shape,
    data: x.dtype === "f32" ? Float64Array.from(x.data) : x.data.slice(),
  }));
  const outs = k.infer(params, inputs).map((s) => ({
    shape: s.shape,
    data: s.alias !== undefined
      ? ins[s.alias].data
      : s.dtype === "f32"
      ? new Float64Array(size(s.shape))
      : s.dtype === "i32"
      ? new Int32Array(size(s.shape))
      : new Uint32Array(size(s.shape)),
  }));
  k.cpu(params, ins, outs);
  return outs.map((o) => o.data);
};
/** f64 reference results rounded to f32, as an input. */
const asF32 = (shape: Shape, data: HostArray): HostInput => f32(shape, Float32Array.from(data));

// ---- comparisons --------------------------------------------------------------------------------------------

/** `got` within `check` of `want` (see Check). */
export const assertCheck = (
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  check: Check,
  what: string,
): void => {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} values, expected ${want.length}`);
  for (let i = 0; i < got.length; i++) {
    const a = got[i], e = want[i];
    const ok = check === "exact"
      ? Object.is(a, e) || a === e || (Number.isNaN(a) && Number.isNaN(e))
      : a === e || (Number.isNaN(a) && Number.isNaN(e)) ||
        Math.abs(a - e) <= check.atol + check.rtol * Math.abs(e);
    if (!ok) {
      throw new Error(
        `${what}[${i}] = ${a}, expected ${e} (${
          check === "exact" ? "exact" : `atol ${check.atol}, rtol ${check.rtol}`
        })`,
      );
    }
  }
};

// ---- shared generators ----------------------------------------------------------------------------------------

const HYPER = fc.record({
  lr: fc.constantFrom(0.01, 0.05),
  beta1: fc.constantFrom(0.9, 0.8),
  beta2: fc.constantFrom(0.999, 0.99),
  eps: fc.constantFrom(1e-8, 1e-6),
  weightDecay: fc.constantFrom(0, 0.05),
  step: fc.integer({ min: 1, max: 5 }),
  maxGradNorm: fc.constantFrom(undefined, 0.5, 100),
});
/** AdamW tensors p, g, m, v (and a 0/1 decay mask): |m| <= 0.1 and v in [0.001, 0.011] bound |m^ / sqrt(v^)|. */
const adamState = (n: number, seed: number, mask: boolean): HostInput[] => [
  F([n], seed),
  F([n], seed + 1),
  F([n], seed + 2, -0.1, 0.1),
  F([n], seed + 3, 0.001, 0.011),
  ...(mask ? [f32([n], Float32Array.from(ints(n, seed + 4, 0, 2)))] : []),
];
/**
 * AdamW outputs p, m, v (and the norm), with |g| <= 1, |m| <= 0.1, v in [0.001, 0.011], b1 >= 0.8, lr <= 0.05:
 * - m = b1 m + (1 - b1) s g can cancel: its terms are <= 0.29, so a few u of that (5e-8) plus the clip factor s's
 *   error (the norm's, <= 1e-6 relative) times |(1 - b1) g| <= 0.2: atol 5e-7;
 * - v's terms are positive: a few u plus twice the clip error, relative: rtol 1e-5;
 * - p: m's error / c1 (>= 0.1) / sqrt(v^) (>= 0.031) times lr moves the update by <= 4e-6, the update itself
 *   (<= 61 lr) carries a few u: atol 2e-5;
 * - the norm sums n <= 4099 squares in per-invocation runs and an 8-level tree: (n / (256 groups) + 8 + log2 groups)
 *   u relative <= 2e-6 (halved by the sqrt); rtol 1e-5.
 */
const ADAM_TOL: readonly Check[] = [
  { atol: 2e-5, rtol: 1e-6 },
  { atol: 5e-7, rtol: 1e-5 },
  { atol: 1e-10, rtol: 1e-5 },
  { atol: 0, rtol: 1e-5 },
];

/** Attention dims: B, T queries, S keys, Hkv, group size G (Hq = G Hkv), D; offset given or the default S - T. */
const attnArb = fc.record({
  b: fc.integer({ min: 1, max: 2 }),
  t: dim(7),
  extra: fc.integer({ min: 0, max: 4 }),
  hkv: fc.integer({ min: 1, max: 2 }),
  g: fc.constantFrom(1, 2, 3),
  d: fc.constantFrom(1, 3, 4, 5, 8, 16),
  offset: fc.option(fc.integer({ min: 0, max: 9 }), { nil: undefined }),
  scale: fc.option(fc.constantFrom(0.3, 1.1), { nil: undefined }),
  unroll: fc.option(fc.boolean(), { nil: undefined }),
  seed: seedArb,
}).map((a) => {
  // With no offset, S >= T; with one, any S >= 1.
  const s = a.offset === undefined ? a.t + a.extra : Math.max(1, a.t + a.extra - 3);
  return { ...a, s, hq: a.g * a.hkv };
});
type AttnDims = typeof attnArb extends fc.Arbitrary<infer A> ? A : never;
const attnParams = (a: AttnDims) => ({ scale: a.scale, offset: a.offset, unroll: a.unroll });
/** q, k, v in [-1, 1) and the forward's O, L (f64, rounded to f32). */
const attnForward = (a: AttnDims) => {
  const q = F([a.b, a.t, a.hq, a.d], a.seed);
  const k = F([a.b, a.s, a.hkv, a.d], a.seed + 1);
  const v = F([a.b, a.s, a.hkv, a.d], a.seed + 2);
  const [o, l] = reference(KERNELS.attention, attnParams(a), [q, k, v]);
  return { q, k, v, o: asF32(q.shape, o), l: asF32([a.b, a.hq, a.t], l) };
};
/**
 * Attention gradients (as tests/attention_test.ts): each entry sums up to G T terms P (dP - Delta) q or k with
 * |P| <= 1; the f32 error of P (~3e-6 relative) and of the accumulation give ~1e-5 of the gradient scale.
 */
const ATTN_GRAD_TOL: Check = { atol: 1e-4, rtol: 1e-4 };

/** A fresh streaming-KL state (R, 5): running maxima at NEG_BIG, sums at 0. */
const klInit = (n: number) =>
  new Float32Array(5 * n).map((_, i) => (i % 5 === 0 || i % 5 === 3 ? NEG_BIG : 0));
/** A readout state (R, 4): max NEG_BIG, sums and the target's z 0. */
const readoutInit = (n: number) => new Float32Array(4 * n).map((_, i) => (i % 4 === 0 ? NEG_BIG : 0));

/** A vocabulary chunk problem with a temperature from `temperatures` (a literal in the fold kernels' WGSL). */
const chunkOf = (temperatures: readonly number[]) =>
  fc.record({
    n: dim(9), // >= 1: the readout kernels fail on 0 rows (see ZERO_SIZE_REGRESSIONS)
    c: fc.oneof(dim(70), fc.integer({ min: 250, max: 300 })),
    start: fc.constantFrom(0, 3, 64),
    /** How far the vocabulary reaches into the chunk: past it (no padding), inside it (padding) or before it. */
    reach: fc.integer({ min: -2, max: 2 }),
    temperature: fc.constantFrom(...temperatures),
    prior: fc.boolean(),
    seed: seedArb,
  }).map((a) => ({
    ...a,
    vocab: a.reach >= 0 ? a.start + a.c + a.reach : Math.max(1, a.start + a.c + 4 * a.reach),
  }));
const chunkArb = chunkOf([0.5, 1, 2]);
/** One temperature for the fold kernels: their barrier-heavy workgroup variant then compiles once per shape. */
const foldChunkArb = chunkOf([0.7]);

/** The stacked KL chunk (2R, C) in [-2, 2) and a state: fresh, or after folding an earlier chunk (f64). */
const klChunk = (a: typeof chunkArb extends fc.Arbitrary<infer A> ? A : never) => {
  const z = F([2 * a.n, a.c], a.seed, -2, 2);
  let st = f32([a.n, 5], klInit(a.n));
  if (a.prior) {
    const zp = F([2 * a.n, 7], a.seed + 5, -2, 2);
    st = asF32(
      [a.n, 5],
      reference(KERNELS.klFold, { start: 0, vocab: 7, temperature: a.temperature }, [st, zp])[0],
    );
  }
  return { z, st };
};
const readoutChunk = (a: typeof chunkArb extends fc.Arbitrary<infer A> ? A : never) => {
  const z = F([a.n, a.c], a.seed, -2, 2);
  const ids = I([a.n], a.seed + 1, 0, a.start + a.c + 2);
  let st = f32([a.n, 4], readoutInit(a.n));
  if (a.prior) {
    const zp = F([a.n, 7], a.seed + 5, -2, 2);
    st = asF32(
      [a.n, 4],
      reference(KERNELS.readoutFold, { start: 0, vocab: 7, temperature: a.temperature }, [st, zp, ids])[0],
    );
  }
  return { z, ids, st };
};
/**
 * Online log-sum-exp states, column by column. Each sum adds at most C + 7 terms e^(x - m) <= 1 (times |u - v| <= 8
 * for KL's w) whose f32 exp carries <= 3 + 2|x| <= 19 ulps (|x| <= 8) and whose summation (sequential per row, or
 * strided plus a tree, with rescalings) carries <= (C + 8) u of the absolute sum: atol (C + 7) ((C + 8) u +
 * 19 * 2^-23), times 8 for w. The maxima and the target's z/T differ by the rounding of z * f32(1/T) (rtol 1e-6).
 */
const foldCompare =
  (width: number, sums: readonly number[], weighted: readonly number[]) =>
  (got: Outputs, want: Outputs, p: Problem<unknown>): void => {
    const c = p.inputs[1].shape[1], n = got[0].length / width;
    const sumTol = (w: number): Check => ({ atol: w * (c + 7) * ((c + 8) * U + 19 * 2 ** -23), rtol: 1e-6 });
    for (let j = 0; j < width; j++) {
      const col = (a: ArrayLike<number>) => Array.from({ length: n }, (_, i) => a[i * width + j]);
      const tol = sums.includes(j) ? sumTol(weighted.includes(j) ? 8 : 1) : { atol: 1e-6, rtol: 1e-6 };
      assertCheck(col(got[0]), col(want[0]), tol, `state column ${j}`);
    }
  };

/** The sampling options of tests/sample_test.ts. */
const sampleOpts = fc.record({
  temperature: fc.constantFrom(0, 0.3, 1, 1.7),
  topK: fc.constantFrom(0, 1, 2, 5, 40, 100000),
  topP: fc.constantFrom(1, 0.95, 0.6, 0.1),
  seed: fc.nat(),
  step: fc.nat({ max: 1000 }),
});
/** Relative closeness to a CDF step or top-p cut within which f32 masses may pick another token (sample_test). */
const BOUNDARY = 1e-4;

// ---- the cases ------------------------------------------------------------------------------------------------

/** A cross-entropy problem: the sign, logits [..., C] and a seed. */
const crossEntropyArb = fc.record({ negate: fc.boolean(), shape: rowShape, seed: seedArb });
/** Its logits in [-4, 4) and a target in [0, C) per row. */
const crossEntropyInputs = ({ shape, seed }: { shape: number[]; seed: number }): HostInput[] => [
  F(shape, seed, -4, 4),
  I(shape.slice(0, -1), seed + 1, 0, shape[shape.length - 1]),
];

/** Every map of the unary elementwise kernel. */
export const UNARY_OPS: readonly UnaryOp[] = [
  "neg",
  "exp",
  "log",
  "sqrt",
  "rsqrt",
  "square",
  "abs",
  "recip",
  "relu",
  "sigmoid",
  "silu",
  "tanh",
  "scale",
  "addc",
  "powc",
  "step",
];

const exact = (): Check => "exact";
/** An f32 copy or gather moves bits: exact (i32 and u32 outputs are always compared exactly). */
const COPY = "a copy or gather of values: bit-exact";
const DYADIC = "dyadic data: every product and partial sum is exact in f32 in any order, so bit-exact";

/** Every registered kernel's case. A kernel in KERNELS without an entry here is a type error. */
export const CASES: { readonly [K in KernelName]: Case<KernelParams<K>> } = {
  accumulate: {
    arb: fc.record({ into: fc.boolean(), shape: elementwiseShape, seed: seedArb }).map((
      { into, shape, seed },
    ) => problem({ into }, [F(shape, seed), F(shape, seed + 1), ...(into ? [] : [F(shape, seed + 2)])])),
    tol: exact,
    ref: "f32",
    why:
      "one f32 addition per element, correctly rounded in WGSL as in the f32 reference (f64 sum rounded once)",
  },
  adamw: {
    // Past 16 x 256 elements each software invocation of the partial sums loops (4099).
    arb: fc.record({ h: HYPER, n: fc.oneof(dim(700), fc.constant(4099)), mask: fc.boolean(), seed: seedArb })
      .map(({ h, n, mask, seed }) => problem(h, adamState(n, seed, mask))),
    gpuRuns: 2, // the partial-sum and norm shaders embed n: two barrier-heavy compiles per shape
    tol: () => ADAM_TOL,
    why: "see ADAM_TOL: the bounded update's few-u error plus the clip factor's",
  },
  adamwSumsq: {
    arb: fc.record({
      slots: fc.integer({ min: 1, max: 3 }),
      slot: fc.nat(2),
      n: fc.oneof(dim(2000), fc.constant(4099)),
      seed: seedArb,
    })
      .map(
        ({ slots, slot, n, seed }) => {
          const s = Math.min(slot, slots - 1), S = slots * SLOT;
          const inRange = (i: number) => i >= s * SLOT && i < (s + 1) * SLOT;
          // Other chunks' slots hold earlier results (kept as they are); this chunk's range starts at zero.
          const sums = uniform(S, seed, 0, 4).map((x, i) => (inRange(i) ? 0 : x));
          const flags = Uint32Array.from(ints(S, seed + 1, 0, 3)).map((x, i) => (inRange(i) ? 0 : x));
          return problem({ slot: s }, [f32([S], sums), U32([S], flags), D([n], seed + 2)]);
        },
      ),
    why:
      "dyadic g: the partial sums of squares are exact. The GPU spreads a chunk's sum over up to SLOT partials in " +
      "its range where the reference writes the total in the first: compared are the range's sum and flag maximum, " +
      "and every slot outside the range bit for bit",
    gpuRuns: 2, // the partial-sum shader embeds n
    compare: (got, want, p) => {
      const s = p.params.slot * SLOT;
      const range = (a: ArrayLike<number>, f: (acc: number, x: number) => number) =>
        Array.from(a).slice(s, s + SLOT).reduce(f, 0);
      const outside = (a: ArrayLike<number>) => Array.from(a).filter((_, i) => i < s || i >= s + SLOT);
      for (const [o, name] of [[0, "sums"], [1, "flags"]] as const) {
        assertCheck(outside(got[o]), outside(want[o]), "exact", `${name} outside the slot range`);
      }
      assertCheck(
        [range(got[0], (a, x) => a + x)],
        [range(want[0], (a, x) => a + x)],
        "exact",
        "sum of the range",
      );
      assertCheck([range(got[1], Math.max)], [range(want[1], Math.max)], "exact", "flag of the range");
    },
  },
  adamwNorm: {
    arb: fc.record({
      n: fc.constantFrom(1, 64, 65, 320),
      flag: fc.constantFrom(0, 0, 1, 2),
      at: fc.nat(),
      seed: seedArb,
    }).map(
      ({ n, flag, at, seed }) => {
        const flags = new Uint32Array(n);
        if (flag) flags[at % n] = flag;
        return problem({}, [f32([n], dyadic(n, seed).map((x) => x * x)), U32([n], flags)]);
      },
    ),
    tol: () => ({ atol: 0, rtol: 4 * 2 ** -23 }),
    why:
      "dyadic squares: the sum is exact, the norm is one f32 sqrt (<= 2.5 ulp in WGSL) of it; flags give +inf/NaN",
    gpuRuns: 2, // the norm shader embeds n
    finite: (p) => p.inputs[1].data.every((f) => f === 0),
  },
  adamwUpdate: {
    arb: fc.record({
      h: HYPER,
      n: dim(700),
      mask: fc.boolean(),
      norm: fc.constantFrom(0.3, 2.5, 40, Infinity, NaN),
      seed: seedArb,
    }).map(({ h, n, mask, norm, seed }) => {
      const [p, g, m, v, dm] = adamState(n, seed, mask);
      return problem(h, [p, g, m, v, f32([], new Float32Array([norm])), ...(dm ? [dm] : [])]);
    }),
    tol: () => ADAM_TOL.slice(0, 3),
    why: "ADAM_TOL (the norm is given exactly here); a non-finite norm leaves p, m, v bit-identical",
  },
  attention: {
    arb: attnArb.map((a) => {
      const f = attnForward(a);
      return problem(attnParams(a), [f.q, f.k, f.v]);
    }),
    tol: () => ({ atol: 3e-5, rtol: 1e-5 }),
    why:
      "as tests/attention_test.ts: D-term f32 scores and exp move the softmax weights a few u; O is a convex " +
      "combination of |v| <= 1 and L is ~log S + max score",
  },
  attentionBwdQ: {
    arb: fc.tuple(attnArb, fc.boolean()).map(([a, withDL]) => {
      const f = attnForward(a);
      const dO = F(f.q.shape, a.seed + 3), dL = F(f.l.shape, a.seed + 4);
      return problem({ ...attnParams(a), withDL }, [f.q, f.k, f.v, f.o, dO, f.l, ...(withDL ? [dL] : [])]);
    }),
    tol: () => ATTN_GRAD_TOL,
    why: "see ATTN_GRAD_TOL (inputs O and L from the f64 forward)",
  },
  attentionBwdKV: {
    arb: fc.tuple(attnArb, fc.option(fc.constantFrom(1, 2, 3), { nil: undefined })).map(([a, kvChunk]) => {
      const f = attnForward(a);
      const dO = F(f.q.shape, a.seed + 3);
      const [, delta] = reference(KERNELS.attentionBwdQ, attnParams(a), [f.q, f.k, f.v, f.o, dO, f.l]);
      return problem({ ...attnParams(a), kvChunk }, [f.q, f.k, f.v, dO, f.l, asF32(f.l.shape, delta)]);
    }),
    tol: () => ATTN_GRAD_TOL,
    why: "see ATTN_GRAD_TOL (kvChunk < T takes the chunked pass and its combine)",
  },
  fillZero: {
    arb: fc.record({ shape: elementwiseShape, dtype: fc.constantFrom(...DTYPES), seed: seedArb }).map((a) =>
      problem({}, [anyData(a.shape, a.dtype, a.seed)])
    ),
    tol: exact,
    why: "writes zeros: exact",
  },
  putColumns: {
    arb: fc.record({
      n: dim(9),
      c: dim(70),
      before: fc.constantFrom(0, 1, 5),
      after: fc.constantFrom(0, 2, 64),
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    }).map((a) =>
      problem({ start: a.before }, [
        anyData([a.n, a.before + a.c + a.after], a.dtype, a.seed),
        anyData([a.n, a.c], a.dtype, a.seed + 1),
      ])
    ),
    tol: exact,
    why: COPY,
  },
  takeColumns: {
    arb: fc.record({
      n: dim(9),
      v: dim(70),
      start: fc.nat(70),
      count: fc.nat(70),
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    }).map((a) => {
      const start = a.start % (a.v + 1), count = a.count % (a.v - start + 1);
      return problem({ start, count }, [anyData([a.n, a.v], a.dtype, a.seed)]);
    }),
    tol: exact,
    why: COPY,
  },
  column: {
    arb: fc.record({
      b: dim(9),
      t: dim(9),
      d: fc.option(dim(33), { nil: undefined }),
      at: fc.nat(),
      dtype: fc.constantFrom<DType>("f32", "i32"),
      seed: seedArb,
    }).map((a) =>
      problem({ t: a.at % a.t }, [anyData(a.d === undefined ? [a.b, a.t] : [a.b, a.t, a.d], a.dtype, a.seed)])
    ),
    tol: exact,
    why: COPY,
  },
  appendToken: {
    arb: fc.record({
      b: dim(9),
      t: dim(9),
      at: fc.nat(),
      stop: fc.option(fc.constant(3), { nil: undefined }),
      // Extra stop ids up to the eight slots (eos and stop among them, repeats allowed).
      stops: fc.option(fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 6 }), { nil: undefined }),
      maxNew: fc.option(fc.integer({ min: 1, max: 9 }), { nil: undefined }),
      seed: seedArb,
    }).map((a) =>
      problem({ t: a.at % a.t, eos: 2, pad: 0, stop: a.stop, stops: a.stops, maxNew: a.maxNew }, [
        I([a.b, a.t], a.seed, 0, 6),
        I([a.b], a.seed + 1, 0, 2),
        I([a.b], a.seed + 2, 0, 6),
        I([a.b], a.seed + 3, 0, a.t + 1),
      ])
    ),
    tol: exact,
    why: "integer writes: exact",
  },
  unary: {
    arb: fc.record({
      op: fc.constantFrom(...UNARY_OPS),
      c: fc.constantFrom(-1.5, 0.5, 2, 3),
      shape: elementwiseShape,
      seed: seedArb,
    }).map(({ op, c, shape, seed }) => {
      const n = size(shape);
      const x = op === "log" || op === "sqrt" || op === "rsqrt"
        ? uniform(n, seed, 0.05, 4)
        : op === "powc"
        ? uniform(n, seed, 0.25, 2)
        : op === "recip"
        ? uniform(n, seed, 0.25, 2).map((v, i) => (i % 2 ? -v : v))
        : uniform(n, seed, -4, 4);
      return problem({ op, c: op === "scale" || op === "addc" || op === "powc" ? c : undefined }, [
        f32(shape, x),
      ]);
    }),
    tol: () => ({ atol: 1e-6, rtol: 1e-5 }),
    why:
      "one WGSL builtin per element on |x| <= 4 (domains kept valid): exp and pow <= 3 + 2|x| ulps, log, sqrt, " +
      "division a few ulps; rtol 1e-5 is >= 10x that, atol 1e-6 for log near 1 (absolute accuracy there)",
  },
  binary: {
    arb: fc.record({
      op: fc.constantFrom("add", "sub", "mul", "div", "max", "min", "ge"),
      out: sometimesEmpty(shapeArb(3, 9)),
      seed: seedArb,
    }).chain((a) =>
      fc.tuple(broadcastOperand(a.out), broadcastOperand(a.out)).map(([sa, sb]) => {
        const b = a.op === "div"
          ? uniform(size(sb), a.seed + 1, 0.5, 2).map((v, i) => (i % 2 ? -v : v))
          : uniform(size(sb), a.seed + 1);
        return problem({ op: a.op }, [F(sa, a.seed), f32(sb, b)]);
      })
    ),
    tol: () => ({ atol: 0, rtol: 1e-6 }),
    why: "one correctly rounded f32 operation (division <= 2.5 ulp) of f32 inputs: <= 3e-7 relative",
  },
  sumTo: {
    arb: fc.oneof(
      fc.record({ x: sometimesEmpty(shapeArb(3, 9, 1)), seed: seedArb }).chain(({ x, seed }) =>
        broadcastOperand(x).map((shape) => problem({ shape }, [D(x, seed)]))
      ),
      // Past SUMTO_DIRECT (4096) reduced elements: the two-level form.
      fc.record({
        r: fc.integer({ min: 4097, max: 6000 }),
        c: fc.constantFrom(1, 3),
        lead: fc.boolean(),
        seed: seedArb,
      })
        .map(({ r, c, lead, seed }) => problem({ shape: lead ? [1, c] : [c] }, [D([r, c], seed)])),
    ),
    tol: exact,
    why: DYADIC,
  },
  expand: {
    arb: fc.record({ out: sometimesEmpty(shapeArb(3, 9)), seed: seedArb }).chain(({ out, seed }) =>
      broadcastOperand(out).map((shape) => problem({ shape: out }, [F(shape, seed)]))
    ),
    tol: exact,
    why: COPY,
  },
  embedding: {
    arb: fc.record({ v: dim(33), d: dim(33), ids: fc.oneof(shapeArb(2, 9), fc.constant([0])), seed: seedArb })
      .map((a) => problem({}, [F([a.v, a.d], a.seed), I(a.ids, a.seed + 1, -1, a.v + 1)])),
    tol: exact,
    why: COPY + " (ids -1 and V read zeros on both)",
  },
  embeddingGrad: {
    arb: fc.record({
      vocab: dim(33),
      d: dim(33),
      ids: fc.oneof(shapeArb(2, 17), fc.constant([0])),
      seed: seedArb,
    }).map((a) =>
      problem({ vocab: a.vocab }, [D([...a.ids, a.d], a.seed), I(a.ids, a.seed + 1, -1, a.vocab + 1)])
    ),
    tol: exact,
    why: DYADIC + " (repeated ids sum; ids -1 and V contribute nothing; no positions give zeros)",
  },
  embeddingGradPrep: {
    // Not ids of shape [0]: with no positions the GPU leaves head unwritten (see ZERO_SIZE_REGRESSIONS).
    arb: fc.record({ vocab: dim(33), d: dim(17), ids: shapeArb(2, 17), seed: seedArb }).map((a) =>
      problem({ vocab: a.vocab }, [D([...a.ids, a.d], a.seed), I(a.ids, a.seed + 1, -1, a.vocab + 1)])
    ),
    why: DYADIC +
      "; part rows other than an id's first position in its block are unspecified, so only head " +
      "(exact) and those rows are compared",
    compare: (got, want, p) => {
      assertCheck(got[0], want[0], "exact", "head");
      const [head, part] = want;
      const ids = p.inputs[1].data, d = p.inputs[0].shape[p.inputs[0].shape.length - 1];
      for (let t = 0; t < ids.length; t++) {
        const id = ids[t];
        if (id < 0 || id >= p.params.vocab || head[id] !== t) continue; // one block: head[id] is its first position
        assertCheck(
          got[1].subarray(t * d, (t + 1) * d),
          part.subarray(t * d, (t + 1) * d),
          "exact",
          `part row ${t}`,
        );
      }
    },
  },
  embeddingGradRows: {
    arb: fc.record({
      vocab: dim(33),
      d: dim(17),
      t: dim(17),
      blocks: fc.integer({ min: 1, max: 3 }),
      start: fc.nat(),
      rows: fc.nat(),
      seed: seedArb,
    }).map((a) => {
      const start = a.start % a.vocab, rows = 1 + a.rows % (a.vocab - start);
      // A chain head per (block, id): a position of part, or none (0xffffffff), as embeddingGradPrep leaves it.
      const head = Uint32Array.from(ints(a.blocks * a.vocab, a.seed, -a.t, a.t)).map((
        x,
      ) => (x >= 0 ? x : 0xffffffff));
      return problem({ start, vocab: a.vocab }, [
        F([rows, a.d], a.seed + 1),
        U32([a.blocks * a.vocab], head),
        D([a.t, a.d], a.seed + 2),
      ]);
    }),
    tol: exact,
    why: DYADIC + " (each entry adds one part row per block)",
  },
  embeddingBlock: {
    arb: fc.record({
      v: dim(17),
      d: dim(33),
      ids: shapeArb(2, 9),
      start: fc.constantFrom(0, 2, 64),
      seed: seedArb,
    })
      .map((a) =>
        problem({ start: a.start }, [
          F([...a.ids, a.d], a.seed),
          F([a.v, a.d], a.seed + 1),
          I(a.ids, a.seed + 2, a.start - 3, a.start + a.v + 3),
        ])
      ),
    tol: exact,
    why: COPY + " (rows of ids outside the block keep their values)",
  },
  klFold: {
    arb: foldChunkArb.map((a) => {
      const { z, st } = klChunk(a);
      return problem({ start: a.start, vocab: a.vocab, temperature: a.temperature }, [st, z]);
    }),
    compare: foldCompare(5, [1, 2, 4], [2]),
    why: "see foldCompare: f32 exp and the summation of the chunk's terms, column by column",
  },
  klFinish: {
    arb: chunkArb.map((a) => {
      const { z, st } = klChunk({ ...a, start: 0, vocab: a.c });
      const state =
        reference(KERNELS.klFold, { start: 0, vocab: a.c, temperature: a.temperature }, [st, z])[0];
      return problem({}, [asF32([a.n, 5], state)]);
    }),
    tol: () => ({ atol: 1e-5, rtol: 1e-5 }),
    why:
      "two f32 logs (a few ulps of values <= ~log C + 4) and KL = w/s - lse_a + lse_b, a cancelling sum of " +
      "terms <= ~10: <= 1e-6 absolute",
  },
  klGrad: {
    arb: fc.tuple(chunkArb, fc.constantFrom<"none" | "a" | "b">("none", "a", "b")).map(([a, detach]) => {
      const { z } = klChunk(a);
      const full = { start: 0, vocab: a.c, temperature: a.temperature };
      const st = reference(KERNELS.klFold, full, [f32([a.n, 5], klInit(a.n)), z])[0];
      const [fin] = reference(KERNELS.klFinish, {}, [asF32([a.n, 5], st)]);
      return problem({ start: a.start, vocab: a.vocab, temperature: a.temperature, detach }, [
        z,
        asF32([a.n, 3], fin),
        F([a.n], a.seed + 9),
      ]);
    }),
    tol: () => ({ atol: 1e-6, rtol: 1e-4 }),
    why:
      "as tests/kl_test.ts: p = exp(z/T - lse) carries a few ulps of exp and of lse (~1e-6 relative), times " +
      "log-ratio terms <= ~10 and 1/T <= 2",
  },
  kvWrite: {
    arb: fc.record({
      b: fc.integer({ min: 1, max: 2 }),
      tlen: dim(9),
      n: dim(4),
      at: fc.nat(),
      h: fc.integer({ min: 1, max: 3 }),
      d: dim(17),
      seed: seedArb,
    }).map((a) => {
      const n = Math.min(a.n, a.tlen), cache = [a.b, a.tlen, a.h, a.d], kv = [a.b, n, a.h, a.d];
      return problem({ t: a.at % (a.tlen - n + 1) }, [
        F(cache, a.seed),
        F(cache, a.seed + 1),
        F(kv, a.seed + 2),
        F(kv, a.seed + 3),
      ]);
    }),
    tol: exact,
    why: COPY,
  },
  decodeAttention: {
    arb: fc.record({
      b: fc.integer({ min: 1, max: 2 }),
      tlen: dim(17),
      at: fc.nat(),
      hkv: fc.integer({ min: 1, max: 2 }),
      g: fc.constantFrom(1, 2, 3),
      d: fc.constantFrom(1, 3, 4, 8, 16),
      chunk: fc.option(fc.constantFrom(1, 2, 3, 5), { nil: undefined }),
      scale: fc.option(fc.constant(0.4), { nil: undefined }),
      seed: seedArb,
    }).map((a) => {
      const cache = [a.b, a.tlen, a.hkv, a.d];
      return problem({ t: a.at % a.tlen, scale: a.scale, chunk: a.chunk }, [
        F([a.b, 1, a.g * a.hkv, a.d], a.seed, -2, 2),
        F(cache, a.seed + 1, -2, 2),
        F(cache, a.seed + 2),
      ]);
    }),
    tol: () => ({ atol: 5e-6, rtol: 1e-5 }),
    why:
      "as tests/kvcache_test.ts: scores <= 4 sqrt(D), f32 exp and an online softmax over <= 17 keys of v in " +
      "[-1, 1]: a few ulps",
  },
  permute: {
    arb: fc.record({ shape: shapeArb(4, 9, 1), dtype: fc.constantFrom(...DTYPES), seed: seedArb }).chain((
      a,
    ) =>
      fc.shuffledSubarray(a.shape.map((_, i) => i), { minLength: a.shape.length, maxLength: a.shape.length })
        .map(
          (perm) => problem({ perm }, [anyData(a.shape, a.dtype, a.seed)]),
        )
    ),
    tol: exact,
    why: COPY,
  },
  copy: {
    arb: fc.record({
      shape: elementwiseShape,
      flat: fc.boolean(),
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    })
      .map((a) =>
        problem({}, [
          anyData(a.flat ? [size(a.shape)] : a.shape, a.dtype, a.seed),
          anyData(a.shape, a.dtype, a.seed + 1),
        ])
      ),
    tol: exact,
    why: COPY,
  },
  sliceRows: {
    arb: fc.record({
      shape: shapeArb(3, 9, 1),
      start: fc.nat(),
      count: fc.nat(),
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    }).map((a) => {
      const rows = a.shape[0], start = a.start % (rows + 1), count = a.count % (rows - start + 1);
      return problem({ start, count }, [anyData(a.shape, a.dtype, a.seed)]);
    }),
    tol: exact,
    why: COPY,
  },
  zerosLike: {
    arb: fc.record({
      like: shapeArb(2, 5),
      shape: elementwiseShape,
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    })
      .map((a) => problem({ shape: a.shape }, [anyData(a.like, a.dtype, a.seed)])),
    tol: exact,
    why: "writes zeros: exact",
  },
  concatRows: {
    arb: fc.record({
      rows: fc.array(dim(9), { minLength: 1, maxLength: 4 }),
      rest: shapeArb(2, 9),
      dtype: fc.constantFrom(...DTYPES),
      seed: seedArb,
    }).map((a) => problem({}, a.rows.map((r, i) => anyData([r, ...a.rest], a.dtype, a.seed + i)))),
    tol: exact,
    why: COPY,
  },
  matmul: {
    arb: fc.record({
      M: dim(40),
      K: fc.oneof({ weight: 4, arbitrary: dim(40) }, { weight: 1, arbitrary: fc.constantFrom(0, 64) }),
      N: fc.oneof(dim(40), fc.constant(64)),
      batches: batchPair,
      transA: fc.boolean(),
      transB: fc.boolean(),
      variant: fc.constantFrom<MatmulVariant | undefined>(undefined, undefined, "buffer"),
      seed: seedArb,
    }).map(({ M, K, N, batches: [ba, bb], transA, transB, variant, seed }) =>
      problem({ transA, transB, variant }, [
        D([...ba, ...(transA ? [K, M] : [M, K])], seed),
        D([...bb, ...(transB ? [N, K] : [K, N])], seed + 1),
      ])
    ),
    tol: exact,
    why: DYADIC + " (|C| <= K <= 64 in steps of 2^-8: 14 bits); K = 64 or N = 64 takes the texture copies",
    slowHardware:
      "the tiled kernel takes 20-80 s per shape to compile on llvmpipe (barriers; see tests/matmul_test.ts, " +
      "which runs one tiled case by default and its random property with BUPO_SLOW_TESTS=1)",
  },
  swiglu: {
    arb: fc.record({ shape: elementwiseShape, seed: seedArb }).map(({ shape, seed }) =>
      problem({}, [F(shape, seed, -4, 4), F(shape, seed + 1)])
    ),
    tol: () => ({ atol: 1e-6, rtol: 1e-5 }),
    why: "as tests/mlp_test.ts: one exp (<= 11 ulps for |g| <= 4), a division and two products per element",
  },
  swigluBwd: {
    arb: fc.record({ shape: elementwiseShape, seed: seedArb }).map(({ shape, seed }) =>
      problem({}, [F(shape, seed, -4, 4), F(shape, seed + 1), F(shape, seed + 2)])
    ),
    tol: () => ({ atol: 1e-6, rtol: 1e-5 }),
    why: "as swiglu: the sigmoid's few ulps and a handful of products and sums of values <= ~5",
  },
  philox: {
    arb: fc.record({ n: dim(300), seed: seedArb }).map(({ n, seed }) =>
      problem({}, [U32([n, 6], bits(6 * n, seed))])
    ),
    tol: exact,
    why: "integer hashing: bit-exact (tests/rng_test.ts)",
  },
  readoutFold: {
    arb: foldChunkArb.map((a) => {
      const { z, ids, st } = readoutChunk(a);
      return problem({ start: a.start, vocab: a.vocab, temperature: a.temperature }, [st, z, ids]);
    }),
    compare: foldCompare(4, [1, 2], [2]),
    hardwareRuns: 1, // the workgroup variant's text embeds R and C: seconds of compilation per shape
    why: "see foldCompare (w = sum e z/T carries |z/T| <= 4 <= 8; the target's z/T is one rounded product)",
  },
  readoutGrad: {
    arb: chunkArb.map((a) => {
      const { z, ids } = readoutChunk(a);
      const full = { start: 0, vocab: a.c, temperature: a.temperature };
      const st = reference(KERNELS.readoutFold, full, [f32([a.n, 4], readoutInit(a.n)), z, ids])[0];
      const [fin] = reference(KERNELS.readoutFinish, {}, [asF32([a.n, 4], st)]);
      return problem({ start: a.start, vocab: a.vocab, temperature: a.temperature }, [
        z,
        ids,
        asF32([a.n, 3], fin),
        F([a.n], a.seed + 7),
        F([a.n], a.seed + 8),
      ]);
    }),
    tol: () => ({ atol: 2e-6, rtol: 1e-4 }),
    why: "as tests/readout_test.ts: p = exp(z/T - lse) a few ulps, times terms <= ~8 and 1/T <= 2",
  },
  readoutFinish: {
    arb: chunkArb.map((a) => {
      const { z, ids, st } = readoutChunk({ ...a, start: 0, vocab: a.c });
      const state = reference(KERNELS.readoutFold, { start: 0, vocab: a.c, temperature: a.temperature }, [
        st,
        z,
        ids,
      ]);
      return problem({}, [asF32([a.n, 4], state[0])]);
    }),
    tol: () => ({ atol: 1e-5, rtol: 1e-5 }),
    why: "one f32 log and division: a few ulps of values <= ~log C + 4, and lse - E[z/T] cancelling to >= 0",
  },
  readoutTopK: {
    arb: fc.tuple(chunkArb, fc.constantFrom(1, 2, 5, 16), fc.boolean()).map(([a, k, ties]) => {
      const z = F([a.n, a.c], a.seed, -2, 2);
      if (ties) z.data.forEach((x, i, arr) => (arr[i] = Math.round(x * 4) / 4));
      let st = f32(
        [a.n, 2 * k],
        new Float32Array(2 * k * a.n).map((_, i) => (i % (2 * k) < k ? NEG_BIG : -1)),
      );
      if (a.prior) {
        const zp = F([a.n, 9], a.seed + 5, -2, 2);
        st = asF32(
          st.shape,
          reference(KERNELS.readoutTopK, { start: 0, vocab: 9, temperature: a.temperature, k }, [st, zp])[0],
        );
      }
      return problem({ start: a.start, vocab: a.vocab, temperature: a.temperature, k }, [st, z]);
    }),
    tol: exact,
    ref: "f32",
    why:
      "comparisons of z * f32(1/T), one correctly rounded product on both sides (ties to the lower id): exact",
  },
  readoutTopKFinish: {
    arb: fc.tuple(chunkArb, fc.constantFrom(1, 3, 16)).map(([a, k]) => {
      const z = F([a.n, a.c], a.seed, -2, 2);
      const init = f32(
        [a.n, 2 * k],
        new Float32Array(2 * k * a.n).map((_, i) => (i % (2 * k) < k ? NEG_BIG : -1)),
      );
      const st = reference(KERNELS.readoutTopK, { start: 0, vocab: a.c, temperature: a.temperature, k }, [
        init,
        z,
      ]);
      return problem({ k }, [asF32(init.shape, st[0]), F([a.n, 3], a.seed + 1, 0, 6)]);
    }),
    tol: exact,
    ref: "f32",
    why:
      "one correctly rounded f32 subtraction per log-prob and an exact f32-to-i32 id: equal to the f32 reference",
  },
  reduce: {
    arb: fc.record({
      op: fc.constantFrom("sum", "mean", "max"),
      shape: rowShape,
      seed: seedArb,
    }).map(({ op, shape, seed }) => problem({ op }, [D(shape, seed)])),
    tol: (p) => (p.params.op === "mean" ? { atol: 0, rtol: 8 * 2 ** -23 } : "exact"),
    why: DYADIC + "; mean divides the exact sum once (<= 2.5 ulp in WGSL); max is a comparison",
  },
  maxGrad: {
    arb: fc.record({
      shape: rowShape,
      seed: seedArb,
    })
      .map(({ shape, seed }) => problem({}, [D(shape, seed), F(shape.slice(0, -1), seed + 1)])),
    tol: exact,
    why: "routes dy to the first argmax (dyadic data: many ties): a comparison and a copy, exact",
  },
  sumSquares: {
    arb: fc.record({
      shape: fc.oneof(shapeArb(3, 9), dim(5000).map((n) => [n]), fc.constant([0])),
      seed: seedArb,
    })
      .map(({ shape, seed }) => problem({}, [D(shape, seed)])),
    tol: exact,
    why: DYADIC + " (squares are multiples of 2^-8, the sum <= 5000)",
  },
  rmsNorm: {
    arb: fc.record({
      shape: rowShape,
      eps: fc.constantFrom(1e-6, 1e-5),
      seed: seedArb,
    })
      .map(({ shape, eps, seed }) =>
        problem({ eps }, [
          f32(shape, uniform(size(shape), seed).map((v) => Math.sign(v || 1) * (0.25 + 0.75 * Math.abs(v)))),
          F([shape[shape.length - 1]], seed + 1),
        ])
      ),
    tol: () => ({ atol: 1e-7, rtol: 2e-6 }),
    why: "as tests/rmsnorm_test.ts: r carries the row sum's (d/256 + 8) u and the sqrt/division a few u: " +
      "<= (d/256 + 12) u relative, rtol 2e-6",
  },
  rmsNormGrad: {
    arb: fc.record({
      shape: fc.oneof(shapeArb(3, 9, 1), fc.tuple(fc.integer({ min: 65, max: 140 }), dim(9))),
      eps: fc.constantFrom(1e-6, 1e-5),
      seed: seedArb,
    }).map(({ shape, eps, seed }) =>
      problem({ eps }, [
        f32(shape, uniform(size(shape), seed).map((v) => Math.sign(v || 1) * (0.25 + 0.75 * Math.abs(v)))),
        F([shape[shape.length - 1]], seed + 1),
        F(shape, seed + 2),
      ])
    ),
    tol: (p) => {
      const rows = size(p.inputs[0].shape.slice(0, -1));
      return [{ atol: 5e-5, rtol: 1e-5 }, {
        atol: (64 + Math.ceil(rows / 64) + 15) * U * 4 * rows,
        rtol: 1e-6,
      }];
    },
    why:
      "as tests/rmsnorm_test.ts: dx's two terms <= ~16 carry (d/256 + 12) u each; dw sums `rows` terms <= 4 in " +
      "chunks of 64 then over the chunks (rows > 64 takes the two-level form)",
  },
  rope: {
    arb: fc.record({
      b: fc.integer({ min: 1, max: 3 }),
      t: dim(9),
      h: fc.integer({ min: 1, max: 3 }),
      d: fc.constantFrom(2, 4, 6, 8, 14, 16),
      theta: fc.constantFrom(100, 10000, 500000),
      inverse: fc.option(fc.boolean(), { nil: undefined }),
      perRow: fc.boolean(),
      maxPos: fc.constantFrom(8, 100, 2048),
      seed: seedArb,
    }).map((a) =>
      problem({ theta: a.theta, inverse: a.inverse }, [
        F([a.b, a.t, a.h, a.d], a.seed),
        I(a.perRow ? [a.b, a.t] : [a.t], a.seed + 1, 0, a.maxPos),
      ])
    ),
    tol: (p) => {
      const maxPos = Math.max(0, ...p.inputs[1].data);
      return { atol: Math.SQRT2 * (2 ** -23 * maxPos + 2e-7) + 1e-6, rtol: 0 };
    },
    why:
      "as tests/rope_test.ts: the GPU forms the angle pos * inv_freq in f32 (as HF does), <= 2^-23 pos off the " +
      "f64 angle, moving a pair by <= sqrt(2) da; plus a few ulps of sin/cos (after range reduction) and products",
  },
  sample: {
    arb: fc.record({
      n: fc.integer({ min: 1, max: 5 }),
      // Workgroups of 16 or 256 (the text depends only on that): a few compiles of a barrier-heavy shader.
      v: fc.constantFrom(1, 2, 7, 15, 257, 300, 600),
      o: sampleOpts,
      ties: fc.boolean(),
      spread: fc.constantFrom(1, 4, 12),
      seed: seedArb,
    }).map((a) => {
      const logits = uniform(a.n * a.v, a.seed, -a.spread, a.spread).map((
        x,
      ) => (a.ties ? Math.round(x * 4) / 4 : x));
      return problem(a.o, [
        f32([a.n, a.v], logits),
        I([a.n], a.seed + 1, 0, 1000),
        I([a.n], a.seed + 2, 0, 4096),
      ]);
    }),
    ref: "f32",
    why:
      "as tests/sample_test.ts: the same Philox uniform on both; the token must equal the CPU's unless u lies " +
      "within 1e-4 (relative to the kept mass) of a CDF step or the top-p cut is that close, where f32 masses may " +
      "legitimately pick the neighbour",
    compare: (got, want, p) => {
      const [R, V] = p.inputs[0].shape;
      for (let n = 0; n < R; n++) {
        if (got[0][n] === want[0][n]) continue;
        const row = p.inputs[0].data.subarray(n * V, (n + 1) * V);
        const u = rngUniform({
          seed: p.params.seed,
          step: p.params.step,
          sequence: p.inputs[1].data[n],
          position: p.inputs[2].data[n],
        });
        const dist = rowDistribution(row, p.params);
        let near = dist.topPMargin < BOUNDARY, cum = 0;
        for (let i = 0; i < V && !near; i++) {
          cum += dist.weights[i];
          near = dist.weights[i] > 0 && Math.abs(cum / dist.total - u) < BOUNDARY;
        }
        if (!near || !(got[0][n] >= 0 && got[0][n] < V) || dist.weights[got[0][n]] === 0) {
          throw new Error(
            `row ${n}: GPU token ${got[0][n]}, CPU ${want[0][n]} (u = ${u}), not near a boundary`,
          );
        }
      }
    },
  },
  select: {
    arb: fc.record({ shape: elementwiseShape, three: fc.boolean(), invert: fc.boolean(), seed: seedArb }).map(
      (a) => {
        const n = size(a.shape);
        const cond = Float32Array.from(ints(n, a.seed, -1, 2));
        // NaN and inf where the operand is not selected: they must not reach the output.
        const taken = (i: number, first: boolean) => ((cond[i] !== 0) !== a.invert) === first;
        const poison = (data: Float32Array, first: boolean) =>
          data.map((x, i) => (taken(i, first) ? x : i % 3 === 0 ? NaN : i % 3 === 1 ? Infinity : x));
        return problem({ invert: a.invert }, [
          f32(a.shape, cond),
          f32(a.shape, poison(uniform(n, a.seed + 1), true)),
          ...(a.three ? [f32(a.shape, poison(uniform(n, a.seed + 2), false))] : []),
        ]);
      },
    ),
    tol: exact,
    why: "a selection: exact (and finite although the unselected operand holds NaN and inf)",
  },
  softmax: {
    arb: fc.record({
      log: fc.boolean(),
      shape: rowShape,
      seed: seedArb,
    }).map(({ log, shape, seed }) => problem({ log }, [F(shape, seed, -4, 4)])),
    tol: (p) => (p.params.log ? { atol: 1e-5, rtol: 1e-6 } : { atol: 1e-7, rtol: 1e-5 }),
    why:
      "as tests/softmax_test.ts: exp a few ulps and the row sum (C/256 + 8) u relative; log-softmax values " +
      "<= ~17 in size carry three roundings (atol 1e-5)",
  },
  softmaxGrad: {
    arb: fc.record({
      log: fc.boolean(),
      shape: rowShape,
      seed: seedArb,
    }).map(({ log, shape, seed }) => {
      const y = reference(KERNELS.softmax, { log }, [F(shape, seed, -4, 4)])[0];
      return problem({ log }, [asF32(shape, y), F(shape, seed + 1)]);
    }),
    tol: () => ({ atol: 1e-5, rtol: 1e-5 }),
    why: "as tests/softmax_test.ts: O(1) products and a row sum of C <= 700 terms: <= 3e-6 absolute",
  },
  crossEntropy: {
    arb: crossEntropyArb.map((a) => problem({ negate: a.negate }, crossEntropyInputs(a))),
    tol: () => ({ atol: 1e-5, rtol: 1e-6 }),
    why: "as tests/softmax_test.ts (LOG_TOL): max + log(sum) - x of values <= ~17, three roundings",
  },
  crossEntropyGrad: {
    arb: crossEntropyArb.map((a) =>
      problem({ negate: a.negate }, [...crossEntropyInputs(a), F(a.shape.slice(0, -1), a.seed + 2)])
    ),
    tol: () => ({ atol: 1e-5, rtol: 1e-5 }),
    why: "softmax probabilities (1e-5 relative, see softmax) minus a one-hot, times |dy| <= 1",
  },
};

// ---- known bugs -------------------------------------------------------------------------------------------------

/**
 * A problem on which a kernel is wrong, found by the sweep. This test does not change kernels: such problems stay out
 * of the random cases until the kernel is fixed, and registry_test.ts runs them in a test that is ignored until then.
 */
export interface KnownBug {
  readonly kernel: KernelName;
  readonly problem: Problem<unknown>;
  readonly bug: string;
}
const known = <K extends KernelName>(
  kernel: K,
  params: KernelParams<K>,
  inputs: readonly HostInput[],
  bug: string,
): KnownBug => ({ kernel, problem: problem(params, inputs), bug });
const none = (shape: Shape, dtype: DType = "f32"): HostInput =>
  dtype === "f32" ? f32(shape, new Float32Array(0)) : I32(shape, new Int32Array(0));
/** Zero rows: `gx = min(ceil(R / 64), limit) = 0`, so the grid's `ceil(groups / gx)` is 0 / 0 = NaN. */
const NAN_GRID =
  "with 0 rows the grid is [0, NaN, 1] (ceil(groups / gx) with gx = 0): dispatchWorkgroups throws " +
  "a TypeError (the backend skips only grids whose product is 0)";

export const ZERO_SIZE_REGRESSIONS: readonly KnownBug[] = [
  known(
    "embeddingGradPrep",
    { vocab: 5 },
    [none([0, 3]), none([0], "i32")],
    "with no positions infer declares head as one block of V entries (max(1, ceil(T / EMB_BLOCK))) and the " +
      "reference fills it with 0xffffffff, but prepPasses uses ceil(T / EMB_BLOCK) = 0 blocks: the init pass " +
      "covers nothing and head keeps what the buffer held (0, 'position 0'); embeddingGradRows reads no part row " +
      "past T, so gradients built from it are still right",
  ),
  known(
    "readoutFold",
    { start: 0, vocab: 5, temperature: 1 },
    [none([0, 4]), none([0, 5]), none([0], "i32")],
    `software variant: ${NAN_GRID}`,
  ),
  known("readoutGrad", { start: 0, vocab: 5, temperature: 1 }, [
    none([0, 5]),
    none([0], "i32"),
    none([0, 3]),
    none([0]),
    none([0]),
  ], NAN_GRID),
  known("readoutFinish", {}, [none([0, 4])], NAN_GRID),
  known("readoutTopK", { start: 0, vocab: 5, temperature: 1, k: 2 }, [none([0, 4]), none([0, 5])], NAN_GRID),
];
