/**
 * Issue 13.8: a run killed with SIGKILL at seeded random moments (during set-up, a step, an evaluation, and
 * inside checkpoint writes, which BUPO_TEST_CHECKPOINT_DELAY_MS slows down) and resumed each time ends
 * bit-identical to the uninterrupted run: every checkpoint file, the logs (but the timings) and the run's config
 * (but its folder). No kill leaves a folder that cannot go on: either nothing was written yet (the same command
 * starts it) or it holds the run's marker and `--resume` continues it.
 */
import { splitmix32 } from "../core/rng.ts";
import { modelDir, tmp } from "./train_fixture.ts";
import { tinyTrainArgs } from "./cli_util.ts";

const root = new URL("..", import.meta.url).pathname;

/** The run: 6 BuPO steps (layer 0 for 2 steps) with a KL term, a checkpoint every step, on the CPU backend. */
const runArgs = (out: string): string[] => [
  "run",
  "-A",
  `${root}train.ts`,
  ...tinyTrainArgs(modelDir, out, { steps: 6, evalEvery: 2, evalProblems: 3, checkpointEvery: 1 }),
  "--device",
  "cpu",
  "--layer",
  "0",
  "--phase-steps",
  "2",
  "--kl",
  "0.05",
  "--quiet",
];

const CHECKPOINT_DELAY_MS = 40;

const spawn = (out: string, resume: boolean, delay: boolean) => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...runArgs(out), ...(resume ? ["--resume"] : [])],
    cwd: root,
    env: { NO_COLOR: "1", ...(delay ? { BUPO_TEST_CHECKPOINT_DELAY_MS: String(CHECKPOINT_DELAY_MS) } : {}) },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  return { child, stderr: new Response(child.stderr).text() };
};

const run = async (out: string, resume: boolean) => {
  const { child, stderr } = spawn(out, resume, false);
  const status = await child.status;
  if (status.code !== 0) {
    throw new Error(`${resume ? "resume" : "run"} of ${out}: exit ${status.code}\n${await stderr}`);
  }
  await stderr;
};

const list = async (dir: string): Promise<string[] | null> => {
  try {
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    return names;
  } catch {
    return null;
  }
};

const lines = async (file: string) =>
  (await Deno.readTextFile(file).catch(() => "")).split("\n").filter((l) => l.trim()).length;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The comparable content of a run folder: file bytes by path, with timings and the folder name taken out. */
const contents = async (dir: string): Promise<Map<string, string>> => {
  const out = new Map<string, string>();
  const strip = (x: Record<string, unknown>) => {
    const { time: _t, ...rest } = x;
    return rest;
  };
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${dir}/${rel}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        await walk(path);
        continue;
      }
      const bytes = await Deno.readFile(`${dir}/${path}`);
      let text: string;
      if (path === "metrics.jsonl") {
        text = new TextDecoder().decode(bytes).trim().split("\n").map((l) =>
          JSON.stringify(strip(JSON.parse(l)))
        )
          .join("\n");
      } else if (path === "config.json" || /state\.json$/.test(path)) {
        const j = JSON.parse(new TextDecoder().decode(bytes));
        const cfg = path === "config.json" ? j : j.config;
        delete cfg.out;
        if (j.metrics) j.metrics = strip(j.metrics);
        text = JSON.stringify(j);
      } else if (path === "bupo-run.json" || path === "plots.svg") {
        text = "(present)"; // the marker's creation time; the plots title names the folder
      } else {
        const h = await crypto.subtle.digest("SHA-256", bytes);
        text = [...new Uint8Array(h)].map((b) => b.toString(16).padStart(2, "0")).join("");
      }
      out.set(path, text);
    }
  };
  await walk("");
  return out;
};

Deno.test("SIGKILL at random moments, each followed by a resume, ends bit-identical to the uninterrupted run", async () => {
  const reference = `${tmp}/kill-reference`;
  await run(reference, false);
  const want = await contents(reference);
  for (
    const f of ["checkpoints/step-000006/model.safetensors", "checkpoints/step-000006/optimizer.safetensors"]
  ) {
    if (!want.has(f)) throw new Error(`the reference run lacks ${f}: ${[...want.keys()]}`);
  }

  const rand = splitmix32(1313);
  const u = () => rand() / 2 ** 32;
  const log: string[] = [];
  let kills = 0, inCheckpoint = 0, chains = 0;
  while (kills < 12) {
    const out = `${tmp}/kill-${++chains}`;
    for (let attempt = 0;; attempt++) {
      const before = await list(out);
      const resume = before !== null && before.includes("bupo-run.json");
      // Every folder a kill left is empty (or absent) or a marked run: anything else could not go on.
      if (before !== null && before.length > 0 && !resume) {
        throw new Error(`${out} after a kill holds ${before} without a marker:\n${log.join("\n")}`);
      }
      if (kills >= 12 || attempt >= 8) {
        await run(out, resume); // the last start runs to the end
        break;
      }
      const { child, stderr } = spawn(out, resume, true);
      const t0 = performance.now();
      const mode = Math.floor(u() * 3);
      const metricsBefore = await lines(`${out}/metrics.jsonl`);
      const wait = mode === 0 ? 2500 * u() : mode === 1 ? 150 * u() : 300 * u();
      let exited = false;
      child.status.then(() => (exited = true));
      let armed = mode === 0 ? t0 : -1;
      while (!exited) {
        if (armed < 0) {
          const hit = mode === 1
            ? ((await list(`${out}/checkpoints`)) ?? []).some((n) => n.startsWith(".tmp-"))
            : (await lines(`${out}/metrics.jsonl`)) > metricsBefore;
          if (hit) armed = performance.now();
        }
        if (armed >= 0 && performance.now() - armed >= wait) break;
        if (performance.now() - t0 > 60_000) throw new Error(`${out}: the child made no progress in 60 s`);
        await sleep(2);
      }
      try {
        if (!exited) child.kill("SIGKILL");
      } catch { /* it exited between the check and the kill */ }
      const s = await child.status;
      const err = await stderr;
      if (s.signal !== "SIGKILL") {
        if (s.code !== 0) {
          throw new Error(`${out}: the child failed before its kill: ${err}\n${log.join("\n")}`);
        }
        log.push(`${out}: finished before the kill (mode ${mode})`);
        break;
      }
      kills++;
      const tmpLeft = ((await list(`${out}/checkpoints`)) ?? []).some((n) => n.startsWith(".tmp-"));
      if (tmpLeft) inCheckpoint++;
      log.push(
        `${out}: kill ${kills} (mode ${mode}, ${(performance.now() - t0).toFixed(0)} ms after start${
          tmpLeft ? ", inside a checkpoint write" : ""
        }); latest ${await Deno.readTextFile(`${out}/latest.json`).catch(() => "none")}`.trim(),
      );
    }
    const got = await contents(out);
    const diff = [...new Set([...want.keys(), ...got.keys()])].filter((k) => want.get(k) !== got.get(k));
    if (diff.length) {
      throw new Error(
        `${out} differs from the uninterrupted run in ${diff.join(", ")}:\n${
          diff.map((k) => `${k}:\n  ${want.get(k)}\n  ${got.get(k)}`).join("\n")
        }\n${log.join("\n")}`,
      );
    }
  }
  if (inCheckpoint < 2) {
    throw new Error(`only ${inCheckpoint} kills landed inside a checkpoint write:\n${log.join("\n")}`);
  }
  console.log(
    `${kills} kills over ${chains} runs, ${inCheckpoint} inside a checkpoint write; every run resumed to the same bytes`,
  );
});
