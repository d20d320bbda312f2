/**
 * GRPO against BuPO (or any objectives) over several seeds with the same budget on the embedded task: the runs
 * (finished ones in the output folder are reused) and the report (JSON, Markdown, SVG) with held-out accuracy
 * (mean and spread over seeds) and per-layer entropy curves. `compare.ts` runs it from flags.
 */
import { Effect } from "effect";
import { DEVICE_FLAG, type FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { writeAtomic } from "../io/files.ts";
import { lineChart, panels } from "../io/svg.ts";
import type { TrainConfig } from "./config.ts";
import type { EvalRecord } from "./report.ts";
import type { StepMetrics } from "./rl.ts";
import { runTraining } from "./run.ts";
import { claimCompareFolder } from "./rundir.ts";

/** The flags of `deno task compare` (a core/flags.ts table). */
export const COMPARE_FLAGS = {
  seeds: { kind: "list", of: "int", min: 0, default: [1, 2, 3], help: "seeds, comma-separated" },
  objectives: { kind: "list", default: ["grpo", "bupo"], help: "objectives (train.ts --objective values)" },
  out: {
    kind: "str",
    default: "runs/compare",
    arg: "DIR",
    help: "output folder (one run folder per objective and seed)",
  },
  config: { kind: "str", arg: "FILE", help: "train.ts JSON config for every run" },
  steps: { kind: "posint", help: "RL steps of every run (overrides the config)" },
  device: DEVICE_FLAG,
} as const satisfies FlagTable;

/** One finished run. */
export interface RunSummary {
  readonly objective: string;
  readonly seed: number;
  readonly dir: string;
  readonly final: EvalRecord;
  readonly base: EvalRecord;
  readonly evals: readonly EvalRecord[];
  readonly metrics: readonly StepMetrics[];
}

/** The run folder of one objective and seed. */
export const runDir = (out: string, objective: string, seed: number): string =>
  `${out}/${objective.replace(/[^a-z0-9]+/gi, "_")}-s${seed}`;

const readLines = async (file: string) =>
  (await Deno.readTextFile(file)).trim().split("\n").map((l) => JSON.parse(l));

/** Run every objective once per seed with `base`'s settings (reusing runs already finished in `out`). */
export const compareRuns = (
  backend: Backend,
  base: TrainConfig,
  seeds: readonly number[],
  objectives: readonly string[],
  out: string,
) =>
  Effect.gen(function* () {
    // `out` must be new, empty or a comparison's own folder (never a model folder); each run's subfolder then
    // follows the run folder rule.
    yield* claimCompareFolder(out, base.model);
    const runs: RunSummary[] = [];
    for (const seed of seeds) {
      for (const objective of objectives) {
        const dir = runDir(out, objective, seed);
        const cfg: TrainConfig = { ...base, objective, seed, out: dir };
        const done = yield* Effect.promise(() =>
          Deno.readTextFile(`${dir}/latest.json`).then((t) => JSON.parse(t).step === cfg.steps, () => false)
        );
        console.log(`${done ? "reusing" : "running"} ${objective} seed ${seed} -> ${dir}`);
        const r = done
          ? yield* Effect.promise(async () => ({
            metrics: await readLines(`${dir}/metrics.jsonl`),
            evals: await readLines(`${dir}/eval.jsonl`),
          }))
          : yield* runTraining(backend, cfg, { resume: false, quiet: true });
        const evals = r.evals as EvalRecord[];
        const f = evals[evals.length - 1];
        runs.push({
          objective,
          seed,
          dir,
          final: f,
          base: evals[0],
          evals,
          metrics: r.metrics as StepMetrics[],
        });
        console.log(
          `  final avg@${f.k} ${(100 * f.avgAtK).toFixed(1)}%  pass@${f.k} ${
            (100 * f.passAtK).toFixed(1)
          }%  greedy ${(100 * f.greedy).toFixed(1)}%`,
        );
      }
    }
    return runs;
  });

/** Mean, min, max and sample standard deviation. */
export const stats = (xs: readonly number[]) => {
  const mean = xs.reduce((p, q) => p + q, 0) / xs.length;
  return {
    mean,
    min: Math.min(...xs),
    max: Math.max(...xs),
    std: Math.sqrt(xs.reduce((p, q) => p + (q - mean) ** 2, 0) / Math.max(1, xs.length - 1)),
  };
};

/** The report of a comparison: report.json's object, report.md's text and report.svg. */
export const compareReport = (
  runs: readonly RunSummary[],
  o: {
    readonly base: TrainConfig;
    readonly seeds: readonly number[];
    readonly objectives: readonly string[];
    readonly adapter: string;
  },
) => {
  const { base, seeds, objectives } = o;
  const by = (name: string) => runs.filter((r) => r.objective === name);
  const summary = objectives.map((name) => ({
    objective: name,
    seeds: by(name).map((r) => r.seed),
    avgAtK: stats(by(name).map((r) => r.final.avgAtK)),
    passAtK: stats(by(name).map((r) => r.final.passAtK)),
    greedy: stats(by(name).map((r) => r.final.greedy)),
    baseAvgAtK: stats(by(name).map((r) => r.base.avgAtK)),
  }));
  const L = runs[0]?.metrics[0]?.entropy.layers.length ?? 0;
  const meanCurve = (name: string, f: (m: StepMetrics) => number) => {
    const rs = by(name);
    const steps = rs[0]?.metrics.map((m) => m.step) ?? [];
    return steps.map((s, i) => [s, rs.reduce((p, r) => p + f(r.metrics[i]), 0) / rs.length] as const);
  };
  const svg = panels(
    [
      lineChart({
        title: "held-out avg@k (mean over seeds)",
        xLabel: "step",
        yLabel: "accuracy",
        series: objectives.map((name) => {
          const rs = by(name);
          return {
            name,
            points: rs[0].evals.map((e, i) =>
              [e.step, rs.reduce((p, r) => p + r.evals[i].avgAtK, 0) / rs.length] as const
            ),
          };
        }),
      }),
      ...objectives.map((name) =>
        lineChart({
          title: `${name}: entropy of each layer policy (mean over seeds; 0-based layers)`,
          xLabel: "step",
          yLabel: "entropy (nats)",
          series: [
            ...Array.from({ length: L }, (_, l) => ({
              name: `layer ${l}`,
              points: meanCurve(name, (m) => m.entropy.layers[l]),
            })),
            { name: "final", points: meanCurve(name, (m) => m.entropy.final), dashed: true },
          ],
        })
      ),
    ],
    2,
    `GRPO vs BuPO over seeds ${seeds.join(", ")} (${base.steps} steps each)`,
  );
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const md = [
    `# GRPO vs BuPO on the embedded task`,
    ``,
    `${seeds.length} seeds (${
      seeds.join(", ")
    }), ${base.steps} steps of ${base.prompts} prompts x ${base.group}, ` +
    `BuPO layer ${base.layer} for ${base.phaseSteps} steps, model ${base.model}, adapter ${o.adapter}.`,
    ``,
    `| objective | base avg@k | final avg@k mean (min..max, sd) | pass@k mean | greedy mean |`,
    `| --- | ---: | ---: | ---: | ---: |`,
    ...summary.map((s) =>
      `| ${s.objective} | ${pct(s.baseAvgAtK.mean)} | ${pct(s.avgAtK.mean)} (${pct(s.avgAtK.min)}..${
        pct(s.avgAtK.max)
      }, ` +
      `${pct(s.avgAtK.std)}) | ${pct(s.passAtK.mean)} | ${pct(s.greedy.mean)} |`
    ),
    ``,
    `Per-layer entropy curves: report.svg. Runs: ${runs.map((r) => r.dir).join(", ")}.`,
  ].join("\n");
  const json = {
    config: base,
    seeds,
    summary,
    runs: runs.map((r) => ({ objective: r.objective, seed: r.seed, dir: r.dir, final: r.final })),
  };
  return { json, md, svg };
};

/** The whole comparison on `backend`: the runs, then report.json, report.md and report.svg in `out`. */
export const compare = (
  backend: Backend,
  o: {
    readonly base: TrainConfig;
    readonly seeds: readonly number[];
    readonly objectives: readonly string[];
    readonly out: string;
  },
) =>
  Effect.gen(function* () {
    const runs = yield* compareRuns(backend, o.base, o.seeds, o.objectives, o.out);
    const r = compareReport(runs, { ...o, adapter: backend.name });
    yield* writeAtomic(`${o.out}/report.json`, JSON.stringify(r.json, null, 1) + "\n");
    yield* writeAtomic(`${o.out}/report.md`, r.md + "\n");
    yield* writeAtomic(`${o.out}/report.svg`, r.svg);
    console.log(r.md);
    return r;
  });
