/** Embedding lookup (a gather of table rows by i32 ids) and its deterministic scatter-add gradient. */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape, size } from "../core/shape.ts";
import { defineKernel, type GpuPass, type GpuTarget, type Kernel } from "../engine/kernel.ts";
import { allocLike, fitsBinding, ranges, rowsPerBinding } from "../engine/binding.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { type Tensor, tidy, view } from "../engine/tensor.ts";
import { custom } from "../engine/tape.ts";
import { zerosLike } from "./layout.ts";
import {
  bind,
  type BindSpec,
  grid1d,
  input,
  LOOP_SAFE,
  output,
  type StorageBinding,
} from "../engine/wgsl.ts";

const WG = 256;
/**
 * Positions per block of the embedding gradient: a chain walk and a repeat scan never leave their block, so
 * no invocation loops more than this many times (llvmpipe silently cuts loops past 65,535 iterations).
 */
export const EMB_BLOCK = 16384;

/** The 4 x u32 uniform `u`. */
const vec4 = (x: number, y: number, z: number, w: number): BindSpec => ({
  uniform: new Uint32Array([x, y, z, w]),
  name: "u",
  type: "vec4u",
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
    const b = bind(
      { input: 0, name: "table" },
      { input: 1, name: "ids", type: "i32" },
      { output: 0, name: "out" },
      vec4(n, d, v, grid[0] * WG),
    );
    const wgsl = `${b.decls}
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
      bindings: b.bindings,
    }];
  },
  // d table[v, j] = sum over positions t with ids[t] == v of dy[t, j]; ids get no gradient.
  vjp: ({ inputs: [table, ids] }, [dy]) => [embeddingGradOf(dy!, ids, table.shape[0]), null],
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
  gpu: ({ vocab }, [dy, ids], target) => {
    // One set of passes for every size: T <= EMB_BLOCK is simply a single block.
    const d = dy.shape[dy.shape.length - 1], T = size(ids.shape);
    const { nb, head, part } = gradScratch(vocab, d, T);
    return [
      ...prepPasses(vocab, d, T, target, head, part),
      sumPass(vocab, d, T, nb, 0, vocab, target, head, part, output(0)),
    ];
  },
});

/**
 * dTable [V, d] of `embeddingGrad`, bound in row blocks when the table is larger than one storage binding (a
 * 151,936 x 1,024 f32 table is 622 MB; llvmpipe binds 128 MiB): `embeddingGradPrep` builds the per-block chains
 * and partial sums once, then `embeddingGradRows` writes each row block through a view. Every element is the same
 * sum in the same order as the one-binding kernel (bit-identical). Not differentiable (a gradient).
 */
export const embeddingGradOf = (dy: Tensor, ids: Tensor, vocab: number): Tensor => {
  const d = dy.shape[dy.shape.length - 1];
  if (fitsBinding(dy.backend, vocab * d)) return apply1(embeddingGrad, { vocab }, [dy, ids]);
  embeddingGrad.infer({ vocab }, [dy, ids]); // the same shape errors
  const [head, part] = apply(embeddingGradPrep, { vocab }, [dy, ids]);
  const out = allocLike(dy, [vocab, d]);
  const rows = rowsPerBinding(dy.backend, d);
  for (const [start, n] of ranges(vocab, rows)) {
    tidy(() => apply1(embeddingGradRows, { start, vocab }, [view(out, start * d, [n, d]), head, part]));
  }
  head.dispose();
  part.dispose();
  return out;
};

/** Host copy of the chain structure: head[b V + v] = first position of v in block b (or 0xffffffff). */
const hostChains = (vocab: number, ids: ArrayLike<number>): Uint32Array => {
  const T = ids.length, nb = Math.max(1, Math.ceil(T / EMB_BLOCK));
  const head = new Uint32Array(nb * vocab).fill(0xffffffff);
  for (let t = T - 1; t >= 0; t--) {
    const id = ids[t];
    if (id >= 0 && id < vocab) head[Math.floor(t / EMB_BLOCK) * vocab + id] = t;
  }
  return head;
};

/**
 * Passes 1-3 of the embedding gradient as a kernel: inputs (dy [..., d], ids [...]) -> head (blocks * V) u32 and
 * part (T, d) f32, where part[t] (t the first position of its id in its block) = sum of dy over the id's positions
 * in that block, in increasing order; other rows of part are unspecified.
 */
export const embeddingGradPrep: Kernel<EmbeddingGradParams> = defineKernel<EmbeddingGradParams>({
  name: "embeddingGradPrep",
  infer: ({ vocab }, [dy, ids]) => {
    const [g] = embeddingGrad.infer({ vocab }, [dy, ids]);
    const T = size(ids.shape), nb = Math.max(1, Math.ceil(T / EMB_BLOCK));
    return [{ shape: [nb * vocab], dtype: "u32" }, { shape: [T, g.shape[1]], dtype: "f32" }];
  },
  cpu: ({ vocab }, [dy, ids], [head, part]) => {
    const d = dy.shape[dy.shape.length - 1];
    const h = hostChains(vocab, ids.data);
    head.data.set(h);
    part.data.fill(0);
    for (let t = 0; t < ids.data.length; t++) {
      const id = ids.data[t], blk = Math.floor(t / EMB_BLOCK);
      if (id < 0 || id >= vocab || h[blk * vocab + id] !== t) continue;
      const end = Math.min((blk + 1) * EMB_BLOCK, ids.data.length);
      for (let j = 0; j < d; j++) {
        let acc = 0;
        for (let p = t; p < end; p++) if (ids.data[p] === id) acc += dy.data[p * d + j];
        part.data[t * d + j] = acc;
      }
    }
  },
  gpu: ({ vocab }, [dy, ids], target) => {
    const d = dy.shape[dy.shape.length - 1], T = size(ids.shape);
    return prepPasses(vocab, d, T, target, output(0), output(1));
  },
});

/** Rows [start, start + rows) of dTable from `embeddingGradPrep`'s head and part: inputs (block (rows, d), head, part). */
export const embeddingGradRows: Kernel<{ readonly start: number; readonly vocab: number }> = defineKernel<
  { readonly start: number; readonly vocab: number }
>({
  name: "embeddingGradRows",
  infer: ({ start, vocab }, [block, head, part]) => {
    if (
      block.shape.length !== 2 || part.shape.length !== 2 || block.shape[1] !== part.shape[1] ||
      start + block.shape[0] > vocab || head.dtype !== "u32" || head.shape[0] % Math.max(1, vocab) !== 0
    ) {
      throw new ShapeError({
        op: "embeddingGrad",
        message: `embeddingGrad: row block ${showShape(block.shape)} at ${start} of ${vocab} rows, head ${
          showShape(head.shape)
        }, part ${showShape(part.shape)} disagree`,
      });
    }
    return [{ shape: block.shape, dtype: "f32", alias: 0 }];
  },
  cpu: ({ start, vocab }, [block, head, part], [out]) => {
    const [rows, d] = block.shape, T = part.shape[0], nb = head.data.length / vocab;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < d; j++) {
        let acc = 0;
        for (let b = 0; b < nb; b++) {
          const p = head.data[b * vocab + start + r];
          if (p < T) acc += part.data[p * d + j];
        }
        out.data[r * d + j] = acc;
      }
    }
  },
  gpu: ({ start, vocab }, [block, head, part], target) => {
    const [rows, d] = block.shape, T = part.shape[0], nb = head.shape[0] / vocab;
    return [sumPass(vocab, d, T, nb, start, rows, target, input(1), input(2), input(0))];
  },
});

/** Uniform `u` of the blocked gradient passes: (n, d, T, V, grid row stride, blocks, first row, -). */
const u8 = (n: number, d: number, T: number, V: number, gx: number, nb: number, start = 0): BindSpec => ({
  uniform: new Uint32Array([n, d, T, V, gx, nb, start, 0]),
  name: "u",
  type: "U8",
  struct: "n: u32, d: u32, T: u32, V: u32, gx: u32, nb: u32, start: u32, p1: u32",
});

/** Blocks of positions and the head/part scratch of the one-kernel gradient. */
const gradScratch = (vocab: number, d: number, T: number) => {
  const nb = Math.max(1, Math.ceil(T / EMB_BLOCK));
  const head: StorageBinding = { kind: "scratch", id: "head", bytes: Math.max(1, nb * vocab) * 4 };
  const part: StorageBinding = { kind: "scratch", id: "part", bytes: T * d * 4 };
  return { nb, head, part };
};

/**
 * Passes 1-3 of the gradient (positions in blocks of EMB_BLOCK; one block when T <= EMB_BLOCK): head init, chain
 * links, per-block chain sums into part.
 */
const prepPasses = (
  vocab: number,
  d: number,
  T: number,
  target: GpuTarget,
  head: StorageBinding,
  part: StorageBinding,
): GpuPass[] => {
  const nb = Math.max(1, Math.ceil(T / EMB_BLOCK));
  if (nb > LOOP_SAFE) {
    throw new ShapeError({ op: "embeddingGrad", message: `embeddingGrad: ${T} positions are too many` });
  }
  const next: StorageBinding = { kind: "scratch", id: "next", bytes: T * 4 };
  const ids = input(1);
  const g0 = grid1d(nb * vocab, WG, target);
  const b0 = bind({ buffer: head, name: "head", type: "u32" }, u8(nb * vocab, d, T, vocab, g0[0] * WG, nb));
  const init = `${b0.decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let v = gid.x + gid.y * u.gx;
  if (v >= u.n) { return; }
  head[v] = 0xffffffffu;
}`;
  // head[b V + id] = the first position of id in block b; nxt[t] = the next position of ids[t] in its block.
  const g1 = grid1d(T, WG, target);
  const b1 = bind(
    { buffer: ids, name: "ids", type: "i32" },
    { buffer: head, name: "head", type: "atomic<u32>" },
    { buffer: next, name: "nxt", type: "u32" },
    u8(T, d, T, vocab, g1[0] * WG, nb),
  );
  const link = `${b1.decls}
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
  const b2 = bind(
    { buffer: ids, name: "ids", type: "i32" },
    { buffer: head, name: "head", type: "u32", access: "read" },
    { buffer: next, name: "nxt", type: "u32", access: "read" },
    { input: 0, name: "dy" },
    { buffer: part, name: "part" },
    u8(T * d, d, T, vocab, g2[0] * WG, nb),
  );
  const partial = `${b2.decls}
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
  return [
    {
      wgsl: init,
      workgroups: nb * vocab > 0 ? g0 : [0, 1, 1],
      bindings: b0.bindings,
      label: "embeddingGrad.init",
    },
    {
      wgsl: link,
      workgroups: g1,
      bindings: b1.bindings,
      label: "embeddingGrad.link",
    },
    {
      wgsl: partial,
      workgroups: T * d > 0 ? g2 : [0, 1, 1],
      bindings: b2.bindings,
      label: "embeddingGrad.blocks",
    },
  ];
};

/** Pass 4: rows [start, start + rows) of dTable: per (v, j), the block sums added in block order. */
const sumPass = (
  vocab: number,
  d: number,
  T: number,
  nb: number,
  start: number,
  rows: number,
  target: GpuTarget,
  head: StorageBinding,
  part: StorageBinding,
  out: StorageBinding,
): GpuPass => {
  const n3 = rows * d;
  const g3 = grid1d(n3, WG, target);
  const b = bind(
    { buffer: head, name: "head", type: "u32", access: "read" },
    { buffer: part, name: "part", access: "read" },
    { buffer: out, name: "dt", access: "read_write" }, // output 0, or input 0 (a row block) in place
    u8(n3, d, T, vocab, g3[0] * WG, nb, start),
  );
  const gather = `${b.decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x + gid.y * u.gx;
  if (i >= u.n) { return; }
  let d = u.d;
  let v = u.start + i / d;
  var acc = 0.0;
  for (var b = 0u; b < u.nb; b++) {
    let p = head[b * u.V + v];
    if (p < u.T) { acc += part[p * d + i % d]; }
  }
  dt[i] = acc;
}`;
  return {
    wgsl: gather,
    workgroups: n3 > 0 ? g3 : [0, 1, 1],
    bindings: b.bindings,
    label: "embeddingGrad.sum",
  };
};

/**
 * Embedding lookup: table [V, d] f32, ids [...] i32 -> [..., d]. Differentiable in the table only; an id
 * outside [0, V) reads a row of zeros (and sends no gradient) on every backend.
 */
export const embedding = (table: Tensor, ids: Tensor): Tensor => {
  const [V, d] = table.shape;
  if (table.rank !== 2 || fitsBinding(table.backend, V * d)) return apply1(embeddingKernel, {}, [table, ids]);
  // A table larger than one storage binding (llvmpipe allows 128 MiB; a 151,936 x 1,024 vocabulary is 622 MB):
  // gather from row blocks that each fit, every block writing only the ids that fall in it. Differentiable
  // through the same gradient rule, whose result is written in row blocks too (`embeddingGradOf`).
  return custom("embedding", {}, [table, ids], () => {
    const rows = rowsPerBinding(table.backend, d); // a multiple of 64: aligned views
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

/**
 * The WebGPU default maxStorageBufferBindingSize (and llvmpipe's). The limit actually used is the backend's
 * (`limitsOf(backend).maxStorageBufferBindingSize`, which tests lower to a few KiB).
 */
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
    const b = bind(
      { input: 0, name: "out", access: "read_write" },
      { input: 1, name: "block" },
      { input: 2, name: "ids", type: "i32" },
      vec4(n, d, v, grid[0] * WG),
      { uniform: new Uint32Array(new Int32Array([start, 0, 0, 0]).buffer), name: "s", type: "vec4i" },
    );
    const wgsl = `${b.decls}
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
      bindings: b.bindings,
    }];
  },
});
