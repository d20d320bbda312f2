/** Embedding lookup (a gather of table rows by i32 ids) and its deterministic scatter-add gradient. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { defineKernel, type GpuPass, type GpuTarget, type Kernel, type PassBinding } from "./kernel.ts";
import { apply1 } from "./run.ts";
import { type Tensor, tidy, view } from "./tensor.ts";
import { custom } from "./tape.ts";
import { zerosLike } from "./layout.ts";
import { grid1d, LOOP_SAFE, storage } from "./wgsl.ts";

const WG = 256;
/**
 * Positions per block of the embedding gradient: a chain walk and a repeat scan never leave their block, so
 * no invocation loops more than this many times (llvmpipe silently cuts loops past 65,535 iterations).
 */
export const EMB_BLOCK = 16384;

/** A 4 x u32 uniform binding. */
const vec4 = (x: number, y: number, z: number, w: number): PassBinding => ({
  kind: "uniform",
  data: new Uint32Array([x, y, z, w]),
});

/** Throw unless ids are i32. */
const requireIds = (op: string, ids: { dtype: string; shape: readonly number[] }) => {
  if (ids.dtype !== "i32") {
    throw new ShapeError({
      op,
      message: `${op}: ids have dtype ${ids.dtype} and shape ${showShape(ids.shape)}, expected i32`,
    });
  }
};

/**
 * out[..., j] = table[ids[...], j]: table [V, d] f32, ids [...] i32 -> [..., d]. An id outside [0, V) gives a
 * row of zeros on every backend (GPU data cannot be checked on the host).
 */
export const embeddingKernel: Kernel<Record<never, never>> = defineKernel<Record<never, never>>({
  name: "embedding",
  infer: (_p, [table, ids]) => {
    if (table.dtype !== "f32" || table.shape.length !== 2) {
      throw new ShapeError({
        op: "embedding",
        message: `embedding: table has shape ${
          showShape(table.shape)
        } (${table.dtype}), expected [V, d] (f32)`,
      });
    }
    requireIds("embedding", ids);
    return [{ shape: [...ids.shape, table.shape[1]], dtype: "f32" }];
  },
  cpu: (_p, [table, ids], [out]) => {
    const [v, d] = table.shape;
    for (let t = 0; t < ids.data.length; t++) {
      const id = ids.data[t];
      const ok = id >= 0 && id < v;
      for (let j = 0; j < d; j++) out.data[t * d + j] = ok ? table.data[id * d + j] : 0;
    }
  },
  gpu: (_p, [table, ids], target) => {
    const [v, d] = table.shape;
    const n = size(ids.shape) * d;
    const grid = grid1d(n, WG, target);
    // u = (n, d, V, grid row stride): the text does not depend on the shapes.
    const wgsl = `${storage(0, "table", "f32", "read")}
${storage(1, "ids", "i32", "read")}
${storage(2, "out", "f32", "read_write")}
@group(0) @binding(3) var<uniform> u: vec4u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.w;
  if (i >= u.x) { return; }
  let id = ids[i / u.y];
  var y = 0.0;
  if (id >= 0 && id < i32(u.z)) { y = table[u32(id) * u.y + i % u.y]; }
  out[i] = y;
}`;
    return [{
      wgsl,
      workgroups: grid,
      bindings: [
        { kind: "input", index: 0 },
        { kind: "input", index: 1 },
        { kind: "output", index: 0 },
        vec4(n, d, v, grid[0] * WG),
      ],
    }];
  },
  // d table[v, j] = sum over positions t with ids[t] == v of dy[t, j]; ids get no gradient.
  vjp: (
    { inputs: [table, ids] },
    [dy],
  ) => [apply1(embeddingGrad, { vocab: table.shape[0] }, [dy!, ids]), null],
  saveOutputs: false,
});

export interface EmbeddingGradParams {
  /** Rows of the table (V). */
  readonly vocab: number;
}

/**
 * dTable [V, d] from dy [..., d] and ids [...]: dTable[v, j] = sum_{t: ids[t] == v} dy[t, j], summed in
 * increasing t (deterministic; no float atomics). Out-of-range ids contribute nothing. With T positions:
 * (1) head[v] = sentinel, O(V); (2) per position, head[id] = atomicMin (an integer atomic: order-free) and
 * next[t] = the next position with the same id, found by a forward scan that stops at the first repeat:
 * O(T^2) comparisons in the worst case (all ids distinct), cheap for T up to a few thousand;
 * (3) per block, each first occurrence of an id walks its chain summing dy into part[t, :]; (4) per (v, j),
 * the block sums added in block order: O(V d + T d). Positions split into blocks of EMB_BLOCK so that no scan or
 * chain (a repeated id, such as padding) exceeds the per-invocation loop budget; T <= EMB_BLOCK is one block.
 * Deterministic; scans cost O(EMB_BLOCK T) at worst.
 */
export const embeddingGrad: Kernel<EmbeddingGradParams> = defineKernel<EmbeddingGradParams>({
  name: "embeddingGrad",
  infer: ({ vocab }, [dy, ids]) => {
    requireIds("embeddingGrad", ids);
    const d = dy.shape[dy.shape.length - 1];
    if (
      dy.dtype !== "f32" || dy.shape.length !== ids.shape.length + 1 ||
      !sameShape(dy.shape.slice(0, -1), ids.shape)
    ) {
      throw new ShapeError({
        op: "embeddingGrad",
        message: `embeddingGrad: dy has shape ${showShape(dy.shape)} (${dy.dtype}), expected ids shape ${
          showShape(ids.shape)
        } plus one axis (f32)`,
      });
    }
    if (!Number.isInteger(vocab) || vocab < 0) {
      throw new ShapeError({ op: "embeddingGrad", message: `embeddingGrad: vocab ${vocab} is not a size` });
    }
    return [{ shape: [vocab, d], dtype: "f32" }];
  },
  cpu: ({ vocab }, [dy, ids], [dt]) => {
    const d = dy.shape[dy.shape.length - 1];
    const acc = new Float64Array(vocab * d);
    for (let t = 0; t < ids.data.length; t++) {
      const id = ids.data[t];
      if (id < 0 || id >= vocab) continue;
      for (let j = 0; j < d; j++) acc[id * d + j] += dy.data[t * d + j];
    }
    dt.data.set(acc);
  },
  gpu: ({ vocab }, [dy, ids], target) =>
    // One set of passes for every size: T <= EMB_BLOCK is simply a single block.
    gradPasses(vocab, dy.shape[dy.shape.length - 1], size(ids.shape), target),
});

/** Uniform of the blocked gradient passes: (n, d, T, V, grid row stride, blocks, -, -). */
const u8 = (n: number, d: number, T: number, V: number, gx: number, nb: number): PassBinding => ({
  kind: "uniform",
  data: new Uint32Array([n, d, T, V, gx, nb, 0, 0]),
});
const U8 = `struct U8 { n: u32, d: u32, T: u32, V: u32, gx: u32, nb: u32, p0: u32, p1: u32 }`;

/** The passes of `embeddingGrad`: positions in blocks of EMB_BLOCK (one block when T <= EMB_BLOCK). */
const gradPasses = (vocab: number, d: number, T: number, target: GpuTarget): GpuPass[] => {
  const nb = Math.ceil(T / EMB_BLOCK);
  if (nb > LOOP_SAFE) {
    throw new ShapeError({ op: "embeddingGrad", message: `embeddingGrad: ${T} positions are too many` });
  }
  const head: PassBinding = { kind: "scratch", id: "head", bytes: Math.max(1, nb * vocab) * 4 };
  const next: PassBinding = { kind: "scratch", id: "next", bytes: T * 4 };
  const part: PassBinding = { kind: "scratch", id: "part", bytes: T * d * 4 };
  const g0 = grid1d(nb * vocab, WG, target);
  const init = `${storage(0, "head", "u32", "read_write")}
${U8}
@group(0) @binding(1) var<uniform> u: U8;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let v = gid.x + gid.y * u.gx;
  if (v >= u.n) { return; }
  head[v] = 0xffffffffu;
}`;
  // head[b V + id] = the first position of id in block b; nxt[t] = the next position of ids[t] in its block.
  const g1 = grid1d(T, WG, target);
  const link = `${storage(0, "ids", "i32", "read")}
${storage(1, "head", "atomic<u32>", "read_write")}
${storage(2, "nxt", "u32", "read_write")}
${U8}
@group(0) @binding(3) var<uniform> u: U8;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let t = gid.x + gid.y * u.gx;
  let T = u.T;
  if (t >= T) { return; }
  let id = ids[t];
  let blk = t / ${EMB_BLOCK}u;
  let end = min((blk + 1u) * ${EMB_BLOCK}u, T);
  var n = T;
  if (id >= 0 && id < i32(u.V)) {
    atomicMin(&head[blk * u.V + u32(id)], t);
    for (var s = t + 1u; s < end; s++) {
      if (ids[s] == id) { n = s; break; }
    }
  }
  nxt[t] = n;
}`;
  // part[t, j] = the sum of dy[., j] over t's chain in its block, for the first occurrence t of an id in a block.
  const g2 = grid1d(T * d, WG, target);
  const partial = `${storage(0, "ids", "i32", "read")}
${storage(1, "head", "u32", "read")}
${storage(2, "nxt", "u32", "read")}
${storage(3, "dy", "f32", "read")}
${storage(4, "part", "f32", "read_write")}
${U8}
@group(0) @binding(5) var<uniform> u: U8;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.gx;
  if (i >= u.n) { return; }
  let d = u.d;
  let t = i / d;
  let j = i % d;
  let id = ids[t];
  if (id < 0 || id >= i32(u.V)) { return; }
  if (head[(t / ${EMB_BLOCK}u) * u.V + u32(id)] != t) { return; }
  var p = t;
  var acc = 0.0;
  while (p < u.T) {
    acc += dy[p * d + j];
    p = nxt[p];
  }
  part[i] = acc;
}`;
  const n3 = vocab * d;
  const g3 = grid1d(n3, WG, target);
  const gather = `${storage(0, "head", "u32", "read")}
${storage(1, "part", "f32", "read")}
${storage(2, "dt", "f32", "read_write")}
${U8}
@group(0) @binding(3) var<uniform> u: U8;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.gx;
  if (i >= u.n) { return; }
  let d = u.d;
  let v = i / d;
  var acc = 0.0;
  for (var b = 0u; b < u.nb; b++) {
    let p = head[b * u.V + v];
    if (p < u.T) { acc += part[p * d + i % d]; }
  }
  dt[i] = acc;
}`;
  const ids: PassBinding = { kind: "input", index: 1 };
  return [
    {
      wgsl: init,
      workgroups: nb * vocab > 0 ? g0 : [0, 1, 1],
      bindings: [head, u8(nb * vocab, d, T, vocab, g0[0] * WG, nb)],
      label: "embeddingGrad.init",
    },
    {
      wgsl: link,
      workgroups: g1,
      bindings: [ids, head, next, u8(T, d, T, vocab, g1[0] * WG, nb)],
      label: "embeddingGrad.link",
    },
    {
      wgsl: partial,
      workgroups: T * d > 0 ? g2 : [0, 1, 1],
      bindings: [ids, head, next, { kind: "input", index: 0 }, part, u8(T * d, d, T, vocab, g2[0] * WG, nb)],
      label: "embeddingGrad.blocks",
    },
    {
      wgsl: gather,
      workgroups: n3 > 0 ? g3 : [0, 1, 1],
      bindings: [head, part, { kind: "output", index: 0 }, u8(n3, d, T, vocab, g3[0] * WG, nb)],
      label: "embeddingGrad.sum",
    },
  ];
};

/**
 * Embedding lookup: table [V, d] f32, ids [...] i32 -> [..., d]. Differentiable in the table only; an id
 * outside [0, V) reads a row of zeros (and sends no gradient) on every backend.
 */
export const embedding = (table: Tensor, ids: Tensor): Tensor => {
  const [V, d] = table.shape;
  if (table.rank !== 2 || V * d * 4 <= MAX_BINDING_BYTES) return apply1(embeddingKernel, {}, [table, ids]);
  // A table larger than one storage binding (llvmpipe allows 128 MiB; a 151,936 x 1,024 vocabulary is 622 MB):
  // gather from row blocks that each fit, every block writing only the ids that fall in it. Differentiable
  // through the same gradient rule (which needs the whole table's gradient in one buffer).
  return custom("embedding", {}, [table, ids], () => {
    const rows = Math.max(64, Math.floor(MAX_BINDING_BYTES / (4 * d) / 64) * 64); // a multiple of 64: aligned views
    const out = zerosLike(table, [...ids.shape, d]);
    for (let start = 0; start < V; start += rows) {
      tidy(() => {
        const block = view(table, start * d, [Math.min(rows, V - start), d]);
        apply1(embeddingBlockKernel, { start }, [out, block, ids]);
      });
    }
    return [out];
  }, embeddingKernel.vjp)[0];
};

/** Largest table gathered in one binding: the WebGPU default maxStorageBufferBindingSize (and llvmpipe's). */
export const MAX_BINDING_BYTES = 128 * 1024 * 1024;

/** out[t, :] = block[ids[t] - start, :] where that row is in the block, in place (other rows untouched). */
export const embeddingBlockKernel: Kernel<{ readonly start: number }> = defineKernel<
  { readonly start: number }
>({
  name: "embeddingBlock",
  infer: (_p, [out, block, ids]) => {
    requireIds("embedding", ids);
    if (out.shape.length < 1 || out.shape[out.shape.length - 1] !== block.shape[1]) {
      throw new ShapeError({
        op: "embedding",
        message: `embedding: block ${showShape(block.shape)} vs output ${showShape(out.shape)}`,
      });
    }
    return [{ shape: out.shape, dtype: "f32", alias: 0 }];
  },
  cpu: ({ start }, [_o, block, ids], [out]) => {
    const [v, d] = block.shape;
    for (let t = 0; t < ids.data.length; t++) {
      const r = ids.data[t] - start;
      if (r >= 0 && r < v) { for (let j = 0; j < d; j++) out.data[t * d + j] = block.data[r * d + j]; }
    }
  },
  gpu: ({ start }, [_o, block, ids], target) => {
    const [v, d] = block.shape;
    const n = size(ids.shape) * d;
    const grid = grid1d(n, WG, target);
    const wgsl = `${storage(0, "out", "f32", "read_write")}
${storage(1, "block", "f32", "read")}
${storage(2, "ids", "i32", "read")}
@group(0) @binding(3) var<uniform> u: vec4u;
@group(0) @binding(4) var<uniform> s: vec4i;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.w;
  if (i >= u.x) { return; }
  let r = ids[i / u.y] - s.x;
  if (r >= 0 && r < i32(u.z)) { out[i] = block[u32(r) * u.y + i % u.y]; }
}`;
    return [{
      wgsl,
      workgroups: grid,
      bindings: [
        { kind: "input", index: 0 },
        { kind: "input", index: 1 },
        { kind: "input", index: 2 },
        vec4(n, d, v, grid[0] * WG),
        { kind: "uniform", data: new Uint32Array(new Int32Array([start, 0, 0, 0]).buffer) },
      ],
    }];
  },
});
