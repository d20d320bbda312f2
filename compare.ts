/**
 * `deno task compare`: GRPO against BuPO over several seeds with the same budget on the embedded task; writes a
 * report (JSON, Markdown, SVG) with held-out accuracy (mean and spread over seeds) and per-layer entropy curves.
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand, flagsOf, helpText } from "./cli/flags.ts";
import { runMain } from "./cli/main.ts";
import { compare, COMPARE_FLAGS } from "./training/compare.ts";
import { readConfigFile, resolveConfig } from "./training/config.ts";

export const COMPARE = defineCommand({
  name: "compare",
  summary: "GRPO against BuPO over several seeds with the same budget on the embedded task.",
  usage: [
    "deno task compare [--seeds 1,2,3] [--out runs/compare] [--config run.json] [--steps N] [--objectives grpo,bupo]",
  ],
  flags: COMPARE_FLAGS,
  notes:
    `Runs each objective once per seed with identical settings (train.ts defaults, or --config), then writes
<out>/report.json, report.md and report.svg: final held-out accuracy (mean, min, max over seeds) and the mean
per-layer entropy of each objective over training. Runs already finished in <out> are reused.`,
});

const program = (argv: readonly string[]) =>
  Effect.gen(function* () {
    const args = yield* flagsOf(COMPARE, argv);
    if (args.help) return console.log(helpText(COMPARE));
    const { config, steps, seeds, objectives, out, device } = args.values;
    const file = config ? yield* readConfigFile(config) : {};
    const base = yield* Effect.try({
      try: () => resolveConfig(file, steps ? { steps } : {}, config),
      catch: (e) => e,
    });
    yield* withDevice(device, (backend) => compare(backend, { base, seeds, objectives, out }));
  });

/** Run the command; returns the exit code. */
export const main = (argv: readonly string[]): Promise<number> => runMain("compare", program(argv));

if (import.meta.main) Deno.exit(await main(Deno.args));
