/**
 * The decoder forward pass (Qwen3 / Qwen2 / Llama pre-norm blocks) over the engine's ops, with the residual
 * stream exposed at named taps. The same program runs on the CPU and the WebGPU backends.
 */
import type { Tensor } from "../kernels/tensor.ts";
import { reshape, tensor } from "../kernels/tensor.ts";
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

export interface ForwardResult {
  /** h_{-1}: the embedding output. (B, T, d) */
  readonly embed: Tensor;
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
export const forward = (c: DecoderConfig, p: Params, ids: Tensor, positions: Tensor): ForwardResult => {
  const [B, T] = ids.shape;
  const D = c.headDim, Hq = c.numHeads, Hkv = c.numKvHeads;
  let h = embedding(p.get("model.embed_tokens.weight"), ids); // (B, T, d)
  const embed = h;
  const layers: LayerTaps[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const n = (s: string) => p.get(`model.layers.${l}.${s}`);
    const bias = (s: string) => (c.qkvBias ? n(`self_attn.${s}_proj.bias`) : undefined);
    const attnIn = rmsNorm(h, n("input_layernorm.weight"), c.rmsNormEps); // (B, T, d)
    let q = reshape(linear(attnIn, n("self_attn.q_proj.weight"), bias("q")), [B, T, Hq, D]);
    let k = reshape(linear(attnIn, n("self_attn.k_proj.weight"), bias("k")), [B, T, Hkv, D]);
    const v = reshape(linear(attnIn, n("self_attn.v_proj.weight"), bias("v")), [B, T, Hkv, D]);
    if (c.qkNorm) {
      q = rmsNorm(q, n("self_attn.q_norm.weight"), c.rmsNormEps);
      k = rmsNorm(k, n("self_attn.k_norm.weight"), c.rmsNormEps);
    }
    q = rope(q, positions, c.ropeTheta); // (B, T, Hq, D)
    k = rope(k, positions, c.ropeTheta); // (B, T, Hkv, D)
    const o = reshape(attention(q, k, v), [B, T, Hq * D]); // (B, T, Hq*D)
    const attn = linear(o, n("self_attn.o_proj.weight")); // (B, T, d)
    const mid = add(h, attn);
    const ffnIn = rmsNorm(mid, n("post_attention_layernorm.weight"), c.rmsNormEps);
    const gated = swiglu(linear(ffnIn, n("mlp.gate_proj.weight")), linear(ffnIn, n("mlp.up_proj.weight")));
    const ffn = linear(gated, n("mlp.down_proj.weight")); // (B, T, d)
    h = add(mid, ffn);
    layers.push({ attnIn, attn, ffnIn, ffn, out: h });
  }
  const final = rmsNorm(h, p.get("model.norm.weight"), c.rmsNormEps);
  return { embed, layers, final };
};

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
