/**
 * compare: the sweep over `objective` (training/sweep.ts), GRPO against BuPO by default, 5 seeds, the first
 * objective the baseline; the same report (means, bootstrap intervals, paired tests), the same reuse rule, plus
 * the entropy of layer k and of the final policy under every objective on shared axes, with BuPO's phase switch
 * marked on every curve. `compare.ts` runs it from flags.
 */
import type { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import type { FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { type Chart, lineChart, type LineSeries } from "../io/svg.ts";
import type { TrainConfig } from "./config.ts";
import {
  parseAxis,
  runSweep,
  SWEEP_OWN_FLAGS,
  SWEEP_TRAIN_FLAGS,
  type SweepOutcome,
  type SweepSpec,
  sweepSpec,
} from "./sweep.ts";
import {
  bandSeries,
  cellStyle,
  phaseMarkers,
  type ReportContext,
  runsOf,
  spread,
  stepTicks,
} from "./sweep_report.ts";

const { objective: _objective, ...TRAIN_PASS } = SWEEP_TRAIN_FLAGS;

/** The flags of `deno task compare` (a core/flags.ts table): its own, then every train.ts flag but objective. */
export const COMPARE_FLAGS = {
  objectives: {
    kind: "list",
    default: ["grpo", "bupo"],
    help: "objectives (train.ts --objective values), at least two; the first is the baseline",
  },
  seeds: SWEEP_OWN_FLAGS.seeds,
  out: {
    kind: "str",
    default: "runs/compare",
    arg: "DIR",
    help: "output folder: objective-<name>-s<seed> run folders and report.md, report.json, report.svg",
  },
  config: SWEEP_OWN_FLAGS.config,
  verbose: SWEEP_OWN_FLAGS.verbose,
  ...TRAIN_PASS,
} as const satisfies FlagTable;

/**
 * The sweep of a comparison from parsed flags (`values` COMPARE_FLAGS' values, `given` the keys on the command
 * line, `file` the --config file's settings).
 */
export const compareSpec = (
  values: Record<string, unknown>,
  given: ReadonlySet<string>,
  file: Partial<TrainConfig>,
): SweepSpec => {
  const objectives = values.objectives as readonly string[];
  if (objectives.length < 2) {
    throw new ConfigError({
      source: "flags",
      field: "--objectives",
      message: `--objectives: compare needs at least two objectives, got ${
        JSON.stringify(objectives.join(","))
      }`,
    });
  }
  if ("objective" in file) {
    throw new ConfigError({
      source: String(values.config),
      field: "objective",
      message: `${values.config}: objective is compare's axis (--objectives); remove it from the config file`,
    });
  }
  const axis = parseAxis(`objective=${objectives.join(",")}`, "--objectives");
  const spec = sweepSpec(values, given, file, { axes: [axis], baseline: { objective: objectives[0] } });
  return { ...spec, title: `${objectives.join(" vs ")} on the ${spec.base.task} task` };
};

/** The layer k of each seed: its BuPO run's (auto resolved), else the fixed --layer. */
const layerBySeed = (ctx: ReportContext): Map<number, number> => {
  const out = new Map<number, number>();
  const bupo = ctx.cells.find((c) => c.settings.objective === "bupo");
  for (const s of ctx.spec.seeds) {
    const r = bupo ? runsOf(ctx, bupo.name).find((x) => x.seed === s) : undefined;
    const k = r?.layer ?? (typeof ctx.spec.base.layer === "number" ? ctx.spec.base.layer : undefined);
    if (k !== undefined) out.set(s, k);
  }
  return out;
};

/**
 * Compare's extra panels: the entropy of layer k and of the final policy under every objective (mean, min..max
 * band over seeds), then every layer's entropy under each objective, all on one shared y range.
 */
export const compareCharts = (ctx: ReportContext): Chart[] => {
  const vlines = phaseMarkers(ctx), xTicks = stepTicks(ctx);
  const ks = layerBySeed(ctx);
  const kNames = [...new Set(ks.values())];
  const kName = kNames.length === 1
    ? `layer ${kNames[0]}`
    : `layer k (per seed: ${[...ks.values()].join(", ")})`;
  const ent = (
    c: number,
    f: (m: { entropy: { final: number; layers: readonly number[] } }, seed: number) => number,
  ) =>
    spread(
      runsOf(ctx, ctx.cells[c].name).map((r) => r.metrics.map((m) => ({ step: m.step, v: f(m, r.seed) }))),
      (x) => x.v,
    );
  const L = ctx.runs[0]?.metrics[0]?.entropy.layers.length ?? 0;
  const shared: LineSeries[] = ctx.cells.flatMap((c, i) => [
    ...(ks.size === ctx.spec.seeds.length
      ? [bandSeries(`${c.label}: ${kName}`, ent(i, (m, s) => m.entropy.layers[ks.get(s)!]), cellStyle(i))]
      : []),
    bandSeries(`${c.label}: final`, ent(i, (m) => m.entropy.final), { ...cellStyle(i), dashed: true }),
  ]);
  const perLayer = ctx.cells.map((c, i) => ({
    title: `${c.label}: entropy per layer policy (mean; 0-based)`,
    series: [
      ...Array.from({ length: L }, (_, l) => {
        const s = ent(i, (m) => m.entropy.layers[l]);
        return { name: `layer ${l}`, points: s.steps.map((x, j) => [x, s.mean[j]] as const) };
      }),
      (() => {
        const s = ent(i, (m) => m.entropy.final);
        return { name: "final", points: s.steps.map((x, j) => [x, s.mean[j]] as const), dashed: true };
      })(),
    ] as LineSeries[],
  }));
  const ys = [
    ...shared.flatMap((s) => [...s.points.map((p) => p[1]), ...(s.band ?? []).flatMap((b) => [b[1], b[2]])]),
    ...perLayer.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q[1]))),
  ].filter(Number.isFinite);
  if (ys.length === 0) return [];
  const lo = Math.min(...ys), hi = Math.max(...ys), pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
  const yRange = [lo - pad, hi + pad] as const;
  return [
    lineChart({
      title: `entropy of ${kName} and final (band: seed min..max)`,
      xLabel: "step",
      yLabel: "mean entropy (nats)",
      series: shared,
      vlines,
      xTicks,
      yRange,
    }),
    ...perLayer.map((p) =>
      lineChart({
        title: p.title,
        xLabel: "step",
        yLabel: "mean entropy (nats)",
        series: p.series,
        vlines,
        xTicks,
        yRange,
      })
    ),
  ];
};

/** The whole comparison on `backend`: the sweep over objective, its report with compare's entropy panels. */
export const compare = (
  backend: Backend,
  spec: SweepSpec,
  o: { readonly verbose?: boolean } = {},
): Effect.Effect<SweepOutcome, Error> =>
  runSweep(backend, spec, { verbose: o.verbose, extraCharts: compareCharts });
