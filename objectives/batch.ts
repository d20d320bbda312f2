/**
 * RL batches as tensors: ids, next-token targets, the response mask, advantages, old / behaviour / reference
 * log-probs per position, and the aggregation coefficients, built once from host arrays (plus the rollout file).
 *
 * Position convention: position t of a sequence predicts token t+1, so every per-token array is (B*T) over
 * positions, and the response tokens ids[p .. p+len-1] (p the prompt length) are predicted at positions
 * p-1 .. p+len-2. The last position predicts nothing (mask 0, target 0).
 */
import { ShapeError } from "../core/errors.ts";
import type { Backend } from "../engine/backend.ts";
import { keep, type Tensor, tensor } from "../engine/tensor.ts";
import { type Agg, showAgg } from "./objective.ts";
import { aggWeights, type ReferenceBatch } from "./reference.ts";

/** A batch on the host: B sequences of T ids (row-major, padded), prompt/response lengths, advantages. */
export interface RolloutHost {
  readonly ids: Int32Array;
  readonly B: number;
  readonly T: number;
  /** (B) prompt tokens per sequence (>= 1); ignored when `mask` is given. */
  readonly promptLens: readonly number[];
  /** (B) response tokens per sequence; default: the rest of the row, T - promptLen. */
  readonly responseLens?: readonly number[];
  /** (B) the sequence advantage. */
  readonly advantages: ArrayLike<number>;
  /** (B*T) per position: an explicit mask (token weights) replacing the one the lengths imply. */
  readonly mask?: ArrayLike<number>;
  /** (B*T) per position: the final policy's log-prob at sampling time (used by truncated importance weights). */
  readonly behaviour?: ArrayLike<number>;
  /** (B*T) per position, keyed by `showPolicy`: old log-probs of each policy (detached). */
  readonly old?: ReadonlyMap<string, ArrayLike<number>>;
  /** (B*T) per position, keyed by `showPolicy`: the reference model's log-probs read at that policy. */
  readonly ref?: ReadonlyMap<string, ArrayLike<number>>;
}

/** A batch on a backend, ready for `lowerLoss` / `lowerStep`. Dispose it when done. */
export interface RolloutTensors {
  readonly B: number;
  readonly T: number;
  readonly backend: Backend;
  /** (B, T) i32 token ids. */
  readonly ids: Tensor;
  /** (T) i32 positions 0..T-1. */
  readonly positions: Tensor;
  /** (B*T) i32: the id each position predicts (ids shifted left; 0 at the last position). */
  readonly targets: Tensor;
  /** (B*T) response mask over positions (0 = not a predicted response token). */
  readonly mask: Tensor;
  /** (B*T) the advantage of each position's sequence. */
  readonly advantages: Tensor;
  /** (B) the sequence advantages. */
  readonly seqAdvantages: Tensor;
  /** (B) sum of the mask over each sequence, and its inverse (0 where the sum is 0). */
  readonly lens: Tensor;
  readonly invLens: Tensor;
  /** (B) lens with 0 replaced by 1 (a safe divisor). */
  readonly lensOrOne: Tensor;
  /** [] 1 / sum of the mask (0 when the batch has no response token). */
  readonly invCount: Tensor;
  readonly behaviour?: Tensor;
  readonly old: ReadonlyMap<string, Tensor>;
  readonly ref: ReadonlyMap<string, Tensor>;
  /** The same batch in f64 for the reference interpreter (absent behaviour reads as NaN). */
  readonly host: ReferenceBatch;
  /** (B*T) aggregation coefficients c of `agg` (loss = sum c L; see `aggWeights`), uploaded once per kind. */
  agg(agg: Agg): Tensor;
  dispose(): void;
}

const fail = (message: string): never => {
  throw new ShapeError({ op: "rolloutTensors", message: `rolloutTensors: ${message}` });
};

/** The response mask over positions implied by prompt and response lengths. */
export const responseMask = (
  B: number,
  T: number,
  promptLens: readonly number[],
  responseLens?: readonly number[],
): Float64Array => {
  const m = new Float64Array(B * T);
  for (let n = 0; n < B; n++) {
    const p = promptLens[n], len = responseLens?.[n] ?? T - p;
    if (!Number.isInteger(p) || p < 1 || p > T) {
      fail(`promptLens[${n}] = ${p}, expected an integer in 1..${T}`);
    }
    if (!Number.isInteger(len) || len < 0 || p + len > T) {
      fail(`responseLens[${n}] = ${len} with prompt ${p} does not fit in T = ${T}`);
    }
    for (let t = p - 1; t < p + len - 1; t++) m[n * T + t] = 1;
  }
  return m;
};

/** Upload a host batch. Every array is checked against B and T (ShapeError naming it). */
export const rolloutTensors = (backend: Backend, h: RolloutHost): RolloutTensors => {
  const { B, T, ids } = h;
  const n = B * T;
  const len = (what: string, x: ArrayLike<number> | undefined, want: number) => {
    if (x && x.length !== want) fail(`${what} has length ${x.length}, expected ${want}`);
  };
  if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1) {
    fail(`B and T must be >= 1, got ${B}, ${T}`);
  }
  len("ids", ids, n);
  if (!h.mask) {
    len("promptLens", h.promptLens, B);
    len("responseLens", h.responseLens, B);
  }
  len("advantages", h.advantages, B);
  len("mask", h.mask, n);
  len("behaviour", h.behaviour, n);
  for (const [k, v] of h.old ?? []) len(`old[${k}]`, v, n);
  for (const [k, v] of h.ref ?? []) len(`ref[${k}]`, v, n);
  const mask = h.mask ? Float64Array.from(h.mask) : responseMask(B, T, h.promptLens, h.responseLens);
  const targets = new Int32Array(n);
  for (let r = 0; r < B; r++) for (let t = 0; t + 1 < T; t++) targets[r * T + t] = ids[r * T + t + 1];
  const adv = Float64Array.from(h.advantages);
  const advTok = Float64Array.from({ length: n }, (_, i) => adv[Math.floor(i / T)]);
  const lens = new Float64Array(B);
  let count = 0;
  for (let i = 0; i < n; i++) {
    lens[Math.floor(i / T)] += mask[i];
    count += mask[i];
  }
  const up = (x: ArrayLike<number>, shape: number[], dtype: "f32" | "i32" = "f32") =>
    keep(tensor(backend, x, shape, dtype));
  const f64 = (m: ReadonlyMap<string, ArrayLike<number>> | undefined) =>
    new Map([...(m ?? [])].map(([k, v]) => [k, Float64Array.from(v)]));
  const host: ReferenceBatch = {
    B,
    T,
    mask,
    advantages: adv,
    behaviour: h.behaviour ? Float64Array.from(h.behaviour) : new Float64Array(n).fill(NaN),
    old: f64(h.old),
    ref: f64(h.ref),
  };
  const aggCache = new Map<string, Tensor>();
  const owned: Tensor[] = [];
  const own = (t: Tensor) => (owned.push(t), t);
  const b: RolloutTensors = {
    B,
    T,
    backend,
    ids: own(up(ids, [B, T], "i32")),
    positions: own(up(Int32Array.from({ length: T }, (_, i) => i), [T], "i32")),
    targets: own(up(targets, [n], "i32")),
    mask: own(up(mask, [n])),
    advantages: own(up(advTok, [n])),
    seqAdvantages: own(up(adv, [B])),
    lens: own(up(lens, [B])),
    invLens: own(up(lens.map((l) => (l === 0 ? 0 : 1 / l)), [B])),
    lensOrOne: own(up(lens.map((l) => (l === 0 ? 1 : l)), [B])),
    invCount: own(up([count === 0 ? 0 : 1 / count], [])),
    behaviour: h.behaviour ? own(up(h.behaviour, [n])) : undefined,
    old: new Map([...(h.old ?? [])].map(([k, v]) => [k, own(up(v, [n]))])),
    ref: new Map([...(h.ref ?? [])].map(([k, v]) => [k, own(up(v, [n]))])),
    host,
    agg: (a: Agg) => {
      const key = showAgg(a);
      let t = aggCache.get(key);
      if (!t) aggCache.set(key, t = own(up(aggWeights(a, mask, B, T), [n])));
      return t;
    },
    dispose: () => {
      for (const t of owned) t.dispose();
      owned.length = 0;
    },
  };
  return b;
};

/** Pad sequences of ids (each prompt + response) into a host batch; `pad` fills the tail (default 0). */
export const rolloutFromSequences = (
  seqs: readonly (readonly number[])[],
  promptLens: number | readonly number[],
  advantages: readonly number[],
  pad = 0,
): RolloutHost => {
  const B = seqs.length;
  if (B === 0) fail("no sequences");
  const T = Math.max(...seqs.map((s) => s.length));
  const pl = typeof promptLens === "number" ? seqs.map(() => promptLens) : promptLens;
  if (pl.length !== B) fail(`${pl.length} prompt lengths for ${B} sequences`);
  if (advantages.length !== B) fail(`${advantages.length} advantages for ${B} sequences`);
  const ids = new Int32Array(B * T).fill(pad);
  seqs.forEach((s, i) => ids.set(s, i * T));
  return { ids, B, T, promptLens: pl, responseLens: seqs.map((s, i) => s.length - pl[i]), advantages };
};
