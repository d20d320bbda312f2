/**
 * safetensors codec (pure): an 8-byte little-endian header length, a JSON header of
 * { name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: { string: string } }, then the bytes.
 * F32, F16 and BF16 decode to f32; I32/I64 decode to i32 (I64 only when every value fits).
 */
import { isLeft } from "fp-ts/Either.js";
import * as t from "io-ts";
import { FileFormatError, showValue } from "./errors.ts";
import { type Shape, showShape, size } from "./shape.ts";

const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, F64: 8 } as const;
export type StDtype = keyof typeof DTYPE_BYTES;

const Entry = t.type({
  dtype: t.keyof(DTYPE_BYTES),
  shape: t.array(t.number),
  data_offsets: t.tuple([t.number, t.number]),
});

/** One tensor of a safetensors file (its bytes are a view into the file's buffer). */
export interface StEntry {
  readonly name: string;
  readonly dtype: StDtype;
  readonly shape: Shape;
  readonly bytes: Uint8Array;
}

export interface StFile {
  readonly file: string;
  readonly tensors: ReadonlyMap<string, StEntry>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Parse and validate a whole safetensors file; every problem is a FileFormatError naming the file and tensor. */
export const parseSafetensors = (file: string, buf: Uint8Array): StFile => {
  const fail = (message: string): never => {
    throw new FileFormatError({ file, message: `${file}: ${message}` });
  };
  if (buf.length < 8) fail(`file is ${buf.length} bytes, too short for the 8-byte header length`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = dv.getBigUint64(0, true);
  const n = Number(n64);
  if (n > buf.length - 8) {
    fail(`header length ${n64} runs past the end of the file (${buf.length} bytes): truncated?`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== "object" || Array.isArray(header)) fail("header is not a JSON object");
  const data = buf.subarray(8 + n);
  const tensors = new Map<string, StEntry>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      const m = t.record(t.string, t.string).decode(raw);
      if (isLeft(m)) fail("__metadata__ must map strings to strings");
      else metadata = m.right;
      continue;
    }
    const d = Entry.decode(raw);
    if (isLeft(d)) {
      return fail(
        `tensor ${name}: header entry must be { dtype: F32|F16|BF16|I32|I64|F64, shape: number[], ` +
          `data_offsets: [begin, end] }, got ${showValue(raw, 160)}`,
      );
    }
    const { dtype, shape, data_offsets: [b, e] } = d.right;
    if (shape.some((x) => !Number.isInteger(x) || x < 0)) {
      fail(`tensor ${name}: bad shape ${JSON.stringify(shape)}`);
    }
    const want = size(shape) * DTYPE_BYTES[dtype];
    if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e < b) {
      fail(`tensor ${name}: bad data_offsets [${b}, ${e}]`);
    }
    if (e - b !== want) {
      fail(
        `tensor ${name}: ${dtype}${showShape(shape)} needs ${want} bytes, data_offsets [${b}, ${e}] give ${
          e - b
        }`,
      );
    }
    if (e > data.length) {
      fail(`tensor ${name}: data ends at byte ${e} but the data section has ${data.length}: truncated?`);
    }
    spans.push([b, e, name]);
    tensors.set(name, { name, dtype, shape, bytes: data.subarray(b, e) });
  }
  spans.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) fail(`tensors ${spans[i - 1][2]} and ${spans[i][2]} overlap`);
  }
  return { file, tensors, metadata };
};

const f16ToF32 = (h: number): number => {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
};

/** Decode a float tensor (F32, F16, BF16, F64) to f32. */
export const toF32 = (file: string, e: StEntry): Float32Array => {
  const n = size(e.shape);
  const dv = new DataView(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength);
  const out = new Float32Array(n);
  switch (e.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case "F64":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      return out;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      return out;
    case "BF16": {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return out;
    }
    case "I32":
    case "I64":
      throw new FileFormatError({
        file,
        message: `${file}: tensor ${e.name} is ${e.dtype}, expected a float tensor`,
      });
    default:
      return e.dtype satisfies never;
  }
};

/** Decode an integer tensor (I32, or I64 whose values fit in i32) to i32. */
export const toI32 = (file: string, e: StEntry): Int32Array => {
  const n = size(e.shape);
  const dv = new DataView(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength);
  const out = new Int32Array(n);
  if (e.dtype === "I32") { for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true); }
  else if (e.dtype === "I64") {
    for (let i = 0; i < n; i++) {
      const v = dv.getBigInt64(8 * i, true);
      if (v > 2147483647n || v < -2147483648n) {
        throw new FileFormatError({
          file,
          message: `${file}: tensor ${e.name}[${i}] = ${v} does not fit in i32`,
        });
      }
      out[i] = Number(v);
    }
  } else {throw new FileFormatError({
      file,
      message: `${file}: tensor ${e.name} is ${e.dtype}, expected I32 or I64`,
    });}
  return out;
};

/** A tensor to write: f32 or i32 data with its shape. */
export interface StWrite {
  readonly name: string;
  readonly shape: Shape;
  readonly data: Float32Array | Int32Array;
}

/** Serialize tensors (F32 / I32) in the given order, with optional string metadata. */
export const serializeSafetensors = (
  tensors: readonly StWrite[],
  metadata?: Record<string, string>,
): Uint8Array => {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const x of tensors) {
    if (x.data.length !== size(x.shape)) {
      throw new FileFormatError({
        file: "(writing)",
        message: `tensor ${x.name}: ${x.data.length} values for shape ${showShape(x.shape)}`,
      });
    }
    header[x.name] = {
      dtype: x.data instanceof Int32Array ? "I32" : "F32",
      shape: x.shape,
      data_offsets: [off, off + x.data.byteLength],
    };
    off += x.data.byteLength;
  }
  const raw = new TextEncoder().encode(JSON.stringify(header));
  const hbytes = new Uint8Array(Math.ceil(raw.length / 8) * 8).fill(0x20); // pad with spaces: data 8-aligned
  hbytes.set(raw);
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let at = 8 + hbytes.length;
  for (const x of tensors) {
    const b = new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength);
    const dv = new DataView(out.buffer, at, b.length);
    // little-endian on every platform: write element by element
    if (x.data instanceof Int32Array) {
      for (let i = 0; i < x.data.length; i++) dv.setInt32(4 * i, x.data[i], true);
    } else for (let i = 0; i < x.data.length; i++) dv.setFloat32(4 * i, x.data[i], true);
    at += b.length;
  }
  return out;
};
