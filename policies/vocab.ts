/**
 * Streaming over the vocabulary: the unembedding E (V, d) read in chunks of rows, each chunk a view (C, d) in a
 * scope of its own, so peak extra memory is one chunk's logits. The readouts and KL readouts fold their online
 * statistics (log-sum-exp and the rest) chunk by chunk; their backward passes sum a gradient over the chunks.
 */
import { ShapeError } from "../core/errors.ts";
import { add } from "../kernels/elementwise.ts";
import { type Tensor, tidy, view } from "../engine/tensor.ts";

/** A `chunk` option must be a positive multiple of 64 (views start 64-aligned); ShapeError naming `op` otherwise. */
export const checkChunk = (op: string, chunk: number): void => {
  if (!(chunk > 0) || chunk % 64 !== 0) {
    throw new ShapeError({ op, message: `${op}: chunk ${chunk} must be a positive multiple of 64` });
  }
};

/** A softmax temperature must be > 0; ShapeError naming `op` otherwise. */
export const checkTemperature = (op: string, temperature: number): void => {
  if (!(temperature > 0)) {
    throw new ShapeError({ op, message: `${op}: temperature ${temperature} must be > 0` });
  }
};

/** The rows [start, start + chunk) of E (V, d), clipped at V: (C, d). */
const chunkOf = (E: Tensor, start: number, chunk: number): Tensor => {
  const [V, d] = E.shape;
  return view(E, start * d, [Math.min(chunk, V - start), d]);
};

/** `fn(start, Ec)` for every chunk Ec (C, d) of E's rows in order, each in its own scope (nothing survives). */
export const forChunks = (E: Tensor, chunk: number, fn: (start: number, Ec: Tensor) => void): void => {
  for (let start = 0; start < E.shape[0]; start += chunk) tidy(() => fn(start, chunkOf(E, start, chunk)));
};

/**
 * The sum over E's chunks of `fn(start, Ec)` (each of one shape, e.g. dx_c = dz_c Ec (R, d)), accumulated in
 * chunk order; each chunk's work runs in its own scope and only the running sum survives it.
 */
export const sumChunks = (E: Tensor, chunk: number, fn: (start: number, Ec: Tensor) => Tensor): Tensor => {
  let sum: Tensor | null = null;
  for (let start = 0; start < E.shape[0]; start += chunk) {
    const next: Tensor = tidy(() => {
      const part = fn(start, chunkOf(E, start, chunk));
      return sum ? add(sum, part) : part;
    });
    sum?.dispose();
    sum = next;
  }
  return sum!;
};
