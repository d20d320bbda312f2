/** `deno task entropy`: the paper's entropy-flow analysis of a model folder, as a JSON report and an SVG. */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand, flagsOf, helpText } from "./cli/flags.ts";
import { runMain } from "./cli/main.ts";
import {
  analyseEntropy,
  DEFAULT_MODEL,
  ENTROPY_FLAGS,
  entropyInputs,
  writeEntropyReport,
} from "./training/entropy.ts";

export { DEFAULT_MODEL };

export const ENTROPY = defineCommand({
  name: "entropy",
  summary: "entropy of the internal layer and modular policies, layer by layer.",
  usage: [
    "deno task entropy [--model DIR] (--prompts FILE | --tokens IDS) [options]",
    "deno task entropy --model models/a --model models/b --prompts p.txt   # several models, one figure",
  ],
  flags: ENTROPY_FLAGS,
  notes:
    `Input: exactly one of --prompts and --tokens. --max-new, --temperature and --seed apply to --prompts.

Layers are numbered from 0: layer l here is the paper's layer l+1 (its "layer 1" is our layer 0; its
last layer L is our layer L-1). Entropies are in nats, token-weighted means over the scored positions.
Entropy change: attention l = H(E_u A_l) - H(E_u RMSNorm_1^l(h_{l-1})); FFN l = H(E_u F_l) -
H(E_u RMSNorm_2^l(h_{l-1} + A_l)); layer l = H(E_u h_l) - H(E_u h_{l-1}), h_{-1} = the embedding output.
The SVG: (1) mean entropy change per layer (attention, FFN, whole layer) with a zero line; (2) the
entropy flow: per layer the layer input, attention output, FFN output and layer output, one line.`,
});

const program = (argv: readonly string[]) =>
  Effect.gen(function* () {
    const args = yield* flagsOf(ENTROPY, argv);
    if (args.help) return console.log(helpText(ENTROPY));
    const inputs = yield* entropyInputs(args.values);
    const results = yield* withDevice(
      args.values.device,
      (backend) => Effect.forEach(inputs, (input) => analyseEntropy(backend, input)),
    );
    yield* writeEntropyReport(inputs, results);
  });

/** Run the command; returns the exit code. */
export const main = (argv: readonly string[]): Promise<number> => runMain("entropy", program(argv));

if (import.meta.main) Deno.exit(await main(Deno.args));
