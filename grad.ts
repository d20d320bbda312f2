/** `deno task grad`: the loss of an objective on a batch and the gradient of every parameter, as safetensors. */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { show } from "./objectives/objective.ts";
import {
  batchFromFlags,
  GRAD_FLAGS,
  gradients,
  normTable,
  objectiveByName,
  writeGradients,
} from "./training/grad.ts";

export const GRAD = defineCommand({
  name: "grad",
  summary: "the loss of an objective on a batch and the gradient of every parameter of a model.",
  usage: [
    `deno task grad -- --model DIR --tokens "1,2,3;4,5,6" --prompt-len 2 --advantages 1,-1 \\`,
    "  --objective grpo|bupo|path/to/module.ts [--layer k] [--until n] [--norm raw|normed] [--step s] \\",
    "  --out grads.safetensors",
  ],
  flags: GRAD_FLAGS,
  notes: `Writes the loss and the gradient of every parameter to a safetensors file keyed by the Hugging Face
tensor names (loss, step and objective in __metadata__), atomically, and prints a per-tensor norm table.

Old log-probs: on-policy. The old log-probs of every policy the objective optimizes are the current model's,
detached (every importance ratio is exactly 1), unless a rollout file provides them (old.<policy>,
behaviour). Reference log-probs (KL-to-reference terms) must come from a rollout file.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  GRAD,
  (args) =>
    Effect.gen(function* () {
      const f = args.values;
      const objective = yield* Effect.tryPromise({
        try: () => objectiveByName({ ...f, name: f.objective }),
        catch: (e) => e,
      });
      const batch = yield* Effect.try({ try: () => batchFromFlags(f), catch: (e) => e });
      const builtIn = f.objective === "grpo" || f.objective === "bupo";
      const objectiveSource = builtIn && f.layer !== undefined
        ? { field: "--layer", value: String(f.layer) }
        : { field: "--objective", value: f.objective };
      const r = yield* withDevice(
        f.device,
        (backend) =>
          gradients({ backend, model: { dir: f.model }, batch, objective, step: f.step, objectiveSource }),
      );
      yield* writeGradients(f.out, r);
      console.log(
        `objective at step ${f.step}:\n${show(objective)}\n\nloss ${r.loss}\n\n${
          normTable(r)
        }\n\nwrote ${f.out}`,
      );
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
