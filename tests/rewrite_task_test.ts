/** The rewriting task's contract: deterministic problems, disjoint splits, correct solutions, exact rewards. */
import fc from "fast-check";
import { ConfigError } from "../core/errors.ts";
import {
  rewriteAnswer,
  rewriteChain,
  rewriteOnce,
  rewriteSolution,
  rewriteTask,
  rewriteWellFormed,
} from "../tasks/rewrite.ts";
import { drawProblems, outsideAlphabet } from "../tasks/task.ts";
import { eq } from "./util.ts";

/** The reduced word by a stack (a second, independent reduction: the system is confluent). */
const reduce = (w: string) => {
  const st: string[] = [];
  for (const ch of w) st[st.length - 1] === ch ? st.pop() : st.push(ch);
  return st.join("");
};

Deno.test("rewriting: one step cancels the leftmost pair; the chain ends at the stack-reduced word", () => {
  eq(rewriteOnce("abccba"), "abba", "leftmost pair");
  eq(rewriteOnce("abc"), null, "irreducible");
  eq(rewriteChain("abccba"), ["abba", "aa", ""], "chain");
  eq(rewriteSolution("abccba"), "abba,aa,_|_.", "solution with the empty word");
  fc.assert(fc.property(fc.string({ unit: fc.constantFrom("a", "b", "c"), maxLength: 14 }), (w) => {
    const chain = rewriteChain(w);
    eq(chain.length === 0 ? w : chain[chain.length - 1], reduce(w), `final word of ${w}`);
    chain.forEach((x, i) => eq(x.length, w.length - 2 * (i + 1), `each step removes one pair (${w})`));
  }));
});

Deno.test("rewrite task: problems are pure, the splits disjoint, solutions earn the full reward", () => {
  const t = rewriteTask();
  const seen = { train: new Set<string>(), eval: new Set<string>() };
  for (const split of ["train", "eval"] as const) {
    for (const s of [1, 2]) {
      for (const p of drawProblems(t, split, s, 0, 1500)) {
        eq(p, rewriteTask().problem(split, Number(p.id.split("/")[3]), s), `pure: ${p.id}`);
        seen[split].add(p.prompt);
        eq(t.reward(p, p.solution), 1, `solution of ${p.prompt}`);
        eq(t.format!(p, p.solution), true, `solution is well formed: ${p.prompt}`);
        eq(p.answer, reduce(p.prompt.slice(0, -1)) || "_", `answer of ${p.prompt}`);
        eq(rewriteChain(p.prompt.slice(0, -1)).length, p.difficulty, `difficulty = steps of ${p.prompt}`);
        eq(outsideAlphabet(t.alphabet, p.prompt + p.solution), [], "alphabet closed");
        if (p.prompt.length > t.maxPromptChars! || p.solution.length > t.maxSolutionChars!) {
          throw new Error(`${p.prompt} ${p.solution} exceeds the stated bounds`);
        }
      }
    }
  }
  const both = [...seen.train].filter((x) => seen.eval.has(x));
  eq(both, [], "no word in both splits");
  if (seen.eval.size < 50) throw new Error(`eval has only ${seen.eval.size} distinct words`);
});

Deno.test("rewrite task: rewards are exact on the final word; format needs the chain shape", () => {
  const t = rewriteTask();
  const p = { id: "x", prompt: "abccba=", answer: "_", solution: "abba,aa,_|_.", difficulty: 3 };
  eq(t.reward(p, "abba,aa,_|_.junk"), 1, "text after the first . is ignored");
  eq(t.reward(p, "_|_."), 1, "the reward reads the final word only");
  eq(t.reward(p, "abba|a."), 0, "wrong final word");
  eq(t.reward(p, "abba,aa,_|_"), 0, "no end mark");
  eq(t.reward(p, "a|b|_."), 0, "two bars");
  eq(rewriteAnswer("ab|ab."), "ab", "answer");
  eq(rewriteWellFormed("abc", "abba,aa|aa."), true, "well formed, wrong");
  eq(rewriteWellFormed("abc", "abxa|aa."), false, "a letter outside the task");
  eq(rewriteWellFormed("abc", "|aa."), false, "empty chain");
});

Deno.test("rewrite task: bad options are ConfigErrors naming the field", () => {
  for (
    const [o, field] of [
      [{ letters: "a" }, "letters"],
      [{ letters: "aab" }, "letters"],
      [{ core: [3, 1] }, "core"],
      [{ pairs: [0, 2] }, "pairs"],
      [{ evalEvery: 1 }, "evalEvery"],
    ] as const
  ) {
    try {
      rewriteTask(o as never);
      throw new Error(`accepted ${JSON.stringify(o)}`);
    } catch (e) {
      if (!(e instanceof ConfigError) || e.field !== field) throw e;
    }
  }
});
