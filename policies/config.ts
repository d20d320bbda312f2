/** The decoder family's configuration (Qwen3 / Qwen2 / Llama pre-norm blocks) and the parameter layout it implies. */
import * as t from "io-ts";
import { ConfigError, showValue } from "../core/errors.ts";
import type { Shape } from "../core/shape.ts";
import { type RopeScaling, ropeScalingProblem } from "../kernels/rope.ts";

export type { RopeScaling } from "../kernels/rope.ts";

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
  /** config.json's `architectures[0]`: the family (read from a folder, it sets qkvBias and qkNorm). */
  readonly architecture: "Qwen3ForCausalLM" | "Qwen2ForCausalLM" | "LlamaForCausalLM";
  /** V: rows of the embedding and the unembedding (config.json's vocab_size; may exceed the tokenizer's). */
  readonly vocabSize: number;
  /** d: width of the residual stream. */
  readonly hiddenSize: number;
  /** L: decoder layers, numbered 0..L-1. */
  readonly numLayers: number;
  /** Query heads per layer. */
  readonly numHeads: number;
  /** Key/value heads per layer (grouped-query attention: numHeads is a multiple of it). */
  readonly numKvHeads: number;
  /** D: width of one head (q_proj has numHeads x D rows; not necessarily d / numHeads). */
  readonly headDim: number;
  /** Width of the SwiGLU FFN's hidden layer (gate_proj and up_proj rows). */
  readonly intermediateSize: number;
  /** Epsilon of every RMSNorm. */
  readonly rmsNormEps: number;
  /** Rotary base frequency theta. */
  readonly ropeTheta: number;
  /** The unembedding E_u is the embedding matrix (no lm_head.weight). */
  readonly tieWordEmbeddings: boolean;
  /** Qwen2: bias on the q, k and v projections. */
  readonly qkvBias: boolean;
  /** Qwen3: RMSNorm over each head of q and k before rotary embedding. */
  readonly qkNorm: boolean;
  /** Rotary frequency scaling (config.json's `rope_scaling` of type llama3); absent: none. */
  readonly ropeScaling?: RopeScaling;
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
  /** The Hugging Face tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  readonly name: string;
  /** Its shape: [out, in] for linear weights, [d] for norm scales, [V, d] for the embedding. */
  readonly shape: Shape;
  /** How to initialize it: normal(0, std) for matrices, ones for norm scales, zeros for biases. */
  readonly init: "normal" | "ones" | "zeros";
}

/** The parameters of a config, in Hugging Face names and layouts, in a fixed order. */
export const paramSpecs = (c: DecoderConfig): ParamSpec[] => [...iterParamSpecs(c)];

/**
 * The parameters of a config one at a time, in paramSpecs' order: a reader can stop at the first one a file
 * lacks, so a config that claims billions of layers costs nothing.
 */
export function* iterParamSpecs(c: DecoderConfig): Generator<ParamSpec> {
  const d = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKvHeads * c.headDim;
  yield { name: "model.embed_tokens.weight", shape: [c.vocabSize, d], init: "normal" };
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    yield { name: `${p}.input_layernorm.weight`, shape: [d], init: "ones" };
    yield { name: `${p}.self_attn.q_proj.weight`, shape: [qd, d], init: "normal" };
    yield { name: `${p}.self_attn.k_proj.weight`, shape: [kvd, d], init: "normal" };
    yield { name: `${p}.self_attn.v_proj.weight`, shape: [kvd, d], init: "normal" };
    if (c.qkvBias) {
      yield { name: `${p}.self_attn.q_proj.bias`, shape: [qd], init: "zeros" };
      yield { name: `${p}.self_attn.k_proj.bias`, shape: [kvd], init: "zeros" };
      yield { name: `${p}.self_attn.v_proj.bias`, shape: [kvd], init: "zeros" };
    }
    if (c.qkNorm) {
      yield { name: `${p}.self_attn.q_norm.weight`, shape: [c.headDim], init: "ones" };
      yield { name: `${p}.self_attn.k_norm.weight`, shape: [c.headDim], init: "ones" };
    }
    yield { name: `${p}.self_attn.o_proj.weight`, shape: [d, qd], init: "normal" };
    yield { name: `${p}.post_attention_layernorm.weight`, shape: [d], init: "ones" };
    yield { name: `${p}.mlp.gate_proj.weight`, shape: [c.intermediateSize, d], init: "normal" };
    yield { name: `${p}.mlp.up_proj.weight`, shape: [c.intermediateSize, d], init: "normal" };
    yield { name: `${p}.mlp.down_proj.weight`, shape: [d, c.intermediateSize], init: "normal" };
  }
  yield { name: "model.norm.weight", shape: [d], init: "ones" };
  if (!c.tieWordEmbeddings) yield { name: "lm_head.weight", shape: [c.vocabSize, d], init: "normal" };
}

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
const NonNegativeInt = t.refinement(t.number, (n) => Number.isInteger(n) && n >= 0, "NonNegativeInt");
const HfOptional = t.partial({
  num_key_value_heads: PositiveInt,
  head_dim: PositiveInt,
  rope_theta: PositiveNumber,
  tie_word_embeddings: t.boolean,
  attention_bias: t.boolean,
  mlp_bias: t.boolean,
  hidden_act: t.string,
  partial_rotary_factor: PositiveNumber,
  rope_scaling: t.union([t.null, t.UnknownRecord]),
  rope_parameters: t.union([t.null, t.UnknownRecord]),
  use_sliding_window: t.boolean,
  sliding_window: t.union([t.null, PositiveInt]),
  max_window_layers: NonNegativeInt,
  layer_types: t.array(t.string),
});

/**
 * Names that plain JavaScript objects inherit (`__proto__`, `constructor`, `toString`, ...): never a field of
 * a config file, so a key of that name is reported as an unknown field instead of being looked up.
 */
export const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(Object.getOwnPropertyNames(Object.prototype));

/** The first own key of `o` that is a prototype name, if any. */
export const prototypeKey = (o: object): string | undefined =>
  Object.keys(o).find((k) => PROTOTYPE_KEYS.has(k));

/** An own property of `o` (never one it inherits). */
const own = (o: Record<string, unknown>, k: string): unknown => (Object.hasOwn(o, k) ? o[k] : undefined);

/** What an io-ts codec of this file accepts, in words. */
const inWords = (name: string): string =>
  ({
    PositiveInt: "a positive integer",
    Positive: "a positive number",
    NonNegativeInt: "an integer >= 0",
    boolean: "true or false",
    string: "a string",
    "Array<string>": "a list of strings",
    "(null | UnknownRecord)": "null or an object",
    "(null | PositiveInt)": "null or a positive integer",
  } as Record<string, string>)[name] ?? name;

/** HF's activation names of SiLU (transformers ACT2FN: "silu" and "swish" are the same function). */
const SILU = ["silu", "swish"];

/** The Qwen2/Qwen3 defaults of max_window_layers (transformers' Qwen2Config and Qwen3Config). */
const DEFAULT_MAX_WINDOW_LAYERS = 28;

const LLAMA3_KEYS = {
  factor: "factor",
  low_freq_factor: "lowFreqFactor",
  high_freq_factor: "highFreqFactor",
  original_max_position_embeddings: "originalMaxPositionEmbeddings",
} as const;

/**
 * Decode a `rope_scaling` (or `rope_parameters`) object: `rope_type` (or the older `type`) "default" means no
 * scaling, "llama3" needs exactly factor, low_freq_factor, high_freq_factor and original_max_position_embeddings;
 * any other type is unsupported. `extra` lists further keys the object may hold (rope_parameters' rope_theta).
 */
const decodeRopeScaling = (
  field: string,
  o: Record<string, unknown>,
  fail: (field: string, message: string) => never,
  extra: readonly string[] = [],
): RopeScaling | undefined => {
  const bad = prototypeKey(o);
  if (bad !== undefined) fail(`${field}.${bad}`, "unknown field");
  const rt = own(o, "rope_type"), ty = own(o, "type");
  if (rt !== undefined && ty !== undefined && rt !== ty) {
    fail(`${field}.rope_type`, `${showValue(rt)} disagrees with ${field}.type ${showValue(ty)}`);
  }
  const type = rt ?? ty;
  if (type === undefined) fail(`${field}.rope_type`, `missing (expected "default" or "llama3")`);
  if (type === "default") return undefined;
  if (type !== "llama3") {
    fail(
      `${field}.rope_type`,
      `rope type ${showValue(type)} is not implemented (supported: "default", "llama3")`,
    );
  }
  for (const k of Object.keys(o)) {
    if (k !== "rope_type" && k !== "type" && !Object.hasOwn(LLAMA3_KEYS, k) && !extra.includes(k)) {
      fail(
        `${field}.${k}`,
        `unknown field of a llama3 rope scaling (expected ${Object.keys(LLAMA3_KEYS).join(", ")})`,
      );
    }
  }
  const out: Record<string, number> = {};
  for (const [k, name] of Object.entries(LLAMA3_KEYS)) {
    const v = own(o, k);
    if (v === undefined) fail(`${field}.${k}`, "missing (required by rope_type llama3)");
    if (typeof v !== "number" || !Number.isFinite(v) || !(v > 0)) {
      fail(`${field}.${k}`, `expected a positive number, got ${showValue(v)}`);
    }
    out[name] = v as number;
  }
  const scaling: RopeScaling = {
    kind: "llama3",
    factor: out.factor,
    lowFreqFactor: out.lowFreqFactor,
    highFreqFactor: out.highFreqFactor,
    originalMaxPositionEmbeddings: out.originalMaxPositionEmbeddings,
  };
  if (!Number.isInteger(scaling.originalMaxPositionEmbeddings)) {
    fail(
      `${field}.original_max_position_embeddings`,
      `expected a positive integer, got ${scaling.originalMaxPositionEmbeddings}`,
    );
  }
  if (!(scaling.highFreqFactor > scaling.lowFreqFactor)) {
    fail(
      `${field}.high_freq_factor`,
      `${scaling.highFreqFactor} must be greater than low_freq_factor ${scaling.lowFreqFactor}`,
    );
  }
  const problem = ropeScalingProblem(scaling);
  if (problem) fail(field, problem);
  return scaling;
};

const sameScaling = (a: RopeScaling | undefined, b: RopeScaling | undefined) =>
  JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/**
 * Decode a Hugging Face config.json object; a missing or bad field is a ConfigError that names it. Fields the
 * decoder does not implement are errors too: `hidden_act` other than SiLU, `rope_scaling` other than llama3,
 * active sliding-window attention, attention or MLP biases the architecture does not have. Other fields are
 * ignored, except keys with prototype names (`__proto__`, `constructor`, ...), which are unknown fields.
 */
export const decodeHfConfig = (file: string, json: unknown): DecoderConfig => {
  const fail = (field: string, message: string): never => {
    throw new ConfigError({ source: file, field, message: `${file}: ${field}: ${message}` });
  };
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    return fail("(root)", "expected a JSON object");
  }
  const o = json as Record<string, unknown>;
  const proto = prototypeKey(o);
  if (proto !== undefined) fail(proto, "unknown field (a JavaScript prototype name, not a config field)");
  for (const [codec, props] of [[HfRequired, HfRequired.props], [HfOptional, HfOptional.props]] as const) {
    for (const [k, c] of Object.entries(props)) {
      const v = own(o, k);
      if (v === undefined) {
        if (codec === HfRequired) fail(k, "missing (required for a decoder config)");
        continue;
      }
      if (!(c as t.Any).is(v)) fail(k, `expected ${inWords((c as t.Any).name)}, got ${showValue(v)}`);
    }
  }
  const archs = o.architectures as string[];
  if (archs.length === 0) fail("architectures", `expected one architecture; supported: ${ARCHS.join(", ")}`);
  const arch = archs[0];
  if (!ARCHS.includes(arch as typeof ARCHS[number])) {
    fail("architectures", `unknown architecture ${showValue(arch)}; supported: ${ARCHS.join(", ")}`);
  }
  const a = arch as DecoderConfig["architecture"];
  const layers = o.num_hidden_layers as number;
  const act = own(o, "hidden_act") as string | undefined;
  if (act !== undefined && !SILU.includes(act)) {
    fail("hidden_act", `activation ${showValue(act)} is not implemented (the decoder's MLP is SiLU-gated)`);
  }
  const prf = own(o, "partial_rotary_factor");
  if (prf !== undefined && prf !== 1) {
    fail("partial_rotary_factor", `${prf} is not implemented (rotary embedding covers the whole head: 1)`);
  }
  if (own(o, "mlp_bias") === true) fail("mlp_bias", "MLP biases are not implemented (expected false)");
  if (own(o, "attention_bias") === true && a !== "Qwen2ForCausalLM") {
    // Qwen2 always has q/k/v biases and no o_proj bias, whatever attention_bias says (as transformers does).
    fail("attention_bias", `${a} attention biases are not implemented (expected false)`);
  }
  const types = own(o, "layer_types") as string[] | undefined;
  if (types !== undefined) {
    const k = types.findIndex((x) => x !== "full_attention");
    if (k >= 0) {
      fail(
        `layer_types[${k}]`,
        `${showValue(types[k])} is not implemented (the decoder has full attention only: "full_attention")`,
      );
    }
    if (types.length !== layers) {
      fail("layer_types", `has ${types.length} entries for num_hidden_layers ${layers}`);
    }
  }
  if (a !== "LlamaForCausalLM" && own(o, "use_sliding_window") === true) {
    // transformers' Qwen2/Qwen3: with use_sliding_window, layers i >= max_window_layers use sliding windows.
    const win = own(o, "sliding_window") as number | null | undefined;
    const from = (own(o, "max_window_layers") as number | undefined) ?? DEFAULT_MAX_WINDOW_LAYERS;
    if (win !== null && from < layers) {
      fail(
        "sliding_window",
        `use_sliding_window is true, so layers ${from}..${
          layers - 1
        } (from max_window_layers ${from}) would ` +
          `attend within a window of ${
            win ?? "4096 (the default)"
          } tokens; sliding-window attention is not ` +
          "implemented (set use_sliding_window false)",
      );
    }
  }
  const rs = own(o, "rope_scaling") as Record<string, unknown> | null | undefined;
  const rp = own(o, "rope_parameters") as Record<string, unknown> | null | undefined;
  const scaling = rs ? decodeRopeScaling("rope_scaling", rs, fail) : undefined;
  let theta = own(o, "rope_theta") as number | undefined;
  if (rp) {
    // transformers v5 writes rope_theta and the rope type into rope_parameters.
    const pScaling = decodeRopeScaling("rope_parameters", rp, fail, ["rope_theta"]);
    if (rs && !sameScaling(scaling, pScaling)) {
      fail("rope_parameters", "disagrees with rope_scaling (give one of them)");
    }
    const pt = own(rp, "rope_theta");
    if (pt !== undefined) {
      if (!PositiveNumber.is(pt)) {
        fail("rope_parameters.rope_theta", `expected a positive number, got ${showValue(pt)}`);
      }
      if (theta !== undefined && theta !== pt) {
        fail("rope_parameters.rope_theta", `${pt} disagrees with rope_theta ${theta}`);
      }
      theta = pt as number;
    }
    if (!rs && pScaling) return build(pScaling);
  }
  return build(scaling);

  function build(ropeScaling: RopeScaling | undefined): DecoderConfig {
    const heads = o.num_attention_heads as number;
    const kv = (own(o, "num_key_value_heads") as number | undefined) ?? heads;
    if (heads % kv !== 0) fail("num_key_value_heads", `${kv} does not divide num_attention_heads ${heads}`);
    const hidden = o.hidden_size as number;
    const headDim = (own(o, "head_dim") as number | undefined) ?? hidden / heads;
    if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
      fail("head_dim", `${headDim} must be an even integer`);
    }
    return {
      architecture: a,
      vocabSize: o.vocab_size as number,
      hiddenSize: hidden,
      numLayers: layers,
      numHeads: heads,
      numKvHeads: kv,
      headDim,
      intermediateSize: o.intermediate_size as number,
      rmsNormEps: o.rms_norm_eps as number,
      ropeTheta: theta ?? 10000,
      tieWordEmbeddings: (own(o, "tie_word_embeddings") as boolean | undefined) ?? false,
      qkvBias: a === "Qwen2ForCausalLM",
      qkNorm: a === "Qwen3ForCausalLM",
      ...(ropeScaling ? { ropeScaling } : {}),
    };
  }
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
  ...(c.ropeScaling
    ? {
      rope_scaling: {
        rope_type: "llama3",
        factor: c.ropeScaling.factor,
        low_freq_factor: c.ropeScaling.lowFreqFactor,
        high_freq_factor: c.ropeScaling.highFreqFactor,
        original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
      },
    }
    : {}),
  vocab_size: c.vocabSize,
  tie_word_embeddings: c.tieWordEmbeddings,
  hidden_act: "silu",
  torch_dtype: "float32",
});
