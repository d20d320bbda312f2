/** Profile mode of the GPU backend: every compute pass timed with timestamp queries, totals per kernel label. */

/** Per-kernel timing collected in profile mode. */
export interface KernelProfile {
  /** The pass label (the kernel name unless the pass sets its own). */
  readonly name: string;
  /** Dispatches timed. */
  readonly dispatches: number;
  /** GPU time of those dispatches in total, in milliseconds. */
  readonly ms: number;
}

/** Timestamp queries for the passes of one submission at a time; results are read back asynchronously. */
export class Profiler {
  #querySet: GPUQuerySet | null = null;
  #names: string[] = [];
  readonly #totals = new Map<string, { dispatches: number; ms: number }>();
  readonly #reads: Promise<void>[] = [];

  constructor(readonly device: GPUDevice, readonly maxPasses: number) {}

  /** The descriptor of the next compute pass of this submission, timed under `label`. */
  pass(label: string): GPUComputePassDescriptor {
    const i = this.#names.length;
    this.#querySet ??= this.device.createQuerySet({ type: "timestamp", count: 2 * this.maxPasses });
    this.#names.push(label);
    return {
      timestampWrites: {
        querySet: this.#querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    };
  }

  /**
   * Encode the copy of this submission's timestamps into a mappable buffer; returns what to call once the encoder
   * has been submitted (it starts the asynchronous read).
   */
  resolve(encoder: GPUCommandEncoder): () => void {
    const names = this.#names;
    this.#names = [];
    if (!this.#querySet || names.length === 0) return () => {};
    const bytes = names.length * 16;
    const resolve = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    encoder.resolveQuerySet(this.#querySet, 0, names.length * 2, resolve, 0);
    const read = this.device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    encoder.copyBufferToBuffer(resolve, 0, read, 0, bytes);
    return () => this.#reads.push(this.#collect(read, resolve, names));
  }

  async #collect(read: GPUBuffer, resolve: GPUBuffer, names: string[]): Promise<void> {
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(read.getMappedRange().slice(0));
    read.unmap();
    read.destroy();
    resolve.destroy();
    names.forEach((name, i) => {
      const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
      const p = this.#totals.get(name) ?? { dispatches: 0, ms: 0 };
      p.dispatches++;
      if (ms >= 0 && ms < 1e6) p.ms += ms;
      this.#totals.set(name, p);
    });
  }

  /** Totals since the last call, largest first (waits for the pending reads); resets the counters. */
  async totals(): Promise<KernelProfile[]> {
    await Promise.all(this.#reads.splice(0));
    const out = [...this.#totals].map(([name, p]) => ({ name, ...p }));
    this.#totals.clear();
    return out.sort((a, b) => b.ms - a.ms);
  }
}
