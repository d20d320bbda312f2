/** `deno task bench [name]`: every benchmark of the library on the default adapter, printed as tables. */
import { withGpu } from "../engine/gpu/device.ts";
import { benchEntropy } from "./entropy.ts";
import { benchMatmul } from "./matmul.ts";
import { benchObjective } from "./objective.ts";
import { benchRl } from "./rl.ts";
import { benchTrainStep, profileTrainStep } from "./train_step.ts";

const only = Deno.args[0];
const known = ["matmul", "train", "entropy", "objective", "rl", "large"];
if (only && !known.includes(only)) {
  console.error(`bench: unknown benchmark ${JSON.stringify(only)}; one of ${known.join(", ")}`);
  Deno.exit(2);
}
const want = (name: string) => !only || only === name;

// Real-size check (a synthetic Qwen3-0.6B, ~3-4 min, ~14 GB of RAM): only when asked for by name.
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
