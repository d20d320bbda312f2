/**
 * Internal policies as typed values. A policy is a readout softmax(E_u x / T) of one point x of the residual
 * stream. Layers are 0-based: the paper's "layer 1" is `layer(0)`, its last layer L is `layer(L-1)`.
 *
 * Readout norm:
 * - `raw` (the paper's convention): E_u x with no final norm, except that `layer(L-1)` is read after the final
 *   norm, so `layer(L-1)` is exactly the model's own policy (`final`);
 * - `normed` (the logit lens): E_u RMSNorm_final(x), each readout normalized by its own RMS.
 */
import * as t from "io-ts";
import type { JsonCodec } from "../core/codec.ts";

/** How a readout treats the residual point x: `raw` E_u x (the paper's), `normed` E_u RMSNorm_final(x). */
export type ReadoutNorm = "raw" | "normed";

/**
 * An internal policy: `final` (the model's own), or the readout of layer l's output h_l (`layer`), of its
 * attention output A_l (`attn`) or of its FFN output F_l (`ffn`), l 0-based, under a readout norm.
 */
export type InternalPolicy =
  | { readonly kind: "final" }
  | { readonly kind: "layer"; readonly layer: number; readonly norm: ReadoutNorm }
  | { readonly kind: "attn"; readonly layer: number; readonly norm: ReadoutNorm }
  | { readonly kind: "ffn"; readonly layer: number; readonly norm: ReadoutNorm };

/** The model's own policy: softmax(E_u RMSNorm_final(h_{L-1}) / T). */
export const final: InternalPolicy = { kind: "final" };
/** Internal layer policy of layer l (0-based): readout of h_l. */
export const layer = (l: number, norm: ReadoutNorm = "raw"): InternalPolicy => ({
  kind: "layer",
  layer: l,
  norm,
});
/** Internal modular policy of the attention output A_l. */
export const attn = (l: number, norm: ReadoutNorm = "raw"): InternalPolicy => ({
  kind: "attn",
  layer: l,
  norm,
});
/** Internal modular policy of the FFN output F_l. */
export const ffn = (l: number, norm: ReadoutNorm = "raw"): InternalPolicy => ({
  kind: "ffn",
  layer: l,
  norm,
});

/** Stable text form, also the key of a readout: `final`, `layer(3)`, `attn(0,normed)`. */
export const showPolicy = (p: InternalPolicy): string => {
  switch (p.kind) {
    case "final":
      return "final";
    case "layer":
    case "attn":
    case "ffn":
      return `${p.kind}(${p.layer}${p.norm === "normed" ? ",normed" : ""})`;
    default:
      return p satisfies never;
  }
};

/** Structural equality. */
export const samePolicy = (a: InternalPolicy, b: InternalPolicy): boolean => showPolicy(a) === showPolicy(b);

const Norm = t.keyof({ raw: null, normed: null });
const LayerIndex = t.refinement(t.number, (n) => Number.isInteger(n) && n >= 0, "LayerIndex");

/** The codec of an internal policy (for objective JSON in checkpoints); an io-ts Type underneath. */
export const InternalPolicyCodec: JsonCodec<InternalPolicy> = t.union([
  t.type({ kind: t.literal("final") }),
  t.type({ kind: t.literal("layer"), layer: LayerIndex, norm: Norm }),
  t.type({ kind: t.literal("attn"), layer: LayerIndex, norm: Norm }),
  t.type({ kind: t.literal("ffn"), layer: LayerIndex, norm: Norm }),
]) as unknown as t.Type<InternalPolicy, unknown>;

/**
 * The inverse of `showPolicy`: `final`, `layer(3)`, `attn(0,normed)`, `ffn(1,raw)` (norm `raw` when omitted;
 * spaces ignored), checked by InternalPolicyCodec; null for any other text.
 */
export const parsePolicy = (text: string): InternalPolicy | null => {
  const s = text.replace(/\s+/g, "");
  if (s === "final") return final;
  const m = /^(layer|attn|ffn)\((\d+)(?:,(raw|normed))?\)$/.exec(s);
  if (!m) return null;
  const d = InternalPolicyCodec.decode({ kind: m[1], layer: Number(m[2]), norm: m[3] ?? "raw" });
  return d._tag === "Right" ? d.right : null;
};
