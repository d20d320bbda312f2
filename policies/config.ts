/** The decoder family's configuration (Qwen3 / Qwen2 / Llama pre-norm blocks) and the parameter layout it implies. */
import type { Shape } from "../core/shape.ts";

/** Architecture of a decoder-only transformer. Layers are 0-based everywhere. */
export interface DecoderConfig {
  readonly architecture: "Qwen3ForCausalLM" | "Qwen2ForCausalLM" | "LlamaForCausalLM";
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly tieWordEmbeddings: boolean;
  /** Qwen2: bias on the q, k and v projections. */
  readonly qkvBias: boolean;
  /** Qwen3: RMSNorm over each head of q and k before rotary embedding. */
  readonly qkNorm: boolean;
}

/** A small Qwen3-style config for tests and benchmarks. */
export const tinyConfig = (over: Partial<DecoderConfig> = {}): DecoderConfig => ({
  architecture: "Qwen3ForCausalLM",
  vocabSize: 64,
  hiddenSize: 32,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  intermediateSize: 64,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  tieWordEmbeddings: true,
  qkvBias: false,
  qkNorm: true,
  ...over,
});

/** One named parameter: its Hugging Face tensor name and shape ([out, in] for linear layers). */
export interface ParamSpec {
  readonly name: string;
  readonly shape: Shape;
  /** How to initialize it: normal(0, std) for matrices, ones for norm scales, zeros for biases. */
  readonly init: "normal" | "ones" | "zeros";
}

/** The parameters of a config, in Hugging Face names and layouts, in a fixed order. */
export const paramSpecs = (c: DecoderConfig): ParamSpec[] => {
  const d = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKvHeads * c.headDim;
  const out: ParamSpec[] = [{ name: "model.embed_tokens.weight", shape: [c.vocabSize, d], init: "normal" }];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [d], init: "ones" });
    out.push({ name: `${p}.self_attn.q_proj.weight`, shape: [qd, d], init: "normal" });
    out.push({ name: `${p}.self_attn.k_proj.weight`, shape: [kvd, d], init: "normal" });
    out.push({ name: `${p}.self_attn.v_proj.weight`, shape: [kvd, d], init: "normal" });
    if (c.qkvBias) {
      out.push({ name: `${p}.self_attn.q_proj.bias`, shape: [qd], init: "zeros" });
      out.push({ name: `${p}.self_attn.k_proj.bias`, shape: [kvd], init: "zeros" });
      out.push({ name: `${p}.self_attn.v_proj.bias`, shape: [kvd], init: "zeros" });
    }
    if (c.qkNorm) {
      out.push({ name: `${p}.self_attn.q_norm.weight`, shape: [c.headDim], init: "ones" });
      out.push({ name: `${p}.self_attn.k_norm.weight`, shape: [c.headDim], init: "ones" });
    }
    out.push({ name: `${p}.self_attn.o_proj.weight`, shape: [d, qd], init: "normal" });
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [d], init: "ones" });
    out.push({ name: `${p}.mlp.gate_proj.weight`, shape: [c.intermediateSize, d], init: "normal" });
    out.push({ name: `${p}.mlp.up_proj.weight`, shape: [c.intermediateSize, d], init: "normal" });
    out.push({ name: `${p}.mlp.down_proj.weight`, shape: [d, c.intermediateSize], init: "normal" });
  }
  out.push({ name: "model.norm.weight", shape: [d], init: "ones" });
  if (!c.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [c.vocabSize, d], init: "normal" });
  return out;
};
