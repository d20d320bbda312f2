/** KV-cache kernels for decoding: write k/v columns into the cache in place, one query's attention over it. */
import { ShapeError } from "../core/errors.ts";
import { showShape, size } from "../core/shape.ts";
import { defineKernel } from "../engine/kernel.ts";
import type { GpuPass, GpuTarget, Kernel, TensorSpec } from "../engine/kernel.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { column } from "./decode.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  bind,
  type BindSpec,
  f32Lit,
  flatPass,
  grid1d,
  LOOP_SAFE,
  type StorageBinding,
} from "../engine/wgsl.ts";

const WG = 64;

// ---- kvWrite ------------------------------------------------------------------------------------------------

export interface KvWriteParams {
  /** First cache column written (a uniform: one pipeline for every step). */
  readonly t: number;
}

/**
 * kCache[b, t + j] = k[b, j] and vCache[b, t + j] = v[b, j] for j < n, in place.
 * Inputs: [kCache (B, T, Hkv, D) (inout), vCache (inout, same shape), k (B, n, Hkv, D), v (same)], t + n <= T.
 */
export const kvWriteKernel: Kernel<KvWriteParams> = defineKernel<KvWriteParams>({
  name: "kvWrite",
  infer: ({ t }, [kc, vc, k, v]) => {
    const all = () =>
      `kCache ${showShape(kc.shape)}, vCache ${showShape(vc.shape)}, k ${showShape(k.shape)}, v ${
        showShape(v.shape)
      }, t = ${t}`;
    const bad = (why: string) => new ShapeError({ op: "kvWrite", message: `kvWrite: ${why}; got ${all()}` });
    if (![kc, vc, k, v].every((x) => x.dtype === "f32" && x.shape.length === 4)) {
      throw bad("need f32 rank-4 kCache, vCache (B, T, Hkv, D) and k, v (B, n, Hkv, D)");
    }
    if (kc.shape.some((x, i) => x !== vc.shape[i]) || k.shape.some((x, i) => x !== v.shape[i])) {
      throw bad("kCache and vCache, k and v must have equal shapes");
    }
    const [B, T, H, D] = kc.shape;
    if (k.shape[0] !== B || k.shape[2] !== H || k.shape[3] !== D) {
      throw bad("k must be (B, n, Hkv, D) of the cache");
    }
    if (!(Number.isInteger(t) && t >= 0 && t + k.shape[1] <= T)) throw bad("need 0 <= t and t + n <= T");
    return [{ shape: kc.shape, dtype: "f32", alias: 0 }, { shape: vc.shape, dtype: "f32", alias: 1 }];
  },
  cpu: ({ t }, [_kc, _vc, k, v], [kc, vc]) => {
    const [B, T, H, D] = kc.shape;
    const row = k.shape[1] * H * D;
    for (let b = 0; b < B; b++) {
      kc.data.set(k.data.subarray(b * row, (b + 1) * row), (b * T + t) * H * D);
      vc.data.set(v.data.subarray(b * row, (b + 1) * row), (b * T + t) * H * D);
    }
  },
  gpu: ({ t }, [kc, , k], target) => {
    const [, T, H, D] = kc.shape;
    const row = k.shape[1] * H * D;
    const b = bind(
      { input: 0, name: "kc", access: "read_write" },
      { input: 1, name: "vc", access: "read_write" },
      { input: 2, name: "k" },
      { input: 3, name: "v" },
      { uniform: new Uint32Array([t, 0, 0, 0]), name: "u", type: "vec4u" },
    );
    const body = `  let at = ((i / ${row}u) * ${T}u + u.x) * ${H * D}u + i % ${row}u;
  kc[at] = k[i];
  vc[at] = v[i];`;
    return [flatPass(b, size(k.shape), WG, target, body)];
  },
});

/** Write k, v (B, n, Hkv, D) into columns t..t+n-1 of the caches (B, T, Hkv, D), in place. */
export const kvWrite = (kCache: Tensor, vCache: Tensor, k: Tensor, v: Tensor, t: number): void => {
  apply(kvWriteKernel, { t }, [kCache, vCache, k, v]);
};

// ---- idsColumn ----------------------------------------------------------------------------------------------

/** Column t of an id buffer: i32 (B, T) -> (B) (the `column` kernel, with the id buffer's own check). */
export const idsColumn = (ids: Tensor, t: number): Tensor => {
  if (ids.shape.length !== 2 || ids.dtype !== "i32" || !(Number.isInteger(t) && t >= 0 && t < ids.shape[1])) {
    throw new ShapeError({
      op: "idsColumn",
      message: `idsColumn: need i32 ids (B, T) and 0 <= t < T; got ${
        showShape(ids.shape)
      } (${ids.dtype}), t = ${t}`,
    });
  }
  return column(ids, t);
};

// ---- decodeAttention ----------------------------------------------------------------------------------------

export interface DecodeAttentionParams {
  /** Position of the query: it attends cached keys 0..t (a uniform: one pipeline for every step). */
  readonly t: number;
  /** Multiplier of q.k; default 1/sqrt(D). */
  readonly scale?: number;
  /** Keys per chunk of the split pass (tests); default `decodeChunk(D)`. */
  readonly chunk?: number;
}

/**
 * Keys one invocation may visit: each costs 2 D + 1 loop iterations (the dot product, the accumulator update,
 * the key loop itself) against llvmpipe's per-invocation budget, plus ~2 D for loading q and storing. Longer
 * caches are split into chunks of this many keys whose partial softmax states a second pass combines.
 */
export const decodeChunk = (d: number): number =>
  Math.max(1, Math.floor((LOOP_SAFE - 2 * d - 8) / (2 * d + 1)));

interface DecodeDims {
  readonly b: number;
  readonly tlen: number;
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly scale: number;
  readonly chunk: number;
  readonly chunks: number;
}

const decodeDims = (p: DecodeAttentionParams, [q, k, v]: readonly TensorSpec[]): DecodeDims => {
  const all = () =>
    `q ${showShape(q?.shape ?? [])}, kCache ${showShape(k?.shape ?? [])}, vCache ${
      showShape(v?.shape ?? [])
    }, t = ${p.t}`;
  const bad = (why: string) =>
    new ShapeError({ op: "decodeAttention", message: `decodeAttention: ${why}; got ${all()}` });
  if (!q || !k || !v) throw bad("needs q, kCache and vCache");
  if (![q, k, v].every((x) => x.dtype === "f32" && x.shape.length === 4)) {
    throw bad("need f32 q (B, 1, Hq, D) and kCache, vCache (B, T, Hkv, D)");
  }
  if (k.shape.some((x, i) => x !== v.shape[i])) throw bad("kCache and vCache must have equal shapes");
  const [b, one, hq, d] = q.shape;
  const [bk, tlen, hkv, dk] = k.shape;
  if (one !== 1) throw bad("q must hold one query per sequence (B, 1, Hq, D)");
  if (bk !== b) throw bad(`batch sizes differ (${b} vs ${bk})`);
  if (dk !== d) throw bad(`head dimensions differ (q has D = ${d}, the cache D = ${dk})`);
  if (d < 1 || hkv < 1 || tlen < 1) {
    throw bad("head dimension, head counts and cache length must be positive");
  }
  if (hq % hkv !== 0) throw bad(`query heads Hq = ${hq} must be a multiple of key/value heads Hkv = ${hkv}`);
  if (!(Number.isInteger(p.t) && p.t >= 0 && p.t < tlen)) throw bad(`need an integer 0 <= t < T = ${tlen}`);
  const scale = p.scale ?? 1 / Math.sqrt(d);
  if (!Number.isFinite(scale)) throw bad(`scale = ${scale} must be finite`);
  const chunk = Math.max(1, Math.min(p.chunk ?? decodeChunk(d), tlen));
  const chunks = Math.ceil(tlen / chunk);
  // The combine pass loops twice over the chunks.
  if (2 * chunks > LOOP_SAFE) throw bad(`${chunks} chunks of ${chunk} keys exceed the loop budget`);
  return { b, tlen, hq, hkv, d, scale, chunk, chunks };
};

/**
 * Pass 1: one invocation per (b, h, chunk c): online softmax over keys s in [c C, min(t + 1, (c + 1) C)).
 * With one chunk it writes o directly; otherwise the partial state (m, l, acc[D]) to `part`. Bindings q, kc,
 * vc, part or o (`decls`).
 */
const chunkWgsl = (x: DecodeDims, decls: string): string => {
  const g = x.hq / x.hkv, split = x.chunks > 1;
  const store = split
    ? `  let po = i * ${x.d + 2}u;
  part[po] = m;
  part[po + 1u] = l;
  for (var c = 0u; c < D; c++) { part[po + 2u + c] = acc[c]; }`
    : `  for (var c = 0u; c < D; c++) { o[qo + c] = acc[c] / l; }`;
  return `${decls}
const D = ${x.d}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.y;
  if (i >= ${x.b * x.hq * x.chunks}u) { return; }
  let r = i / ${x.chunks}u; // b * Hq + h
  let ch = i % ${x.chunks}u;
  let b = r / ${x.hq}u;
  let hk = (r % ${x.hq}u) / ${g}u;
  let qo = r * D;
  var qv: array<f32, ${x.d}>;
  var acc: array<f32, ${x.d}>;
  for (var c = 0u; c < D; c++) { qv[c] = q[qo + c] * ${f32Lit(x.scale)}; acc[c] = 0.0; }
  var m = -3.0e38;
  var l = 0.0;
  let s1 = min(u.x + 1u, (ch + 1u) * ${x.chunk}u);
  for (var s = ch * ${x.chunk}u; s < s1; s++) {
    let ko = ((b * ${x.tlen}u + s) * ${x.hkv}u + hk) * D;
    var sc = 0.0;
    for (var c = 0u; c < D; c++) { sc += qv[c] * kc[ko + c]; }
    let mn = max(m, sc);
    let cr = exp(m - mn);
    let e = exp(sc - mn);
    l = l * cr + e;
    for (var c = 0u; c < D; c++) { acc[c] = acc[c] * cr + e * vc[ko + c]; }
    m = mn;
  }
${store}
}`;
};

/**
 * Pass 2 of the split form: one invocation per output element (b, h, e) combines the chunks that hold keys
 * (c <= t / C): M = max m_c, o_e = sum_c exp(m_c - M) acc_c[e] / sum_c exp(m_c - M) l_c. Bindings part, o.
 */
const combineWgsl = (x: DecodeDims, decls: string): string =>
  `${decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.y;
  if (i >= ${x.b * x.hq * x.d}u) { return; }
  let r = i / ${x.d}u;
  let e = i % ${x.d}u;
  let n = u.x / ${x.chunk}u + 1u;
  let base = r * ${x.chunks * (x.d + 2)}u;
  var mx = -3.0e38;
  for (var c = 0u; c < n; c++) { mx = max(mx, part[base + c * ${x.d + 2}u]); }
  var l = 0.0;
  var a = 0.0;
  for (var c = 0u; c < n; c++) {
    let po = base + c * ${x.d + 2}u;
    let w = exp(part[po] - mx);
    l += w * part[po + 1u];
    a += w * part[po + 2u + e];
  }
  o[i] = a / l;
}`;

/**
 * A pass over `n` invocations (a `grid1d` grid) with the storage bindings `buffers`, then the uniform `u`
 * carrying t and the row stride; `text` gives the shader from the declarations.
 */
const decodePass = (
  text: (decls: string) => string,
  n: number,
  t: number,
  buffers: readonly BindSpec[],
  target: GpuTarget,
  label: string,
): GpuPass => {
  const grid = grid1d(n, WG, target);
  const b = bind(...buffers, { uniform: new Uint32Array([t, grid[0] * WG, 0, 0]), name: "u", type: "vec4u" });
  return { wgsl: text(b.decls), workgroups: grid, bindings: b.bindings, label };
};

/**
 * Attention of one query per sequence and head against a KV cache: q (B, 1, Hq, D), kCache and vCache
 * (B, T, Hkv, D) -> o (B, 1, Hq, D) with
 *   o[b, h] = sum_{s <= t} softmax_s(scale q[b, h].k[b, s, g(h)]) v[b, s, g(h)],  g(h) = floor(h / (Hq / Hkv)).
 * Columns past t are never read. Caches longer than `decodeChunk(D)` keys are split (flash-decoding): chunk
 * partial states (max, sum, accumulator) in a scratch buffer, combined by a second pass.
 */
export const decodeAttentionKernel: Kernel<DecodeAttentionParams> = defineKernel<DecodeAttentionParams>({
  name: "decodeAttention",
  infer: (p, inputs) => {
    decodeDims(p, inputs);
    return [{ shape: inputs[0].shape, dtype: "f32" }];
  },
  cpu: (p, [q, k, v], [o]) => {
    const x = decodeDims(p, [q, k, v].map((h) => ({ shape: h.shape, dtype: "f32" as const })));
    const { d } = x, grp = x.hq / x.hkv;
    const sc = new Float64Array(p.t + 1);
    for (let b = 0; b < x.b; b++) {
      for (let h = 0; h < x.hq; h++) {
        const qo = (b * x.hq + h) * d, hk = Math.floor(h / grp);
        let m = -Infinity;
        for (let s = 0; s <= p.t; s++) {
          const ko = ((b * x.tlen + s) * x.hkv + hk) * d;
          let dot = 0;
          for (let e = 0; e < d; e++) dot += q.data[qo + e] * k.data[ko + e];
          sc[s] = x.scale * dot;
          m = Math.max(m, sc[s]);
        }
        let l = 0;
        for (let s = 0; s <= p.t; s++) l += sc[s] = Math.exp(sc[s] - m);
        for (let e = 0; e < d; e++) {
          let acc = 0;
          for (let s = 0; s <= p.t; s++) acc += sc[s] * v.data[((b * x.tlen + s) * x.hkv + hk) * d + e];
          o.data[qo + e] = acc / l;
        }
      }
    }
  },
  gpu: (p, inputs, target) => {
    const x = decodeDims(p, inputs);
    const chunk = (decls: string) => chunkWgsl(x, decls);
    const ins: BindSpec[] = [{ input: 0, name: "q" }, { input: 1, name: "kc" }, { input: 2, name: "vc" }];
    const rows = x.b * x.hq;
    if (x.chunks === 1) {
      return [decodePass(chunk, rows, p.t, [...ins, { output: 0, name: "o" }], target, "decodeAttention")];
    }
    const part: StorageBinding = { kind: "scratch", id: "part", bytes: rows * x.chunks * (x.d + 2) * 4 };
    return [
      decodePass(
        chunk,
        rows * x.chunks,
        p.t,
        [...ins, { buffer: part, name: "part" }],
        target,
        "decodeAttention.chunks",
      ),
      decodePass(
        (decls) => combineWgsl(x, decls),
        rows * x.d,
        p.t,
        [{ buffer: part, name: "part", access: "read" }, { output: 0, name: "o" }],
        target,
        "decodeAttention.combine",
      ),
    ];
  },
});

/**
 * One query per sequence against a KV cache: q (B, 1, Hq, D), kCache and vCache (B, T, Hkv, D), position t
 * (keys 0..t are attended) -> (B, 1, Hq, D). Not differentiable (decoding only).
 */
export const decodeAttention = (
  q: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  t: number,
  opts: { scale?: number; chunk?: number } = {},
): Tensor => apply1(decodeAttentionKernel, { t, scale: opts.scale, chunk: opts.chunk }, [q, kCache, vCache]);
