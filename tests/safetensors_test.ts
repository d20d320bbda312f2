/** safetensors codec: round trip, every truncation fails typed, F16/BF16 decode; config.json decoding errors. */
import fc from "fast-check";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { parseSafetensors, serializeSafetensors, toF32, toI32 } from "../core/safetensors.ts";
import { decodeHfConfig, encodeHfConfig, tinyConfig } from "../policies/config.ts";
import { randomData } from "./util.ts";

const arbTensors = fc.uniqueArray(
  fc.record({
    name: fc.stringMatching(/^[a-z][a-z0-9_.]{0,20}$/),
    shape: fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 3 }),
    int: fc.boolean(),
    seed: fc.nat(),
  }),
  { selector: (t) => t.name, maxLength: 5 },
).map((ts) =>
  ts.map(({ name, shape, int, seed }) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const f = randomData(n, seed, 100);
    return { name, shape, data: int ? Int32Array.from(f, Math.round) : f };
  })
);

Deno.test("safetensors round trip preserves names, shapes, dtypes, values and metadata", () => {
  fc.assert(fc.property(arbTensors, (ts) => {
    const bytes = serializeSafetensors(ts, { format: "pt" });
    const f = parseSafetensors("x.safetensors", bytes);
    if (f.metadata.format !== "pt" || f.tensors.size !== ts.length) throw new Error("header");
    for (const t of ts) {
      const e = f.tensors.get(t.name)!;
      if (e.shape.join() !== t.shape.join()) throw new Error(`shape of ${t.name}`);
      const back = t.data instanceof Int32Array ? toI32("x", e) : toF32("x", e);
      if (back.some((v, i) => v !== t.data[i])) throw new Error(`values of ${t.name}`);
    }
  }));
});

Deno.test("a safetensors file cut at any byte fails with FileFormatError naming the file", () => {
  const ts = [{ name: "a.weight", shape: [3, 4], data: randomData(12, 1) }, {
    name: "b",
    shape: [5],
    data: Int32Array.from([1, 2, 3, 4, 5]),
  }];
  const bytes = serializeSafetensors(ts);
  for (let cut = 0; cut < bytes.length; cut++) {
    try {
      parseSafetensors("model.safetensors", bytes.subarray(0, cut));
      throw new Error(`cut at ${cut} parsed`);
    } catch (e) {
      if (!(e instanceof FileFormatError) || !e.message.startsWith("model.safetensors:")) {
        throw new Error(`cut at ${cut}: ${e}`);
      }
    }
  }
});

Deno.test("corrupt headers name the tensor and what was expected", () => {
  const enc = (h: unknown, data = 0) => {
    const j = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(8 + j.length + data);
    new DataView(out.buffer).setBigUint64(0, BigInt(j.length), true);
    out.set(j, 8);
    return out;
  };
  const cases: [unknown, number, RegExp][] = [
    [
      { w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 12] } },
      16,
      /tensor w: F32\[2,2\] needs 16 bytes/,
    ],
    [{ w: { dtype: "Q4", shape: [2], data_offsets: [0, 8] } }, 8, /tensor w: header entry must be/],
    [
      {
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      },
      8,
      /overlap/,
    ],
    [[1, 2], 0, /not a JSON object/],
  ];
  for (const [h, n, re] of cases) {
    try {
      parseSafetensors("m.safetensors", enc(h, n));
      throw new Error(`${JSON.stringify(h)} parsed`);
    } catch (e) {
      if (!(e instanceof FileFormatError) || !re.test(e.message)) {
        throw new Error(`${JSON.stringify(h)}: ${e}`);
      }
    }
  }
});

Deno.test("F16 and BF16 decode to f32", () => {
  const h = {
    a: { dtype: "F16", shape: [4], data_offsets: [0, 8] },
    b: { dtype: "BF16", shape: [2], data_offsets: [8, 12] },
  };
  const j = new TextEncoder().encode(JSON.stringify(h));
  const buf = new Uint8Array(8 + j.length + 12);
  const dv = new DataView(buf.buffer);
  dv.setBigUint64(0, BigInt(j.length), true);
  buf.set(j, 8);
  const at = 8 + j.length;
  [0x3c00, 0xc000, 0x3555, 0x7c00].forEach((v, i) => dv.setUint16(at + 2 * i, v, true)); // 1, -2, 0.333, inf
  [0x3f80, 0xc0a0].forEach((v, i) => dv.setUint16(at + 8 + 2 * i, v, true)); // 1, -5
  const f = parseSafetensors("h.safetensors", buf);
  const a = toF32("h", f.tensors.get("a")!), b = toF32("h", f.tensors.get("b")!);
  if (a[0] !== 1 || a[1] !== -2 || Math.abs(a[2] - 0.33325195) > 1e-7 || a[3] !== Infinity) {
    throw new Error(`${a}`);
  }
  if (b[0] !== 1 || b[1] !== -5) throw new Error(`${b}`);
});

Deno.test("config.json: round trip, and missing or bad fields are named", () => {
  const c = tinyConfig();
  const back = decodeHfConfig("config.json", encodeHfConfig(c));
  if (JSON.stringify(back) !== JSON.stringify(c)) {
    throw new Error(`${JSON.stringify(back)} != ${JSON.stringify(c)}`);
  }
  const base = encodeHfConfig(c);
  const cases: [Record<string, unknown>, string][] = [
    [{ ...base, hidden_size: undefined }, "hidden_size"],
    [{ ...base, architectures: ["GPT2LMHeadModel"] }, "architectures"],
    [{ ...base, num_key_value_heads: 3 }, "num_key_value_heads"],
    [{ ...base, vocab_size: -1 }, "vocab_size"],
    [{ ...base, rms_norm_eps: "tiny" }, "rms_norm_eps"],
  ];
  for (const [json, field] of cases) {
    try {
      decodeHfConfig("config.json", json);
      throw new Error(`${field}: decoded`);
    } catch (e) {
      if (!(e instanceof ConfigError) || e.field !== field || !e.message.includes(`config.json: ${field}`)) {
        throw new Error(`${field}: ${e}`);
      }
    }
  }
});
