/** `deno task bench`: every benchmark of the library, in one run on the default adapter, printed as tables. */
import { withGpu } from "../kernels/gpu/device.ts";
import { benchMatmul } from "./matmul.ts";
import { benchTrainStep, profileTrainStep } from "./train_step.ts";

const only = Deno.args[0];
const want = (name: string) => !only || only === name;

if (want("matmul")) await withGpu((gpu) => benchMatmul(gpu));
if (want("train")) {
  await withGpu((gpu) => benchTrainStep(gpu));
  await withGpu((gpu) => profileTrainStep(gpu), { profile: true });
}
