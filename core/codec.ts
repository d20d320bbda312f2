/**
 * The public shape of bupo's JSON codecs (ObjectiveCodec, InternalPolicyCodec): check, decode and encode a
 * value. They are io-ts Types underneath; this interface names only what callers use, structurally (an io-ts
 * `Type<A, O, unknown>` is a JsonCodec<A>), so the documented API does not depend on io-ts's types.
 */

/** One problem decoding found: the value at fault, the path to it from the root, and what was expected. */
export interface DecodeIssue {
  /** The value at fault. */
  readonly value: unknown;
  /** The keys from the root (the first entry is the root itself, key ""), each with the value found there. */
  readonly context: readonly { readonly key: string; readonly actual?: unknown }[];
  /** What was expected, when the decoder says. */
  readonly message?: string;
}

/** What decoding gives: `Right` with the value, or `Left` with the problems (fp-ts's Either, by structure). */
export type Decoded<A> =
  | { readonly _tag: "Left"; readonly left: readonly DecodeIssue[] }
  | { readonly _tag: "Right"; readonly right: A };

/** A codec between A and its JSON form. */
export interface JsonCodec<A> {
  /** The codec's name, as messages show it. */
  readonly name: string;
  /** Whether `u` is already an A in canonical form. */
  readonly is: (u: unknown) => u is A;
  /** Check parsed JSON and build an A (defaults filled in), or list what is wrong. */
  readonly decode: (u: unknown) => Decoded<A>;
  /** A's JSON value (plain data: `JSON.stringify` it). */
  readonly encode: (a: A) => unknown;
}
