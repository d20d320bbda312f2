/** Matmul benchmark: GFLOP/s of our variants, a TypeScript loop, jax-js and tfjs-webgpu, and the model's shapes. */
import { withGpu } from "../engine/gpu/device.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import { matmul, type MatmulVariant, matmulVariant } from "../kernels/matmul.ts";
import { tensor } from "../engine/tensor.ts";

/** A square-ish problem: [M, K] @ [K, N]. */
interface Problem {
  readonly M: number;
  readonly K: number;
  readonly N: number;
}

const BUDGET_MS = 1500;
const REPS = 5;
const show = (p: Problem) => `${p.M}x${p.K} @ ${p.K}x${p.N}`;
const flops = (p: Problem) => 2 * p.M * p.N * p.K;
const fmt = (x: number | string) => (typeof x === "string" ? x : x.toFixed(1));
const rand = (n: number) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);

/** Warm up (compiles), calibrate, then enqueue `it` iterations and sync once; returns GFLOP/s. */
/**
 * Warm up (compiles), calibrate, then REPS times: enqueue enough iterations for ~BUDGET_MS / REPS and sync once;
 * returns the median GFLOP/s of the repetitions (this machine is shared: a single timing swings 2x).
 */
const timeIt = async (enqueue: () => void, sync: () => Promise<void>, work: number): Promise<number> => {
  enqueue();
  await sync();
  let t0 = performance.now();
  enqueue();
  await sync();
  const once = performance.now() - t0;
  const it = Math.max(2, Math.min(100, Math.round(BUDGET_MS / REPS / Math.max(once, 0.01))));
  const rates: number[] = [];
  for (let r = 0; r < REPS; r++) {
    t0 = performance.now();
    for (let i = 0; i < it; i++) enqueue();
    await sync();
    rates.push((work * it) / (performance.now() - t0) / 1e6);
  }
  rates.sort((a, b) => a - b);
  return rates[Math.floor(REPS / 2)];
};

const ours = (gpu: GpuBackend, p: Problem, variant?: MatmulVariant): Promise<number> => {
  const a = tensor(gpu, rand(p.M * p.K), [p.M, p.K]), b = tensor(gpu, rand(p.K * p.N), [p.K, p.N]);
  return timeIt(() => matmul(a, b, { variant }).dispose(), () => gpu.sync(), flops(p)).finally(() => {
    a.dispose();
    b.dispose();
  });
};

/** i-k-j triple loop on Float32Array over the first `rows` rows (the rate does not depend on M). */
const tsLoop = (p: Problem, rows: number): number => {
  const A = rand(rows * p.K), B = rand(p.K * p.N), C = new Float32Array(rows * p.N);
  const run = () => {
    C.fill(0);
    for (let i = 0; i < rows; i++) {
      for (let k = 0; k < p.K; k++) {
        const a = A[i * p.K + k];
        const bo = k * p.N, co = i * p.N;
        for (let j = 0; j < p.N; j++) C[co + j] += a * B[bo + j];
      }
    }
  };
  run();
  const t0 = performance.now();
  let it = 0;
  while (performance.now() - t0 < BUDGET_MS / 2 || it < 1) {
    run();
    it++;
  }
  return (2 * rows * p.N * p.K * it) / (performance.now() - t0) / 1e6;
};

/** A baseline: a setup that returns a timer per problem, or the reason it could not load. */
type Baseline = (p: Problem) => Promise<number>;

const loadJax = async (): Promise<Baseline> => {
  // deno-lint-ignore no-import-prefix -- benchmark-only baseline, pinned inline (not a project dependency)
  const jax = await import("npm:@jax-js/jax@0.1.25");
  await jax.init("webgpu");
  jax.defaultDevice("webgpu");
  const np = jax.numpy;
  return async (p) => {
    const a = np.array(rand(p.M * p.K)).reshape([p.M, p.K]);
    const b = np.array(rand(p.K * p.N)).reshape([p.K, p.N]);
    // jax-js ops consume their arguments (move semantics): `.ref` keeps a and b alive.
    let pending: { blockUntilReady(): Promise<unknown>; dispose(): void }[] = [];
    const r = await timeIt(() => {
      pending.push(np.matmul(a.ref, b.ref));
    }, async () => {
      await jax.blockUntilReady(pending);
      for (const c of pending) c.dispose();
      pending = [];
    }, flops(p));
    a.dispose();
    b.dispose();
    return r;
  };
};

const loadTf = async (): Promise<Baseline> => {
  // deno-lint-ignore no-import-prefix -- benchmark-only baseline, pinned inline (not a project dependency)
  const tf = await import("npm:@tensorflow/tfjs-core@4.22.0");
  // deno-lint-ignore no-import-prefix -- benchmark-only baseline, pinned inline (not a project dependency)
  await import("npm:@tensorflow/tfjs-backend-webgpu@4.22.0");
  if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') returned false");
  await tf.ready();
  return async (p) => {
    const a = tf.tensor2d(rand(p.M * p.K), [p.M, p.K]), b = tf.tensor2d(rand(p.K * p.N), [p.K, p.N]);
    let last: { data(): Promise<unknown>; dispose(): void } | null = null;
    const outs: { dispose(): void }[] = [];
    const r = await timeIt(() => {
      last = tf.matMul(a, b);
      outs.push(last);
    }, async () => {
      // Reading the last result waits for every earlier matmul on the same queue (one read per batch).
      if (last) await last.data();
      for (const o of outs.splice(0)) o.dispose();
    }, flops(p));
    a.dispose();
    b.dispose();
    return r;
  };
};

const tryLoad = async (name: string, load: () => Promise<Baseline>): Promise<Baseline | string> => {
  try {
    return await load();
  } catch (e) {
    return `${name} failed to load: ${(e as Error).message?.split("\n")[0] ?? e}`;
  }
};

const row = (cells: readonly (string | number)[], widths: readonly number[]) =>
  cells.map((c, i) => fmt(c).padStart(widths[i])).join("  ");

/** Run the benchmark on `gpu`; returns (and prints) the tables. */
export async function benchMatmul(gpu: GpuBackend): Promise<string> {
  const lines: string[] = [];
  const out = (s: string) => {
    lines.push(s);
    console.log(s);
  };
  out(
    `matmul on ${gpu.name}; GFLOP/s = 2 M N K / time, median of ${REPS} timings (${BUDGET_MS} ms in all per shape) after warm-up`,
  );
  const jax = await tryLoad("@jax-js/jax@0.1.25", loadJax);
  const tf = await tryLoad("@tensorflow/tfjs-backend-webgpu@4.22.0", loadTf);
  for (const [name, b] of [["jax-js", jax], ["tfjs-webgpu", tf]] as const) {
    if (typeof b === "string") out(`  ${name}: ${b}`);
  }
  const def = (p: Problem) =>
    matmulVariant({ transA: false, transB: false }, { shape: [p.M, p.K], dtype: "f32" }, {
      shape: [p.K, p.N],
      dtype: "f32",
    }, gpu.target);
  const head = [
    "shape",
    "texture",
    "buffer",
    "ts loop",
    "jax-js",
    "tfjs",
    "ours/ts",
    "ours/jax",
    "ours/tfjs",
  ];
  const w = [24, 8, 8, 14, 8, 8, 8, 9, 10];
  out("");
  out(row(head, w));
  const problems: Problem[] = [
    { M: 256, K: 256, N: 256 },
    { M: 512, K: 512, N: 512 },
    { M: 1024, K: 1024, N: 1024 },
    { M: 4096, K: 1024, N: 1024 },
  ];
  for (const p of problems) {
    const tex = await ours(gpu, p, "texture");
    const buf = await ours(gpu, p, "buffer");
    const mine = def(p) === "buffer" ? buf : def(p) === "texture" ? tex : await ours(gpu, p);
    const rows = Math.min(p.M, p.K * p.N > 300_000 ? 32 : p.M);
    const ts = tsLoop(p, rows);
    const base = async (b: Baseline | string) => {
      if (typeof b === "string") return "n/a";
      try {
        return await b(p);
      } catch (e) {
        return `err: ${(e as Error).message.slice(0, 40)}`;
      }
    };
    const jx = await base(jax), tfr = await base(tf);
    const ratio = (x: number | string) => (typeof x === "number" ? `${(mine / x).toFixed(2)}x` : "-");
    out(row([
      show(p),
      tex,
      buf,
      rows < p.M ? `${fmt(ts)} (${rows} r)` : ts,
      jx,
      tfr,
      ratio(ts),
      ratio(jx),
      ratio(tfr),
    ], w));
  }
  out(
    `(ours = the default variant here: ${def(problems[2])}; "ts loop (32 r)" timed the first 32 rows only)`,
  );
  out("");
  out("model shapes [tokens, d] @ [d, k], default variant:");
  const w2 = [26, 9, 9];
  out(row(["shape", "variant", "GFLOP/s"], w2));
  for (const tokens of [4096, 4093]) {
    for (const d of [128, 256, 512, 1024]) {
      for (const k of [d, 3 * d, 4 * d + 7]) {
        const p = { M: tokens, K: d, N: k };
        out(row([show(p), def(p), await ours(gpu, p)], w2));
      }
    }
  }
  out("");
  out(
    "weight gradients [d, tokens] @ [tokens, k] over 4096 tokens (k windows of 1024 from K > 2048), default:",
  );
  out(row(["shape", "variant", "GFLOP/s"], w2));
  for (const [d, k] of [[128, 384], [512, 1536], [1024, 1024]]) {
    const p = { M: d, K: 4096, N: k };
    out(row([show(p), def(p), await ours(gpu, p)], w2));
  }
  out("");
  out("too big for one texture: windows of rows / columns / k (the default) against the buffer kernel:");
  const w3 = [26, 9, 9, 8];
  out(row(["shape", "windows", "buffer", "ratio"], w3));
  for (const p of [{ M: 16384, K: 512, N: 512 }, { M: 64, K: 512, N: 40000 }, { M: 512, K: 10000, N: 512 }]) {
    const win = await ours(gpu, p, "texture"), buf = await ours(gpu, p, "buffer");
    out(row([show(p), win, buf, `${(win / buf).toFixed(2)}x`], w3));
  }
  return lines.join("\n");
}

if (import.meta.main) await withGpu((gpu) => benchMatmul(gpu));
