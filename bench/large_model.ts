/**
 * Real-size check (not in CI): a synthetic Qwen3-0.6B-shaped Hugging Face folder (BF16 shards + index) loaded onto
 * the default adapter in f32 (2.4 GB, past llvmpipe's 2 GiB maxBufferSize), the entropy-flow analysis on a few
 * tokens, then one next-token gradient + AdamW step (segmented grads and moments, row-block embedding gradient).
 * Run: `deno run -A bench/large_model.ts [--tokens 8] [--layers 28] [--no-step] [--dir runs/large-qwen3]`.
 */
import { qwen3_0_6b } from "./rl.ts";
import { Effect } from "effect";
import { limitsOf } from "../engine/backend.ts";
import { withGpu } from "../engine/gpu/device.ts";
import { entropyFlow, nextTokenBatch } from "../policies/analysis.ts";
import { type DecoderConfig, encodeHfConfig, paramSpecs } from "../policies/config.ts";
import { readModelDir, toParams } from "../formats/hf.ts";
import { supervisedStep } from "../training/sft.ts";
import { view } from "../engine/tensor.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";

const arg = (name: string, dflt: string) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : dflt;
};
const TOKENS = Number(arg("tokens", "8"));
const LAYERS = Number(arg("layers", "28"));
const STEP = !Deno.args.includes("--no-step");
const DIR = arg("dir", "runs/large-qwen3");

/** Qwen3-0.6B's shape, with random weights. */
const config: DecoderConfig = qwen3_0_6b(LAYERS);

const GB = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
const rss = () => GB(Deno.memoryUsage().rss);

/** Write the folder: BF16 shards of about 600 MB streamed to disk, model.safetensors.index.json, config.json. */
const writeFolder = async (dir: string) => {
  await Deno.mkdir(dir, { recursive: true });
  const specs = paramSpecs(config);
  const shards: (typeof specs)[] = [[]];
  let bytes = 0;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1) * 2;
    if (bytes > 0 && bytes + n > 600e6) (shards.push([]), bytes = 0);
    shards[shards.length - 1].push(s);
    bytes += n;
  }
  const weightMap: Record<string, string> = {};
  let seed = 12345;
  for (const [k, list] of shards.entries()) {
    const file = `model-${String(k + 1).padStart(5, "0")}-of-${
      String(shards.length).padStart(5, "0")
    }.safetensors`;
    const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
    let at = 0;
    for (const s of list) {
      const n = s.shape.reduce((a, b) => a * b, 1) * 2;
      header[s.name] = { dtype: "BF16", shape: s.shape, data_offsets: [at, at + n] };
      at += n;
      weightMap[s.name] = file;
    }
    let json = JSON.stringify(header);
    json += " ".repeat((8 - (json.length % 8)) % 8);
    const f = await Deno.open(`${dir}/${file}`, { write: true, create: true, truncate: true });
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
    await f.write(len);
    await f.write(new TextEncoder().encode(json));
    for (const s of list) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const f32 = new Float32Array(1 << 20), u16 = new Uint16Array(f32.buffer);
      for (let done = 0; done < n; done += f32.length) {
        const m = Math.min(f32.length, n - done);
        for (let i = 0; i < m; i++) {
          if (s.init === "ones") f32[i] = 1;
          else {
            seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
            f32[i] = (seed / 2 ** 31 - 1) * 0.02 * 1.732; // uniform, std 0.02
          }
        }
        // BF16 = the high half of each f32 (little-endian: the odd u16s).
        const out = new Uint16Array(m);
        for (let i = 0; i < m; i++) out[i] = u16[2 * i + 1];
        let w = 0;
        const b = new Uint8Array(out.buffer);
        while (w < b.length) w += await f.write(b.subarray(w));
      }
    }
    f.close();
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 1),
  );
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(encodeHfConfig(config), null, 2));
  return shards.length;
};

await withGpu(async (gpu) => {
  const lim = limitsOf(gpu);
  console.log(`adapter: ${gpu.name}`);
  console.log(
    `limits: maxBufferSize ${lim.maxBufferSize}, maxStorageBufferBindingSize ${lim.maxStorageBufferBindingSize}, ` +
      `segment cap ${lim.paramSegmentBytes}`,
  );
  let t = performance.now();
  const shards = await writeFolder(DIR);
  console.log(`wrote ${DIR}: ${shards} BF16 shards in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  try {
    t = performance.now();
    const host = await Effect.runPromise(readModelDir(DIR));
    const tRead = performance.now() - t;
    const p = toParams(gpu, host);
    await gpu.sync();
    const tLoad = performance.now() - t;
    const total = p.layout.total * 4;
    console.log(
      `load: ${(tLoad / 1000).toFixed(1)} s (read + BF16->f32 ${(tRead / 1000).toFixed(1)} s), ${
        GB(total)
      } f32 in ${p.segments.length} segments (largest ${GB(Math.max(...p.layout.segmentSizes) * 4)}); ` +
        `device ${JSON.stringify(gpu.memory())}; rss ${rss()}`,
    );
    (host.tensors as Map<string, unknown>).clear(); // drop the host copy before the analysis

    const ids = Int32Array.from({ length: TOKENS }, (_, i) => (i * 7919 + 11) % config.vocabSize);
    t = performance.now();
    gpu.resetPeak();
    const flow = await entropyFlow(config, p, nextTokenBatch(ids, 1, TOKENS));
    const tFlow = performance.now() - t;
    const ents = [...flow.means.values()].map((m) => m.entropy);
    const finite = ents.every(Number.isFinite) &&
      ents.every((h) => h >= 0 && h <= Math.log(config.vocabSize) + 1e-3);
    console.log(
      `entropy flow: ${flow.means.size} readouts x ${TOKENS} tokens in ${(tFlow / 1000).toFixed(1)} s ` +
        `(${(TOKENS / (tFlow / 1000)).toFixed(2)} tokens/s, ${flow.passes} streaming passes); final H = ${
          flow.final.entropy.toFixed(4)
        } (log V = ${Math.log(config.vocabSize).toFixed(4)}); all finite and in [0, log V]: ${finite}; ` +
        `peak device ${GB(gpu.memory().peak)}`,
    );
    if (!finite) throw new Error("non-finite or out-of-range entropies");

    if (STEP) {
      t = performance.now();
      const opt = createOptimizer(p, { lr: 1e-5, weightDecay: 0.01, maxGradNorm: 1 });
      await gpu.sync();
      console.log(`optimizer moments: ${GB(2 * total)} in ${2 * opt.m.length} segments; rss ${rss()}`);
      // Two probes: the final norm scale and the embedding row of the first token (a view into the 622 MB segment).
      const probes = () =>
        Promise.all([
          p.get("model.norm.weight").data(),
          view(p.get("model.embed_tokens.weight"), ids[0] * config.hiddenSize, [config.hiddenSize]).data(),
        ]);
      const before = await probes();
      gpu.resetPeak();
      const t1 = performance.now();
      const { loss, norm } = supervisedStep(config, p, opt, { ids, B: 1, T: TOKENS });
      const [l, n] = [(await loss.data())[0], (await norm.data())[0]];
      const tStep = performance.now() - t1;
      console.log(
        `gradient + AdamW step: ${(tStep / 1000).toFixed(1)} s (${
          (TOKENS / (tStep / 1000)).toFixed(2)
        } tokens/s); ` +
          `loss ${l.toFixed(4)} (log V ${Math.log(config.vocabSize).toFixed(4)}), grad norm ${
            n.toExponential(3)
          }; ` +
          `peak device ${GB(gpu.memory().peak)}; device ${JSON.stringify(gpu.memory())}; rss ${rss()}`,
      );
      if (!Number.isFinite(l) || !Number.isFinite(n)) throw new Error("non-finite loss or gradient norm");
      const after = await probes();
      const moved = after.map((a, k) => Math.max(...a.map((x, i) => Math.abs(x - before[k][i]))));
      console.log(
        `largest change: final norm ${moved[0].toExponential(2)}, embedding row ${moved[1].toExponential(2)}`,
      );
      if (!(moved[0] > 0 && moved[1] > 0)) throw new Error("the step did not move the parameters");
      loss.dispose();
      norm.dispose();
      disposeOptimizer(opt);
    }
    p.dispose();
  } finally {
    await Deno.remove(DIR, { recursive: true });
    console.log(
      `removed ${DIR}; total ${((performance.now() - t) / 1000).toFixed(1)} s since the last phase`,
    );
  }
});
