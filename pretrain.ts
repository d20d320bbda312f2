/**
 * `deno task pretrain`: supervised pretraining of a tiny char base model on a task to partial competence,
 * reproducible from its settings. `--preset NAME` holds a shipped model's settings (re-creating models/NAME
 * byte for byte); the other flags override them. Writes into models/ only when --out says so.
 */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import {
  defaultOut,
  pretrain,
  PRETRAIN_FLAGS,
  type PretrainSettings,
  SETTING_KEYS,
  settingsOf,
} from "./training/pretrain.ts";

export const PRETRAIN = defineCommand({
  name: "pretrain",
  summary: "pretrain a tiny base model (Qwen3 or Llama family) on a task, reproducibly.",
  usage: [
    "deno task pretrain [--preset tiny-arith] [--out DIR]   # default --out runs/pretrain/PRESET",
    "deno task pretrain --preset tiny-rewrite --out models/tiny-rewrite   # re-create a shipped model",
    "deno task pretrain --task ./mytask.ts --arch llama --layers 8 --out runs/mine",
  ],
  flags: PRETRAIN_FLAGS,
  notes: `Supervised next-token steps on the task's worked solutions, evaluations on its held-out split
(greedy, avg@4, pass@4), then config.json, model.safetensors, tokenizer.json and pretrain.json (the
settings, time, evaluations and every step's loss) in --out. Presets: tiny-arith (Qwen3), tiny-arith-llama
(Llama: no q/k norm, untied lm_head), tiny-rewrite (Qwen3, the rewrite task); with a preset's settings the
result equals models/PRESET byte for byte (models/manifest.json holds the hashes).`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  PRETRAIN,
  (args) =>
    Effect.gen(function* () {
      const { device, preset, out, ...rest } = args.values;
      const given = SETTING_KEYS.filter((k) => args.given.has(k));
      const over = Object.fromEntries(given.map((k) => [k, rest[k]])) as Partial<PretrainSettings>;
      const settings = settingsOf(preset, over);
      const dir = out ?? defaultOut(preset, given.length > 0);
      yield* withDevice(
        device,
        (backend) => pretrain(backend, settings, { out: dir, preset: given.length ? null : preset }),
      );
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
