/** Philox4x32-10 in WGSL (bit-identical to core/rng.ts) and a kernel that evaluates it, to prove the match. */
import { ShapeError } from "../core/errors.ts";
import { philox4x32 } from "../core/rng.ts";
import { showShape, size } from "../core/shape.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, flatPass } from "../engine/wgsl.ts";

/**
 * WGSL functions: `philoxMulhi(a, b)` (high word of a*b via 16-bit halves), `philox4x32(ctr, key)` and
 * `uniform01(bits)` = f32(bits >> 8) * 2^-24 (exact, so it equals the host's value). Paste into a shader.
 */
export const PHILOX_WGSL = `
fn philoxMulhi(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}
fn philox4x32(ctr: vec4u, key: vec2u) -> vec4u {
  var c = ctr;
  var k = key;
  for (var r = 0u; r < 10u; r++) {
    if (r > 0u) { k = k + vec2u(0x9E3779B9u, 0xBB67AE85u); }
    let hi0 = philoxMulhi(0xD2511F53u, c.x); let lo0 = 0xD2511F53u * c.x;
    let hi1 = philoxMulhi(0xCD9E8D57u, c.z); let lo1 = 0xCD9E8D57u * c.z;
    c = vec4u(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
  }
  return c;
}
fn uniform01(bits: u32) -> f32 {
  return f32(bits >> 8u) * 5.9604644775390625e-8;
}
`;

const WG = 64;

/** Rows of (counter0..3, key0, key1) in, rows of the 4 Philox output words out. */
export const philoxKernel: Kernel<Record<string, never>> = defineKernel<Record<string, never>>({
  name: "philox",
  infer: (_p, [x]) => {
    if (x.dtype !== "u32" || x.shape.length !== 2 || x.shape[1] !== 6) {
      throw new ShapeError({
        op: "philox",
        message: `philox: input has shape ${showShape(x.shape)} dtype ${x.dtype}; expected u32 [R,6]`,
      });
    }
    return [{ shape: [x.shape[0], 4], dtype: "u32" }];
  },
  cpu: (_p, [{ data: x }], [{ data: y }]) => {
    for (let r = 0; r < x.length / 6; r++) {
      const o = philox4x32([x[6 * r + 4], x[6 * r + 5]], [
        x[6 * r],
        x[6 * r + 1],
        x[6 * r + 2],
        x[6 * r + 3],
      ]);
      for (let j = 0; j < 4; j++) y[4 * r + j] = o[j];
    }
  },
  gpu: (_p, [x], target) => {
    const b = bind({ input: 0, name: "inp", type: "u32" }, { output: 0, name: "out", type: "u32" });
    const body =
      `  let o = philox4x32(vec4u(inp[6u * i], inp[6u * i + 1u], inp[6u * i + 2u], inp[6u * i + 3u]),
                     vec2u(inp[6u * i + 4u], inp[6u * i + 5u]));
  out[4u * i] = o.x; out[4u * i + 1u] = o.y; out[4u * i + 2u] = o.z; out[4u * i + 3u] = o.w;`;
    const withPhilox = { decls: `${b.decls}\n${PHILOX_WGSL}`, bindings: b.bindings };
    return [flatPass(withPhilox, size(x.shape) / 6, WG, target, body)];
  },
});

/** Philox4x32-10 of each row (ctr0, ctr1, ctr2, ctr3, key0, key1) of a u32 [R,6] tensor: u32 [R,4]. */
export const philoxBits = (x: Tensor): Tensor => apply1(philoxKernel, {}, [x]);
