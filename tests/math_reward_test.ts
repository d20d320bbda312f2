/** The math reward: answer extraction, MATH-style normalization, equivalence (graded cases), hostile input. */
import { answersEqual, extractAnswer, gradeMath, lastBoxed, normalizeAnswer } from "../tasks/math_grade.ts";
import { exactScore, formatScore, mathScore } from "../tasks/rewards.ts";
import { eq } from "./util.ts";

/** [model's boxed answer, reference answer, equivalent?]: formats of the MATH benchmark's answers. */
const GRADED: readonly [string, string, boolean][] = [
  // integers, signs, thousands separators, decimals
  ["72", "72", true],
  ["72", "73", false],
  ["-3", "-3", true],
  ["+3", "3", true],
  ["1,000", "1000", true],
  ["1{,}000", "1000", true],
  ["1\\,000", "1000", true],
  ["1,000,000", "1000000", true],
  ["12345678901234567890", "12345678901234567890", true],
  ["12345678901234567891", "12345678901234567890", false],
  ["007", "7", true],
  ["0.5", ".5", true],
  ["3.0", "3", true],
  ["2.50", "2.5", true],
  ["2.51", "2.5", false],
  // fractions against decimals and each other
  ["\\frac{1}{2}", "0.5", true],
  ["\\dfrac{1}{2}", "\\frac12", true],
  ["\\tfrac{3}{4}", "0.75", true],
  ["1/2", "\\frac{1}{2}", true],
  ["\\frac{2}{4}", "\\frac{1}{2}", true],
  ["\\frac{1}{3}", "0.3333", false],
  ["-\\frac{3}{2}", "-1.5", true],
  ["\\frac{-3}{2}", "-\\frac{3}{2}", true],
  ["2\\frac{1}{2}", "\\frac{5}{2}", true],
  ["\\frac{7}{3}", "\\frac{7}{4}", false],
  // radicals
  ["2\\sqrt{2}", "\\sqrt{8}", true],
  ["\\sqrt{8}", "2\\sqrt2", true],
  ["\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", true],
  ["\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt2}", true],
  ["3\\sqrt{2}", "2\\sqrt{3}", false],
  ["\\sqrt[3]{27}", "3", true],
  ["5\\sqrt{5}", "\\sqrt{125}", true],
  // pi, e, powers
  ["2\\pi", "\\pi \\cdot 2", true],
  ["\\frac{\\pi}{2}", "\\pi/2", true],
  ["\\pi", "3.14159", false],
  ["2^{10}", "1024", true],
  ["10^{-2}", "0.01", true],
  ["e^{2}", "e^2", true],
  ["10^{10}", "10000000000", true],
  ["\\pi r^2", "r^2\\pi", true],
  ["\\sqrt{2}", "1.41421356", false],
  // polynomials and expressions in variables
  ["x^2+2x+1", "(x+1)^2", true],
  ["(x-1)(x+1)", "x^2-1", true],
  ["x^2+2x+1", "x^2+2x+2", false],
  ["2x+3", "3+2x", true],
  ["\\frac{x}{2}", "0.5x", true],
  ["a^2-b^2", "(a-b)(a+b)", true],
  ["a+b", "a-b", false],
  ["x^2", "x^3", false],
  ["6x^2-5x-6", "(3x+2)(2x-3)", true],
  ["\\frac{x+1}{x-1}", "\\frac{1+x}{x-1}", true],
  // leading variable, equations
  ["x = 5", "5", true],
  ["x=5", "x = 5", true],
  ["k = -2", "-2", true],
  ["y = 2x + 3", "2x+3", true],
  ["y=3+2x", "y = 2x+3", true],
  ["x+y=3", "3=y+x", true],
  ["x+y=3", "x+y=4", false],
  // units, degrees, dollars, percent, \text
  ["5\\text{ cm}", "5", true],
  ["12 \\text{ square units}", "12", true],
  ["12 square units", "12", true],
  ["30^\\circ", "30", true],
  ["30^{\\circ}", "30", true],
  ["45°", "45", true],
  ["\\$18.90", "18.90", true],
  ["\\$5", "5", true],
  ["50\\%", "50", true],
  ["25\\%", "50", false],
  ["\\text{(C)}", "C", true],
  ["(B)", "\\text{(B)}", true],
  ["\\text{Evelyn}", "Evelyn", true],
  ["\\textbf{yes}", "Yes", true],
  ["\\text{east}", "west", false],
  // \left / \right, tuples and intervals (in order, brackets matter)
  ["\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", true],
  ["(1, 2)", "(1,2)", true],
  ["(2, 1)", "(1,2)", false],
  ["(1, 2, 3)", "(1, 2)", false],
  ["(0.5, 2)", "(\\frac12, 2)", true],
  ["[1, 2)", "[1,2)", true],
  ["(1, 2]", "[1,2)", false],
  ["(-\\infty, 3]", "(-\\infty,3]", true],
  ["(-\\infty, -2) \\cup (2, \\infty)", "(-\\infty,-2)\\cup(2,\\infty)", true],
  ["(2, \\infty) \\cup (-\\infty, -2)", "(-\\infty,-2)\\cup(2,\\infty)", true],
  ["(-\\infty, -2] \\cup (2, \\infty)", "(-\\infty,-2)\\cup(2,\\infty)", false],
  // sets and bare lists in any order
  ["\\{1, 2, 3\\}", "\\{3, 2, 1\\}", true],
  ["\\left\\{ -2, 2 \\right\\}", "\\{2,-2\\}", true],
  ["\\{1, 2\\}", "\\{1, 3\\}", false],
  ["2, -2", "-2, 2", true],
  ["-2, 2", "-2,2,3", false],
  ["\\frac{1}{2}, 3", "3, 0.5", true],
  // matrices and vectors
  ["\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", true],
  ["\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", true],
  ["\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", false],
  // misc
  ["\\infty", "\\infty", true],
  ["-\\infty", "\\infty", false],
  ["\\displaystyle\\frac{1}{4}", "\\frac14", true],
  ["\\dfrac{3}{4}\\!", "0.75", true],
  ["", "5", false],
];

Deno.test(`math: ${GRADED.length} graded answer pairs (MATH formats)`, () => {
  const wrong = GRADED.filter(([a, b, want]) => answersEqual(a, b) !== want)
    .map(([a, b, want]) =>
      `${JSON.stringify(a)} vs ${JSON.stringify(b)}: expected ${want ? "equal" : "different"}`
    );
  if (wrong.length) throw new Error(`${wrong.length} wrong:\n${wrong.join("\n")}`);
  if (GRADED.length < 80) throw new Error("fewer than 80 graded cases");
});

Deno.test("math: graded pairs agree both ways round (equivalence is symmetric)", () => {
  const wrong = GRADED.filter(([a, b, want]) => a !== "" && answersEqual(b, a) !== want)
    .map(([a, b]) => `${JSON.stringify(b)} vs ${JSON.stringify(a)}`);
  if (wrong.length) throw new Error(wrong.join("\n"));
});

Deno.test("math: extraction: last balanced \\boxed, \\fbox, nested braces, escaped braces, 'the answer is'", () => {
  eq(lastBoxed("so \\boxed{1} then \\boxed{\\frac{2}{3}}"), "\\frac{2}{3}", "last of two");
  eq(lastBoxed("\\fbox{7}"), "7", "fbox");
  eq(lastBoxed("\\boxed{\\{1, 2\\}}"), "\\{1, 2\\}", "escaped braces inside");
  eq(lastBoxed("$\\boxed 5$"), "5", "\\boxed 5 form");
  eq(lastBoxed("\\boxed{3} and \\boxed{4"), "3", "an unbalanced last box falls back to the previous one");
  eq(lastBoxed("\\boxedx{3}"), undefined, "another macro");
  eq(lastBoxed("no box"), undefined, "none");
  eq(extractAnswer("Thus the answer is $\\frac{1}{2}$. I hope it is correct."), {
    answer: "\\frac{1}{2}",
    source: "answer-is",
  }, "Minerva form");
  eq(extractAnswer("The final answer is: **42**."), { answer: "42", source: "answer-is" }, "bold");
  eq(extractAnswer("The answer is 3.5"), { answer: "3.5", source: "answer-is" }, "decimal kept");
  eq(extractAnswer("the answer is 1. Wait, \\boxed{2}"), { answer: "2", source: "boxed" }, "boxed wins");
  eq(extractAnswer("I don't know"), undefined, "no answer");
  eq(normalizeAnswer("\\left( 1, \\frac12 \\right)"), "(1,\\frac{1}{2})", "normalized tuple");
  eq(normalizeAnswer("x = \\$1,000"), "1000", "dollars, thousands, x =");
});

Deno.test("math: full completions graded against references (a reference with \\boxed gives its content)", () => {
  const cases: [string, string, boolean][] = [
    ["We compute 6/8 = 3/4. So the answer is $\\boxed{\\dfrac{3}{4}}$.", "\\frac{3}{4}", true],
    ["... hence $\\boxed{0.75}$", "\\frac34", true],
    ["The roots are 2 and -2, so \\boxed{-2, 2}", "2,-2", true],
    ["Therefore, the answer is $72$.", "72", true],
    ["Therefore, the answer is $71$.", "72", false],
    ["\\boxed{72}", "Natalia sold 48/2 = 24 clips in May, so $48+24=\\boxed{72}$.", true],
    ["No final answer here.", "72", false],
  ];
  for (const [c, gt, want] of cases) eq(gradeMath(c, gt).correct, want, `${JSON.stringify(c)} vs ${gt}`);
  eq(
    mathScore({ groundTruth: "72" }, "\\boxed{72}", { finished: true }),
    { score: 1, extracted: true },
    "score",
  );
  eq(mathScore({ groundTruth: "72" }, "hmm", { finished: true }), { score: 0, extracted: false }, "none");
});

Deno.test("exact and format rewards", () => {
  eq(
    exactScore({ groundTruth: "Paris" }, "The answer is Paris.", { finished: true }),
    1,
    "exact via answer is",
  );
  eq(exactScore({ groundTruth: " Paris " }, "Paris", { finished: true }), 1, "whole completion, trimmed");
  eq(exactScore({ groundTruth: "paris" }, "\\boxed{Paris}", { finished: true }), 0, "case matters");
  eq(formatScore({ groundTruth: "1" }, "\\boxed{1}", { finished: true }), {
    score: 1,
    stopped: true,
    answer: true,
  }, "well formed");
  eq(formatScore({ groundTruth: "1" }, "\\boxed{1}", { finished: false }), {
    score: 0,
    stopped: false,
    answer: true,
  }, "cut at the length limit");
  eq(formatScore({ groundTruth: "1" }, "no answer", { finished: true }), {
    score: 0,
    stopped: true,
    answer: false,
  }, "no answer");
});

/** Hostile completions: each is graded (score 0, no exception) well within the default 5 s timeout. */
const HOSTILE: readonly [string, string][] = [
  ["unbalanced braces", "\\boxed{" + "{".repeat(50_000)],
  ["unbalanced closing", "\\boxed{1}}}}}}" + "}".repeat(10_000)],
  ["thousands of nested parentheses", `\\boxed{${"(".repeat(5000)}1${")".repeat(5000)}}`],
  ["nested parentheses unbalanced", `\\boxed{${"(".repeat(1900)}}`],
  ["nested braces", `\\boxed{${"{".repeat(999)}1${"}".repeat(999)}}`],
  ["a huge string", "x".repeat(5_000_000)],
  ["many boxes, none closed", "\\boxed{".repeat(100_000)],
  ["many closed boxes", "\\boxed{1}".repeat(100_000)],
  ["backslashes", "\\".repeat(1_000_000)],
  ["answer is, repeated", "the answer is ".repeat(200_000)],
  ["a long answer", `\\boxed{${"1+".repeat(900)}1}`],
  ["an exponent tower", "\\boxed{9^{9^{9^9}}}"],
  ["a huge sum", "\\boxed{\\sum_{n=1}^{10^9} n}"],
  ["a huge product", "\\boxed{\\prod_{k=1}^{10^8} k}"],
  ["a huge binomial", "\\boxed{\\binom{10^9}{5\\cdot 10^8}}"],
  ["a big factorial", "\\boxed{(10^{100})!}"],
  ["a big power", "\\boxed{12345678901234567890^{123456}}"],
  ["regex bait: spaces then letters", `\\boxed{1${" ".repeat(100_000)}a}`],
  ["regex bait: text macros", `\\boxed{${"\\text{".repeat(600)}}`],
  ["regex bait: frac", `\\boxed{${"\\frac{".repeat(500)}}`],
  ["lone dollar signs", "$".repeat(1_000_000) + "the answer is $"],
  ["deep \\cup chain", `\\boxed{${"(1,2)\\cup".repeat(300)}(1,2)}`],
  ["a long list", `\\boxed{${"1,".repeat(900)}1}`],
  ["NUL and invalid surrogates", "\\boxed{\u0000\ud800\udfff\ud800}"],
];

Deno.test("math: hostile input is graded within the timeout, each case well under a second", () => {
  const slow: string[] = [];
  for (const [name, completion] of HOSTILE) {
    const t0 = performance.now();
    const g = gradeMath(completion, "(1,2)");
    const ms = performance.now() - t0;
    if (typeof g.correct !== "boolean") throw new Error(`${name}: no grade`);
    if (ms > 1000) slow.push(`${name}: ${ms.toFixed(0)} ms`);
  }
  if (slow.length) throw new Error(`slow cases:\n${slow.join("\n")}`);
});

Deno.test("math: hostile references are bounded too", () => {
  const t0 = performance.now();
  for (const [, s] of HOSTILE.slice(0, 12)) gradeMath("\\boxed{1}", s);
  const ms = performance.now() - t0;
  if (ms > 3000) throw new Error(`took ${ms} ms`);
});
