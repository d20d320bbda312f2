/** Checkpoints of segmented optimizer state: per-parameter moments round-trip bit-identically; old flat files load. */
import { Effect } from "effect";
import { serializeSafetensors } from "../core/safetensors.ts";
import { size } from "../core/shape.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { paramSpecs } from "../policies/config.ts";
import { paramsToHost, toParams } from "../formats/hf.ts";
import { flatLayoutOf, initParams, type Params, paramsToHostArrays } from "../policies/params.ts";
import { supervisedStep } from "../training/sft.ts";
import { CharTokenizer } from "../formats/tokenizer.ts";
import { loadCheckpoint, type ParamMoments, saveCheckpoint } from "../training/checkpoint.ts";
import { gpuTest } from "./gpu_util.ts";
import { withTempDir } from "./util.ts";
import { cfg, low } from "./segments_fixture.ts";
import {
  createOptimizer,
  disposeOptimizer,
  loadMoments,
  momentsToHost,
  type Optimizer,
} from "../training/optimizer.ts";

const tok = new CharTokenizer("abcdefghij0123456789");
const B = 2, T = 8;
const batch = (s: number) => ({
  ids: Int32Array.from({ length: B * T }, (_, i) => (i * 389 + 7 * s) % cfg.vocabSize),
  B,
  T,
});
const state = { step: 1, optimizerStep: 1, objective: null, config: {} };

const moments = async (p: Params, opt: Optimizer): Promise<ParamMoments[]> => {
  const { m, v } = await momentsToHost(p, opt);
  return p.layout.specs.map((s, i) => ({ name: s.name, shape: s.shape, m: m[i], v: v[i] }));
};
const same = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} vs ${b.length} elements`);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) throw new Error(`${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
};
const train = (p: Params, opt: Optimizer, s: number) => {
  const r = supervisedStep(cfg, p, opt, batch(s));
  r.loss.dispose();
  r.norm.dispose();
};

gpuTest(
  "segmented moments: save, load and resume bit-identically, also under another segmentation",
  async (g) => {
    await withTempDir("bupo-seg-ck-", async (dir) => {
      const ocfg = { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 0.05 };
      const p = initParams(low!, paramSpecs(cfg), 9, 0.3);
      const opt = createOptimizer(p, ocfg);
      train(p, opt, 1);
      const saved = await moments(p, opt);
      await Effect.runPromise(saveCheckpoint(dir, cfg, await paramsToHost(p), tok, saved, state));
      train(p, opt, 2); // the uninterrupted run
      const want = await paramsToHostArrays(p);

      const ck = await Effect.runPromise(loadCheckpoint(dir));
      ck.moments.forEach((x, i) => {
        same(x.m, saved[i].m, `loaded m ${x.name}`);
        same(x.v, saved[i].v, `loaded v ${x.name}`);
      });
      // Resume on the segmented device: step 2 lands on exactly the uninterrupted parameters.
      const q = toParams(low!, ck.model);
      const o2 = createOptimizer(q, ocfg);
      loadMoments(q, o2, ck.moments.map((x) => x.m), ck.moments.map((x) => x.v), ck.state.optimizerStep);
      train(q, o2, 2);
      (await paramsToHostArrays(q)).forEach((x, i) => same(x, want[i], `resumed ${q.layout.specs[i].name}`));
      // Under the normal limits (one segment) the same moments load unchanged.
      const r = toParams(g, ck.model);
      const o3 = createOptimizer(r, ocfg);
      if (r.segments.length !== 1 || q.segments.length < 5) throw new Error("segmentations should differ");
      loadMoments(r, o3, ck.moments.map((x) => x.m), ck.moments.map((x) => x.v), 1);
      (await moments(r, o3)).forEach((x, i) => same(x.m, saved[i].m, `one-segment m ${x.name}`));
      for (const [pp, oo] of [[p, opt], [q, o2], [r, o3]] as const) {
        disposeOptimizer(oo);
        pp.dispose();
      }
    });
  },
);

Deno.test("an old checkpoint with flat m and v (single-buffer layout) still loads, per parameter", async () => {
  await withTempDir("bupo-old-ck-", async (dir) => {
    const be = new CpuBackend("f32");
    const p = initParams(be, paramSpecs(cfg), 9, 0.3);
    const specs = paramSpecs(cfg);
    const flat = flatLayoutOf(specs);
    const m = new Float32Array(flat.total).map((_, i) => Math.sin(i) * 1e-3);
    const v = new Float32Array(flat.total).map((_, i) => (1 + Math.cos(i)) * 1e-6);
    const empty = specs.map((s) => ({
      name: s.name,
      shape: s.shape,
      m: new Float32Array(size(s.shape)),
      v: new Float32Array(size(s.shape)),
    }));
    const final = await Effect.runPromise(saveCheckpoint(dir, cfg, await paramsToHost(p), tok, empty, state));
    await Deno.writeFile(
      `${final}/optimizer.safetensors`,
      serializeSafetensors([{ name: "m", shape: [m.length], data: m }, {
        name: "v",
        shape: [v.length],
        data: v,
      }], {
        optimizerStep: "1",
      }),
    );
    const ck = await Effect.runPromise(loadCheckpoint(dir));
    specs.forEach((s, i) => {
      const at = flat.offsets[i], n = s.shape.reduce((a, b) => a * b, 1);
      same(ck.moments[i].m, m.subarray(at, at + n), `old m ${s.name}`);
      same(ck.moments[i].v, v.subarray(at, at + n), `old v ${s.name}`);
    });
    // A flat file of the wrong size names the file and both sizes.
    await Deno.writeFile(
      `${final}/optimizer.safetensors`,
      serializeSafetensors([{ name: "m", shape: [64], data: m.subarray(0, 64) }, {
        name: "v",
        shape: [64],
        data: v.subarray(0, 64),
      }]),
    );
    const bad = await Effect.runPromise(Effect.flip(loadCheckpoint(dir)));
    if (
      !/optimizer\.safetensors: optimizer state has 64 \(m\) and 64 \(v\) elements, the model needs/.test(
        bad.message,
      )
    ) {
      throw new Error(`message: ${bad.message}`);
    }
    p.dispose();
  });
});
