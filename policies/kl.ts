/**
 * Streaming KL(pi_a || pi_b) per token between two internal policies, p = softmax(E_u x / T), over the full
 * vocabulary in one pass of chunks (online statistics), with a fused backward that recomputes each chunk's logits.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { klFinish, klFold, klGrad } from "../kernels/kl.ts";
import { allocLike, chunkRows } from "../engine/binding.ts";
import { concatRows, copyInto, sliceRows } from "../kernels/layout.ts";
import { matmul } from "../kernels/matmul.ts";
import { NEG_BIG } from "../kernels/readout.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { custom } from "../engine/tape.ts";
import { reshape, type Tensor, tensor, view } from "../engine/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import { type InternalPolicy, showPolicy } from "./internal.ts";
import { type ForwardResult, unembedding } from "./model.ts";
import type { Params } from "./params.ts";
import { policyPoint } from "./policy.ts";
import type { ReadoutOptions } from "./readout.ts";
import { checkChunk, checkTemperature, forChunks, sumChunks } from "./vocab.ts";

/** Options of a KL readout: temperature, chunk, and which side (if any) the gradient does not reach. */
export interface KlOptions extends ReadoutOptions {
  /** "a": the first policy is a detached teacher; "b": the second is; default "none" (exact gradient of KL). */
  readonly detach?: "none" | "a" | "b";
}

/**
 * KL(softmax(E xa / T) || softmax(E xb / T)) for every row: xa, xb (R, d), E (V, d) -> (R). Differentiable with
 * respect to xa, xb and E (one fused gradient kernel per chunk; see kernels/kl.ts for the math).
 */
export const streamKl = (xa: Tensor, xb: Tensor, E: Tensor, opts: KlOptions = {}): Tensor => {
  const temperature = opts.temperature ?? 1, want = opts.chunk ?? 8192, detach = opts.detach ?? "none";
  checkChunk("streamKl", want);
  checkTemperature("streamKl", temperature);
  if (
    xa.rank !== 2 || xb.rank !== 2 || E.rank !== 2 || xa.shape[0] !== xb.shape[0] ||
    xa.shape[1] !== E.shape[1] ||
    xb.shape[1] !== E.shape[1]
  ) {
    throw new ShapeError({
      op: "streamKl",
      message: `streamKl: xa and xb must be (R, d) and E (V, d), got xa ${showShape(xa.shape)}, xb ${
        showShape(xb.shape)
      }, E ${showShape(E.shape)}`,
    });
  }
  const [R] = xa.shape, [V, d] = E.shape;
  // Chunks of E (C, d) and of the stacked logits (2R, C) each stay within one storage binding.
  const chunk = chunkRows(xa.backend, want, Math.max(d, 2 * R));
  let fin: Tensor;
  const [kl] = custom("streamKl", { temperature, vocab: V }, [xa, xb, E], () => {
    const x = concatRows([xa, xb]); // (2R, d)
    const init = new Float32Array(5 * R).map((_, i) => (i % 5 === 0 || i % 5 === 3 ? NEG_BIG : 0));
    const state = tensor(xa.backend, init, [R, 5]);
    forChunks(E, chunk, (start, Ec) => { // Ec (C, d)
      apply(klFold, { start, vocab: V, temperature }, [state, matmul(x, Ec, { transB: true })]); // z (2R, C)
    });
    const [f, k] = apply(klFinish, {}, [state]);
    state.dispose();
    if (x !== xa) x.dispose();
    fin = f;
    return [k];
  }, (_ctx, [g]) => {
    if (!g) return [null, null, null];
    const x = concatRows([xa, xb]); // (2R, d)
    const dE = allocLike(xa, [V, d]); // every row block is written below: never bound whole
    const dx = sumChunks(E, chunk, (start, Ec) => { // Ec (C, d)
      const z = matmul(x, Ec, { transB: true }); // (2R, C)
      const dz = apply1(klGrad, { start, vocab: V, temperature, detach }, [z, fin, g]); // (2R, C)
      copyInto(view(dE, start * d, Ec.shape), matmul(dz, x, { transA: true })); // (C, d)
      return matmul(dz, Ec); // (2R, d)
    });
    return [
      detach === "a" ? null : sliceRows(dx, 0, R), // (R, d)
      detach === "b" ? null : sliceRows(dx, R, R), // (R, d)
      dE,
    ];
  });
  return kl;
};

/** Key of a KL readout, `from|to` (the same as objectives/reference.ts `klKey`). */
const keyOf = (a: InternalPolicy, b: InternalPolicy) => `${showPolicy(a)}|${showPolicy(b)}`;

/**
 * KL(pi_from || pi_to) per token (B*T) for several pairs of internal policies, all pairs in ONE streaming pass
 * (their points are stacked as rows). Keyed `from|to`.
 */
export const readKl = (
  c: DecoderConfig,
  p: Params,
  f: ForwardResult,
  pairs: readonly { readonly from: InternalPolicy; readonly to: InternalPolicy }[],
  opts: KlOptions = {},
): Map<string, Tensor> => {
  const uniq = [...new Map(pairs.map((q) => [keyOf(q.from, q.to), q])).values()];
  if (uniq.length === 0) return new Map();
  const [B, T, d] = f.final.shape;
  const R = B * T;
  const rows = (pol: InternalPolicy) => reshape(policyPoint(c, p, f, pol), [R, d]); // (R, d)
  const xa = concatRows(uniq.map((q) => rows(q.from))); // (P*R, d)
  const xb = concatRows(uniq.map((q) => rows(q.to))); // (P*R, d)
  const kl = streamKl(xa, xb, unembedding(c, p), opts); // (P*R)
  return new Map(uniq.map((q, i) => [keyOf(q.from, q.to), uniq.length === 1 ? kl : sliceRows(kl, i * R, R)]));
};
