/**
 * Plots of a run: reward and accuracy over steps, per-layer and per-policy entropy, each term's loss, update
 * statistics on their own axes, eval accuracy, per-difficulty accuracy, with the phase switches on every curve.
 */
import {
  type Chart,
  lineChart,
  type LineChartSpec,
  type LineSeries,
  PALETTE,
  panels,
  type VLine,
} from "../io/svg.ts";
import type { DataSourceResult, DifficultyResult } from "./evaluate.ts";
import type { StepMetrics } from "./rl.ts";

/** One evaluation of a run (eval.jsonl). */
export interface EvalRecord {
  /** The step evaluated after (0: the base model, before step 1). */
  readonly step: number;
  /** Mean accuracy over the k samples of each problem, averaged over problems. */
  readonly avgAtK: number;
  /** Fraction of problems with at least one correct sample of k. */
  readonly passAtK: number;
  /** Accuracy of greedy (argmax) decoding, one response per problem. */
  readonly greedy: number;
  /** Samples per problem. */
  readonly k: number;
  /** The policy evaluation sampled from (`final`, `layer(2)`, ...; absent in runs logged before it was recorded). */
  readonly policy?: string;
  /** Per difficulty level, where the task defines one. */
  readonly byDifficulty?: readonly DifficultyResult[];
  /** Per data_source, where the held-out rows name one (dataset runs). */
  readonly byDataSource?: readonly DataSourceResult[];
  /** Reward calls that failed during the evaluation (dataset runs; absent when none did). */
  readonly rewardErrors?: number;
}

/** The phase key of a step's metrics: its phase indices (lines logged before they were: the phase text). */
const phaseKey = (m: StepMetrics): string => (m.phaseIndex ? JSON.stringify(m.phaseIndex) : m.phase);

/**
 * The steps at which the active phase changes: each step whose phase differs from the previous logged step's,
 * with that phase's text (`StepMetrics.phase`).
 */
export const phaseSwitches = (metrics: readonly StepMetrics[]): { step: number; phase: string }[] =>
  metrics.flatMap((m, i) =>
    i > 0 && phaseKey(m) !== phaseKey(metrics[i - 1]) ? [{ step: m.step, phase: m.phase }] : []
  );

/** Distinct values in order of first appearance. */
const uniq = <T>(xs: readonly T[]): T[] => [...new Set(xs)];

/**
 * The run's SVG, the phase switches drawn as vertical lines on every curve: train reward and accuracy; held-out
 * avg@k, pass@k and greedy (the policy sampled named when not final); the entropy of every layer policy, the
 * final one and every other policy the objective names; the loss with each term's part of it (constant weights
 * in the legend) and, for scheduled weights, the weights; gradient norm, clip fraction and approx KL each on its
 * own axes; rollout and held-out accuracy per difficulty level where the task defines one.
 */
export const runPlots = (
  title: string,
  metrics: readonly StepMetrics[],
  evals: readonly EvalRecord[],
): string => {
  const pts = (f: (m: StepMetrics) => number | undefined) =>
    metrics.map((m) => [m.step, f(m) ?? NaN] as const);
  const L = metrics[0]?.entropy.layers.length ?? 0;
  // A switch between steps s - 1 and s is drawn at s - 0.5 (the evaluation at s - 1 precedes it).
  const vlines: VLine[] = phaseSwitches(metrics).map((s, i, all) => ({
    x: s.step - 0.5,
    label: all.length === 1 ? "phase switch" : `phase ${i + 2}`,
  }));
  const line = (spec: Omit<LineChartSpec, "vlines" | "xLabel">): Chart =>
    lineChart({ xLabel: "step", ...spec, vlines });
  const k = evals[0]?.k ?? "k";
  const charts: Chart[] = [];
  charts.push(line({
    title: "reward (train rollouts)",
    yLabel: "mean reward",
    series: [{ name: "reward", points: pts((m) => m.rewardMean) }, {
      name: "accuracy",
      points: pts((m) => m.accuracy),
      dashed: true,
    }],
  }));
  const evalPolicies = uniq(evals.map((e) => e.policy ?? "final"));
  charts.push(line({
    title: evalPolicies.join() === "final"
      ? "held-out accuracy"
      : `held-out accuracy (sampled from ${evalPolicies.join(", ")})`,
    yLabel: "fraction correct",
    series: [
      { name: `avg@${k}`, points: evals.map((e) => [e.step, e.avgAtK] as const) },
      { name: `pass@${k}`, points: evals.map((e) => [e.step, e.passAtK] as const), dashed: true },
      { name: "greedy", points: evals.map((e) => [e.step, e.greedy] as const) },
    ],
  }));
  // Policies the objective names beyond the layer policies (raw) and final: attn/ffn, normed readouts.
  const layerKeys = new Set(["final", ...Array.from({ length: L }, (_, l) => `layer(${l})`)]);
  const extra = uniq(metrics.flatMap((m) => Object.keys(m.entropy.policies ?? {}))).filter((q) =>
    !layerKeys.has(q)
  );
  charts.push(line({
    title: "entropy per layer policy (raw, 0-based) and named policy",
    yLabel: "mean entropy (nats)",
    series: [
      ...Array.from({ length: L }, (_, l) => ({
        name: `layer ${l}`,
        points: pts((m) => m.entropy.layers[l]),
      })),
      { name: "final", points: pts((m) => m.entropy.final), dashed: true },
      ...extra.map((q, i): LineSeries => ({
        name: q,
        points: pts((m) => m.entropy.policies?.[q]),
        dashed: true,
        color: PALETTE[(L + 1 + i) % PALETTE.length],
      })),
    ],
  }));
  const terms = uniq(metrics.flatMap((m) => (m.terms ?? []).map((t) => t.term)));
  /** The sum over a step's terms named `term` of `f` (a term may appear twice); NaN where it is not active. */
  const termSum = (
    m: StepMetrics,
    term: string,
    f: (t: NonNullable<StepMetrics["terms"]>[number]) => number,
  ) => {
    const ts = (m.terms ?? []).filter((t) => t.term === term);
    return ts.length ? ts.reduce((a, t) => a + f(t), 0) : NaN;
  };
  /** A term's weights over the steps where it is active (one value: a constant weight). */
  const weightsOf = (t: string) =>
    uniq(metrics.flatMap((m) => (m.terms ?? []).filter((x) => x.term === t).map((x) => x.weight)));
  const scheduled = terms.filter((t) => weightsOf(t).length > 1);
  /** The term's legend name: its text, with its weight when that is constant and not 1. */
  const termName = (t: string) => {
    const w = weightsOf(t);
    return w.length === 1 && w[0] !== 1 ? `${w[0]} * ${t}` : t;
  };
  if (terms.length > 0) {
    charts.push(line({
      title: "loss and each term's part of it (weight x value)",
      yLabel: "loss",
      zeroLine: true,
      series: [
        { name: "loss", points: pts((m) => m.loss), color: "#000" },
        ...terms.map((t, i): LineSeries => ({
          name: termName(t),
          points: pts((m) => termSum(m, t, (x) => x.loss)),
          dashed: true,
          color: PALETTE[i % PALETTE.length],
        })),
      ],
    }));
    if (scheduled.length > 0) {
      charts.push(line({
        title: "weights of the scheduled terms",
        yLabel: "weight",
        zeroLine: true,
        series: scheduled.map((t) => ({
          name: t,
          points: pts((m) => termSum(m, t, (x) => x.weight)),
          color: PALETTE[terms.indexOf(t) % PALETTE.length],
        })),
      }));
    }
  }
  charts.push(line({
    title: "gradient norm (before clipping)",
    yLabel: "global L2 norm",
    series: [{ name: "grad norm", points: pts((m) => m.gradNorm) }],
  }));
  // Per-term clip fractions and KLs when several pg terms share a step; their mean (the logged one) always.
  const pgTerms = terms.filter((t) =>
    metrics.some((m) => (m.terms ?? []).some((x) => x.term === t && x.clipFraction !== undefined))
  );
  const perPg = metrics.some((m) => (m.terms ?? []).filter((t) => t.clipFraction !== undefined).length > 1);
  const pgSeries = (f: (x: NonNullable<StepMetrics["terms"]>[number]) => number | undefined): LineSeries[] =>
    perPg
      ? pgTerms.map((t) => ({
        name: t,
        points: pts((m) => termSum(m, t, (x) => f(x) ?? NaN)),
        dashed: true,
        color: PALETTE[terms.indexOf(t) % PALETTE.length],
      }))
      : [];
  for (
    const [title, yLabel, key] of [
      ["clip fraction (response tokens clipped)", "fraction", "clipFraction"],
      ["approx KL(old || new) per update", "nats per token", "approxKl"],
    ] as const
  ) {
    charts.push(line({
      title,
      yLabel,
      zeroLine: true,
      series: [
        { name: "mean over pg terms", points: pts((m) => m[key]), color: "#000" },
        ...pgSeries((x) => x[key]),
      ],
    }));
  }
  const trainLevels = uniq(metrics.flatMap((m) => (m.accuracyByDifficulty ?? []).map((d) => d.difficulty)))
    .sort((a, b) => a - b);
  if (trainLevels.length > 0) {
    charts.push(line({
      title: "train rollout accuracy by difficulty",
      yLabel: "fraction correct",
      series: trainLevels.map((level, i) => ({
        name: `difficulty ${level}`,
        points: pts((m) => m.accuracyByDifficulty?.find((d) => d.difficulty === level)?.accuracy),
        color: PALETTE[i % PALETTE.length],
      })),
    }));
  }
  const evalLevels = uniq(evals.flatMap((e) => (e.byDifficulty ?? []).map((d) => d.difficulty)))
    .sort((a, b) => a - b);
  if (evalLevels.length > 0) {
    const at = (e: EvalRecord, level: number) => e.byDifficulty?.find((d) => d.difficulty === level);
    charts.push(line({
      title: `held-out accuracy by difficulty (avg@${k} solid, greedy dashed)`,
      yLabel: "fraction correct",
      series: evalLevels.flatMap((level, i): LineSeries[] => [
        {
          name: `difficulty ${level}`,
          points: evals.map((e) => [e.step, at(e, level)?.avgAtK ?? NaN] as const),
          color: PALETTE[i % PALETTE.length],
        },
        {
          name: `greedy ${level}`,
          points: evals.map((e) => [e.step, at(e, level)?.greedy ?? NaN] as const),
          dashed: true,
          color: PALETTE[i % PALETTE.length],
        },
      ]),
    }));
  }
  return panels(charts, 2, title);
};
