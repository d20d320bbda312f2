/**
 * The entropy-flow analysis of the paper: for every layer, the mean entropy of the internal layer policy, the
 * attention and FFN output policies and the module-input readouts, and the entropy changes of each module,
 * all read by streaming over the vocabulary, many readouts per pass, chunked over tokens for long inputs.
 *
 * Layers are 0-based: the paper's "layer i" (1-based) is layer i-1 here.
 */
import { ShapeError } from "../core/errors.ts";
import { concatRows } from "../kernels/layout.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import { attn, ffn, layer, type ReadoutNorm, showPolicy } from "./internal.ts";
import type { Params } from "./params.ts";
import { forwardPolicies, type ReadPoint, showPoint } from "./policy.ts";
import type { ReadoutOptions } from "./readout.ts";

/** Token ids to score, which positions count, and the id whose log-prob is read at each position. */
export interface EntropyBatch {
  /** Row-major ids (B, T). */
  readonly ids: Int32Array;
  /** Sequences. */
  readonly B: number;
  /** Positions per sequence. */
  readonly T: number;
  /** (B*T): weight of each position in the means; 0 = not scored (prompt, padding). */
  readonly mask: ArrayLike<number>;
  /** (B*T): the id whose log-prob is read at each position (usually the next id); -1 = none (entropy only). */
  readonly targets: ArrayLike<number>;
}

/** Options of `entropyFlow` (and the readouts' temperature and chunk). */
export interface EntropyFlowOptions extends ReadoutOptions {
  /** Readout norms to report (default both). `raw` is the paper's convention. */
  readonly norms?: readonly ReadoutNorm[];
  /** Keep per-token values (default false). */
  readonly perToken?: boolean;
  /** Bytes one streaming pass may use for its logits block and stacked rows (default 256 MiB). */
  readonly memoryBudget?: number;
  /** Most rows (readouts x tokens) in one streaming pass; overrides memoryBudget. */
  readonly maxRows?: number;
  /** Most tokens in one forward pass (whole sequences; at least one); default from a 1 GiB activation budget. */
  readonly forwardTokens?: number;
  /** Called after every streaming pass. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** Token-weighted means of one readout: entropy in nats, and log-prob of the targets (NaN when none). */
export interface ReadoutMeans {
  /** Mean entropy over the scored positions, in nats. */
  readonly entropy: number;
  /** Mean log-prob of the targets over the positions that have one (NaN when none do). */
  readonly logp: number;
}

/** The readouts around one layer l under one readout norm. */
export interface LayerEntropies {
  /** H(E_u h_{l-1}): the layer input (the embedding output h_{-1} for l = 0). */
  readonly input: ReadoutMeans;
  /** H(E_u RMSNorm_1^l(h_{l-1})): what attention reads. */
  readonly attnIn: ReadoutMeans;
  /** H(E_u A_l): the attention output policy attn(l). */
  readonly attn: ReadoutMeans;
  /** H(E_u RMSNorm_2^l(h_{l-1} + A_l)): what the FFN reads. */
  readonly ffnIn: ReadoutMeans;
  /** H(E_u F_l): the FFN output policy ffn(l). */
  readonly ffn: ReadoutMeans;
  /** H(E_u h_l): the layer policy layer(l) (raw: read after the final norm for l = L-1). */
  readonly output: ReadoutMeans;
  /** attn: H(A_l) - H(attnIn); ffn: H(F_l) - H(ffnIn); layer: H(h_l) - H(h_{l-1}). */
  readonly change: { readonly attn: number; readonly ffn: number; readonly layer: number };
}

/** One layer (0-based; the paper's layer `layer + 1`). */
export interface LayerFlow {
  /** The layer l, 0-based. */
  readonly layer: number;
  /** Its readouts under the raw norm, when reported. */
  readonly raw?: LayerEntropies;
  /** Its readouts under the normed norm (the logit lens), when reported. */
  readonly normed?: LayerEntropies;
}

/** Per-token values of every readout, keyed like `readoutKeys`. */
export interface PerToken {
  /** Flat position b*T + t of each scored token, in order. */
  readonly index: Int32Array;
  /** Entropy (nats) of each readout at each scored position, aligned with `index`. */
  readonly entropy: ReadonlyMap<string, Float64Array>;
  /** NaN where the position has no target. */
  readonly logp: ReadonlyMap<string, Float64Array>;
}

/** What `entropyFlow` measured: every readout's means, per layer and by key. */
export interface EntropyFlow {
  /** L: the model's layers. */
  readonly numLayers: number;
  /** V: the vocabulary the readouts run over. */
  readonly vocabSize: number;
  /** The readouts' softmax temperature. */
  readonly temperature: number;
  /** The readout norms reported. */
  readonly norms: readonly ReadoutNorm[];
  /** Scored positions (mask != 0) and those with a target. */
  readonly tokens: number;
  /** Scored positions with a log-prob target (see `tokens`). */
  readonly targets: number;
  /** The model's own policy. */
  readonly final: ReadoutMeans;
  /** One entry per layer, layers[l] for layer l. */
  readonly layers: readonly LayerFlow[];
  /** Means of every readout by key (`embed`, `attnIn(3)`, `ffn(0,normed)`, `layer(5)`, `final`, ...). */
  readonly means: ReadonlyMap<string, ReadoutMeans>;
  /** Streaming passes and forward passes run. */
  readonly passes: number;
  /** Forward passes run (see `passes`). */
  readonly forwards: number;
  /** Per-position values, with `perToken`. */
  readonly perToken?: PerToken;
}

const sfx = (n: ReadoutNorm) => (n === "normed" ? ",normed" : "");
/** A readout's key (`showPoint` of the point): `embed`, `attnIn(3)`, `ffn(0,normed)`, ... */
const key = (name: string, l: number | null, n: ReadoutNorm) =>
  l === null ? (n === "normed" ? `${name}(normed)` : name) : `${name}(${l}${sfx(n)})`;

/** Every point the analysis reads, in a fixed order (`final` first; then per norm the embedding and each layer). */
export const readoutPoints = (numLayers: number, norms: readonly ReadoutNorm[]): ReadPoint[] => {
  const out: ReadPoint[] = [{ kind: "final" }];
  for (const norm of norms) {
    out.push({ kind: "embed", norm });
    for (let l = 0; l < numLayers; l++) {
      out.push({ kind: "attnIn", layer: l, norm }, attn(l, norm));
      out.push({ kind: "ffnIn", layer: l, norm }, ffn(l, norm), layer(l, norm));
    }
  }
  return out;
};

/** Every readout key the analysis computes, in a fixed order (`final` first). */
export const readoutKeys = (numLayers: number, norms: readonly ReadoutNorm[]): string[] =>
  readoutPoints(numLayers, norms).map(showPoint);

/** Bytes of activations the forward pass keeps per token (every intermediate lives until the group ends). */
const forwardBytesPerToken = (c: DecoderConfig): number => {
  const d = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKvHeads * c.headDim;
  return 4 * (2 * d + c.numLayers * (8 * d + 4 * qd + 4 * kvd + 3 * c.intermediateSize));
};

/** Batch for `--tokens`-style scoring: every position counts; position t's target is id t+1 (none at the end). */
export const nextTokenBatch = (ids: Int32Array, B: number, T: number): EntropyBatch => {
  const targets = new Int32Array(B * T).fill(-1);
  for (let b = 0; b < B; b++) for (let t = 0; t + 1 < T; t++) targets[b * T + t] = ids[b * T + t + 1];
  return { ids, B, T, mask: new Float32Array(B * T).fill(1), targets };
};

/**
 * Batch for generated responses: the scored positions are those that predict a response token, t in
 * [promptLen - 1, promptLen + responseLen - 2], each with the response token t+1 as target.
 */
export const responseBatch = (r: {
  ids: Int32Array;
  B: number;
  T: number;
  promptLens: readonly number[];
  responseLens: readonly number[];
}): EntropyBatch => {
  const { B, T } = r;
  const mask = new Float32Array(B * T), targets = new Int32Array(B * T).fill(-1);
  for (let b = 0; b < B; b++) {
    for (let t = r.promptLens[b] - 1; t < r.promptLens[b] + r.responseLens[b] - 1 && t + 1 < T; t++) {
      mask[b * T + t] = 1;
      targets[b * T + t] = r.ids[b * T + t + 1];
    }
  }
  return { ids: r.ids, B, T, mask, targets };
};

const checkBatch = (c: DecoderConfig, b: EntropyBatch) => {
  const n = b.B * b.T;
  const bad = (m: string) => new ShapeError({ op: "entropyFlow", message: `entropyFlow: ${m}` });
  if (!(b.B >= 1 && b.T >= 1) || b.ids.length !== n) {
    throw bad(`ids has ${b.ids.length} elements, expected B*T = ${b.B}*${b.T}`);
  }
  if (b.mask.length !== n || b.targets.length !== n) {
    throw bad(`mask has ${b.mask.length} and targets ${b.targets.length} elements, expected B*T = ${n}`);
  }
  for (let i = 0; i < n; i++) {
    if (!(b.ids[i] >= 0 && b.ids[i] < c.vocabSize)) {
      throw bad(`token id ${b.ids[i]} at position ${i} is outside the vocabulary [0, ${c.vocabSize})`);
    }
    if (b.mask[i] !== 0 && !(b.targets[i] >= -1 && b.targets[i] < c.vocabSize)) {
      throw bad(`target id ${b.targets[i]} at position ${i} is outside the vocabulary [0, ${c.vocabSize})`);
    }
  }
};

/**
 * Entropy flow of a batch. One forward pass per group of sequences; the scored positions' taps are gathered
 * and every readout of a token slice is computed in ONE streaming pass over the vocabulary (peak extra memory
 * one (rows, chunk) logits block, never (tokens, V) per readout). Means are token-weighted by `mask`.
 */
export const entropyFlow = async (
  c: DecoderConfig,
  p: Params,
  batch: EntropyBatch,
  opts: EntropyFlowOptions = {},
): Promise<EntropyFlow> => {
  checkBatch(c, batch);
  const norms = opts.norms ?? ["raw", "normed"];
  if (norms.length === 0) {
    throw new ShapeError({ op: "entropyFlow", message: "entropyFlow: no readout norm" });
  }
  const { B, T } = batch;
  const V = c.vocabSize, d = c.hiddenSize, L = c.numLayers;
  const points = readoutPoints(L, norms);
  const keys = points.map(showPoint);
  const P = keys.length;
  // Readouts that are the same tensor (raw layer(L-1) IS final, see policyPoint) are read once.
  const same = showPolicy(layer(L - 1));
  const uniq = points.filter((q) => showPoint(q) !== same);
  const where = keys.map((k) => uniq.findIndex((q) => showPoint(q) === (k === same ? "final" : k)));
  const chunk = opts.chunk ?? 8192;
  const maxRows = opts.maxRows ??
    Math.floor((opts.memoryBudget ?? 256 * 2 ** 20) / (4 * (Math.min(chunk, V) + 4 * d)));
  const perPass = Math.max(1, Math.floor(maxRows / P));
  const seqsPerGroup = Math.max(
    1,
    Math.floor((opts.forwardTokens ?? Math.floor(2 ** 30 / forwardBytesPerToken(c))) / T),
  );

  // Scored positions grouped by forward pass, and the passes that will run.
  const scored: number[] = [];
  for (let i = 0; i < B * T; i++) if (batch.mask[i] !== 0) scored.push(i);
  const groups: { b0: number; b1: number; rows: number[] }[] = [];
  for (let b0 = 0; b0 < B; b0 += seqsPerGroup) {
    const b1 = Math.min(B, b0 + seqsPerGroup);
    const rows = scored.filter((i) => i >= b0 * T && i < b1 * T);
    if (rows.length) groups.push({ b0, b1, rows });
  }
  const totalPasses = groups.reduce((a, g) => a + Math.ceil(g.rows.length / perPass), 0);

  const sumE = new Float64Array(P), sumL = new Float64Array(P);
  let wE = 0, wL = 0, done = 0, forwards = 0, at = 0;
  const per = opts.perToken
    ? {
      index: Int32Array.from(scored),
      entropy: new Map(keys.map((k) => [k, new Float64Array(scored.length)])),
      logp: new Map(keys.map((k) => [k, new Float64Array(scored.length)])),
    }
    : undefined;
  const positions = tensor(p.backend, Int32Array.from({ length: T }, (_, i) => i), [T], "i32");
  try {
    for (const g of groups) {
      await tidy(async () => {
        const Bg = g.b1 - g.b0;
        const ids = tensor(p.backend, batch.ids.subarray(g.b0 * T, g.b1 * T), [Bg, T], "i32");
        const model = forwardPolicies(c, p, ids, positions);
        forwards++;
        for (let s = 0; s < g.rows.length; s += perPass) {
          const rows = g.rows.slice(s, s + perPass);
          const n = rows.length;
          const host = tidy(() => {
            const idx = tensor(p.backend, Int32Array.from(rows, (i) => i - g.b0 * T), [n], "i32");
            const tg = tensor(
              p.backend,
              Int32Array.from(rows, (i) => Math.max(0, batch.targets[i])),
              [n],
              "i32",
            );
            const reads = model.read(uniq, tg, opts, idx);
            const outs = uniq.map((q) => reads.get(showPoint(q))!);
            return concatRows([...outs.map((o) => o.entropy), ...outs.map((o) => o.logp)]); // (2U*n)
          });
          const data = await host.data(); // one read-back per streaming pass
          host.dispose();
          for (let j = 0; j < n; j++) {
            const i = rows[j], w = batch.mask[i], hasT = batch.targets[i] >= 0;
            wE += w;
            if (hasT) wL += w;
            for (let k = 0; k < P; k++) {
              const u = where[k];
              const e = data[u * n + j], lp = data[(uniq.length + u) * n + j];
              sumE[k] += w * e;
              if (hasT) sumL[k] += w * lp;
              if (per) {
                per.entropy.get(keys[k])![at + j] = e;
                per.logp.get(keys[k])![at + j] = hasT ? lp : NaN;
              }
            }
          }
          at += n;
          done++;
          opts.onProgress?.(done, totalPasses); // (not ?.(++done): optional calls skip their arguments)
        }
      });
    }
  } finally {
    positions.dispose();
  }

  const means = new Map<string, ReadoutMeans>(
    keys.map((k, i) => [k, { entropy: wE > 0 ? sumE[i] / wE : NaN, logp: wL > 0 ? sumL[i] / wL : NaN }]),
  );
  const m = (k: string) => means.get(k)!;
  const layerOf = (l: number, n: ReadoutNorm): LayerEntropies => {
    const input = l === 0 ? m(key("embed", null, n)) : m(key("layer", l - 1, n));
    const attnIn = m(key("attnIn", l, n)), at = m(key("attn", l, n));
    const ffnIn = m(key("ffnIn", l, n)), ff = m(key("ffn", l, n)), output = m(key("layer", l, n));
    return {
      input,
      attnIn,
      attn: at,
      ffnIn,
      ffn: ff,
      output,
      change: {
        attn: at.entropy - attnIn.entropy,
        ffn: ff.entropy - ffnIn.entropy,
        layer: output.entropy - input.entropy,
      },
    };
  };
  const layers: LayerFlow[] = Array.from({ length: L }, (_, l) => ({
    layer: l,
    ...(norms.includes("raw") ? { raw: layerOf(l, "raw") } : {}),
    ...(norms.includes("normed") ? { normed: layerOf(l, "normed") } : {}),
  }));
  return {
    numLayers: L,
    vocabSize: V,
    temperature: opts.temperature ?? 1,
    norms,
    tokens: scored.length,
    targets: scored.filter((i) => batch.targets[i] >= 0).length,
    final: m("final"),
    layers,
    means,
    passes: done,
    forwards,
    ...(per ? { perToken: per } : {}),
  };
};

/** Why `boundaryLayer` chose its layer. */
export type BoundaryReason =
  /** The rule applied: the positive run ends below the last layer. */
  | "rule"
  /** No layer's FFN entropy change is positive: layer 0, the lowest internal policy. */
  | "none-positive"
  /** The positive run reaches the last layer (e.g. every change is positive): layer L-2 (see boundaryLayer). */
  | "positive-to-top";

/** The boundary layer and how it was found. */
export interface BoundaryChoice {
  /** The chosen layer k (0-based). */
  readonly layer: number;
  /** Which case of the rule chose it. */
  readonly reason: BoundaryReason;
  /** The first layer of the positive run (undefined when there is none). */
  readonly runStart?: number;
  /** The last layer of the positive run, before any clamping (undefined when there is none). */
  readonly runEnd?: number;
}

/**
 * The paper's boundary-layer rule for BuPO's k (arXiv 2512.19673v3): the last layer whose FFN entropy change is
 * still positive. `ffnChange[l]` = H(E_u F_l) - H(E_u RMSNorm_2^l(h_{l-1} + A_l)), layers 0-based, on the raw
 * readout. Read bottom-up: the first layer with a positive change starts the run of positive layers (exploration);
 * the layer before the change first turns non-positive ends it, and that last still-positive layer is k. A positive
 * layer higher up, after the change has turned, does not count (so noise in the convergence stage cannot pull k
 * up). Leading non-positive layers are skipped.
 *
 * Edge cases (our choice; the paper does not state them):
 * - no positive layer: k = 0 (`none-positive`): the exploration stage is empty, and layer 0 is the lowest internal
 *   policy there is;
 * - the run reaches the last layer (every change positive, say): k = L - 2 (`positive-to-top`), because the raw
 *   readout of layer L-1 IS the final policy and BuPO on it would be plain GRPO; a 1-layer model gets k = 0.
 *
 * A change that is not finite is a RangeError (the flow scored no tokens).
 */
export const boundaryLayer = (ffnChange: readonly number[]): BoundaryChoice => {
  const L = ffnChange.length;
  if (L === 0) throw new RangeError("boundaryLayer: no layers");
  const bad = ffnChange.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) {
    throw new RangeError(`boundaryLayer: the FFN entropy change of layer ${bad} is ${ffnChange[bad]}`);
  }
  const runStart = ffnChange.findIndex((x) => x > 0);
  if (runStart < 0) return { layer: 0, reason: "none-positive" };
  let runEnd = runStart;
  while (runEnd + 1 < L && ffnChange[runEnd + 1] > 0) runEnd++;
  if (runEnd === L - 1) return { layer: Math.max(0, L - 2), reason: "positive-to-top", runStart, runEnd };
  return { layer: runEnd, reason: "rule", runStart, runEnd };
};

/** The rule of `boundaryLayer` in words, for logs and reports. */
export const BOUNDARY_RULE: string =
  "the last layer whose FFN entropy change is still positive (read bottom-up: the end " +
  "of the first run of positive changes); none positive: layer 0; the run reaching the last layer: layer L-2 " +
  "(layer L-1 read raw is the final policy)";

/** `boundaryLayer` of a flow's FFN entropy changes under one readout norm (default raw, the paper's). */
export const boundaryOfFlow = (flow: EntropyFlow, norm: ReadoutNorm = "raw"): BoundaryChoice => {
  if (!flow.norms.includes(norm)) {
    throw new RangeError(
      `boundaryOfFlow: the flow has no ${norm} readouts (it has ${flow.norms.join(", ")})`,
    );
  }
  return boundaryLayer(flow.layers.map((l) => l[norm]!.change.ffn));
};
