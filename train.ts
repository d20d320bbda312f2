/**
 * `deno run -A train.ts` (or `deno task train`): GRPO / BuPO on the embedded arithmetic task from the shipped
 * base model, or on a prompt dataset (`--data`) from any Hugging Face Qwen3 / Qwen2 / Llama folder. `--help`
 * lists every flag; `--config run.json` reads them from a file (flags win); `--resume` continues the run in
 * `--out` from its last checkpoint.
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { readConfigFile, resolveConfig, TRAIN_FLAGS, type TrainConfig } from "./training/config.ts";
import { runTraining } from "./training/run.ts";

export const TRAIN = defineCommand({
  name: "train",
  summary: "RL (GRPO, BuPO, or your own Objective) on an embedded reasoning task or a prompt dataset.",
  usage: [
    "deno run -A train.ts [flags]          # defaults: BuPO on models/tiny-arith, minutes on llvmpipe",
    "deno run -A train.ts --objective grpo --out runs/grpo",
    "deno run -A train.ts --objective ./my_objective.ts   # a module exporting an Objective",
    "deno run -A train.ts --task ./my_task.ts --model DIR # a module exporting a Task (or --task rewrite)",
    "deno run -A train.ts --out runs/x --resume           # continue a stopped run from its last checkpoint",
    "deno run -A train.ts --out runs/x --overwrite        # start the run in runs/x over",
    "deno run -A train.ts --model models/Qwen3-0.6B --data train.parquet --eval-data test.parquet \\",
    `  --chat-template-kwargs '{"enable_thinking": false}' --reward math:1,format:0.1 --max-new 512`,
  ],
  flags: {
    config: {
      kind: "str",
      arg: "FILE",
      help: "JSON file with any of the settings below (camelCase names); flags win",
    },
    resume: { kind: "bool", help: "continue the run in --out" },
    overwrite: { kind: "bool", help: "start the run in --out over (removes only that run's own files)" },
    quiet: { kind: "bool", help: "no progress output" },
    ...TRAIN_FLAGS,
  },
  notes:
    "Layers are 0-based: --layer 2 is the paper's layer 3. Outputs in --out: metrics.jsonl, eval.jsonl,\n" +
    "samples.jsonl, plots.svg, config.json, objective.txt, checkpoints/ and latest.json, with the marker\n" +
    "bupo-run.json. --out must be new or empty, or a bupo run (with --resume or --overwrite); never a model\n" +
    "folder. --objective FILE#name picks a module's export; with a module, --layer, --phase-steps, --clip,\n" +
    "--clip-high and --tis-cap are errors. Memory is estimated before step 1 and a run that would not fit is\n" +
    "refused, naming the flag to lower.\n" +
    "With --data: rows shuffled by --seed and cycled; the model folder's chat template, tokenizer and stop\n" +
    "ids (every eos of generation_config.json); rewards by --reward (default math:1); metrics add\n" +
    "reward/<part>, reward/errors and truncated; eval.jsonl adds byDataSource; checkpoints copy the\n" +
    "folder's tokenizer files. Check the prompts first: deno task data --model DIR --data FILE.",
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  TRAIN,
  (args) =>
    Effect.gen(function* () {
      const { config, resume, overwrite, quiet, ...settings } = args.values;
      const file = config ? yield* readConfigFile(config) : {};
      const given = [...args.given].filter((k): k is keyof TrainConfig => k in TRAIN_FLAGS);
      const flags = Object.fromEntries(given.map((k) => [k, settings[k]])) as Partial<TrainConfig>;
      const cfg = yield* Effect.try({ try: () => resolveConfig(file, flags, config), catch: (e) => e });
      const opts = {
        resume: resume === true,
        overwrite: overwrite === true,
        quiet: quiet === true,
        explicit: { ...file, ...flags },
      };
      yield* withDevice(cfg.device, (backend) => runTraining(backend, cfg, opts));
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
