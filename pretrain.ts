/**
 * `deno task pretrain`: supervised pretraining of the shipped base model on the embedded arithmetic task, to
 * partial competence (well above zero, well below perfect on the eval split). Reproducible from its seed.
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand, flagsOf, helpText } from "./cli/flags.ts";
import { runMain } from "./cli/main.ts";
import { pretrain, PRETRAIN_FLAGS } from "./training/pretrain.ts";

export const PRETRAIN = defineCommand({
  name: "pretrain",
  summary: "pretrain the tiny base model on the embedded arithmetic task.",
  usage: ["deno task pretrain [--out DIR] [--seed N] [--steps N] [--batch N] [--lr X] [--eval-every N]"],
  flags: PRETRAIN_FLAGS,
  notes: `Pretrains the tiny Qwen3-style base model (4 layers) on the embedded arithmetic task with supervised
next-token steps on worked solutions, then writes config.json, model.safetensors, tokenizer.json and
pretrain.json (the run's settings and eval accuracy) to --out.`,
});

const program = (argv: readonly string[]) =>
  Effect.gen(function* () {
    const args = yield* flagsOf(PRETRAIN, argv);
    if (args.help) return console.log(helpText(PRETRAIN));
    const { device, ...o } = args.values;
    yield* withDevice(device, (backend) => pretrain(backend, o));
  });

/** Run the command; returns the exit code. */
export const main = (argv: readonly string[]): Promise<number> => runMain("pretrain", program(argv));

if (import.meta.main) Deno.exit(await main(Deno.args));
