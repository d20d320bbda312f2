/**
 * Readouts of internal policies from a forward pass: which residual-stream point each policy reads, and the
 * entropy and target log-prob of any set of policies in ONE streaming pass over the vocabulary (the points are
 * stacked as rows, so each vocabulary chunk is multiplied once).
 */
import { ShapeError } from "../core/errors.ts";
import { concatRows, sliceRows } from "../kernels/layout.ts";
import { rmsNorm } from "../kernels/rmsnorm.ts";
import { reshape, type Tensor } from "../engine/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import type { InternalPolicy } from "./internal.ts";
import { showPolicy } from "./internal.ts";
import { type ForwardResult, unembedding } from "./model.ts";
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
  const N = B * T;
  const rows = concatRows(points.map((x) => reshape(x, [N, d]))); // (P*N, d)
  const tg = concatRows(points.map(() => targets)); // (P*N)
  const r = streamReadout(rows, unembedding(c, p), tg, opts);
  const part = (t: Tensor, i: number) => (points.length === 1 ? t : sliceRows(t, i * N, N));
  return points.map((_, i) => ({
    entropy: part(r.entropy, i),
    logp: part(r.logp, i),
    ...(r.top ? { top: { ids: part(r.top.ids, i), logp: part(r.top.logp, i) } } : {}),
  }));
};

/** Readouts of internal policies by `showPolicy` key, all in one pass over the vocabulary. */
export const readPolicies = (
  c: DecoderConfig,
  p: Params,
  f: ForwardResult,
  policies: readonly InternalPolicy[],
  targets: Tensor,
  opts: ReadoutOptions = {},
): Map<string, PolicyReadout> => {
  const uniq = [...new Map(policies.map((q) => [showPolicy(q), q])).values()];
  const outs = readPoints(c, p, uniq.map((q) => policyPoint(c, p, f, q)), targets, opts);
  return new Map(uniq.map((q, i) => [showPolicy(q), outs[i]]));
};
