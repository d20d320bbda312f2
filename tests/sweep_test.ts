/**
 * Sweeps: the flag kit's repeatable rows and number words, grid / seed / baseline parsing with errors that name the
 * flag, the cells of a grid and where the baseline sits; a 2 x 2 grid x 2 seeds of 2-step runs (plus a baseline
 * cell) killed part-way and resumed writes the same report as an uninterrupted sweep; a folder made with other
 * settings stops the sweep before any run; compare refuses a mismatched reuse and checks its number flags.
 */
import { Effect, Exit } from "effect";
import { ConfigError } from "../core/errors.ts";
import { defineCommand, helpText, parseFlags } from "../cli/flags.ts";
import { DEFAULTS, type TrainConfig } from "../training/config.ts";
import {
  configDiff,
  parseAxis,
  parseBaseline,
  parseSeeds,
  planCells,
  runSweep,
  type SweepSpec,
} from "../training/sweep.ts";
import { cpu32 } from "./util.ts";
import { modelDir, small, tmp } from "./train_fixture.ts";
import { runScript, TINY_EVAL } from "./cli_util.ts";

/** The ConfigError `f` throws, checked against `re` (fails when it throws none or another error). */
const refuses = (f: () => unknown, re: RegExp) => {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError && re.test(e.message)) return;
    throw new Error(`expected a ConfigError matching ${re}, got ${e}`);
  }
  throw new Error(`expected a ConfigError matching ${re}, got none`);
};

Deno.test("flags: a repeatable row collects every value in order; number rows may accept words", () => {
  const cmd = defineCommand({
    name: "t",
    summary: "test",
    usage: ["t"],
    flags: {
      grid: { kind: "str", repeat: true, help: "axes" },
      k: { kind: "int", min: 0, words: ["auto"], help: "a layer" },
    },
  });
  const p = parseFlags(cmd, ["--grid", "a=1", "--k", "auto", "--grid=b=2,3"]);
  if (p.help || p.values.grid.join(" ") !== "a=1 b=2,3" || p.values.k !== "auto") {
    throw new Error(JSON.stringify(p));
  }
  if (![...p.given].includes("grid")) throw new Error("a repeated flag is given");
  const none = parseFlags(cmd, ["--k", "4"]);
  if (none.help || none.values.grid.length !== 0 || none.values.k !== 4) {
    throw new Error(JSON.stringify(none));
  }
  refuses(() => parseFlags(cmd, ["--k", "-1"]), /^--k: expected an integer \(>= 0\) or "auto", got "-1"$/);
  if (!/--grid VALUE +axes \(repeatable\)/.test(helpText(cmd))) throw new Error(helpText(cmd));
});

Deno.test("parseAxis / parseSeeds / parseBaseline: values checked against train.ts rows, errors name the flag", () => {
  const a = parseAxis("phase-steps=5,10,20");
  if (a.key !== "phaseSteps" || a.flag !== "phase-steps" || a.values.join() !== "5,10,20") {
    throw new Error(JSON.stringify(a));
  }
  if (parseAxis("layer=auto,0").values.join() !== "auto,0") throw new Error("layer auto");
  if (parseAxis("maxNew=3").key !== "maxNew") throw new Error("camelCase keys work too");
  refuses(() => parseAxis("steps=abc"), /^--grid steps: expected a positive integer, got "abc"$/);
  refuses(() => parseAxis("lr=1e-4,-1"), /^--grid lr: expected a positive number, got "-1"$/);
  refuses(() => parseAxis("bogus=1"), /^--grid bogus: not a train.ts flag/);
  refuses(() => parseAxis("seed=1,2"), /seeds are --seeds/);
  refuses(() => parseAxis("out=a,b"), /under the sweep's --out/);
  refuses(() => parseAxis("layer=1,1"), /^--grid layer: 1 is given twice$/);
  refuses(() => parseAxis("layer"), /expected FLAG=V1,V2/);
  refuses(() => parseAxis("layer=1,,2"), /an empty value/);
  if (parseSeeds("1-3,7").join() !== "1,2,3,7" || parseSeeds("4").join() !== "4") throw new Error("seeds");
  refuses(() => parseSeeds("3-1"), /runs backwards/);
  refuses(() => parseSeeds("1,x"), /^--seeds "1,x": expected seeds like 1-5/);
  refuses(() => parseSeeds("1-3,2"), /seed 2 is given twice/);
  const b = parseBaseline(["objective=grpo", "lr=0.001"]);
  if (b.objective !== "grpo" || b.lr !== 0.001) throw new Error(JSON.stringify(b));
  refuses(() => parseBaseline(["lr=fast"]), /^--baseline lr: expected a positive number, got "fast"$/);
});

const specOf = (out: string, o: Partial<SweepSpec> = {}): SweepSpec => ({
  base: small(out),
  fixed: {},
  axes: [parseAxis("layer=0,1"), parseAxis("phase-steps=1,2")],
  seeds: [1, 2],
  baseline: { objective: "grpo" },
  out,
  ...o,
});

Deno.test("planCells: grid order, names, the baseline inside or after the grid; clashes refused", () => {
  const { cells, baseline } = planCells(specOf(`${tmp}/plan`));
  const names = cells.map((c) => c.name).join(" ");
  if (
    names !== "layer-0_phase-steps-1 layer-0_phase-steps-2 layer-1_phase-steps-1 layer-1_phase-steps-2 " +
        "baseline_objective-grpo" || baseline !== 4
  ) {
    throw new Error(`${names} / ${baseline}`);
  }
  if (cells[1].label !== "layer=0 phase-steps=2" || cells[3].coords.join() !== "1,1") {
    throw new Error("labels");
  }
  const inGrid = planCells(specOf(`${tmp}/plan`, { axes: [parseAxis("objective=bupo,grpo")] }));
  if (inGrid.cells.length !== 2 || inGrid.baseline !== 1) throw new Error("the grpo cell is the baseline");
  refuses(() => planCells(specOf(`${tmp}/plan`, { fixed: { layer: 1 } })), /--grid layer and a fixed layer/);
  refuses(
    () => planCells(specOf(`${tmp}/plan`, { axes: [parseAxis("minibatches=1,3")], baseline: undefined })),
    /^cell minibatches=3: --minibatches 3 must divide/,
  );
  // A fixed setting that breaks a rule is named as one, not as a config file's field.
  refuses(
    () =>
      planCells(specOf(`${tmp}/plan`, { base: { ...small(`${tmp}/plan`), group: 1 }, fixed: { group: 1 } })),
    /^cell [^:]+: the sweep's fixed settings \(defaults, --config, flags\): group 1: GRPO needs at least 2/,
  );
  if (configDiff({ ...small("a"), lr: 1 }, small("b")).join() !== "lr") {
    throw new Error("configDiff ignores out");
  }
  if (configDiff({ lr: DEFAULTS.lr }, small("b")).length < 3) throw new Error("missing fields count");
});

/** The first path where two JSON values differ (undefined when equal), for the failure message. */
const firstDiff = (x: unknown, y: unknown, path = ""): string | undefined => {
  if (JSON.stringify(x) === JSON.stringify(y)) return undefined;
  if (typeof x === "object" && x !== null && typeof y === "object" && y !== null) {
    for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) {
      const d = firstDiff(
        (x as Record<string, unknown>)[k],
        (y as Record<string, unknown>)[k],
        `${path}.${k}`,
      );
      if (d) return d;
    }
  }
  return `${path}: ${JSON.stringify(x)?.slice(0, 120)} vs ${JSON.stringify(y)?.slice(0, 120)}`;
};

/** report.json without its resources, report.md without its resources section, and report.svg. */
const reportOf = async (out: string) => {
  const json = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
  const md = await Deno.readTextFile(`${out}/report.md`);
  const { resources, ...rest } = json;
  return {
    json: rest,
    md: md.slice(0, md.indexOf("## Resources")),
    svg: await Deno.readTextFile(`${out}/report.svg`),
    resources,
  };
};

const quietly = async <T>(f: () => Promise<T>): Promise<T> => {
  const log = console.log;
  console.log = () => {};
  try {
    return await f();
  } finally {
    console.log = log;
  }
};

Deno.test({
  name: "a 2 x 2 x 2-seed sweep killed part-way and resumed gives the report of an uninterrupted one",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const whole = `${tmp}/sweep-whole`, cut = `${tmp}/sweep-cut`;
    await quietly(() => Effect.runPromise(runSweep(cpu32, specOf(whole))));
    // Killed inside the fourth run, after its first step (checkpointed: checkpointEvery is 1).
    const first = await quietly(() =>
      Effect.runPromise(runSweep(cpu32, specOf(cut), { interrupt: { runs: 3, steps: 1 } }))
    );
    if (!first.interrupted) throw new Error("the interrupt hook did not stop the sweep");
    if (await Deno.stat(`${cut}/report.json`).then(() => true, () => false)) {
      throw new Error("a report was written");
    }
    const resumed = await quietly(() => Effect.runPromise(runSweep(cpu32, specOf(cut))));
    if (resumed.interrupted) throw new Error("resumed sweep interrupted");
    const a = await reportOf(whole), b = await reportOf(cut);
    const diff = firstDiff(a.json, b.json);
    if (diff) throw new Error(`report.json results differ at ${diff}`);
    if (a.md !== b.md.replaceAll(cut, whole)) throw new Error(`report.md differs:\n${a.md}\n---\n${b.md}`);
    if (a.svg !== b.svg) throw new Error("report.svg differs");
    // What happened where: the resumed sweep reused 3 runs, resumed 1 and trained the other 6.
    const st = b.resources.runs.map((r: { status: string }) => r.status);
    if (st.length !== 7 || st[0] !== "resumed" || st.filter((s: string) => s === "trained").length !== 6) {
      throw new Error(JSON.stringify(b.resources.runs));
    }
    if (a.resources.runs.length !== 10 || !(a.resources.peakBytes > 0) || !(a.resources.wallSeconds > 0)) {
      throw new Error(JSON.stringify(a.resources));
    }
    // The numbers: 5 cells of 2 seeds; 4 comparisons with the baseline, each with per-seed differences.
    const j = a.json;
    if (j.cells.length !== 5 || j.comparisons.length !== 4 || j.baseline.cell !== "baseline_objective-grpo") {
      throw new Error(JSON.stringify(j).slice(0, 400));
    }
    for (const c of j.cells) {
      for (const m of ["avgAtK", "passAtK", "greedy"]) {
        const e = c[m];
        const mean = (e.values[0] + e.values[1]) / 2;
        if (e.n !== 2 || Math.abs(e.mean - mean) > 1e-12 || !(e.lo <= e.mean && e.mean <= e.hi)) {
          throw new Error(`${c.name} ${m}: ${JSON.stringify(e)}`);
        }
      }
    }
    for (const c of j.comparisons) {
      const cell = j.cells.find((x: { name: string }) => x.name === c.cell);
      const base = j.cells[4];
      const d = c.avgAtK.diffs;
      if (
        d.length !== 2 ||
        d.some((x: number, i: number) => x !== cell.avgAtK.values[i] - base.avgAtK.values[i])
      ) {
        throw new Error(`${c.cell}: diffs ${d}`);
      }
      if (!(c.avgAtK.signP > 0 && c.avgAtK.signP <= 1 && c.avgAtK.permutationExact)) throw new Error("tests");
    }
    // The figure: two heatmaps of 2 x 2 cells, banded curves, the phase switch at step 1 (phase-steps 1 < 2 steps).
    if ((a.svg.match(/class="cell"/g) ?? []).length !== 8) throw new Error("heatmap cells");
    if (!a.svg.includes('class="band"') || !/BuPO phase ends \(step 1\)/.test(a.svg)) {
      throw new Error("curves");
    }
    // Every run's folder holds a finished run.
    for (const r of j.cells.flatMap((c: { runs: { dir: string }[] }) => c.runs)) {
      const latest = JSON.parse(await Deno.readTextFile(`${cut}/${r.dir}/latest.json`));
      if (latest.step !== 2) throw new Error(`${r.dir}: step ${latest.step}`);
    }
  },
});

Deno.test({
  name: "a sweep stops before any run when a folder holds a run made with other settings",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = `${tmp}/sweep-mismatch`;
    const spec = specOf(out, { axes: [parseAxis("layer=0")], seeds: [1], baseline: undefined });
    await quietly(() => Effect.runPromise(runSweep(cpu32, spec)));
    const before = await Deno.readTextFile(`${out}/report.json`);
    const changed: SweepSpec = { ...spec, base: { ...spec.base, lr: 0.001 } as TrainConfig };
    const exit = await quietly(() => Effect.runPromiseExit(runSweep(cpu32, changed)));
    if (Exit.isSuccess(exit)) throw new Error("a mismatched folder was reused");
    const e = exit.cause.toString();
    if (!/holds a run made with other settings \(--lr 0.0001 there, 0.001 asked\)/.test(e)) {
      throw new Error(e);
    }
    if (await Deno.readTextFile(`${out}/report.json`) !== before) throw new Error("the report was rewritten");
  },
});

const cli = (script: string, args: string[]) => runScript(script, args);

Deno.test({
  name: "compare: every number flag is checked; a mismatched reuse is refused, naming the setting",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = `${tmp}/compare`;
    const tiny = [
      "--model",
      modelDir,
      "--device",
      "cpu",
      "--steps",
      "2",
      "--prompts",
      "2",
      "--group",
      "2",
      "--max-new",
      "3",
      "--minibatches",
      "1",
      ...TINY_EVAL,
      "--layer",
      "0",
      "--phase-steps",
      "1",
      "--seeds",
      "1",
      "--out",
      out,
    ];
    const abc = await cli("compare.ts", [...tiny, "--steps", "abc"]);
    if (abc.code !== 2 || abc.stderr.trim() !== `compare: --steps: expected a positive integer, got "abc"`) {
      throw new Error(`--steps abc: ${abc.code} ${abc.stderr}`);
    }
    const seeds = await cli("compare.ts", [...tiny, "--seeds", "1-x"]);
    if (seeds.code !== 2 || !/^compare: --seeds "1-x": expected seeds/.test(seeds.stderr)) {
      throw new Error(`--seeds 1-x: ${seeds.code} ${seeds.stderr}`);
    }
    if (await Deno.stat(out).then(() => true, () => false)) throw new Error("a usage error left files");
    const ok = await cli("compare.ts", tiny);
    if (ok.code !== 0) throw new Error(`compare: ${ok.code} ${ok.stderr}`);
    const report = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
    if (report.cells.map((c: { name: string }) => c.name).join() !== "objective-grpo,objective-bupo") {
      throw new Error(JSON.stringify(report.cells.map((c: { name: string }) => c.name)));
    }
    // The figure: no empty panel; the phase switch on every curve; layer k and the final policy under both.
    const svg = await Deno.readTextFile(`${out}/report.svg`);
    const panels = svg.split('<g class="panel"').slice(1);
    if (panels.length !== 8) throw new Error(`${panels.length} panels`);
    for (const p of panels) {
      const title = p.match(/font-weight="bold">([^<]*)</)?.[1];
      if (!/<polyline|<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+" fill="#/.test(p)) {
        throw new Error(`empty panel: ${title}`);
      }
      const curve = p.includes("<polyline");
      if (curve !== p.includes("BuPO phase ends (step 1)")) {
        throw new Error(`phase marker on ${title}: ${curve}`);
      }
    }
    const shared = panels.find((p) => p.includes("entropy of layer 0 and final"));
    for (const name of ["objective=grpo: layer 0", "objective=bupo: layer 0", "objective=grpo: final"]) {
      if (!shared?.includes(`data-name="${name}"`)) throw new Error(`no series ${name}`);
    }
    for (const o of ["grpo", "bupo"]) {
      if (!panels.some((p) => p.includes(`objective=${o}: entropy per layer policy`))) throw new Error(o);
    }
    const again = await cli("compare.ts", tiny);
    if (again.code !== 0 || (again.stdout.match(/reusing/g) ?? []).length !== 2) {
      throw new Error(`same settings are reused: ${again.code} ${again.stdout}`);
    }
    const lr = await cli("compare.ts", [...tiny, "--lr", "0.001"]);
    if (
      lr.code !== 2 ||
      !lr.stderr.includes(
        `compare: ${out}/objective-grpo-s1 holds a run made with other settings (--lr 0.0001 there, 0.001 asked)`,
      )
    ) {
      throw new Error(`--lr 0.001: ${lr.code} ${lr.stderr}`);
    }
  },
});
