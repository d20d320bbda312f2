/**
 * Pure test helpers: CPU backends, closeness checks, random data, arbitraries, error and equality checks,
 * temporary folders. Nothing here opens a device; the GPU helpers are in tests/gpu_util.ts.
 */
import fc from "fast-check";
import { ConfigError, ShapeError } from "../core/errors.ts";
import { uniforms } from "../core/rng.ts";
import { CpuBackend } from "../engine/cpu.ts";

export const cpu64 = new CpuBackend("f64");
export const cpu32 = new CpuBackend("f32");

/** Assert |a - b| <= atol + rtol |b| elementwise, with a message naming the first bad index. */
export const assertClose = (
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol: number; rtol: number },
  what = "value",
): void => {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length}, expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    const ok = Math.abs(a - e) <= tol.atol + tol.rtol * Math.abs(e) || (Number.isNaN(a) && Number.isNaN(e)) ||
      (a === e);
    if (!ok) throw new Error(`${what}[${i}] = ${a}, expected ${e} (atol ${tol.atol}, rtol ${tol.rtol})`);
  }
};

/**
 * How a closeness bound scales with the expected value `b`: "mixed" is |a - b| <= tol (1 + |b|) (`tol` relative
 * and `tol` absolute at once, for values near zero), "relative" is |a - b| <= tol |b|, "absolute" is
 * |a - b| <= tol. NaN is never close.
 */
export type Scale = "mixed" | "relative" | "absolute";

const bound = (b: number, tol: number, scale: Scale): number =>
  scale === "mixed" ? tol * (1 + Math.abs(b)) : scale === "relative" ? tol * Math.abs(b) : tol;

/**
 * Scalar and elementwise closeness checks at tolerance `tol` (overridable per call) on `scale`, throwing with the
 * values and the difference. `close(a, b, what)` checks one value; `closeAll` checks lengths, then each element.
 */
export const closeness = (tol: number, scale: Scale = "mixed"): {
  close: (a: number, b: number, what: string, t?: number) => void;
  closeAll: (a: ArrayLike<number>, b: ArrayLike<number>, what: string, t?: number) => void;
} => {
  const close = (a: number, b: number, what: string, t = tol): void => {
    if (!(Math.abs(a - b) <= bound(b, t, scale))) {
      throw new Error(`${what}: ${a} vs ${b} (diff ${Math.abs(a - b)}, ${scale} tolerance ${t})`);
    }
  };
  const closeAll = (a: ArrayLike<number>, b: ArrayLike<number>, what: string, t = tol): void => {
    if (a.length !== b.length) throw new Error(`${what}: length ${a.length} vs ${b.length}`);
    for (let i = 0; i < b.length; i++) close(a[i], b[i], `${what}[${i}]`, t);
  };
  return { close, closeAll };
};

/** Random f32-representable data in [-range, range). */
export const randomData = (n: number, seed: number, range = 1): Float32Array => {
  const u = uniforms(seed);
  return Float32Array.from({ length: n }, () => u() * range);
};

/** A dimension extent biased toward awkward sizes: 1, primes, tile sizes plus or minus one. */
export const awkwardDim = (max: number): fc.Arbitrary<number> =>
  fc.oneof(
    fc.constantFrom(...[1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 65].filter((d) => d <= max)),
    fc.integer({ min: 1, max }),
  );

/** Broadcast operand shapes of an output shape `out`: leading axes dropped, some set to 1. */
export const broadcastOperand = (out: readonly number[]): fc.Arbitrary<number[]> =>
  fc.tuple(
    fc.integer({ min: 0, max: out.length }),
    fc.array(fc.boolean(), { minLength: out.length, maxLength: out.length }),
  ).map(([drop, ones]) => out.map((d, i) => (ones[i] ? 1 : d)).slice(drop));

/**
 * Batch shapes of the two operands of a batched matmul that broadcast: a common batch of rank 0-2 (extents 1-3),
 * each operand's broadcast from it.
 */
export const batchPair: fc.Arbitrary<[number[], number[]]> = fc.array(fc.integer({ min: 1, max: 3 }), {
  maxLength: 2,
})
  .chain((batch) => fc.tuple(broadcastOperand(batch), broadcastOperand(batch)));

/** Assert that `f` throws a ShapeError whose message matches `re`. */
export const throwsShape = (f: () => unknown, re: RegExp): void => {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ShapeError) || !re.test(err.message)) {
    throw new Error(`expected ShapeError ${re}, got ${err}`);
  }
};

/** Assert that `got` and `want` have the same JSON text. */
export const eq = <T>(got: T, want: T, what: string): void => {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  }
};

/** Run `f`; it must throw (or reject with) an instance of `cls` whose message contains every string of `parts`. */
export const throwsWith = async <E extends Error>(
  f: () => unknown,
  cls: abstract new (...a: never[]) => E,
  parts: readonly string[],
): Promise<E> => {
  try {
    await f();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new Error(`expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${e}`);
    }
    for (const p of parts) if (!e.message.includes(p)) throw new Error(`message "${e.message}" lacks "${p}"`);
    return e;
  }
  throw new Error(`expected ${cls.name} mentioning ${parts.join(", ")}, nothing thrown`);
};

/** Assert that `f(x)` throws a ConfigError on flag `field` for every `x` of `bad`. */
export const refusesOn = (field: string, bad: readonly string[], f: (x: string) => unknown): void => {
  for (const x of bad) {
    try {
      f(x);
    } catch (e) {
      if (e instanceof ConfigError && e.field === field) continue;
      throw e;
    }
    throw new Error(`${JSON.stringify(x)} was accepted`);
  }
};

/** Assert that `text` contains every string of `parts`. */
export const includesAll = (text: string, parts: readonly string[], what = "text"): void => {
  for (const p of parts) {
    if (!text.includes(p)) throw new Error(`${what} lacks ${JSON.stringify(p)}:\n${text}`);
  }
};

/** Run `fn` in a new temporary folder (named with `prefix`), removed afterwards whatever happens. */
export const withTempDir = async <A>(prefix: string, fn: (dir: string) => Promise<A>): Promise<A> => {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
};

/** A Deno.test without the op and resource sanitizers (for tests that leave workers or child processes behind). */
export const unsanitizedTest = (name: string, fn: () => Promise<void>): void =>
  Deno.test({ name, sanitizeResources: false, sanitizeOps: false, fn });
