/** Rewards run in child processes: a reward that runs for ever (a regex that backtracks, a loop) is killed at the timeout. */
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

Deno.test("a timed-out reward's process is killed: nothing keeps running after the timeout", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bupo-reward-kill-" });
  try {
    // The reward writes its process id, then loops for ever (a Worker would keep spinning after terminate()).
    await Deno.writeTextFile(
      `${dir}/spin.ts`,
      `export default () => { Deno.writeTextFileSync(${JSON.stringify(`${dir}/pid`)}, String(Deno.pid)); ` +
        "for (;;) {} };\n",
    );
    const set = await resolveRewards(`${dir}/spin.ts`, { timeoutMs: 300 });
    let s;
    try {
      s = await set.score(row, "x", done);
    } finally {
      set.close();
    }
    if (s.errors !== 1 || !s.failures[0].includes("timed out after 300 ms")) {
      throw new Error(JSON.stringify(s));
    }
    const pid = Number(await Deno.readTextFile(`${dir}/pid`));
    if (!(pid > 0) || pid === Deno.pid) throw new Error(`the reward ran in process ${pid}, not a child`);
    if (Deno.build.os !== "linux") return; // /proc is how this test looks; the kill is the same elsewhere
    const alive = () => Deno.stat(`/proc/${pid}`).then(() => true, () => false);
    for (let i = 0; i < 50 && await alive(); i++) await new Promise((r) => setTimeout(r, 20));
    if (await alive()) {
      const state = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
      // A zombie (state Z) has stopped running; only its exit status is left for the parent to collect.
      if (!/^\d+ \(.*\) Z/.test(state)) {
        throw new Error(`process ${pid} still runs 1 s after the timeout: ${state}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
