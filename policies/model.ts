/**
 * The decoder forward pass (Qwen3 / Qwen2 / Llama pre-norm blocks) over the engine's ops, with the residual
 * stream exposed at named taps. The same program runs on the CPU and the WebGPU backends.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { decodeAttention, kvWrite } from "../kernels/kvcache.ts";
import type { Tensor } from "../engine/tensor.ts";
import { keep, reshape, tensor, zeros } from "../engine/tensor.ts";
import { add, mul, scale, sumTo } from "../kernels/elementwise.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/rmsnorm.ts";
import { embedding } from "../kernels/embedding.ts";
import { rope } from "../kernels/rope.ts";
import { attention } from "../kernels/attention.ts";
import { swiglu } from "../kernels/mlp.ts";
import { streamReadout, unembed } from "./readout.ts";
import type { DecoderConfig } from "./config.ts";
import type { Params } from "./params.ts";

/** The residual stream of one layer l (0-based). */
export interface LayerTaps {
  /** RMSNorm_1^l(h_{l-1}): what attention reads. (B, T, d) */
  readonly attnIn: Tensor;
  /** A_l: the attention block's output, o_proj included. (B, T, d) */
  readonly attn: Tensor;
  /** RMSNorm_2^l(h_{l-1} + A_l): what the FFN reads. (B, T, d) */
  readonly ffnIn: Tensor;
  /** F_l: the FFN's output. (B, T, d) */
  readonly ffn: Tensor;
  /** h_l = h_{l-1} + A_l + F_l. (B, T, d) */
  readonly out: Tensor;
}

/** The named taps of a forward pass over (B, T) ids. */
export interface ForwardResult {
  /** h_{-1}: the embedding output. (B, T, d) */
  readonly embed: Tensor;
  /** The taps of each layer, layers[l] for layer l (0-based). */
  readonly layers: readonly LayerTaps[];
  /** RMSNorm_final(h_{L-1}): what the unembedding reads for the model's own policy. (B, T, d) */
  readonly final: Tensor;
}

const linear = (x: Tensor, w: Tensor, b?: Tensor): Tensor => {
  const y = matmul(x, w, { transB: true }); // x (.., in) @ w(out, in)^T -> (.., out)
  return b ? add(y, b) : y;
};

/**
 * Run the decoder on token ids (B, T) (i32) at positions (T) (i32, usually 0..T-1). Every tap is a tensor in
 * the current scope.
 */
export const forward = (c: DecoderConfig, p: Params, ids: Tensor, positions: Tensor): ForwardResult =>
  forwardWith(c, p, ids, positions);

/**
 * Decoder block l (pre-norm attention, then a pre-norm SwiGLU FFN) on the residual stream h (..., d) of B
 * sequences of T columns each (a forward pass: h (B, T, d); one decoding step: h (B, d), T = 1) at `positions`
 * (T). `attend(q, k, v)` takes the rotated queries (B, T, Hq, D) and keys and the values (B, T, Hkv, D) and
 * returns the attention output (..., Hq*D) before o_proj. The taps of the block, `out` the new residual stream.
 */
const block = (
  c: DecoderConfig,
  p: Params,
  l: number,
  h: Tensor,
  positions: Tensor,
  [B, T]: readonly [number, number],
  attend: (q: Tensor, k: Tensor, v: Tensor) => Tensor,
): LayerTaps => {
  const D = c.headDim, Hq = c.numHeads, Hkv = c.numKvHeads;
  const n = (s: string) => p.get(`model.layers.${l}.${s}`);
  const bias = (s: string) => (c.qkvBias ? n(`self_attn.${s}_proj.bias`) : undefined);
  const attnIn = rmsNorm(h, n("input_layernorm.weight"), c.rmsNormEps); // (..., d)
  let q = reshape(linear(attnIn, n("self_attn.q_proj.weight"), bias("q")), [B, T, Hq, D]);
  let k = reshape(linear(attnIn, n("self_attn.k_proj.weight"), bias("k")), [B, T, Hkv, D]);
  const v = reshape(linear(attnIn, n("self_attn.v_proj.weight"), bias("v")), [B, T, Hkv, D]);
  if (c.qkNorm) {
    q = rmsNorm(q, n("self_attn.q_norm.weight"), c.rmsNormEps);
    k = rmsNorm(k, n("self_attn.k_norm.weight"), c.rmsNormEps);
  }
  q = rope(q, positions, c.ropeTheta, c.ropeScaling); // (B, T, Hq, D)
  k = rope(k, positions, c.ropeTheta, c.ropeScaling); // (B, T, Hkv, D)
  const attn = linear(attend(q, k, v), n("self_attn.o_proj.weight")); // (..., d)
  const mid = add(h, attn);
  const ffnIn = rmsNorm(mid, n("post_attention_layernorm.weight"), c.rmsNormEps);
  const gated = swiglu(linear(ffnIn, n("mlp.gate_proj.weight")), linear(ffnIn, n("mlp.up_proj.weight")));
  const ffn = linear(gated, n("mlp.down_proj.weight")); // (..., d)
  return { attnIn, attn, ffnIn, ffn, out: add(mid, ffn) };
};

/** `forward`, handing each layer's rotated keys and values (B, T, Hkv, D) to `onKV` (the cache prefill). */
const forwardWith = (
  c: DecoderConfig,
  p: Params,
  ids: Tensor,
  positions: Tensor,
  onKV?: (l: number, k: Tensor, v: Tensor) => void,
): ForwardResult => {
  const [B, T] = ids.shape;
  let h = embedding(p.get("model.embed_tokens.weight"), ids); // (B, T, d)
  const embed = h;
  const layers: LayerTaps[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const taps = block(c, p, l, h, positions, [B, T], (q, k, v) => {
      onKV?.(l, k, v);
      return reshape(attention(q, k, v), [B, T, c.numHeads * c.headDim]); // (B, T, Hq*D)
    });
    layers.push(taps);
    h = taps.out;
  }
  const final = rmsNorm(h, p.get("model.norm.weight"), c.rmsNormEps);
  return { embed, layers, final };
};

// ---- KV cache -------------------------------------------------------------------------------------------------

/**
 * Per-layer key and value caches for decoding B sequences of up to T tokens: k[l], v[l] (B, T, Hkv, D) hold
 * the rotated keys and the values of layer l at every written column. Memory: L x 2 x B x T x Hkv x D floats
 * (4 bytes each); the shipped tiny model (L 4, Hkv 2, D 16) at B 128, T 24 takes 3 MiB.
 */
export interface KVCache {
  readonly k: readonly Tensor[];
  readonly v: readonly Tensor[];
  readonly batch: number;
  readonly length: number;
  /** Free every layer's cache. */
  readonly dispose: () => void;
}

/** Allocate a zeroed cache for B sequences of T positions (outside any scope: the caller disposes it). */
export const kvCache = (c: DecoderConfig, backend: Backend, B: number, T: number): KVCache => {
  const shape = [B, T, c.numKvHeads, c.headDim];
  const make = () => Array.from({ length: c.numLayers }, () => keep(zeros(backend, shape)));
  const k = make(), v = make();
  return { k, v, batch: B, length: T, dispose: () => [...k, ...v].forEach((x) => x.dispose()) };
};

const checkCache = (op: string, c: DecoderConfig, cache: KVCache, B: number, what: string): void => {
  const want = [B, cache.length, c.numKvHeads, c.headDim];
  const ok = cache.k.length === c.numLayers && cache.v.length === c.numLayers &&
    [...cache.k, ...cache.v].every((x) => x.shape.every((n, i) => n === want[i]) && x.rank === 4);
  if (!ok) {
    throw new ShapeError({
      op,
      message: `${op}: ${what}; the cache holds ${cache.k.length} layers of ${
        showShape(cache.k[0]?.shape ?? [])
      }, the model needs ${c.numLayers} layers of ${showShape(want)}`,
    });
  }
};

/**
 * The prefill: `forward` over ids (B, T) at positions (T) that also writes every layer's keys and values of
 * all T columns into `cache` (B, T, Hkv, D). Columns past a sequence's prompt hold whatever ids held there;
 * decoding overwrites column t before any query reads it.
 */
export const prefill = (
  c: DecoderConfig,
  p: Params,
  ids: Tensor,
  positions: Tensor,
  cache: KVCache,
): ForwardResult => {
  const [B, T] = ids.shape;
  checkCache("prefill", c, cache, B, `ids ${showShape(ids.shape)}`);
  if (T !== cache.length) {
    throw new ShapeError({
      op: "prefill",
      message: `prefill: ids ${showShape(ids.shape)} must span the cache's T = ${cache.length} columns`,
    });
  }
  return forwardWith(c, p, ids, positions, (l, k, v) => kvWrite(cache.k[l], cache.v[l], k, v, 0));
};

/**
 * One decoding step at column t: the token ids (B) (i32) of column t run through every layer, each writing its
 * rotated key and value at column t of `cache` and attending keys 0..t of it (grouped KV heads), so a token
 * costs O(t), not a full forward. Returns every tap of the step, each (B, d) (a ForwardResult of one column):
 * `final` = RMSNorm_final(h) is the state that predicts column t + 1, equal to `forward(...).final` at column t
 * when columns 0..t-1 of the cache hold that sequence's keys and values, and so is each layer tap to its
 * column of `forward`. Shader texts do not depend on t (it travels in uniforms and a one-element positions
 * tensor).
 */
export const decodeTaps = (
  c: DecoderConfig,
  p: Params,
  cache: KVCache,
  ids: Tensor,
  t: number,
): ForwardResult => {
  const B = ids.shape[0];
  if (ids.rank !== 1 || ids.dtype !== "i32") {
    throw new ShapeError({
      op: "decodeStep",
      message: `decodeStep: ids has shape ${showShape(ids.shape)} (${ids.dtype}), expected i32 (B)`,
    });
  }
  checkCache("decodeStep", c, cache, B, `ids ${showShape(ids.shape)}`);
  if (!(Number.isInteger(t) && t >= 0 && t < cache.length)) {
    throw new ShapeError({
      op: "decodeStep",
      message: `decodeStep: position t = ${t} outside the cache's ${cache.length} columns`,
    });
  }
  const pos = tensor(ids.backend, Int32Array.of(t), [1], "i32");
  let h = embedding(p.get("model.embed_tokens.weight"), ids); // (B, d)
  const embed = h;
  const layers: LayerTaps[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const taps = block(c, p, l, h, pos, [B, 1], (q, k, v) => {
      kvWrite(cache.k[l], cache.v[l], k, v, t);
      return reshape(decodeAttention(q, cache.k[l], cache.v[l], t), [B, c.numHeads * c.headDim]); // (B, Hq*D)
    });
    layers.push(taps);
    h = taps.out; // (B, d)
  }
  return { embed, layers, final: rmsNorm(h, p.get("model.norm.weight"), c.rmsNormEps) }; // (B, d) each
};

/** `decodeTaps`' final state RMSNorm_final(h) (B, d): what predicts column t + 1 under the model's own policy. */
export const decodeStep = (c: DecoderConfig, p: Params, cache: KVCache, ids: Tensor, t: number): Tensor =>
  decodeTaps(c, p, cache, ids, t).final;

/** The unembedding E_u: lm_head.weight, or the input embedding when tied. (V, d) */
export const unembedding = (c: DecoderConfig, p: Params): Tensor =>
  p.get(c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");

/** Logits of the model's own policy (E_u read in row blocks when it exceeds one storage binding). (B, T, V) */
export const logits = (c: DecoderConfig, p: Params, f: ForwardResult): Tensor =>
  unembed(f.final, unembedding(c, p));

/**
 * Next-token cross-entropy of a batch: the mean over counted positions of -log pi(ids[t+1] | ids[..t]), with
 * the log-probs streamed over the vocabulary (no (B*T, V) logits). `ids` (B, T) i32; `idsHost` its host copy
 * (for the shifted targets); `mask` (B*T), optional, marks the positions t whose next token counts (default:
 * every t < T-1).
 */
export const lmLoss = (
  c: DecoderConfig,
  p: Params,
  ids: Tensor,
  positions: Tensor,
  idsHost: ArrayLike<number>,
  mask?: ArrayLike<number>,
): Tensor => {
  const [B, T] = ids.shape;
  const f = forward(c, p, ids, positions);
  const targets = new Int32Array(B * T);
  const m = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t + 1 < T; t++) {
      targets[b * T + t] = idsHost[b * T + t + 1];
      m[b * T + t] = mask ? mask[b * T + t] : 1;
    }
  }
  const count = m.reduce((a, x) => a + x, 0);
  const x = reshape(f.final, [B * T, c.hiddenSize]); // (B*T, d)
  const { logp } = streamReadout(x, unembedding(c, p), tensor(ids.backend, targets, [B * T], "i32")); // (B*T)
  return scale(sumTo(mul(logp, tensor(ids.backend, m, [B * T])), []), -1 / Math.max(1, count));
};
