/** core/stats.ts against values computed by hand or from the normal approximation. */
import {
  bootstrapMean,
  mean,
  pairedComparison,
  permutationTest,
  quantileSorted,
  sd,
  signTest,
} from "../core/stats.ts";
import { closeness } from "./util.ts";

const { close: near } = closeness(0, "absolute");

Deno.test("mean, sd and quantiles of fixed data", () => {
  near(mean([1, 2, 3, 4]), 2.5, "mean", 0);
  near(sd([2, 4, 4, 4, 5, 5, 7, 9]), Math.sqrt(32 / 7), "sd (n - 1)", 1e-15);
  near(quantileSorted([1, 2, 3, 4, 5], 0.5), 3, "median", 0);
  near(quantileSorted([1, 2, 3, 4], 0.25), 1.75, "linear between order statistics", 1e-15);
});

Deno.test("bootstrap interval of the mean of 1..10 matches the normal approximation", () => {
  // The bootstrap distribution of the mean of n values has sd sqrt((n-1)/n * s^2 / n): for 1..10, s^2 = 55/6,
  // so sd = sqrt(0.9 * 55/6 / 10) = 0.9083, and the symmetric data make it close to normal: 5.5 +- 1.96 * 0.9083
  // = [3.720, 7.280]. Tolerance 0.1: the Monte Carlo error of a 2.5% quantile with 20,000 resamples is about
  // 0.02 (sqrt(q(1-q)/B) / density), and the discreteness of 10 values adds a few hundredths.
  const xs = Array.from({ length: 10 }, (_, i) => i + 1);
  const e = bootstrapMean(xs, { resamples: 20_000, seed: 3 });
  near(e.mean, 5.5, "mean", 0);
  near(e.lo, 5.5 - 1.96 * Math.sqrt(0.9 * 55 / 6 / 10), "lower end", 0.1);
  near(e.hi, 5.5 + 1.96 * Math.sqrt(0.9 * 55 / 6 / 10), "upper end", 0.1);
  if (e.n !== 10 || e.level !== 0.95) throw new Error("n and level");
  const again = bootstrapMean(xs, { resamples: 20_000, seed: 3 });
  if (again.lo !== e.lo || again.hi !== e.hi) throw new Error("same seed, same interval");
  const narrow = bootstrapMean(xs, { resamples: 20_000, seed: 3, level: 0.5 });
  if (!(narrow.lo > e.lo && narrow.hi < e.hi)) throw new Error("a 50% interval lies inside the 95% one");
});

Deno.test("bootstrap of one value or of constant values is a point", () => {
  const one = bootstrapMean([0.4]);
  if (one.lo !== 0.4 || one.hi !== 0.4) throw new Error("one value");
  const flat = bootstrapMean([2, 2, 2]);
  if (flat.lo !== 2 || flat.hi !== 2) throw new Error("constant values");
});

Deno.test("sign test: exact binomial p-values computed by hand", () => {
  // [1, 2, 3, -1]: 3 of 4 positive, P[X >= 3] = (4 + 1) / 16, two-sided 10/16.
  near(signTest([1, 2, 3, -1]).p, 10 / 16, "3 of 4", 1e-15);
  // 5 of 5 positive: 2 / 32.
  near(signTest([1, 1, 2, 3, 5]).p, 2 / 32, "5 of 5", 1e-15);
  // zeros are dropped: [0, 1, -1] is 1 of 2: p = 1.
  const t = signTest([0, 1, -1]);
  if (t.n !== 2 || t.p !== 1) throw new Error(`zeros dropped: ${JSON.stringify(t)}`);
  if (signTest([0, 0]).p !== 1) throw new Error("all ties");
});

Deno.test("permutation test: exact sign-flip p-values computed by hand", () => {
  // diffs [1, 2, 3, -1], observed |sum| 5. The 16 flips give sums +-7 (2), +-5 (4), +-3 (4), +-1 (6): 6 of 16
  // reach |sum| >= 5, so p = 6/16.
  const r = permutationTest([1, 2, 3, -1]);
  if (!r.exact) throw new Error("exact for n = 4");
  near(r.p, 6 / 16, "p", 0);
  // [0.1, 0.2, 0.3]: only all-plus and all-minus reach 0.6 (float sums differ in the last bit): 2/8.
  near(permutationTest([0.1, 0.2, 0.3]).p, 2 / 8, "float ties", 0);
  // Above 20 values it samples; 24 equal positive differences: only 2 of 2^24 flips reach the observed sum.
  const big = permutationTest(Array(24).fill(1), { resamples: 20_000, seed: 1 });
  if (big.exact || big.p > 1e-3) throw new Error(`sampled: ${JSON.stringify(big)}`);
});

Deno.test("paired comparison: differences per seed, wins, and both tests", () => {
  const c = pairedComparison([0.5, 0.6, 0.7, 0.4], [0.4, 0.4, 0.4, 0.5], { resamples: 2000 });
  near(c.diffs[0], 0.1, "first difference", 1e-12);
  if (c.wins !== 3 || c.losses !== 1 || c.ties !== 0) throw new Error("wins and losses");
  near(c.diff.mean, 0.125, "mean difference", 1e-12);
  near(c.signP, 10 / 16, "sign p", 1e-15);
  if (!(c.diff.lo <= c.diff.mean && c.diff.mean <= c.diff.hi)) throw new Error("interval holds the mean");
  let threw = false;
  try {
    pairedComparison([1], [1, 2]);
  } catch {
    threw = true;
  }
  if (!threw) throw new Error("unequal lengths must throw");
});
