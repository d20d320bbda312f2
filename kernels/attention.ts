/** Causal multi-head attention with grouped KV heads: fused online-softmax forward and fused backward passes. */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { defineKernel } from "../engine/kernel.ts";
import type { GpuPass, GpuTarget, Kernel, TensorSpec } from "../engine/kernel.ts";
import { apply } from "../engine/apply.ts";
import { keep, type Tensor, zeros } from "../engine/tensor.ts";
import {
  type AttentionShape,
  attentionUniform,
  ATTN_WG,
  backwardKVShader,
  backwardQShader,
  forwardShader,
  kvCombinePass,
  type Shader,
} from "./attention_wgsl.ts";
import { LOOP_SAFE, type StorageBinding, withinLoopBudget } from "../engine/wgsl.ts";

export interface AttentionParams {
  /** Multiplier of q.k; default 1/sqrt(D). */
  readonly scale?: number;
  /** Absolute position of query 0 among the keys; query t sees keys s <= offset + t. Default S - T. */
  readonly offset?: number;
  /** Force a GPU lowering (tests and benchmarks); default `attentionVariant(target)`. */
  readonly variant?: AttentionVariant;
  /**
   * Queries per chunk of the dk/dv pass (tests); default `kvChunk(G, T)`: all T unless G T would pass the loop
   * budget.
   */
  readonly kvChunk?: number;
  /** Force the head-dimension loops unrolled or looped (tests); default by the loop budget (`unrollD`). */
  readonly unroll?: boolean;
}

/**
 * Whether an invocation that visits `visits` keys (or queries) must unroll its head-dimension loops: looped,
 * each visit costs 2 D + 1 loop iterations against llvmpipe's per-invocation budget (LOOP_SAFE), plus ~2 D
 * around the visits. Unrolled text compiles ~2x slower there, so only past the budget.
 */
export const unrollD = (visits: number, d: number): boolean =>
  !withinLoopBudget(visits * (2 * d + 1) + 2 * d);

/**
 * Queries per chunk of the dk/dv pass: an invocation loops over the G = Hq / Hkv heads of its group times its
 * queries, which must stay within the loop budget (llvmpipe silently cuts loops past 65,535 iterations per
 * invocation; G = 8, T = 8192 is 65,536). Longer ranges are split into chunks whose partial dk/dv are summed
 * by a second pass.
 */
export const kvChunk = (g: number, t: number): number =>
  g * t <= LOOP_SAFE ? Math.max(1, t) : Math.max(1, Math.floor(LOOP_SAFE / g));

/** Parameters of the backward passes: the forward's, plus whether the log-sum-exp output got a cotangent. */
export interface AttentionBwdParams extends AttentionParams {
  readonly withDL?: boolean;
}

/** Sizes of one call: batch, query length, key length, head counts, head dimension, resolved scale/offset. */
interface Dims {
  readonly b: number;
  readonly t: number;
  readonly s: number;
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly scale: number;
  readonly offset: number;
}

/** Validate q (B,T,Hq,D), k and v (B,S,Hkv,D) and resolve the defaults; every failure names the shapes. */
const dims = (op: string, p: AttentionParams, [q, k, v]: readonly TensorSpec[]): Dims => {
  const bad = (message: string) => new ShapeError({ op, message: `${op}: ${message}` });
  if (!q || !k || !v) throw bad("needs q, k and v");
  const named = [["q", q], ["k", k], ["v", v]] as const;
  for (const [name, x] of named) {
    if (x.dtype !== "f32") throw bad(`${name} has dtype ${x.dtype}, expected f32`);
    if (x.shape.length !== 4) throw bad(`${name} has shape ${showShape(x.shape)}, expected rank 4`);
  }
  const all = `q ${showShape(q.shape)}, k ${showShape(k.shape)}, v ${showShape(v.shape)}`;
  const [b, t, hq, d] = q.shape;
  const [bk, s, hkv, dk] = k.shape;
  if (v.shape.some((x, i) => x !== k.shape[i])) throw bad(`k and v must have equal shapes; got ${all}`);
  if (bk !== b) throw bad(`batch sizes differ (${b} vs ${bk}); got ${all}`);
  if (dk !== d) throw bad(`head dimensions differ (q has D = ${d}, k has D = ${dk}); got ${all}`);
  if (d < 1 || hkv < 1) throw bad(`head dimension and head counts must be positive; got ${all}`);
  if (hq % hkv !== 0) {
    throw bad(`query heads Hq = ${hq} must be a multiple of key/value heads Hkv = ${hkv}; got ${all}`);
  }
  if (s < 1) throw bad(`k has no positions (S = 0); got ${all}`);
  if (p.offset === undefined && s < t) {
    throw bad(`S = ${s} keys < T = ${t} queries and no offset given (default offset S - T < 0); got ${all}`);
  }
  const offset = p.offset ?? s - t;
  if (!Number.isInteger(offset) || offset < 0) throw bad(`offset = ${offset} must be a non-negative integer`);
  const scale = p.scale ?? 1 / Math.sqrt(d);
  if (!Number.isFinite(scale)) throw bad(`scale = ${scale} must be finite`);
  return { b, t, s, hq, hkv, d, scale, offset };
};

const shapeOf = (x: Dims, unroll: boolean): AttentionShape => ({
  hq: x.hq,
  hkv: x.hkv,
  d: x.d,
  scale: x.scale,
  unroll,
});

/**
 * Which lowering: "row" = one invocation per query (or key) row, rows packed across the workgroup;
 * "tile" = a workgroup per ATTN_WG consecutive positions of one head (uniform key/query loads).
 */
export type AttentionVariant = "row" | "tile";

/**
 * The variant a target gets. llvmpipe (2 cores, min of 5 under load): B1 T256 Hq8 Hkv2 D64 fwd 94 vs 112 ms,
 * fwd+bwd 425 vs 394 ms; B1 T1024 Hq4 D32 fwd 166 vs 156 ms, fwd+bwd 471 vs 389 ms (row vs tile), a wash for
 * prefill, but a decode step (T = 1, S = 512, Hq 8) takes 1.5-4.7 ms as rows and 25-120 ms as tiles (63 of 64
 * lanes idle): software gets "row". Hardware gets "tile" (uniform control flow and broadcast loads across a
 * warp), which is not measured on a real GPU yet.
 */
export const attentionVariant = (target: GpuTarget): AttentionVariant => (target.software ? "row" : "tile");

/**
 * One pass over `heads` x `len` rows: as many invocations (row variant) or heads x ceil(len / ATTN_WG)
 * workgroups (tile variant). The grid folds into y past the x limit; the uniform carries the count and the x
 * stride, so the text never depends on T or S. `shader` gives the pass from the uniform's data.
 */
const pass = (
  v: AttentionVariant,
  shader: (dims: Uint32Array) => Shader,
  heads: number,
  len: number,
  x: Dims,
  target: GpuTarget,
  label: string,
  chunk?: { tc: number; chunks: number; cstride: number },
): GpuPass => {
  const n = (chunk?.chunks ?? 1) * (v === "row" ? heads * len : heads * Math.ceil(len / ATTN_WG));
  const groups = Math.max(1, v === "row" ? Math.ceil(n / ATTN_WG) : n);
  const gy = Math.ceil(groups / target.maxWorkgroupsPerDimension);
  const gx = Math.ceil(groups / gy);
  const { wgsl, bindings } = shader(
    attentionUniform(x.t, x.s, x.offset, n, v === "row" ? gx * ATTN_WG : gx, chunk),
  );
  return { wgsl, workgroups: [gx, gy, 1], bindings, label: `${label}.${v}` };
};

// ---- forward ------------------------------------------------------------------------------------------------

/**
 * Causal attention: O[b,t,h] = sum_s softmax_s(scale q[b,t,h].k[b,s,g(h)]) v[b,s,g(h)] over s <= offset + t,
 * g(h) = floor(h / (Hq / Hkv)). Second output: the row log-sum-exp L[b,h,t] of the scaled, masked scores,
 * which lets the backward recompute P = exp(scale q.k - L) instead of storing it.
 * saveOutputs stays true: L is needed, and O is kept for Delta_t = sum_d dO O (it is usually alive anyway as
 * the input of the output projection, so keeping it costs no memory, where recomputing it would cost a pass).
 */
export const attentionKernel: Kernel<AttentionParams> = defineKernel<AttentionParams>({
  name: "attention",
  infer: (p, inputs) => {
    const x = dims("attention", p, inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }, { shape: [x.b, x.hq, x.t], dtype: "f32" }];
  },
  cpu: (p, [q, k, v], [o, lse]) => {
    const x = dims("attention", p, [q, k, v].map((h) => ({ shape: h.shape, dtype: "f32" })));
    const { d, hq, hkv } = x;
    const grp = hq / hkv;
    const sc = new Float64Array(x.s);
    for (let b = 0; b < x.b; b++) {
      for (let t = 0; t < x.t; t++) {
        for (let h = 0; h < hq; h++) {
          const qo = ((b * x.t + t) * hq + h) * d, hk = Math.floor(h / grp);
          const last = Math.min(x.offset + t, x.s - 1);
          let m = -Infinity;
          for (let s = 0; s <= last; s++) {
            const ko = ((b * x.s + s) * hkv + hk) * d;
            let dot = 0;
            for (let e = 0; e < d; e++) dot += q.data[qo + e] * k.data[ko + e];
            sc[s] = x.scale * dot;
            m = Math.max(m, sc[s]);
          }
          let l = 0;
          for (let s = 0; s <= last; s++) l += sc[s] = Math.exp(sc[s] - m);
          for (let e = 0; e < d; e++) {
            let acc = 0;
            for (let s = 0; s <= last; s++) acc += sc[s] * v.data[((b * x.s + s) * hkv + hk) * d + e];
            o.data[qo + e] = acc / l;
          }
          lse.data[(b * hq + h) * x.t + t] = m + Math.log(l);
        }
      }
    }
  },
  gpu: (p, inputs, target) => {
    const x = dims("attention", p, inputs), v = p.variant ?? attentionVariant(target);
    const sh = shapeOf(x, p.unroll ?? unrollD(x.s, x.d));
    return [
      pass(v, (dims) => forwardShader(sh, v === "tile", dims), x.b * x.hq, x.t, x, target, "attention"),
    ];
  },
  vjp: ({ params, inputs: [q, k, v], outputs: [o, lse] }, [dO, dL]) => {
    const g = dO ?? zeros(q.backend, o.shape); // (B, T, Hq, D)
    const ins = dL ? [q, k, v, o, g, lse, dL] : [q, k, v, o, g, lse];
    const [dq, delta] = apply(attentionBwdQKernel, { ...params, withDL: dL !== null }, ins); // (B,T,Hq,D), (B,Hq,T)
    const [dk, dv] = apply(attentionBwdKVKernel, params, [q, k, v, g, lse, delta]); // (B, S, Hkv, D) each
    return [dq, dk, dv];
  },
  saveOutputs: true,
});

// ---- backward -----------------------------------------------------------------------------------------------

/** Host helper of the backward references: for row (b, t, h), P_s and dP_s = dO.v_s over the visible keys. */
const rowProbs = (
  x: Dims,
  [q, k, v, dO, lse]: readonly { data: ArrayLike<number> }[],
  b: number,
  t: number,
  h: number,
  s: number,
): { p: number; dp: number } => {
  const { d } = x;
  const qo = ((b * x.t + t) * x.hq + h) * d,
    ko = ((b * x.s + s) * x.hkv + Math.floor(h / (x.hq / x.hkv))) * d;
  let dot = 0, dp = 0;
  for (let e = 0; e < d; e++) {
    dot += q.data[qo + e] * k.data[ko + e];
    dp += dO.data[qo + e] * v.data[ko + e];
  }
  return { p: Math.exp(x.scale * dot - lse.data[(b * x.hq + h) * x.t + t]), dp };
};

/**
 * dq and Delta. Inputs q, k, v, O, dO, L[, dL]; outputs dq (B,T,Hq,D) and Delta (B,Hq,T):
 *   Delta_t = sum_d dO_t O_t - dL_t   (dL_t flows into every score as P_s dL_t: dS = P (dP - Delta)),
 *   dS_ts = P_ts (dP_ts - Delta_t),   dq_t = scale sum_s dS_ts k_s.
 */
export const attentionBwdQKernel: Kernel<AttentionBwdParams> = defineKernel<AttentionBwdParams>({
  name: "attentionBwdQ",
  infer: (p, inputs) => {
    const x = dims("attentionBwdQ", p, inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }, { shape: [x.b, x.hq, x.t], dtype: "f32" }];
  },
  cpu: (p, ins, [dq, delta]) => {
    const x = dims("attentionBwdQ", p, ins.map((h) => ({ shape: h.shape, dtype: "f32" })));
    const [, k, , o, dO, , dL] = ins;
    const { d } = x;
    const acc = new Float64Array(d);
    for (let b = 0; b < x.b; b++) {
      for (let t = 0; t < x.t; t++) {
        for (let h = 0; h < x.hq; h++) {
          const qo = ((b * x.t + t) * x.hq + h) * d, li = (b * x.hq + h) * x.t + t;
          const hk = Math.floor(h / (x.hq / x.hkv));
          let dt = p.withDL ? -dL.data[li] : 0;
          for (let e = 0; e < d; e++) dt += dO.data[qo + e] * o.data[qo + e];
          acc.fill(0);
          for (let s = 0; s <= Math.min(x.offset + t, x.s - 1); s++) {
            const { p: pr, dp } = rowProbs(x, [ins[0], k, ins[2], dO, ins[5]], b, t, h, s);
            const ko = ((b * x.s + s) * x.hkv + hk) * d;
            for (let e = 0; e < d; e++) acc[e] += pr * (dp - dt) * k.data[ko + e];
          }
          for (let e = 0; e < d; e++) dq.data[qo + e] = x.scale * acc[e];
          delta.data[li] = dt;
        }
      }
    }
  },
  gpu: (p, inputs, target) => {
    const x = dims("attentionBwdQ", p, inputs), v = p.variant ?? attentionVariant(target);
    const sh = shapeOf(x, p.unroll ?? unrollD(x.s, x.d));
    const shader = (dims: Uint32Array) => backwardQShader(sh, !!p.withDL, v === "tile", dims);
    return [pass(v, shader, x.b * x.hq, x.t, x, target, "attentionBwdQ")];
  },
});

/**
 * dk and dv. Inputs q, k, v, dO, L, Delta; outputs dk, dv (B,S,Hkv,D). For key s of kv head g, summing over
 * the query heads h of its group and the queries t with offset + t >= s:
 *   dv_s = sum P_ts dO_t,   dk_s = scale sum dS_ts q_t,   dS_ts = P_ts (dO_t.v_s - Delta_t).
 */
export const attentionBwdKVKernel: Kernel<AttentionParams> = defineKernel<AttentionParams>({
  name: "attentionBwdKV",
  infer: (p, inputs) => {
    dims("attentionBwdKV", p, inputs);
    return [{ shape: inputs[1].shape, dtype: "f32" }, { shape: inputs[2].shape, dtype: "f32" }];
  },
  cpu: (p, ins, [dk, dv]) => {
    const x = dims("attentionBwdKV", p, ins.map((h) => ({ shape: h.shape, dtype: "f32" })));
    const [q, , , dO, , delta] = ins;
    const { d } = x;
    const grp = x.hq / x.hkv;
    const ak = new Float64Array(d), av = new Float64Array(d);
    for (let b = 0; b < x.b; b++) {
      for (let s = 0; s < x.s; s++) {
        for (let hk = 0; hk < x.hkv; hk++) {
          ak.fill(0);
          av.fill(0);
          for (let h = hk * grp; h < (hk + 1) * grp; h++) {
            for (let t = Math.max(0, s - x.offset); t < x.t; t++) {
              const { p: pr, dp } = rowProbs(x, ins, b, t, h, s);
              const qo = ((b * x.t + t) * x.hq + h) * d;
              const ds = pr * (dp - delta.data[(b * x.hq + h) * x.t + t]);
              for (let e = 0; e < d; e++) {
                av[e] += pr * dO.data[qo + e];
                ak[e] += ds * q.data[qo + e];
              }
            }
          }
          const ko = ((b * x.s + s) * x.hkv + hk) * d;
          for (let e = 0; e < d; e++) {
            dk.data[ko + e] = x.scale * ak[e];
            dv.data[ko + e] = av[e];
          }
        }
      }
    }
  },
  gpu: (p, inputs, target) => {
    const x = dims("attentionBwdKV", p, inputs), v = p.variant ?? attentionVariant(target);
    // Looped D when G T visits fit the budget that way; otherwise unrolled, in chunks of kvChunk queries.
    const g = x.hq / x.hkv;
    const unroll = p.unroll ?? unrollD(g * Math.min(x.t, p.kvChunk ?? x.t), x.d);
    const tc = Math.max(1, Math.min(p.kvChunk ?? (unroll ? kvChunk(g, x.t) : x.t), x.t));
    const sh = shapeOf(x, unroll);
    const chunks = Math.max(1, Math.ceil(x.t / tc));
    if (chunks === 1) {
      const shader = (dims: Uint32Array) => backwardKVShader(sh, v === "tile", dims);
      return [pass(v, shader, x.b * x.hkv, x.s, x, target, "attentionBwdKV")];
    }
    // Split queries: chunk c writes its partial dk/dv at c E of two scratch buffers; a second pass sums them.
    const e = x.b * x.s * x.hkv * x.d;
    const pk: StorageBinding = { kind: "scratch", id: "pk", bytes: chunks * e * 4 };
    const pv: StorageBinding = { kind: "scratch", id: "pv", bytes: chunks * e * 4 };
    const shader = (dims: Uint32Array) => backwardKVShader(sh, v === "tile", dims, [pk, pv]);
    return [
      pass(v, shader, x.b * x.hkv, x.s, x, target, "attentionBwdKV", { tc, chunks, cstride: e }),
      kvCombinePass(pk, pv, e, chunks, target),
    ];
  },
});

// ---- ops ----------------------------------------------------------------------------------------------------

/**
 * Causal attention and its row log-sum-exp: q (B,T,Hq,D), k and v (B,S,Hkv,D) -> [O (B,T,Hq,D), L (B,Hq,T)].
 * Hq must be a multiple of Hkv; query t sits at absolute position offset + t (default S - T).
 */
export const attentionWithLse = (
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionParams = {},
): [Tensor, Tensor] => {
  const [o, lse] = apply(attentionKernel, {
    scale: opts.scale,
    offset: opts.offset,
    variant: opts.variant,
    kvChunk: opts.kvChunk,
    unroll: opts.unroll,
  }, [
    q,
    k,
    v,
  ]);
  return [o, lse];
};

/**
 * Causal multi-head attention with grouped KV heads: q (B,T,Hq,D), k and v (B,S,Hkv,D) -> (B,T,Hq,D).
 * Query t attends keys s <= offset + t (offset defaults to S - T, the KV-cache convention); query head h reads
 * kv head floor(h / (Hq/Hkv)); scores are scaled by `scale` (default 1/sqrt(D)).
 */
export const attention = (q: Tensor, k: Tensor, v: Tensor, opts: AttentionParams = {}): Tensor => {
  const [o, lse] = attentionWithLse(q, k, v, opts);
  keep(lse).dispose(); // the tape holds its own reference when recording
  return o;
};
