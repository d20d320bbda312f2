/** Token sampling with temperature, top-k and top-p from Philox uniforms: one workgroup per row, no sort. */
import { ShapeError } from "../core/errors.ts";
import { rngUniform, seedKey } from "../core/rng.ts";
import { showShape } from "../core/shape.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { PHILOX_WGSL } from "./philox_wgsl.ts";
import { bind, type Bound, treeReduce } from "../engine/wgsl.ts";

/** Largest workgroup (one per row); rows of fewer tokens take the smallest power of two >= V, at least 16. */
const WG_MAX = 256;
const WG_MIN = 16;
/**
 * Elements per invocation per iteration of the strided loops over a row (unrolled in the text). llvmpipe cuts
 * an invocation's loops short past 65,535 iterations in total (LOOP_BUDGET, engine/wgsl.ts); with top-k and
 * top-p the kernel runs ~70 strided passes over V, ~72 V / 256 iterations one element at a time (V = 262,144:
 * 73,700, broken). Four per iteration: ~18 V / 256 + 3 V / 256 (the contiguous-range passes), V up to ~500k.
 */
const UNROLL = 4;

/**
 * WGSL of a loop over this invocation's strided elements i = lid + WG k of the row (i < V), running `body`
 * (which reads `i`) UNROLL elements per iteration, in increasing i per invocation.
 */
const strided = (WG: number, body: string): string =>
  `for (var i0 = lid; i0 < V; i0 += ${WG * UNROLL}u) {
${
    Array.from({ length: UNROLL }, (_, k) =>
      k === 0
        ? `    { let i = i0; ${body.trim()} }`
        : `    { let i = i0 + ${WG * k}u; if (i < V) { ${body.trim()} } }`).join("\n")
  }
  }`;

/**
 * The workgroup size for rows of V tokens: the smallest power of two >= V within [WG_MIN, WG_MAX]. A small
 * vocabulary in a 256-wide workgroup left most invocations idle through every barrier: with V = 19 (the
 * shipped arithmetic model) sampling was ~55% of the GPU time of a rollout.
 */
export const sampleWorkgroup = (V: number): number =>
  Math.min(WG_MAX, Math.max(WG_MIN, 2 ** Math.ceil(Math.log2(Math.max(1, V)))));

/**
 * Sampling settings. The semantics, identical on every backend (up to f32 rounding of the masses):
 * 1. temperature 0: the argmax (lowest id among equal maxima); nothing else applies and u is unused.
 * 2. Order the tokens by logit descending, ties by lower id first (the order of the probabilities, with the
 *    tie rule stated on the logits so that it does not depend on exp rounding).
 * 3. top-k (k > 0 and k < V): keep the first k tokens of that order.
 * 4. masses w_i = exp((x_i - max x) / temperature) over the kept tokens; S their sum.
 * 5. top-p (p < 1): keep the shortest prefix of the order (within the top-k set) whose cumulative mass is
 *    >= p S; at least one token.
 * 6. Renormalize over the kept set: total T = sum of kept w_i; with u = uniform01(philox(seed, (step,
 *    sequences[n], positions[n], 0)).x), pick the first kept token in id order whose cumulative kept mass
 *    exceeds u T (the last kept token if rounding leaves none).
 * Logits must be finite or -inf with at least one finite per row.
 */
export interface SampleOptions {
  readonly temperature: number;
  /** Keep the k most likely tokens; 0 (or >= V) = off. */
  readonly topK?: number;
  /** Keep the smallest most-likely set with mass >= topP; 1 = off. */
  readonly topP?: number;
  /** The Philox key and step: seed in [0, 2^53), step a u32 (e.g. the decoding step). */
  readonly key: { readonly seed: number; readonly step: number };
  /** i32 [R]: the sequence id of each row (second counter word). */
  readonly sequences: Tensor;
  /** i32 [R]: the position of each row (third counter word). */
  readonly positions: Tensor;
  /**
   * Draw only ids below this (default V): a model whose unembedding has more rows than its tokenizer has ids
   * (Qwen3: 151,936 against 151,669) must never emit an id the tokenizer cannot decode. Ids >= vocab are treated
   * as absent from the row (as if their logits were -inf), for greedy decoding too.
   */
  readonly vocab?: number;
}

/** Kernel params: everything but the tensors; they travel in a uniform, so the shader text depends on R, V only. */
export interface SampleParams {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
  readonly step: number;
  /** Ids below this are drawn (undefined: every id of the row). */
  readonly vocab?: number;
}

/** The kept distribution of one row (unnormalized masses, 0 where dropped) and diagnostics for tests. */
export interface RowDistribution {
  /** w_i for kept tokens, 0 for dropped ones (f64). */
  readonly weights: Float64Array;
  /** Sum of the kept weights. */
  readonly total: number;
  /**
   * How close the top-p cut came to flipping: min over the prefixes considered of |cum - p S| / S; Infinity
   * when top-p is off. Below ~1e-4 an f32 backend may cut one token earlier or later.
   */
  readonly topPMargin: number;
}

/** The reference kept distribution of one row (steps 1-5 of SampleOptions), in f64. */
export const rowDistribution = (
  x: ArrayLike<number>,
  p: Pick<SampleParams, "temperature" | "topK" | "topP">,
): RowDistribution => {
  const V = x.length;
  const weights = new Float64Array(V);
  if (p.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (x[i] > x[best]) best = i;
    weights[best] = 1;
    return { weights, total: 1, topPMargin: Infinity };
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => (x[b] - x[a]) || a - b);
  const xmax = x[order[0]];
  const w = (i: number) => Math.exp((x[i] - xmax) / p.temperature);
  let L = p.topK > 0 ? Math.min(p.topK, V) : V;
  let topPMargin = Infinity;
  if (p.topP < 1) {
    let S = 0;
    for (let r = 0; r < L; r++) S += w(order[r]);
    let cum = 0;
    for (let r = 0; r < L; r++) {
      cum += w(order[r]);
      topPMargin = Math.min(topPMargin, Math.abs(cum - p.topP * S) / S);
      if (cum >= p.topP * S) {
        L = r + 1;
        break;
      }
    }
  }
  let total = 0;
  for (let r = 0; r < L; r++) total += weights[order[r]] = w(order[r]);
  return { weights, total, topPMargin };
};

/** Step 6: the first token in id order whose cumulative weight exceeds u * total (else the last weighted one). */
export const pickToken = (weights: ArrayLike<number>, u: number): number => {
  let total = 0;
  for (let i = 0; i < weights.length; i++) total += weights[i];
  const target = u * total;
  let cum = 0, last = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] > 0) {
      cum += weights[i];
      last = i;
      if (cum > target) return i;
    }
  }
  return last;
};

const fail = (message: string): never => {
  throw new ShapeError({ op: "sample", message: `sample: ${message}` });
};

/** Validate the settings (throws ShapeError naming the bad one). */
const checkParams = (p: SampleParams): void => {
  if (!(p.temperature >= 0 && Number.isFinite(p.temperature))) {
    fail(`temperature ${p.temperature} must be >= 0`);
  }
  if (!Number.isInteger(p.topK) || p.topK < 0) fail(`topK ${p.topK} must be an integer >= 0`);
  if (!(p.topP > 0 && p.topP <= 1)) fail(`topP ${p.topP} must be in (0, 1]`);
  if (!Number.isInteger(p.step) || p.step < 0 || p.step > 0xffffffff) fail(`step ${p.step} must be a u32`);
  if (!Number.isSafeInteger(p.seed) || p.seed < 0) fail(`seed ${p.seed} must be an integer in [0, 2^53)`);
};

/** The bindings: logits, sequence and position ids, the sampled ids, then the settings `prm` (data `u`). */
const samplingBindings = (u: Uint32Array): Bound =>
  bind(
    { input: 0, name: "logits" },
    { input: 1, name: "seqs", type: "i32" },
    { input: 2, name: "poss", type: "i32" },
    { output: 0, name: "ids", type: "i32" },
    {
      uniform: u,
      name: "prm",
      type: "Params",
      struct: `seedLo: u32, seedHi: u32, step: u32, topK: u32, topP: f32, temp: f32, V: u32, N: u32,
  gx: u32, C: u32, stride: u32, pad1: u32`,
    },
  );

/**
 * The shader for workgroups of WG over the declarations of `samplingBindings` (the same for every call): R, V
 * and the grid width travel in the uniform with the settings.
 */
const samplingWgsl = (WG: number, decls: string): string =>
  `${decls}
${PHILOX_WGSL}
var<workgroup> sf: array<f32, ${WG}>;
var<workgroup> su: array<u32, ${WG}>;

// Order-preserving u32 key of an f32 (-0 folded onto +0): a > b as floats iff key(a) > key(b).
fn okey(x: f32) -> u32 {
  var b = bitcast<u32>(x);
  if (b == 0x80000000u) { b = 0u; }
  return select(~b, b | 0x80000000u, (b & 0x80000000u) == 0u);
}
fn unkey(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}
// The unnormalized mass exp((x - xmax) / T); exactly 0 for -inf.
fn mass(x: f32, xmax: f32) -> f32 {
  if (bitcast<u32>(x) == 0xff800000u) { return 0.0; }
  return exp((x - xmax) / prm.temp);
}
fn sumF(lid: u32, x: f32) -> f32 {
  sf[lid] = x;
${treeReduce(WG, "lid", "s", "sf[lid] += sf[lid + s];")}
  let r = workgroupUniformLoad(&sf[0]);
  workgroupBarrier();
  return r;
}
// op 0: sum, 1: max, 2: min
fn redU(lid: u32, x: u32, op: u32) -> u32 {
  su[lid] = x;
${
    treeReduce(WG, "lid", "s", [
      "let a = su[lid]; let b = su[lid + s];",
      "su[lid] = select(select(min(a, b), max(a, b), op == 1u), a + b, op == 0u);",
    ])
  }
  let r = workgroupUniformLoad(&su[0]);
  workgroupBarrier();
  return r;
}
// Exclusive prefix sums over the workgroup (Hillis-Steele): (exclusive, total).
fn scanF(lid: u32, x: f32) -> vec2f {
  sf[lid] = x;
  workgroupBarrier();
  for (var off = 1u; off < ${WG}u; off <<= 1u) {
    var y = 0.0;
    if (lid >= off) { y = sf[lid - off]; }
    workgroupBarrier();
    sf[lid] += y;
    workgroupBarrier();
  }
  var e = 0.0;
  if (lid > 0u) { e = sf[lid - 1u]; }
  let t = workgroupUniformLoad(&sf[${WG - 1}]);
  workgroupBarrier();
  return vec2f(e, t);
}
fn scanU(lid: u32, x: u32) -> u32 {
  su[lid] = x;
  workgroupBarrier();
  for (var off = 1u; off < ${WG}u; off <<= 1u) {
    var y = 0u;
    if (lid >= off) { y = su[lid - off]; }
    workgroupBarrier();
    su[lid] += y;
    workgroupBarrier();
  }
  var e = 0u;
  if (lid > 0u) { e = su[lid - 1u]; }
  workgroupBarrier();
  return e;
}

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) l3: vec3u, @builtin(workgroup_id) w3: vec3u) {
  let lid = l3.x;
  let row = w3.x + w3.y * prm.gx;
  if (row >= prm.N) { return; }
  let V = prm.V;
  let C = prm.C;
  let base = row * prm.stride;

  // The largest key; greedy decoding is its lowest id.
  var mk = 0u;
  ${strided(WG, `mk = max(mk, okey(logits[base + i]));`)}
  let kmax = redU(lid, mk, 1u);
  if (prm.temp == 0.0) {
    var best = 0xffffffffu;
    ${strided(WG, `      if (okey(logits[base + i]) == kmax) { best = min(best, i); }`)}
    let b = redU(lid, best, 2u);
    if (lid == 0u) { ids[row] = i32(b); }
    return;
  }
  let xmax = unkey(kmax);

  // Kept set = { key > th } plus the 'ties' lowest ids with key == th.
  // Top-k: th = key of the k-th largest, by bisection on the key bits (32 rounds of parallel counting).
  let kOn = prm.topK > 0u;
  var th = 0u;
  var ties = 0xffffffffu;
  if (kOn) {
    var t = 0u;
    for (var j = 0u; j < 32u; j++) {
      let cand = t | (0x80000000u >> j);
      var c = 0u;
      ${strided(WG, `c += select(0u, 1u, okey(logits[base + i]) >= cand);`)}
      if (redU(lid, c, 0u) >= prm.topK) { t = cand; }
    }
    var c = 0u;
    ${strided(WG, `c += select(0u, 1u, okey(logits[base + i]) > t);`)}
    th = t;
    ties = prm.topK - redU(lid, c, 0u);
  }

  // Top-p: th' = largest key whose {key >= th'} (within the top-k set) holds mass >= p S, then the fewest ties.
  if (prm.topP < 1.0) {
    var sg = 0.0;
    ${
    strided(
      WG,
      `      let x = logits[base + i];
      if (okey(x) > th || !kOn) { sg += mass(x, xmax); }`,
    )
  }
    var S = sumF(lid, sg);
    if (kOn) { S += f32(ties) * mass(unkey(th), xmax); }
    let PS = prm.topP * S;
    var t = 0u;
    for (var j = 0u; j < 32u; j++) {
      let cand = t | (0x80000000u >> j);
      if (kOn && cand <= th) {
        t = cand; // the whole top-k set has mass S >= p S
      } else {
        var s = 0.0;
        ${
    strided(
      WG,
      `          let x = logits[base + i];
          if (okey(x) >= cand) { s += mass(x, xmax); }`,
    )
  }
        if (sumF(lid, s) >= PS) { t = cand; }
      }
    }
    var sgt = 0.0;
    var nt = 0u;
    ${
    strided(
      WG,
      `      let x = logits[base + i];
      let k = okey(x);
      if (k > t) { sgt += mass(x, xmax); }
      nt += select(0u, 1u, k == t);`,
    )
  }
    let mgt = sumF(lid, sgt);
    var ntie = redU(lid, nt, 0u);
    if (kOn && t == th) { ntie = min(ntie, ties); }
    let wt = mass(unkey(t), xmax);
    var c = ntie;
    if (wt > 0.0) { c = u32(clamp(ceil((PS - mgt) / wt), 1.0, f32(ntie))); }
    th = t;
    ties = max(min(c, ntie), 1u);
  }

  // Inverse CDF in id order: thread lid owns ids [lo, hi); tie ranks and masses by workgroup prefix sums.
  let u = uniform01(philox4x32(vec4u(prm.step, bitcast<u32>(seqs[row]), bitcast<u32>(poss[row]), 0u),
                               vec2u(prm.seedLo, prm.seedHi)).x);
  let lo = min(lid * C, V);
  let hi = min(lo + C, V);
  var nth = 0u;
  for (var i = lo; i < hi; i++) { nth += select(0u, 1u, okey(logits[base + i]) == th); }
  let rank0 = scanU(lid, nth);
  var rank = rank0;
  var loc = 0.0;
  for (var i = lo; i < hi; i++) {
    let x = logits[base + i];
    let k = okey(x);
    var keep = k > th;
    if (k == th) { keep = rank < ties; rank++; }
    if (keep) { loc += mass(x, xmax); }
  }
  let sc = scanF(lid, loc);
  let goal = u * sc.y;
  rank = rank0;
  var cum = sc.x;
  var pick = 0xffffffffu;
  var last = 0u;
  for (var i = lo; i < hi; i++) {
    let x = logits[base + i];
    let k = okey(x);
    var keep = k > th;
    if (k == th) { keep = rank < ties; rank++; }
    if (keep) {
      let w = mass(x, xmax);
      if (w > 0.0) {
        cum += w;
        last = i;
        if (cum > goal && pick == 0xffffffffu) { pick = i; }
      }
    }
  }
  let first = redU(lid, pick, 2u);
  let fallback = redU(lid, last, 1u);
  if (lid == 0u) { ids[row] = i32(select(fallback, first, first != 0xffffffffu)); }
}`;

/** The shader text per workgroup size (built once). */
const SHADERS = new Map<number, string>();

/** Draw one token id per row of logits [R, V] (see SampleOptions for the exact semantics). */
export const sampleKernel: Kernel<SampleParams> = defineKernel<SampleParams>({
  name: "sample",
  infer: (p, [logits, seqs, poss]) => {
    checkParams(p);
    if (logits.dtype !== "f32" || logits.shape.length !== 2 || logits.shape[1] < 1) {
      fail(
        `logits has shape ${showShape(logits.shape)} dtype ${logits.dtype}; expected f32 [R,V] with V >= 1`,
      );
    }
    const R = logits.shape[0];
    if (p.vocab !== undefined && !(Number.isInteger(p.vocab) && p.vocab >= 1 && p.vocab <= logits.shape[1])) {
      fail(`vocab ${p.vocab} must be an integer in [1, ${logits.shape[1]}] (the row length of the logits)`);
    }
    for (const [name, t] of [["sequences", seqs], ["positions", poss]] as const) {
      if (t.dtype !== "i32" || t.shape.length !== 1 || t.shape[0] !== R) {
        fail(
          `${name} has shape ${showShape(t.shape)} dtype ${t.dtype}; expected i32 [${R}] for logits ${
            showShape(logits.shape)
          }`,
        );
      }
    }
    return [{ shape: [R], dtype: "i32" }];
  },
  cpu: (p, [logits, seqs, poss], [ids]) => {
    const [R, V] = logits.shape;
    const lim = p.vocab ?? V;
    for (let n = 0; n < R; n++) {
      const row = logits.data.subarray(n * V, n * V + lim);
      const u = rngUniform({ seed: p.seed, step: p.step, sequence: seqs.data[n], position: poss.data[n] });
      ids.data[n] = pickToken(rowDistribution(row, p).weights, u);
    }
  },
  gpu: (p, [logits], target) => {
    const [R, stride] = logits.shape;
    const V = p.vocab ?? stride; // the ids drawn: [0, V)
    const gx = Math.max(1, Math.min(R, target.maxWorkgroupsPerDimension));
    const gy = Math.max(1, Math.ceil(R / gx));
    const [lo, hi] = seedKey(p.seed);
    const u = new Uint32Array(12);
    const f = new Float32Array(u.buffer);
    u[0] = lo;
    u[1] = hi;
    u[2] = p.step;
    u[3] = p.topK > 0 && p.topK < V ? p.topK : 0;
    f[4] = p.topP;
    f[5] = p.temperature;
    u[6] = V;
    u[7] = R;
    u[8] = gx;
    const WG = sampleWorkgroup(V);
    u[9] = Math.ceil(V / WG);
    u[10] = stride;
    const b = samplingBindings(u);
    let wgsl = SHADERS.get(WG);
    if (!wgsl) SHADERS.set(WG, wgsl = samplingWgsl(WG, b.decls));
    return [{ wgsl, workgroups: [R === 0 ? 0 : gx, gy, 1], bindings: b.bindings }];
  },
});

/** Sample token ids i32 [R] from logits [R, V] f32 (see SampleOptions). */
export const sample = (logits: Tensor, opts: SampleOptions): Tensor =>
  apply1(sampleKernel, {
    temperature: opts.temperature,
    topK: opts.topK ?? 0,
    topP: opts.topP ?? 1,
    seed: opts.key.seed,
    step: opts.key.step,
    ...(opts.vocab === undefined ? {} : { vocab: opts.vocab }),
  }, [logits, opts.sequences, opts.positions]);
