/** WGSL of the fused causal attention kernels: forward with online softmax, and the two backward passes. */
import { f32Lit, storage } from "./wgsl.ts";

/**
 * What is baked into the shader text: head counts, head dimension and scale (constants of a model). The
 * sequence lengths T and S, the causal offset and the grid size come from a uniform (see `attentionUniform`),
 * so sampling with a growing KV cache reuses one pipeline.
 */
export interface AttentionShape {
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly scale: number;
}

/** Invocations per workgroup of every attention pass. */
export const ATTN_WG = 64;

/** Uniform block: T, S, offset, number of invocations n, and the row stride of the folded grid. */
const UNIFORM =
  `struct Dims { t: u32, s: u32, offset: u32, n: u32, stride: u32, pad0: u32, pad1: u32, pad2: u32 }`;

/** The data of the `Dims` uniform. */
export const attentionUniform = (
  t: number,
  s: number,
  offset: number,
  n: number,
  stride: number,
): Uint32Array => new Uint32Array([t, s, offset, n, stride, 0, 0, 0]);

const header = (idx: number) =>
  `${UNIFORM}
@group(0) @binding(${idx}) var<uniform> u: Dims;
@compute @workgroup_size(${ATTN_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.stride;
  if (i >= u.n) { return; }`;

/** Row index i = (b T + t) Hq + h of a query row, unpacked, with its kv head and its last visible key. */
const queryRow = ({ hq, hkv }: AttentionShape) =>
  `  let h = i % ${hq}u;
  let bt = i / ${hq}u;
  let t = bt % u.t;
  let b = bt / u.t;
  let hk = h / ${hq / hkv}u;
  let qo = i * D;
  let li = (b * ${hq}u + h) * u.t + t;
  let last = min(u.offset + t, u.s - 1u);`;

/**
 * Forward: one invocation per query row (b, t, h). Streams keys s = 0..offset+t with an online softmax
 * (running max m, running sum l, accumulator rescaled by exp(m_old - m_new)); writes O and L = m + log l.
 * Bindings: q, k, v, o, lse, uniform.
 */
export const forwardWgsl = (p: AttentionShape): string =>
  `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "o", "f32", "read_write")}
${storage(4, "lse", "f32", "read_write")}
${header(5)}
${queryRow(p)}
  var qv: array<f32, ${p.d}>;
  var acc: array<f32, ${p.d}>;
  for (var d = 0u; d < D; d++) { qv[d] = q[qo + d] * ${f32Lit(p.scale)}; }
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s <= last; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
    for (var d = 0u; d < D; d++) { sc += qv[d] * k[ko + d]; }
    let mn = max(m, sc);
    let c = exp(m - mn);
    let e = exp(sc - mn);
    l = l * c + e;
    for (var d = 0u; d < D; d++) { acc[d] = acc[d] * c + e * v[ko + d]; }
    m = mn;
  }
  let r = 1.0 / l;
  for (var d = 0u; d < D; d++) { o[qo + d] = acc[d] * r; }
  lse[li] = m + log(l);
}`;

/**
 * Backward for dq, one invocation per query row; also writes Delta_t = sum_d dO O - dL_t (dL only when the
 * log-sum-exp output received a cotangent), which the dk/dv pass reuses. With P = exp(scale q.k - L):
 *   dP_s = dO . v_s,  dS_s = P_s (dP_s - Delta_t),  dq = scale sum_s dS_s k_s.
 * Bindings: q, k, v, o, dO, lse, [dL], dq, delta, uniform.
 */
export const backwardQWgsl = (p: AttentionShape, withDL: boolean): string => {
  const x = withDL ? 1 : 0;
  return `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "o", "f32", "read")}
${storage(4, "dout", "f32", "read")}
${storage(5, "lse", "f32", "read")}
${withDL ? storage(6, "dlse", "f32", "read") : ""}
${storage(6 + x, "dq", "f32", "read_write")}
${storage(7 + x, "delta", "f32", "read_write")}
${header(8 + x)}
${queryRow(p)}
  var qv: array<f32, ${p.d}>;
  var gv: array<f32, ${p.d}>;
  var acc: array<f32, ${p.d}>;
  var dt = 0.0;
  for (var d = 0u; d < D; d++) {
    qv[d] = q[qo + d] * ${f32Lit(p.scale)};
    gv[d] = dout[qo + d];
    dt += gv[d] * o[qo + d];
  }
  ${withDL ? "dt -= dlse[li];" : ""}
  let lrow = lse[li];
  for (var s = 0u; s <= last; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D; d++) {
      sc += qv[d] * k[ko + d];
      dp += gv[d] * v[ko + d];
    }
    let ds = exp(sc - lrow) * (dp - dt);
    for (var d = 0u; d < D; d++) { acc[d] += ds * k[ko + d]; }
  }
  for (var d = 0u; d < D; d++) { dq[qo + d] = acc[d] * ${f32Lit(p.scale)}; }
  delta[li] = dt;
}`;
};

/**
 * Backward for dk and dv, one invocation per key row (b, s, kv head): loops over the query heads of the group
 * and the queries t with offset + t >= s, in a fixed order (deterministic, no atomics):
 *   dv_s = sum P_ts dO_t,  dk_s = scale sum dS_ts q_t.
 * Bindings: q, k, v, dO, lse, delta, dk, dv, uniform.
 */
export const backwardKVWgsl = (p: AttentionShape): string => {
  const g = p.hq / p.hkv;
  return `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "dout", "f32", "read")}
${storage(4, "lse", "f32", "read")}
${storage(5, "delta", "f32", "read")}
${storage(6, "dk", "f32", "read_write")}
${storage(7, "dv", "f32", "read_write")}
${header(8)}
  let hk = i % ${p.hkv}u;
  let bs = i / ${p.hkv}u;
  let s = bs % u.s;
  let b = bs / u.s;
  let ko = i * D;
  var kv: array<f32, ${p.d}>;
  var vv: array<f32, ${p.d}>;
  var ak: array<f32, ${p.d}>;
  var av: array<f32, ${p.d}>;
  for (var d = 0u; d < D; d++) {
    kv[d] = k[ko + d] * ${f32Lit(p.scale)};
    vv[d] = v[ko + d];
  }
  let t0 = select(0u, s - u.offset, s > u.offset);
  for (var j = 0u; j < ${g}u; j++) {
    let h = hk * ${g}u + j;
    for (var t = t0; t < u.t; t++) {
      let qo = ((b * u.t + t) * ${p.hq}u + h) * D;
      let li = (b * ${p.hq}u + h) * u.t + t;
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D; d++) {
        sc += q[qo + d] * kv[d];
        dp += dout[qo + d] * vv[d];
      }
      let pr = exp(sc - lse[li]);
      let ds = pr * (dp - delta[li]);
      for (var d = 0u; d < D; d++) {
        av[d] += pr * dout[qo + d];
        ak[d] += ds * q[qo + d];
      }
    }
  }
  for (var d = 0u; d < D; d++) {
    dk[ko + d] = ak[d] * ${f32Lit(p.scale)};
    dv[ko + d] = av[d];
  }
}`;
};

// ---- tiled variant: a workgroup = ATTN_WG consecutive positions of one (b, head) ------------------------------
//
// Lanes run along the sequence axis, so the address of every key (forward, dq) or query (dk/dv) read in the
// inner loops depends only on the workgroup and the loop counter: a uniform load (one scalar load broadcast to
// the lanes) instead of a per-lane gather. The loop runs to the tile's last visible position; lanes past their
// own causal limit mask their term (P = 0). The uniform's `n` counts workgroups, `stride` is the x extent.

const tiledHeader = (idx: number, rows: string) =>
  `${UNIFORM}
@group(0) @binding(${idx}) var<uniform> u: Dims;
@compute @workgroup_size(${ATTN_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let w = wid.x + wid.y * u.stride;
  if (w >= u.n) { return; }
  let tiles = (${rows} + ${ATTN_WG - 1}u) / ${ATTN_WG}u;
  let tile = w % tiles;
  let first = tile * ${ATTN_WG}u;`;

/** The query side of the tiled forward and dq passes: this lane's query row and the tile's last key. */
const tiledQueryRow = ({ hq, hkv }: AttentionShape) =>
  `  let bh = w / tiles;
  let h = bh % ${hq}u;
  let b = bh / ${hq}u;
  let hk = h / ${hq / hkv}u;
  let live = first + lid.x < u.t;
  let t = min(first + lid.x, u.t - 1u);
  let qo = ((b * u.t + t) * ${hq}u + h) * D;
  let li = (b * ${hq}u + h) * u.t + t;
  let last = min(u.offset + t, u.s - 1u);
  let tileLast = min(u.offset + min(first + ${ATTN_WG - 1}u, u.t - 1u), u.s - 1u);`;

/** Tiled forward (same bindings and outputs as `forwardWgsl`). */
export const forwardTiledWgsl = (p: AttentionShape): string =>
  `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "o", "f32", "read_write")}
${storage(4, "lse", "f32", "read_write")}
${tiledHeader(5, "u.t")}
${tiledQueryRow(p)}
  var qv: array<f32, ${p.d}>;
  var acc: array<f32, ${p.d}>;
  for (var d = 0u; d < D; d++) { qv[d] = q[qo + d] * ${f32Lit(p.scale)}; }
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s <= tileLast; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
    for (var d = 0u; d < D; d++) { sc += qv[d] * k[ko + d]; }
    let sm = select(-3.0e38, sc, s <= last);
    let mn = max(m, sm);
    let c = exp(m - mn);
    let e = exp(sm - mn);
    l = l * c + e;
    for (var d = 0u; d < D; d++) { acc[d] = acc[d] * c + e * v[ko + d]; }
    m = mn;
  }
  if (live) {
    let r = 1.0 / l;
    for (var d = 0u; d < D; d++) { o[qo + d] = acc[d] * r; }
    lse[li] = m + log(l);
  }
}`;

/** Tiled dq pass (same bindings and outputs as `backwardQWgsl`). */
export const backwardQTiledWgsl = (p: AttentionShape, withDL: boolean): string => {
  const x = withDL ? 1 : 0;
  return `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "o", "f32", "read")}
${storage(4, "dout", "f32", "read")}
${storage(5, "lse", "f32", "read")}
${withDL ? storage(6, "dlse", "f32", "read") : ""}
${storage(6 + x, "dq", "f32", "read_write")}
${storage(7 + x, "delta", "f32", "read_write")}
${tiledHeader(8 + x, "u.t")}
${tiledQueryRow(p)}
  var qv: array<f32, ${p.d}>;
  var gv: array<f32, ${p.d}>;
  var acc: array<f32, ${p.d}>;
  var dt = 0.0;
  for (var d = 0u; d < D; d++) {
    qv[d] = q[qo + d] * ${f32Lit(p.scale)};
    gv[d] = dout[qo + d];
    dt += gv[d] * o[qo + d];
  }
  ${withDL ? "dt -= dlse[li];" : ""}
  let lrow = lse[li];
  for (var s = 0u; s <= tileLast; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D; d++) {
      sc += qv[d] * k[ko + d];
      dp += gv[d] * v[ko + d];
    }
    let ds = select(0.0, exp(sc - lrow) * (dp - dt), s <= last);
    for (var d = 0u; d < D; d++) { acc[d] += ds * k[ko + d]; }
  }
  if (live) {
    for (var d = 0u; d < D; d++) { dq[qo + d] = acc[d] * ${f32Lit(p.scale)}; }
    delta[li] = dt;
  }
}`;
};

/** Tiled dk/dv pass: a workgroup = ATTN_WG consecutive keys of one (b, kv head) (bindings of `backwardKVWgsl`). */
export const backwardKVTiledWgsl = (p: AttentionShape): string => {
  const g = p.hq / p.hkv;
  return `const D = ${p.d}u;
${storage(0, "q", "f32", "read")}
${storage(1, "k", "f32", "read")}
${storage(2, "v", "f32", "read")}
${storage(3, "dout", "f32", "read")}
${storage(4, "lse", "f32", "read")}
${storage(5, "delta", "f32", "read")}
${storage(6, "dk", "f32", "read_write")}
${storage(7, "dv", "f32", "read_write")}
${tiledHeader(8, "u.s")}
  let bk = w / tiles;
  let hk = bk % ${p.hkv}u;
  let b = bk / ${p.hkv}u;
  let live = first + lid.x < u.s;
  let s = min(first + lid.x, u.s - 1u);
  let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
  var kv: array<f32, ${p.d}>;
  var vv: array<f32, ${p.d}>;
  var ak: array<f32, ${p.d}>;
  var av: array<f32, ${p.d}>;
  for (var d = 0u; d < D; d++) {
    kv[d] = k[ko + d] * ${f32Lit(p.scale)};
    vv[d] = v[ko + d];
  }
  let t0 = select(0u, first - u.offset, first > u.offset);
  for (var j = 0u; j < ${g}u; j++) {
    let h = hk * ${g}u + j;
    for (var t = t0; t < u.t; t++) {
      let qo = ((b * u.t + t) * ${p.hq}u + h) * D;
      let li = (b * ${p.hq}u + h) * u.t + t;
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D; d++) {
        sc += q[qo + d] * kv[d];
        dp += dout[qo + d] * vv[d];
      }
      let pr = select(0.0, exp(sc - lse[li]), s <= u.offset + t);
      let ds = pr * (dp - delta[li]);
      for (var d = 0u; d < D; d++) {
        av[d] += pr * dout[qo + d];
        ak[d] += ds * q[qo + d];
      }
    }
  }
  if (live) {
    for (var d = 0u; d < D; d++) {
      dk[ko + d] = ak[d] * ${f32Lit(p.scale)};
      dv[ko + d] = av[d];
    }
  }
}`;
};
