/**
 * Chat templates: the Jinja template of a model folder (chat_template.jinja, else tokenizer_config.json's
 * `chat_template`), rendered with @huggingface/jinja as transformers' apply_chat_template does: `messages`,
 * `add_generation_prompt`, the special tokens' text, and any template variables the caller adds
 * (`enable_thinking`, as vLLM's --chat-template-kwargs).
 */
import { Effect } from "effect";
import { Template } from "@huggingface/jinja";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { exists, readBytes, readJson } from "../io/files.ts";
import type { Message } from "../tasks/reward.ts";

/** A compiled Jinja template (an @huggingface/jinja Template): renders with the given variables. */
export interface CompiledTemplate {
  /** The text of the template under `items` (its variables: `messages`, `add_generation_prompt`, ...). */
  render(items: Record<string, unknown>): string;
}

/** A parsed chat template and where it came from. */
export interface ChatTemplate {
  /** The file it was read from (`.../chat_template.jinja` or `.../tokenizer_config.json`). */
  readonly file: string;
  /** The template's Jinja source. */
  readonly source: string;
  /** The source, compiled. */
  readonly compiled: CompiledTemplate;
}

/** Parse a template's source; a syntax error is a FileFormatError naming the file. */
export const parseChatTemplate = (source: string, file: string): ChatTemplate => {
  try {
    return { file, source, compiled: new Template(source) };
  } catch (e) {
    throw new FileFormatError({
      file,
      message: `${file}: the chat template does not parse (${(e as Error).message})`,
    });
  }
};

type Json = Record<string, unknown>;
const isObj = (x: unknown): x is Json => typeof x === "object" && x !== null && !Array.isArray(x);

/**
 * The template source in a parsed tokenizer_config.json: `chat_template` as a string, or a list of
 * {name, template} (the one named "default", else the first); undefined when absent.
 */
export const templateSourceOf = (config: unknown, file: string): string | undefined => {
  if (!isObj(config)) return undefined;
  const t = config.chat_template;
  if (t === undefined || t === null) return undefined;
  if (typeof t === "string") return t;
  if (Array.isArray(t) && t.length > 0 && t.every((x) => isObj(x) && typeof x.template === "string")) {
    const named = t as { name?: unknown; template: string }[];
    return (named.find((x) => x.name === "default") ?? named[0]).template;
  }
  throw new FileFormatError({
    file,
    message: `${file}: chat_template must be a string or a list of {name, template}; got ${
      JSON.stringify(t).slice(0, 80)
    }`,
  });
};

/** The content of a special-token field (a string or {content}), or undefined. */
export const specialText = (config: unknown, field: string): string | undefined => {
  if (!isObj(config)) return undefined;
  const v = config[field];
  if (typeof v === "string") return v;
  if (isObj(v) && typeof v.content === "string") return v.content;
  return undefined;
};

/** The special tokens' text a template may use (bos_token, eos_token, pad_token, unk_token). */
export const templateSpecials = (config: unknown): Record<string, string> =>
  Object.fromEntries(
    ["bos_token", "eos_token", "pad_token", "unk_token"].flatMap((f) => {
      const t = specialText(config, f);
      return t === undefined ? [] : [[f, t]];
    }),
  );

/**
 * Read a folder's chat template: `chat_template.jinja` when present (as transformers writes it), else the
 * `chat_template` of tokenizer_config.json; undefined when the folder has neither.
 */
export const readChatTemplate = (dir: string): Effect.Effect<ChatTemplate | undefined, FileFormatError> =>
  Effect.gen(function* () {
    const jinja = `${dir}/chat_template.jinja`;
    if (yield* exists(jinja)) {
      const bytes = yield* readBytes(jinja);
      return yield* Effect.try({
        try: () => parseChatTemplate(new TextDecoder().decode(bytes), jinja),
        catch: (e) => e as FileFormatError,
      });
    }
    const cfgFile = `${dir}/tokenizer_config.json`;
    if (!(yield* exists(cfgFile))) return undefined;
    const cfg = yield* readJson(cfgFile);
    return yield* Effect.try({
      try: () => {
        const src = templateSourceOf(cfg, cfgFile);
        return src === undefined ? undefined : parseChatTemplate(src, cfgFile);
      },
      catch: (e) => e as FileFormatError,
    });
  });

/** Options of rendering. */
export interface RenderOptions {
  /** End with the assistant's turn opened (default true): what generation continues from. */
  readonly addGenerationPrompt?: boolean;
  /** Template variables (`{"enable_thinking": false}`); they override the defaults but not `messages`. */
  readonly kwargs?: Readonly<Record<string, unknown>>;
  /** The special tokens' text (templateSpecials of tokenizer_config.json). */
  readonly specials?: Readonly<Record<string, string>>;
}

/** Check template variables from a flag or config: a JSON object without `messages`; a ConfigError otherwise. */
export const parseTemplateKwargs = (
  text: string,
  field = "--chat-template-kwargs",
): Record<string, unknown> => {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError({
      source: "flags",
      field,
      message: `${field}: not valid JSON (${(e as Error).message}); expected an object such as ` +
        `'{"enable_thinking": false}'`,
    });
  }
  if (!isObj(v)) {
    throw new ConfigError({
      source: "flags",
      field,
      message: `${field}: expected a JSON object such as '{"enable_thinking": false}', got ${text}`,
    });
  }
  if ("messages" in v) {
    throw new ConfigError({ source: "flags", field, message: `${field}: may not set "messages"` });
  }
  return v;
};

/** Render messages with a template; a failure of the template (raise_exception...) is a FileFormatError. */
export const renderChat = (
  template: ChatTemplate,
  messages: readonly Message[],
  opts: RenderOptions = {},
): string => {
  try {
    return template.compiled.render({
      ...opts.specials,
      // As transformers' apply_chat_template: no tools and no documents are None, not undefined.
      tools: null,
      documents: null,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      ...opts.kwargs,
      messages: messages.map((m) => ({ ...m })),
    });
  } catch (e) {
    throw new FileFormatError({
      file: template.file,
      message: `${template.file}: the chat template failed on this prompt (${(e as Error).message})`,
    });
  }
};
