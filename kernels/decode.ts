/**
 * Decoding kernels: read one column of a (B, T, d) activation and append sampled tokens to a (B, T) id buffer,
 * both with the column in a uniform so a whole generation loop compiles each shader once and reads nothing back.
 */
import { ShapeError } from "../core/errors.ts";
import { showShape } from "../core/shape.ts";
import { defineKernel, type Kernel } from "../engine/kernel.ts";
import { apply, apply1 } from "../engine/apply.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bind, flatPass } from "../engine/wgsl.ts";

export interface ColumnParams {
  /** The column (time index) t. */
  readonly t: number;
}

/** out[b, :] = x[b, t, :] for x (B, T, d), or out[b] = x[b, t] for x (B, T); f32 or i32. */
export const columnKernel: Kernel<ColumnParams> = defineKernel<ColumnParams>({
  name: "column",
  infer: ({ t }, [x]) => {
    const rank = x.shape.length;
    if (
      (rank !== 2 && rank !== 3) || (x.dtype !== "f32" && x.dtype !== "i32") ||
      !(Number.isInteger(t) && t >= 0 && t < x.shape[1])
    ) {
      throw new ShapeError({
        op: "column",
        message: `column: need f32 or i32 (B, T, d) or (B, T) and 0 <= t < T; got ${
          showShape(x.shape)
        } (${x.dtype}), t = ${t}`,
      });
    }
    return [{ shape: rank === 3 ? [x.shape[0], x.shape[2]] : [x.shape[0]], dtype: x.dtype }];
  },
  cpu: ({ t }, [x], [y]) => {
    const [B, T, d = 1] = x.shape;
    for (let b = 0; b < B; b++) y.data.set(x.data.subarray((b * T + t) * d, (b * T + t + 1) * d), b * d);
  },
  gpu: ({ t }, [x], target) => {
    const [B, T, d = 1] = x.shape;
    const b = bind(
      { input: 0, name: "x", type: x.dtype },
      { output: 0, name: "y", type: x.dtype },
      { uniform: new Uint32Array([t, 0, 0, 0]), name: "u", type: "vec4u" },
    );
    // One invocation per output element, the grid folded into y past the device limit.
    return [flatPass(
      b,
      B * d,
      64,
      target,
      `  let b = i / ${d}u;
  y[i] = x[(b * ${T}u + u.x) * ${d}u + i % ${d}u];`,
    )];
  },
});

/** Row t of every sequence: (B, T, d) -> (B, d), or (B, T) -> (B). */
export const column = (x: Tensor, t: number): Tensor => apply1(columnKernel, { t }, [x]);

export interface AppendParams {
  readonly t: number;
  readonly eos: number;
  readonly pad: number;
  /** A second id that also ends a row (e.g. the task's stop character); default: eos. */
  readonly stop?: number;
  /**
   * More ids that end a row (Qwen3's generation_config.json has two eos ids, Llama 3's three): with eos and
   * stop at most MAX_STOP_IDS distinct ids in all.
   */
  readonly stops?: readonly number[];
  /**
   * Most tokens a row writes after its prompt: the row is done once it has written this many (cut, without a
   * stop id), so rows with short prompts are not given more room than the rest. Default: no limit per row.
   */
  readonly maxNew?: number;
}

/** The most distinct ids that end a row (eos, stop and `stops` together): two vec4 slots of the uniform. */
export const MAX_STOP_IDS = 8;

/** The distinct ids that end a row, eos first; more than MAX_STOP_IDS is a RangeError. */
export const stopSet = (p: Pick<AppendParams, "eos" | "stop" | "stops">): number[] => {
  const ids = [...new Set([p.eos, ...(p.stop === undefined ? [] : [p.stop]), ...(p.stops ?? [])])];
  if (ids.length > MAX_STOP_IDS) {
    throw new RangeError(`appendToken: ${ids.length} stop ids (${ids.join(", ")}); at most ${MAX_STOP_IDS}`);
  }
  return ids;
};

/**
 * Write sampled ids (B) into column t of ids (B, T), in place, where the prompt (promptLen (B)) has ended:
 * a row already done (it emitted a stop id earlier) gets `pad`; a row that samples eos, `stop` or any of
 * `stops` becomes done, and so does a row that has written `maxNew` tokens. The stop ids live in the uniform (eight slots, unused ones repeat eos), so one shader
 * serves every stop set.
 * Inputs: [ids (inout), done i32 (B) (inout), sampled i32 (B), promptLen i32 (B)].
 */
export const appendKernel: Kernel<AppendParams> = defineKernel<AppendParams>({
  name: "appendToken",
  infer: (p, [ids, done, sampled, plen]) => {
    const { t } = p;
    const B = ids.shape[0];
    const ok = ids.shape.length === 2 && ids.dtype === "i32" && t >= 0 && t < ids.shape[1] &&
      [done, sampled, plen].every((x) => x.dtype === "i32" && x.shape.length === 1 && x.shape[0] === B);
    if (!ok) {
      throw new ShapeError({
        op: "appendToken",
        message: `appendToken: need ids i32 (B, T), done/sampled/promptLen i32 (B), 0 <= t < T; got ${
          showShape(ids.shape)
        }, ${showShape(done.shape)}, ${showShape(sampled.shape)}, ${showShape(plen.shape)}, t = ${t}`,
      });
    }
    stopSet(p); // more than MAX_STOP_IDS: a RangeError before anything runs
    return [{ shape: ids.shape, dtype: "i32", alias: 0 }, { shape: done.shape, dtype: "i32", alias: 1 }];
  },
  cpu: (p, [_i, _d, sampled, plen], [ids, done]) => {
    const { t, pad } = p;
    const stops = new Set(stopSet(p));
    const cap = p.maxNew ?? Infinity;
    const [B, T] = ids.shape;
    for (let b = 0; b < B; b++) {
      if (t < plen.data[b]) continue;
      if (done.data[b]) ids.data[b * T + t] = pad;
      else {
        ids.data[b * T + t] = sampled.data[b];
        if (stops.has(sampled.data[b]) || t - plen.data[b] + 1 >= cap) done.data[b] = 1;
      }
    }
  },
  gpu: (p, [ids]) => {
    const { t, pad } = p;
    const [B, T] = ids.shape;
    const set = stopSet(p);
    const slots = Array.from({ length: MAX_STOP_IDS }, (_, i) => set[i] ?? set[0]);
    const b = bind(
      { input: 0, name: "ids", type: "i32", access: "read_write" },
      { input: 1, name: "done", type: "i32", access: "read_write" },
      { input: 2, name: "sampled", type: "i32" },
      { input: 3, name: "plen", type: "i32" },
      {
        // maxNew 0 in the uniform: no limit per row.
        uniform: new Uint32Array(new Int32Array([t, pad, p.maxNew ?? 0, 0, ...slots]).buffer),
        name: "u",
        type: "array<vec4i, 3>",
      },
    );
    return [{
      wgsl: `${b.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let b = gid.x;
  if (b >= ${B}u) { return; }
  let t = u[0].x;
  if (t < plen[b]) { return; }
  let at = b * ${T}u + u32(t);
  if (done[b] != 0) { ids[at] = u[0].y; return; }
  let s = sampled[b];
  ids[at] = s;
  let full = u[0].z > 0 && t - plen[b] + 1 >= u[0].z;
  if (any(vec4i(s) == u[1]) || any(vec4i(s) == u[2]) || full) { done[b] = 1; }
}`,
      workgroups: [Math.ceil(B / 64), 1, 1],
      bindings: b.bindings,
    }];
  },
});

/** Append sampled ids at column t in place (see appendKernel). */
export const appendToken = (
  ids: Tensor,
  done: Tensor,
  sampled: Tensor,
  promptLen: Tensor,
  p: AppendParams,
): void => {
  apply(appendKernel, p, [ids, done, sampled, promptLen]);
};
