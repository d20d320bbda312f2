/**
 * `deno task compare`: GRPO against BuPO over several seeds with the same budget on the embedded task; writes a
 * report (JSON, Markdown, SVG) with held-out accuracy (mean and spread over seeds) and per-layer entropy curves.
 */
import { parseArgs } from "node:util";
import { Cause, Effect, Exit } from "effect";
import { readJson, writeAtomic } from "./io/files.ts";
import { lineChart, panels } from "./io/svg.ts";
import { Gpu, GpuLive } from "./engine/gpu/device.ts";
import { decodeConfigJson, resolveConfig, type TrainConfig } from "./training/config.ts";
import { runTraining } from "./training/run.ts";
import type { StepMetrics } from "./training/rl.ts";
import type { EvalRecord } from "./training/report.ts";

const HELP =
  `deno task compare [--seeds 1,2,3] [--out runs/compare] [--config run.json] [--steps N] [--objectives grpo,bupo]
Runs each objective once per seed with identical settings (train.ts defaults, or --config), then writes
<out>/report.json, report.md and report.svg: final held-out accuracy (mean, min, max over seeds) and the mean
per-layer entropy of each objective over training. Runs already finished in <out> are reused.`;

const { values: a } = parseArgs({
  options: {
    seeds: { type: "string", default: "1,2,3" },
    out: { type: "string", default: "runs/compare" },
    config: { type: "string" },
    steps: { type: "string" },
    objectives: { type: "string", default: "grpo,bupo" },
    help: { type: "boolean", default: false },
  },
  strict: true,
});
if (a.help) {
  console.log(HELP);
  Deno.exit(0);
}

interface RunSummary {
  readonly objective: string;
  readonly seed: number;
  readonly dir: string;
  readonly final: EvalRecord;
  readonly base: EvalRecord;
  readonly evals: readonly EvalRecord[];
  readonly metrics: readonly StepMetrics[];
}

const stats = (xs: number[]) => ({
  mean: xs.reduce((p, q) => p + q, 0) / xs.length,
  min: Math.min(...xs),
  max: Math.max(...xs),
  std: Math.sqrt(
    xs.reduce((p, q) => p + (q - xs.reduce((s, t) => s + t, 0) / xs.length) ** 2, 0) /
      Math.max(1, xs.length - 1),
  ),
});

const program = Effect.gen(function* () {
  const seeds = a.seeds!.split(",").map((s) => Number(s.trim()));
  if (seeds.some((s) => !Number.isInteger(s) || s < 0)) {
    return yield* Effect.fail(
      new Error(`--seeds ${a.seeds}: expected comma-separated non-negative integers`),
    );
  }
  const objectives = a.objectives!.split(",").map((s) => s.trim());
  const file: Partial<TrainConfig> = a.config
    ? yield* Effect.flatMap(readJson(a.config), (j) => Effect.try(() => decodeConfigJson(a.config!, j)))
    : {};
  const base = resolveConfig(file, a.steps ? { steps: Number(a.steps) } : {});
  const gpu = yield* Gpu;
  const runs: RunSummary[] = [];
  for (const seed of seeds) {
    for (const objective of objectives) {
      const dir = `${a.out}/${objective.replace(/[^a-z0-9]+/gi, "_")}-s${seed}`;
      const cfg: TrainConfig = { ...base, objective, seed, out: dir };
      const done = yield* Effect.promise(() =>
        Deno.readTextFile(`${dir}/latest.json`).then((t) => JSON.parse(t).step === cfg.steps, () => false)
      );
      console.log(`${done ? "reusing" : "running"} ${objective} seed ${seed} -> ${dir}`);
      const r = done
        ? yield* Effect.promise(async () => ({
          dir,
          metrics: (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n").map((l) =>
            JSON.parse(l)
          ),
          evals: (await Deno.readTextFile(`${dir}/eval.jsonl`)).trim().split("\n").map((l) => JSON.parse(l)),
        }))
        : yield* runTraining(gpu, cfg, { resume: false, quiet: true });
      const evals = r.evals as EvalRecord[];
      runs.push({
        objective,
        seed,
        dir,
        final: evals[evals.length - 1],
        base: evals[0],
        evals,
        metrics: r.metrics as StepMetrics[],
      });
      const f = evals[evals.length - 1];
      console.log(
        `  final avg@${f.k} ${(100 * f.avgAtK).toFixed(1)}%  pass@${f.k} ${
          (100 * f.passAtK).toFixed(1)
        }%  greedy ${(100 * f.greedy).toFixed(1)}%`,
      );
    }
  }
  const by = (o: string) => runs.filter((r) => r.objective === o);
  const summary = objectives.map((o) => ({
    objective: o,
    seeds: by(o).map((r) => r.seed),
    avgAtK: stats(by(o).map((r) => r.final.avgAtK)),
    passAtK: stats(by(o).map((r) => r.final.passAtK)),
    greedy: stats(by(o).map((r) => r.final.greedy)),
    baseAvgAtK: stats(by(o).map((r) => r.base.avgAtK)),
  }));
  const L = runs[0]?.metrics[0]?.entropy.layers.length ?? 0;
  const meanCurve = (o: string, f: (m: StepMetrics) => number) => {
    const rs = by(o);
    const steps = rs[0]?.metrics.map((m) => m.step) ?? [];
    return steps.map((s, i) => [s, rs.reduce((p, r) => p + f(r.metrics[i]), 0) / rs.length] as const);
  };
  const svg = panels(
    [
      lineChart({
        title: "held-out avg@k (mean over seeds)",
        xLabel: "step",
        yLabel: "accuracy",
        series: objectives.map((o) => {
          const rs = by(o);
          return {
            name: o,
            points: rs[0].evals.map((e, i) =>
              [e.step, rs.reduce((p, r) => p + r.evals[i].avgAtK, 0) / rs.length] as const
            ),
          };
        }),
      }),
      ...objectives.map((o) =>
        lineChart({
          title: `${o}: entropy of each layer policy (mean over seeds; 0-based layers)`,
          xLabel: "step",
          yLabel: "entropy (nats)",
          series: [
            ...Array.from({ length: L }, (_, l) => ({
              name: `layer ${l}`,
              points: meanCurve(o, (m) => m.entropy.layers[l]),
            })),
            { name: "final", points: meanCurve(o, (m) => m.entropy.final), dashed: true },
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
    `BuPO layer ${base.layer} for ${base.phaseSteps} steps, model ${base.model}, adapter ${gpu.name}.`,
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
  yield* writeAtomic(
    `${a.out}/report.json`,
    JSON.stringify(
      {
        config: base,
        seeds,
        summary,
        runs: runs.map((r) => ({ objective: r.objective, seed: r.seed, dir: r.dir, final: r.final })),
      },
      null,
      1,
    ) + "\n",
  );
  yield* writeAtomic(`${a.out}/report.md`, md + "\n");
  yield* writeAtomic(`${a.out}/report.svg`, svg);
  console.log(md);
});

const exit = await Effect.runPromiseExit(program.pipe(Effect.provide(GpuLive())));
if (Exit.isFailure(exit)) {
  const e = Cause.squash(exit.cause) as Error;
  console.error(`compare: ${e.message}`);
  Deno.exit(1);
}
