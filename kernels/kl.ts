/**
 * Streaming KL kernels: per row KL(p_a || p_b) between p_a = softmax(z_a / T) and p_b = softmax(z_b / T), folded
 * over vocabulary chunks with online statistics, so no (rows, vocab) matrix exists. A chunk holds both sides
 * stacked: rows 0..R-1 are z_a, rows R..2R-1 are z_b (one matmul of the stacked points per chunk).
 * State per row (R, 5), with u = z_a/T, v = z_b/T: m_a = running max u, s_a = sum e^(u - m_a),
 * w = sum e^(u - m_a) (u - v), m_b = running max v, s_b = sum e^(v - m_b).
 * At the end: lse_a = m_a + log s_a, lse_b = m_b + log s_b, KL = w / s_a - lse_a + lse_b.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { defineKernel, type Kernel, type TensorSpec } from "../engine/kernel.ts";
import { foldMergeLines, foldStep, foldStepWgsl, NEG_BIG } from "./readout.ts";
import { bind, f32Lit, foldedThreads, rowGrid, treeReduce, withinLoopBudget } from "../engine/wgsl.ts";

const WG = 256;

/** One vocabulary chunk: its first id, the vocabulary size (ids at or past it are ignored) and the temperature. */
export interface KlChunkParams {
  readonly start: number;
  readonly vocab: number;
  readonly temperature: number;
}

/** Gradient params: `detach` stops the gradient of one side ("a" or "b"), e.g. a teacher. */
export interface KlGradParams extends KlChunkParams {
  readonly detach: "none" | "a" | "b";
}

const checkStacked = (op: string, z: TensorSpec): number => {
  if (z.dtype !== "f32" || z.shape.length !== 2 || z.shape[0] % 2 !== 0) {
    throw new ShapeError({
      op,
      message: `${op}: logits chunk must be f32 (2R, C) (z_a rows then z_b rows), got ${z.dtype}${
        showShape(z.shape)
      }`,
    });
  }
  return z.shape[0] / 2;
};

/** Fold one stacked chunk (2R, C) into the state (R, 5) in place. Inputs [state, z]; output 0 aliases state. */
export const klFold: Kernel<KlChunkParams> = defineKernel<KlChunkParams>({
  name: "klFold",
  infer: (_p, [st, z]) => {
    const R = checkStacked("klFold", z);
    if (st.dtype !== "f32" || st.shape.join() !== `${R},5`) {
      throw new ShapeError({
        op: "klFold",
        message: `klFold: state must be f32 (${R}, 5) for a chunk ${showShape(z.shape)}, got ${
          showShape(st.shape)
        }`,
      });
    }
    return [{ shape: st.shape, dtype: "f32", alias: 0 }];
  },
  cpu: ({ start, vocab, temperature }, [_s, z], [st]) => {
    const [stacked, C] = z.shape, R = stacked / 2, inv = 1 / temperature;
    const a = new Float64Array(3);
    for (let i = 0; i < R; i++) {
      a.set(st.data.subarray(5 * i, 5 * i + 3));
      let mb = st.data[5 * i + 3], sb = st.data[5 * i + 4];
      for (let c = 0; c < C && start + c < vocab; c++) {
        const u = z.data[i * C + c] * inv, v = z.data[(R + i) * C + c] * inv;
        foldStep(a, u, u - v);
        if (v > mb) {
          sb *= Math.exp(mb - v);
          mb = v;
        }
        sb += Math.exp(v - mb);
      }
      st.data.set([a[0], a[1], a[2], mb, sb], 5 * i);
    }
  },
  gpu: ({ start, vocab, temperature }, [_s, z], target) => {
    const [stacked, C] = z.shape, R = stacked / 2;
    const valid = Math.max(0, Math.min(C, vocab - start));
    const inv = f32Lit(1 / temperature);
    // Shapes travel in the uniform, so one shader text serves every batch and chunk size.
    const binds = (gx: number) =>
      bind(
        { input: 0, name: "st", access: "read_write" },
        { input: 1, name: "z" },
        {
          uniform: new Uint32Array([valid, R, C, gx]),
          name: "u",
          type: "U",
          struct: "valid: u32, rows: u32, cols: u32, gx: u32",
        },
      );
    const step = `    let a = z[row * u.cols + c] * ${inv};
    let b = z[(u.rows + row) * u.cols + c] * ${inv};
${foldStepWgsl("a", "ma", "sa", "w", "(a - b)")}
    if (b > mb) { sb *= exp(mb - b); mb = b; }
    sb += exp(b - mb);`;
    if (target.software && withinLoopBudget(C)) {
      // llvmpipe: one invocation per row, no barriers (a 256-wide workgroup with barriers costs ~60 us there
      // and compiles slowly); the 64 invocations of a workgroup run as SIMD lanes over 64 rows.
      const { gx, workgroups: threads } = foldedThreads(R, 64, target);
      const b = binds(gx);
      const wgsl = `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.x + gid.y * u.gx * 64u;
  if (row >= u.rows) { return; }
  var ma = st[row * 5u];
  var sa = st[row * 5u + 1u];
  var w = st[row * 5u + 2u];
  var mb = st[row * 5u + 3u];
  var sb = st[row * 5u + 4u];
  for (var c = 0u; c < u.valid; c++) {
${step}
  }
  st[row * 5u] = ma;
  st[row * 5u + 1u] = sa;
  st[row * 5u + 2u] = w;
  st[row * 5u + 3u] = mb;
  st[row * 5u + 4u] = sb;
}`;
      return [{
        wgsl,
        workgroups: valid === 0 ? [0, 0, 0] : threads,
        bindings: b.bindings,
        label: "klFold.thread",
      }];
    }
    const grid = rowGrid(R, target);
    const b = binds(grid[0]);
    const wgsl = `${b.decls}
var<workgroup> sma: array<f32, ${WG}>;
var<workgroup> ssa: array<f32, ${WG}>;
var<workgroup> sw: array<f32, ${WG}>;
var<workgroup> smb: array<f32, ${WG}>;
var<workgroup> ssb: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * u.gx;
  if (row >= u.rows) { return; }
  var ma = ${f32Lit(NEG_BIG)};
  var sa = 0.0;
  var w = 0.0;
  var mb = ${f32Lit(NEG_BIG)};
  var sb = 0.0;
  for (var c = lid; c < u.valid; c += ${WG}u) {
${step}
  }
  sma[lid] = ma; ssa[lid] = sa; sw[lid] = w; smb[lid] = mb; ssb[lid] = sb;
${
      treeReduce(WG, "lid", "k", [
        ...foldMergeLines("sma", "ssa", "sw", "x", "y"),
        "let n2 = max(smb[lid], smb[lid + k]);",
        "ssb[lid] = ssb[lid] * exp(smb[lid] - n2) + ssb[lid + k] * exp(smb[lid + k] - n2);",
        "smb[lid] = n2;",
      ])
    }
  if (lid == 0u) {
    let o = row * 5u;
    let m2 = max(st[o], sma[0]);
    let x = exp(st[o] - m2);
    let y = exp(sma[0] - m2);
    st[o] = m2;
    st[o + 1u] = st[o + 1u] * x + ssa[0] * y;
    st[o + 2u] = st[o + 2u] * x + sw[0] * y;
    let n2 = max(st[o + 3u], smb[0]);
    st[o + 4u] = st[o + 4u] * exp(st[o + 3u] - n2) + ssb[0] * exp(smb[0] - n2);
    st[o + 3u] = n2;
  }
}`;
    return [{
      wgsl,
      workgroups: valid === 0 ? [0, 0, 0] : grid,
      bindings: b.bindings,
      label: "klFold.workgroup",
    }];
  },
});

/** State (R, 5) -> final (R, 3) = [lse_a, lse_b, KL] and KL (R). */
export const klFinish: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "klFinish",
  infer: (_p, [st]) => {
    if (st.dtype !== "f32" || st.shape.length !== 2 || st.shape[1] !== 5) {
      throw new ShapeError({
        op: "klFinish",
        message: `klFinish: state must be f32 (R, 5), got ${showShape(st.shape)}`,
      });
    }
    return [{ shape: [st.shape[0], 3], dtype: "f32" }, { shape: [st.shape[0]], dtype: "f32" }];
  },
  cpu: (_p, [st], [fin, kl]) => {
    for (let i = 0; i < st.shape[0]; i++) {
      const [ma, sa, w, mb, sb] = st.data.subarray(5 * i, 5 * i + 5);
      const la = ma + Math.log(sa), lb = mb + Math.log(sb), k = w / sa - la + lb;
      fin.data.set([la, lb, k], 3 * i);
      kl.data[i] = k;
    }
  },
  gpu: (_p, [st], target) => {
    const R = st.shape[0];
    const { gx, workgroups: threads } = foldedThreads(R, 64, target);
    const b = bind(
      { input: 0, name: "st" },
      { output: 0, name: "fin" },
      { output: 1, name: "kl" },
      { uniform: new Uint32Array([R, gx, 0, 0]), name: "u", type: "U", struct: "rows: u32, gx: u32" },
    );
    return [{
      wgsl: `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.gx * 64u;
  if (i >= u.rows) { return; }
  let la = st[5u * i] + log(st[5u * i + 1u]);
  let lb = st[5u * i + 3u] + log(st[5u * i + 4u]);
  let k = st[5u * i + 2u] / st[5u * i + 1u] - la + lb;
  fin[3u * i] = la;
  fin[3u * i + 1u] = lb;
  fin[3u * i + 2u] = k;
  kl[i] = k;
}`,
      workgroups: threads,
      bindings: b.bindings,
    }];
  },
});

/**
 * Gradient of a per-row loss through KL with respect to one stacked chunk of raw logits. Inputs: z (2R, C),
 * final (R, 3), g (R) = d loss / d KL. Output dz (2R, C), with u = z_a/T, v = z_b/T, log p = u - lse:
 *   dKL/dz_a = p_a (log p_a - log p_b - KL) / T;   dKL/dz_b = (p_b - p_a) / T;   times g.
 * A detached side gets zeros.
 */
export const klGrad: Kernel<KlGradParams> = defineKernel<KlGradParams>({
  name: "klGrad",
  infer: (_p, [z, fin, g]) => {
    const R = checkStacked("klGrad", z);
    if (fin.shape.join() !== `${R},3` || g.shape.join() !== `${R}`) {
      throw new ShapeError({
        op: "klGrad",
        message: `klGrad: final must be (${R}, 3) and g (${R}), got ${showShape(fin.shape)} and ${
          showShape(g.shape)
        }`,
      });
    }
    return [{ shape: z.shape, dtype: "f32" }];
  },
  cpu: ({ start, vocab, temperature, detach }, [z, fin, g], [dz]) => {
    const [stacked, C] = z.shape, R = stacked / 2, inv = 1 / temperature;
    for (let i = 0; i < R; i++) {
      const la = fin.data[3 * i], lb = fin.data[3 * i + 1], k = fin.data[3 * i + 2], gi = g.data[i];
      for (let c = 0; c < C; c++) {
        const ia = i * C + c, ib = (R + i) * C + c;
        if (start + c >= vocab) {
          dz.data[ia] = dz.data[ib] = 0;
          continue;
        }
        const lpa = z.data[ia] * inv - la, lpb = z.data[ib] * inv - lb;
        const pa = Math.exp(lpa), pb = Math.exp(lpb);
        dz.data[ia] = detach === "a" ? 0 : gi * pa * (lpa - lpb - k) * inv;
        dz.data[ib] = detach === "b" ? 0 : gi * (pb - pa) * inv;
      }
    }
  },
  gpu: ({ start, vocab, temperature, detach }, [z], target) => {
    const [stacked, C] = z.shape, R = stacked / 2;
    const n = R * C;
    const { gx, workgroups: threads } = foldedThreads(n, WG, target);
    const inv = f32Lit(1 / temperature);
    const b = bind(
      { input: 0, name: "z" },
      { input: 1, name: "fin" },
      { input: 2, name: "g" },
      { output: 0, name: "dz" },
      {
        uniform: new Uint32Array([start | 0, vocab, n, C, gx, 0, 0, 0]),
        name: "u",
        type: "U",
        struct: "start: i32, vocab: i32, n: u32, cols: u32, gx: u32",
      },
    );
    const wgsl = `${b.decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.gx * ${WG}u;
  if (i >= u.n) { return; }
  let row = i / u.cols;
  let c = i % u.cols;
  let ia = i;
  let ib = u.n + i;
  if (u.start + i32(c) >= u.vocab) { dz[ia] = 0.0; dz[ib] = 0.0; return; }
  let lpa = z[ia] * ${inv} - fin[3u * row];
  let lpb = z[ib] * ${inv} - fin[3u * row + 1u];
  let pa = exp(lpa);
  let pb = exp(lpb);
  let gi = g[row];
  dz[ia] = ${detach === "a" ? "0.0" : `gi * pa * (lpa - lpb - fin[3u * row + 2u]) * ${inv}`};
  dz[ib] = ${detach === "b" ? "0.0" : `gi * (pb - pa) * ${inv}`};
}`;
    return [{
      wgsl,
      workgroups: threads,
      bindings: b.bindings,
    }];
  },
});
