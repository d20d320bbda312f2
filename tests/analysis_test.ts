/** Entropy flow: equals a naive full-softmax reference token for token, is invariant to chunking, and the CLI end to end. */
import type { Backend } from "../engine/backend.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import {
  type EntropyBatch,
  entropyFlow,
  nextTokenBatch,
  readoutKeys,
  responseBatch,
} from "../policies/analysis.ts";
import { type DecoderConfig, paramSpecs, tinyConfig } from "../policies/config.ts";
import type { ReadoutNorm } from "../policies/internal.ts";
import { forward } from "../policies/model.ts";
import { initParams, type Params } from "../policies/params.ts";
import { CharTokenizer } from "../formats/tokenizer.ts";
import { gpuTest } from "./gpu_util.ts";
import { assertClose, cpu32, cpu64, unsanitizedTest, withTempDir } from "./util.ts";
import { runScript } from "./cli_util.ts";
import { writeRandomModel } from "./model_util.ts";

const config = tinyConfig({ vocabSize: 45, numLayers: 3, tieWordEmbeddings: false });
const paramsOn = (b: Backend) => initParams(b, paramSpecs(config), 17, 0.4);

/** 3 sequences of 6; some positions unscored, one weighted 2, some without a target. */
const batch: EntropyBatch = (() => {
  const B = 3, T = 6;
  const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 11 + 3) % config.vocabSize);
  const mask = Float32Array.from({ length: B * T }, (_, i) => (i % 7 === 2 ? 0 : i === 4 ? 2 : 1));
  const targets = Int32Array.from(
    { length: B * T },
    (_, i) => (i % 5 === 1 ? -1 : (i * 3 + 1) % config.vocabSize),
  );
  return { ids, B, T, mask, targets };
})();

/** Naive f64 entropy and log-prob of softmax(E x) for one row. */
const naive = (x: ArrayLike<number>, E: ArrayLike<number>, V: number, target: number) => {
  const d = x.length, z = new Float64Array(V);
  for (let v = 0; v < V; v++) for (let j = 0; j < d; j++) z[v] += x[j] * E[v * d + j];
  const m = Math.max(...z);
  const lse = m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return {
    entropy: lse - z.reduce((a, v) => a + Math.exp(v - lse) * v, 0),
    logp: target >= 0 ? z[target] - lse : NaN,
  };
};

/** Every readout of every scored token from the taps, on the host, by the spec's definitions. */
const reference = async (c: DecoderConfig, p: Params, b: EntropyBatch, norms: ReadoutNorm[]) =>
  await tidy(async () => {
    const ids = tensor(cpu64, b.ids, [b.B, b.T], "i32");
    const f = forward(c, p, ids, tensor(cpu64, Int32Array.from({ length: b.T }, (_, i) => i), [b.T], "i32"));
    const d = c.hiddenSize, L = c.numLayers;
    const E = await p.get("lm_head.weight").data(), g = await p.get("model.norm.weight").data();
    const taps = new Map<string, ArrayLike<number>>([["final", await f.final.data()], [
      "embed",
      await f.embed.data(),
    ]]);
    for (let l = 0; l < L; l++) {
      const t = f.layers[l];
      for (
        const [k, x] of [["attnIn", t.attnIn], ["attn", t.attn], ["ffnIn", t.ffnIn], ["ffn", t.ffn], [
          "layer",
          t.out,
        ]] as const
      ) {
        taps.set(`${k}(${l})`, await x.data());
      }
    }
    const out = new Map<string, { entropy: number[]; logp: number[] }>();
    for (const key of readoutKeys(L, norms)) {
      const normed = key.includes("normed");
      const base = key.replace(/\(normed\)|,normed/, "");
      // raw layer(L-1) is the model's own policy: read after the final norm.
      const src = taps.get(!normed && base === `layer(${L - 1})` ? "final" : base)!;
      const e: number[] = [], lp: number[] = [];
      for (let i = 0; i < b.B * b.T; i++) {
        if (b.mask[i] === 0) continue;
        let x = Array.from({ length: d }, (_, j) => src[i * d + j]);
        if (normed) {
          const r = Math.sqrt(x.reduce((a, v) => a + v * v, 0) / d + c.rmsNormEps);
          x = x.map((v, j) => (v / r) * g[j]);
        }
        const n = naive(x, E, c.vocabSize, b.targets[i]);
        e.push(n.entropy);
        lp.push(n.logp);
      }
      out.set(key, { entropy: e, logp: lp });
    }
    return out;
  });

const weighted = (xs: number[], ws: number[]) => {
  let s = 0, w = 0;
  xs.forEach((x, i) => {
    if (!Number.isNaN(x)) {
      s += x * ws[i];
      w += ws[i];
    }
  });
  return s / w;
};

Deno.test("entropyFlow equals the naive full-softmax reference per token and in the weighted means (f64 CPU, many passes)", async () => {
  const p = paramsOn(cpu64);
  const norms: ReadoutNorm[] = ["raw", "normed"];
  const P = readoutKeys(config.numLayers, norms).length;
  // 4 tokens per streaming pass and one sequence per forward pass: 3 forwards, several passes each.
  const flow = await entropyFlow(config, p, batch, {
    perToken: true,
    maxRows: 4 * P,
    forwardTokens: 6,
    chunk: 64,
  });
  const ref = await reference(config, p, batch, norms);
  const ws = Array.from(batch.mask).filter((m) => m !== 0);
  if (flow.forwards !== 3 || flow.passes !== 6) {
    throw new Error(`forwards ${flow.forwards}, passes ${flow.passes}`);
  }
  for (const [k, r] of ref) {
    assertClose(flow.perToken!.entropy.get(k)!, r.entropy, { atol: 1e-9, rtol: 1e-9 }, `entropy ${k}`);
    assertClose(flow.perToken!.logp.get(k)!, r.logp, { atol: 1e-9, rtol: 1e-9 }, `logp ${k}`);
    const m = flow.means.get(k)!;
    assertClose([m.entropy, m.logp], [weighted(r.entropy, ws), weighted(r.logp, ws)], {
      atol: 1e-9,
      rtol: 1e-9,
    }, `mean ${k}`);
  }
  for (const l of flow.layers) {
    for (const n of norms) {
      const e = l[n]!;
      const input = l.layer === 0
        ? flow.means.get(n === "raw" ? "embed" : "embed(normed)")!
        : flow.layers[l.layer - 1][n]!.output;
      if (e.input !== input) throw new Error(`layer ${l.layer} ${n}: input is not the previous output`);
      assertClose(
        [e.change.attn, e.change.ffn, e.change.layer],
        [
          e.attn.entropy - e.attnIn.entropy,
          e.ffn.entropy - e.ffnIn.entropy,
          e.output.entropy - e.input.entropy,
        ],
        { atol: 0, rtol: 0 },
        "changes",
      );
    }
  }
  if (flow.final.entropy !== flow.layers[2].raw!.output.entropy) throw new Error("final != raw layer(L-1)");
  for (let i = 0; i < flow.perToken!.index.length; i++) {
    const e = flow.perToken!.entropy.get("final")![i];
    if (!(e >= 0 && e <= Math.log(config.vocabSize) + 1e-12)) {
      throw new Error(`entropy ${e} out of [0, log V]`);
    }
  }
  if (flow.tokens !== ws.length) throw new Error(`tokens ${flow.tokens}`);
  p.dispose();
});

gpuTest(
  "entropyFlow on the GPU (one sequence per forward, 2 tokens per pass) equals the f64 CPU result",
  async (g) => {
    const want = await entropyFlow(config, paramsOn(cpu64), batch, { norms: ["raw", "normed"] });
    const pg = paramsOn(g);
    const P = readoutKeys(config.numLayers, ["raw", "normed"]).length;
    const got = await entropyFlow(config, pg, batch, { maxRows: 2 * P, forwardTokens: 6, chunk: 64 });
    pg.dispose();
    if (got.passes !== 9 || got.forwards !== 3) {
      throw new Error(
        `passes ${got.passes}, forwards ${got.forwards}`,
      );
    }
    for (const k of want.means.keys()) {
      const w = want.means.get(k)!, m = got.means.get(k)!;
      // f32 on the GPU: logits ~5 in size give entropies good to ~1e-6; 1e-4 absolute leaves room for other adapters.
      assertClose([m.entropy, m.logp], [w.entropy, w.logp], { atol: 1e-4, rtol: 1e-5 }, `GPU mean ${k}`);
    }
  },
);

Deno.test("batches: --tokens scores every position (last one without a target); responses score the positions that predict them", () => {
  const b = nextTokenBatch(Int32Array.from([5, 6, 7, 8, 9, 10]), 2, 3);
  if (Array.from(b.targets).join() !== "6,7,-1,9,10,-1" || Array.from(b.mask).join() !== "1,1,1,1,1,1") {
    throw new Error(`${Array.from(b.targets)}`);
  }
  // prompt lengths 2 and 1, responses 2 and 3 (T = 4).
  const r = responseBatch({
    ids: Int32Array.from([1, 4, 5, 2, 1, 6, 7, 2]),
    B: 2,
    T: 4,
    promptLens: [2, 1],
    responseLens: [2, 3],
  });
  if (Array.from(r.mask).join() !== "0,1,1,0,1,1,1,0") throw new Error(`mask ${Array.from(r.mask)}`);
  if (Array.from(r.targets).join() !== "-1,5,2,-1,6,7,2,-1") {
    throw new Error(`targets ${Array.from(r.targets)}`);
  }
});

Deno.test("entropyFlow rejects ids outside the vocabulary, naming the id and the position", async () => {
  const bad = { ...batch, ids: Int32Array.from(batch.ids, (x, i) => (i === 5 ? 99 : x)) };
  let msg = "";
  try {
    await entropyFlow(config, paramsOn(cpu32), bad);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!/token id 99 at position 5 is outside the vocabulary \[0, 45\)/.test(msg)) {
    throw new Error(`got ${msg}`);
  }
});

// ---- the CLI ----------------------------------------------------------------------------------------------

const root = new URL("..", import.meta.url).pathname;
const cli = (args: string[], cwd = root) => runScript("entropy.ts", args, { cwd, config: true });

/** Write a tiny random model folder with a character tokenizer into `dir`/model, and `dir`/prompts.txt. */
const writeModelFolder = async (dir: string) => {
  const tok = new CharTokenizer("0123456789+=? ");
  const c = tinyConfig({ vocabSize: tok.vocabSize, numLayers: 2 });
  await writeRandomModel(`${dir}/model`, c, 3, 0.3, tok);
  await Deno.writeTextFile(`${dir}/prompts.txt`, "1+2=\n\n3+4=\n");
};

unsanitizedTest(
  "CLI: --tokens and --prompts write the JSON report and an SVG with both figures; bad flags fail clearly",
  () =>
    withTempDir("bupo-entropy-", async (dir) => {
      await writeModelFolder(dir);
      const [tokens, prompts, unknown, noInput, noModel, badModel, badId, noDefault] = await Promise.all([
        cli(["--model", `${dir}/model`, "--tokens", "3,4,5,6,7", "--out", `${dir}/t.json`, "--per-token"]),
        cli([
          "--model",
          `${dir}/model`,
          "--prompts",
          `${dir}/prompts.txt`,
          "--max-new",
          "4",
          "--norm",
          "raw",
          "--out",
          `${dir}/p.json`,
          "--svg",
          `${dir}/fig.svg`,
        ]),
        cli(["--model", `${dir}/model`, "--tokens", "3", "--bogus"]),
        cli(["--model", `${dir}/model`]),
        cli(["--model", `${dir}/nope`, "--tokens", "3"]),
        cli(["--model", `${dir}/model`, "--tokens", "3,x"]),
        cli(["--model", `${dir}/model`, "--tokens", "3,999"]),
        cli(["--tokens", "3"], dir),
      ]);
      if (tokens.code !== 0) throw new Error(`--tokens failed: ${tokens.stderr}`);
      const t = JSON.parse(await Deno.readTextFile(`${dir}/t.json`));
      if (
        t.numLayers !== 2 || t.layers.length !== 2 || t.layers[1].paperLayer !== 2 || t.tokens !== 5 ||
        t.targets !== 4
      ) {
        throw new Error(`report: ${JSON.stringify(t).slice(0, 400)}`);
      }
      if (!/0-based/.test(t.notes.layers) || t.norms.join() !== "raw,normed") throw new Error("notes/norms");
      for (const n of ["raw", "normed"]) {
        for (const f of ["input", "attnIn", "attn", "ffnIn", "ffn", "output"]) {
          if (typeof t.layers[0][n][f].entropy !== "number") throw new Error(`layers[0].${n}.${f}`);
        }
        if (typeof t.layers[1][n].change.ffn !== "number") throw new Error(`change ${n}`);
      }
      if (t.final.entropy !== t.layers[1].raw.output.entropy) {
        throw new Error("final != layer(L-1) raw in JSON");
      }
      if (
        t.perToken.position.join() !== "0,1,2,3,4" || t.perToken.target[4] !== null ||
        t.perToken.entropy["attn(1,normed)"].length !== 5
      ) {
        throw new Error(`perToken ${JSON.stringify(t.perToken).slice(0, 300)}`);
      }
      const svg = await Deno.readTextFile(`${dir}/t.svg`);
      if (!svg.startsWith("<?xml") || !svg.trimEnd().endsWith("</svg>")) throw new Error("svg document");
      for (const s of ["attention", "FFN", "layer", "entropy flow (raw)", "entropy flow (normed)"]) {
        if (!svg.includes(`data-name="${s}"`)) throw new Error(`svg lacks series ${s}`);
      }
      if ((svg.match(/class="zero-line"/g) ?? []).length !== 2) {
        throw new Error("svg: one zero line per change figure");
      }
      const opens = (svg.match(/<g[ >]/g) ?? []).length, closes = (svg.match(/<\/g>/g) ?? []).length;
      if (opens !== closes) throw new Error(`svg: ${opens} <g> vs ${closes} </g>`);

      if (prompts.code !== 0) throw new Error(`--prompts failed: ${prompts.stderr}`);
      const pj = JSON.parse(await Deno.readTextFile(`${dir}/p.json`));
      if (
        pj.source.kind !== "prompts" || pj.source.prompts !== 2 || pj.norms.join() !== "raw" ||
        pj.layers[0].normed
      ) {
        throw new Error(`prompts report ${JSON.stringify(pj.source)}`);
      }
      if (!(pj.tokens >= 2 && pj.tokens <= 8)) {
        throw new Error(`prompts: ${pj.tokens} scored positions (2..8 expected)`);
      }
      if (!(await Deno.stat(`${dir}/fig.svg`)).isFile) throw new Error("--svg not written");

      const fails: [string, typeof unknown, number, RegExp][] = [
        ["unknown flag", unknown, 2, /^entropy: unknown flag --bogus/],
        ["no input", noInput, 2, /--prompts FILE or --tokens IDS/],
        ["missing model", noModel, 1, /nope: model folder does not exist/],
        ["bad id", badModel, 2, /--tokens: item 2 "x"/],
        ["id out of vocab", badId, 2, /id 999 is outside the vocabulary \[0, 17\)/],
        ["no default model", noDefault, 2, /models\/tiny-arith does not exist yet: pass --model DIR/],
      ];
      for (const [what, r, code, re] of fails) {
        const lines = r.stderr.trim().split("\n");
        if (r.code !== code || !re.test(r.stderr) || lines.length !== 1) {
          throw new Error(`${what}: exit ${r.code} (want ${code}), stderr ${JSON.stringify(r.stderr)}`);
        }
      }
    }),
);
