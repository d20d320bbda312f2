/** The decoder family's configuration (Qwen3 / Qwen2 / Llama pre-norm blocks) and the parameter layout it implies. */
import * as t from "io-ts";
import { ConfigError } from "../core/errors.ts";
import type { Shape } from "../core/shape.ts";

interface PositiveIntBrand {
  readonly PositiveInt: unique symbol;
}
const PositiveInt = t.brand(
  t.number,
  (n): n is t.Branded<number, PositiveIntBrand> => Number.isInteger(n) && n > 0,
  "PositiveInt",
);
interface PositiveBrand {
  readonly Positive: unique symbol;
}
const PositiveNumber = t.brand(
  t.number,
  (n): n is t.Branded<number, PositiveBrand> => n > 0 && Number.isFinite(n),
  "Positive",
);

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

// ---- Hugging Face config.json (io-ts at the edge) ------------------------------------------------------

const ARCHS = ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"] as const;

const HfRequired = t.type({
  architectures: t.array(t.string),
  hidden_size: PositiveInt,
  num_hidden_layers: PositiveInt,
  num_attention_heads: PositiveInt,
  intermediate_size: PositiveInt,
  vocab_size: PositiveInt,
  rms_norm_eps: PositiveNumber,
});
const HfOptional = t.partial({
  num_key_value_heads: PositiveInt,
  head_dim: PositiveInt,
  rope_theta: PositiveNumber,
  tie_word_embeddings: t.boolean,
  attention_bias: t.boolean,
  rope_scaling: t.union([t.null, t.UnknownRecord]),
});

/** Decode a Hugging Face config.json object; a missing or bad field is a ConfigError that names it. */
export const decodeHfConfig = (file: string, json: unknown): DecoderConfig => {
  const fail = (field: string, message: string): never => {
    throw new ConfigError({ source: file, field, message: `${file}: ${field}: ${message}` });
  };
  if (!json || typeof json !== "object") fail("(root)", "expected a JSON object");
  const o = json as Record<string, unknown>;
  for (const [codec, props] of [[HfRequired, HfRequired.props], [HfOptional, HfOptional.props]] as const) {
    for (const [k, c] of Object.entries(props)) {
      const v = o[k];
      if (v === undefined) {
        if (codec === HfRequired) fail(k, "missing (required for a decoder config)");
        continue;
      }
      if (!(c as t.Any).is(v)) fail(k, `expected ${(c as t.Any).name}, got ${JSON.stringify(v)}`);
    }
  }
  const arch = (o.architectures as string[])[0];
  if (!ARCHS.includes(arch as typeof ARCHS[number])) {
    fail("architectures", `unknown architecture ${JSON.stringify(arch)}; supported: ${ARCHS.join(", ")}`);
  }
  if (o.rope_scaling) fail("rope_scaling", "rope scaling is not supported yet (expected null or absent)");
  const heads = o.num_attention_heads as number;
  const kv = (o.num_key_value_heads as number | undefined) ?? heads;
  if (heads % kv !== 0) fail("num_key_value_heads", `${kv} does not divide num_attention_heads ${heads}`);
  const hidden = o.hidden_size as number;
  const headDim = (o.head_dim as number | undefined) ?? hidden / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) fail("head_dim", `${headDim} must be an even integer`);
  const a = arch as DecoderConfig["architecture"];
  if (a === "LlamaForCausalLM" && o.attention_bias === true) {
    fail("attention_bias", "Llama attention bias is not supported");
  }
  return {
    architecture: a,
    vocabSize: o.vocab_size as number,
    hiddenSize: hidden,
    numLayers: o.num_hidden_layers as number,
    numHeads: heads,
    numKvHeads: kv,
    headDim,
    intermediateSize: o.intermediate_size as number,
    rmsNormEps: o.rms_norm_eps as number,
    ropeTheta: (o.rope_theta as number | undefined) ?? 10000,
    tieWordEmbeddings: (o.tie_word_embeddings as boolean | undefined) ?? false,
    qkvBias: a === "Qwen2ForCausalLM",
    qkNorm: a === "Qwen3ForCausalLM",
  };
};

/** The config.json object Hugging Face would write for a config. */
export const encodeHfConfig = (c: DecoderConfig): Record<string, unknown> => ({
  architectures: [c.architecture],
  model_type: c.architecture === "Qwen3ForCausalLM"
    ? "qwen3"
    : c.architecture === "Qwen2ForCausalLM"
    ? "qwen2"
    : "llama",
  hidden_size: c.hiddenSize,
  num_hidden_layers: c.numLayers,
  num_attention_heads: c.numHeads,
  num_key_value_heads: c.numKvHeads,
  head_dim: c.headDim,
  intermediate_size: c.intermediateSize,
  rms_norm_eps: c.rmsNormEps,
  rope_theta: c.ropeTheta,
  vocab_size: c.vocabSize,
  tie_word_embeddings: c.tieWordEmbeddings,
  hidden_act: "silu",
  torch_dtype: "float32",
});
