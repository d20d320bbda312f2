/** Counter-based randomness: Philox4x32-10 (Salmon et al. 2011) in 32-bit integer arithmetic, pure and host-side. */

/** Four 32-bit words (unsigned, as JS numbers in [0, 2^32)). */
export type Words4 = [number, number, number, number];

/** Philox4x32 round multipliers (Random123). */
export const PHILOX_M0 = 0xD2511F53;
export const PHILOX_M1 = 0xCD9E8D57;
/** Philox4x32 Weyl key increments (golden ratio, sqrt(3) - 1). */
export const PHILOX_W0 = 0x9E3779B9;
export const PHILOX_W1 = 0xBB67AE85;

/**
 * High 32 bits of the 64-bit product a*b of two u32, from 16-bit halves (every partial product fits in 32
 * bits, so this is the same arithmetic the WGSL version does in u32).
 */
export const mulhi32 = (a: number, b: number): number => {
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff); // < 3 * 2^16
  return (p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
};

/**
 * Philox4x32-10: the 4-word block for `counter` under the 2-word `key`. Each of the 10 rounds is
 * (c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)), and the key is bumped
 * by the Weyl constants between rounds. Matches the Random123 known-answer vectors.
 */
export const philox4x32 = (key: readonly [number, number], counter: readonly number[]): Words4 => {
  let c0 = counter[0] >>> 0, c1 = counter[1] >>> 0, c2 = counter[2] >>> 0, c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const hi0 = mulhi32(PHILOX_M0, c0), lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulhi32(PHILOX_M1, c2), lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  return [c0, c1, c2, c3];
};

/**
 * A uniform number in [0, 1) from the top 24 bits of a word: (bits >>> 8) * 2^-24. Every result is an exact
 * f32, so an f32 GPU and this f64 host compute the same value.
 */
export const uniform01 = (bits: number): number => (bits >>> 8) * 2 ** -24;

/**
 * Where a random number lives: the user seed plus a counter of (step, sequence, position). The counter's
 * fourth word is the lane (which of several numbers drawn at that place).
 */
export type RngKey = { seed: number; step: number; sequence: number; position: number };

/** The Philox key of a seed: an integer in [0, 2^53) split into low and high u32 words. */
export const seedKey = (seed: number): [number, number] => {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`seedKey: seed ${seed} must be an integer in [0, 2^53)`);
  }
  return [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0];
};

/** The four random words at `k`, lane `lane`: philox4x32(seedKey(seed), (step, sequence, position, lane)). */
export const rngBits = (k: RngKey, lane = 0): Words4 =>
  philox4x32(seedKey(k.seed), [k.step >>> 0, k.sequence >>> 0, k.position >>> 0, lane >>> 0]);

/** The uniform [0, 1) number at `k`, lane `lane`: uniform01 of the first word of `rngBits`. */
export const rngUniform = (k: RngKey, lane = 0): number => uniform01(rngBits(k, lane)[0]);

/**
 * SplitMix32 (a 32-bit variant of Steele et al.'s SplitMix64 finalizer): a tiny host-side generator for
 * seeding things such as test data. Returns a function giving the next u32 each call.
 */
export const splitmix32 = (seed: number): () => number => {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9E3779B9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85EBCA6B) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xC2B2AE35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
};

/**
 * A small linear congruential generator (Numerical Recipes' constants): the u32 states after `seed` (0 reads
 * as 1), one per call. Deterministic test data and gradient-check directions, not sampling (that is Philox).
 */
export const lcg = (seed: number): () => number => {
  let s = (seed >>> 0) || 1;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
};

/** Uniform numbers in [-1, 1) from `lcg(seed)`: state / 2^31 - 1. */
export const uniforms = (seed: number): () => number => {
  const next = lcg(seed);
  return () => next() / 2 ** 31 - 1;
};
