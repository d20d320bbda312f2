/**
 * The entropy-flow report of `deno task entropy`: the JSON object (means of every readout per layer, notes on
 * the conventions, the input's source, optional per-token values), the SVG with the paper's two figures per
 * norm, the summary table printed after a run, and the prompt file reader. Pure builders but readPrompts.
 */
import { Effect } from "effect";
import { FileFormatError } from "../core/errors.ts";
import { readBytes } from "../io/files.ts";
import { barChart, type Chart, lineChart, panels } from "../io/svg.ts";
import type { EntropyBatch, EntropyFlow, LayerEntropies } from "../policies/analysis.ts";
import type { DecoderConfig } from "../policies/config.ts";
import type { NonFiniteTensor } from "../formats/hf.ts";

/** What the report's `notes.layers` says. */
export const LAYERS_NOTE = "Layers are 0-based: entry `layer: l` is the paper's layer l+1 (paperLayer). " +
  "input = H(E_u h_{l-1}) (h_{-1} = embedding output), attnIn = H(E_u RMSNorm_1^l(h_{l-1})), attn = H(E_u A_l), " +
  "ffnIn = H(E_u RMSNorm_2^l(h_{l-1}+A_l)), ffn = H(E_u F_l), output = H(E_u h_l) (the layer policy); " +
  "change.attn = attn - attnIn, change.ffn = ffn - ffnIn, change.layer = output - input. Entropies in nats; " +
  "logp = mean log-prob of the target ids (null where there are none).";
/** What the report's `notes.norms` says. */
export const NORM_NOTE =
  "raw: E_u x with no norm, except layer L-1 read after the final norm (the paper's convention; " +
  "layer L-1 raw = final). normed: E_u RMSNorm_final(x) for every readout, each with its own RMS (logit lens).";

const round = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(7)) : null);
const means = (m: { entropy: number; logp: number }) => ({ entropy: round(m.entropy), logp: round(m.logp) });
const layerJson = (e: LayerEntropies) => ({
  input: means(e.input),
  attnIn: means(e.attnIn),
  attn: means(e.attn),
  ffnIn: means(e.ffnIn),
  ffn: means(e.ffn),
  output: means(e.output),
  change: { attn: round(e.change.attn), ffn: round(e.change.ffn), layer: round(e.change.layer) },
});

/** The report's entry of a non-finite tensor (a model read with --allow-nonfinite). */
const nonFiniteJson = (t: NonFiniteTensor) => ({
  name: t.name,
  file: t.file,
  count: t.count,
  first: t.first,
  value: String(t.value),
});

/**
 * The JSON report of an analysis. `nonFiniteTensors` lists the tensors that hold NaN or infinite values (a
 * model read with --allow-nonfinite; empty otherwise): every number derived from them is suspect.
 */
export const reportJson = (
  flow: EntropyFlow,
  model: { dir: string; config: DecoderConfig; nonFinite?: readonly NonFiniteTensor[] },
  batch: EntropyBatch,
  source: Record<string, unknown>,
): Record<string, unknown> => ({
  model: model.dir,
  architecture: model.config.architecture,
  numLayers: flow.numLayers,
  hiddenSize: model.config.hiddenSize,
  vocabSize: flow.vocabSize,
  nonFiniteTensors: (model.nonFinite ?? []).map(nonFiniteJson),
  notes: { layers: LAYERS_NOTE, norms: NORM_NOTE },
  source,
  readoutTemperature: flow.temperature,
  norms: flow.norms,
  tokens: flow.tokens,
  targets: flow.targets,
  final: means(flow.final),
  layers: flow.layers.map((l) => ({
    layer: l.layer,
    paperLayer: l.layer + 1,
    ...(l.raw ? { raw: layerJson(l.raw) } : {}),
    ...(l.normed ? { normed: layerJson(l.normed) } : {}),
  })),
  ...(flow.perToken
    ? {
      perToken: {
        sequence: Array.from(flow.perToken.index, (i) => Math.floor(i / batch.T)),
        position: Array.from(flow.perToken.index, (i) => i % batch.T),
        token: Array.from(flow.perToken.index, (i) => batch.ids[i]),
        target: Array.from(flow.perToken.index, (i) => (batch.targets[i] >= 0 ? batch.targets[i] : null)),
        entropy: Object.fromEntries([...flow.perToken.entropy].map(([k, a]) => [k, Array.from(a, round)])),
        logp: Object.fromEntries([...flow.perToken.logp].map(([k, a]) => [k, Array.from(a, round)])),
      },
    }
    : {}),
});

/** The paper's two figures for each reported norm: entropy change per layer, and the entropy flow. */
export const reportSvg = (flow: EntropyFlow, title: string): string => {
  const charts: Chart[] = [];
  const L = flow.numLayers;
  const every = Math.max(1, Math.ceil(L / 16));
  const xTicks = Array.from({ length: L + 1 }, (_, l) => l).filter((l) => l % every === 0 || l === L)
    .map((l) => ({ value: l, label: String(l) }));
  for (const norm of flow.norms) {
    const get = (l: number) => flow.layers[l][norm]!;
    charts.push(barChart({
      title: `Entropy change per layer (${norm})`,
      xLabel: "layer (0-based; the paper's layer l+1)",
      yLabel: "mean entropy change (nats)",
      categories: flow.layers.map((l) => String(l.layer)),
      series: [
        { name: "attention", values: flow.layers.map((l) => get(l.layer).change.attn) },
        { name: "FFN", values: flow.layers.map((l) => get(l.layer).change.ffn) },
        { name: "layer", values: flow.layers.map((l) => get(l.layer).change.layer) },
      ],
      zeroLine: true,
    }));
    const pts: [number, number][] = [];
    for (let l = 0; l < L; l++) {
      const e = get(l);
      pts.push([l, e.input.entropy], [l + 0.25, e.attn.entropy], [l + 0.5, e.ffn.entropy], [
        l + 0.75,
        e.output.entropy,
      ]);
    }
    charts.push(lineChart({
      title: `Entropy flow (${norm})`,
      xLabel: "layer l: input, attention, FFN, output (0-based)",
      yLabel: "mean entropy (nats)",
      series: [{ name: `entropy flow (${norm})`, points: pts }],
      xTicks,
      xRange: [-0.1, L],
    }));
  }
  return panels(charts, 2, title);
};

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3).padStart(8) : "     n/a");

/**
 * The summary table printed after an analysis: one row per layer (raw readouts when reported), then the final
 * policy, then (a model read with --allow-nonfinite) a line naming the tensors with non-finite values.
 */
export const summaryTable = (flow: EntropyFlow, nonFinite: readonly NonFiniteTensor[] = []): string => {
  const n = flow.norms.includes("raw") ? "raw" : "normed";
  const rows = [
    `layer (0-based, ${n}):   H(input)   H(attn)    H(ffn)  H(output)    dAttn     dFfn   dLayer`,
  ];
  for (const l of flow.layers) {
    const e = l[n]!;
    rows.push(
      `${String(l.layer).padStart(5)}                ${fmt(e.input.entropy)}  ${fmt(e.attn.entropy)}  ${
        fmt(e.ffn.entropy)
      }  ${fmt(e.output.entropy)} ${fmt(e.change.attn)} ${fmt(e.change.ffn)} ${fmt(e.change.layer)}`,
    );
  }
  rows.push(`final policy: H = ${flow.final.entropy.toFixed(4)} nats over ${flow.tokens} scored positions`);
  if (nonFinite.length) {
    const shown = nonFinite.slice(0, 5).map((t) =>
      `${t.name} (${t.count} values, first at ${t.first}: ${t.value})`
    );
    rows.push(
      `WARNING: non-finite weights (--allow-nonfinite): ${nonFinite.length} tensor${
        nonFinite.length === 1 ? "" : "s"
      }: ${shown.join(", ")}${
        nonFinite.length > 5 ? ", ..." : ""
      }; the report lists them in nonFiniteTensors`,
    );
  }
  return rows.join("\n");
};

/** The prompts of a file: one per line (CRLF too), blank lines skipped; a file without any is a FileFormatError. */
export const readPrompts = (file: string): Effect.Effect<string[], FileFormatError> =>
  Effect.flatMap(readBytes(file), (b) => {
    const lines = new TextDecoder().decode(b).split("\n").map((s) => s.replace(/\r$/, "")).filter((s) =>
      s.trim() !== ""
    );
    return lines.length
      ? Effect.succeed(lines)
      : Effect.fail(new FileFormatError({ file, message: `${file}: no prompts (one per line expected)` }));
  });
