/**
 * Reverse-mode autodiff: a tape of data (kernel, params, inputs, outputs) and one walker that calls each
 * kernel's gradient rule in reverse order and accumulates cotangents by addition.
 */
import { ShapeError } from "../core/errors.ts";
import { sameShape, showShape } from "../core/shape.ts";
import { apply1 } from "./apply.ts";
import { allocLike, bindingElems, fitsBinding, ranges } from "./binding.ts";
import { defineKernel, type Kernel } from "./kernel.ts";
import { record, type Recorder, recordingInto } from "./recorder.ts";
import { type Tensor, tidy, view } from "./tensor.ts";
import { bind, flatWgsl, grid1d } from "./wgsl.ts";

interface Node {
  // deno-lint-ignore no-explicit-any
  readonly kernel: Kernel<any>;
  readonly params: unknown;
  readonly inputs: readonly Tensor[];
  readonly outputs: readonly Tensor[];
}

const ACC_WG = 256;

/**
 * Cotangent accumulation, always into existing storage: `into` true: inputs (acc, g), acc += g in place (the
 * output aliases acc); `into` false: inputs (a, g, dst), dst := a + g (the output aliases dst). f32 tensors of one
 * size that fit one binding; `accumulate` splits larger ones into ranges.
 */
export const accumulateKernel: Kernel<{ readonly into: boolean }> = defineKernel<{ readonly into: boolean }>({
  name: "accumulate",
  infer: ({ into }, ins) => {
    const n = ins[0].shape.reduce((x, y) => x * y, 1);
    if (
      ins.length !== (into ? 2 : 3) ||
      ins.some((t) => t.dtype !== "f32" || t.shape.reduce((x, y) => x * y, 1) !== n)
    ) {
      throw new ShapeError({
        op: "accumulate",
        message: `accumulate: ${into ? 2 : 3} f32 tensors of one size expected, got ${
          ins.map((t) => `${showShape(t.shape)} ${t.dtype}`).join(", ")
        }`,
      });
    }
    const dst = into ? 0 : 2;
    return [{ shape: ins[dst].shape, dtype: "f32", alias: dst }];
  },
  cpu: (_p, [a, g], [out]) => {
    for (let i = 0; i < out.data.length; i++) out.data[i] = a.data[i] + g.data[i];
  },
  gpu: ({ into }, [a], target) => {
    const n = a.shape.reduce((x, y) => x * y, 1);
    const grid = grid1d(n, ACC_WG, target);
    const b = into
      ? bind({ input: 0, name: "a", access: "read_write" }, { input: 1, name: "g" })
      : bind({ input: 0, name: "a" }, { input: 1, name: "g" }, { input: 2, name: "y", access: "read_write" });
    return [{
      wgsl: flatWgsl(b.decls, n, ACC_WG, grid, into ? "  a[i] = a[i] + g[i];" : "  y[i] = a[i] + g[i];"),
      workgroups: grid,
      bindings: b.bindings,
    }];
  },
});

/**
 * `acc + g` into a new tensor (`into` false) or `acc += g` in place (`into` true: `acc` must be the caller's own),
 * range by range past one storage binding (e.g. a 150k-token embedding's gradient). Elementwise f32 addition,
 * so bit-identical to `add`. Never recorded: it runs while no tape records.
 */
const accumulate = (acc: Tensor, g: Tensor, into: boolean): Tensor => {
  const out = into ? acc : allocLike(acc, acc.shape);
  const run = (a: Tensor, gr: Tensor, o: Tensor) =>
    apply1(accumulateKernel, { into }, into ? [a, gr] : [a, gr, o]);
  if (fitsBinding(acc.backend, acc.size)) run(acc, g, out);
  else {
    for (const [s, len] of ranges(acc.size, bindingElems(acc.backend))) {
      tidy(() => run(view(acc, s, [len]), view(g, s, [len]), view(out, s, [len])));
    }
  }
  return out;
};

/** A gradient tape. Watch the tensors to differentiate with respect to, run the forward inside `run`. */
export class Tape implements Recorder {
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
    return recordingInto(this, fn);
  }

  /** Record one kernel run (called by `apply` while this tape records); kept only if it depends on a watched tensor. */
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
    try {
      return recordingInto(null, () =>
        tidy(() => {
          const ct = new Map<number, Tensor>();
          // Ids whose cotangent is a sum this walk allocated: only those are added to in place (a rule's own
          // result may be shared, e.g. add's rule returns dy for both inputs).
          const owned = new Set<number>();
          ct.set(output.id, seed);
          const add = (t: Tensor, g: Tensor) => {
            if (!sameShape(g.shape, t.shape)) {
              throw new ShapeError({
                op: "backward",
                message: `backward: gradient ${showShape(g.shape)} for tensor ${showShape(t.shape)}`,
              });
            }
            const old = ct.get(t.id);
            if (!old) ct.set(t.id, g);
            else if (owned.has(t.id)) accumulate(old, g, true);
            else {
              ct.set(t.id, accumulate(old, g, false));
              owned.add(t.id);
            }
          };
          for (let i = this.#nodes.length - 1; i >= 0; i--) {
            const n = this.#nodes[i];
            const dys = n.outputs.map((o) => ct.get(o.id) ?? null);
            if (dys.every((d) => d === null)) continue;
            const dxs = n.kernel.vjp!({ params: n.params, inputs: n.inputs, outputs: n.outputs }, dys);
            n.inputs.forEach((x, j) => {
              const g = dxs[j];
              if (g && this.#tracked.has(x.id)) add(x, g);
            });
          }
          return wrt.map((w) => ct.get(w.id) ?? null);
        }));
    } finally {
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
  const outputs = recordingInto(null, forward);
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
