/**
 * Streaming readouts of internal policies: per token the entropy of softmax(E_u x / T) and the log-prob of a
 * given token, computed chunk by chunk over the vocabulary (online log-sum-exp). Peak extra memory is one
 * (N, chunk) logits block, never (N, V). Differentiable with respect to x and E_u: the backward recomputes each
 * chunk's logits instead of storing them.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { add } from "../kernels/elementwise.ts";
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
import { LOOP_SAFE } from "../kernels/wgsl.ts";
import { apply, apply1 } from "../kernels/run.ts";
import { custom } from "../kernels/tape.ts";
import { type Tensor, tensor, tidy, view } from "../kernels/tensor.ts";

export interface ReadoutOptions {
  /** Softmax temperature T (default 1). */
  readonly temperature?: number;
  /** Vocabulary ids per chunk, a multiple of 64 (default 8192). */
  readonly chunk?: number;
  /** Also return the k most likely ids and their log-probs per row (1..16; not differentiated). */
  readonly topK?: number;
}

export interface Readout {
  /** Entropy of the readout policy per row, in nats. (N) */
  readonly entropy: Tensor;
  /** Log-prob of the target id per row. (N) */
  readonly logp: Tensor;
  /** With `topK`: the k most likely ids (N, k) i32, most likely first (ties: lower id first), and log-probs (N, k). */
  readonly top?: { readonly ids: Tensor; readonly logp: Tensor };
}

/**
 * Entropy and target log-prob of softmax(E x / T) for every row of x (N, d), E (V, d), targets (N) i32.
 * Gradients flow to x and E (entropy and log-prob cotangents combine in one fused pass per chunk).
 */
export const streamReadout = (x: Tensor, E: Tensor, targets: Tensor, opts: ReadoutOptions = {}): Readout => {
  const temperature = opts.temperature ?? 1;
  const chunk = opts.chunk ?? 8192;
  if (chunk % 64 !== 0 || chunk <= 0) {
    throw new ShapeError({
      op: "streamReadout",
      message: `streamReadout: chunk ${chunk} must be a positive multiple of 64`,
    });
  }
  if (x.rank !== 2 || E.rank !== 2 || x.shape[1] !== E.shape[1]) {
    throw new ShapeError({
      op: "streamReadout",
      message: `streamReadout: x must be (N, d) and E (V, d), got ${showShape(x.shape)} and ${
        showShape(E.shape)
      }`,
    });
  }
  if (!(temperature > 0)) {
    throw new ShapeError({
      op: "streamReadout",
      message: `streamReadout: temperature ${temperature} must be > 0`,
    });
  }
  const [N] = x.shape;
  const [V, d] = E.shape;
  const chunks = (fn: (start: number, Ec: Tensor) => void) => {
    for (let start = 0; start < V; start += chunk) {
      tidy(() => fn(start, view(E, start * d, [Math.min(chunk, V - start), d])));
    }
  };
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
    const state = tensor(x.backend, new Float32Array(4 * N).map((_, i) => (i % 4 === 0 ? NEG_BIG : 0)), [
      N,
      4,
    ]);
    const topState = k > 0
      ? tensor(x.backend, new Float32Array(2 * k * N).map((_, i) => (i % (2 * k) < k ? NEG_BIG : -1)), [
        N,
        2 * k,
      ])
      : null;
    chunks((start, Ec) => {
      const z = matmul(x, Ec, { transB: true }); // (N, C)
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
    const a = dLogp ?? zerosLike(x, [N]);
    const b = dEnt ?? zerosLike(x, [N]);
    let dx: Tensor | null = null;
    const dE = zerosLike(x, [V, d]);
    for (let start = 0; start < V; start += chunk) {
      const next: Tensor = tidy(() => {
        const Ec = view(E, start * d, [Math.min(chunk, V - start), d]); // (C, d)
        const z = matmul(x, Ec, { transB: true }); // (N, C)
        const dz = apply1(readoutGrad, { start, vocab: V, temperature }, [z, targets, fin, a, b]); // (N, C)
        copyInto(view(dE, start * d, Ec.shape), matmul(dz, x, { transA: true })); // (C, d)
        const part = matmul(dz, Ec); // (N, d)
        return dx ? add(dx, part) : part;
      });
      dx?.dispose();
      dx = next;
    }
    return [dx, dE, null];
  });
  return top ? { entropy, logp, top } : { entropy, logp };
};
