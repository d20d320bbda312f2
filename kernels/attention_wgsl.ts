/** WGSL of the fused causal attention kernels: forward with online softmax, and the two backward passes. */
import type { GpuPass, GpuTarget } from "../engine/kernel.ts";
import {
  bind,
  type BindSpec,
  type Bound,
  f32Lit,
  grid1d,
  output,
  type StorageBinding,
} from "../engine/wgsl.ts";

// Two forms of the loops over the head dimension D (`AttentionShape.unroll`). llvmpipe counts every loop
// iteration of an invocation against a budget of 65,535 (LOOP_BUDGET in engine/wgsl.ts) and silently cuts
// loops short past it.
// - looped: scalar loops over D (fast to compile); a visited key (query, in dk/dv) costs 2 D + 1 iterations,
//   so it only fits short ranges (S = 256 keys at D = 128 already broke);
// - unrolled: vec4 steps (D4 = ceil(D / 4), the last padded with zeros) written out in the text, reading vec4
//   bindings when D % 4 == 0; a visit costs one iteration. It compiles slower on llvmpipe (D = 128 forward +
//   backward: ~6 s instead of ~2.7 s, measured with Mesa's shader cache off), so the host picks it only where
//   the looped form would not fit (`unrollD` in attention.ts).

/**
 * What is baked into the shader text: head counts, head dimension and scale (constants of a model), and the
 * form of the D loops. The sequence lengths T and S, the causal offset and the grid size come from a uniform
 * (see `attentionUniform`), so sampling with a growing KV cache reuses one pipeline (two: the form switches
 * once, when S passes the size where the looped form would exceed the loop budget).
 */
export interface AttentionShape {
  readonly hq: number;
  readonly hkv: number;
  readonly d: number;
  readonly scale: number;
  readonly unroll: boolean;
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);
/** Number of vec4 steps over D. */
const d4 = (d: number): number => Math.ceil(d / 4);
/** Element type of the q, k, v, o, dO, dq, dk, dv bindings: vec4 when unrolled and D % 4 == 0. */
const vt = (p: AttentionShape): string => (p.unroll && p.d % 4 === 0 ? "vec4f" : "f32");
/**
 * Step c of the row at element offset `off` of `buf`: element off + c when looped (c is the loop variable);
 * when unrolled (c a literal), the vec4 of elements off + 4c .. off + 4c + 3, zeros past D.
 */
const ld = (p: AttentionShape, buf: string, off: string, c: string): string => {
  if (!p.unroll) return `${buf}[${off} + c]`;
  if (p.d % 4 === 0) return `${buf}[${off} / 4u + ${c}u]`;
  const k = Number(c);
  return `vec4f(${
    range(4).map((e) => (4 * k + e < p.d ? `${buf}[${off} + ${4 * k + e}u]` : "0.0")).join(", ")
  })`;
};
/** Store the step expression `x` (evaluated once) as step c of the row at `off`: components inside D only. */
const st = (p: AttentionShape, buf: string, off: string, c: string, x: string): string => {
  if (!p.unroll) return `${buf}[${off} + c] = ${x};`;
  if (p.d % 4 === 0) return `${buf}[${off} / 4u + ${c}u] = ${x};`;
  const k = Number(c);
  const parts = range(4).filter((e) => 4 * k + e < p.d).map((e) =>
    `${buf}[${off} + ${4 * k + e}u] = w4[${e}];`
  );
  return `{ let w4 = ${x}; ${parts.join(" ")} }`;
};
/** Sum of the products of two steps: a dot product of vec4s, or a product of scalars. */
const dot = (
  p: AttentionShape,
  a: string,
  b: string,
): string => (p.unroll ? `dot(${a}, ${b})` : `${a} * ${b}`);
/** `f(c)` for every step c of D: a loop over `c`, or one line per vec4 step with c a literal when unrolled. */
const each = (p: AttentionShape, f: (c: string) => string, indent = "  "): string =>
  p.unroll
    ? range(d4(p.d)).map((c) => `${indent}{ ${f(String(c))} }`).join("\n")
    : `${indent}for (var c = 0u; c < D; c++) { ${f("c")} }`;
/** Private arrays over D: scalars when looped, vec4 steps when unrolled. */
const vecs = (p: AttentionShape, names: string[]): string =>
  names.map((n) => `  var ${n}: array<${p.unroll ? `vec4f, ${d4(p.d)}` : `f32, ${p.d}`}>;`).join("\n");

/** Forward body from the row's `qo`, `li`, `last`, `hk`, `b` and the key loop's bound `bound`. */
const forwardBody = (p: AttentionShape, bound: string, masked: boolean, store: string) =>
  `${vecs(p, ["qv", "acc"])}
${each(p, (c) => `qv[${c}] = ${ld(p, "q", "qo", c)} * ${f32Lit(p.scale)};`)}
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s <= ${bound}; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
${each(p, (c) => `sc += ${dot(p, `qv[${c}]`, ld(p, "k", "ko", c))};`, "    ")}
    let sm = ${masked ? "select(-3.0e38, sc, s <= last)" : "sc"};
    let mn = max(m, sm);
    let cr = exp(m - mn);
    let e = exp(sm - mn);
    l = l * cr + e;
${each(p, (c) => `acc[${c}] = acc[${c}] * cr + e * ${ld(p, "v", "ko", c)};`, "    ")}
    m = mn;
  }
${store}`;

/** dq body (after the row's indices), with the key loop bound and the P mask; ends before the stores. */
const dqBody = (p: AttentionShape, withDL: boolean, bound: string, masked: boolean) =>
  `${vecs(p, ["qv", "gv", "acc"])}
  var dt = 0.0;
${
    each(p, (c) =>
      `qv[${c}] = ${ld(p, "q", "qo", c)} * ${f32Lit(p.scale)}; gv[${c}] = ${ld(p, "dout", "qo", c)}; dt += ${
        dot(p, `gv[${c}]`, ld(p, "o", "qo", c))
      };`)
  }
  ${withDL ? "dt -= dlse[li];" : ""}
  let lrow = lse[li];
  for (var s = 0u; s <= ${bound}; s++) {
    let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
    var sc = 0.0;
    var dp = 0.0;
${
    each(
      p,
      (c) =>
        `sc += ${dot(p, `qv[${c}]`, ld(p, "k", "ko", c))}; dp += ${dot(p, `gv[${c}]`, ld(p, "v", "ko", c))};`,
      "    ",
    )
  }
    let ds = ${masked ? "select(0.0, exp(sc - lrow) * (dp - dt), s <= last)" : "exp(sc - lrow) * (dp - dt)"};
${each(p, (c) => `acc[${c}] += ds * ${ld(p, "k", "ko", c)};`, "    ")}
  }`;

/** dk/dv body from the key's `ko`, `s`, `b`, `hk` and the first query `first0`; ends before the stores. */
const kvBody = (p: AttentionShape, first0: string, masked: boolean) => {
  const g = p.hq / p.hkv;
  return `${vecs(p, ["kv", "vv", "ak", "av"])}
${
    each(p, (c) =>
      `kv[${c}] = ${ld(p, "k", "ko", c)} * ${f32Lit(p.scale)}; vv[${c}] = ${ld(p, "v", "ko", c)};`)
  }
  let t0 = max(select(0u, ${first0} - u.offset, ${first0} > u.offset), ch * u.tc);
  let t1 = min(u.t, (ch + 1u) * u.tc);
  for (var j = 0u; j < ${g}u; j++) {
    let h = hk * ${g}u + j;
    for (var t = t0; t < t1; t++) {
      let qo = ((b * u.t + t) * ${p.hq}u + h) * D;
      let li = (b * ${p.hq}u + h) * u.t + t;
      var sc = 0.0;
      var dp = 0.0;
${
    each(
      p,
      (c) =>
        `sc += ${dot(p, ld(p, "q", "qo", c), `kv[${c}]`)}; dp += ${
          dot(p, ld(p, "dout", "qo", c), `vv[${c}]`)
        };`,
      "      ",
    )
  }
      let pr = ${masked ? "select(0.0, exp(sc - lse[li]), s <= u.offset + t)" : "exp(sc - lse[li])"};
      let ds = pr * (dp - delta[li]);
${
    each(
      p,
      (c) => `av[${c}] += pr * ${ld(p, "dout", "qo", c)}; ak[${c}] += ds * ${ld(p, "q", "qo", c)};`,
      "      ",
    )
  }
    }
  }`;
};

/** dk/dv stores of this chunk at element offset `wo`. */
const kvStore = (p: AttentionShape, indent = "  "): string =>
  each(
    p,
    (c) => `${st(p, "dk", "wo", c, `ak[${c}] * ${f32Lit(p.scale)}`)} ${st(p, "dv", "wo", c, `av[${c}]`)}`,
    indent,
  );

/**
 * Sums the `chunks` chunks of a split dk/dv pass from the scratch partials pk, pv into outputs 0, 1 (dk, dv):
 * out[e] = sum_c part[c E + e] in chunk order, E = `e` elements of dk.
 */
export const kvCombinePass = (
  pk: StorageBinding,
  pv: StorageBinding,
  e: number,
  chunks: number,
  target: GpuTarget,
): GpuPass => {
  const grid = grid1d(e, 256, target);
  const b = bind(
    { buffer: pk, name: "pk", access: "read" },
    { buffer: pv, name: "pv", access: "read" },
    { output: 0, name: "dk" },
    { output: 1, name: "dv" },
    { uniform: new Uint32Array([e, chunks, grid[0] * 256, 0]), name: "u", type: "vec4u" },
  );
  return {
    wgsl: `${b.decls}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x + gid.y * u.z;
  if (e >= u.x) { return; }
  var a = 0.0;
  var b = 0.0;
  for (var c = 0u; c < u.y; c++) {
    a += pk[c * u.x + e];
    b += pv[c * u.x + e];
  }
  dk[e] = a;
  dv[e] = b;
}`,
    workgroups: grid,
    bindings: b.bindings,
    label: "attentionBwdKV.combine",
  };
};

/** Invocations per workgroup of every attention pass. */
export const ATTN_WG = 64;

/**
 * Uniform block `u`, the last binding of every pass: T, S, offset, number of invocations (or workgroups) n over
 * all chunks, the row stride of the folded grid, the dk/dv query chunking (chunk length tc: queries t in
 * [ch tc, (ch + 1) tc), ceil(T / tc) chunks; the element offset between the chunks' partial outputs). `data`
 * from `attentionUniform`.
 */
const dimsUniform = (data: Uint32Array): BindSpec => ({
  uniform: data,
  name: "u",
  type: "Dims",
  struct: "t: u32, s: u32, offset: u32, n: u32, stride: u32, tc: u32, cstride: u32, pad: u32",
});

/** A pass's shader text and bindings; the host adds the grid. */
export type Shader = Pick<GpuPass, "wgsl" | "bindings">;

/** The q, k, v bindings (inputs 0-2) every pass starts with. */
const qkv = (p: AttentionShape): BindSpec[] => [
  { input: 0, name: "q", type: vt(p) },
  { input: 1, name: "k", type: vt(p) },
  { input: 2, name: "v", type: vt(p) },
];

/** The data of the `Dims` uniform (one chunk of all T queries unless given). */
export const attentionUniform = (
  t: number,
  s: number,
  offset: number,
  n: number,
  stride: number,
  chunk: { tc: number; cstride: number } = { tc: Math.max(1, t), cstride: 0 },
): Uint32Array => new Uint32Array([t, s, offset, n, stride, chunk.tc, chunk.cstride, 0]);

/** Entry of the row variant: `i` = this invocation's row within its chunk `ch`. */
const header = `@compute @workgroup_size(${ATTN_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i0 = gid.x + gid.y * u.stride;
  if (i0 >= u.n) { return; }
  let per = u.n / ((u.t + u.tc - 1u) / u.tc);
  let ch = i0 / per;
  let i = i0 % per;`;

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

/** Bindings of the forward passes: q, k, v, o, lse, uniform. */
const forwardBinds = (p: AttentionShape, dims: Uint32Array): Bound =>
  bind(...qkv(p), { output: 0, name: "o", type: vt(p) }, { output: 1, name: "lse" }, dimsUniform(dims));

/**
 * Forward: one invocation per query row (b, t, h). Streams keys s = 0..offset+t with an online softmax
 * (running max m, running sum l, accumulator rescaled by exp(m_old - m_new)); writes O and L = m + log l.
 */
const forwardWgsl = (p: AttentionShape, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${header}
${queryRow(p)}
${
    forwardBody(
      p,
      "last",
      false,
      `  let r = 1.0 / l;
${each(p, (c) => st(p, "o", "qo", c, `acc[${c}] * r`))}
  lse[li] = m + log(l);`,
    )
  }
}`;

/** Bindings of the dq passes: q, k, v, o, dO, lse, [dL], dq, delta, uniform. */
const backwardQBinds = (p: AttentionShape, withDL: boolean, dims: Uint32Array): Bound =>
  bind(
    ...qkv(p),
    { input: 3, name: "o", type: vt(p) },
    { input: 4, name: "dout", type: vt(p) },
    { input: 5, name: "lse" },
    withDL && { input: 6, name: "dlse" },
    { output: 0, name: "dq", type: vt(p) },
    { output: 1, name: "delta" },
    dimsUniform(dims),
  );

/**
 * Backward for dq, one invocation per query row; also writes Delta_t = sum_d dO O - dL_t (dL only when the
 * log-sum-exp output received a cotangent), which the dk/dv pass reuses. With P = exp(scale q.k - L):
 *   dP_s = dO . v_s,  dS_s = P_s (dP_s - Delta_t),  dq = scale sum_s dS_s k_s.
 */
const backwardQWgsl = (p: AttentionShape, withDL: boolean, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${header}
${queryRow(p)}
${dqBody(p, withDL, "last", false)}
${each(p, (c) => st(p, "dq", "qo", c, `acc[${c}] * ${f32Lit(p.scale)}`))}
  delta[li] = dt;
}`;

/** Bindings of the dk/dv passes: q, k, v, dO, lse, delta, dk, dv (outputs, or the chunk partials), uniform. */
const backwardKVBinds = (
  p: AttentionShape,
  dims: Uint32Array,
  [dk, dv]: readonly [StorageBinding, StorageBinding],
): Bound =>
  bind(
    ...qkv(p),
    { input: 3, name: "dout", type: vt(p) },
    { input: 4, name: "lse" },
    { input: 5, name: "delta" },
    { buffer: dk, name: "dk", type: vt(p) },
    { buffer: dv, name: "dv", type: vt(p) },
    dimsUniform(dims),
  );

/**
 * Backward for dk and dv, one invocation per key row (b, s, kv head) and query chunk: loops over the query
 * heads of the group and the chunk's queries t with offset + t >= s, in a fixed order (deterministic, no
 * atomics):   dv_s = sum P_ts dO_t,  dk_s = scale sum dS_ts q_t.
 */
const backwardKVWgsl = (p: AttentionShape, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${header}
  let hk = i % ${p.hkv}u;
  let bs = i / ${p.hkv}u;
  let s = bs % u.s;
  let b = bs / u.s;
  let ko = i * D;
${kvBody(p, "s", false)}
  let wo = ch * u.cstride + ko;
${kvStore(p)}
}`;

// ---- tiled variant: a workgroup = ATTN_WG consecutive positions of one (b, head) ------------------------------
//
// Lanes run along the sequence axis, so the address of every key (forward, dq) or query (dk/dv) read in the
// inner loops depends only on the workgroup and the loop counter: a uniform load (one scalar load broadcast to
// the lanes) instead of a per-lane gather. The loop runs to the tile's last visible position; lanes past their
// own causal limit mask their term (P = 0). The uniform's `n` counts workgroups, `stride` is the x extent.

const tiledHeader = (rows: string) =>
  `@compute @workgroup_size(${ATTN_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let w0 = wid.x + wid.y * u.stride;
  if (w0 >= u.n) { return; }
  let per = u.n / ((u.t + u.tc - 1u) / u.tc);
  let ch = w0 / per;
  let w = w0 % per;
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

/** Tiled forward (the bindings and outputs of `forwardWgsl`). */
const forwardTiledWgsl = (p: AttentionShape, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${tiledHeader("u.t")}
${tiledQueryRow(p)}
${
    forwardBody(
      p,
      "tileLast",
      true,
      `  if (live) {
    let r = 1.0 / l;
${each(p, (c) => st(p, "o", "qo", c, `acc[${c}] * r`), "    ")}
    lse[li] = m + log(l);
  }`,
    )
  }
}`;

/** Tiled dq pass (the bindings and outputs of `backwardQWgsl`). */
const backwardQTiledWgsl = (p: AttentionShape, withDL: boolean, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${tiledHeader("u.t")}
${tiledQueryRow(p)}
${dqBody(p, withDL, "tileLast", true)}
  if (live) {
${each(p, (c) => st(p, "dq", "qo", c, `acc[${c}] * ${f32Lit(p.scale)}`), "    ")}
    delta[li] = dt;
  }
}`;

/** Tiled dk/dv pass: a workgroup = ATTN_WG consecutive keys of one (b, kv head) (bindings of `backwardKVWgsl`). */
const backwardKVTiledWgsl = (p: AttentionShape, decls: string): string =>
  `const D = ${p.d}u;
${decls}
${tiledHeader("u.s")}
  let bk = w / tiles;
  let hk = bk % ${p.hkv}u;
  let b = bk / ${p.hkv}u;
  let live = first + lid.x < u.s;
  let s = min(first + lid.x, u.s - 1u);
  let ko = ((b * u.s + s) * ${p.hkv}u + hk) * D;
${kvBody(p, "first", true)}
  if (live) {
    let wo = ch * u.cstride + ko;
${kvStore(p, "    ")}
  }
}`;

/** The forward pass (row or `tiled` variant) with the `Dims` uniform `dims`. */
export const forwardShader = (p: AttentionShape, tiled: boolean, dims: Uint32Array): Shader => {
  const b = forwardBinds(p, dims);
  return { wgsl: (tiled ? forwardTiledWgsl : forwardWgsl)(p, b.decls), bindings: b.bindings };
};

/** The dq pass (row or `tiled` variant); `withDL`: the log-sum-exp output's cotangent is input 6. */
export const backwardQShader = (
  p: AttentionShape,
  withDL: boolean,
  tiled: boolean,
  dims: Uint32Array,
): Shader => {
  const b = backwardQBinds(p, withDL, dims);
  return { wgsl: (tiled ? backwardQTiledWgsl : backwardQWgsl)(p, withDL, b.decls), bindings: b.bindings };
};

/** The dk/dv pass (row or `tiled` variant), writing `outs` (default outputs 0, 1; chunk partials when split). */
export const backwardKVShader = (
  p: AttentionShape,
  tiled: boolean,
  dims: Uint32Array,
  outs: readonly [StorageBinding, StorageBinding] = [output(0), output(1)],
): Shader => {
  const b = backwardKVBinds(p, dims, outs);
  return { wgsl: (tiled ? backwardKVTiledWgsl : backwardKVWgsl)(p, b.decls), bindings: b.bindings };
};
