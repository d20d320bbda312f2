/**
 * `deno task compare`: GRPO against BuPO (or any objectives) over 5 seeds with the same settings: the sweep over
 * `objective` (training/compare.ts), its report with bootstrap intervals and paired tests against the first
 * objective, and the entropy of layer k and the final policy under each.
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { compare, COMPARE_FLAGS, compareSpec } from "./training/compare.ts";
import { readConfigFile } from "./training/config.ts";

export const COMPARE = defineCommand({
  name: "compare",
  summary: "GRPO against BuPO (or any objectives) over several seeds with the same settings.",
  usage: [
    "deno task compare [--seeds 1-5] [--objectives grpo,bupo] [--out runs/compare] [any train.ts flag]",
    "deno task compare --steps 20 --layer auto --seeds 1-3 --out runs/cmp-auto",
  ],
  flags: COMPARE_FLAGS,
  notes:
    `The sweep over --objectives (deno task sweep --grid objective=... --baseline objective=<first>): every
objective once per seed with identical settings (train.ts defaults, --config, then any train.ts flag), one run
after another, into <out>/objective-<name>-s<seed>. A finished run is reused only when its config.json equals
the requested settings, a killed one is resumed; a folder made with other settings stops compare, naming each
setting that differs. <out>/report.md, report.json and report.svg: final avg@k, pass@k and greedy per objective
(mean, 95% bootstrap interval over seeds), the paired difference from the first objective per seed with its
interval, the exact sign and permutation tests; accuracy over steps with bands and BuPO's phase switch marked;
the entropy of layer k and of the final policy under each objective on shared axes; wall time and peak memory.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  COMPARE,
  (args) =>
    Effect.gen(function* () {
      const v = args.values;
      const file = v.config ? yield* readConfigFile(v.config) : {};
      const spec = yield* Effect.try({ try: () => compareSpec(v, args.given, file), catch: (e) => e });
      yield* withDevice(spec.base.device, (backend) => compare(backend, spec, { verbose: v.verbose }));
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
