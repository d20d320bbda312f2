/** The engine itself: typed errors, lifetimes, the buffer pool, layout ops, reshape gradients. */
import { Cause, Effect, Exit } from "effect";
import fc from "fast-check";
import {
  assertFinite,
  DeviceLostError,
  DisposedError,
  GpuError,
  NoAdapterError,
  NonFiniteError,
  ShaderCompileError,
} from "../core/errors.ts";
import { size } from "../core/shape.ts";
import { add, mul, scale, sumTo } from "../kernels/elementwise.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { defineKernel, type PassBinding } from "../engine/kernel.ts";
import { permute, transpose } from "../kernels/layout.ts";
import { apply1 } from "../engine/apply.ts";
import { openGpu } from "../engine/gpu/device.ts";
import { llvmpipeEnv } from "../engine/gpu/llvmpipe.ts";
import { reshape, type Tensor, tensor, tidy } from "../engine/tensor.ts";
import { GPU_RUNS, gpuTest } from "./gpu_util.ts";
import { assertClose, awkwardDim, cpu32, cpu64, randomData } from "./util.ts";

const throwsTagged = async (tag: string, f: () => unknown, msg?: RegExp) => {
  let err: unknown;
  try {
    await f();
  } catch (e) {
    err = e;
  }
  const t = (err as { _tag?: string } | undefined)?._tag;
  if (t !== tag) throw new Error(`expected ${tag}, got ${err}`);
  if (msg && !msg.test((err as Error).message)) {
    throw new Error(`message ${(err as Error).message} !~ ${msg}`);
  }
  return err;
};

/** A kernel of one f32 output shaped like its input: one workgroup of `wgsl` on the GPU, nothing on the CPU. */
const wgslKernel = (name: string, wgsl: string, bindings: readonly PassBinding[]) =>
  defineKernel<Record<string, never>>({
    name,
    infer: (_p, [x]) => [{ shape: x.shape, dtype: "f32" }],
    cpu: () => {},
    gpu: () => [{ wgsl, workgroups: [1, 1, 1], bindings }],
  });

const failureOf = <A, E>(exit: Exit.Exit<A, E>): unknown =>
  Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined;

Deno.test("no adapter (simulated): openGpu fails with NoAdapterError that says how to get one", async () => {
  const none = await Effect.runPromiseExit(openGpu({ gpu: { requestAdapter: () => Promise.resolve(null) } }));
  const e = failureOf(none);
  if (!(e instanceof NoAdapterError) || !/llvmpipe|mesa-vulkan-drivers/.test(e.message)) {
    throw new Error(`got ${e}`);
  }
  const missing = await Effect.runPromiseExit(openGpu({ gpu: undefined }));
  if (!(failureOf(missing) instanceof NoAdapterError)) {
    throw new Error("navigator.gpu undefined must fail typed");
  }
  const rejecting = await Effect.runPromiseExit(
    openGpu({ gpu: { requestAdapter: () => Promise.reject("boom") } }),
  );
  if (!(failureOf(rejecting) instanceof NoAdapterError)) {
    throw new Error("a rejecting requestAdapter must fail typed");
  }
});

Deno.test("shapes are checked at construction", async () => {
  await throwsTagged(
    "ShapeError",
    () => tensor(cpu64, [1, 2, 3], [2, 2]),
    /3 values given for shape \[2,2\]/,
  );
  await throwsTagged("ShapeError", () => tensor(cpu64, [], [-1]), /non-negative integer/);
  await throwsTagged("ShapeError", () => reshape(tensor(cpu64, [1, 2, 3], [3]), [2]), /cannot view \[3\]/);
  await throwsTagged("ShapeError", () => permute(tensor(cpu64, [1, 2], [2, 1]), [0, 0]), /not a permutation/);
});

Deno.test("non-finite host values are named", async () => {
  const e = await throwsTagged(
    "NonFiniteError",
    () => assertFinite("weights.bin", [1, 2, NaN]),
    /element 2 is NaN/,
  );
  if (!(e instanceof NonFiniteError) || e.index !== 2) throw new Error("index");
});

Deno.test("tidy disposes what it created except its result; use after dispose is a typed error", async () => {
  const before = cpu32.memory().live;
  const kept = tidy(() => {
    const a = tensor(cpu32, [1, 2], [2]);
    const b = add(a, a);
    return mul(b, b);
  });
  if (cpu32.memory().live - before !== 8) throw new Error(`live grew by ${cpu32.memory().live - before}`);
  kept.dispose();
  if (cpu32.memory().live !== before) throw new Error("dispose must return the storage");
  await throwsTagged("DisposedError", () => kept.data());
  if (!(new DisposedError({ message: "" }) instanceof Error)) throw new Error("errors are Errors");
});

gpuTest(
  "a shader that fails to compile gives ShaderCompileError with kernel, line:col and source",
  async (g) => {
    const broken = wgslKernel(
      "brokenKernel",
      `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(1) fn main() {
  let x: f32 = 1u;
  b[0] = a[0] + x;
}`,
      [{ kind: "input", index: 0 }, { kind: "output", index: 0 }],
    );
    const x = tensor(g, [1], [1]);
    const y = apply1(broken, {}, [x]);
    const e = await throwsTagged("ShaderCompileError", () => y.data());
    const c = e as ShaderCompileError;
    if (c.kernel !== "brokenKernel" || c.messages[0].line !== 4 || !c.source.includes("let x: f32 = 1u")) {
      throw new Error(`bad error: ${JSON.stringify({ kernel: c.kernel, messages: c.messages })}`);
    }
    if (!/brokenKernel.*4:\d+/.test(c.message)) throw new Error(c.message);
    // The backend stays usable afterwards.
    assertClose(await add(x, x).data(), [2], { atol: 0, rtol: 0 });
  },
);

gpuTest("a validation error during dispatch surfaces as GpuError, not a hang", async (g) => {
  // Declares binding 1 but never uses it: auto layout drops it, so the bind group does not match.
  const bad = wgslKernel(
    "badBindings",
    `@group(0) @binding(0) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(1) fn main() { b[0] = 1.0; }`,
    [{ kind: "output", index: 0 }, { kind: "input", index: 0 }],
  );
  const y = apply1(bad, {}, [tensor(g, [1], [1])]);
  const e = await throwsTagged("GpuError", () => y.data());
  if (!(e instanceof GpuError)) throw new Error("type");
});

gpuTest("device loss surfaces as DeviceLostError on the next read", async () => {
  const g = await Effect.runPromise(openGpu({}));
  const x = tensor(g, [1, 2], [2]);
  g.device.destroy();
  await new Promise((r) => setTimeout(r, 10));
  const e = await throwsTagged("DeviceLostError", () => x.data());
  if (!(e instanceof DeviceLostError)) throw new Error("type");
});

gpuTest("profile mode: per-kernel dispatch counts and times, reset by each call", async () => {
  const g = await Effect.runPromise(openGpu({ profile: true }));
  try {
    if (!g.device.features.has("timestamp-query")) return; // profile mode needs timestamp queries
    const x = tensor(g, randomData(64, 1), [8, 8]);
    for (let i = 0; i < 3; i++) mul(x, x).dispose();
    sumTo(x, []).dispose();
    const p = await g.profile();
    const by = new Map(p.map((k) => [k.name, k]));
    const m = p.find((k) => k.name.startsWith("binary"));
    if (!m || m.dispatches !== 3 || !(m.ms >= 0)) throw new Error(`profile: ${JSON.stringify(p)}`);
    if (by.size !== p.length || p.some((k, i) => i > 0 && k.ms > p[i - 1].ms)) throw new Error("order");
    if ((await g.profile()).length !== 0) throw new Error("not reset");
  } finally {
    g.destroy();
  }
});

gpuTest("steady loop of 1,000 steps allocates no new GPU memory after warm-up", async (g) => {
  const w = tensor(g, randomData(4096, 1), [64, 64]);
  const step = () =>
    tidy(() => {
      const x = tensor(g, randomData(64 * 64, 2), [64, 64]);
      return sumTo(mul(add(x, w), scale(x, 0.5)), []).dispose();
    });
  for (let i = 0; i < 5; i++) step();
  await g.sync();
  const warm = g.memory();
  for (let i = 0; i < 1000; i++) step();
  await g.sync();
  const after = g.memory();
  if (
    after.allocations !== warm.allocations || after.allocated !== warm.allocated || after.live !== warm.live
  ) {
    throw new Error(`memory grew: ${JSON.stringify(warm)} -> ${JSON.stringify(after)}`);
  }
  w.dispose();
});

gpuTest("permute: GPU equals CPU on random shapes and permutations", async (g) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(awkwardDim(12), { minLength: 1, maxLength: 4 }).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.shuffledSubarray(s.map((_, i) => i), { minLength: s.length, maxLength: s.length }),
        )
      ),
      fc.nat(),
      async ([shape, perm], seed) => {
        const data = randomData(size(shape), seed);
        const run = (b: typeof g | typeof cpu32) => tidy(() => permute(tensor(b, data, shape), perm).data());
        assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "permute"); // a copy: exact
      },
    ),
    { numRuns: GPU_RUNS },
  );
});

Deno.test("gradients flow through reshape and permute (finite differences, f64)", async () => {
  await fc.assert(
    fc.asyncProperty(awkwardDim(5), awkwardDim(5), awkwardDim(4), fc.nat(), async (a, b, c, seed) => {
      const f = (x: Tensor, w: Tensor) => mul(transpose(reshape(x, [a, b * c])), w);
      const r = await checkGrad(cpu64, f, [
        { data: randomData(a * b * c, seed), shape: [a, b, c] },
        { data: randomData(a * b * c, seed + 1), shape: [b * c, a] },
      ]);
      if (r.error > 1e-7) throw new Error(JSON.stringify(r));
    }),
    { numRuns: 30 },
  );
});

Deno.test("llvmpipe settings: 512-bit vectors on AVX-512 unless set; a shader cache per width; nothing else", () => {
  const env = (vars: Record<string, string>) => (k: string) => vars[k];
  const show = (o: Record<string, string>) => JSON.stringify(o);
  const cases: [Record<string, string>, string[] | undefined, Record<string, string>][] = [
    [{ HOME: "/h" }, ["sse2", "avx512f"], {
      LP_NATIVE_VECTOR_WIDTH: "512",
      MESA_SHADER_CACHE_DIR: "/h/.cache/mesa_shader_cache_lp512",
    }],
    [{ HOME: "/h", XDG_CACHE_HOME: "/c" }, ["avx512f"], {
      LP_NATIVE_VECTOR_WIDTH: "512",
      MESA_SHADER_CACHE_DIR: "/c/mesa_shader_cache_lp512",
    }],
    // the user's width is kept (its cache still gets its own directory)
    [{ HOME: "/h", LP_NATIVE_VECTOR_WIDTH: "256" }, ["avx512f"], {
      MESA_SHADER_CACHE_DIR: "/h/.cache/mesa_shader_cache_lp256",
    }],
    // the user's cache directory is kept
    [{ HOME: "/h", MESA_SHADER_CACHE_DIR: "/x" }, ["avx512f"], { LP_NATIVE_VECTOR_WIDTH: "512" }],
    // no AVX-512 (or no /proc/cpuinfo): Mesa's defaults, untouched
    [{ HOME: "/h" }, ["sse2", "avx2"], {}],
    [{ HOME: "/h" }, undefined, {}],
    // nowhere to put a cache
    [{}, ["avx512f"], { LP_NATIVE_VECTOR_WIDTH: "512" }],
  ];
  for (const [vars, flags, want] of cases) {
    const got = llvmpipeEnv(env(vars), flags);
    if (show(got) !== show(want)) {
      throw new Error(`${show(vars)} ${flags}: ${show(got)}, expected ${show(want)}`);
    }
  }
});
