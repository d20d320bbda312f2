/**
 * The entropy-flow report of `deno task entropy`: the JSON object (means of every readout per layer, notes on
 * the conventions, the input's source, optional per-token values), the SVG with the paper's two figures per
 * norm, the summary table printed after a run, and the text prompt file reader. Pure builders but the reader.
 */
import { Effect } from "effect";
import { FileFormatError } from "../core/errors.ts";
import { readBytes } from "../io/files.ts";
import { barChart, type Chart, lineChart, PALETTE, panels, type VLine } from "../io/svg.ts";
import {
  BOUNDARY_RULE,
  type BoundaryChoice,
  boundaryOfFlow,
  type EntropyBatch,
  type EntropyFlow,
  type LayerEntropies,
} from "../policies/analysis.ts";
import type { ReadoutNorm } from "../policies/internal.ts";
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
  boundary: boundaryJson(flow),
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

/** The prompts of a text file with their 1-based line numbers: one per line (CRLF too), blank lines skipped. */
export const readPromptLines = (
  file: string,
): Effect.Effect<{ readonly text: string; readonly line: number }[], FileFormatError> =>
  Effect.flatMap(readBytes(file), (b) => {
    const lines = new TextDecoder().decode(b).split("\n").flatMap((s, i) => {
      const text = s.replace(/\r$/, "");
      return text.trim() === "" ? [] : [{ text, line: i + 1 }];
    });
    return lines.length
      ? Effect.succeed(lines)
      : Effect.fail(new FileFormatError({ file, message: `${file}: no prompts (one per line expected)` }));
  });

/** The prompts of a file: one per line (CRLF too), blank lines skipped; a file without any is a FileFormatError. */
export const readPrompts = (file: string): Effect.Effect<string[], FileFormatError> =>
  Effect.map(readPromptLines(file), (ls) => ls.map((l) => l.text));

/** The norm the boundary rule reads: raw when the flow has it (the paper's convention), else normed. */
const boundaryNorm = (flow: EntropyFlow): ReadoutNorm => (flow.norms.includes("raw") ? "raw" : "normed");

/**
 * The boundary layer of a flow (policies/analysis.ts boundaryLayer) and the norm it was read on; `problem` instead
 * when the rule cannot be applied (a non-finite entropy change, e.g. from non-finite weights loaded with
 * --allow-nonfinite).
 */
export const boundaryOf = (
  flow: EntropyFlow,
): (BoundaryChoice & { readonly norm: ReadoutNorm }) | {
  readonly problem: string;
  readonly norm: ReadoutNorm;
} => {
  const norm = boundaryNorm(flow);
  try {
    return { ...boundaryOfFlow(flow, norm), norm };
  } catch (e) {
    if (e instanceof RangeError) return { problem: e.message, norm };
    throw e;
  }
};

/** The boundary choice on `norm`, or null where the rule cannot be applied (non-finite changes). */
const safeBoundary = (flow: EntropyFlow, norm: ReadoutNorm): BoundaryChoice | null => {
  try {
    return boundaryOfFlow(flow, norm);
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
};

const boundaryJson = (flow: EntropyFlow) => {
  const b = boundaryOf(flow);
  if ("problem" in b) return { layer: null, problem: b.problem, norm: b.norm, rule: BOUNDARY_RULE };
  return {
    layer: b.layer,
    paperLayer: b.layer + 1,
    reason: b.reason,
    norm: b.norm,
    rule: BOUNDARY_RULE,
  };
};

/** The line printed after the summary table: the boundary layer `--layer auto` would choose on this input. */
export const boundaryLine = (flow: EntropyFlow): string => {
  const b = boundaryOf(flow);
  if ("problem" in b) return `boundary layer: none (${b.problem})`;
  return `boundary layer (the last layer whose FFN entropy change is still positive, ${b.norm}): ${b.layer} ` +
    `(the paper's layer ${b.layer + 1}; ${b.reason})${
      b.norm === "raw" ? "" : "; --layer auto reads the raw readouts"
    }`;
};

/** One model of a multi-model figure: a short name and its flow. */
export interface NamedFlow {
  readonly name: string;
  readonly flow: EntropyFlow;
}

/** Short, distinct names for model folders: the last path part, or the whole path where those collide. */
export const modelNames = (dirs: readonly string[]): string[] => {
  const base = dirs.map((d) => d.replace(/\/+$/, "").split("/").pop() || d);
  return base.map((b, i) => (base.filter((x) => x === b).length > 1 ? dirs[i] : b));
};

/**
 * The multi-model figure: per norm the entropy flow of every model, then its FFN, attention and whole-layer entropy
 * changes per layer, one line per model, each model's boundary layer marked on the FFN panel. With different layer
 * counts the x axis is the normalized depth: layer l at l / (L-1) on the change panels (a 1-layer model sits at
 * 0); on the flow panel the four points of layer l (input, attention, FFN, output) at (l + 0, .25, .5, .75) /
 * (L - 0.25), so every model's flow runs from 0 to 1. With equal layer counts, the layer itself.
 */
export const multiModelSvg = (models: readonly NamedFlow[], title: string): string => {
  const Ls = models.map((m) => m.flow.numLayers);
  const normalize = new Set(Ls).size > 1;
  const x = (L: number, l: number) => (normalize ? (L > 1 ? l / (L - 1) : 0) : l);
  const xFlow = (L: number, at: number) => (normalize ? at / (L - 0.25) : at);
  const xLabel = normalize ? "normalized depth: layer l / (L-1)" : "layer (0-based)";
  const flowLabel = normalize
    ? "normalized depth (0 = layer 0's input, 1 = the last layer's output)"
    : "layer l: input, attention, FFN, output (0-based)";
  const norms = (["raw", "normed"] as const).filter((n) => models.every((m) => m.flow.norms.includes(n)));
  const color = (i: number) => PALETTE[i % PALETTE.length];
  const charts: Chart[] = [];
  for (const norm of norms) {
    charts.push(lineChart({
      title: `Entropy flow (${norm}): input, attention, FFN, output per layer`,
      xLabel: flowLabel,
      yLabel: "mean entropy (nats)",
      series: models.map((m, i) => {
        const L = m.flow.numLayers;
        return {
          name: `${m.name} (${L} layers)`,
          color: color(i),
          points: m.flow.layers.flatMap((l) => {
            const e = l[norm]!;
            return [e.input, e.attn, e.ffn, e.output].map((v, j) =>
              [xFlow(L, l.layer + 0.25 * j), v.entropy] as const
            );
          }),
        };
      }),
    }));
    const change = (what: "ffn" | "attn" | "layer", name: string, marks: boolean) =>
      lineChart({
        title: `${name} entropy change per layer (${norm})`,
        xLabel,
        yLabel: "mean entropy change (nats)",
        zeroLine: true,
        series: models.map((m, i) => ({
          name: `${m.name} (${m.flow.numLayers} layers)`,
          color: color(i),
          points: m.flow.layers.map((l) => [x(m.flow.numLayers, l.layer), l[norm]!.change[what]] as const),
        })),
        vlines: marks
          ? models.flatMap((m, i): VLine[] => {
            const b = safeBoundary(m.flow, norm);
            return b === null
              ? []
              : [{ x: x(m.flow.numLayers, b.layer), label: `k=${b.layer}`, color: color(i) }];
          })
          : undefined,
      });
    charts.push(
      change("ffn", "FFN", true),
      change("attn", "Attention", false),
      change("layer", "Whole-layer", false),
    );
  }
  return panels(charts, 2, title);
};
