/**
 * `deno task entropy` with several --model folders: one figure with every model's entropy flow and per-layer
 * changes, depth normalized (l / (L-1)) when the layer counts differ, each model's boundary layer marked; the JSON
 * holds every model's report with its boundary layer; the boundary line is printed for each.
 */
import { CharTokenizer } from "../formats/tokenizer.ts";
import { boundaryLayer, type EntropyFlow, type LayerEntropies } from "../policies/analysis.ts";
import { boundaryLine, modelNames, multiModelSvg } from "../training/entropy_report.ts";
import { main } from "../entropy.ts";
import { narrowConfig, writeRandomModel } from "./model_util.ts";

const m = (entropy: number) => ({ entropy, logp: -1 });
/** A flow of `L` layers whose FFN changes are `ffn` (raw and normed alike). */
const flowOf = (ffn: readonly number[]): EntropyFlow => {
  const layer = (l: number): LayerEntropies => ({
    input: m(3 - l),
    attnIn: m(3 - l),
    attn: m(2.8 - l),
    ffnIn: m(2.8 - l),
    ffn: m(2.8 - l + ffn[l]),
    output: m(2.5 - l),
    change: { attn: -0.2, ffn: ffn[l], layer: -0.5 },
  });
  return {
    numLayers: ffn.length,
    vocabSize: 9,
    temperature: 1,
    norms: ["raw"],
    tokens: 4,
    targets: 3,
    final: m(0.1),
    layers: ffn.map((_, l) => ({ layer: l, raw: layer(l) })),
    means: new Map(),
    passes: 1,
    forwards: 1,
  };
};

/** The panels of a figure, each as its SVG text. */
const panelsOf = (svg: string) => svg.split('<g class="panel"').slice(1);
/** The x of every point of the series named `name` in a panel. */
const xsOf = (panel: string, name: string): number[] => {
  const g = panel.match(
    new RegExp(`<g class="series" data-name="${name.replace(/[()]/g, "\\$&")}">(.*?)</g>`),
  );
  if (!g) throw new Error(`no series ${name}`);
  return [...g[1].matchAll(/<circle cx="([\d.]+)"/g)].map((x) => Number(x[1]));
};

Deno.test("multiModelSvg: different depths share a normalized axis; boundary layers marked on the FFN panel", () => {
  const a = { name: "qwen", flow: flowOf([0.3, -0.2]) }; // boundary 0
  const b = { name: "llama", flow: flowOf([0.2, 0.4, 0.1, -0.5]) }; // boundary 2
  const svg = multiModelSvg([a, b], "two models");
  const ps = panelsOf(svg);
  if (ps.length !== 4) throw new Error(`${ps.length} panels (flow, FFN, attention, layer)`);
  if (!/normalized depth: layer l \/ \(L-1\)/.test(ps[1])) throw new Error("axis label");
  for (const p of ps.slice(1)) {
    const xa = xsOf(p, "qwen (2 layers)"), xb = xsOf(p, "llama (4 layers)");
    // Layer 0 and the last layer sit at the same x for both models; llama's layers are evenly spaced between.
    if (xa.length !== 2 || xb.length !== 4 || xa[0] !== xb[0] || xa[1] !== xb[3]) {
      throw new Error(`x: ${xa} / ${xb}`);
    }
    const gap = (xb[3] - xb[0]) / 3;
    if (xb.some((x, i) => Math.abs(x - (xb[0] + i * gap)) > 0.02)) throw new Error(`spacing ${xb}`);
  }
  // The flow panel: both flows run from the same first x to the same last x.
  const fa = xsOf(ps[0], "qwen (2 layers)"), fb = xsOf(ps[0], "llama (4 layers)");
  if (fa.length !== 8 || fb.length !== 16 || fa[0] !== fb[0] || fa[7] !== fb[15]) {
    throw new Error(`flow x: ${fa} / ${fb}`);
  }
  // Boundary markers on the FFN panel at each model's k (qwen k = 0, llama k = 2 at depth 2/3).
  const marks = [...ps[1].matchAll(/<g class="vline"><line x1="([\d.]+)".*?>k=(\d+)</g)].map((x) => [
    Number(x[1]),
    Number(x[2]),
  ]);
  const xb = xsOf(ps[1], "llama (4 layers)");
  if (marks.length !== 2 || marks[0][1] !== 0 || marks[1][1] !== 2 || Math.abs(marks[1][0] - xb[2]) > 0.02) {
    throw new Error(`markers ${JSON.stringify(marks)}`);
  }
  if (ps.slice(2).some((p) => p.includes('class="vline"'))) throw new Error("markers only on the FFN panel");
  // Equal depths: the x axis is the layer itself.
  const same = multiModelSvg([a, { name: "other", flow: flowOf([0.1, 0.1]) }], "same depth");
  if (!panelsOf(same)[1].includes("layer (0-based)")) {
    throw new Error("equal layer counts are not normalized");
  }
  if (modelNames(["models/a", "x/a", "models/b/"]).join() !== "models/a,x/a,b") throw new Error("names");
  if (!/: 2 \(the paper's layer 3; rule\)$/.test(boundaryLine(b.flow))) throw new Error(boundaryLine(b.flow));
});

const tok = new CharTokenizer("0123456789+=");
const modelFolder = async (dir: string, numLayers: number) => {
  await writeRandomModel(dir, narrowConfig({ vocabSize: tok.vocabSize, numLayers }), numLayers, 0.3, tok);
};

Deno.test({
  name: "deno task entropy --model A --model B: one JSON with both reports and boundaries, one figure",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "bupo-entropy-multi-" });
    try {
      await modelFolder(`${tmp}/two`, 2);
      await modelFolder(`${tmp}/three`, 3);
      const logged: string[] = [];
      const log = console.log;
      console.log = (...a: unknown[]) => void logged.push(a.join(" "));
      let code: number;
      try {
        code = await main([
          ...["--model", `${tmp}/two`, "--model", `${tmp}/three`, "--tokens", "1,4,2,7,3"],
          ...["--out", `${tmp}/e.json`, "--device", "cpu", "--quiet", "--norm", "raw"],
        ]);
      } finally {
        console.log = log;
      }
      if (code !== 0) throw new Error(`exit ${code}: ${logged.join("\n")}`);
      const j = JSON.parse(await Deno.readTextFile(`${tmp}/e.json`));
      if (j.models?.length !== 2 || j.models[0].numLayers !== 2 || j.models[1].numLayers !== 3) {
        throw new Error(JSON.stringify(j).slice(0, 300));
      }
      for (const r of j.models) {
        const want = boundaryLayer(
          r.layers.map((l: { raw: { change: { ffn: number } } }) => l.raw.change.ffn),
        );
        if (
          r.boundary.layer !== want.layer || r.boundary.reason !== want.reason || r.boundary.norm !== "raw"
        ) {
          throw new Error(`${r.model}: ${JSON.stringify(r.boundary)} vs ${JSON.stringify(want)}`);
        }
      }
      const svg = await Deno.readTextFile(`${tmp}/e.svg`);
      if (!svg.includes('data-name="two (2 layers)"') || !svg.includes('data-name="three (3 layers)"')) {
        throw new Error("the figure lacks a model");
      }
      if (logged.filter((l) => l.startsWith("boundary layer")).length !== 2) {
        throw new Error(logged.join("\n"));
      }
      const twice = await main([
        "--model",
        `${tmp}/two`,
        "--model",
        `${tmp}/two`,
        "--tokens",
        "1,2",
        "--quiet",
      ]);
      if (twice !== 2) throw new Error(`the same --model twice: exit ${twice}`);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
