/**
 * Streaming readouts of internal policies: per token the entropy of softmax(E_u x / T) and the log-prob of a
 * given token, computed chunk by chunk over the vocabulary (online log-sum-exp). Peak extra memory is one
 * (R, chunk) logits block, never (R, V). Differentiable with respect to x and E_u: the backward recomputes each
 * chunk's logits instead of storing them.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { allocLike, chunkRows, fitsBinding } from "../engine/binding.ts";
import { putColumnsKernel, takeColumnsKernel } from "../kernels/chunked.ts";
import { copyInto, zerosLike } from "../kernels/layout.ts";
import { matmul } from "../kernels/matmul.ts";
import {
  NEG_BIG,
  readoutFinish,
  readoutFold,
  readoutGrad,
  readoutTopK,
  readoutTopKFinish,
} from "../kernels/readout.ts";
import { LOOP_SAFE } from "../engine/wgsl.ts";
import { apply, apply1 } from "../engine/apply.ts";
import { custom } from "../engine/tape.ts";
import { type Tensor, tensor, view } from "../engine/tensor.ts";
import { checkChunk, checkTemperature, forChunks, sumChunks } from "./vocab.ts";

/** Options of a streaming readout. */
export interface ReadoutOptions {
  /** Softmax temperature T (default 1). */
  readonly temperature?: number;
  /**
   * Vocabulary ids per chunk, a multiple of 64 (default 8192); lowered where a chunk of E or of the logits would
   * exceed the backend's maxStorageBufferBindingSize.
   */
  readonly chunk?: number;
  /** Also return the k most likely ids and their log-probs per row (1..16; not differentiated). */
  readonly topK?: number;
}

/** What `streamReadout` gives per row of x: entropy and target log-prob (and the top ids, on request). */
export interface Readout {
  /** Entropy of the readout policy per row, in nats. (R) */
  readonly entropy: Tensor;
  /** Log-prob of the target id per row. (R) */
  readonly logp: Tensor;
  /** With `topK`: the k most likely ids (R, k) i32, most likely first (ties: lower id first), and log-probs (R, k). */
  readonly top?: { readonly ids: Tensor; readonly logp: Tensor };
}

/**
 * Entropy and target log-prob of softmax(E x / T) for every row of x (R, d), E (V, d), targets (R) i32.
 * Gradients flow to x and E (entropy and log-prob cotangents combine in one fused pass per chunk).
 */
export const streamReadout = (x: Tensor, E: Tensor, targets: Tensor, opts: ReadoutOptions = {}): Readout => {
  const temperature = opts.temperature ?? 1;
  const want = opts.chunk ?? 8192;
  checkChunk("streamReadout", want);
  if (x.rank !== 2 || E.rank !== 2 || x.shape[1] !== E.shape[1]) {
    throw new ShapeError({
      op: "streamReadout",
      message: `streamReadout: x must be (R, d) and E (V, d), got ${showShape(x.shape)} and ${
        showShape(E.shape)
      }`,
    });
  }
  checkTemperature("streamReadout", temperature);
  const [R] = x.shape;
  const [V, d] = E.shape;
  // Chunks of E (C, d) and of the logits (R, C) each stay within one storage binding.
  const chunk = chunkRows(x.backend, want, Math.max(d, R));
  const params = { temperature, vocab: V };
  const k = opts.topK ?? 0;
  if (k > 0 && chunk > LOOP_SAFE) {
    throw new ShapeError({
      op: "streamReadout",
      message:
        `streamReadout: topK needs chunk <= ${LOOP_SAFE} (one loop per row per chunk on llvmpipe), got ${chunk}`,
    });
  }
  let fin: Tensor;
  let top: Readout["top"];
  const [entropy, logp] = custom("streamReadout", params, [x, E, targets], () => {
    const state = tensor(x.backend, new Float32Array(4 * R).map((_, i) => (i % 4 === 0 ? NEG_BIG : 0)), [
      R,
      4,
    ]);
    const topState = k > 0
      ? tensor(x.backend, new Float32Array(2 * k * R).map((_, i) => (i % (2 * k) < k ? NEG_BIG : -1)), [
        R,
        2 * k,
      ])
      : null;
    forChunks(E, chunk, (start, Ec) => {
      const z = matmul(x, Ec, { transB: true }); // (R, C)
      apply(readoutFold, { start, vocab: V, temperature }, [state, z, targets]);
      if (topState) apply(readoutTopK, { start, vocab: V, temperature, k }, [topState, z]);
    });
    const outs = apply(readoutFinish, {}, [state]);
    state.dispose();
    fin = outs[0];
    if (topState) {
      const [tl, ti] = apply(readoutTopKFinish, { k }, [topState, fin]);
      top = { ids: ti, logp: tl };
      topState.dispose();
    }
    return [outs[1], outs[2]];
  }, (_ctx, [dEnt, dLogp]) => {
    const a = dLogp ?? zerosLike(x, [R]);
    const b = dEnt ?? zerosLike(x, [R]);
    const dE = allocLike(x, [V, d]); // every row block is written below: never bound whole
    const dx = sumChunks(E, chunk, (start, Ec) => { // Ec (C, d)
      const z = matmul(x, Ec, { transB: true }); // (R, C)
      const dz = apply1(readoutGrad, { start, vocab: V, temperature }, [z, targets, fin, a, b]); // (R, C)
      copyInto(view(dE, start * d, Ec.shape), matmul(dz, x, { transA: true })); // (C, d)
      return matmul(dz, Ec); // (R, d)
    });
    return [dx, dE, null];
  });
  return top ? { entropy, logp, top } : { entropy, logp };
};

/**
 * Logits x E^T: x (..., d), E (V, d) -> (..., V), differentiable in x and E. When E is larger than one storage
 * binding (a 151,936 x 1,024 f32 table on llvmpipe) it is read in row blocks, each block's logits written into
 * its columns of the output (the output itself is one binding: keep the rows few, as in sampling). Prefer
 * `streamReadout` for statistics over the vocabulary: it never materializes (..., V).
 */
export const unembed = (x: Tensor, E: Tensor): Tensor => {
  if (fitsBinding(E.backend, E.size)) return matmul(x, E, { transB: true });
  const [V, d] = E.shape;
  const lead = x.shape.slice(0, -1);
  const R = lead.reduce((a, b) => a * b, 1);
  if (E.rank !== 2 || x.shape[x.rank - 1] !== d) {
    throw new ShapeError({
      op: "unembed",
      message: `unembed: x ${showShape(x.shape)} and E ${showShape(E.shape)} (expected (..., d) and (V, d))`,
    });
  }
  const chunk = chunkRows(E.backend, 8192, Math.max(d, R));
  // Rank-2 views of rank-2 tensors are the tensors themselves (no alignment question for views of views).
  const flat = (t: Tensor, shape: number[]) => (t.rank === 2 ? t : view(t, 0, shape));
  const done = (t: Tensor, of: Tensor) => t !== of && t.dispose();
  return custom("unembed", {}, [x, E], () => {
    const x2 = flat(x, [R, d]); // (R, d)
    const out = allocLike(x, [R, V]); // every column block is written below
    forChunks(
      E,
      chunk,
      (start, Ec) => apply(putColumnsKernel, { start }, [out, matmul(x2, Ec, { transB: true })]),
    );
    done(x2, x);
    if (lead.length === 1) return [out];
    const y = view(out, 0, [...lead, V]); // (..., V)
    out.dispose();
    return [y];
  }, (_ctx, [dy]) => {
    if (!dy) return [null, null];
    const x2 = flat(x, [R, d]); // (R, d)
    const dy2 = flat(dy, [R, V]); // (R, V)
    const dE = allocLike(x, [V, d]); // every row block is written below
    // z_c = x Ec^T: dEc = dz_c^T x (C, d); dx += dz_c Ec (R, d)
    const dx = sumChunks(E, chunk, (start, Ec) => {
      const dz = apply1(takeColumnsKernel, { start, count: Ec.shape[0] }, [dy2]); // (R, C)
      copyInto(view(dE, start * d, Ec.shape), matmul(dz, x2, { transA: true }));
      return matmul(dz, Ec); // (R, d)
    });
    const g = x.rank === 2 ? dx : view(dx, 0, x.shape);
    done(dx, g);
    done(x2, x);
    done(dy2, dy);
    return [g, dE];
  })[0];
};
