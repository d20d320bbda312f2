/** Hugging Face folders: a tiny random Qwen3 (single file and sharded) loads and matches a naive f64 forward; bad folders fail naming file, tensor and shapes. */
import { Cause, Effect, Exit } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { serializeSafetensors } from "../core/safetensors.ts";
import type { Backend } from "../engine/backend.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import {
  decodeHfConfig,
  type DecoderConfig,
  encodeHfConfig,
  paramSpecs,
  tinyConfig,
} from "../policies/config.ts";
import { type HostModel, readModelDir, toParams, writeModelDir } from "../formats/hf.ts";
import { forward, logits } from "../policies/model.ts";
import { gpuTest } from "./gpu_util.ts";
import { type HostTensor, hostTensors } from "./model_util.ts";
import { assertClose, cpu64, withTempDir } from "./util.ts";

const config = tinyConfig({
  vocabSize: 41,
  numLayers: 2,
  hiddenSize: 16,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 6,
  intermediateSize: 24,
  tieWordEmbeddings: false,
  ropeTheta: 1000,
});

const randomTensors = (c: DecoderConfig, seed: number): HostTensor[] =>
  hostTensors(
    c,
    seed,
    (init, rnd) => (init === "ones" ? 1 + 0.2 * rnd() : init === "zeros" ? 0.1 * rnd() : 0.4 * rnd()),
  );

/** A naive f64 Qwen3/Qwen2/Llama forward written from the Hugging Face modeling code, independent of the engine. */
const naiveLogits = (
  c: DecoderConfig,
  ts: HostTensor[],
  ids: number[],
  freqs: readonly number[] = Array.from(
    { length: c.headDim / 2 },
    (_, i) => Math.pow(c.ropeTheta, -(2 * i) / c.headDim),
  ),
): number[][] => {
  const W = new Map(ts.map((t) => [t.name, t.data]));
  const w = (n: string) => W.get(n)!;
  const d = c.hiddenSize, D = c.headDim, H = c.numHeads, Hkv = c.numKvHeads;
  const rms = (x: number[], g: ArrayLike<number>) => {
    const r = Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length + c.rmsNormEps);
    return x.map((v, j) => (v / r) * g[j]);
  };
  const lin = (x: number[], m: ArrayLike<number>, out: number, b?: ArrayLike<number>) =>
    Array.from({ length: out }, (_, o) => x.reduce((a, v, j) => a + v * m[o * x.length + j], b ? b[o] : 0));
  const rope = (x: number[], pos: number) => {
    const y = x.slice();
    for (let i = 0; i < D / 2; i++) {
      const ang = pos * freqs[i];
      y[i] = x[i] * Math.cos(ang) - x[i + D / 2] * Math.sin(ang);
      y[i + D / 2] = x[i + D / 2] * Math.cos(ang) + x[i] * Math.sin(ang);
    }
    return y;
  };
  let h = ids.map((id) => Array.from(w("model.embed_tokens.weight").subarray(id * d, (id + 1) * d)));
  for (let l = 0; l < c.numLayers; l++) {
    const n = (s: string) => w(`model.layers.${l}.${s}`);
    const bias = (s: string) => (c.qkvBias ? n(`self_attn.${s}_proj.bias`) : undefined);
    const heads = (x: number[], k: number, norm?: string) =>
      Array.from({ length: k }, (_, j) => {
        const v = x.slice(j * D, (j + 1) * D);
        return norm && c.qkNorm ? rms(v, n(`self_attn.${norm}_norm.weight`)) : v;
      });
    const xin = h.map((x) => rms(x, n("input_layernorm.weight")));
    const q = xin.map((x, t) =>
      heads(lin(x, n("self_attn.q_proj.weight"), H * D, bias("q")), H, "q").map((v) => rope(v, t))
    );
    const k = xin.map((x, t) =>
      heads(lin(x, n("self_attn.k_proj.weight"), Hkv * D, bias("k")), Hkv, "k").map((v) => rope(v, t))
    );
    const v = xin.map((x) => heads(lin(x, n("self_attn.v_proj.weight"), Hkv * D, bias("v")), Hkv));
    const o = q.map((qt, t) =>
      qt.flatMap((qh, hh) => {
        const kv = Math.floor(hh / (H / Hkv));
        const s = Array.from({ length: t + 1 }, (_, u) =>
          qh.reduce((a, x, j) => a + x * k[u][kv][j], 0) / Math.sqrt(D));
        const m = Math.max(...s);
        const e = s.map((x) =>
          Math.exp(x - m)
        );
        const z = e.reduce((a, x) => a + x, 0);
        return Array.from({ length: D }, (_, j) => e.reduce((a, x, u) => a + (x / z) * v[u][kv][j], 0));
      })
    );
    const mid = h.map((x, t) => {
      const a = lin(o[t], n("self_attn.o_proj.weight"), d);
      return x.map((y, j) => y + a[j]);
    });
    h = mid.map((x) => {
      const f = rms(x, n("post_attention_layernorm.weight"));
      const g = lin(f, n("mlp.gate_proj.weight"), c.intermediateSize),
        u = lin(f, n("mlp.up_proj.weight"), c.intermediateSize);
      const act = g.map((y, i) => (y / (1 + Math.exp(-y))) * u[i]);
      const down = lin(act, n("mlp.down_proj.weight"), d);
      return x.map((y, j) => y + down[j]);
    });
  }
  const E = w(c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  return h.map((x) => lin(rms(x, w("model.norm.weight")), E, c.vocabSize));
};

/** Write the tensors as two shards with model.safetensors.index.json, as transformers' save_pretrained does. */
const writeSharded = async (
  dir: string,
  c: DecoderConfig,
  ts: HostTensor[],
  edit?: (t: HostTensor) => HostTensor,
) => {
  await Deno.mkdir(dir, { recursive: true });
  const files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
  const half = Math.ceil(ts.length / 2);
  const parts = [ts.slice(0, half), ts.slice(half)].map((p) => p.map((t) => edit?.(t) ?? t));
  const weight_map: Record<string, string> = {};
  parts.forEach((p, i) => p.forEach((t) => (weight_map[t.name] = files[i])));
  for (let i = 0; i < 2; i++) {
    await Deno.writeFile(`${dir}/${files[i]}`, serializeSafetensors(parts[i], { format: "pt" }));
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: 0 }, weight_map }),
  );
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(encodeHfConfig(c)));
};

const ids = [3, 17, 40, 0, 8, 8, 21];

/** The logits of model `m` on `tokens` at positions 0, 1, ... on `b`. */
const modelLogits = (b: Backend, m: HostModel, tokens: readonly number[]) =>
  tidy(async () => {
    const p = toParams(b, m);
    const f = forward(
      m.config,
      p,
      tensor(b, [...tokens], [1, tokens.length], "i32"),
      tensor(b, tokens.map((_, i) => i), [tokens.length], "i32"),
    );
    const z = await logits(m.config, p, f).data();
    p.dispose();
    return z;
  });

const logitsOf = async (b: Backend, dir: string) =>
  modelLogits(b, await Effect.runPromise(readModelDir(dir)), ids);

const failure = async (dir: string): Promise<string> => {
  const exit = await Effect.runPromiseExit(readModelDir(dir));
  if (Exit.isSuccess(exit)) throw new Error(`${dir} loaded but should not`);
  const e = Cause.squash(exit.cause);
  if (!(e instanceof FileFormatError) && !(e instanceof ConfigError)) throw new Error(`untagged: ${e}`);
  return e.message;
};

/** The failure of reading `dir` must contain every part. */
const failsWith = async (dir: string, parts: string[]) => {
  const m = await failure(dir);
  for (const p of parts) if (!m.includes(p)) throw new Error(`message "${m}" lacks "${p}"`);
  return m;
};

const withDirs = (fn: (root: string) => Promise<void>) => withTempDir("bupo-hf-", fn);

const loads = async (b: Backend, tol: number) =>
  await withDirs(async (root) => {
    const ts = randomTensors(config, 4);
    await Effect.runPromise(writeModelDir(`${root}/single`, config, ts));
    await writeSharded(`${root}/sharded`, config, ts);
    const want = naiveLogits(config, ts, ids).flat();
    for (const d of ["single", "sharded"]) {
      assertClose(await logitsOf(b, `${root}/${d}`), want, { atol: tol, rtol: tol }, `${d} logits`);
    }
  });

Deno.test("a tiny random Qwen3 folder (single file and sharded) gives the naive reference forward's logits (f64 CPU)", () =>
  loads(cpu64, 1e-9));
// f32 weights and activations on the GPU against the f64 reference: logits of size ~3 agree to ~1e-6; 1e-4 is a
// margin for other adapters' summation orders.
gpuTest(
  "a tiny random Qwen3 folder (single file and sharded) gives the naive reference forward's logits (GPU)",
  (g) => loads(g, 1e-4),
);

Deno.test("Qwen2 (q/k/v bias) and Llama folders give the naive reference logits too (f64 CPU)", async () => {
  for (const arch of ["Qwen2ForCausalLM", "LlamaForCausalLM"] as const) {
    const c = {
      ...config,
      architecture: arch,
      qkvBias: arch === "Qwen2ForCausalLM",
      qkNorm: false,
      tieWordEmbeddings: arch === "LlamaForCausalLM",
    };
    await withDirs(async (root) => {
      const ts = randomTensors(c, 9);
      await Effect.runPromise(writeModelDir(root, c, ts));
      assertClose(
        await logitsOf(cpu64, root),
        naiveLogits(c, ts, ids).flat(),
        { atol: 1e-9, rtol: 1e-9 },
        `${arch} logits`,
      );
    });
  }
});

Deno.test("a shape that disagrees with config.json, or a missing tensor, names the file, the tensor and the shapes", async () => {
  await withDirs(async (root) => {
    const ts = randomTensors(config, 5);
    const bad = "model.layers.1.mlp.up_proj.weight";
    await writeSharded(
      `${root}/shape`,
      config,
      ts,
      (t) => (t.name === bad ? { ...t, shape: [12, 32], data: new Float32Array(384) } : t),
    );
    const m1 = await failure(`${root}/shape`);
    if (
      !m1.includes(
        `${root}/shape/model-00002-of-00002.safetensors: tensor ${bad} has shape [12,32], config.json says [24,16]`,
      )
    ) {
      throw new Error(`got: ${m1}`);
    }
    await Effect.runPromise(
      writeModelDir(
        `${root}/missing`,
        config,
        ts.filter((t) => t.name !== "model.layers.0.self_attn.k_norm.weight"),
      ),
    );
    const m2 = await failure(`${root}/missing`);
    if (
      !/missing\/?: tensor model\.layers\.0\.self_attn\.k_norm\.weight is missing \(config\.json implies \[6\]\); files read: model\.safetensors/
        .test(m2)
    ) {
      throw new Error(`got: ${m2}`);
    }
  });
});

/** A two-shard folder whose index's weight_map is edited by `edit` (tensor name -> file name). */
const shardedWithMap = async (dir: string, edit: (m: Record<string, string>) => void) => {
  await writeSharded(dir, config, randomTensors(config, 6));
  const path = `${dir}/model.safetensors.index.json`;
  const idx = JSON.parse(await Deno.readTextFile(path));
  edit(idx.weight_map);
  await Deno.writeTextFile(path, JSON.stringify(idx));
  return path;
};

const FIRST = "model.embed_tokens.weight";
const SHARD1 = "model-00001-of-00002.safetensors", SHARD2 = "model-00002-of-00002.safetensors";

Deno.test("paths: a weight_map entry with .., an absolute path or a symlink out of the folder is an error naming the index, tensor and path", async () => {
  await withDirs(async (root) => {
    // A file outside the model folder that the index tries to reach.
    await Deno.writeFile(`${root}/outside.safetensors`, serializeSafetensors(randomTensors(config, 1)));
    for (
      const [name, f, why] of [
        ["dotdot", "../outside.safetensors", `has a ".." segment`],
        ["deep", "../../../../etc/hostname", `has a ".." segment`],
        ["inner", "sub/../../outside.safetensors", `has a ".." segment`],
        ["absolute", `${root}/outside.safetensors`, "is an absolute path"],
        ["backslash", "..\\outside.safetensors", `has a ".." segment`],
        ["empty", "", "is empty"],
      ]
    ) {
      const dir = `${root}/${name}`;
      const index = await shardedWithMap(dir, (m) => (m[FIRST] = f));
      await failsWith(dir, [
        `${index}: weight_map["${FIRST}"] = ${JSON.stringify(f)} ${why}`,
        "inside the model folder",
      ]);
    }
    // A shard that is a symbolic link leading out of the folder.
    const dir = `${root}/link`;
    const index = await shardedWithMap(dir, (m) => (m[FIRST] = "linked.safetensors"));
    await Deno.symlink(`${root}/outside.safetensors`, `${dir}/linked.safetensors`);
    await failsWith(dir, [
      `${index}: weight_map["${FIRST}"] = "linked.safetensors" resolves to ${await Deno.realPath(
        root,
      )}/outside.safetensors`,
      "outside the folder",
    ]);
    // config.json itself linked from outside.
    const dir2 = `${root}/cfglink`;
    await Effect.runPromise(writeModelDir(dir2, config, randomTensors(config, 2)));
    await Deno.rename(`${dir2}/config.json`, `${root}/config.json`);
    await Deno.symlink(`${root}/config.json`, `${dir2}/config.json`);
    await failsWith(dir2, [`${dir2}/config.json: resolves to`, "outside the folder"]);
    // A link that stays inside the folder is fine (and so is a folder that is itself a link).
    const dir3 = `${root}/innerlink`;
    await Effect.runPromise(writeModelDir(dir3, config, randomTensors(config, 2)));
    await Deno.rename(`${dir3}/model.safetensors`, `${dir3}/real.safetensors`);
    await Deno.symlink("real.safetensors", `${dir3}/model.safetensors`);
    await Effect.runPromise(readModelDir(dir3));
    await Deno.symlink(dir3, `${root}/folderlink`);
    await Effect.runPromise(readModelDir(`${root}/folderlink`));
  });
});

Deno.test("paths: a Hugging Face cache snapshot (files linked into ../../blobs) loads", async () => {
  await withDirs(async (root) => {
    const repo = `${root}/models--org--tiny`, snap = `${repo}/snapshots/0123abcd`;
    const ts = randomTensors(config, 3);
    await Effect.runPromise(writeModelDir(`${root}/plain`, config, ts));
    await Deno.mkdir(`${repo}/blobs`, { recursive: true });
    await Deno.mkdir(snap, { recursive: true });
    for (const [f, blob] of [["config.json", "aa11"], ["model.safetensors", "bb22"]]) {
      await Deno.copyFile(`${root}/plain/${f}`, `${repo}/blobs/${blob}`);
      await Deno.symlink(`../../blobs/${blob}`, `${snap}/${f}`);
    }
    const m = await Effect.runPromise(readModelDir(snap));
    if (m.tensors.size !== paramSpecs(config).length) throw new Error("tensors");
    // ...but a link from a snapshot to anywhere else in the cache is still refused.
    await Deno.writeFile(`${repo}/elsewhere`, await Deno.readFile(`${root}/plain/model.safetensors`));
    await Deno.remove(`${snap}/model.safetensors`);
    await Deno.symlink("../../elsewhere", `${snap}/model.safetensors`);
    await failsWith(snap, [`${snap}/model.safetensors: resolves to`, "outside the folder"]);
  });
});

Deno.test("shards: a tensor in two shards, or not in the shard the index names, is an error naming both", async () => {
  await withDirs(async (root) => {
    const ts = randomTensors(config, 7);
    // The same tensor written into both shards.
    const dup = `${root}/dup`;
    await writeSharded(dup, config, ts);
    const extra = ts.find((t) => t.name === FIRST)!;
    const second = ts.slice(Math.ceil(ts.length / 2));
    await Deno.writeFile(`${dup}/${SHARD2}`, serializeSafetensors([...second, extra]));
    await failsWith(dup, [
      `${dup}/${SHARD2}: tensor ${FIRST} is also in ${dup}/${SHARD1}; a tensor must be in one shard only`,
      `the index names "${SHARD1}"`,
    ]);
    // The index names the wrong shard for a tensor.
    const wrong = `${root}/wrong`;
    const index = await shardedWithMap(wrong, (m) => (m[FIRST] = SHARD2));
    await failsWith(wrong, [
      `${index}: weight_map names "${SHARD2}" for tensor ${FIRST}, but it is in ${wrong}/${SHARD1}`,
    ]);
    // The index names a tensor that no shard holds.
    const ghost = `${root}/ghost`;
    const index2 = await shardedWithMap(ghost, (m) => (m["model.ghost.weight"] = SHARD2));
    await failsWith(ghost, [
      `${index2}: weight_map names "${SHARD2}" for tensor model.ghost.weight, but`,
      "does not hold it",
    ]);
    // A weight_map that is not a map of names to file names.
    const bad = `${root}/bad`;
    const index3 = await shardedWithMap(bad, (m) => ((m as Record<string, unknown>)[FIRST] = 3));
    await failsWith(bad, [`${index3}: weight_map["${FIRST}"]: expected a file name, got 3`]);
  });
});

Deno.test("non-finite weights fail the read with the tensor and the first bad element, unless allowNonFinite", async () => {
  await withDirs(async (root) => {
    const name = "model.layers.1.mlp.up_proj.weight"; // [24, 16]
    for (const [bad, shown] of [[NaN, "NaN"], [Infinity, "Infinity"], [-Infinity, "-Infinity"]] as const) {
      const ts = randomTensors(config, 8).map((t) => {
        if (t.name !== name) return t;
        const data = t.data.slice();
        data[2 * 16 + 5] = bad;
        data[100] = bad;
        return { ...t, data };
      });
      const dir = `${root}/${shown}`;
      await Effect.runPromise(writeModelDir(dir, config, ts));
      await failsWith(dir, [
        `${dir}/model.safetensors: tensor ${name}: element 37 [2,5] is ${shown} (2 of 384 values are not finite)`,
        "--allow-nonfinite",
      ]);
      const m = await Effect.runPromise(readModelDir(dir, { allowNonFinite: true }));
      const nf = m.nonFinite ?? [];
      if (
        nf.length !== 1 || nf[0].name !== name || nf[0].count !== 2 || nf[0].first !== 37 ||
        String(nf[0].value) !== shown
      ) {
        throw new Error(JSON.stringify(nf));
      }
      if (!Object.is(m.tensors.get(name)!.data[37], bad)) throw new Error("the value is loaded as it is");
    }
    // A finite model lists none.
    await Effect.runPromise(writeModelDir(`${root}/fine`, config, randomTensors(config, 8)));
    const ok = await Effect.runPromise(readModelDir(`${root}/fine`, { allowNonFinite: true }));
    if (ok.nonFinite?.length !== 0) throw new Error("finite");
  });
});

Deno.test("a tiny Llama 3 folder (rope_scaling llama3, hand-written config.json) loads and gives the reference logits with the scaled frequencies", async () => {
  // headDim 6, theta 1000: inv_freq 1, 0.1, 0.01; wavelengths 6.28, 62.8, 628. With orig 256, low 1, high 8:
  // high_freq_wavelen 32, low_freq_wavelen 256, so one frequency of each band (by hand, HF's formula).
  const s1 = (256 / (2 * Math.PI / 0.1) - 1) / (8 - 1);
  const freqs = [1, (1 - s1) * 0.1 / 4 + s1 * 0.1, 0.01 / 4];
  const llamaJson = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: [2, 3],
    head_dim: 6,
    hidden_act: "silu",
    hidden_size: 16,
    initializer_range: 0.02,
    intermediate_size: 24,
    max_position_embeddings: 2048,
    mlp_bias: false,
    num_attention_heads: 4,
    num_hidden_layers: 2,
    num_key_value_heads: 2,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: {
      factor: 4.0,
      high_freq_factor: 8.0,
      low_freq_factor: 1.0,
      original_max_position_embeddings: 256,
      rope_type: "llama3",
    },
    rope_theta: 1000.0,
    tie_word_embeddings: true,
    torch_dtype: "bfloat16",
    use_cache: true,
    vocab_size: 41,
  };
  await withDirs(async (root) => {
    await Deno.writeTextFile(`${root}/config.json`, JSON.stringify(llamaJson, null, 2));
    const c = decodeHfConfig("config.json", llamaJson);
    if (c.architecture !== "LlamaForCausalLM" || c.ropeScaling?.originalMaxPositionEmbeddings !== 256) {
      throw new Error(JSON.stringify(c));
    }
    const ts = randomTensors(c, 10);
    await Deno.writeFile(`${root}/model.safetensors`, serializeSafetensors(ts, { format: "pt" }));
    const m = await Effect.runPromise(readModelDir(root));
    if (JSON.stringify(m.config) !== JSON.stringify(c)) throw new Error("config");
    const longIds = Array.from({ length: 40 }, (_, i) => (i * 7 + 3) % 41);
    const got = await modelLogits(cpu64, m, longIds);
    const want = naiveLogits(c, ts, longIds, freqs).flat();
    assertClose(got, want, { atol: 1e-9, rtol: 1e-9 }, "Llama 3 logits");
    // The scaling matters at these positions: the unscaled reference differs.
    const plain = naiveLogits(c, ts, longIds).flat();
    const diff = plain.reduce((a, v, i) => Math.max(a, Math.abs(v - want[i])), 0);
    if (diff < 1e-4) throw new Error(`scaled and unscaled logits differ by only ${diff}`);
    // writeModelDir writes the scaling back: the folder reloads to the same config.
    await Effect.runPromise(writeModelDir(`${root}/again`, c, ts));
    const again = await Effect.runPromise(readModelDir(`${root}/again`));
    if (JSON.stringify(again.config) !== JSON.stringify(c)) {
      throw new Error("round trip through writeModelDir");
    }
  });
});
