/**
 * The report of a sweep (training/sweep.ts), as pure builders: report.json's object, report.md's text and
 * report.svg. Per cell: final avg@k, pass@k and greedy over seeds, each a mean with a 95% percentile-bootstrap
 * interval (core/stats.ts); against the baseline, seed by seed: the paired differences, their interval, the exact
 * sign test and the exact sign-flip permutation test. Figures: heatmaps for two-axis grids, accuracy over steps
 * per cell (mean over seeds, band min..max over seeds) with BuPO's phase switch marked, paired differences.
 * The resources (wall time, device memory) come last and apart, so two sweeps' numbers can be compared.
 */
import { bootstrapMean, type Estimate, type PairedComparison, pairedComparison, sd } from "../core/stats.ts";
import {
  barChart,
  type Chart,
  heatmap,
  lineChart,
  type LineSeries,
  niceTicks,
  PALETTE,
  panels,
  textPanel,
  type Tick,
  type VLine,
} from "../io/svg.ts";
import { flagName } from "../core/flags.ts";
import { TRAIN_FLAGS, type TrainConfig } from "./config.ts";
import type { EvalRecord } from "./report.ts";
import type { StepMetrics } from "./rl.ts";
import type { Cell, SweepSpec } from "./sweep.ts";

/** One finished run of a sweep. */
export interface SweepRun {
  /** Its cell's name. */
  readonly cell: string;
  /** Its seed. */
  readonly seed: number;
  /** Its folder, relative to the sweep's. */
  readonly dir: string;
  /** Its settings (its config.json). */
  readonly cfg: TrainConfig;
  /** The BuPO layer it used (`auto` resolved from its boundary.json); undefined when unknown. */
  readonly layer?: number;
  /** Its metrics.jsonl, one entry per step. */
  readonly metrics: readonly StepMetrics[];
  /** Its eval.jsonl, one entry per evaluation (step 0 first). */
  readonly evals: readonly EvalRecord[];
}

/** Time and device memory of a sweep (not part of its results: they differ between machines and reruns). */
export interface Resources {
  /** The backend's name. */
  readonly adapter: string;
  /** Wall-clock seconds of the whole sweep. */
  readonly wallSeconds: number;
  /** Live device bytes before the first run and after the last. */
  readonly liveStartBytes: number;
  /** Live device bytes after the last run. */
  readonly liveEndBytes: number;
  /** The largest peak of any run trained here. */
  readonly peakBytes: number;
  /** Every run trained or resumed here (reused ones took nothing). */
  readonly runs: readonly {
    /** The run's folder. */
    readonly dir: string;
    /** Trained from scratch, or resumed from a checkpoint. */
    readonly status: "trained" | "resumed";
    /** Wall-clock seconds it took. */
    readonly seconds: number;
    /** Its peak of live device bytes. */
    readonly peakBytes: number;
    /** Live bytes after the run (its own all given back: the same as before it). */
    readonly liveBytes: number;
  }[];
}

/** What the report is built from. */
export interface ReportContext {
  /** The sweep. */
  readonly spec: SweepSpec;
  /** Its cells, in grid order. */
  readonly cells: readonly Cell[];
  /** The baseline cell's index. */
  readonly baseline?: number;
  /** Every finished run. */
  readonly runs: readonly SweepRun[];
  /** Extra panels after the sweep's own (compare's entropy figures). */
  readonly extraCharts?: (ctx: ReportContext) => Chart[];
}

/** The final metrics of a report. */
export const METRICS = ["avgAtK", "passAtK", "greedy"] as const;
export type Metric = typeof METRICS[number];

/** Bootstrap settings of every interval (fixed, so a report is reproducible). */
export const BOOTSTRAP = { level: 0.95, resamples: 10_000, seed: 0 } as const;

/** A mean with its interval, the per-seed values and their sd. */
export interface CellStat extends Estimate {
  readonly sd: number;
  readonly values: readonly number[];
}

const statOf = (xs: readonly number[]): CellStat => ({
  ...bootstrapMean(xs, BOOTSTRAP),
  sd: sd(xs),
  values: xs,
});

/** The runs of a cell in seed order. */
export const runsOf = (ctx: ReportContext, cell: string): SweepRun[] =>
  ctx.spec.seeds.map((s) => {
    const r = ctx.runs.find((x) => x.cell === cell && x.seed === s);
    if (!r) throw new Error(`sweep report: no run of cell ${cell} seed ${s}`);
    return r;
  });

const finalOf = (r: SweepRun): EvalRecord => r.evals.find((e) => e.step === r.cfg.steps)!;

/** Mean and min..max over seeds at every step some seed has, of `f` per step record. */
export const spread = <T extends { step: number }>(
  perSeed: readonly (readonly T[])[],
  f: (x: T) => number,
): { steps: number[]; mean: number[]; min: number[]; max: number[] } => {
  const steps = [...new Set(perSeed.flatMap((xs) => xs.map((x) => x.step)))].sort((a, b) => a - b);
  const at = steps.map((s) => perSeed.flatMap((xs) => xs.filter((x) => x.step === s).map(f)));
  return {
    steps,
    mean: at.map((v) => v.reduce((a, b) => a + b, 0) / v.length),
    min: at.map((v) => Math.min(...v)),
    max: at.map((v) => Math.max(...v)),
  };
};

/** A line with its min..max band, in `scale` units. */
export const bandSeries = (
  name: string,
  s: ReturnType<typeof spread>,
  o: { readonly color?: string; readonly dashed?: boolean; readonly scale?: number } = {},
): LineSeries => {
  const k = o.scale ?? 1;
  return {
    name,
    color: o.color,
    dashed: o.dashed,
    points: s.steps.map((x, i) => [x, k * s.mean[i]] as const),
    band: s.steps.map((x, i) => [x, k * s.min[i], k * s.max[i]] as const),
  };
};

/** A cell's color (the palette by index; dashed from the ninth cell on). */
export const cellStyle = (i: number) => ({ color: PALETTE[i % PALETTE.length], dashed: i >= PALETTE.length });

/** BuPO's phase switch: a marker at `phaseSteps` for every BuPO cell (one per distinct step). */
export const phaseMarkers = (ctx: ReportContext): VLine[] => {
  const seen = new Map<number, number[]>();
  ctx.cells.forEach((c, i) => {
    const cfg = runsOf(ctx, c.name)[0].cfg;
    if (cfg.objective === "bupo" && cfg.phaseSteps < cfg.steps) {
      seen.set(cfg.phaseSteps, [...(seen.get(cfg.phaseSteps) ?? []), i]);
    }
  });
  return [...seen].map(([x, idx]) => ({
    x,
    label: `BuPO phase ends (step ${x})`,
    color: seen.size > 1 && idx.length === 1 ? cellStyle(idx[0]).color : "#444",
  }));
};

/** Integer step ticks from 0 to the longest run's last step. */
export const stepTicks = (ctx: ReportContext): Tick[] =>
  niceTicks(0, Math.max(1, ...ctx.runs.map((r) => r.cfg.steps)), 8).filter(Number.isInteger).map((v) => ({
    value: v,
    label: String(v),
  }));

/** Per-cell statistics and the paired comparisons with the baseline. */
export const sweepStats = (ctx: ReportContext) => {
  const cells = ctx.cells.map((c) => {
    const rs = runsOf(ctx, c.name);
    const m = Object.fromEntries(METRICS.map((k) => [k, statOf(rs.map((r) => finalOf(r)[k]))])) as Record<
      Metric,
      CellStat
    >;
    return {
      name: c.name,
      label: c.label,
      settings: c.settings,
      runs: rs.map((r) => ({
        seed: r.seed,
        dir: r.dir,
        layer: r.layer,
        final: finalOf(r),
        base: r.evals[0],
      })),
      k: finalOf(rs[0]).k,
      ...m,
      baseAvgAtK: statOf(rs.map((r) => r.evals[0].avgAtK)),
    };
  });
  const b = ctx.baseline;
  const comparisons = b === undefined ? [] : cells.flatMap((c, i) => {
    if (i === b) return [];
    const paired = Object.fromEntries(
      METRICS.map((k) => [k, pairedComparison(c[k].values, cells[b][k].values, BOOTSTRAP)]),
    ) as Record<Metric, PairedComparison>;
    return [{ cell: c.name, label: c.label, baseline: cells[b].name, seeds: ctx.spec.seeds, ...paired }];
  });
  return { cells, comparisons };
};

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const pts = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}`;
const pv = (p: number) => (p >= 0.001 ? p.toPrecision(3) : p.toExponential(2));
const est = (e: Estimate) => `${pct(e.mean)} [${(100 * e.lo).toFixed(1)}, ${(100 * e.hi).toFixed(1)}]`;
/** Bytes for people: B, KiB, MiB or GiB with 3 significant digits. */
export const bytes = (b: number): string => {
  const units = ["B", "KiB", "MiB", "GiB"];
  let u = 0;
  while (u < units.length - 1 && Math.abs(b) >= 1024) b /= 1024, u++;
  return `${u === 0 ? b : b.toPrecision(3)} ${units[u]}`;
};
const showV = (v: unknown) => (typeof v === "string" ? v : JSON.stringify(v));

/** A sweep's report, as its three files hold it. */
export interface SweepReport {
  /**
   * report.json's object: title, grid, seeds, baseline, fixed settings, the runs' shared config, the statistics'
   * settings, per-cell statistics, paired comparisons with the baseline, mean curves, and `resources` last.
   */
  readonly json: Record<string, unknown>;
  /** report.md's text (also printed). */
  readonly md: string;
  /** report.svg's text. */
  readonly svg: string;
}

/** report.json's object, report.md's text and report.svg. `resources` goes last, apart from the results. */
export const sweepReport = (ctx: ReportContext, resources: Resources): SweepReport => {
  const { spec } = ctx;
  const { cells, comparisons } = sweepStats(ctx);
  const base = ctx.baseline === undefined ? undefined : cells[ctx.baseline];
  const k = cells[0]?.k ?? spec.base.evalK;
  const grid = spec.axes.map((a) => `${a.flag} = ${a.values.map(showV).join(", ")}`).join("; ") || "(none)";
  const title = spec.title ?? `Sweep over ${spec.axes.map((a) => a.flag).join(" x ") || "seeds"}`;
  const fixed =
    Object.entries(spec.fixed).map(([key, v]) =>
      `--${key in TRAIN_FLAGS ? flagName(key, TRAIN_FLAGS[key as keyof TrainConfig]) : key} ${showV(v)}`
    ).join(" ") || "(train.ts defaults)";
  const c0 = spec.base;

  // ---- figures --------------------------------------------------------------------------------------------
  const charts: Chart[] = [];
  const cellAt = (i: number, j: number) => cells.find((_, n) => ctx.cells[n].coords.join() === `${i},${j}`);
  if (spec.axes.length === 2) {
    const [ra, ca] = spec.axes;
    charts.push(heatmap({
      title: `final avg@${k} (%, mean of ${spec.seeds.length} seeds)`,
      yLabel: ra.flag,
      xLabel: ca.flag,
      rows: ra.values.map(showV),
      columns: ca.values.map(showV),
      values: ra.values.map((_, i) => ca.values.map((_, j) => 100 * (cellAt(i, j)?.avgAtK.mean ?? NaN))),
      format: (v) => v.toFixed(1),
    }));
    if (base) {
      charts.push(heatmap({
        title: `final avg@${k} minus the baseline's (points, mean)`,
        yLabel: ra.flag,
        xLabel: ca.flag,
        rows: ra.values.map(showV),
        columns: ca.values.map(showV),
        values: ra.values.map((_, i) =>
          ca.values.map((_, j) => {
            const c = cellAt(i, j);
            if (!c) return NaN;
            if (c === base) return 0;
            return 100 * (comparisons.find((x) => x.cell === c.name)?.avgAtK.diff.mean ?? NaN);
          })
        ),
        format: (v) => (v >= 0 ? "+" : "") + v.toFixed(1),
        scale: "diverging",
      }));
    }
  }
  const vlines = phaseMarkers(ctx);
  const xTicks = stepTicks(ctx);
  const curve = (metric: Metric, name: string) =>
    lineChart({
      title: `held-out ${name} (mean; band: seed min..max)`,
      xLabel: "step",
      yLabel: `${name} (%)`,
      series: ctx.cells.map((c, i) =>
        bandSeries(c.label, spread(runsOf(ctx, c.name).map((r) => r.evals), (e) => e[metric]), {
          ...cellStyle(i),
          scale: 100,
        })
      ),
      vlines,
      xTicks,
    });
  charts.push(curve("avgAtK", `avg@${k}`), curve("passAtK", `pass@${k}`), curve("greedy", "greedy"));
  charts.push(lineChart({
    title: "rollout accuracy (mean; band: seed min..max)",
    xLabel: "step",
    yLabel: "train accuracy (%)",
    series: ctx.cells.map((c, i) =>
      bandSeries(c.label, spread(runsOf(ctx, c.name).map((r) => r.metrics), (m) => m.accuracy), {
        ...cellStyle(i),
        scale: 100,
      })
    ),
    vlines,
    xTicks,
  }));
  if (base && comparisons.length) {
    charts.push(barChart({
      title: `paired difference from ${base.label} (points, mean)`,
      yLabel: "difference (points)",
      // Grid cells by their values (the axis names in the x label); a cell off the grid by its label.
      xLabel: spec.axes.map((a) => a.flag).join(" / "),
      categories: comparisons.map((c) => {
        const cell = ctx.cells.find((x) => x.name === c.cell)!;
        return cell.coords.length
          ? cell.coords.map((v, i) => showV(spec.axes[i].values[v])).join(" / ")
          : cell.label;
      }),
      series: METRICS.map((m) => ({
        name: m === "greedy" ? "greedy" : `${m === "avgAtK" ? "avg" : "pass"}@${k}`,
        values: comparisons.map((c) => 100 * c[m].diff.mean),
      })),
      zeroLine: true,
    }));
  }
  charts.push(...(ctx.extraCharts?.(ctx) ?? []));
  if (charts.length % 2 === 1) {
    charts.push(textPanel(
      "final accuracy per cell: mean [95% interval]",
      cells.map((c) => `${c.label}: avg@${k} ${est(c.avgAtK)}  greedy ${est(c.greedy)}`),
    ));
  }
  const svg = panels(charts, 2, `${title}: ${spec.seeds.length} seeds, ${c0.steps} steps each`);

  // ---- markdown ---------------------------------------------------------------------------------------------
  const md = [
    `# ${title}`,
    ``,
    `${spec.seeds.length} seeds (${
      spec.seeds.join(", ")
    }) per cell; ${c0.steps} steps of ${c0.prompts} prompts x ` +
    `${c0.group} each; model ${c0.model}; held-out avg@${k} on ${c0.evalProblems} problems. Grid: ${grid}. ` +
    `Fixed settings: ${fixed}.${base ? ` Baseline: ${base.label}.` : ""}`,
    ``,
    `Intervals: 95% percentile bootstrap over seeds (${BOOTSTRAP.resamples} resamples, seed ${BOOTSTRAP.seed}); ` +
    `with few seeds an interval cannot show spread the seeds did not, so read it beside n. Tests: exact ` +
    `two-sided sign test and exact sign-flip permutation test of the paired differences.`,
    ``,
    `## Final held-out accuracy per cell`,
    ``,
    `| cell | n | avg@${k} mean [95% CI] | pass@${k} mean [95% CI] | greedy mean [95% CI] | base avg@${k} |`,
    `| --- | ---: | ---: | ---: | ---: | ---: |`,
    ...cells.map((c) =>
      `| ${c.label}${c === base ? " (baseline)" : ""} | ${c.avgAtK.n} | ${est(c.avgAtK)} | ${
        est(c.passAtK)
      } | ${est(c.greedy)} | ${pct(c.baseAvgAtK.mean)} |`
    ),
    ...(base
      ? [
        ``,
        `## Against the baseline (${base.label}), paired by seed`,
        ``,
        `Differences in percentage points, cell minus baseline, seeds in the order ${spec.seeds.join(", ")}.`,
        ``,
        `| cell | metric | per-seed differences | mean [95% CI] | ahead/behind/tied | sign p | permutation p |`,
        `| --- | --- | --- | ---: | ---: | ---: | ---: |`,
        ...comparisons.flatMap((c) =>
          METRICS.map((m) => {
            const x = c[m];
            return `| ${c.label} | ${
              m === "greedy" ? "greedy" : `${m === "avgAtK" ? "avg" : "pass"}@${k}`
            } | ${x.diffs.map(pts).join(", ")} | ${pts(x.diff.mean)} [${pts(x.diff.lo)}, ${
              pts(x.diff.hi)
            }] | ${x.wins}/${x.losses}/${x.ties} | ${pv(x.signP)} | ${pv(x.permutationP)}${
              x.permutationExact ? "" : " (sampled)"
            } |`;
          })
        ),
      ]
      : []),
    ``,
    `Figures: report.svg (${spec.axes.length === 2 ? "heatmaps of the two-axis grid, " : ""}` +
    `accuracy over steps with min..max bands over seeds${
      vlines.length ? ", BuPO's phase switch marked" : ""
    }).` +
    ` Runs: ${spec.out}/<cell>-s<seed>.`,
    ``,
    `## Resources`,
    ``,
    `Wall time ${resources.wallSeconds.toFixed(1)} s on ${resources.adapter}; ` +
    (resources.runs.length
      ? `peak device memory ${bytes(resources.peakBytes)} (the largest peak of any run trained here); `
      : `no run trained here, so no peak memory; `) +
    `live device memory ${bytes(resources.liveStartBytes)} before the first run and ${
      bytes(resources.liveEndBytes)
    } after the last. ${resources.runs.length} of ${ctx.runs.length} runs trained or resumed here, the rest reused.`,
    ...(resources.runs.length
      ? [
        ``,
        `| run | status | seconds | peak | live after |`,
        `| --- | --- | ---: | ---: | ---: |`,
        ...resources.runs.map((r) =>
          `| ${r.dir} | ${r.status} | ${r.seconds.toFixed(1)} | ${bytes(r.peakBytes)} | ${
            bytes(r.liveBytes)
          } |`
        ),
      ]
      : []),
  ].join("\n");

  const json = {
    title,
    grid: spec.axes.map((a) => ({ flag: a.flag, key: a.key, values: a.values })),
    seeds: spec.seeds,
    baseline: base ? { cell: base.name, settings: spec.baseline } : null,
    fixed: spec.fixed,
    // Every run's settings before its cell's (out and seed are per run: `<cell>-s<seed>` under the sweep's folder).
    config: Object.fromEntries(Object.entries(spec.base).filter(([key]) => key !== "out" && key !== "seed")),
    statistics: {
      interval: `${100 * BOOTSTRAP.level}% percentile bootstrap of the mean over seeds`,
      ...BOOTSTRAP,
      tests:
        "exact two-sided sign test; sign-flip permutation test of the mean paired difference (exact n <= 20)",
    },
    cells,
    comparisons,
    curves: ctx.cells.map((c) => {
      const rs = runsOf(ctx, c.name);
      return {
        cell: c.name,
        ...Object.fromEntries(METRICS.map((m) => [m, spread(rs.map((r) => r.evals), (e) => e[m])])),
        trainAccuracy: spread(rs.map((r) => r.metrics), (x) => x.accuracy),
      };
    }),
    resources,
  };
  return { json, md, svg };
};
