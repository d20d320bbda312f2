/** Tasks: arithmetic problems are deterministic, splits disjoint, solutions correct, rewards exact, alphabet closed. */
import fc from "fast-check";
import { ConfigError } from "../core/errors.ts";
import {
  type ArithOptions,
  arithTask,
  arithWellFormed,
  drawProblems,
  extractAnswer,
  outsideAlphabet,
  type Problem,
  splitOf,
  type Task,
} from "../tasks/mod.ts";
import { eq } from "./util.ts";

/** Independent check of a problem: parse the prompt, recompute left to right, compare every part. */
const checkProblem = (p: Problem, o: ArithOptions) => {
  const m = /^(\d+(?:[+-]\d+)+)=$/.exec(p.prompt);
  if (!m) throw new Error(`prompt ${JSON.stringify(p.prompt)} is not an expression`);
  const nums = m[1].split(/[+-]/).map(Number);
  const ops = m[1].replace(/\d+/g, "").split("");
  const [lo, hi] = o.operandRange ?? [0, 9];
  const [nMin, nMax] = o.operands ?? [2, 4];
  const maxResult = o.maxResult ?? 99;
  if (nums.length < nMin || nums.length > nMax) throw new Error(`${p.prompt}: ${nums.length} operands`);
  if (p.difficulty !== nums.length) throw new Error(`${p.prompt}: difficulty ${p.difficulty}`);
  for (const x of nums) {
    if (x < lo || x > hi) throw new Error(`${p.prompt}: operand ${x} outside [${lo}, ${hi}]`);
  }
  for (const op of ops) if (!(o.ops ?? "+-").includes(op)) throw new Error(`${p.prompt}: operator ${op}`);
  const chain: number[] = [];
  let cur = nums[0];
  if (cur > maxResult) throw new Error(`${p.prompt}: first operand above maxResult`);
  ops.forEach((op, k) => {
    cur = op === "+" ? cur + nums[k + 1] : cur - nums[k + 1];
    if (cur < 0 || cur > maxResult) {
      throw new Error(`${p.prompt}: running result ${cur} outside [0, ${maxResult}]`);
    }
    chain.push(cur);
  });
  eq(p.answer, String(cur), `answer of ${p.prompt}`);
  eq(p.solution, `${chain.join(",")}|${cur}.`, `solution of ${p.prompt}`);
};

// Operand ranges at least 16 wide: even "-" alone with two operands then has 136 expressions, so neither split
// is empty (narrower ranges can leave a split empty, which `problem` reports as a ConfigError; tested below).
const arbOptions: fc.Arbitrary<ArithOptions> = fc.record({
  operands: fc.tuple(fc.integer({ min: 2, max: 4 }), fc.integer({ min: 0, max: 3 })).map((
    [a, d],
  ) => [a, a + d]),
  operandRange: fc.tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 15, max: 30 })).map((
    [a, d],
  ) => [a, a + d]),
  ops: fc.constantFrom("+", "-", "+-", "-+"),
  maxResult: fc.integer({ min: 40, max: 120 }),
  evalEvery: fc.integer({ min: 2, max: 10 }),
}) as fc.Arbitrary<ArithOptions>;

Deno.test("a problem is a pure function of (split, index, seed)", () => {
  const t = arithTask();
  fc.assert(
    fc.property(fc.constantFrom("train", "eval" as const), fc.nat(2 ** 32 - 1), fc.nat(), (split, i, s) => {
      eq(t.problem(split, i, s), arithTask().problem(split, i, s), `problem(${split}, ${i}, ${s})`);
    }),
  );
  const a = drawProblems(t, "train", 1, 0, 50).map((p) => p.prompt),
    b = drawProblems(t, "train", 2, 0, 50).map((p) => p.prompt);
  if (a.filter((x, i) => x === b[i]).length > 10) {
    throw new Error("seeds 1 and 2 give nearly the same problems");
  }
});

Deno.test("train and eval are disjoint sets of expressions, for every seed", () => {
  const t = arithTask();
  const train = new Set<string>(), evalSet = new Set<string>();
  for (const seed of [0, 1, 12345]) {
    for (const p of drawProblems(t, "train", seed, 0, 2000)) train.add(p.prompt);
    for (const p of drawProblems(t, "eval", seed, 0, 2000)) evalSet.add(p.prompt);
  }
  const both = [...evalSet].filter((x) => train.has(x));
  if (both.length > 0) throw new Error(`${both.length} expressions in both splits, e.g. ${both[0]}`);
  if (evalSet.size < 500 || train.size < 2000) {
    throw new Error(`too few distinct: ${train.size} / ${evalSet.size}`);
  }
  for (const x of train) eq(splitOf(x), "train", `split of ${x}`);
  for (const x of evalSet) eq(splitOf(x), "eval", `split of ${x}`);
});

/**
 * Some random option sets allow only a handful of expressions (e.g. only "-" from operands >= 5 with four
 * operands), so one split may hold none: the task then throws its documented ConfigError. Such draws say
 * nothing about disjointness or solutions, so they are skipped (as a fast-check precondition).
 */
const tooFew = <T>(f: () => T[]): T[] => {
  try {
    return f();
  } catch (e) {
    fc.pre(!(e instanceof ConfigError && /too few distinct expressions/.test(e.message)));
    throw e;
  }
};

Deno.test("disjointness holds for random options too", () => {
  fc.assert(
    fc.property(arbOptions, fc.nat(1000), (o, seed) => {
      const t = arithTask(o);
      const tr = new Set(tooFew(() => drawProblems(t, "train", seed, 0, 300)).map((p) => p.prompt));
      for (const p of tooFew(() => drawProblems(t, "eval", seed, 0, 100))) {
        if (tr.has(p.prompt)) throw new Error(`${p.prompt} in both splits`);
        eq(splitOf(p.prompt, o.evalEvery), "eval", `split of ${p.prompt}`);
      }
    }),
    { numRuns: 40 },
  );
});

Deno.test("solutions recompute: running results, answer, operand and result ranges", () => {
  const t = arithTask();
  for (const split of ["train", "eval"] as const) {
    for (const p of drawProblems(t, split, 3, 0, 2000)) checkProblem(p, {});
  }
  fc.assert(
    fc.property(arbOptions, fc.nat(1000), fc.nat(10000), (o, seed, start) => {
      const task = arithTask(o);
      for (const split of ["train", "eval"] as const) {
        for (const p of tooFew(() => drawProblems(task, split, seed, start, 20))) checkProblem(p, o);
      }
    }),
    { numRuns: 60 },
  );
});

Deno.test("difficulty spans the operand counts about evenly", () => {
  const counts = [0, 0, 0, 0, 0];
  for (const p of drawProblems(arithTask(), "train", 9, 0, 3000)) counts[p.difficulty!]++;
  for (const n of [2, 3, 4]) {
    if (counts[n] < 800 || counts[n] > 1200) throw new Error(`difficulty counts ${counts.slice(2)}`);
  }
});

Deno.test("the alphabet covers every prompt and solution; lengths stay within the stated bounds", () => {
  fc.assert(
    fc.property(arbOptions, fc.nat(1000), (o, seed) => {
      const t = arithTask(o);
      for (const split of ["train", "eval"] as const) {
        for (const p of tooFew(() => drawProblems(t, split, seed, 0, 50))) {
          const out = outsideAlphabet(t.alphabet, p.prompt + p.solution);
          if (out.length > 0) {
            throw new Error(`characters ${JSON.stringify(out)} of ${p.prompt}${p.solution}`);
          }
          if (p.prompt.length > t.maxPromptChars! || p.solution.length > t.maxSolutionChars!) {
            throw new Error(
              `${p.prompt}${p.solution} longer than ${t.maxPromptChars} + ${t.maxSolutionChars}`,
            );
          }
          if (!p.solution.endsWith(t.stop!)) throw new Error(`${p.solution} does not end with ${t.stop}`);
        }
      }
    }),
    { numRuns: 60 },
  );
  const t = arithTask(); // the default task fits a 48-character context with room to spare
  if (t.maxPromptChars! + t.maxSolutionChars! > 24) {
    throw new Error(`${t.maxPromptChars} + ${t.maxSolutionChars}`);
  }
  eq(new Set(t.alphabet).size, t.alphabet.length, "alphabet characters are distinct");
});

Deno.test("reward on hand cases: binary on the exact answer, text after the end marker ignored", () => {
  const t = arithTask();
  const p: Problem = { id: "x", prompt: "3+5-2+8=", answer: "14", solution: "8,6,14|14." };
  const cases: [string, number, boolean][] = [
    ["8,6,14|14.", 1, true], // the solution
    ["8,6,13|13.", 0, true], // wrong, well formed
    ["8,6,13|14.", 1, true], // wrong chain, right answer: the reward checks the answer only
    ["8,6,14|14.garbage|99.", 1, true], // extra text after the end marker is ignored
    ["8,6,14|14.\n<eos><pad>", 1, true],
    ["|14.", 1, false], // right answer, no chain: counts, but not well formed
    ["8,6|14.", 1, false], // one running result short
    ["8,6,14|14", 0, false], // no end marker (truncated)
    ["8,6,14,14.", 0, false], // no answer marker
    ["8,6,14|014.", 0, true], // leading zero: not exact
    ["8,6,14| 14.", 0, false], // space: not exact
    ["8,6,14|14 .", 0, false],
    ["8,6,14|1.4.", 0, true], // the response ends at the first ".": "8,6,14|1." (wrong)
    ["8,6,14|.", 0, false], // empty answer
    ["14", 0, false],
    ["", 0, false],
    [".|14.", 0, false], // end marker before the answer marker
    ["8|6|14.", 0, false], // two answer markers
  ];
  for (const [c, r, wf] of cases) {
    eq(t.reward(p, c), r, `reward of ${JSON.stringify(c)}`);
    eq(t.format!(p, c), wf, `format of ${JSON.stringify(c)}`);
    eq(arithWellFormed(p.prompt, c), wf, `arithWellFormed of ${JSON.stringify(c)}`);
  }
  eq(extractAnswer("8,6,14|14.xx"), "14", "extractAnswer");
  eq(extractAnswer("8,6,14|14"), undefined, "extractAnswer without end marker");
  eq(extractAnswer("8,6,14|1.4."), "1", "extractAnswer stops at the first end marker");
});

Deno.test("format reward is off by default and adds to the binary reward when on", () => {
  const t = arithTask({ formatReward: 0.1 });
  const p = t.problem("train", 0, 0);
  eq(t.reward(p, p.solution), 1.1, "correct and well formed");
  const wrong = p.solution.replace(/\|\d+\./, `|${Number(p.answer) + 1}.`);
  eq(t.reward(p, wrong), 0.1, `wrong but well formed (${wrong})`);
  eq(t.reward(p, `|${p.answer}.`), 1, "right answer, no chain");
  eq(t.reward(p, "garbage"), 0, "malformed");
  eq(arithTask().reward(p, wrong), 0, "default task: binary");
  fc.assert(fc.property(fc.nat(5000), fc.nat(), (i, s) => {
    const q = arithTask().problem("eval", i, s);
    eq(arithTask().reward(q, q.solution), 1, `reward of the solution of ${q.prompt}`);
  }));
});

Deno.test("bad options are ConfigErrors naming the field", () => {
  const bad: [ArithOptions, string][] = [
    [{ operands: [1, 3] }, "operands"],
    [{ operands: [3, 2] }, "operands"],
    [{ operandRange: [5, 2] }, "operandRange"],
    [{ ops: "*" }, "ops"],
    [{ ops: "" }, "ops"],
    [{ ops: "++" }, "ops"],
    [{ maxResult: -1 }, "maxResult"],
    [{ operandRange: [10, 20], maxResult: 5 }, "maxResult"],
    [{ evalEvery: 1 }, "evalEvery"],
    [{ formatReward: -0.1 }, "formatReward"],
    [{ formatReward: NaN }, "formatReward"],
  ];
  for (const [o, field] of bad) {
    try {
      arithTask(o);
    } catch (e) {
      if (!(e instanceof ConfigError) || e.field !== field || !e.message.includes(field)) {
        throw new Error(`${JSON.stringify(o)}: expected ConfigError on ${field}, got ${e}`);
      }
      continue;
    }
    throw new Error(`${JSON.stringify(o)} was accepted`);
  }
  // One possible expression ("0+0="): one split is empty, and asking for it says so.
  const t = arithTask({ operands: [2, 2], operandRange: [0, 0] });
  const empty = splitOf("0+0=") === "eval" ? "train" : "eval";
  try {
    t.problem(empty, 0, 0);
    throw new Error("no error");
  } catch (e) {
    if (!(e instanceof ConfigError) || !e.message.includes("too few distinct expressions")) throw e;
  }
  for (const [args, what] of [[["train", -1, 0], "index -1"], [["test", 0, 0], `split "test"`]] as const) {
    try {
      t.problem(...(args as unknown as ["train", number, number]));
      throw new Error("no error");
    } catch (e) {
      if (!(e instanceof RangeError) || !e.message.includes(what)) throw e;
    }
  }
});

Deno.test("drawProblems gives consecutive problems; a user Task plugs in through the interface", () => {
  const t = arithTask();
  eq(drawProblems(t, "eval", 4, 10, 5), [10, 11, 12, 13, 14].map((i) => t.problem("eval", i, 4)), "batch");
  eq(drawProblems(t, "train", 0, 0, 0), [], "empty batch");
  try {
    drawProblems(t, "train", 0, -1, 2);
    throw new Error("no error");
  } catch (e) {
    if (!(e instanceof RangeError) || !e.message.includes("start -1")) throw e;
  }
  const copy: Task = { // the example of the Task doc comment
    name: "copy",
    description: "repeat three digits, then a full stop",
    alphabet: "0123456789>.",
    stop: ".",
    problem: (split, index, seed) => {
      const s = String((index * 7919 + seed) % 1000).padStart(3, "0");
      const t = split === "train" ? s + "0" : s + "1";
      return { id: `copy/${split}/${seed}/${index}`, prompt: t + ">", answer: t, solution: t + "." };
    },
    reward: (p, completion) => (completion.split(".")[0] === p.answer ? 1 : 0),
  };
  for (const p of drawProblems(copy, "eval", 3, 0, 20)) {
    eq(copy.reward(p, p.solution), 1, `copy reward of ${p.solution}`);
    eq(outsideAlphabet(copy.alphabet, p.prompt + p.solution), [], "copy alphabet");
  }
});
