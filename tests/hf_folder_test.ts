/** Hugging Face folders: a tiny random Qwen3 (single file and sharded) loads and matches a naive f64 forward; bad folders fail naming file, tensor and shapes. */
import { Cause, Effect, Exit } from "effect";
import { serializeSafetensors } from "../core/safetensors.ts";
import type { Shape } from "../core/shape.ts";
import type { Backend } from "../engine/backend.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { type DecoderConfig, encodeHfConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import { readModelDir, toParams, writeModelDir } from "../formats/hf.ts";
import { forward, logits } from "../policies/model.ts";
import { normals } from "../policies/params.ts";
import { assertClose, cpu64, gpuTest } from "./util.ts";

type HostTensor = { name: string; shape: Shape; data: Float32Array };

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

const randomTensors = (c: DecoderConfig, seed: number): HostTensor[] => {
  const rnd = normals(seed);
  return paramSpecs(c).map((s) => ({
    name: s.name,
    shape: s.shape,
    data: Float32Array.from(
      { length: s.shape.reduce((a, x) => a * x, 1) },
      () => (s.init === "ones" ? 1 + 0.2 * rnd() : s.init === "zeros" ? 0.1 * rnd() : 0.4 * rnd()),
    ),
  }));
};

/** A naive f64 Qwen3/Qwen2/Llama forward written from the Hugging Face modeling code, independent of the engine. */
const naiveLogits = (c: DecoderConfig, ts: HostTensor[], ids: number[]): number[][] => {
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
      const ang = pos * Math.pow(c.ropeTheta, -(2 * i) / D);
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

const logitsOf = async (b: Backend, dir: string) => {
  const m = await Effect.runPromise(readModelDir(dir));
  return await tidy(async () => {
    const p = toParams(b, m);
    const f = forward(
      m.config,
      p,
      tensor(b, ids, [1, ids.length], "i32"),
      tensor(b, ids.map((_, i) => i), [ids.length], "i32"),
    );
    const z = await logits(m.config, p, f).data();
    p.dispose();
    return z;
  });
};

const failure = async (dir: string): Promise<string> => {
  const exit = await Effect.runPromiseExit(readModelDir(dir));
  if (Exit.isSuccess(exit)) throw new Error(`${dir} loaded but should not`);
  return (Cause.squash(exit.cause) as Error).message;
};

const withDirs = async (fn: (root: string) => Promise<void>) => {
  const root = await Deno.makeTempDir({ prefix: "bupo-hf-" });
  try {
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
};

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
