/**
 * The program of `deno task data`: every row of a dataset as the model will see it (the rendered prompt, its
 * token ids, the ground truth), in text or as JSON lines, after the overlong filter.
 */
import { Effect } from "effect";
import type { FlagTable } from "../core/flags.ts";
import { parseTemplateKwargs } from "../formats/chat.ts";
import { readDataset } from "../formats/dataset.ts";
import { type PreparedRow, prepareRows, type PromptSetup, readPromptSetup } from "../formats/generation.ts";

/** The flags of `deno task data`. */
export const DATA_FLAGS = {
  model: {
    kind: "str",
    required: true,
    arg: "DIR",
    help: "model folder (tokenizer.json, tokenizer_config.json...)",
  },
  data: { kind: "str", required: true, arg: "FILE", help: "dataset: .jsonl, .json (an array) or .parquet" },
  limit: { kind: "posint", help: "show the first N rows (after the overlong filter)" },
  json: { kind: "bool", help: "one JSON object per row: row, text, ids, ground_truth (and data_source)" },
  promptKey: { kind: "str", arg: "PATH", help: "the prompt's field, a dotted path (default: prompt)" },
  answerKey: {
    kind: "str",
    arg: "PATH",
    help: "the answer's field (default: reward_model.ground_truth, solution, answer or ground_truth)",
  },
  chatTemplateKwargs: {
    kind: "str",
    arg: "JSON",
    help: `template variables, e.g. '{"enable_thinking": false}'`,
  },
  noChatTemplate: { kind: "bool", help: "send string prompts as they are, without the chat template" },
  maxPrompt: { kind: "posint", help: "drop prompts longer than N tokens (counted and reported)" },
} as const satisfies FlagTable;

/** The values `showData` needs (DATA_FLAGS parsed). */
export interface DataViewArgs {
  readonly model: string;
  readonly data: string;
  readonly limit?: number;
  readonly json: boolean;
  readonly promptKey?: string;
  readonly answerKey?: string;
  readonly chatTemplateKwargs?: string;
  readonly noChatTemplate: boolean;
  readonly maxPrompt?: number;
}

/** One row in JSON: what the model sees and what the reward compares with. */
export const rowJson = (p: PreparedRow): Record<string, unknown> => ({
  row: p.row.row,
  text: p.text,
  ids: p.ids,
  ground_truth: p.row.groundTruth,
  ...(p.row.dataSource !== undefined ? { data_source: p.row.dataSource } : {}),
});

/** One row for a person: a header, the prompt text exactly, its ids, the ground truth. */
export const rowText = (p: PreparedRow): string =>
  [
    `=== row ${p.row.row}${
      p.row.dataSource !== undefined ? ` (${p.row.dataSource})` : ""
    }: ${p.ids.length} prompt tokens`,
    p.text,
    "--- ids",
    p.ids.join(" "),
    "--- ground truth",
    p.row.groundTruth,
    "",
  ].join("\n");

/** What the model folder contributes, in one paragraph. */
export const setupSummary = (s: PromptSetup): string =>
  [
    `prompts: ${
      s.template ? `chat template from ${s.template.file}` : "sent as they are (no chat template)"
    }` +
    (s.options.chatTemplateKwargs ? ` with ${JSON.stringify(s.options.chatTemplateKwargs)}` : ""),
    `stop ids: ${s.stopIds.join(", ")}; pad id ${s.pad}${s.bos !== undefined ? `; bos id ${s.bos}` : ""}`,
    `tokenizer ids: ${s.tokenizerVocab}` +
    (s.modelVocab !== undefined ? ` (config.json vocab_size ${s.modelVocab})` : ""),
  ].join("\n");

/** Show a dataset's rows as the model will see them; the summary goes to stderr with --json. */
export const showData = (a: DataViewArgs) =>
  Effect.gen(function* () {
    const kwargs = a.chatTemplateKwargs === undefined
      ? undefined
      : yield* Effect.try({ try: () => parseTemplateKwargs(a.chatTemplateKwargs!), catch: (e) => e });
    const ds = yield* readDataset(a.data, { promptKey: a.promptKey, answerKey: a.answerKey });
    const setup = yield* readPromptSetup(a.model, {
      chatTemplate: !a.noChatTemplate,
      ...(kwargs ? { chatTemplateKwargs: kwargs } : {}),
    });
    const prepared = yield* Effect.try({
      try: () => prepareRows(setup, ds.file, ds.rows, { maxPrompt: a.maxPrompt, limit: a.limit }),
      catch: (e) => e,
    });
    for (const p of prepared.rows) console.log(a.json ? JSON.stringify(rowJson(p)) : rowText(p));
    const of = prepared.examined < ds.rows.length ? ` (the first ${prepared.examined} looked at)` : "";
    const dropped = a.maxPrompt === undefined
      ? ""
      : `; dropped ${prepared.dropped.length} longer than ${a.maxPrompt} tokens${
        prepared.dropped.length
          ? ` (rows ${prepared.dropped.slice(0, 20).join(", ")}${
            prepared.dropped.length > 20 ? ", ..." : ""
          })`
          : ""
      }`;
    const summary =
      `${ds.file}: ${ds.rows.length} rows, ${ds.schema} schema (prompt: ${ds.promptPath}, answer: ` +
      `${ds.answerPath}); shown ${prepared.rows.length}${dropped}${of}\n${setupSummary(setup)}`;
    if (a.json) console.error(summary);
    else console.log(summary);
    return prepared;
  });
