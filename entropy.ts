/** `deno task entropy`: the paper's entropy-flow analysis of a model folder, as a JSON report and an SVG. */
import { Effect } from "effect";
import { withDevice } from "./cli/device.ts";
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
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
    "deno task entropy --model path/to/Qwen3-4B --prompts chats.jsonl --chat-template-kwargs '{\"enable_thinking\": false}'",
  ],
  flags: ENTROPY_FLAGS,
  notes:
    `Input: exactly one of --prompts and --tokens. --max-new, --temperature, --seed, --prompt-key and the chat
template flags apply to --prompts. A .jsonl/.ndjson/.json/.parquet --prompts file holds rows (each row's
"prompt": a string, multi-line allowed, or chat messages; or "messages"); any other file one prompt per line.
The JSON report's source.responses hold each prompt as the model saw it (template applied) and its row or line.

Layers are numbered from 0: layer l here is the paper's layer l+1 (its "layer 1" is our layer 0; its
last layer L is our layer L-1). Entropies are in nats, token-weighted means over the scored positions.
Entropy change: attention l = H(E_u A_l) - H(E_u RMSNorm_1^l(h_{l-1})); FFN l = H(E_u F_l) -
H(E_u RMSNorm_2^l(h_{l-1} + A_l)); layer l = H(E_u h_l) - H(E_u h_{l-1}), h_{-1} = the embedding output.
The SVG: (1) mean entropy change per layer (attention, FFN, whole layer) with a zero line; (2) the
entropy flow: per layer the layer input, attention output, FFN output and layer output, one line.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  ENTROPY,
  (args) =>
    Effect.gen(function* () {
      const inputs = yield* entropyInputs(args.values);
      const results = yield* withDevice(
        args.values.device,
        (backend) => Effect.forEach(inputs, (input) => analyseEntropy(backend, input)),
      );
      yield* writeEntropyReport(inputs, results);
    }),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
