/** Plots of a run: reward and accuracy over steps, per-layer entropy over training, eval accuracy. */
import { lineChart, panels } from "../io/svg.ts";
import type { StepMetrics } from "./rl.ts";

/** One evaluation of a run (eval.jsonl). */
export interface EvalRecord {
  readonly step: number;
  readonly avgAtK: number;
  readonly passAtK: number;
  readonly greedy: number;
  readonly k: number;
}

/** The run's SVG: reward, eval accuracy, final and per-layer entropy over training. */
export const runPlots = (
  title: string,
  metrics: readonly StepMetrics[],
  evals: readonly EvalRecord[],
): string => {
  const pts = (f: (m: StepMetrics) => number) => metrics.map((m) => [m.step, f(m)] as const);
  const L = metrics[0]?.entropy.layers.length ?? 0;
  return panels(
    [
      lineChart({
        title: "reward (train rollouts)",
        xLabel: "step",
        yLabel: "mean reward",
        series: [{ name: "reward", points: pts((m) => m.rewardMean) }, {
          name: "accuracy",
          points: pts((m) => m.accuracy),
          dashed: true,
        }],
      }),
      lineChart({
        title: "held-out accuracy",
        xLabel: "step",
        yLabel: "fraction correct",
        series: [
          { name: `avg@${evals[0]?.k ?? "k"}`, points: evals.map((e) => [e.step, e.avgAtK] as const) },
          {
            name: `pass@${evals[0]?.k ?? "k"}`,
            points: evals.map((e) => [e.step, e.passAtK] as const),
            dashed: true,
          },
          { name: "greedy", points: evals.map((e) => [e.step, e.greedy] as const) },
        ],
      }),
      lineChart({
        title: "entropy of each internal layer policy (raw readout; layer l is 0-based)",
        xLabel: "step",
        yLabel: "mean entropy (nats)",
        series: [
          ...Array.from({ length: L }, (_, l) => ({
            name: `layer ${l}`,
            points: pts((m) => m.entropy.layers[l]),
          })),
          { name: "final", points: pts((m) => m.entropy.final), dashed: true },
        ],
      }),
      lineChart({
        title: "update statistics",
        xLabel: "step",
        yLabel: "value",
        series: [
          { name: "clip fraction", points: pts((m) => m.clipFraction) },
          { name: "approx KL", points: pts((m) => m.approxKl) },
          { name: "grad norm", points: pts((m) => m.gradNorm), dashed: true },
        ],
      }),
    ],
    2,
    title,
  );
};
