/** `deno task data`: every row of a dataset as the model will see it: prompt text, token ids, ground truth. */
import { defineCommand } from "./cli/flags.ts";
import { commandMain } from "./cli/main.ts";
import { DATA_FLAGS, showData } from "./training/data_view.ts";

export const DATA = defineCommand({
  name: "data",
  summary:
    "every row of a dataset as the model will see it: the prompt text, its token ids, the ground truth.",
  usage: [
    "deno task data --model DIR --data FILE [--limit N] [--json] [--prompt-key K] [--answer-key K] \\",
    `  [--chat-template-kwargs '{"enable_thinking": false}'] [--no-chat-template] [--max-prompt N]`,
  ],
  flags: DATA_FLAGS,
  notes:
    `Datasets: .jsonl, .json (an array of rows, or JSON Lines) or .parquet (any codec: snappy, zstd, gzip,
brotli, lz4). The row schema is detected from the first row:
  verl: prompt = [{role, content}, ...], reward_model.ground_truth, data_source, extra_info
  TRL:  prompt = a string or messages; the answer in solution, answer or ground_truth
  else: name the fields with --prompt-key and --answer-key (dotted paths: input.question).
Prompts: the model folder's chat template (chat_template.jinja, else tokenizer_config.json's chat_template)
with the assistant's turn opened; a string prompt is the user's message. --no-chat-template (or a folder
without a template) sends string prompts as they are. No special tokens are added beyond the template's.
Stop ids: every eos_token_id of generation_config.json and the tokenizer's eos_token.

Output: per row a header (row number, data_source, prompt length), the prompt text exactly, its ids and the
ground truth; then a summary: the schema, rows shown and dropped, the template, stop and pad ids, and the
tokenizer's vocabulary size beside config.json's vocab_size. With --json, one object per row on stdout
({"row", "text", "ids", "ground_truth", "data_source"}) and the summary on stderr.`,
});

/** Run the command; resolves to the exit code. */
export const main: (argv: readonly string[]) => Promise<number> = commandMain(
  DATA,
  (args) => showData(args.values),
);

if (import.meta.main) Deno.exit(await main(Deno.args));
