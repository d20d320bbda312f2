/**
 * Readouts of internal policies from a forward pass: which residual-stream point each policy reads, and the
 * entropy and target log-prob of any set of policies in ONE streaming pass over the vocabulary (the points are
 * stacked as rows, so each vocabulary chunk is multiplied once). `forwardPolicies` is the one way the trainer,
 * the objective lowering and the entropy analysis run the model and read policies from it.
 */
import { ShapeError } from "../core/errors.ts";
import { embedding } from "../kernels/embedding.ts";
import { concatRows, sliceRows } from "../kernels/layout.ts";
import { rmsNorm } from "../kernels/rmsnorm.ts";
import { reshape, type Tensor } from "../engine/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import type { InternalPolicy, ReadoutNorm } from "./internal.ts";
import { showPolicy } from "./internal.ts";
import { forward, type ForwardResult, type LayerTaps, unembedding } from "./model.ts";
import type { Params } from "./params.ts";
import { type ReadoutOptions, streamReadout } from "./readout.ts";

/**
 * The hidden state a policy reads, (B, T, d). `raw`: the tap itself, except that layer(L-1) is read after the
 * final norm (so it is the model's own policy). `normed`: RMSNorm_final applied to the tap with its own RMS.
 */
export const policyPoint = (c: DecoderConfig, p: Params, f: ForwardResult, pol: InternalPolicy): Tensor => {
  if (pol.kind === "final") return f.final;
  if (pol.layer < 0 || pol.layer >= c.numLayers) {
    throw new ShapeError({
      op: "policyPoint",
      message: `${
        showPolicy(pol)
      }: layer ${pol.layer} out of range for a ${c.numLayers}-layer model (0-based: 0..${c.numLayers - 1})`,
    });
  }
  const taps = f.layers[pol.layer];
  const x = pol.kind === "layer" ? taps.out : pol.kind === "attn" ? taps.attn : taps.ffn;
  if (pol.norm === "normed") return rmsNorm(x, p.get("model.norm.weight"), c.rmsNormEps);
  if (pol.kind === "layer" && pol.layer === c.numLayers - 1) return f.final;
  return x;
};

/** A point read directly (e.g. the embedding output h_{-1} or a module's normed input), raw or normed. */
export const pointOf = (c: DecoderConfig, p: Params, x: Tensor, norm: "raw" | "normed"): Tensor =>
  norm === "normed" ? rmsNorm(x, p.get("model.norm.weight"), c.rmsNormEps) : x;

/** A point the entropy analysis reads besides the internal policies: the embedding output or a module's input. */
export type ModuleInput =
  | { readonly kind: "embed"; readonly norm: ReadoutNorm }
  | { readonly kind: "attnIn" | "ffnIn"; readonly layer: number; readonly norm: ReadoutNorm };

/** Anything read through the unembedding: an internal policy or a module input. */
export type ReadPoint = InternalPolicy | ModuleInput;

/** Key of a point: `showPolicy` for policies; `embed`, `embed(normed)`, `attnIn(3)`, `ffnIn(0,normed)`. */
export const showPoint = (q: ReadPoint): string => {
  switch (q.kind) {
    case "embed":
      return q.norm === "normed" ? "embed(normed)" : "embed";
    case "attnIn":
    case "ffnIn":
      return `${q.kind}(${q.layer}${q.norm === "normed" ? ",normed" : ""})`;
    default:
      return showPolicy(q);
  }
};

/** The hidden state a point reads, (B, T, d): `policyPoint` for policies, `pointOf` the tap for module inputs. */
export const readPoint = (c: DecoderConfig, p: Params, f: ForwardResult, q: ReadPoint): Tensor => {
  switch (q.kind) {
    case "embed":
      return pointOf(c, p, f.embed, q.norm);
    case "attnIn":
    case "ffnIn": {
      const taps = f.layers[q.layer];
      if (!taps) {
        throw new ShapeError({
          op: "readPoint",
          message: `${showPoint(q)}: layer ${q.layer} out of range for a ${c.numLayers}-layer model`,
        });
      }
      return pointOf(c, p, taps[q.kind], q.norm);
    }
    default:
      return policyPoint(c, p, f, q);
  }
};

/** Entropy and log-prob of the targets, per token (B*T), for one readout. */
export interface PolicyReadout {
  readonly entropy: Tensor;
  readonly logp: Tensor;
  /** With `opts.topK`: the k most likely ids (B*T, k) i32 and their log-probs (B*T, k). */
  readonly top?: { readonly ids: Tensor; readonly logp: Tensor };
}

/**
 * Read several points (each (B, T, d)) through the unembedding in one streaming pass. `targets` (B*T) i32 are the
 * ids whose log-probs are wanted (e.g. the next token at each position). Differentiable w.r.t. the points and E_u.
 */
export const readPoints = (
  c: DecoderConfig,
  p: Params,
  points: readonly Tensor[],
  targets: Tensor,
  opts: ReadoutOptions = {},
): PolicyReadout[] => {
  if (points.length === 0) return [];
  const [B, T, d] = points[0].shape;
  const R = B * T;
  const rows = concatRows(points.map((x) => reshape(x, [R, d]))); // (P*R, d)
  const tg = concatRows(points.map(() => targets)); // (P*R)
  const r = streamReadout(rows, unembedding(c, p), tg, opts);
  const part = (t: Tensor, i: number) => (points.length === 1 ? t : sliceRows(t, i * R, R));
  return points.map((_, i) => ({
    entropy: part(r.entropy, i),
    logp: part(r.logp, i),
    ...(r.top ? { top: { ids: part(r.top.ids, i), logp: part(r.top.logp, i) } } : {}),
  }));
};

/**
 * Readouts of internal policies (or any points) by key (`showPolicy` / `showPoint`), all in one pass over the
 * vocabulary; a key given twice is read once.
 */
export const readPolicies = (
  c: DecoderConfig,
  p: Params,
  f: ForwardResult,
  policies: readonly ReadPoint[],
  targets: Tensor,
  opts: ReadoutOptions = {},
): Map<string, PolicyReadout> => {
  const uniq = [...new Map(policies.map((q) => [showPoint(q), q])).values()];
  const outs = readPoints(c, p, uniq.map((q) => readPoint(c, p, f, q)), targets, opts);
  return new Map(uniq.map((q, i) => [showPoint(q), outs[i]]));
};

/** Gather flat positions `at` (n) i32 of a tap (B, T, d) into (1, n, d). */
const gather = (x: Tensor, at: Tensor): Tensor => {
  const [B, T, d] = x.shape;
  return reshape(embedding(reshape(x, [B * T, d]), at), [1, at.shape[0], d]); // (1, n, d)
};

/** Every tap of a forward pass at flat positions `at` (n) i32, as a forward pass over (1, n). */
export const gatherTaps = (f: ForwardResult, at: Tensor): ForwardResult => ({
  embed: gather(f.embed, at),
  layers: f.layers.map((t): LayerTaps => ({
    attnIn: gather(t.attnIn, at),
    attn: gather(t.attn, at),
    ffnIn: gather(t.ffnIn, at),
    ffn: gather(t.ffn, at),
    out: gather(t.out, at),
  })),
  final: gather(f.final, at),
});

/** A forward pass with taps, and readouts of policies from it. */
export interface PolicyForward {
  readonly taps: ForwardResult;
  /**
   * Readouts of `policies` (or any points) by key at `targets` (B*T) i32, in ONE streaming pass (`readPolicies`).
   * With `at` (n) i32: only at those flat positions b*T + t (every tap gathered first), `targets` then (n).
   * Call it as often as wanted: the forward pass runs once.
   */
  readonly read: (
    policies: readonly ReadPoint[],
    targets: Tensor,
    opts?: ReadoutOptions,
    at?: Tensor,
  ) => Map<string, PolicyReadout>;
}

/**
 * Run the model on token ids (B, T) i32 at positions (T) i32 and read policies from its taps: `forward`, then
 * `readPolicies` per `read`. Every tensor lands in the current scope.
 */
export const forwardPolicies = (
  c: DecoderConfig,
  p: Params,
  ids: Tensor,
  positions: Tensor,
): PolicyForward => {
  const taps = forward(c, p, ids, positions);
  return {
    taps,
    read: (policies, targets, opts = {}, at) =>
      readPolicies(c, p, at ? gatherTaps(taps, at) : taps, policies, targets, opts),
  };
};
