/** Errors as data: every failure a user can meet is a tagged value that says what to do. */
import { Data } from "effect";

/**
 * The base class of a tagged error: effect's `Data.TaggedError(tag)`, under bupo's name. An instance is an
 * `Error` with `_tag` equal to `tag` and the fields given to its constructor (`message` among them); inside
 * `Effect.gen`, `yield* new ConfigError({...})` fails the effect with it, and `Effect.catchTag` matches the tag.
 */
export const TaggedError = <Tag extends string>(tag: Tag): ReturnType<typeof Data.TaggedError<Tag>> =>
  Data.TaggedError(tag);

/** A tensor's shape or dtype does not fit an op. */
export class ShapeError
  extends TaggedError("ShapeError")<{ readonly op: string; readonly message: string }> {}

/** A value that must be finite is NaN or infinite. */
export class NonFiniteError extends TaggedError("NonFiniteError")<{
  readonly what: string;
  readonly index: number;
  readonly value: number;
  readonly message: string;
}> {}

/** No WebGPU adapter could be had. */
export class NoAdapterError extends TaggedError("NoAdapterError")<{ readonly message: string }> {}

/** One diagnostic of the WGSL compiler. */
export interface WgslMessage {
  /** `error`, `warning` or `info`, as the compiler reports it. */
  readonly type: string;
  /** 1-based line and column in the generated WGSL source. */
  readonly line: number;
  /** 1-based column (see `line`). */
  readonly col: number;
  /** The compiler's text. */
  readonly message: string;
}

/** A generated shader failed to compile: carries the kernel name, the line:col messages and the source. */
export class ShaderCompileError extends TaggedError("ShaderCompileError")<{
  readonly kernel: string;
  readonly messages: readonly WgslMessage[];
  readonly source: string;
  readonly message: string;
}> {}

/** A WebGPU validation, out-of-memory or internal error raised while running kernels. */
export class GpuError extends TaggedError("GpuError")<{
  readonly kind: string;
  readonly message: string;
}> {}

/** The device was lost (driver reset, destroyed); every tensor on it is gone. */
export class DeviceLostError extends TaggedError("DeviceLostError")<{
  readonly reason: string;
  readonly message: string;
}> {}

/** A readout, old log-prob or reference log-prob that the step needs is absent. */
export class MissingReadoutError extends TaggedError("MissingReadoutError")<{
  readonly what: "logp" | "entropy" | "kl" | "old" | "ref";
  readonly key: string;
  readonly message: string;
}> {}

/** A tensor was used after it was disposed. */
export class DisposedError extends TaggedError("DisposedError")<{ readonly message: string }> {}

/** Format the compiler diagnostics of a shader for a person: `kernel:line:col: message` lines. */
export const formatWgslMessages = (kernel: string, msgs: readonly WgslMessage[]): string =>
  msgs.map((m) => `${kernel}.wgsl:${m.line}:${m.col}: ${m.type}: ${m.message.trim().split("\n")[0]}`).join(
    "\n",
  );

/** Throw NonFiniteError naming `what` and the first bad index when `xs` holds a NaN or an infinity. */
export const assertFinite = (what: string, xs: ArrayLike<number>): void => {
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i];
    if (!Number.isFinite(v)) {
      throw new NonFiniteError({
        what,
        index: i,
        value: v,
        message: `${what}: element ${i} is ${v}, expected a finite number`,
      });
    }
  }
};

/** A file is malformed, truncated, or disagrees with what was expected; names the file and the tensor or field. */
export class FileFormatError extends TaggedError("FileFormatError")<{
  readonly file: string;
  readonly message: string;
}> {}

/** A configuration value (flag, config.json field, objective JSON) is missing or invalid; names it. */
export class ConfigError extends TaggedError("ConfigError")<{
  readonly source: string;
  readonly field: string;
  readonly message: string;
}> {}

/**
 * A value as short JSON for an error message: at most `max` characters, and never a failure itself (a value
 * nested too deeply for JSON.stringify, or one JSON cannot show, is described instead).
 */
export const showValue = (u: unknown, max = 80): string => {
  let s: string | undefined;
  try {
    s = JSON.stringify(u);
  } catch {
    s = "(a value nested too deeply to show)";
  }
  if (s === undefined) s = String(u);
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
};
