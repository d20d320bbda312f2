/** Group-relative advantages: hand cases, zero-variance fraction, shift invariance, bad inputs. */
import fc from "fast-check";
import { ShapeError } from "../core/errors.ts";
import { drGrpoAdvantages, grpoAdvantages, rlooAdvantages } from "../objectives/advantages.ts";
import { closeness } from "./util.ts";

const assert = (ok: boolean, msg: string): void => {
  if (!ok) throw new Error(msg);
};
// a handful of f64 operations per value: 1e-12 relative (+ absolute) is ~1e4 ulps
const { closeAll } = closeness(1e-12);

Deno.test("grpoAdvantages: hand cases (std with n-1, eps 1e-6)", () => {
  // group [1, 0, 0, 1]: mean 0.5, std = sqrt(4 * 0.25 / 3) = sqrt(1/3)
  const s = Math.sqrt(1 / 3) + 1e-6;
  const r = grpoAdvantages([1, 0, 0, 1, 1, 1, 1, 1], 4);
  closeAll(r.advantages, [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0], "A");
  assert(r.zeroVarianceFraction === 0.5, `zero-variance fraction ${r.zeroVarianceFraction}`);
  // [3, 1]: mean 2, std sqrt(2)
  closeAll(grpoAdvantages([3, 1], 2).advantages, [1 / (Math.SQRT2 + 1e-6), -1 / (Math.SQRT2 + 1e-6)], "pair");
});

Deno.test("drGrpo and RLOO: hand cases", () => {
  const r = [1, 0, 0, 1, 0, 0];
  closeAll(drGrpoAdvantages(r, 3).advantages, [2 / 3, -1 / 3, -1 / 3, 2 / 3, -1 / 3, -1 / 3], "Dr. GRPO");
  // RLOO: A_i = r_i - mean of the others: [1 - 0, 0 - 0.5, 0 - 0.5]
  closeAll(rlooAdvantages(r, 3).advantages, [1, -0.5, -0.5, 1, -0.5, -0.5], "RLOO");
  assert(rlooAdvantages([2, 2, 5, 5], 2).zeroVarianceFraction === 1, "both groups flat");
});

Deno.test("group size 1: A = 0 for every estimator, and every group counts as zero-variance", () => {
  for (const f of [grpoAdvantages, drGrpoAdvantages, rlooAdvantages]) {
    const r = f([1, 0, 0.5], 1);
    closeAll(r.advantages, [0, 0, 0], f.name);
    assert(r.zeroVarianceFraction === 1, `${f.name}: fraction ${r.zeroVarianceFraction}`);
  }
});

Deno.test("zero-variance groups get exactly 0 (no rounding residue), and the fraction counts them", () => {
  const r = grpoAdvantages([0.1, 0.1, 0.1, 0.3, 0.3, 0.7], 3);
  assert(r.advantages.slice(0, 3).every((x) => x === 0), "flat group exactly 0");
  assert(r.zeroVarianceFraction === 0.5, "one of two groups");
  assert(grpoAdvantages([], 4).zeroVarianceFraction === 0, "empty batch");
});

Deno.test("properties: shift invariance (GRPO, Dr. GRPO, RLOO), zero mean per group, GRPO scale invariance", () => {
  const rewards = fc.integer({ min: 1, max: 6 }).chain((g) =>
    fc.tuple(
      fc.constant(g),
      fc.integer({ min: 0, max: 5 }).chain((k) =>
        fc.array(fc.oneof(fc.constantFrom(0, 1), fc.double({ min: -5, max: 5, noNaN: true })), {
          minLength: g * k,
          maxLength: g * k,
        })
      ),
    )
  );
  fc.assert(
    fc.property(rewards, fc.double({ min: -10, max: 10, noNaN: true }), ([g, r], c) => {
      for (const f of [grpoAdvantages, drGrpoAdvantages, rlooAdvantages]) {
        const a = f(r, g), b = f(r.map((x) => x + c), g);
        // shifting changes the rounding of mean and std (a few ulps of |r| + |c| <= 15, ~1e-14); divided by
        // std + 1e-6 >= 1e-6 that is <= ~1e-8 in A: 1e-7 leaves headroom
        closeAll(b.advantages, [...a.advantages], `${f.name} shift`, 1e-7);
        for (let s = 0; s < r.length; s += g) {
          const m = a.advantages.slice(s, s + g).reduce((x, y) => x + y, 0) / g;
          assert(Math.abs(m) < 1e-7, `${f.name}: group mean of A is ${m}`);
        }
      }
      // scale invariance on binary rewards (a non-flat group then has std >= 1/sqrt(2)):
      // (k d) / (k s + eps) vs d / (s + eps): equal up to the eps term, relative <= 1e-6 / s
      const k = 3, bin = r.map((x) => (x > 0 ? 1 : 0));
      const gs = grpoAdvantages(bin.map((x) => k * x), g).advantages, g1 = grpoAdvantages(bin, g).advantages;
      closeAll(gs, g1, "scale", 1e-4);
    }),
    { numRuns: 300 },
  );
});

Deno.test("bad inputs are ShapeErrors naming the estimator and the sizes", () => {
  const bad = (f: () => unknown, text: string) => {
    try {
      f();
    } catch (e) {
      if (e instanceof ShapeError && e.message.includes(text)) return;
      throw new Error(`wrong error: ${e}`);
    }
    throw new Error("did not throw");
  };
  bad(() => grpoAdvantages([1, 2, 3], 2), "grpoAdvantages: 3 rewards do not split into groups of 2");
  bad(() => rlooAdvantages([1], 0), "rlooAdvantages: groupSize must be an integer >= 1, got 0");
  bad(() => drGrpoAdvantages([1, NaN], 2), "reward 1 is NaN");
});
