/** The entropy report builders called directly on a hand-made EntropyFlow: JSON fields, SVG content, table. */
import { Effect } from "effect";
import type { EntropyBatch, EntropyFlow, LayerEntropies } from "../policies/analysis.ts";
import { tinyConfig } from "../policies/config.ts";
import { writeModelDir } from "../formats/hf.ts";
import { main as entropyMain } from "../entropy.ts";
import { readPrompts, reportJson, reportSvg, summaryTable } from "../training/entropy_report.ts";
import { hostTensors } from "./model_util.ts";

const m = (entropy: number, logp = -entropy / 2) => ({ entropy, logp });
/** Layer l's readouts: entropies falling with depth; the FFN's change positive in layer 1. */
const layerOf = (l: number, shift = 0): LayerEntropies => {
  const input = 3 - l + shift, attnIn = input - 0.1, attn = attnIn - 0.3, ffnIn = attn + 0.05;
  const ffn = ffnIn + (l === 1 ? 0.2 : -0.4), output = ffn - 0.1;
  return {
    input: m(input),
    attnIn: m(attnIn),
    attn: m(attn),
    ffnIn: m(ffnIn),
    ffn: m(ffn),
    output: m(output),
    change: { attn: attn - attnIn, ffn: ffn - ffnIn, layer: output - input },
  };
};

const flowOf = (norms: ("raw" | "normed")[], perToken = false): EntropyFlow => {
  const layers = [0, 1].map((l) => ({
    layer: l,
    ...(norms.includes("raw") ? { raw: layerOf(l) } : {}),
    ...(norms.includes("normed") ? { normed: layerOf(l, 0.5) } : {}),
  }));
  return {
    numLayers: 2,
    vocabSize: 17,
    temperature: 1,
    norms,
    tokens: 3,
    targets: 2,
    final: m(layerOf(1).output.entropy, NaN),
    layers,
    means: new Map(),
    passes: 1,
    forwards: 1,
    ...(perToken
      ? {
        perToken: {
          index: Int32Array.from([1, 2, 4]),
          entropy: new Map([["final", Float64Array.from([1.123456789, 2, 3])]]),
          logp: new Map([["final", Float64Array.from([-1, NaN, -3])]]),
        },
      }
      : {}),
  };
};

// Two sequences of T = 3: positions 1, 2 and 4 scored; position 2 has no target.
const batch: EntropyBatch = {
  ids: Int32Array.from([5, 6, 7, 8, 9, 10]),
  B: 2,
  T: 3,
  mask: [0, 1, 1, 0, 1, 0],
  targets: [-1, 7, -1, -1, 10, -1],
};
const model = { dir: "models/x", config: tinyConfig({ numLayers: 2, vocabSize: 17, hiddenSize: 32 }) };

Deno.test("reportJson: model facts, notes, 0-based layers with paperLayer, rounded means, null where none", () => {
  const j = reportJson(flowOf(["raw", "normed"]), model, batch, { kind: "tokens", ids: [1, 2] }) as Record<
    string,
    // deno-lint-ignore no-explicit-any
    any
  >;
  if (j.model !== "models/x" || j.architecture !== "Qwen3ForCausalLM" || j.hiddenSize !== 32) {
    throw new Error(JSON.stringify(j).slice(0, 300));
  }
  if (
    j.numLayers !== 2 || j.vocabSize !== 17 || j.tokens !== 3 || j.targets !== 2 || j.readoutTemperature !== 1
  ) {
    throw new Error("counts");
  }
  if (j.source.kind !== "tokens" || j.norms.join() !== "raw,normed") throw new Error("source / norms");
  if (!/0-based/.test(j.notes.layers) || !/logit lens/.test(j.notes.norms)) throw new Error("notes");
  if (
    j.layers.map((l: { layer: number; paperLayer: number }) => `${l.layer}:${l.paperLayer}`).join() !==
      "0:1,1:2"
  ) {
    throw new Error("layer numbering");
  }
  const l1 = j.layers[1];
  // 7 significant digits: 2 - 0.1 - 0.3 + 0.05 is 1.6500000000000001 in f64.
  if (l1.raw.ffnIn.entropy !== 1.65 || l1.raw.change.ffn !== 0.2 || l1.normed.input.entropy !== 2.5) {
    throw new Error(JSON.stringify(l1));
  }
  for (const f of ["input", "attnIn", "attn", "ffnIn", "ffn", "output"]) {
    if (typeof l1.raw[f].entropy !== "number" || typeof l1.raw[f].logp !== "number") throw new Error(f);
  }
  if (j.final.entropy !== l1.raw.output.entropy || j.final.logp !== null) {
    throw new Error("final: NaN logp is null");
  }
  if ("perToken" in j) throw new Error("perToken only when the flow has it");
});

Deno.test("reportJson: one norm leaves the other out; per-token values map flat indices to (sequence, position)", () => {
  // deno-lint-ignore no-explicit-any
  const j = reportJson(flowOf(["raw"], true), model, batch, { kind: "prompts" }) as any;
  if (j.layers[0].normed !== undefined || j.layers[0].raw === undefined) throw new Error("norms");
  const p = j.perToken;
  if (p.sequence.join() !== "0,0,1" || p.position.join() !== "1,2,1" || p.token.join() !== "6,7,9") {
    throw new Error(JSON.stringify(p));
  }
  if (JSON.stringify(p.target) !== "[7,null,10]") throw new Error(`targets ${JSON.stringify(p.target)}`);
  if (JSON.stringify(p.entropy.final) !== "[1.123457,2,3]") throw new Error(JSON.stringify(p.entropy));
  if (JSON.stringify(p.logp.final) !== "[-1,null,-3]") throw new Error(JSON.stringify(p.logp));
});

Deno.test("reportSvg: per norm a change figure (attention, FFN, layer; a zero line) and a flow figure", () => {
  const svg = reportSvg(flowOf(["raw", "normed"]), "models/x (Qwen3ForCausalLM, 2 layers)");
  if (!svg.startsWith("<?xml") || !svg.trimEnd().endsWith("</svg>")) throw new Error("not an SVG document");
  for (const s of ["attention", "FFN", "layer", "entropy flow (raw)", "entropy flow (normed)"]) {
    if (!svg.includes(`data-name="${s}"`)) throw new Error(`lacks series ${s}`);
  }
  for (
    const t of [
      "Entropy change per layer (raw)",
      "Entropy flow (normed)",
      "models/x (Qwen3ForCausalLM, 2 layers)",
    ]
  ) {
    if (!svg.includes(t)) throw new Error(`lacks title ${t}`);
  }
  if ((svg.match(/class="zero-line"/g) ?? []).length !== 2) {
    throw new Error("one zero line per change figure");
  }
  if ((svg.match(/class="panel"/g) ?? []).length !== 4) throw new Error("two figures per norm");
  const opens = (svg.match(/<g[ >]/g) ?? []).length, closes = (svg.match(/<\/g>/g) ?? []).length;
  if (opens !== closes) throw new Error(`${opens} <g> vs ${closes} </g>`);
  const raw = reportSvg(flowOf(["raw"]), "t");
  if (raw.includes("(normed)") || (raw.match(/class="panel"/g) ?? []).length !== 2) {
    throw new Error("raw only");
  }
});

Deno.test("summaryTable: one row per layer (raw when reported, else normed) and the final policy", () => {
  const rows = summaryTable(flowOf(["raw", "normed"])).split("\n");
  if (rows.length !== 4 || !/^layer \(0-based, raw\):/.test(rows[0])) throw new Error(rows.join("\n"));
  const cells = rows[2].trim().split(/\s+/).map(Number);
  // layer 1 raw: input 2, attn 1.6, ffn 1.85, output 1.75, changes -0.3, 0.2, -0.25
  if (cells.join() !== "1,2,1.6,1.85,1.75,-0.3,0.2,-0.25") throw new Error(rows[2]);
  if (rows[3] !== "final policy: H = 1.7500 nats over 3 scored positions") throw new Error(rows[3]);
  if (!/^layer \(0-based, normed\):/.test(summaryTable(flowOf(["normed"])))) throw new Error("normed only");
});

Deno.test("readPrompts: one prompt per line, CRLF and blank lines handled; a file without prompts fails", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bupo-prompts-" });
  try {
    await Deno.writeTextFile(`${dir}/p.txt`, "1+2=\r\n\r\n  \n3+4=\n");
    const got = await Effect.runPromise(readPrompts(`${dir}/p.txt`));
    if (JSON.stringify(got) !== '["1+2=","3+4="]') throw new Error(JSON.stringify(got));
    await Deno.writeTextFile(`${dir}/empty.txt`, "\n \n");
    const e = await Effect.runPromise(Effect.flip(readPrompts(`${dir}/empty.txt`)));
    if (e._tag !== "FileFormatError" || !/no prompts/.test(e.message)) throw new Error(e.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const nonFinite = [
  { name: "model.layers.0.mlp.up_proj.weight", file: "m/model.safetensors", count: 3, first: 17, value: NaN },
  { name: "model.norm.weight", file: "m/model.safetensors", count: 1, first: 0, value: -Infinity },
];

Deno.test("reportJson and summaryTable mark the non-finite tensors of a model read with --allow-nonfinite", () => {
  // deno-lint-ignore no-explicit-any
  const j = reportJson(flowOf(["raw"]), { ...model, nonFinite }, batch, { kind: "tokens" }) as any;
  const want = [
    {
      name: "model.layers.0.mlp.up_proj.weight",
      file: "m/model.safetensors",
      count: 3,
      first: 17,
      value: "NaN",
    },
    { name: "model.norm.weight", file: "m/model.safetensors", count: 1, first: 0, value: "-Infinity" },
  ];
  if (JSON.stringify(j.nonFiniteTensors) !== JSON.stringify(want)) {
    throw new Error(JSON.stringify(j.nonFiniteTensors));
  }
  // deno-lint-ignore no-explicit-any
  const clean = reportJson(flowOf(["raw"]), model, batch, { kind: "tokens" }) as any;
  if (JSON.stringify(clean.nonFiniteTensors) !== "[]") throw new Error("a finite model lists none");
  const rows = summaryTable(flowOf(["raw"]), nonFinite).split("\n");
  const last = rows[rows.length - 1];
  if (
    last !==
      "WARNING: non-finite weights (--allow-nonfinite): 2 tensors: model.layers.0.mlp.up_proj.weight (3 values, " +
        "first at 17: NaN), model.norm.weight (1 values, first at 0: -Infinity); the report lists them in nonFiniteTensors"
  ) {
    throw new Error(last);
  }
  if (summaryTable(flowOf(["raw"])).includes("WARNING")) {
    throw new Error("no warning without non-finite tensors");
  }
});

Deno.test({
  name:
    "entropy main(argv) on a model with a NaN weight: exit 1 naming it; with --allow-nonfinite a report that marks it",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bupo-nan-" });
    try {
      const c = tinyConfig({
        numLayers: 2,
        vocabSize: 17,
        hiddenSize: 16,
        numHeads: 2,
        numKvHeads: 1,
        headDim: 8,
      });
      const bad = "model.layers.1.self_attn.v_proj.weight";
      const ts = hostTensors(c, 3, (init, rnd) => init === "ones" ? 1 : init === "zeros" ? 0 : 0.2 * rnd());
      ts.find((t) => t.name === bad)!.data[9] = NaN;
      await Effect.runPromise(writeModelDir(`${dir}/m`, c, ts));
      const argv = [
        "--model",
        `${dir}/m`,
        "--tokens",
        "1,2,3,4",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        `${dir}/r.json`,
      ];
      const errs: string[] = [], logs: string[] = [];
      const [err, log] = [console.error, console.log];
      console.error = (...a: unknown[]) => void errs.push(a.join(" "));
      console.log = (...a: unknown[]) => void logs.push(a.join(" "));
      let refused: number, allowed: number;
      try {
        refused = await entropyMain(argv);
        allowed = await entropyMain([...argv, "--allow-nonfinite"]);
      } finally {
        console.error = err;
        console.log = log;
      }
      if (
        refused !== 1 ||
        errs[0] !==
          `entropy: FileFormatError: ${dir}/m/model.safetensors: tensor ${bad}: element 9 [0,9] is NaN ` +
            "(1 of 128 values are not finite); expected finite weights (--allow-nonfinite loads them for analysis)"
      ) {
        throw new Error(`${refused}: ${errs.join("\n")}`);
      }
      if (allowed !== 0) throw new Error(`--allow-nonfinite: exit ${allowed}: ${errs.join("\n")}`);
      const report = JSON.parse(await Deno.readTextFile(`${dir}/r.json`));
      const nf = report.nonFiniteTensors;
      if (nf.length !== 1 || nf[0].name !== bad || nf[0].first !== 9 || nf[0].value !== "NaN") {
        throw new Error(JSON.stringify(nf));
      }
      if (
        !logs.some((l) => l.includes(`WARNING: non-finite weights (--allow-nonfinite): 1 tensor: ${bad}`))
      ) {
        throw new Error(logs.join("\n"));
      }
      // The NaN reaches the FFN entropy change of layer 1: no boundary layer, said so rather than thrown.
      const b = report.boundary;
      if (b.layer !== null || !/layer 1 is NaN/.test(b.problem)) throw new Error(JSON.stringify(b));
      if (!logs.some((l) => /^boundary layer: none \(.*layer 1 is NaN\)$/.test(l))) {
        throw new Error(logs.join("\n"));
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
