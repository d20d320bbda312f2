/** Group-relative advantage estimators (GRPO, Dr. GRPO, RLOO) over consecutive groups of rewards; pure. */
import { ShapeError } from "../core/errors.ts";

/** Advantages (one per response) and the fraction of groups whose rewards are all equal (no learning signal). */
export interface Advantages {
  /** (rewards.length) the advantage of each response, in the order of `rewards`. */
  readonly advantages: Float64Array;
  /** fraction of groups whose rewards are all exactly equal (a group of size 1 counts as such); their A = 0. */
  readonly zeroVarianceFraction: number;
}

/** The standard-deviation epsilon of GRPO: A = (r - mean) / (std + 1e-6). */
export const GRPO_EPS = 1e-6;

const byGroup = (
  op: string,
  rewards: readonly number[],
  groupSize: number,
  f: (group: readonly number[], out: Float64Array, offset: number) => void,
): Advantages => {
  if (!Number.isInteger(groupSize) || groupSize < 1) {
    throw new ShapeError({ op, message: `${op}: groupSize must be an integer >= 1, got ${groupSize}` });
  }
  if (rewards.length % groupSize !== 0) {
    throw new ShapeError({
      op,
      message: `${op}: ${rewards.length} rewards do not split into groups of ${groupSize}`,
    });
  }
  for (let i = 0; i < rewards.length; i++) {
    if (!Number.isFinite(rewards[i])) {
      throw new ShapeError({ op, message: `${op}: reward ${i} is ${rewards[i]}, expected a finite number` });
    }
  }
  const out = new Float64Array(rewards.length);
  const groups = rewards.length / groupSize;
  let flat = 0;
  for (let g = 0; g < groups; g++) {
    const group = rewards.slice(g * groupSize, (g + 1) * groupSize);
    if (group.every((r) => r === group[0])) flat++; // A = 0 exactly (no rounding residue of the mean)
    else f(group, out, g * groupSize);
  }
  return { advantages: out, zeroVarianceFraction: groups === 0 ? 0 : flat / groups };
};

const meanOf = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

/**
 * GRPO: A_i = (r_i - mean) / (std + 1e-6), std with n-1 (Bessel), per consecutive group of `groupSize`.
 * Group size 1: A = 0 (the std is undefined and one sample carries no relative signal; verl instead uses
 * mean 0, std 1, i.e. A = r / (1 + 1e-6)).
 */
export const grpoAdvantages = (rewards: readonly number[], groupSize: number): Advantages =>
  byGroup("grpoAdvantages", rewards, groupSize, (group, out, o) => {
    const n = group.length;
    if (n === 1) return; // A = 0
    const m = meanOf(group);
    const std = Math.sqrt(group.reduce((s, r) => s + (r - m) ** 2, 0) / (n - 1));
    for (let i = 0; i < n; i++) out[o + i] = (group[i] - m) / (std + GRPO_EPS);
  });

/** Dr. GRPO: A_i = r_i - mean (no std normalization). Group size 1: A = 0. */
export const drGrpoAdvantages = (rewards: readonly number[], groupSize: number): Advantages =>
  byGroup("drGrpoAdvantages", rewards, groupSize, (group, out, o) => {
    const m = meanOf(group);
    for (let i = 0; i < group.length; i++) out[o + i] = group.length === 1 ? 0 : group[i] - m;
  });

/** RLOO: A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean). Group size 1: A = 0 (no other sample). */
export const rlooAdvantages = (rewards: readonly number[], groupSize: number): Advantages =>
  byGroup("rlooAdvantages", rewards, groupSize, (group, out, o) => {
    const n = group.length;
    if (n === 1) return;
    const total = group.reduce((s, r) => s + r, 0);
    for (let i = 0; i < n; i++) out[o + i] = group[i] - (total - group[i]) / (n - 1);
  });
