/**
 * The fuzzer's randomness and mutations: a seeded generator per case, byte mutations (flips, truncation,
 * insertions, NaN patterns), JSON mutations (wrong types, huge and negative numbers, deleted, renamed,
 * duplicated and prototype-named keys, deep nesting, path strings) and safetensors header mutations (offsets,
 * dtypes, shapes, the header length).
 */

/** A small seeded generator (mulberry32 over a splitmix32-mixed seed): case `index` of run `seed`. */
export class Rng {
  private s: number;
  constructor(seed: number, index: number) {
    let z = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index >>> 0, 0x85ebca77) ^ 0x27d4eb2f) >>> 0;
    z = Math.imul(z ^ (z >>> 16), 0x7feb352d) >>> 0;
    z = Math.imul(z ^ (z >>> 15), 0x846ca68b) >>> 0;
    this.s = (z ^ (z >>> 16)) >>> 0;
  }
  /** A uniform 32-bit integer. */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 2 ** 32;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : Math.floor(this.float() * n);
  }
  /** Uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  /** An index by weight. */
  weighted(ws: readonly number[]): number {
    let r = this.float() * ws.reduce((a, b) => a + b, 0);
    for (let i = 0; i < ws.length; i++) if ((r -= ws[i]) < 0) return i;
    return ws.length - 1;
  }
}

// ---- bytes -----------------------------------------------------------------------------------------------

const F32_BAD = [
  [0x00, 0x00, 0xc0, 0x7f], // NaN
  [0x00, 0x00, 0x80, 0x7f], // +Inf
  [0x00, 0x00, 0x80, 0xff], // -Inf
];

/** One byte-level mutation of `b` (a new array), and its name. */
export const mutateBytes = (rng: Rng, b: Uint8Array): { bytes: Uint8Array; what: string } => {
  const n = b.length;
  const at = () => rng.int(n + 1);
  switch (rng.int(10)) {
    case 0: {
      const out = b.slice();
      const k = rng.range(1, 8);
      for (let i = 0; i < k && n; i++) out[rng.int(n)] ^= 1 << rng.int(8);
      return { bytes: out, what: `flip ${k} bits` };
    }
    case 1: {
      const len = rng.chance(0.3) ? rng.int(Math.min(n, 16)) : at();
      return { bytes: b.slice(0, len), what: `truncate to ${len}` };
    }
    case 2: {
      const out = b.slice(), i = at(), len = rng.range(1, 32), v = rng.pick([0x00, 0xff, -1]);
      for (let j = i; j < Math.min(n, i + len); j++) out[j] = v < 0 ? rng.int(256) : v;
      return { bytes: out, what: `overwrite ${len} bytes at ${i}` };
    }
    case 3: {
      const i = at(), ins = Uint8Array.from({ length: rng.range(1, 64) }, () => rng.int(256));
      return {
        bytes: concat(b.subarray(0, i), ins, b.subarray(i)),
        what: `insert ${ins.length} bytes at ${i}`,
      };
    }
    case 4: {
      const i = at(), len = rng.range(1, 64);
      return {
        bytes: concat(b.subarray(0, i), b.subarray(Math.min(n, i + len))),
        what: `delete ${len} at ${i}`,
      };
    }
    case 5: {
      const i = at(), len = rng.range(1, 256);
      return { bytes: concat(b.subarray(0, i + len), b.subarray(i)), what: `duplicate ${len} at ${i}` };
    }
    case 6: {
      const len = rng.pick([0, 1, 7, 8, 9, 100, 4096]);
      return { bytes: Uint8Array.from({ length: len }, () => rng.int(256)), what: `random ${len} bytes` };
    }
    case 7:
      return { bytes: concat(Uint8Array.from([0xef, 0xbb, 0xbf]), b), what: "BOM prefix" };
    case 8: {
      // A NaN or infinity in the last quarter (the data section of a safetensors file).
      const out = b.slice();
      if (n >= 8) {
        const i = n - 4 - 4 * rng.int(Math.max(1, Math.floor(n / 16)));
        out.set(rng.pick(F32_BAD), Math.max(0, i - (i % 4)));
      }
      return { bytes: out, what: "NaN/Inf pattern" };
    }
    default: {
      const out = b.slice();
      if (n) {
        out[rng.int(n)] = rng.pick([0x00, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x80, 0xc0, 0xff]);
      }
      return { bytes: out, what: "one structural byte" };
    }
  }
};

export const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

// ---- JSON ------------------------------------------------------------------------------------------------

export const PROTO_KEYS = ["__proto__", "constructor", "toString", "prototype", "hasOwnProperty", "valueOf"];

/** An array nested `depth` deep (built without recursion). */
export const deepValue = (depth: number, kind: "array" | "object"): unknown => {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = kind === "array" ? [v] : { kind: "product", factors: [v] };
  return v;
};

const STRINGS = [
  "",
  "x",
  "../../etc/hostname",
  "/etc/hostname",
  "..",
  "sub/../../x",
  "C:\\Windows\\x",
  "\u0000",
  "NaN",
  "-1",
  "1e999",
  "silu",
  "gelu",
  "llama3",
  "linear",
  "final",
  "layer",
  "F32",
  "I64",
  "U8",
  "\ud800",
  "😀",
  "model.safetensors",
  "model-00001-of-00002.safetensors",
];

/** A value chosen to break a decoder: a wrong type, an extreme number, a path, deep nesting. */
export const weird = (rng: Rng): unknown => {
  switch (rng.int(6)) {
    case 0:
      return rng.pick([null, true, false, [], {}, [1, 2], { kind: "final" }, [[[]]], [null]]);
    case 1:
      return rng.pick([0, -0, -1, 1, 0.5, -3, 2, 3, 7, 64, 2 ** 31, 2 ** 32, 2 ** 53 + 2, -(2 ** 53)]);
    case 2:
      return rng.pick([1e308, -1e308, 1e-320, 5e-324, 1.7976931348623157e308, 1e21, 123456789012]);
    case 3:
      return rng.pick(STRINGS);
    case 4:
      return rng.chance(0.5) ? "a".repeat(rng.pick([100, 10_000])) : '\u001b[31m\n\t"';
    default:
      return deepValue(rng.pick([3, 50, 500, 20_000]), rng.pick(["array", "object"] as const));
  }
};

type Slot = { parent: Record<string, unknown> | unknown[]; key: string | number };

/** Every slot (object field or array element) of a JSON tree, breadth first, at most `max`. */
const slots = (root: unknown, max = 4000): Slot[] => {
  const out: Slot[] = [];
  const queue: unknown[] = [root];
  while (queue.length && out.length < max) {
    const v = queue.shift();
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        out.push({ parent: v, key: i });
        queue.push(x);
      });
    } else if (v && typeof v === "object") {
      for (const k of Object.keys(v)) {
        out.push({ parent: v as Record<string, unknown>, key: k });
        queue.push((v as Record<string, unknown>)[k]);
      }
    }
  }
  return out;
};

const objects = (root: unknown): Record<string, unknown>[] => {
  const os: Record<string, unknown>[] = [];
  if (root && typeof root === "object" && !Array.isArray(root)) os.push(root as Record<string, unknown>);
  for (const s of slots(root)) {
    const v = (s.parent as Record<string | number, unknown>)[s.key];
    if (v && typeof v === "object" && !Array.isArray(v)) os.push(v as Record<string, unknown>);
  }
  return os;
};

/** Define an own enumerable field, even `__proto__` (which a plain assignment would turn into the prototype). */
export const defineField = (o: Record<string, unknown>, k: string, v: unknown): void => {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
};

const tweakNumber = (rng: Rng, x: number): number =>
  rng.pick([
    -x,
    x + 1,
    x - 1,
    x * 2 ** rng.range(1, 60),
    x / 3,
    0,
    -1,
    x + 0.5,
    Number.MAX_SAFE_INTEGER,
    1e308,
    2 ** 32 + x,
  ]);

/** One JSON mutation applied in place to a copy of `root`; returns the new root and what was done. */
export const mutateJsonOnce = (rng: Rng, root: unknown): { json: unknown; what: string } => {
  const ss = slots(root);
  const op = rng.int(10);
  if (ss.length === 0 || op === 0) {
    return rng.chance(0.5)
      ? { json: weird(rng), what: "root replaced" }
      : { json: [root], what: "root wrapped" };
  }
  const s = rng.pick(ss);
  const p = s.parent as Record<string | number, unknown>;
  const v = p[s.key];
  const name = String(s.key);
  switch (op) {
    case 1:
      p[s.key] = weird(rng);
      return { json: root, what: `${name} := weird` };
    case 2:
      if (typeof v === "number") {
        p[s.key] = tweakNumber(rng, v);
        return { json: root, what: `${name} number tweak` };
      }
      p[s.key] = typeof v === "string" ? rng.pick(STRINGS) : rng.pick([0, -1, "x", null]);
      return { json: root, what: `${name} retyped` };
    case 3:
      if (Array.isArray(p)) p.splice(s.key as number, 1);
      else delete p[s.key];
      return { json: root, what: `${name} deleted` };
    case 4: {
      const o = rng.pick(objects(root).length ? objects(root) : [{}]);
      defineField(o, rng.pick(PROTO_KEYS), rng.chance(0.5) ? weird(rng) : { kind: "int", values: [] });
      return { json: root, what: "prototype key added" };
    }
    case 5:
      if (!Array.isArray(p)) {
        const k2 = rng.pick([`${name}_`, name.toUpperCase(), rng.pick(PROTO_KEYS), ""]);
        delete p[s.key];
        defineField(p as Record<string, unknown>, k2, v);
        return { json: root, what: `${name} renamed ${k2}` };
      }
      p.push(v);
      return { json: root, what: "array element duplicated" };
    case 6:
      p[s.key] = rng.chance(0.5) ? [v] : { value: v };
      return { json: root, what: `${name} wrapped` };
    case 7:
      if (Array.isArray(v)) {
        p[s.key] = rng.pick([[], [...v, ...v], v.slice(1), v.slice().reverse(), [v[0]]]);
        return { json: root, what: `${name} array reshaped` };
      }
      p[s.key] = deepValue(rng.pick([10, 200, 5000]), rng.pick(["array", "object"] as const));
      return { json: root, what: `${name} nested deep` };
    case 8: {
      const o = rng.pick(objects(root).length ? objects(root) : [{}]);
      defineField(
        o,
        rng.pick(["extra", "rope_scaling", "weight_map", "kind", "terms", "model", "__metadata__"]),
        weird(rng),
      );
      return { json: root, what: "field added" };
    }
    default:
      if (typeof v === "string") {
        p[s.key] = rng.pick([v + v, v.slice(1), v.toUpperCase(), `../${v}`, `/${v}`, v + "\u0000"]);
        return { json: root, what: `${name} string tweak` };
      }
      p[s.key] = null;
      return { json: root, what: `${name} := null` };
  }
};

/** 1-3 JSON mutations of a deep copy of `root`. */
export const mutateJson = (rng: Rng, root: unknown): { json: unknown; what: string[] } => {
  let json: unknown;
  try {
    json = structuredClone(root);
  } catch {
    return { json: weird(rng), what: ["root too deep to copy: replaced"] };
  }
  const what: string[] = [];
  for (let i = rng.range(1, 3); i > 0; i--) {
    const r = mutateJsonOnce(rng, json);
    json = r.json;
    what.push(r.what);
  }
  return { json, what };
};

/** JSON text with a duplicated key (`"k": x, ..., "k": y`): the text-level mutation JSON.stringify cannot make. */
export const duplicateKey = (rng: Rng, text: string): string => {
  const keys = [...text.matchAll(/"([^"\\]{1,40})":/g)];
  if (!keys.length) return text;
  const m = rng.pick(keys);
  return `${text.slice(0, m.index)}"${m[1]}":${JSON.stringify(weird(rng)) ?? "null"},${text.slice(m.index)}`;
};

/** The bytes of a mutated JSON document: tree mutations, sometimes a duplicated key or byte damage on top. */
export const mutatedJsonBytes = (rng: Rng, root: unknown): { bytes: Uint8Array; what: string[] } => {
  const r = rng.chance(0.85) ? mutateJson(rng, root) : { json: root, what: [] as string[] };
  let text: string;
  try {
    text = JSON.stringify(r.json) ?? "null";
  } catch {
    text = "[".repeat(100_000); // too deep to stringify: send the unclosed nesting itself
    r.what.push("unclosed deep nesting");
  }
  if (rng.chance(0.15)) {
    text = duplicateKey(rng, text);
    r.what.push("duplicate key");
  }
  let bytes: Uint8Array = new TextEncoder().encode(text);
  if (rng.chance(0.15)) {
    const m = mutateBytes(rng, bytes);
    bytes = m.bytes;
    r.what.push(m.what);
  }
  return { bytes, what: r.what };
};

// ---- safetensors -----------------------------------------------------------------------------------------

/** Split a safetensors file into its header object and data section (the file is a valid one). */
export const splitSafetensors = (b: Uint8Array): { header: Record<string, unknown>; data: Uint8Array } => {
  const n = Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(0, true));
  return {
    header: JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n))),
    data: b.subarray(8 + n),
  };
};

/** Join a header (as text) and a data section, with the header length `len` (default: the true length). */
export const joinSafetensors = (headerText: string, data: Uint8Array, len?: bigint): Uint8Array => {
  const h = new TextEncoder().encode(headerText);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, len ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
};

/** A mutated safetensors file: header-level (entries, offsets, dtypes, shapes, length) or byte-level. */
export const mutateSafetensors = (rng: Rng, file: Uint8Array): { bytes: Uint8Array; what: string[] } => {
  const r = rng.int(10);
  if (r < 3) {
    const m = mutateBytes(rng, file);
    return { bytes: m.bytes, what: [m.what] };
  }
  let split: ReturnType<typeof splitSafetensors>;
  try {
    split = splitSafetensors(file);
  } catch {
    // Already damaged (a second mutation of the same file): bytes only.
    const m = mutateBytes(rng, file);
    return { bytes: m.bytes, what: [m.what] };
  }
  const { header, data } = split;
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const name = rng.pick(names);
  const e = header[name] as { dtype: unknown; shape: unknown; data_offsets: unknown } | undefined;
  if (!e || typeof e !== "object" || !Array.isArray(e.shape) || !Array.isArray(e.data_offsets)) {
    const m = mutateBytes(rng, file);
    return { bytes: m.bytes, what: [m.what] };
  }
  const what: string[] = [];
  let body = data;
  let len: bigint | undefined;
  switch (r) {
    case 3: {
      const [b, en] = e.data_offsets as [number, number];
      e.data_offsets = rng.pick([
        [b + 1, en + 1],
        [b, en - 1],
        [en, b],
        [-4, en],
        [b, 2 ** 53],
        [b, en + 4],
        [0, en - b],
        [b, b],
        [b + 0.5, en],
        [b],
        [String(b), en],
      ]);
      what.push(`${name}.data_offsets`);
      break;
    }
    case 4:
      e.dtype = rng.pick(["F32", "F16", "BF16", "I32", "I64", "F64", "U8", "BOOL", "f32", "", 3, null]);
      what.push(`${name}.dtype = ${e.dtype}`);
      break;
    case 5: {
      const s = e.shape as number[];
      e.shape = rng.pick([
        [...s, 1],
        s.slice(1),
        s.map((x) => x * 2),
        [s.reduce((a, x) => a * x, 1)],
        [-1, ...s.slice(1)],
        [2 ** 31, 2 ** 31],
        [1e308],
        [0.5],
        ["3"],
        [],
        s.slice().reverse(),
      ]);
      what.push(`${name}.shape`);
      break;
    }
    case 6:
      len = rng.pick([0n, 1n, 7n, 2n ** 64n - 1n, 2n ** 53n, BigInt(file.length), -1n & (2n ** 64n - 1n)]);
      what.push(`header length ${len}`);
      break;
    case 7:
      if (rng.chance(0.5)) {
        delete header[name];
        what.push(`${name} deleted`);
      } else {
        defineField(header, rng.chance(0.5) ? rng.pick(PROTO_KEYS) : `${name}.copy`, e);
        what.push("entry added");
      }
      break;
    case 8:
      body = rng.chance(0.5)
        ? data.subarray(0, rng.int(data.length))
        : concat(data, new Uint8Array(rng.range(1, 9)));
      what.push(`data section ${body.length} bytes`);
      break;
    default: {
      const m = mutateJson(rng, header);
      let text: string;
      try {
        text = JSON.stringify(m.json) ?? "null";
      } catch {
        text = "{}";
      }
      return { bytes: joinSafetensors(rng.chance(0.2) ? duplicateKey(rng, text) : text, body), what: m.what };
    }
  }
  let text: string;
  try {
    text = JSON.stringify(header);
  } catch {
    text = "{}"; // an earlier mutation nested it too deeply to write back
    what.push("header too deep: {}");
  }
  return { bytes: joinSafetensors(text, body, len), what };
};
