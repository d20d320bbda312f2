/** Deterministic draws for embedded tasks: a seed-free text hash for splits, Philox-backed uniform integers. */
import { philox4x32, seedKey, uniform01 } from "../core/rng.ts";
import type { Split } from "./task.ts";

/** A fixed 32-bit hash of a string (FNV-1a, then the murmur3 finalizer); seed-independent, so splits are too. */
export const textHash = (s: string): number => {
  let h = 0x811C9DC5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85EBCA6B) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xC2B2AE35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
};

/** A safe non-negative integer. */
export const isNat = (x: number): boolean => Number.isSafeInteger(x) && x >= 0;

/** Checks a `problem(split, index)` call of task `name`: index in [0, 2^32), split "train" or "eval". */
export const checkProblemArgs = (name: string, split: Split, index: number): void => {
  if (!isNat(index) || index >= 2 ** 32) {
    throw new RangeError(`${name}.problem: index ${index} must be an integer in [0, 2^32)`);
  }
  if (split !== "train" && split !== "eval") {
    throw new RangeError(`${name}.problem: split ${JSON.stringify(split)} must be "train" or "eval"`);
  }
};

const SPLIT_CODE: Record<Split, number> = { train: 0, eval: 1 };

/**
 * Uniform integers in [lo, hi] from Philox blocks at counter (split, index, attempt, block): 4 words per block; a
 * problem drawn from (seed, split, index, attempt) is a pure function of them.
 */
export const drawer = (seed: number, split: Split, index: number, attempt: number) => {
  const key = seedKey(seed);
  let block: number[] = [], used = 4, next = 0;
  return (lo: number, hi: number): number => {
    if (used === 4) {
      block = philox4x32(key, [SPLIT_CODE[split], index >>> 0, attempt, next++]);
      used = 0;
    }
    return lo + Math.floor(uniform01(block[used++]) * (hi - lo + 1));
  };
};
