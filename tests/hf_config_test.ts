/**
 * config.json fields the decoder does not implement are ConfigErrors naming them (hidden_act, rope_scaling,
 * sliding windows, biases, partial rotary); Llama 3 rope scaling decodes (rope_type or the older type, and
 * transformers v5's rope_parameters) and round-trips; prototype-name keys are unknown fields.
 */
import { ConfigError } from "../core/errors.ts";
import { decodeHfConfig, encodeHfConfig, tinyConfig } from "../policies/config.ts";

const base = encodeHfConfig(tinyConfig());
const LLAMA3 = {
  rope_type: "llama3",
  factor: 32.0,
  low_freq_factor: 1.0,
  high_freq_factor: 4.0,
  original_max_position_embeddings: 8192,
};

/** decodeHfConfig must throw a ConfigError on `field` whose message contains `part`. */
const rejects = (json: unknown, field: string, part: string) => {
  try {
    decodeHfConfig("m/config.json", json);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw new Error(`${field}: expected a ConfigError, got ${e}`);
    if (e.field !== field || e.source !== "m/config.json") {
      throw new Error(`expected field ${field}, got ${e.field}: ${e.message}`);
    }
    if (!e.message.startsWith(`m/config.json: ${field}: `) || !e.message.includes(part)) {
      throw new Error(`${field}: message "${e.message}" lacks "${part}"`);
    }
    return;
  }
  throw new Error(`${field}: decoded, expected a ConfigError`);
};

const decodes = (json: Record<string, unknown>) => decodeHfConfig("m/config.json", json);

Deno.test("hidden_act: silu (and its alias swish) decode; any other activation is an error naming hidden_act", () => {
  for (const act of ["silu", "swish"]) decodes({ ...base, hidden_act: act });
  decodes({ ...base, hidden_act: undefined });
  for (const act of ["gelu", "gelu_pytorch_tanh", "relu", "SiLU"]) {
    rejects({ ...base, hidden_act: act }, "hidden_act", `activation "${act}" is not implemented`);
  }
  rejects({ ...base, hidden_act: 3 }, "hidden_act", "expected a string, got 3");
});

Deno.test("attention_bias, mlp_bias and partial_rotary_factor the decoder lacks are errors naming them", () => {
  rejects({ ...base, attention_bias: true }, "attention_bias", "Qwen3ForCausalLM attention biases");
  const llama = { ...base, architectures: ["LlamaForCausalLM"], model_type: "llama" };
  rejects({ ...llama, attention_bias: true }, "attention_bias", "not implemented");
  rejects({ ...llama, mlp_bias: true }, "mlp_bias", "not implemented");
  decodes({ ...llama, attention_bias: false, mlp_bias: false });
  // Qwen2 has q/k/v biases whatever attention_bias says (transformers hard-codes them).
  const q2 = decodes({ ...base, architectures: ["Qwen2ForCausalLM"], attention_bias: true });
  if (!q2.qkvBias) throw new Error("Qwen2 has qkv biases");
  rejects({ ...base, partial_rotary_factor: 0.5 }, "partial_rotary_factor", "0.5 is not implemented");
  decodes({ ...base, partial_rotary_factor: 1 });
});

Deno.test("sliding windows: an active window (HF's use_sliding_window + max_window_layers, or layer_types) is an error", () => {
  const q2 = { ...base, architectures: ["Qwen2ForCausalLM"], num_hidden_layers: 4 };
  // Qwen2.5's shipped configs: a window size given, but not used.
  decodes({ ...q2, use_sliding_window: false, sliding_window: 131072, max_window_layers: 28 });
  // Used only from layer max_window_layers on: with 4 layers and the default 28, no layer slides.
  decodes({ ...q2, use_sliding_window: true, sliding_window: 4096 });
  decodes({ ...q2, use_sliding_window: true, sliding_window: 4096, max_window_layers: 4 });
  // A null window never slides (Qwen3's shipped configs).
  decodes({ ...base, use_sliding_window: true, sliding_window: null, max_window_layers: 0 });
  rejects(
    { ...q2, use_sliding_window: true, sliding_window: 4096, max_window_layers: 2 },
    "sliding_window",
    "layers 2..3 (from max_window_layers 2) would attend within a window of 4096 tokens",
  );
  rejects(
    { ...base, use_sliding_window: true, max_window_layers: 0 },
    "sliding_window",
    "window of 4096 (the default) tokens",
  );
  rejects({ ...q2, sliding_window: -1 }, "sliding_window", "expected null or a positive integer, got -1");
  decodes({ ...q2, layer_types: ["full_attention", "full_attention", "full_attention", "full_attention"] });
  rejects(
    { ...q2, layer_types: ["full_attention", "sliding_attention", "full_attention", "full_attention"] },
    "layer_types[1]",
    `"sliding_attention" is not implemented`,
  );
  rejects({ ...q2, layer_types: ["full_attention"] }, "layer_types", "1 entries for num_hidden_layers 4");
});

Deno.test("rope_scaling: llama3 decodes (rope_type or type) and round-trips; other types and bad fields are named", () => {
  const want = {
    kind: "llama3",
    factor: 32,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const c = decodes({ ...base, rope_theta: 500000, rope_scaling: LLAMA3 });
  if (JSON.stringify(c.ropeScaling) !== JSON.stringify(want) || c.ropeTheta !== 500000) {
    throw new Error(JSON.stringify(c));
  }
  const { rope_type: _, ...old } = LLAMA3;
  const c2 = decodes({ ...base, rope_scaling: { ...old, type: "llama3" } });
  if (JSON.stringify(c2.ropeScaling) !== JSON.stringify(want)) throw new Error("older key type");
  decodes({ ...base, rope_scaling: { ...LLAMA3, type: "llama3" } });
  // encodeHfConfig writes it back; decoding that gives the same config.
  const enc = encodeHfConfig(c);
  if (JSON.stringify(enc.rope_scaling) !== JSON.stringify(LLAMA3)) throw new Error(JSON.stringify(enc));
  if (JSON.stringify(decodes(enc)) !== JSON.stringify(c)) throw new Error("round trip");
  // Without scaling nothing is written, and "default" means none.
  if ("rope_scaling" in encodeHfConfig(tinyConfig())) throw new Error("rope_scaling written without scaling");
  if (decodes({ ...base, rope_scaling: { rope_type: "default" } }).ropeScaling !== undefined) {
    throw new Error("default");
  }
  if (decodes({ ...base, rope_scaling: null }).ropeScaling !== undefined) throw new Error("null");

  for (const type of ["linear", "dynamic", "yarn", "longrope"]) {
    rejects({ ...base, rope_scaling: { rope_type: type, factor: 2 } }, "rope_scaling.rope_type", type);
    rejects({ ...base, rope_scaling: { type, factor: 2 } }, "rope_scaling.rope_type", "is not implemented");
  }
  rejects({ ...base, rope_scaling: { factor: 2 } }, "rope_scaling.rope_type", "missing");
  rejects({ ...base, rope_scaling: { ...LLAMA3, type: "linear" } }, "rope_scaling.rope_type", "disagrees");
  const { factor: _f, ...noFactor } = LLAMA3;
  rejects({ ...base, rope_scaling: noFactor }, "rope_scaling.factor", "missing");
  rejects({ ...base, rope_scaling: { ...LLAMA3, factor: 0 } }, "rope_scaling.factor", "positive number");
  rejects({ ...base, rope_scaling: { ...LLAMA3, factor: "8" } }, "rope_scaling.factor", `got "8"`);
  rejects(
    { ...base, rope_scaling: { ...LLAMA3, high_freq_factor: 1 } },
    "rope_scaling.high_freq_factor",
    "must be greater than low_freq_factor 1",
  );
  rejects(
    { ...base, rope_scaling: { ...LLAMA3, original_max_position_embeddings: 8192.5 } },
    "rope_scaling.original_max_position_embeddings",
    "positive integer",
  );
  rejects({ ...base, rope_scaling: { ...LLAMA3, beta_fast: 32 } }, "rope_scaling.beta_fast", "unknown field");
  rejects({ ...base, rope_scaling: "llama3" }, "rope_scaling", `expected null or an object, got "llama3"`);
});

Deno.test("rope_parameters (transformers v5): rope_theta and the rope type read from it; a disagreement is named", () => {
  const c = decodes({ ...base, rope_theta: undefined, rope_parameters: { ...LLAMA3, rope_theta: 500000 } });
  if (c.ropeTheta !== 500000 || c.ropeScaling?.factor !== 32) throw new Error(JSON.stringify(c));
  const d = decodes({
    ...base,
    rope_theta: undefined,
    rope_parameters: { rope_type: "default", rope_theta: 1e6 },
  });
  if (d.ropeTheta !== 1e6 || d.ropeScaling !== undefined) throw new Error(JSON.stringify(d));
  rejects(
    { ...base, rope_theta: 10000, rope_parameters: { rope_type: "default", rope_theta: 1e6 } },
    "rope_parameters.rope_theta",
    "1000000 disagrees with rope_theta 10000",
  );
  rejects(
    { ...base, rope_scaling: LLAMA3, rope_parameters: { ...LLAMA3, factor: 8 } },
    "rope_parameters",
    "disagrees with rope_scaling",
  );
  rejects({ ...base, rope_parameters: { rope_type: "yarn" } }, "rope_parameters.rope_type", "yarn");
});

Deno.test("config.json keys with prototype names are unknown fields, named; lookups never reach the prototype", () => {
  for (const key of ["__proto__", "constructor", "toString", "hasOwnProperty", "valueOf"]) {
    const json = JSON.parse(`{${JSON.stringify(key)}: {"kind": 1}, ${JSON.stringify(base).slice(1)}`);
    rejects(json, key, "unknown field");
    rejects(
      { ...base, rope_scaling: JSON.parse(`{${JSON.stringify(key)}: 1}`) },
      `rope_scaling.${key}`,
      "unknown",
    );
  }
  rejects([base], "(root)", "expected a JSON object");
  rejects({ ...base, architectures: [] }, "architectures", "expected one architecture");
  // A value nested too deeply for JSON.stringify is still reported, not a RangeError.
  let deep: unknown = 1;
  for (let i = 0; i < 100_000; i++) deep = [deep];
  rejects({ ...base, hidden_size: deep }, "hidden_size", "expected a positive integer, got");
});
