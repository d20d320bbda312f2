/**
 * Statistics for comparing runs over seeds: means with percentile-bootstrap intervals, paired differences, and
 * exact sign and sign-flip permutation tests. Pure and seeded: the same inputs give the same numbers.
 */
import { splitmix32 } from "./rng.ts";

/** The arithmetic mean (NaN for no values). */
export const mean = (xs: readonly number[]): number =>
  xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;

/** The sample standard deviation (n - 1 in the denominator; 0 for one value, NaN for none). */
export const sd = (xs: readonly number[]): number => {
  if (xs.length === 0) return NaN;
  if (xs.length === 1) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
};

/** The q-quantile (0 <= q <= 1) of sorted values, linear between order statistics (numpy's default). */
export const quantileSorted = (sorted: readonly number[], q: number): number => {
  if (sorted.length === 0) return NaN;
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h), hi = Math.ceil(h);
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
};

/** A mean with its interval. */
export interface Estimate {
  /** The mean of the values (NaN for none). */
  readonly mean: number;
  /** Lower and upper end of the interval (both = mean for a single value; NaN for none). */
  readonly lo: number;
  /** Upper end of the interval (see `lo`). */
  readonly hi: number;
  /** Number of values. */
  readonly n: number;
  /** Confidence level of the interval, e.g. 0.95. */
  readonly level: number;
}

/** Options of the bootstrap. */
export interface BootstrapOptions {
  /** Confidence level (default 0.95). */
  readonly level?: number;
  /** Resamples (default 10,000). */
  readonly resamples?: number;
  /** Seed of the resampling (default 0). */
  readonly seed?: number;
}

/**
 * The mean of `xs` with a percentile-bootstrap interval: resample `xs` with replacement `resamples` times, and take
 * the (1 - level)/2 and (1 + level)/2 quantiles of the resampled means. With few seeds the interval is narrow
 * (it cannot see variance the seeds did not show): read it with the number of values beside it.
 */
export const bootstrapMean = (xs: readonly number[], o: BootstrapOptions = {}): Estimate => {
  const level = o.level ?? 0.95, B = o.resamples ?? 10_000, n = xs.length;
  if (!(level > 0 && level < 1)) throw new RangeError(`bootstrapMean: level ${level} must be in (0, 1)`);
  if (!Number.isInteger(B) || B < 1) throw new RangeError(`bootstrapMean: resamples ${B} must be >= 1`);
  const m = mean(xs);
  if (n <= 1) return { mean: m, lo: m, hi: m, n, level };
  const next = splitmix32(o.seed ?? 0);
  const means = new Float64Array(B);
  for (let b = 0; b < B; b++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += xs[next() % n];
    means[b] = s / n;
  }
  means.sort();
  const sorted = Array.from(means);
  return {
    mean: m,
    lo: quantileSorted(sorted, (1 - level) / 2),
    hi: quantileSorted(sorted, (1 + level) / 2),
    n,
    level,
  };
};

/** log C(n, k). */
const logChoose = (n: number, k: number): number => {
  let s = 0;
  for (let i = 1; i <= k; i++) s += Math.log(n - k + i) - Math.log(i);
  return s;
};

/**
 * The exact two-sided sign test of paired differences: zeros are dropped; with n non-zero differences of which k
 * are positive, p = min(1, 2 min(P[X <= k], P[X >= k])) for X ~ Binomial(n, 1/2). p = 1 when every difference is 0.
 */
export const signTest = (
  diffs: readonly number[],
): { readonly p: number; readonly positive: number; readonly n: number } => {
  const nz = diffs.filter((d) => d !== 0);
  const n = nz.length, k = nz.filter((d) => d > 0).length;
  if (n === 0) return { p: 1, positive: 0, n: 0 };
  const pmf = (i: number) => Math.exp(logChoose(n, i) - n * Math.LN2);
  let le = 0, ge = 0;
  for (let i = 0; i <= n; i++) {
    if (i <= k) le += pmf(i);
    if (i >= k) ge += pmf(i);
  }
  return { p: Math.min(1, 2 * Math.min(le, ge)), positive: k, n };
};

/** Largest n for which `permutationTest` enumerates all 2^n sign flips exactly. */
export const EXACT_FLIPS_MAX = 20;

/**
 * The two-sided paired permutation (sign-flip) test of the mean difference: under the null each difference's sign
 * is a fair coin, so p = the fraction of the 2^n sign assignments whose |sum| is at least the observed |sum|
 * (the observed one included). Exact for n <= 20; above, `resamples` random flips (seeded), with the observed
 * assignment counted once (p = (1 + hits) / (1 + resamples)). Ties are judged with a relative 1e-12 slack.
 */
export const permutationTest = (
  diffs: readonly number[],
  o: { readonly resamples?: number; readonly seed?: number } = {},
): { readonly p: number; readonly exact: boolean; readonly n: number } => {
  const n = diffs.length;
  if (n === 0) return { p: 1, exact: true, n };
  const observed = Math.abs(diffs.reduce((a, b) => a + b, 0));
  const slack = 1e-12 * diffs.reduce((a, b) => a + Math.abs(b), 0);
  if (n <= EXACT_FLIPS_MAX) {
    let hits = 0;
    const total = 2 ** n;
    for (let mask = 0; mask < total; mask++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += mask & (1 << i) ? -diffs[i] : diffs[i];
      if (Math.abs(s) >= observed - slack) hits++;
    }
    return { p: hits / total, exact: true, n };
  }
  const R = o.resamples ?? 100_000, next = splitmix32(o.seed ?? 0);
  let hits = 0;
  for (let r = 0; r < R; r++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += next() & 1 ? -diffs[i] : diffs[i];
    if (Math.abs(s) >= observed - slack) hits++;
  }
  return { p: (1 + hits) / (1 + R), exact: false, n };
};

/** A paired comparison of a treatment against a baseline over the same seeds. */
export interface PairedComparison {
  /** treatment - baseline, per seed, in the order given. */
  readonly diffs: readonly number[];
  /** The mean difference with its bootstrap interval. */
  readonly diff: Estimate;
  /** Seeds where the treatment is ahead, behind, tied. */
  readonly wins: number;
  /** Seeds where the treatment is behind. */
  readonly losses: number;
  /** Seeds where the two are equal. */
  readonly ties: number;
  /** Two-sided p-value of the exact sign test (`signTest`). */
  readonly signP: number;
  /** Two-sided p-value of the paired permutation test of the mean difference (`permutationTest`). */
  readonly permutationP: number;
  /** Whether `permutationP` enumerated every sign flip (n <= EXACT_FLIPS_MAX) rather than sampling them. */
  readonly permutationExact: boolean;
}

/** Compare paired values (same seed at the same index): differences, their interval, the sign and permutation tests. */
export const pairedComparison = (
  treatment: readonly number[],
  baseline: readonly number[],
  o: BootstrapOptions = {},
): PairedComparison => {
  if (treatment.length !== baseline.length) {
    throw new RangeError(
      `pairedComparison: ${treatment.length} treatment values against ${baseline.length} baseline values`,
    );
  }
  const diffs = treatment.map((t, i) => t - baseline[i]);
  const perm = permutationTest(diffs, { seed: o.seed });
  return {
    diffs,
    diff: bootstrapMean(diffs, o),
    wins: diffs.filter((d) => d > 0).length,
    losses: diffs.filter((d) => d < 0).length,
    ties: diffs.filter((d) => d === 0).length,
    signP: signTest(diffs).p,
    permutationP: perm.p,
    permutationExact: perm.exact,
  };
};
