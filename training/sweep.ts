/**
 * Sweeps: a grid over any train.ts settings, every cell run once per seed, one run after another on one backend,
 * then a report with statistics over seeds (training/sweep_report.ts). `sweep.ts` runs it from flags; compare is
 * the sweep over `objective` (training/compare.ts).
 *
 * Run folders: `<out>/<cell>-s<seed>`, one per cell and seed. A folder is reused only when its config.json equals
 * the requested settings (every field but `out`); a folder holding a run with other settings stops the sweep
 * before any run starts, naming the folder and each setting that differs (the user picks another --out or
 * removes the folder: results are never silently mixed). A finished run (its latest checkpoint at the last
 * step) is read back; a killed one resumes from its last checkpoint; a folder with no checkpoint starts fresh.
 *
 * Memory: the backend's peak is reset before every run and read after it, with the live bytes left; the report
 * ends with the sweep's wall time and peak device memory, so a flat-memory claim can be checked.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { checkValue, flagName, type FlagTable, type FlagValue } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { exists, readJson, writeAtomic } from "../io/files.ts";
import type { Chart } from "../io/svg.ts";
import { DEFAULTS, resolveConfig, TRAIN_FLAGS, type TrainConfig } from "./config.ts";
import type { EvalRecord } from "./report.ts";
import type { StepMetrics } from "./rl.ts";
import { claimCompareFolder, runDir } from "./rundir.ts";
import { runTraining } from "./run.ts";
import {
  bytes,
  type ReportContext,
  type Resources,
  type SweepReport,
  sweepReport,
  type SweepRun,
} from "./sweep_report.ts";

export type { Resources, SweepReport, SweepRun } from "./sweep_report.ts";

const { out: _out, seed: _seed, ...TRAIN_PASS } = TRAIN_FLAGS;

/** The train.ts settings a sweep passes through as fixed flags (all but `out` and `seed`, which it sets per run). */
export const SWEEP_TRAIN_FLAGS = TRAIN_PASS;

/** The flags of `deno task sweep` besides the train.ts ones (a core/flags.ts table). */
export const SWEEP_OWN_FLAGS = {
  grid: {
    kind: "str",
    repeat: true,
    arg: "FLAG=V1,V2",
    help: "an axis of the grid: a train.ts flag and its values, e.g. layer=0,1,2 (one --grid per axis)",
  },
  seeds: { kind: "str", default: "1-5", arg: "LIST", help: "seeds of every cell: 1-5, 1,3,7 or 1-3,9" },
  baseline: {
    kind: "str",
    repeat: true,
    arg: "FLAG=VALUE",
    help: "the baseline cell: the fixed settings with this one changed, e.g. objective=grpo (one per\n" +
      "setting); every other cell is compared with it seed by seed. A grid cell with the same\n" +
      "settings is the baseline itself; otherwise it is run as one more cell",
  },
  out: {
    kind: "str",
    default: "runs/sweep",
    arg: "DIR",
    help: "sweep folder: <cell>-s<seed> run folders and report.md, report.json, report.svg",
  },
  config: {
    kind: "str",
    arg: "FILE",
    help: "train.ts JSON config: the fixed settings of every run (flags win)",
  },
  verbose: { kind: "bool", help: "show every run's own progress and logs" },
} as const satisfies FlagTable;

/** Every flag of `deno task sweep`. */
export const SWEEP_FLAGS = { ...SWEEP_OWN_FLAGS, ...SWEEP_TRAIN_FLAGS };

/** One axis of a grid: a setting and its values. */
export interface Axis {
  /** The setting. */
  readonly key: keyof TrainConfig;
  /** The flag's name (`phase-steps`). */
  readonly flag: string;
  /** Its values, each checked against the setting's flag row. */
  readonly values: readonly FlagValue[];
}

/** A sweep, planned: the fixed settings, the axes, the seeds, the baseline and the folder. */
export interface SweepSpec {
  /** Every run's settings before the cell's (defaults, then the config file, then the fixed flags). */
  readonly base: TrainConfig;
  /** The fixed settings given explicitly (config file and flags), for the report. */
  readonly fixed: Partial<TrainConfig>;
  /** The grid's axes (none: one cell). */
  readonly axes: readonly Axis[];
  /** Every cell runs once per seed. */
  readonly seeds: readonly number[];
  /** The baseline's settings over `base` (absent: no comparison). */
  readonly baseline?: Partial<TrainConfig>;
  /** The sweep's folder: report.{json,md,svg} and one run folder `<cell>-s<seed>` per run. */
  readonly out: string;
  /** The report's title (default from the grid). */
  readonly title?: string;
}

/** One cell: its settings over the base ones, its folder-safe name and its label. */
export interface Cell {
  /** Folder-safe, e.g. `layer-0_phase-steps-5` (`base` with no axes). */
  readonly name: string;
  /** For people, e.g. `layer=0 phase-steps=5`. */
  readonly label: string;
  /** Its values of the axes (or the baseline's settings). */
  readonly settings: Partial<TrainConfig>;
  /** The index of its value on each axis (empty for a baseline outside the grid). */
  readonly coords: readonly number[];
}

const usage = (field: string, message: string) => new ConfigError({ source: "flags", field, message });

/** The TrainConfig key a flag name (or camelCase key) names. */
export const trainKey = (name: string, field: string): keyof TrainConfig => {
  const key = (Object.keys(TRAIN_FLAGS) as (keyof TrainConfig)[]).find((k) =>
    k === name || flagName(k, TRAIN_FLAGS[k]) === name
  );
  if (key === undefined) {
    throw usage(field, `${field} ${name}: not a train.ts flag (see deno task train --help)`);
  }
  if (key === "seed") throw usage(field, `${field} seed: seeds are --seeds, not an axis`);
  if (key === "out") throw usage(field, `${field} out: every run's folder is under the sweep's --out`);
  return key;
};

const splitSetting = (text: string, field: string, example: string): [string, string] => {
  const eq = text.indexOf("=");
  if (eq <= 0) throw usage(field, `${field} ${JSON.stringify(text)}: expected ${example}`);
  return [text.slice(0, eq), text.slice(eq + 1)];
};

/** `--grid FLAG=V1,V2,...`: the axis, every value checked against the flag's row. */
export const parseAxis = (text: string, field = "--grid"): Axis => {
  const [name, rest] = splitSetting(text, field, "FLAG=V1,V2,... (e.g. layer=0,1,2)");
  const key = trainKey(name, field);
  const flag = flagName(key, TRAIN_FLAGS[key]);
  const raw = rest.split(",");
  if (raw.some((v) => v === "")) {
    throw usage(field, `${field} ${name}: an empty value in ${JSON.stringify(rest)}`);
  }
  const values = raw.map((v) =>
    checkValue(TRAIN_FLAGS[key], v, { source: "flags", field: `${field} ${flag}` }, true)
  );
  const dup = values.find((v, i) => values.findIndex((w) => JSON.stringify(w) === JSON.stringify(v)) !== i);
  if (dup !== undefined) throw usage(field, `${field} ${flag}: ${JSON.stringify(dup)} is given twice`);
  return { key, flag, values };
};

/** `--baseline FLAG=VALUE` (repeated): the baseline's settings, each checked against its flag's row. */
export const parseBaseline = (texts: readonly string[], field = "--baseline"): Partial<TrainConfig> => {
  const out: Record<string, FlagValue> = {};
  for (const text of texts) {
    const [name, v] = splitSetting(text, field, "FLAG=VALUE (e.g. objective=grpo)");
    const key = trainKey(name, field);
    if (key in out) throw usage(field, `${field} ${name} is given twice`);
    out[key] = checkValue(TRAIN_FLAGS[key], v, { source: "flags", field: `${field} ${name}` }, true);
  }
  return out as Partial<TrainConfig>;
};

/** `--seeds 1-5`, `1,3,7` or `1-3,9`: distinct integers >= 0, in the order given. */
export const parseSeeds = (text: string, field = "--seeds"): number[] => {
  const bad = (why: string) => usage(field, `${field} ${JSON.stringify(text)}: ${why}`);
  const out: number[] = [];
  for (const part of text.split(",")) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) throw bad(`expected seeds like 1-5, 1,3,7 or 1-3,9 (integers >= 0)`);
    const lo = Number(m[1]), hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw bad(`the range ${part.trim()} runs backwards`);
    if (hi > 2 ** 32 - 1) throw bad(`seeds must be < 2^32`);
    if (hi - lo > 10_000) throw bad(`the range ${part.trim()} has more than 10,000 seeds`);
    for (let s = lo; s <= hi; s++) out.push(s);
  }
  const dup = out.find((s, i) => out.indexOf(s) !== i);
  if (dup !== undefined) throw bad(`seed ${dup} is given twice`);
  return out;
};

const show = (v: unknown) => (typeof v === "string" ? v : JSON.stringify(v));
const safe = (s: string) => s.replace(/[^A-Za-z0-9.+-]+/g, "_").replace(/^_+|_+$/g, "") || "_";
const flagOf = (k: string) => (k in TRAIN_FLAGS ? flagName(k, TRAIN_FLAGS[k as keyof TrainConfig]) : k);
const cellOf = (settings: Partial<TrainConfig>, coords: number[], prefix = ""): Cell => {
  const entries = Object.entries(settings);
  return {
    name: prefix +
      (entries.length ? entries.map(([k, v]) => `${flagOf(k)}-${safe(show(v))}`).join("_") : "base"),
    label: entries.length ? entries.map(([k, v]) => `${flagOf(k)}=${show(v)}`).join(" ") : "base settings",
    settings,
    coords,
  };
};

/** A run's settings: the base ones, the cell's, the seed and the folder; cross-field rules checked. */
export const runConfig = (spec: SweepSpec, cell: Cell, seed: number): TrainConfig => {
  try {
    const own = { ...cell.settings, seed, out: `${spec.out}/${cell.name}-s${seed}` };
    // The base holds the defaults, --config and the fixed flags: an error names them together.
    return resolveConfig(spec.base, own, "the sweep's fixed settings (defaults, --config, flags)");
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new ConfigError({ source: e.source, field: e.field, message: `cell ${cell.label}: ${e.message}` });
  }
};

/**
 * The cells of a sweep in grid order (the last axis fastest) and the baseline's index: the grid cell whose
 * settings equal the baseline's, or one more cell after the grid. Refuses an axis named twice, an axis that is
 * also a fixed flag, and two cells with one folder name.
 */
export const planCells = (spec: SweepSpec): { cells: Cell[]; baseline?: number } => {
  const keys = spec.axes.map((a) => a.key);
  const twice = keys.find((k, i) => keys.indexOf(k) !== i);
  if (twice) throw usage("--grid", `--grid ${flagOf(twice)} is given twice`);
  const fixed = keys.find((k) => k in spec.fixed);
  if (fixed) {
    throw usage(
      "--grid",
      `--grid ${flagOf(fixed)} and a fixed ${flagOf(fixed)} (flag or --config) are both given: choose one`,
    );
  }
  let combos: { settings: Record<string, FlagValue>; coords: number[] }[] = [{ settings: {}, coords: [] }];
  for (const a of spec.axes) {
    combos = combos.flatMap((c) =>
      a.values.map((v, i) => ({ settings: { ...c.settings, [a.key]: v }, coords: [...c.coords, i] }))
    );
  }
  const cells = combos.map((c) => cellOf(c.settings as Partial<TrainConfig>, c.coords));
  let baseline: number | undefined;
  if (spec.baseline) {
    const want = runConfig(spec, cellOf(spec.baseline, []), 0);
    baseline = cells.findIndex((c) => configDiff(runConfig(spec, c, 0), want).length === 0);
    if (baseline < 0) {
      cells.push(cellOf(spec.baseline, [], "baseline_"));
      baseline = cells.length - 1;
    }
  }
  const names = cells.map((c) => c.name);
  const clash = names.find((n, i) => names.indexOf(n) !== i);
  if (clash) throw usage("--grid", `two cells would share the folder name ${clash}: make the values differ`);
  for (const c of cells) for (const s of spec.seeds) runConfig(spec, c, s);
  return { cells, baseline };
};

/** Settings (by key) where a saved config differs from the requested one; `out` is not compared. */
export const configDiff = (saved: object, cfg: TrainConfig): string[] => {
  const a = saved as Record<string, unknown>, b = cfg as unknown as Record<string, unknown>;
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => k !== "out");
  return keys.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
};

/** What a run folder holds for the requested settings. */
export type RunState =
  | { readonly kind: "fresh" }
  | { readonly kind: "resume"; readonly step: number }
  | { readonly kind: "done" };

/**
 * The state of run folder `cfg.out` for `cfg`: fresh (nothing, or no checkpoint yet), resume (a checkpoint before
 * the last step) or done. A folder whose config.json differs from `cfg` is a ConfigError naming each setting.
 */
export const runState = (cfg: TrainConfig): Effect.Effect<RunState, ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    const rd = runDir(cfg.out);
    if (!(yield* exists(rd.config))) {
      if (yield* exists(rd.latest)) {
        return yield* new FileFormatError({
          file: rd.config,
          message: `${rd.config}: missing, but ${rd.latest} exists: cannot tell which settings made this run`,
        });
      }
      return { kind: "fresh" } as const;
    }
    const saved = yield* readJson(rd.config);
    if (typeof saved !== "object" || saved === null || Array.isArray(saved)) {
      return yield* new FileFormatError({ file: rd.config, message: `${rd.config}: expected a JSON object` });
    }
    const diff = configDiff(saved as Record<string, unknown>, cfg);
    if (diff.length) {
      const what = diff.map((k) =>
        `--${flagOf(k)} ${show((saved as Record<string, unknown>)[k]) ?? "(absent)"} there, ${
          show((cfg as unknown as Record<string, unknown>)[k]) ?? "(absent)"
        } asked`
      );
      return yield* new ConfigError({
        source: rd.config,
        field: diff[0],
        message:
          `${cfg.out} holds a run made with other settings (${what.join("; ")}): a run is reused only ` +
          `when its config.json equals the requested settings; choose another --out or remove ${cfg.out}`,
      });
    }
    if (!(yield* exists(rd.latest))) return { kind: "fresh" } as const;
    const latest = yield* readJson(rd.latest);
    const step = (latest as { step?: unknown })?.step;
    if (typeof step !== "number" || !Number.isInteger(step)) {
      return yield* new FileFormatError({
        file: rd.latest,
        message: `${rd.latest}: expected an integer step`,
      });
    }
    return step >= cfg.steps ? { kind: "done" } as const : { kind: "resume", step } as const;
  });

const readJsonl = <T>(file: string): Effect.Effect<T[], FileFormatError> =>
  Effect.tryPromise({
    try: async () =>
      (await Deno.readTextFile(file)).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as T),
    catch: (e) =>
      new FileFormatError({ file, message: `${file}: cannot read (${(e as Error).message ?? e})` }),
  });

/** The BuPO layer a run used: its numeric `layer`, or for `auto` the one its boundary.json records. */
const usedLayer = (cfg: TrainConfig): Effect.Effect<number | undefined> =>
  typeof cfg.layer === "number" ? Effect.succeed(cfg.layer) : readJson(runDir(cfg.out).boundary).pipe(
    Effect.map((j) => {
      const k = (j as { layer?: unknown })?.layer;
      return typeof k === "number" ? k : undefined;
    }),
    Effect.orElseSucceed(() => undefined),
  );

/** Options of `runSweep`. */
export interface SweepOptions {
  /** Show every run's own progress and logs (default: one line per run). */
  readonly verbose?: boolean;
  /** Extra report panels (compare's entropy figures). */
  readonly extraCharts?: (ctx: ReportContext) => Chart[];
  /**
   * Test hook: after `runs` runs have been trained (reused ones do not count), train the next one for `steps`
   * steps only and stop without a report, as if the sweep had been killed there.
   */
  readonly interrupt?: { readonly runs: number; readonly steps: number };
}

/** What `runSweep` returns: the report, or `interrupted` (the test hook). */
export type SweepOutcome =
  | { readonly interrupted: false; readonly report: SweepReport }
  | { readonly interrupted: true };

/**
 * Plan the cells (every run's settings checked before any run starts), check every folder, run or reuse each
 * (cell, seed) on `backend`, then write report.json, report.md and report.svg atomically into `spec.out`.
 */
export const runSweep = (
  backend: Backend,
  spec: SweepSpec,
  o: SweepOptions = {},
): Effect.Effect<SweepOutcome, Error> =>
  Effect.gen(function* () {
    const t0 = performance.now();
    const { cells, baseline } = yield* Effect.try({
      try: () => planCells(spec),
      catch: (e) => e as ConfigError,
    });
    const plan = spec.seeds.flatMap((seed) =>
      cells.map((cell) => ({ cell, seed, cfg: runConfig(spec, cell, seed) }))
    );
    // `out` must be new, empty or a sweep's own folder (never a model folder); its run folders then follow the
    // run folder rule.
    yield* claimCompareFolder(spec.out, spec.base.model);
    const states: RunState[] = [];
    for (const p of plan) states.push(yield* runState(p.cfg));
    yield* Effect.promise(() => backend.sync());
    const liveStart = backend.memory().live;
    const runs: SweepRun[] = [];
    const usage: Resources["runs"][number][] = [];
    let trained = 0;
    for (const [i, { cell, seed, cfg }] of plan.entries()) {
      const state = states[i];
      const dir = cfg.out.slice(spec.out.length + 1);
      const head = `[${i + 1}/${plan.length}] ${cell.label}, seed ${seed}`;
      const stop = o.interrupt && trained >= o.interrupt.runs ? o.interrupt.steps : undefined;
      let metrics: readonly StepMetrics[], evals: readonly EvalRecord[];
      const r0 = performance.now();
      if (state.kind === "done") {
        console.log(`${head}: reusing ${cfg.out} (finished, same settings)`);
        metrics = yield* readJsonl<StepMetrics>(runDir(cfg.out).metrics);
        evals = yield* readJsonl<EvalRecord>(runDir(cfg.out).evals);
      } else {
        console.log(
          `${head}: ${
            state.kind === "resume" ? `resuming after step ${state.step}` : "training"
          } -> ${cfg.out}`,
        );
        backend.resetPeak();
        const r = yield* runTraining(backend, cfg, {
          resume: state.kind === "resume",
          quiet: !o.verbose,
          explicit: state.kind === "resume" ? cfg : undefined,
          stopAfter: stop,
        });
        trained++;
        if (stop !== undefined) {
          console.log(`${head}: stopped after ${stop} step(s) (interrupt hook)`);
          return { interrupted: true } as SweepOutcome;
        }
        yield* Effect.promise(() => backend.sync());
        const m = backend.memory();
        usage.push({
          dir,
          status: state.kind === "resume" ? "resumed" : "trained",
          seconds: (performance.now() - r0) / 1000,
          peakBytes: m.peak,
          liveBytes: m.live,
        });
        metrics = r.metrics;
        evals = r.evals;
      }
      const last = evals.find((e) => e.step === cfg.steps);
      if (!last || evals[0]?.step !== 0) {
        return yield* new FileFormatError({
          file: runDir(cfg.out).evals,
          message: `${
            runDir(cfg.out).evals
          }: expected evaluations at step 0 and at the last step ${cfg.steps}`,
        });
      }
      const layer = yield* usedLayer(cfg);
      runs.push({ cell: cell.name, seed, dir, cfg, layer, metrics, evals });
      const u = usage.find((x) => x.dir === dir);
      console.log(
        `  final avg@${last.k} ${(100 * last.avgAtK).toFixed(1)}%  pass@${last.k} ${
          (100 * last.passAtK).toFixed(1)
        }%  greedy ${(100 * last.greedy).toFixed(1)}%` +
          (layer !== undefined && cfg.objective === "bupo" ? `  (layer ${layer})` : "") +
          (u
            ? `  ${u.seconds.toFixed(1)} s, peak ${bytes(u.peakBytes)}, live after ${bytes(u.liveBytes)}`
            : ""),
      );
    }
    yield* Effect.promise(() => backend.sync());
    const resources: Resources = {
      adapter: backend.name,
      wallSeconds: (performance.now() - t0) / 1000,
      liveStartBytes: liveStart,
      liveEndBytes: backend.memory().live,
      peakBytes: Math.max(0, ...usage.map((u) => u.peakBytes)),
      runs: usage,
    };
    const report = sweepReport({ spec, cells, baseline, runs, extraCharts: o.extraCharts }, resources);
    yield* writeAtomic(`${spec.out}/report.json`, JSON.stringify(report.json, null, 1) + "\n");
    yield* writeAtomic(`${spec.out}/report.md`, report.md + "\n");
    yield* writeAtomic(`${spec.out}/report.svg`, report.svg);
    console.log(report.md);
    console.log(`\nwrote ${spec.out}/report.md, report.json and report.svg`);
    return { interrupted: false, report } as SweepOutcome;
  });

/**
 * A sweep's spec from parsed flags: `values` are SWEEP_FLAGS' (or compare's) values, `given` the keys given on the
 * command line, `file` the --config file's settings. Fixed settings: the file's, then every train.ts flag given.
 */
export const sweepSpec = (
  values: Record<string, unknown>,
  given: ReadonlySet<string>,
  file: Partial<TrainConfig>,
  o: { readonly axes: readonly Axis[]; readonly baseline?: Partial<TrainConfig>; readonly title?: string },
): SweepSpec => {
  const flags = Object.fromEntries(
    [...given].filter((k) => k in SWEEP_TRAIN_FLAGS).map((k) => [k, values[k]]),
  ) as Partial<TrainConfig>;
  for (const k of ["out", "seed"] as const) {
    if (k in file) {
      throw new ConfigError({
        source: String(values.config),
        field: k,
        message: `${values.config}: ${k} is set per run by the sweep (${
          k === "seed" ? "--seeds" : "under its --out"
        }); remove it from the config file`,
      });
    }
  }
  const fixed = { ...file, ...flags };
  const out = values.out as string;
  return {
    // Cross-field rules are checked per run (a cell may be what makes them hold), not on the base settings.
    base: { ...DEFAULTS, ...fixed, out },
    fixed,
    axes: o.axes,
    seeds: parseSeeds(values.seeds as string),
    baseline: o.baseline,
    out,
    title: o.title,
  };
};
