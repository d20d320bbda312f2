/** Rewards: the spec, weighted scoring with errors counted, module rewards in workers (throw, hang, NaN). */
import { ConfigError } from "../core/errors.ts";
import { loadRewardModule, moduleRewardName, resolveRewards } from "../formats/rewards.ts";
import { checkRewardValue, parseRewardSpec, type Reward, scoreCompletion } from "../tasks/reward.ts";
import { eq, refusesOn, throwsWith } from "./util.ts";

const FIX = new URL("./fixtures/rewards/", import.meta.url).pathname;
const rejects = (f: () => Promise<unknown>, parts: string[]): Promise<ConfigError> =>
  throwsWith(f, ConfigError, parts);
const row = (groundTruth: string) => ({ groundTruth });
const done = { finished: true };

Deno.test("reward spec: names, weights, paths with colons, bad items", () => {
  eq(
    parseRewardSpec("math:1,format:0.1"),
    [{ name: "math", weight: 1 }, { name: "format", weight: 0.1 }],
    "two",
  );
  eq(parseRewardSpec("math"), [{ name: "math", weight: 1 }], "default weight");
  eq(parseRewardSpec("./r.ts:-2.5e-1"), [{ name: "./r.ts", weight: -0.25 }], "path and weight");
  eq(
    parseRewardSpec("C:\\r\\mine.ts"),
    [{ name: "C:\\r\\mine.ts", weight: 1 }],
    "a drive letter is no weight",
  );
  refusesOn("--reward", ["", "math,", "math:", ",format"], parseRewardSpec);
  eq(moduleRewardName("./rewards/mine.ts"), "mine", "module name");
});

Deno.test("reward values: numbers, booleans, {score, ...parts}; non-finite and score-less ones rejected", () => {
  eq(checkRewardValue(0.5), { ok: true, score: 0.5, parts: {} }, "number");
  eq(checkRewardValue(true), { ok: true, score: 1, parts: {} }, "boolean");
  eq(checkRewardValue({ score: 1, a: 2, b: false, c: "x", d: NaN }), {
    ok: true,
    score: 1,
    parts: { a: 2, b: 0 },
  }, "parts");
  for (const bad of [NaN, Infinity, -Infinity, { score: NaN }, { value: 1 }, null, "1", [1]]) {
    if (checkRewardValue(bad).ok) throw new Error(`${String(bad)} accepted`);
  }
});

Deno.test("weighted scoring in this thread: sum, parts, and errors (throw, NaN, slow async) scored 0", async () => {
  const r = (name: string, score: Reward["score"]): Reward => ({ name, score });
  const rewards = [
    { reward: r("one", () => 1), weight: 2 },
    { reward: r("parts", () => ({ score: 0.5, found: true })), weight: 0.5 },
    {
      reward: r("boom", () => {
        throw new Error("no");
      }),
      weight: 1,
    },
    { reward: r("nan", () => NaN), weight: 1 },
    { reward: r("slow", () => new Promise<number>((res) => setTimeout(() => res(1), 400))), weight: 1 },
  ];
  const s = await scoreCompletion(rewards, row("x"), "c", done, { timeoutMs: 50 });
  eq(s.score, 2.25, "weighted sum");
  eq(s.parts, { one: 1, parts: 0.5, "parts/found": 1, boom: 0, nan: 0, slow: 0 }, "parts");
  eq(s.errors, 3, "errors");
  eq(s.failures.map((f) => f.split(":")[0]), ["boom", "nan", "slow"], "failures");
  if (!s.failures[2].includes("timed out after 50 ms")) throw new Error(s.failures[2]);
  await new Promise((res) => setTimeout(res, 420)); // let the slow reward's timer finish
});

Deno.test("built-ins by name: math (in a worker), exact, format, regex; unknown and doubled names", async () => {
  const set = await resolveRewards("math:1,format:0.5,exact:0.25,regex:0.125", { pattern: "/boxed/i" });
  try {
    const s = await set.score(row("\\frac12"), "so \\boxed{0.5}", done);
    eq(s.parts, {
      math: 1,
      "math/extracted": 1,
      format: 1,
      "format/stopped": 1,
      "format/answer": 1,
      exact: 0,
      regex: 1,
    }, "parts");
    eq(s.score, 1 + 0.5 + 0.125, "score");
    eq(s.errors, 0, "no errors");
  } finally {
    set.close();
  }
  await rejects(() => resolveRewards("mth"), ["unknown reward", "mth"]);
  await rejects(() => resolveRewards("exact,exact:2"), ["named twice"]);
  await rejects(() => resolveRewards("regex"), ["--reward-pattern"]);
  await rejects(() => resolveRewards("regex", { pattern: "(" }), ["not a valid regular expression"]);
});

Deno.test("a module's default export as a reward (parts logged), and verl's compute_score", async () => {
  const set = await resolveRewards(`${FIX}length.ts:1,${FIX}verl_style.ts:2`);
  try {
    const s = await set.score(
      { groundTruth: "42", dataSource: "bonus", extraInfo: { bonus: 0.5 } },
      "it is 42",
      done,
    );
    eq(s.parts, {
      length: 1,
      "length/chars": 8,
      "length/finished": 1,
      "length/hasTruth": 1,
      verl_style: 1.5,
    }, "parts");
    eq(s.score, 1 + 2 * 1.5, "score");
  } finally {
    set.close();
  }
});

Deno.test("module rewards that throw, return NaN, hang (sync and async) or crash score 0, counted; scoring goes on", async () => {
  const reward = await loadRewardModule(`${FIX}misbehaving.ts`, { timeoutMs: 300 });
  const rewards = [{ reward, weight: 1 }];
  try {
    const cases = ["ok", "throw", "nan", "hang", "ok", "async-hang", "object", "uncaught", "ok"];
    const t0 = performance.now();
    const got = [];
    for (const c of cases) got.push(await scoreCompletion(rewards, row(c), "x", done, { timeoutMs: 300 }));
    const ms = performance.now() - t0;
    eq(got.map((s) => s.score), [1, 0, 0, 0, 1, 0, 0, 0, 1], "scores");
    eq(got.map((s) => s.errors), [0, 1, 1, 1, 0, 1, 1, 1, 0], "errors");
    const why = got.map((s) => s.failures[0] ?? "");
    for (
      const [i, part] of [[1, "this reward throws"], [2, "NaN"], [3, "timed out"], [5, "timed out"], [
        6,
        "without a numeric score",
      ], [7, "thrown from a timer"]] as const
    ) {
      if (!why[i].includes(part)) throw new Error(`case ${cases[i]}: "${why[i]}" lacks "${part}"`);
    }
    // The two hangs cost their workers; a thrown-later error is reported without losing the worker.
    eq(reward.restarts(), 2, "workers replaced");
    if (ms > 20_000) throw new Error(`took ${ms} ms`);
    // Concurrent calls queue behind a hung one and still get their own full timeout.
    const many = await Promise.all(
      ["hang", "ok", "ok"].map((c) => scoreCompletion(rewards, row(c), "x", done, { timeoutMs: 300 })),
    );
    eq(many.map((s) => s.score), [0, 1, 1], "queued behind a hang");
  } finally {
    reward.close();
  }
});

Deno.test("module loading errors are ConfigErrors naming the flag and the path", async () => {
  await rejects(() => loadRewardModule(`${FIX}no_reward.ts`), [
    "--reward",
    "no_reward.ts",
    "exports no reward",
  ]);
  await rejects(() => loadRewardModule(`${FIX}missing.ts`), ["missing.ts", "cannot import"]);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/broken.ts`, "export default (=> 1;\n");
    await rejects(() => loadRewardModule(`${dir}/broken.ts`), ["broken.ts", "cannot import"]);
    await Deno.writeTextFile(`${dir}/slow_load.ts`, "for (;;) {}\nexport default () => 1;\n");
    await rejects(() => loadRewardModule(`${dir}/slow_load.ts`, { loadTimeoutMs: 500 }), [
      "longer than 500 ms",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the math reward in its worker answers hostile completions within the timeout, without errors", async () => {
  const set = await resolveRewards("math", { timeoutMs: 5000 });
  try {
    const hostile = [
      "\\boxed{" + "{".repeat(50_000),
      `\\boxed{${"(".repeat(5000)}1${")".repeat(5000)}}`,
      "x".repeat(2_000_000),
      "\\boxed{9^{9^{9^9}}}",
      "\\boxed{\\sum_{n=1}^{10^9} n}",
    ];
    for (const c of hostile) {
      const t0 = performance.now();
      const s = await set.score(row("1"), c, done);
      const ms = performance.now() - t0;
      eq([s.score, s.errors], [0, 0], `score of ${JSON.stringify(c.slice(0, 30))}`);
      if (ms > 5000) throw new Error(`${JSON.stringify(c.slice(0, 30))}: ${ms} ms`);
    }
  } finally {
    set.close();
  }
});
