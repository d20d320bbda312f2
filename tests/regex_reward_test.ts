/** The `regex` reward runs in a worker: a pattern that backtracks for ever is timed out and scoring goes on. */
import { resolveRewards } from "../formats/rewards.ts";

const row = { groundTruth: "" };
const done = { finished: true };
// (a+)+$ on 40 a's and a b backtracks through ~2^40 ways to split the a's: hours, not milliseconds.
const EVIL = "/^(a+)+$/";
const evilText = "a".repeat(40) + "b";

Deno.test("regex reward: matches score 1 in a worker; a catastrophic pattern times out, counted, and the next call runs", async () => {
  const set = await resolveRewards("regex", { pattern: EVIL, timeoutMs: 300 });
  try {
    const hit = await set.score(row, "aaaa", done);
    if (hit.score !== 1 || hit.errors !== 0) throw new Error(`a match: ${JSON.stringify(hit)}`);
    const t0 = performance.now();
    const stuck = await set.score(row, evilText, done);
    const ms = performance.now() - t0;
    if (stuck.score !== 0 || stuck.errors !== 1 || !stuck.failures[0].includes("timed out after 300 ms")) {
      throw new Error(`the catastrophic call: ${JSON.stringify(stuck)}`);
    }
    // 300 ms of timeout plus a worker's start; well under the hours the match would take.
    if (ms > 10_000) throw new Error(`the timed-out call took ${ms} ms`);
    const miss = await set.score(row, "b", done);
    if (miss.score !== 0 || miss.errors !== 0) {
      throw new Error(`a fresh worker after the timeout: ${JSON.stringify(miss)}`);
    }
  } finally {
    set.close();
  }
});

Deno.test("regex reward in this thread (regexInWorker false) scores the same", async () => {
  const set = await resolveRewards("regex", { pattern: "/^A+$/i", regexInWorker: false });
  try {
    const s = [await set.score(row, "aaA", done), await set.score(row, "ab", done)].map((x) => x.score);
    if (s.join() !== "1,0") throw new Error(`scores ${s}`);
  } finally {
    set.close();
  }
});
