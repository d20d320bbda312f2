/**
 * The registry sweep: every kernel of kernels/index.ts through three tiers, with the cases of tests/kernel_cases.ts.
 * 1. CPU reference: `apply` on the f64 and f32 CPU backends gives the outputs `infer` declares (count, shapes, dtypes,
 *    in-place outputs returned as their input tensor), finite where they must be.
 * 2. WGSL from device-free targets (software, software with 16 lanes, hardware): `gpu` is pure (frozen arguments)
 *    and deterministic, and every pass's bindings match its declarations (see `checkSteps`).
 * 3. GPU against the CPU reference on random awkward shapes, on both kernel variants where the two targets generate
 *    different steps, with each case's tolerance. BUPO_REGISTRY_RUNS sets the problems per kernel (default 3; a
 *    case may take fewer, or run fewer on the hardware variant, where each new shape compiles a barrier-heavy shader
 *    for seconds on llvmpipe); matmul's tiled variant runs only with BUPO_SLOW_TESTS=1 (tens of seconds per shape).
 * Kernels with deeper tests keep them; this is the safety net that no kernel escapes.
 */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import { apply } from "../engine/apply.ts";
import type { Backend } from "../engine/backend.ts";
import type {
  GpuPass,
  GpuStep,
  GpuTarget,
  HostArray,
  Kernel,
  OutSpec,
  PassBinding,
  TensorSpec,
} from "../engine/kernel.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { wgslType } from "../engine/wgsl.ts";
import { type KernelName, type KernelParams, KERNELS } from "../kernels/index.ts";
import { MAX_TEXTURE } from "../kernels/matmul.ts";
import {
  assertCheck,
  type Case,
  CASES,
  type Check,
  type Problem,
  ZERO_SIZE_REGRESSIONS,
} from "./kernel_cases.ts";
import { gpu, hwGpu, softwareTarget } from "./gpu_util.ts";
import { cpu32, cpu64 } from "./util.ts";

const env = (k: string): string | undefined => {
  try {
    return Deno.env.get(k);
  } catch {
    return undefined;
  }
};
/** Problems per kernel in the device-free tiers (cheap) and on the GPU (each new shape compiles shaders). */
const CPU_RUNS = Number(env("BUPO_REGISTRY_CPU_RUNS") ?? 25);
const GPU_RUNS = Number(env("BUPO_REGISTRY_RUNS") ?? 3);
const VERBOSE = !!env("BUPO_VERBOSE");
/** Also run the hardware variants that compile for tens of seconds on llvmpipe (`Case.slowHardware`). */
const SLOW = env("BUPO_SLOW_TESTS") === "1";

const NAMES = Object.keys(KERNELS) as KernelName[];
/** The kernels the tiers sweep: all, or those named in BUPO_REGISTRY_KERNELS (comma-separated, for debugging). */
const SWEPT = ((only) => only ? NAMES.filter((k) => only.split(",").includes(k)) : NAMES)(
  env("BUPO_REGISTRY_KERNELS"),
);

/** The kernel and case of `name`, typed together. */
const entry = <K extends KernelName>(name: K) => ({
  kernel: KERNELS[name] as unknown as Kernel<KernelParams<K>>,
  kase: CASES[name] as Case<KernelParams<K>>,
});

const specsOf = (p: Problem<unknown>): TensorSpec[] => p.inputs.map(({ shape, dtype }) => ({ shape, dtype }));

/** Steps as comparable text (uniform data as number lists). */
const serialize = (steps: readonly GpuStep[]): string =>
  JSON.stringify(steps, (_k, v) => (ArrayBuffer.isView(v) ? Array.from(v as Uint32Array) : v));

const deepFreeze = <T>(x: T): T => {
  if (x && typeof x === "object" && !Object.isFrozen(x)) {
    Object.freeze(x);
    for (const v of Object.values(x)) deepFreeze(v);
  }
  return x;
};

Deno.test("registry: every key names its kernel, and every kernel has a case", () => {
  const seen = new Map<unknown, string>();
  for (const name of NAMES) {
    const k = KERNELS[name];
    if (k.name !== name) throw new Error(`KERNELS.${name} is the kernel named "${k.name}"`);
    const other = seen.get(k);
    if (other) throw new Error(`KERNELS.${name} and KERNELS.${other} are the same kernel`);
    seen.set(k, name);
    const c: { tol?: unknown; compare?: unknown } | undefined = CASES[name];
    if (!c || (!c.tol && !c.compare)) throw new Error(`${name}: no case, or a case without tol or compare`);
  }
  const extra = Object.keys(CASES).filter((k) => !(k in KERNELS));
  if (extra.length) throw new Error(`cases for kernels not in the registry: ${extra.join(", ")}`);
});

// ---- tier 1: the CPU reference ------------------------------------------------------------------------------

/** Run `p` on backend `b` through `apply`; checks the outputs against `infer` and returns them as host data. */
const run = <P>(
  kernel: Kernel<P>,
  p: Problem<P>,
  b: Backend,
): Promise<{ data: HostArray[]; specs: OutSpec[] }> =>
  tidy(async () => {
    const ins = p.inputs.map((x) => tensor(b, x.data, x.shape, x.dtype));
    const specs = [...kernel.infer(p.params, ins)];
    const outs = apply(kernel, p.params, ins);
    if (outs.length !== specs.length) {
      throw new Error(`${outs.length} outputs, infer declared ${specs.length}`);
    }
    outs.forEach((o, i) => {
      const s = specs[i];
      if (o.shape.join() !== s.shape.join() || o.dtype !== s.dtype) {
        throw new Error(`output ${i} is ${o.dtype}[${o.shape}], infer declared ${s.dtype}[${s.shape}]`);
      }
      if (s.alias !== undefined && o !== ins[s.alias]) {
        throw new Error(`output ${i} aliases input ${s.alias} but is not that tensor`);
      }
    });
    return { data: await Promise.all(outs.map((o) => o.data())), specs };
  });

Deno.test("registry: every kernel's CPU reference runs through apply with the outputs infer declares", async (t) => {
  for (const name of SWEPT) {
    await t.step(name, async () => {
      const { kernel, kase } = entry(name);
      await fc.assert(
        fc.asyncProperty(kase.arb, async (p) => {
          for (const b of [cpu64, cpu32]) {
            const { data, specs } = await run(kernel, p, b);
            specs.forEach((s, i) => {
              if (s.dtype !== "f32" || !(kase.finite?.(p, i) ?? true)) return;
              const bad = data[i].findIndex((x) => !Number.isFinite(x));
              if (bad >= 0) throw new Error(`output ${i}[${bad}] = ${data[i][bad]} on ${b.name}: not finite`);
            });
          }
        }),
        { numRuns: CPU_RUNS },
      );
    });
  }
});

// ---- tier 2: WGSL and bindings from device-free targets ----------------------------------------------------

const TARGETS: readonly [string, GpuTarget][] = [
  ["software", softwareTarget()],
  ["software, 16 lanes", softwareTarget(16)],
  ["hardware", { ...softwareTarget(), software: false }],
];

/** One `@group(g) @binding(n) var<space> name: type;` declaration. */
interface Decl {
  readonly group: number;
  readonly binding: number;
  /** The address space and access ("storage, read", "uniform"), absent for textures. */
  readonly space: string | undefined;
  readonly name: string;
  readonly type: string;
}

const stripComments = (s: string) => s.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
const DECL = /@group\(\s*(\d+)\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var(?:<([^>]*)>)?\s+(\w+)\s*:\s*([^;]+);/g;
const declarations = (wgsl: string): Decl[] =>
  [...wgsl.matchAll(DECL)].map((m) => ({
    group: Number(m[1]),
    binding: Number(m[2]),
    space: m[3]?.replace(/\s+/g, " ").trim(),
    name: m[4],
    type: m[5].replace(/\s+/g, " ").trim(),
  }));

/** The scalar of a storage array's element type: array<vec4f> -> f32, array<atomic<u32>> -> u32. */
const elementScalar = (type: string): string | undefined => {
  const el = /^array<\s*(.+)\s*>$/.exec(type)?.[1].trim();
  if (!el) return undefined;
  const inner = /^(?:atomic|vec[234])<\s*(\w+)\s*>$/.exec(el)?.[1];
  if (inner) return inner;
  const short = /^vec[234]([fiu])$/.exec(el)?.[1];
  if (short) return { f: "f32", i: "i32", u: "u32" }[short];
  return el;
};

/** Size in bytes of a uniform's type (scalars, vectors and structs of them), or undefined if not sized here. */
const uniformSize = (type: string, wgsl: string): number | undefined => {
  const layout = (t: string): [number, number] | undefined => {
    t = t.trim();
    if (/^(f32|i32|u32)$/.test(t)) return [4, 4];
    const v = /^vec([234])(?:[fiu]|<\s*(?:f32|i32|u32)\s*>)$/.exec(t);
    if (v) {
      return ({ 2: [8, 8], 3: [12, 16], 4: [16, 16] } as const)[v[1] as "2" | "3" | "4"] as [number, number];
    }
    const body = new RegExp(`struct\\s+${t}\\s*\\{([^}]*)\\}`).exec(wgsl)?.[1];
    if (!body) return undefined;
    let off = 0, align = 1;
    for (const field of body.split(",").map((f) => f.trim()).filter((f) => f)) {
      const l = layout(field.slice(field.indexOf(":") + 1));
      if (!l) return undefined;
      off = Math.ceil(off / l[1]) * l[1] + l[0];
      align = Math.max(align, l[1]);
    }
    return [Math.ceil(off / align) * align, align];
  };
  return layout(type)?.[0];
};

const TEXTURE_TYPES = {
  write: ["texture_storage_2d<rgba32float, write>"],
  read: ["texture_2d<f32>", "texture_storage_2d<rgba32float, read>"],
} as const;

/**
 * Everything wrong with a kernel's steps for inputs `ins` and outputs `outs` on `target` (empty when all is well):
 * - each pass declares exactly @group(0) @binding(0..k-1) for its k bindings, and one `@compute` entry `main`
 *   whose workgroup size and grid fit the target;
 * - an input binding is `var<storage, read_write>` iff an output aliases that input (in place), else `read`; an
 *   output binding is `read_write`, or `read` in a pass after one that wrote it (embeddingGradPrep's last pass
 *   reads its head output); a scratch buffer is storage and its first binding writes it; element types match the
 *   tensors' dtypes; input and output indices are in range; every output not in place is written by some pass;
 * - a texture is `texture_storage_2d<rgba32float, write>` when written, `texture_2d<f32>` or a read-only storage
 *   texture when read, within MAX_TEXTURE, and read only after a write or copy of the same id and size;
 * - a uniform is `var<uniform>`, its data at most the backend's 256-byte slot and at least its declared type;
 * - no buffer is bound twice in one pass (an in-place output and its input are one buffer);
 * - a texture copy names an input in range, a 16-byte-aligned offset, 256-byte rows, and stays inside the input
 *   and the texture.
 */
const checkSteps = (
  steps: readonly GpuStep[],
  ins: readonly TensorSpec[],
  outs: readonly OutSpec[],
  target: GpuTarget,
): string[] => {
  const bad: string[] = [];
  const aliased = new Set(outs.map((o) => o.alias).filter((a) => a !== undefined));
  const scratch = new Map<string, number>();
  const textures = new Map<string, string>(); // id -> size last written
  const written = new Set<number>();
  steps.forEach((step, si) => {
    const at = `step ${si}${step.label ? ` (${step.label})` : ""}`;
    if ("copy" in step) {
      const c = step.copy, src = ins[c.input];
      if (!src) return bad.push(`${at}: copy from missing input ${c.input}`);
      if (c.offset % 16 !== 0 || c.bytesPerRow % 256 !== 0) {
        bad.push(`${at}: copy offset ${c.offset} / bytesPerRow ${c.bytesPerRow} misaligned`);
      }
      const [w, h] = c.size, tex = c.texture;
      if (h > 0 && c.offset + c.bytesPerRow * (h - 1) + 16 * w > 4 * size(src.shape)) {
        bad.push(`${at}: copy reads past input ${c.input} (${4 * size(src.shape)} bytes)`);
      }
      if (w > tex.width || c.y + h > tex.height) {
        bad.push(`${at}: copy of ${w}x${h} at row ${c.y} leaves texture`);
      }
      textures.set(tex.id, `${tex.width}x${tex.height}`);
      return;
    }
    const pass: GpuPass = step;
    const wgsl = stripComments(pass.wgsl);
    const decls = declarations(wgsl);
    const count = (wgsl.match(/@binding\(/g) ?? []).length;
    if (count !== decls.length) {
      bad.push(`${at}: ${count - decls.length} @binding declarations not understood`);
    }
    const numbers = decls.map((d) => d.binding).sort((a, b) => a - b);
    if (numbers.join() !== pass.bindings.map((_, i) => i).join() || decls.some((d) => d.group !== 0)) {
      bad.push(`${at}: declares @group(0) @binding(${numbers}) for ${pass.bindings.length} bindings`);
    }
    const entries = wgsl.match(/@compute/g)?.length ?? 0;
    const ws = /@compute\s+@workgroup_size\(([^)]*)\)\s*fn\s+main\s*\(/.exec(wgsl);
    if (entries !== 1 || !ws) bad.push(`${at}: expected one @compute @workgroup_size(..) fn main`);
    else {
      const dims = ws[1].split(",").map((x) => Number(x.trim().replace(/u$/, "")));
      const n = dims.reduce((a, b) => a * b, 1);
      if (!Number.isInteger(n) || n < 1 || n > target.maxInvocationsPerWorkgroup) {
        bad.push(
          `${at}: workgroup size (${
            ws[1]
          }) vs maxInvocationsPerWorkgroup ${target.maxInvocationsPerWorkgroup}`,
        );
      }
    }
    if (
      pass.workgroups.length !== 3 ||
      pass.workgroups.some((g) => !Number.isInteger(g) || g < 0 || g > target.maxWorkgroupsPerDimension)
    ) {
      bad.push(`${at}: workgroups [${pass.workgroups}] outside [0, ${target.maxWorkgroupsPerDimension}]`);
    }
    const buffers = new Map<string, number>();
    const resource = (key: string, i: number) => {
      const j = buffers.get(key);
      if (j !== undefined) bad.push(`${at}: bindings ${j} and ${i} are the same ${key}`);
      buffers.set(key, i);
    };
    pass.bindings.forEach((b: PassBinding, i) => {
      const d = decls.find((x) => x.binding === i);
      if (!d) return;
      const where = `${at} binding ${i} (${b.kind}${"index" in b ? ` ${b.index}` : ""}, "${d.name}")`;
      const access = d.space === "storage" ? "read" : /^storage, (read|read_write)$/.exec(d.space ?? "")?.[1];
      const storageOf = (want: "read" | "read_write" | "any", dtype?: string) => {
        if (!access) return bad.push(`${where}: declared var<${d.space ?? ""}>, expected storage`);
        if (want !== "any" && access !== want) bad.push(`${where}: declared ${access}, expected ${want}`);
        if (dtype && elementScalar(d.type) !== wgslType(dtype as "f32")) {
          bad.push(`${where}: element type of ${d.type} is not ${wgslType(dtype as "f32")}`);
        }
      };
      switch (b.kind) {
        case "input": {
          const x = ins[b.index];
          if (!Number.isInteger(b.index) || !x) return bad.push(`${where}: input ${b.index} out of range`);
          storageOf(aliased.has(b.index) ? "read_write" : "read", x.dtype);
          return resource(`input ${b.index}`, i);
        }
        case "output": {
          const o = outs[b.index];
          if (!Number.isInteger(b.index) || !o) return bad.push(`${where}: output ${b.index} out of range`);
          // Read-only only after an earlier pass of this call wrote it (a later pass consuming it).
          storageOf(written.has(b.index) && access === "read" ? "read" : "read_write", o.dtype);
          if (access === "read_write") written.add(b.index);
          return resource(o.alias === undefined ? `output ${b.index}` : `input ${o.alias}`, i);
        }
        case "scratch": {
          storageOf("any");
          const first = scratch.get(b.id);
          if (first === undefined && access !== "read_write") {
            bad.push(`${where}: first use of "${b.id}" only reads`);
          }
          if (first !== undefined && first !== b.bytes) {
            bad.push(`${where}: "${b.id}" was ${first} bytes, now ${b.bytes}`);
          }
          // 0 bytes is fine (no positions, say): the backend binds at least 4.
          if (!(Number.isInteger(b.bytes) && b.bytes >= 0)) bad.push(`${where}: ${b.bytes} bytes`);
          scratch.set(b.id, b.bytes);
          return resource(`scratch ${b.id}`, i);
        }
        case "texture": {
          const okType = (TEXTURE_TYPES[b.access] as readonly string[]).includes(d.type);
          if (d.space !== undefined || !okType) bad.push(`${where}: ${b.access} texture declared ${d.type}`);
          if (!(b.width >= 1 && b.height >= 1 && b.width <= MAX_TEXTURE && b.height <= MAX_TEXTURE)) {
            bad.push(`${where}: texture ${b.width}x${b.height}`);
          }
          const dims = `${b.width}x${b.height}`;
          if (b.access === "write") textures.set(b.id, dims);
          else if (textures.get(b.id) !== dims) {
            bad.push(
              `${where}: reads texture "${b.id}" ${dims}, last written ${textures.get(b.id) ?? "never"}`,
            );
          }
          return resource(`texture ${b.id}`, i);
        }
        case "uniform": {
          if (d.space !== "uniform") {
            return bad.push(`${where}: declared var<${d.space ?? ""}>, expected uniform`);
          }
          const bytes = b.data.byteLength, need = uniformSize(d.type, wgsl);
          if (bytes === 0 || bytes > 256) {
            bad.push(`${where}: ${bytes} bytes of uniform data (slots are 256)`);
          }
          if (need !== undefined && need > Math.max(16, bytes)) {
            bad.push(`${where}: ${d.type} needs ${need} bytes, the binding has ${Math.max(16, bytes)}`);
          }
          return;
        }
        default:
          return b satisfies never;
      }
    });
  });
  outs.forEach((o, i) => {
    if (o.alias === undefined && size(o.shape) > 0 && steps.length > 0 && !written.has(i)) {
      bad.push(`output ${i} is never bound read_write`);
    }
  });
  return bad;
};

Deno.test("registry: the binding check rejects passes that contradict their declarations", () => {
  const T = softwareTarget();
  const f4: TensorSpec = { shape: [4], dtype: "f32" };
  const i4: TensorSpec = { shape: [4], dtype: "i32" };
  const pass = (
    decls: string,
    bindings: PassBinding[],
    workgroups: [number, number, number] = [1, 1, 1],
  ): GpuPass => ({
    wgsl: `${decls}\n@compute @workgroup_size(64)\nfn main(@builtin(global_invocation_id) gid: vec3u) {}`,
    workgroups,
    bindings,
  });
  const x = (access: "read" | "read_write", n = 0, type = "f32") =>
    `@group(0) @binding(${n}) var<storage, ${access}> b${n}: array<${type}>;`;
  const inp = (index: number): PassBinding => ({ kind: "input", index });
  const out = (index: number): PassBinding => ({ kind: "output", index });
  const ok = pass(`${x("read")}\n${x("read_write", 1)}`, [inp(0), out(0)]);
  const clean = checkSteps([ok], [f4], [f4], T);
  if (clean.length) throw new Error(`a correct pass was rejected: ${clean.join("; ")}`);
  const wrong: [string, GpuStep[], TensorSpec[], OutSpec[], RegExp][] = [
    [
      "input written",
      [pass(`${x("read_write")}\n${x("read_write", 1)}`, [inp(0), out(0)])],
      [f4],
      [f4],
      /read_write, expected read/,
    ],
    [
      "output read",
      [pass(`${x("read")}\n${x("read", 1)}`, [inp(0), out(0)])],
      [f4],
      [f4],
      /declared read, expected read_write/,
    ],
    ["in-place input read", [pass(x("read"), [inp(0)])], [f4], [{ ...f4, alias: 0 }], /expected read_write/],
    [
      "a gap",
      [pass(`${x("read")}\n${x("read_write", 2)}`, [inp(0), out(0)])],
      [f4],
      [f4],
      /binding\(0,2\) for 2/,
    ],
    ["an undeclared binding", [pass(x("read"), [inp(0), out(0)])], [f4], [f4], /binding\(0\) for 2/],
    [
      "input out of range",
      [pass(`${x("read")}\n${x("read_write", 1)}`, [inp(1), out(0)])],
      [f4],
      [f4],
      /input 1 out/,
    ],
    [
      "wrong element type",
      [pass(`${x("read")}\n${x("read_write", 1)}`, [inp(0), out(0)])],
      [i4],
      [f4],
      /not i32/,
    ],
    ["one buffer twice", [pass(`${x("read_write")}\n${x("read_write", 1)}`, [inp(0), out(0)])], [f4], [{
      ...f4,
      alias: 0,
    }], /same input 0/],
    [
      "a uniform as storage",
      [pass(`${x("read")}\n${x("read_write", 1)}`, [inp(0), { kind: "uniform", data: new Uint32Array(4) }])],
      [f4],
      [],
      /expected uniform/,
    ],
    [
      "a short uniform",
      [pass(`struct U { a: u32, b: vec4u, c: u32 }\n@group(0) @binding(0) var<uniform> u: U;`, [{
        kind: "uniform",
        data: new Uint32Array(4),
      }])],
      [],
      [],
      /needs 48 bytes/,
    ],
    [
      "a texture read before any write",
      [pass(`@group(0) @binding(0) var t: texture_2d<f32>;`, [{
        kind: "texture",
        id: "A",
        width: 2,
        height: 2,
        access: "read",
      }])],
      [],
      [],
      /last written never/,
    ],
    ["an output never written", [pass(x("read"), [inp(0)])], [f4], [f4], /never bound read_write/],
    [
      "a grid past the limit",
      [pass(`${x("read")}\n${x("read_write", 1)}`, [inp(0), out(0)], [65536, 1, 1])],
      [f4],
      [f4],
      /workgroups/,
    ],
  ];
  for (const [what, steps, ins, outs, re] of wrong) {
    const bad = checkSteps(steps, ins, outs, T);
    if (!bad.some((m) => re.test(m))) {
      throw new Error(`${what}: not rejected as ${re} (got: ${bad.join("; ")})`);
    }
  }
});

Deno.test("registry: every kernel's WGSL is pure, deterministic, and binds what it declares", async (t) => {
  for (const name of SWEPT) {
    await t.step(name, () => {
      const { kernel, kase } = entry(name);
      fc.assert(
        fc.property(kase.arb, (p) => {
          const params = deepFreeze(structuredClone(p.params));
          const ins = deepFreeze(specsOf(p));
          const outs = kernel.infer(params, ins);
          if (JSON.stringify(kernel.infer(params, ins)) !== JSON.stringify(outs)) {
            throw new Error("infer varies");
          }
          for (const [tname, target] of TARGETS) {
            const steps = kernel.gpu(params, ins, target);
            if (serialize(kernel.gpu(params, ins, target)) !== serialize(steps)) {
              throw new Error(`${tname}: two gpu() calls gave different steps`);
            }
            const bad = checkSteps(steps, ins, outs, target);
            if (bad.length) throw new Error(`${tname} target:\n  ${bad.join("\n  ")}`);
          }
        }),
        { numRuns: CPU_RUNS },
      );
    });
  }
});

// ---- tier 3: GPU against the CPU reference -------------------------------------------------------------------

/** Per kernel: problems run, how many on the hardware variant too, seconds. */
const stats: { name: string; runs: number; hw: number; seconds: number }[] = [];

Deno.test({
  name: "registry: every kernel on the GPU equals its CPU reference on awkward shapes (both variants)",
  ignore: gpu === null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const g = gpu!, hw = hwGpu!;
    for (const name of SWEPT) {
      await t.step(name, async () => {
        const { kernel, kase } = entry(name);
        const s = { name, runs: 0, hw: 0, seconds: 0 };
        const t0 = performance.now();
        await fc.assert(
          fc.asyncProperty(kase.arb, async (p) => {
            const ins = specsOf(p);
            // The hardware variant runs only where it generates other steps than the adapter's own.
            const both = (SLOW || !kase.slowHardware) && s.hw < (kase.hardwareRuns ?? Infinity) &&
              serialize(kernel.gpu(p.params, ins, g.target)) !==
                serialize(kernel.gpu(p.params, ins, hw.target));
            const want = await run(kernel, p, kase.ref === "f32" ? cpu32 : cpu64);
            s.runs++;
            for (const b of both ? [g, hw] : [g]) {
              if (b === hw) s.hw++;
              const got = await run(kernel, p, b);
              if (kase.compare) kase.compare(got.data, want.data, p);
              else {
                const tol = kase.tol!(p);
                got.specs.forEach((o, i) => {
                  const check: Check = o.dtype !== "f32"
                    ? "exact"
                    : typeof tol === "string" || !Array.isArray(tol)
                    ? tol as Check
                    : tol[i];
                  assertCheck(got.data[i], want.data[i], check, `output ${i} on ${b.name}`);
                });
              }
            }
          }),
          { numRuns: Math.min(GPU_RUNS, kase.gpuRuns ?? Infinity), endOnFailure: true },
        );
        s.seconds = (performance.now() - t0) / 1000;
        stats.push(s);
      });
    }
    if (VERBOSE) {
      for (const s of stats) {
        console.log(`${s.name.padEnd(20)} ${s.runs} runs, ${s.hw} hardware, ${s.seconds.toFixed(2)} s`);
      }
    }
  },
});

// ---- zero-size regressions -------------------------------------------------------------------------------------------------

Deno.test({
  name: `registry: zero-size inputs that once broke ${
    ZERO_SIZE_REGRESSIONS.map((b) => b.kernel).join(", ")
  } now agree`,
  ignore: gpu === null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const failures: string[] = [];
    for (const { kernel: name, problem: p, bug } of ZERO_SIZE_REGRESSIONS) {
      const kernel = KERNELS[name] as unknown as Kernel<unknown>, kase = CASES[name] as Case<unknown>;
      const what = `${name} ${p[fc.toStringMethod]()} (${bug})`;
      try {
        const outs = kernel.infer(p.params, specsOf(p));
        for (const [tname, target] of TARGETS) {
          const bad = checkSteps(kernel.gpu(p.params, specsOf(p), target), specsOf(p), outs, target);
          if (bad.length) throw new Error(`${tname} target: ${bad.join("; ")}`);
        }
        const want = await run(kernel, p, kase.ref === "f32" ? cpu32 : cpu64);
        for (const b of [gpu!, hwGpu!]) {
          const got = await run(kernel, p, b);
          got.specs.forEach((_o, i) =>
            assertCheck(got.data[i], want.data[i], "exact", `output ${i} on ${b.name}`)
          );
        }
      } catch (e) {
        failures.push(`${what}: ${(e as Error).message}`);
      }
    }
    if (failures.length) throw new Error(`still failing:\n  ${failures.join("\n  ")}`);
  },
});
