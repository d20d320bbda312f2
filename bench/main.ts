/** `deno task bench [name]`: every benchmark of the library on the default adapter, printed as tables. */
import { defineCommand, helpText, parseFlags } from "../cli/flags.ts";
import { runMain } from "../cli/main.ts";
import { withGpu } from "../engine/gpu/device.ts";
import { benchEntropy } from "./entropy.ts";
import { benchMatmul } from "./matmul.ts";
import { benchObjective } from "./objective.ts";
import { benchRl } from "./rl.ts";
import { benchTrainStep, profileTrainStep } from "./train_step.ts";

export const BENCH = defineCommand({
  name: "bench",
  summary: "the library's benchmarks on the default WebGPU adapter, printed as tables.",
  usage: ["deno task bench            # all but large", "deno task bench NAME       # one of them"],
  flags: {},
  positionals: {
    name: "NAME",
    help: "matmul | train | entropy | objective | rl | large (large: a synthetic Qwen3-0.6B,\n" +
      "~3-4 min, ~14 GB of RAM; only when asked for by name)",
    values: ["matmul", "train", "entropy", "objective", "rl", "large"],
    max: 1,
  },
});

const program = (argv: readonly string[]) => async () => {
  const args = parseFlags(BENCH, argv);
  if (args.help) return console.log(helpText(BENCH));
  const only = args.positionals[0];
  const want = (name: string) => !only || only === name;
  if (only === "large") await import("./large_model.ts");
  if (want("matmul")) await withGpu((gpu) => benchMatmul(gpu));
  if (want("train")) {
    await withGpu((gpu) => benchTrainStep(gpu));
    await withGpu((gpu) => profileTrainStep(gpu), { profile: true });
  }
  if (want("entropy")) console.log(await withGpu((gpu) => benchEntropy(gpu)));
  if (want("objective")) {
    await withGpu(async (gpu) => {
      console.log("## objective: loss + gradient of a GRPO batch (64 x 64 tokens, 4-layer model)");
      for (const r of await benchObjective(gpu)) {
        console.log(`${r.name.padEnd(70)} ${r.ms.toFixed(2).padStart(9)} ms   (${r.includes})`);
      }
    });
  }
  if (want("rl")) await withGpu((gpu) => benchRl(gpu));
};

/** Run the benchmarks; returns the exit code. */
export const main = (argv: readonly string[]): Promise<number> => runMain("bench", program(argv));

if (import.meta.main) Deno.exit(await main(Deno.args));
