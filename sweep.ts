/**
 * `deno task sweep`: a grid over any train.ts flags, every cell once per seed, one run after another on one
 * device; then report.md, report.json and report.svg with means, bootstrap intervals and paired tests against a
 * baseline cell. Finished runs with the same settings are reused, killed ones resumed (training/sweep.ts).
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { readConfigFile } from "./training/config.ts";
import { parseAxis, parseBaseline, runSweep, SWEEP_FLAGS, sweepSpec } from "./training/sweep.ts";

export const SWEEP = defineCommand({
  name: "sweep",
  summary: "a grid over train.ts settings, several seeds per cell, with honest statistics over seeds.",
  usage: [
    "deno task sweep --grid layer=0,1,2 --grid phase-steps=5,10,20 --seeds 1-5 --baseline objective=grpo",
    "deno task sweep --grid lr=1e-4,3e-4 --seeds 1-3 --steps 20 --out runs/lr   # fixed train.ts flags pass through",
  ],
  flags: SWEEP_FLAGS,
  notes: `Every train.ts flag but --out and --seed is a fixed setting of every run (or an axis with --grid).
Runs go to <out>/<cell>-s<seed>, one after another on one device. A run folder is reused only when its
config.json equals the requested settings (finished: read back; killed: resumed from its last checkpoint);
a folder made with other settings stops the sweep before any run, naming each setting that differs.
Report: per cell the final avg@k, pass@k and greedy (mean, 95% bootstrap interval over seeds); against the
baseline the paired difference per seed, its interval, the exact sign and permutation tests; a heatmap for
two-axis grids; accuracy over steps with min..max bands; the wall time and peak device memory at the end.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  SWEEP,
  (args) =>
    Effect.gen(function* () {
      const v = args.values;
      const file = v.config ? yield* readConfigFile(v.config) : {};
      const spec = yield* Effect.try({
        try: () =>
          sweepSpec(v, args.given, file, {
            axes: v.grid.map((g) => parseAxis(g)),
            baseline: v.baseline.length ? parseBaseline(v.baseline) : undefined,
          }),
        catch: (e) => e,
      });
      yield* withDevice(spec.base.device, (backend) => runSweep(backend, spec, { verbose: v.verbose }));
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
