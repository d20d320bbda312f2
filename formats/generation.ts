/**
 * What a model folder says about prompts and generation: the tokenizer, the chat template, the stop ids
 * (every eos of generation_config.json and the tokenizer's eos), the pad id, and the tokenizer's real
 * vocabulary size beside config.json's `vocab_size` (Qwen3: 151,669 ids against 151,936 rows), so samplers can
 * mask the ids the tokenizer does not have. `PromptSetup.encode` gives a prompt as the model sees it.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { exists, readJson } from "../io/files.ts";
import type { Prompt } from "../tasks/reward.ts";
import { type ChatTemplate, readChatTemplate, renderChat, templateSpecials } from "./chat.ts";
import { type Row, RowError } from "./dataset.ts";
import { readTokenizerDir, type TextTokenizer } from "./tokenizer.ts";

/** The fields of generation_config.json that matter here. */
export interface GenerationConfig {
  /** The file read (for messages). */
  readonly file: string;
  /** `eos_token_id`: one id or several (Qwen3: [151645, 151643]); empty when absent. */
  readonly eosIds: readonly number[];
  /** `pad_token_id`, when set. */
  readonly padId?: number;
  /** `bos_token_id`, when set. */
  readonly bosId?: number;
}

type Json = Record<string, unknown>;
const isObj = (x: unknown): x is Json => typeof x === "object" && x !== null && !Array.isArray(x);
const isId = (x: unknown): x is number => typeof x === "number" && Number.isInteger(x) && x >= 0;

/** Read the parsed generation_config.json; an id field that is not an id (or a list of ids) names itself. */
export const generationConfigFromJson = (json: unknown, file: string): GenerationConfig => {
  if (!isObj(json)) throw new FileFormatError({ file, message: `${file}: expected a JSON object` });
  const bad = (field: string, what: string) =>
    new FileFormatError({
      file,
      message: `${file}: ${field} must be ${what}, got ${JSON.stringify(json[field])}`,
    });
  const one = (field: string): number | undefined => {
    const v = json[field];
    if (v === undefined || v === null) return undefined;
    if (!isId(v)) throw bad(field, "a token id (an integer >= 0) or null");
    return v;
  };
  const e = json.eos_token_id;
  let eosIds: number[];
  if (e === undefined || e === null) eosIds = [];
  else if (isId(e)) eosIds = [e];
  else if (Array.isArray(e) && e.every(isId)) eosIds = [...new Set(e)];
  else throw bad("eos_token_id", "a token id or a list of token ids");
  const padId = one("pad_token_id"), bosId = one("bos_token_id");
  return {
    file,
    eosIds,
    ...(padId !== undefined ? { padId } : {}),
    ...(bosId !== undefined ? { bosId } : {}),
  };
};

/** Read `dir/generation_config.json`; undefined when the folder has none. */
export const readGenerationConfig = (
  dir: string,
): Effect.Effect<GenerationConfig | undefined, FileFormatError> =>
  Effect.gen(function* () {
    const file = `${dir}/generation_config.json`;
    if (!(yield* exists(file))) return undefined;
    const json = yield* readJson(file);
    return yield* Effect.try({
      try: () => generationConfigFromJson(json, file),
      catch: (e) => e as FileFormatError,
    });
  });

/** `vocab_size` of a parsed config.json (top level, or `text_config` of multimodal configs). */
export const modelVocabOf = (config: unknown): number | undefined => {
  if (!isObj(config)) return undefined;
  const v = config.vocab_size ?? (isObj(config.text_config) ? config.text_config.vocab_size : undefined);
  return typeof v === "number" && Number.isInteger(v) && v > 0 ? v : undefined;
};

/** How prompts become text. */
export interface PromptOptions {
  /**
   * Use the folder's chat template (default true). A string prompt is then the user's message; without a
   * template (or with false: `--no-chat-template`) a string prompt is sent as it is.
   */
  readonly chatTemplate?: boolean;
  /** Template variables (vLLM's --chat-template-kwargs), e.g. {"enable_thinking": false}. */
  readonly chatTemplateKwargs?: Readonly<Record<string, unknown>>;
  /** Open the assistant's turn at the end (default true). */
  readonly addGenerationPrompt?: boolean;
}

/** A prompt as the model sees it. */
export interface EncodedPrompt {
  /** The text (template applied or not). */
  readonly text: string;
  /** Its token ids. */
  readonly ids: number[];
}

/** Everything between a dataset row's prompt and the sampler. */
export interface PromptSetup {
  /** The model folder. */
  readonly dir: string;
  /** Its tokenizer. */
  readonly tokenizer: TextTokenizer;
  /** The chat template prompts are rendered with; absent: prompts go as they are. */
  readonly template?: ChatTemplate;
  /** The options it was read with. */
  readonly options: PromptOptions;
  /** Generation stops at any of these: generation_config.json's eos ids, then the tokenizer's eos. */
  readonly stopIds: readonly number[];
  /** Padding: generation_config.json's pad_token_id, else the tokenizer's pad (which defaults to its eos). */
  readonly pad: number;
  /** generation_config.json's bos_token_id, else the tokenizer's bos (templates write their own). */
  readonly bos?: number;
  /** Ids the tokenizer has: [0, tokenizerVocab). Sample only these. */
  readonly tokenizerVocab: number;
  /** config.json's vocab_size (the unembedding's rows), when the folder has one; >= tokenizerVocab. */
  readonly modelVocab?: number;
  /** The prompt's text (template applied or not). */
  render(prompt: Prompt): string;
  /** The prompt's text and its ids (no special tokens added: templates write their own). */
  encode(prompt: Prompt): EncodedPrompt;
}

/** The pieces read from a folder. */
export interface PromptParts {
  /** The model folder (for messages). */
  readonly dir: string;
  /** Its tokenizer. */
  readonly tokenizer: TextTokenizer;
  /** Its chat template, if any. */
  readonly template?: ChatTemplate;
  /** The parsed tokenizer_config.json (for the special tokens' text). */
  readonly tokenizerConfig?: unknown;
  /** The parsed generation_config.json, if any. */
  readonly generation?: GenerationConfig;
  /** config.json's vocab_size, if known. */
  readonly modelVocab?: number;
}

/** Assemble a PromptSetup from read pieces; ids outside the tokenizer's range are errors naming their file. */
export const promptSetup = (parts: PromptParts, options: PromptOptions = {}): PromptSetup => {
  const { dir, tokenizer, generation } = parts;
  const V = tokenizer.vocabSize;
  const gen = generation;
  for (
    const [field, id] of [
      ...(gen?.eosIds ?? []).map((id) => ["eos_token_id", id] as const),
      ["pad_token_id", gen?.padId] as const,
      ["bos_token_id", gen?.bosId] as const,
    ]
  ) {
    if (id !== undefined && id >= V) {
      throw new FileFormatError({
        file: gen!.file,
        message: `${gen!.file}: ${field} ${id} is not an id of the tokenizer (its ids are 0..${V - 1})`,
      });
    }
  }
  if (parts.modelVocab !== undefined && parts.modelVocab < V) {
    throw new ConfigError({
      source: `${dir}/config.json`,
      field: "vocab_size",
      message: `${dir}/config.json: vocab_size ${parts.modelVocab} is smaller than the tokenizer's ${V} ids`,
    });
  }
  const stopIds = [...new Set([...(gen?.eosIds ?? []), tokenizer.eos])];
  const useTemplate = (options.chatTemplate ?? true) && parts.template !== undefined;
  const template = useTemplate ? parts.template : undefined;
  const specials = templateSpecials(parts.tokenizerConfig);
  const bos = gen?.bosId ?? tokenizer.bos;
  const render = (prompt: Prompt): string => {
    if (template) {
      const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
      return renderChat(template, messages, {
        addGenerationPrompt: options.addGenerationPrompt ?? true,
        kwargs: options.chatTemplateKwargs,
        specials,
      });
    }
    if (typeof prompt === "string") return prompt;
    throw options.chatTemplate === false
      ? new ConfigError({
        source: "flags",
        field: "--no-chat-template",
        message: "--no-chat-template sends string prompts as they are, but this prompt is a list of messages",
      })
      : new ConfigError({
        source: dir,
        field: "chat_template",
        message:
          `${dir}: the tokenizer has no chat template (no chat_template in tokenizer_config.json, no ` +
          "chat_template.jinja), so prompts given as messages cannot be rendered; use string prompts",
      });
  };
  return {
    dir,
    tokenizer,
    ...(template ? { template } : {}),
    options,
    stopIds,
    pad: gen?.padId ?? tokenizer.pad,
    ...(bos !== undefined ? { bos } : {}),
    tokenizerVocab: V,
    ...(parts.modelVocab !== undefined ? { modelVocab: parts.modelVocab } : {}),
    render,
    encode: (prompt) => {
      const text = render(prompt);
      return { text, ids: tokenizer.encode(text) };
    },
  };
};

/**
 * Read a model folder's prompt setup: tokenizer.json (+ tokenizer_config.json), the chat template,
 * generation_config.json and config.json's vocab_size (each optional but the tokenizer).
 */
export const readPromptSetup = (
  dir: string,
  options: PromptOptions = {},
): Effect.Effect<PromptSetup, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    if (!(yield* exists(dir))) {
      return yield* new FileFormatError({ file: dir, message: `${dir}: model folder does not exist` });
    }
    const tokenizer = yield* readTokenizerDir(dir);
    const cfgFile = `${dir}/tokenizer_config.json`;
    const tokenizerConfig = (yield* exists(cfgFile)) ? yield* readJson(cfgFile) : undefined;
    const template = yield* readChatTemplate(dir);
    const generation = yield* readGenerationConfig(dir);
    const modelFile = `${dir}/config.json`;
    const modelVocab = (yield* exists(modelFile)) ? modelVocabOf(yield* readJson(modelFile)) : undefined;
    return yield* Effect.try({
      try: () => promptSetup({ dir, tokenizer, template, tokenizerConfig, generation, modelVocab }, options),
      catch: (e) => e as FileFormatError | ConfigError,
    });
  });

/** `readPromptSetup` as a Promise. */
export const loadPromptSetup = (dir: string, options: PromptOptions = {}): Promise<PromptSetup> =>
  Effect.runPromise(readPromptSetup(dir, options));

/** A row with its prompt as the model sees it. */
export interface PreparedRow {
  /** The row as read. */
  readonly row: Row;
  /** Its prompt as the model sees it. */
  readonly text: string;
  /** The prompt's ids. */
  readonly ids: number[];
}

/** What `prepareRows` kept and dropped. */
export interface Prepared {
  /** The rows kept, in file order. */
  readonly rows: readonly PreparedRow[];
  /** Row numbers (1-based, in file order) of prompts longer than `maxPrompt` tokens, dropped. */
  readonly dropped: readonly number[];
  /** How many rows were looked at (all, unless `limit` stopped early). */
  readonly examined: number;
}

/** Render and encode one row; a failure (template error, messages without a template) is a RowError. */
export const prepareRow = (setup: PromptSetup, file: string, row: Row): PreparedRow => {
  try {
    const { text, ids } = setup.encode(row.prompt);
    return { row, text, ids };
  } catch (e) {
    const m = e instanceof Error ? e.message : String(e);
    // A prompt the options cannot render (messages under --no-chat-template) is a usage error still.
    if (e instanceof ConfigError) {
      throw new ConfigError({ source: e.source, field: e.field, message: `${file}: row ${row.row}: ${m}` });
    }
    throw new RowError({
      file,
      row: row.row,
      field: "prompt",
      message: `${file}: row ${row.row}: prompt: ${m}`,
    });
  }
};

/**
 * Render and encode rows in order, dropping prompts longer than `maxPrompt` tokens (verl's
 * filter_overlong_prompts); with `limit`, stop once that many are kept.
 */
export const prepareRows = (
  setup: PromptSetup,
  file: string,
  rows: readonly Row[],
  opts: { readonly maxPrompt?: number; readonly limit?: number } = {},
): Prepared => {
  const kept: PreparedRow[] = [], dropped: number[] = [];
  let examined = 0;
  for (const row of rows) {
    if (opts.limit !== undefined && kept.length >= opts.limit) break;
    examined++;
    const p = prepareRow(setup, file, row);
    if (opts.maxPrompt !== undefined && p.ids.length > opts.maxPrompt) dropped.push(row.row);
    else kept.push(p);
  }
  return { rows: kept, dropped, examined };
};
