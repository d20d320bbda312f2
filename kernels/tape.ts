/**
 * Reverse-mode autodiff: a tape of data (kernel, params, inputs, outputs) and one walker that calls each
 * kernel's gradient rule in reverse order and accumulates cotangents by addition.
 */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape } from "../core/shape.ts";
import type { Kernel } from "./kernel.ts";
import type { Tensor } from "./tensor.ts";
import { tidy } from "./tensor.ts";
// A cycle (chunked -> elementwise -> run -> tape -> chunked) that is safe: `addChunked` (`add`, range by range
// past one storage binding, e.g. a 150k-token embedding's gradient) is only called during backward.
import { addChunked } from "./chunked.ts";

interface Node {
  // deno-lint-ignore no-explicit-any
  readonly kernel: Kernel<any>;
  readonly params: unknown;
  readonly inputs: readonly Tensor[];
  readonly outputs: readonly Tensor[];
}

/** The tape that is recording, if any. Only ops on tensors that depend on a watched tensor are recorded. */
let active: Tape | null = null;

/** Called by `apply` after every kernel run. */
export const record = <P>(
  kernel: Kernel<P>,
  params: P,
  inputs: readonly Tensor[],
  outputs: readonly Tensor[],
) => {
  if (active) active.push(kernel as Kernel<unknown>, params, inputs, outputs);
};

/** A gradient tape. Watch the tensors to differentiate with respect to, run the forward inside `run`. */
export class Tape {
  readonly #nodes: Node[] = [];
  readonly #tracked = new Set<number>();
  #closed = false;

  /** Mark tensors as differentiation variables. */
  watch(...ts: Tensor[]): this {
    for (const t of ts) this.#tracked.add(t.id);
    return this;
  }

  /** Run `fn` with this tape recording. */
  run<R>(fn: () => R): R {
    const prev = active;
    active = this;
    try {
      return fn();
    } finally {
      active = prev;
    }
  }

  push(
    kernel: Kernel<unknown>,
    params: unknown,
    inputs: readonly Tensor[],
    outputs: readonly Tensor[],
  ): void {
    if (this.#closed || !kernel.vjp) return;
    if (!inputs.some((t) => this.#tracked.has(t.id))) return;
    for (const t of outputs) this.#tracked.add(t.id);
    for (const t of inputs) t.retain();
    if (kernel.saveOutputs !== false) { for (const t of outputs) t.retain(); }
    this.#nodes.push({ kernel, params, inputs, outputs });
  }

  /** Number of recorded nodes. */
  get length(): number {
    return this.#nodes.length;
  }

  /**
   * Gradients of `output` (seeded with `seed`, default ones for a scalar) with respect to each of `wrt`.
   * Returns one tensor per `wrt` (zeros-free: null where no gradient flows). Releases the tape's tensors.
   */
  backward(output: Tensor, wrt: readonly Tensor[], seed: Tensor): (Tensor | null)[] {
    if (this.#closed) throw new Error("Tape.backward: this tape was already used");
    if (!sameShape(seed.shape, output.shape)) {
      throw new ShapeError({
        op: "backward",
        message: `backward: seed ${showShape(seed.shape)} does not match output ${showShape(output.shape)}`,
      });
    }
    this.#closed = true;
    const prev = active;
    active = null;
    try {
      const grads = tidy(() => {
        const ct = new Map<number, Tensor>();
        ct.set(output.id, seed);
        const accumulate = (t: Tensor, g: Tensor) => {
          if (!sameShape(g.shape, t.shape)) {
            throw new ShapeError({
              op: "backward",
              message: `backward: gradient ${showShape(g.shape)} for tensor ${showShape(t.shape)}`,
            });
          }
          const old = ct.get(t.id);
          ct.set(t.id, old ? addChunked(old, g) : g);
        };
        for (let i = this.#nodes.length - 1; i >= 0; i--) {
          const n = this.#nodes[i];
          const dys = n.outputs.map((o) => ct.get(o.id) ?? null);
          if (dys.every((d) => d === null)) continue;
          const dxs = n.kernel.vjp!({ params: n.params, inputs: n.inputs, outputs: n.outputs }, dys);
          n.inputs.forEach((x, j) => {
            const g = dxs[j];
            if (g && this.#tracked.has(x.id)) accumulate(x, g);
          });
        }
        return wrt.map((w) => ct.get(w.id) ?? null);
      });
      return grads;
    } finally {
      active = prev;
      this.release();
    }
  }

  /** Drop every tensor the tape retained (backward does this itself). */
  release(): void {
    for (const n of this.#nodes) {
      for (const t of n.inputs) t.dispose();
      if (n.kernel.saveOutputs !== false) { for (const t of n.outputs) t.dispose(); }
    }
    this.#nodes.length = 0;
    this.#closed = true;
  }
}

/**
 * A composite op with its own gradient rule: `forward` runs with the tape paused (its intermediate ops are not
 * recorded), then one node is recorded whose rule is `vjp`. This is how a fused computation recomputes what
 * it needs in backward instead of storing it (e.g. streaming over the vocabulary).
 */
export const custom = <P>(
  name: string,
  params: P,
  inputs: readonly Tensor[],
  forward: () => Tensor[],
  vjp: Kernel<P>["vjp"],
): Tensor[] => {
  const prev = active;
  active = null;
  let outputs: Tensor[];
  try {
    outputs = forward();
  } finally {
    active = prev;
  }
  const kernel: Kernel<P> = {
    name,
    infer: () => outputs.map((o) => ({ shape: o.shape, dtype: o.dtype })),
    cpu: () => {
      throw new Error(`${name} is a composite op and never runs as a kernel`);
    },
    gpu: () => {
      throw new Error(`${name} is a composite op and never runs as a kernel`);
    },
    vjp,
  };
  record(kernel, params, inputs, outputs);
  return outputs;
};
