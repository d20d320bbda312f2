/**
 * Streaming readout kernels: per-row statistics of softmax(z / T) folded in over vocabulary chunks with an
 * online log-sum-exp, so a [tokens, vocab] matrix never exists. State per row (R, 4): m (running max of z/T),
 * s = sum exp(z/T - m), w = sum exp(z/T - m) z/T, and the target's z/T.
 * At the end: lse = m + log s, entropy = lse - w / s, logp(target) = z_target/T - lse.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { bind, f32Lit, foldedThreads, rowGrid, treeReduce, withinLoopBudget } from "../engine/wgsl.ts";

const WG = 256;
/** Initial running max: a large negative finite number (exp(-inf - -inf) would be NaN). */
export const NEG_BIG = -3.0e38;

/**
 * One step of the online fold (shared with the KL kernels): with running max `acc[0]`, sum `acc[1]` =
 * sum e^(x - max) and weighted sum `acc[2]` = sum e^(x - max) wx, take in value x of weight wx (rescaling both sums
 * when the max grows).
 */
export const foldStep = (acc: Float64Array, x: number, wx: number): void => {
  if (x > acc[0]) {
    const r = Math.exp(acc[0] - x);
    acc[1] *= r;
    acc[2] *= r;
    acc[0] = x;
  }
  const e = Math.exp(x - acc[0]);
  acc[1] += e;
  acc[2] += e * wx;
};

/** WGSL of foldStep on variables `m`, `s`, `w` (value `x`, weight `wx`), one statement a line, 4-space indent. */
export const foldStepWgsl = (x: string, m: string, s: string, w: string, wx: string): string =>
  `    if (${x} > ${m}) { let r = exp(${m} - ${x}); ${s} *= r; ${w} *= r; ${m} = ${x}; }
    let e = exp(${x} - ${m});
    ${s} += e;
    ${w} += e * ${wx};`;

/**
 * Tree-reduction lines merging slot lid + k into slot lid of the workgroup arrays `m`, `s`, `w` of the fold (the
 * two rescale factors named `a` and `b`).
 */
export const foldMergeLines = (m: string, s: string, w: string, a: string, b: string): string[] => [
  `let m2 = max(${m}[lid], ${m}[lid + k]);`,
  `let ${a} = exp(${m}[lid] - m2);`,
  `let ${b} = exp(${m}[lid + k] - m2);`,
  `${s}[lid] = ${s}[lid] * ${a} + ${s}[lid + k] * ${b};`,
  `${w}[lid] = ${w}[lid] * ${a} + ${w}[lid + k] * ${b};`,
  `${m}[lid] = m2;`,
];

export interface ChunkParams {
  /** First vocabulary id of this chunk. */
  readonly start: number;
  /** Vocabulary size (ids at or past it in the chunk are padding and ignored). */
  readonly vocab: number;
  readonly temperature: number;
}

const checkChunk = (
  op: string,
  z: { shape: readonly number[] },
  ids: { shape: readonly number[]; dtype: string },
) => {
  if (z.shape.length !== 2) {
    throw new ShapeError({ op, message: `${op}: logits chunk must be (R, C), got ${showShape(z.shape)}` });
  }
  if (ids.dtype !== "i32" || ids.shape.length !== 1 || ids.shape[0] !== z.shape[0]) {
    throw new ShapeError({
      op,
      message: `${op}: targets must be i32 (${z.shape[0]}), got ${ids.dtype}${showShape(ids.shape)}`,
    });
  }
};

/**
 * Fold one chunk of logits (R, C) (raw E_u x for ids start..start+C-1) into the running state (R, 4), in place.
 * Inputs: [state, logits, targets]; output 0 aliases state.
 */
export const readoutFold: Kernel<ChunkParams> = defineKernel<ChunkParams>({
  name: "readoutFold",
  infer: (_p, [state, z, ids]) => {
    checkChunk("readoutFold", z, ids);
    if (state.shape.length !== 2 || state.shape[0] !== z.shape[0] || state.shape[1] !== 4) {
      throw new ShapeError({
        op: "readoutFold",
        message: `readoutFold: state must be (${z.shape[0]}, 4), got ${showShape(state.shape)}`,
      });
    }
    return [{ shape: state.shape, dtype: "f32", alias: 0 }];
  },
  cpu: ({ start, vocab, temperature }, [_st, z, ids], [st]) => {
    const [R, C] = z.shape;
    const inv = 1 / temperature;
    const acc = new Float64Array(3);
    for (let i = 0; i < R; i++) {
      acc.set(st.data.subarray(4 * i, 4 * i + 3));
      let zt = st.data[4 * i + 3];
      for (let c = 0; c < C && start + c < vocab; c++) {
        const v = z.data[i * C + c] * inv;
        foldStep(acc, v, v);
        if (start + c === ids.data[i]) zt = v;
      }
      st.data.set([acc[0], acc[1], acc[2], zt], 4 * i);
    }
  },
  gpu: ({ start, vocab, temperature }, [_st, z], target) => {
    const [R, C] = z.shape;
    const valid = Math.max(0, Math.min(C, vocab - start));
    const { decls: head, bindings } = bind(
      { input: 0, name: "st", access: "read_write" },
      { input: 1, name: "z" },
      { input: 2, name: "ids", type: "i32" },
      {
        uniform: new Uint32Array([start | 0, valid, 0, 0]),
        name: "u",
        type: "U",
        struct: "start: i32, valid: u32",
      },
    );
    const inv = f32Lit(1 / temperature);
    if (target.software && withinLoopBudget(C)) {
      // llvmpipe: one invocation per row, no barriers (a 256-wide workgroup barrier costs ~60 us there);
      // invocations of a workgroup run as SIMD lanes over 64 rows. Only for chunks within the loop budget:
      // llvmpipe silently cuts a loop short past 65,535 iterations (longer chunks take the workgroup variant).
      const { gx, workgroups: threads } = foldedThreads(R, 64, target);
      const wgsl = `${head}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.x + gid.y * ${gx * 64}u;
  if (row >= ${R}u) { return; }
  let tgt = ids[row] - u.start;
  var m = st[row * 4u];
  var s = st[row * 4u + 1u];
  var w = st[row * 4u + 2u];
  var zt = st[row * 4u + 3u];
  for (var c = 0u; c < u.valid; c++) {
    let v = z[row * ${C}u + c] * ${inv};
${foldStepWgsl("v", "m", "s", "w", "v")}
    if (i32(c) == tgt) { zt = v; }
  }
  st[row * 4u] = m;
  st[row * 4u + 1u] = s;
  st[row * 4u + 2u] = w;
  st[row * 4u + 3u] = zt;
}`;
      return [{ wgsl, workgroups: valid === 0 ? [0, 0, 0] : threads, bindings }];
    }
    const grid = rowGrid(R, target);
    const wgsl = `${head}
var<workgroup> sm: array<f32, ${WG}>;
var<workgroup> ss: array<f32, ${WG}>;
var<workgroup> sw: array<f32, ${WG}>;
var<workgroup> zt: f32;
var<workgroup> hit: u32;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * ${grid[0]}u;
  if (row >= ${R}u) { return; }
  if (lid == 0u) { hit = 0u; }
  workgroupBarrier();
  let tgt = ids[row] - u.start;
  var m = ${f32Lit(NEG_BIG)};
  var s = 0.0;
  var w = 0.0;
  for (var c = lid; c < u.valid; c += ${WG}u) {
    let v = z[row * ${C}u + c] * ${inv};
${foldStepWgsl("v", "m", "s", "w", "v")}
    if (i32(c) == tgt) { zt = v; hit = 1u; }
  }
  sm[lid] = m; ss[lid] = s; sw[lid] = w;
${treeReduce(WG, "lid", "k", foldMergeLines("sm", "ss", "sw", "a", "b"))}
  if (lid == 0u) {
    let m0 = st[row * 4u];
    let m2 = max(m0, sm[0]);
    let a = exp(m0 - m2);
    let b = exp(sm[0] - m2);
    st[row * 4u] = m2;
    st[row * 4u + 1u] = st[row * 4u + 1u] * a + ss[0] * b;
    st[row * 4u + 2u] = st[row * 4u + 2u] * a + sw[0] * b;
    if (hit == 1u) { st[row * 4u + 3u] = zt; }
  }
}`;
    return [{ wgsl, workgroups: valid === 0 ? [0, 0, 0] : grid, bindings }];
  },
});

/**
 * Gradient of a per-row loss with respect to one chunk of raw logits, given the final statistics.
 * Inputs: logits chunk (R, C), targets (R) i32, final (R, 3) = [lse, mean z/T under p, entropy], a (R) = d loss /
 * d logp(target), b (R) = d loss / d entropy. Output dz (R, C):
 *   d logp / d(z_v/T) = [v = target] - p_v;  d H / d(z_v/T) = -p_v (z_v/T - E_p[z/T]);  times 1/T for raw z.
 */
export const readoutGrad: Kernel<ChunkParams> = defineKernel<ChunkParams>({
  name: "readoutGrad",
  infer: (_p, [z, ids, fin, a, b]) => {
    checkChunk("readoutGrad", z, ids);
    const R = z.shape[0];
    if (fin.shape.join() !== `${R},3` || a.shape.join() !== `${R}` || b.shape.join() !== `${R}`) {
      throw new ShapeError({
        op: "readoutGrad",
        message: `readoutGrad: final must be (${R}, 3), a and b (${R}), got ${showShape(fin.shape)}, ${
          showShape(a.shape)
        }, ${showShape(b.shape)}`,
      });
    }
    return [{ shape: z.shape, dtype: "f32" }];
  },
  cpu: ({ start, vocab, temperature }, [z, ids, fin, ca, cb], [dz]) => {
    const [R, C] = z.shape;
    const inv = 1 / temperature;
    for (let i = 0; i < R; i++) {
      const lse = fin.data[3 * i], ez = fin.data[3 * i + 1];
      const a = ca.data[i], b = cb.data[i];
      for (let c = 0; c < C; c++) {
        if (start + c >= vocab) {
          dz.data[i * C + c] = 0;
          continue;
        }
        const v = z.data[i * C + c] * inv;
        const p = Math.exp(v - lse);
        const g = a * ((start + c === ids.data[i] ? 1 : 0) - p) - b * p * (v - ez);
        dz.data[i * C + c] = g * inv;
      }
    }
  },
  gpu: ({ start, vocab, temperature }, [z], target) => {
    const [R, C] = z.shape;
    const n = R * C;
    const { gx, workgroups: grid } = foldedThreads(n, WG, target);
    const inv = f32Lit(1 / temperature);
    const b = bind(
      { input: 0, name: "z" },
      { input: 1, name: "ids", type: "i32" },
      { input: 2, name: "fin" },
      { input: 3, name: "ca" },
      { input: 4, name: "cb" },
      { output: 0, name: "dz" },
      {
        uniform: new Uint32Array([start | 0, vocab, 0, 0]),
        name: "u",
        type: "U",
        struct: "start: i32, vocab: i32",
      },
    );
    const wgsl = `${b.decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * ${gx * WG}u;
  if (i >= ${n}u) { return; }
  let row = i / ${C}u;
  let c = i32(i % ${C}u);
  if (u.start + c >= u.vocab) { dz[i] = 0.0; return; }
  let v = z[i] * ${inv};
  let p = exp(v - fin[row * 3u]);
  let onehot = select(0.0, 1.0, u.start + c == ids[row]);
  let g = ca[row] * (onehot - p) - cb[row] * p * (v - fin[row * 3u + 1u]);
  dz[i] = g * ${inv};
}`;
    return [{
      wgsl,
      workgroups: grid,
      bindings: b.bindings,
    }];
  },
});

/** Turn the running state (R, 4) into final (R, 3) = [lse, E_p[z/T], entropy], entropy (R) and logp(target) (R). */
export const readoutFinish: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "readoutFinish",
  infer: (_p, [st]) => [
    { shape: [st.shape[0], 3], dtype: "f32" },
    { shape: [st.shape[0]], dtype: "f32" },
    { shape: [st.shape[0]], dtype: "f32" },
  ],
  cpu: (_p, [st], [fin, ent, lp]) => {
    const R = st.shape[0];
    for (let i = 0; i < R; i++) {
      const [m, s, w, zt] = [st.data[4 * i], st.data[4 * i + 1], st.data[4 * i + 2], st.data[4 * i + 3]];
      const lse = m + Math.log(s);
      const ez = w / s;
      fin.data.set([lse, ez, lse - ez], 3 * i);
      ent.data[i] = lse - ez;
      lp.data[i] = zt - lse;
    }
  },
  gpu: (_p, [st], target) => {
    const R = st.shape[0];
    const { gx, workgroups: threads } = foldedThreads(R, 64, target);
    const b = bind(
      { input: 0, name: "st" },
      { output: 0, name: "fin" },
      { output: 1, name: "ent" },
      { output: 2, name: "lp" },
    );
    return [{
      wgsl: `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * ${gx * 64}u;
  if (i >= ${R}u) { return; }
  let lse = st[4u * i] + log(st[4u * i + 1u]);
  let ez = st[4u * i + 2u] / st[4u * i + 1u];
  fin[3u * i] = lse;
  fin[3u * i + 1u] = ez;
  fin[3u * i + 2u] = lse - ez;
  ent[i] = lse - ez;
  lp[i] = st[4u * i + 3u] - lse;
}`,
      workgroups: threads,
      bindings: b.bindings,
    }];
  },
});

export interface TopKParams extends ChunkParams {
  /** How many of the largest logits to keep per row (1..16). */
  readonly k: number;
}

/**
 * Fold one chunk of logits (R, C) into a running top-k per row, in place: state (R, 2k) holds the k largest
 * z/T seen so far in descending order, then their ids (as f32, exact below 2^24). Ties keep the lower id first.
 * The insertion is unrolled in the generated text (no inner loop: llvmpipe counts every loop iteration).
 * Inputs: [state, logits]. Each invocation loops over the chunk once: keep chunks within the loop budget.
 */
export const readoutTopK: Kernel<TopKParams> = defineKernel<TopKParams>({
  name: "readoutTopK",
  infer: ({ k }, [state, z]) => {
    if (!Number.isInteger(k) || k < 1 || k > 16) {
      throw new ShapeError({
        op: "readoutTopK",
        message: `readoutTopK: k = ${k} must be an integer in 1..16`,
      });
    }
    if (z.shape.length !== 2 || state.shape.join() !== `${z.shape[0]},${2 * k}`) {
      throw new ShapeError({
        op: "readoutTopK",
        message: `readoutTopK: state must be (${z.shape[0]}, ${2 * k}) for logits ${
          showShape(z.shape)
        }, got ${showShape(state.shape)}`,
      });
    }
    return [{ shape: state.shape, dtype: "f32", alias: 0 }];
  },
  cpu: ({ start, vocab, temperature, k }, [_s, z], [st]) => {
    const [R, C] = z.shape;
    for (let i = 0; i < R; i++) {
      const vals = Array.from(st.data.subarray(2 * k * i, 2 * k * i + k));
      const ids = Array.from(st.data.subarray(2 * k * i + k, 2 * k * (i + 1)));
      for (let c = 0; c < C && start + c < vocab; c++) {
        let v = Math.fround(z.data[i * C + c] * Math.fround(1 / temperature)), id = start + c;
        for (let j = 0; j < k; j++) {
          if (v > vals[j]) [v, vals[j], id, ids[j]] = [vals[j], v, ids[j], id];
        }
      }
      st.data.set(vals, 2 * k * i);
      st.data.set(ids, 2 * k * i + k);
    }
  },
  gpu: ({ start, vocab, temperature, k }, [_s, z], target) => {
    const [R, C] = z.shape;
    const valid = Math.max(0, Math.min(C, vocab - start));
    const { gx, workgroups: threads } = foldedThreads(R, 64, target);
    const js = Array.from({ length: k }, (_, j) => j);
    const b = bind(
      { input: 0, name: "st", access: "read_write" },
      { input: 1, name: "z" },
      {
        uniform: new Uint32Array([start, valid, 0, 0]),
        name: "u",
        type: "U",
        struct: "start: u32, valid: u32",
      },
    );
    const wgsl = `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.x + gid.y * ${gx * 64}u;
  if (row >= ${R}u) { return; }
  let b = row * ${2 * k}u;
${js.map((j) => `  var v${j} = st[b + ${j}u];\n  var i${j} = st[b + ${k + j}u];`).join("\n")}
  for (var c = 0u; c < u.valid; c++) {
    var v = z[row * ${C}u + c] * ${f32Lit(1 / temperature)};
    var id = f32(u.start + c);
${
      js.map((j) =>
        `    if (v > v${j}) { let tv = v${j}; v${j} = v; v = tv; let ti = i${j}; i${j} = id; id = ti; }`
      ).join("\n")
    }
  }
${js.map((j) => `  st[b + ${j}u] = v${j};\n  st[b + ${k + j}u] = i${j};`).join("\n")}
}`;
    return [{
      wgsl,
      workgroups: valid === 0 ? [0, 0, 0] : threads,
      bindings: b.bindings,
    }];
  },
});

/** From the top-k state (R, 2k) and the final stats (R, 3): log-probs (R, k) (z/T - lse) and ids (R, k) i32. */
export const readoutTopKFinish: Kernel<{ readonly k: number }> = defineKernel<{ readonly k: number }>({
  name: "readoutTopKFinish",
  infer: ({ k }, [st, fin]) => {
    const R = st.shape[0];
    if (st.shape.join() !== `${R},${2 * k}` || fin.shape.join() !== `${R},3`) {
      throw new ShapeError({
        op: "readoutTopKFinish",
        message: `readoutTopKFinish: state (${R}, ${2 * k}) and final (${R}, 3) expected, got ${
          showShape(st.shape)
        }, ${showShape(fin.shape)}`,
      });
    }
    return [{ shape: [R, k], dtype: "f32" }, { shape: [R, k], dtype: "i32" }];
  },
  cpu: ({ k }, [st, fin], [lp, ids]) => {
    const R = st.shape[0];
    for (let i = 0; i < R; i++) {
      for (let j = 0; j < k; j++) {
        lp.data[i * k + j] = st.data[2 * k * i + j] - fin.data[3 * i];
        ids.data[i * k + j] = st.data[2 * k * i + k + j];
      }
    }
  },
  gpu: ({ k }, [st]) => {
    const n = st.shape[0] * k;
    const b = bind(
      { input: 0, name: "st" },
      { input: 1, name: "fin" },
      { output: 0, name: "lp" },
      { output: 1, name: "ids", type: "i32" },
    );
    return [{
      wgsl: `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * 4194240u;
  if (i >= ${n}u) { return; }
  let row = i / ${k}u;
  let j = i % ${k}u;
  lp[i] = st[row * ${2 * k}u + j] - fin[row * 3u];
  ids[i] = i32(st[row * ${2 * k}u + ${k}u + j]);
}`,
      workgroups: [Math.min(65535, Math.ceil(n / 64)), Math.ceil(Math.ceil(n / 64) / 65535), 1],
      bindings: b.bindings,
    }];
  },
});
