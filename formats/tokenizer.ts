/** Tokenizers: a character tokenizer stored as a Hugging Face tokenizer.json, and a loader for real HF folders. */
import { Data, Effect } from "effect";
import { Tokenizer } from "@huggingface/tokenizers";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { exists, readJson, writeAtomic } from "../io/files.ts";

/**
 * Text to token ids and back. `encode` never adds special tokens: prepend `bos` (where the model has one) and
 * append `eos` yourself. Special tokens written literally in the text ("<eos>") encode to their ids, and
 * `decode` writes them back literally, as Hugging Face tokenizers do.
 */
export interface TextTokenizer {
  /** Number of ids: every id is in [0, vocabSize). */
  readonly vocabSize: number;
  encode(text: string): number[];
  /** Text of `ids`; with `skipSpecial`, special tokens (pad, eos, <|im_end|>...) are left out. */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** Begin-of-sequence id, where the model uses one. */
  readonly bos?: number;
  /** End-of-sequence id: generation stops here. */
  readonly eos: number;
  /** Padding id (masked out of every loss). */
  readonly pad: number;
}

/** A character of the text has no token. */
export class UnknownCharError extends Data.TaggedError("UnknownCharError")<{
  readonly char: string;
  readonly index: number;
  readonly message: string;
}> {}

/** The special tokens of a CharTokenizer and their ids: pad = 0, bos = 1, eos = 2; characters follow from 3. */
export const CHAR_SPECIALS = { pad: "<pad>", bos: "<bos>", eos: "<eos>" } as const;

/**
 * The pre-tokenizer pattern of the char format: every code point (newline included) is its own piece.
 * `[\s\S]` rather than `.` because Oniguruma's `.` (which HF tokenizers use) does not match "\n".
 */
export const CHAR_SPLIT_REGEX = "[\\s\\S]";

const showChar = (c: string) =>
  `${JSON.stringify(c)} (U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")})`;

/** Options of `decode`. */
export interface DecodeOptions {
  /** Leave out special tokens (pad, bos, eos) instead of writing them as "<pad>" etc. (default false). */
  readonly skipSpecial?: boolean;
}

/**
 * A character-level tokenizer: one id per code point of an alphabet, plus the special tokens <pad>, <bos> and
 * <eos>. `new CharTokenizer(alphabet)` gives ids pad 0, bos 1, eos 2, then the alphabet's characters from 3 in
 * the alphabet's order. It is stored as a Hugging Face tokenizer.json (WordLevel over single characters, a
 * Split pre-tokenizer isolating every character, a Fuse decoder, the specials as added tokens) plus a
 * tokenizer_config.json naming the specials, so the folder also loads with `@huggingface/tokenizers` (and the
 * Rust `tokenizers`) with identical ids; this class is the authority on what the ids are.
 */
export class CharTokenizer implements TextTokenizer {
  readonly kind = "char" as const;
  /** Token text by id: special contents and single characters. */
  readonly tokens: readonly string[];
  /** The non-special characters in id order. */
  readonly alphabet: string;
  readonly vocabSize: number;
  readonly pad: number;
  readonly bos?: number;
  readonly eos: number;
  private readonly charIds: Map<string, number>;
  /** Special token contents by decreasing length (longest match first, as HF's added-token splitter). */
  private readonly specials: { content: string; id: number }[];
  private readonly specialIds: Set<number>;

  /** The standard layout over `alphabet` (each character once; no character may be a special's text). */
  constructor(alphabet: string);
  /** Any layout: `tokens[id]` is a special's content (for ids in `special`) or one character. */
  constructor(tokens: readonly string[], special: { pad: number; eos: number; bos?: number });
  constructor(a: string | readonly string[], special?: { pad: number; eos: number; bos?: number }) {
    const fail = (field: string, message: string) =>
      new ConfigError({ source: "CharTokenizer", field, message: `CharTokenizer: ${message}` });
    let tokens: readonly string[], roles: { pad: number; eos: number; bos?: number };
    if (typeof a === "string") {
      const chars = Array.from(a);
      if (chars.length === 0) throw fail("alphabet", "the alphabet is empty");
      const seen = new Set<string>();
      for (const c of chars) {
        if (seen.has(c)) throw fail("alphabet", `character ${showChar(c)} appears twice in the alphabet`);
        seen.add(c);
      }
      tokens = [CHAR_SPECIALS.pad, CHAR_SPECIALS.bos, CHAR_SPECIALS.eos, ...chars];
      roles = { pad: 0, bos: 1, eos: 2 };
    } else {
      tokens = [...a];
      roles = special!;
    }
    const V = tokens.length;
    const roleIds = [roles.pad, roles.eos, ...(roles.bos === undefined ? [] : [roles.bos])];
    for (const [name, id] of Object.entries(roles)) {
      if (id !== undefined && !(Number.isInteger(id) && id >= 0 && id < V)) {
        throw fail(name, `${name} id ${id} is outside [0, ${V})`);
      }
    }
    this.specialIds = new Set(roleIds);
    const byText = new Map<string, number>();
    tokens.forEach((t, id) => {
      if (typeof t !== "string" || t.length === 0) throw fail("tokens", `token ${id} is empty`);
      if (byText.has(t)) {
        throw fail("tokens", `token ${JSON.stringify(t)} has two ids, ${byText.get(t)} and ${id}`);
      }
      byText.set(t, id);
      if (!this.specialIds.has(id) && Array.from(t).length !== 1) {
        throw fail("tokens", `token ${id} ${JSON.stringify(t)} is neither a special token nor one character`);
      }
    });
    this.tokens = tokens;
    this.vocabSize = V;
    this.pad = roles.pad;
    this.eos = roles.eos;
    if (roles.bos !== undefined) this.bos = roles.bos;
    this.charIds = new Map([...byText].filter(([, id]) => !this.specialIds.has(id)));
    this.alphabet = tokens.filter((_, id) => !this.specialIds.has(id)).join("");
    this.specials = [...this.specialIds].map((id) => ({ content: tokens[id], id }))
      .sort((x, y) => y.content.length - x.content.length);
  }

  /** Ids of `text`: special contents ("<eos>") match first, longest first; any other character must be known. */
  encode(text: string): number[] {
    const ids: number[] = [];
    let i = 0;
    outer: while (i < text.length) {
      for (const s of this.specials) {
        if (text.startsWith(s.content, i)) {
          ids.push(s.id);
          i += s.content.length;
          continue outer;
        }
      }
      const c = String.fromCodePoint(text.codePointAt(i)!);
      const id = this.charIds.get(c);
      if (id === undefined) {
        throw new UnknownCharError({
          char: c,
          index: i,
          message: `CharTokenizer.encode: character ${showChar(c)} at index ${i} is not in the alphabet ` +
            JSON.stringify(this.alphabet),
        });
      }
      ids.push(id);
      i += c.length;
    }
    return ids;
  }

  /** Text of `ids`; an id outside [0, vocabSize) is a RangeError naming it and its position. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    let out = "";
    ids.forEach((id, k) => {
      if (!(Number.isInteger(id) && id >= 0 && id < this.vocabSize)) {
        throw new RangeError(
          `CharTokenizer.decode: id ${id} at position ${k} is outside [0, ${this.vocabSize})`,
        );
      }
      if (!(options.skipSpecial && this.specialIds.has(id))) out += this.tokens[id];
    });
    return out;
  }

  /** The Hugging Face tokenizer.json of this tokenizer. */
  tokenizerJson(): Record<string, unknown> {
    return {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: [...this.specialIds].sort((x, y) => x - y).map((id) => ({
        id,
        content: this.tokens[id],
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      })),
      normalizer: null,
      pre_tokenizer: {
        type: "Split",
        pattern: { Regex: CHAR_SPLIT_REGEX },
        behavior: "Isolated",
        invert: false,
      },
      post_processor: null,
      decoder: { type: "Fuse" },
      // No <unk> in the vocabulary on purpose: an unknown character is an error, not a silent token.
      model: {
        type: "WordLevel",
        vocab: Object.fromEntries(this.tokens.map((t, id) => [t, id])),
        unk_token: "<unk>",
      },
    };
  }

  /** The tokenizer_config.json of this tokenizer: the special tokens' roles; no clean-up of spaces. */
  tokenizerConfigJson(): Record<string, unknown> {
    return {
      tokenizer_class: "PreTrainedTokenizerFast",
      bos_token: this.bos === undefined ? null : this.tokens[this.bos],
      eos_token: this.tokens[this.eos],
      pad_token: this.tokens[this.pad],
      unk_token: null,
      clean_up_tokenization_spaces: false,
      model_max_length: 1_000_000,
    };
  }
}

/** A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) run by `@huggingface/tokenizers`. */
export class HfTokenizer implements TextTokenizer {
  readonly kind = "hf" as const;
  readonly vocabSize: number;
  constructor(
    readonly inner: Tokenizer,
    readonly file: string,
    readonly eos: number,
    readonly pad: number,
    readonly bos?: number,
  ) {
    let max = -1;
    for (const id of inner.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
  }

  /** Ids of `text`, without the special tokens a post-processor would add; unknown pieces are an error. */
  encode(text: string): number[] {
    const { ids, tokens } = this.inner.encode(text, { add_special_tokens: false });
    const k = ids.findIndex((id) => id === undefined || id === null);
    if (k >= 0) {
      throw new UnknownCharError({
        char: tokens[k],
        index: k,
        message: `${this.file}: piece ${
          JSON.stringify(tokens[k])
        } (token ${k}) has no id and the tokenizer has no unk token`,
      });
    }
    return ids;
  }

  /** Text of `ids` (special tokens written out, no clean-up beyond what tokenizer_config.json asks for). */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    ids.forEach((id, k) => {
      if (!(Number.isInteger(id) && id >= 0 && id < this.vocabSize)) {
        throw new RangeError(
          `${this.file}: decode: id ${id} at position ${k} is outside [0, ${this.vocabSize})`,
        );
      }
    });
    return ids.length === 0
      ? ""
      : this.inner.decode([...ids], { skip_special_tokens: options.skipSpecial ?? false });
  }
}

type Json = Record<string, unknown>;
const isObj = (x: unknown): x is Json => typeof x === "object" && x !== null && !Array.isArray(x);

/** Whether a parsed tokenizer.json is the char format written by CharTokenizer (then CharTokenizer reads it). */
export const isCharTokenizerJson = (json: unknown): boolean => {
  if (!isObj(json) || !isObj(json.model) || json.model.type !== "WordLevel" || !isObj(json.model.vocab)) {
    return false;
  }
  const pre = json.pre_tokenizer;
  if (
    !isObj(pre) || pre.type !== "Split" || !isObj(pre.pattern) || pre.pattern.Regex !== CHAR_SPLIT_REGEX ||
    pre.behavior !== "Isolated" || pre.invert !== false
  ) return false;
  if (
    !isObj(json.decoder) || json.decoder.type !== "Fuse" || json.normalizer != null ||
    json.post_processor != null
  ) {
    return false;
  }
  const added = new Set(
    Array.isArray(json.added_tokens) ? json.added_tokens.map((t) => isObj(t) && t.content) : [],
  );
  return Object.keys(json.model.vocab).every((t) => added.has(t) || Array.from(t).length === 1);
};

/** The content of a special-token field of tokenizer_config.json: a string, `{ content }`, or null/absent. */
const specialContent = (cfg: Json, field: string, cfgPath: string): string | null => {
  const v = cfg[field];
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (isObj(v) && typeof v.content === "string") return v.content;
  throw new ConfigError({
    source: cfgPath,
    field,
    message: `${cfgPath}: ${field} must be a string, { "content": string } or null; got ${JSON.stringify(v)}`,
  });
};

/** Read a CharTokenizer from its parsed files; a malformed field is named with its file. */
export const charTokenizerFromJson = (
  json: unknown,
  config: unknown,
  file = "tokenizer.json",
  configFile = "tokenizer_config.json",
): CharTokenizer => {
  const ff = (field: string, msg: string) =>
    new FileFormatError({ file, message: `${file}: ${field} ${msg}` });
  if (!isObj(json) || !isObj(json.model) || !isObj(json.model.vocab)) throw ff("model.vocab", "is missing");
  const vocab = json.model.vocab;
  const V = Object.keys(vocab).length;
  const tokens: string[] = new Array(V);
  for (const [t, id] of Object.entries(vocab)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= V) {
      throw ff(
        `model.vocab[${JSON.stringify(t)}]`,
        `is ${JSON.stringify(id)}; ids must be 0..${V - 1}, each once`,
      );
    }
    if (tokens[id] !== undefined) {
      throw ff(
        "model.vocab",
        `gives id ${id} to both ${JSON.stringify(tokens[id])} and ${JSON.stringify(t)}`,
      );
    }
    tokens[id] = t;
  }
  const added = Array.isArray(json.added_tokens) ? json.added_tokens : [];
  added.forEach((a, k) => {
    if (!isObj(a) || typeof a.content !== "string" || vocab[a.content] !== a.id) {
      throw ff(
        `added_tokens[${k}]`,
        `must be { id, content } with model.vocab[content] = id; got ${JSON.stringify(a)}`,
      );
    }
  });
  const cfg = isObj(config) ? config : {};
  const role = (field: string, fallback: string, required: boolean): number | undefined => {
    const content = field in cfg
      ? specialContent(cfg, field, configFile)
      : (fallback in vocab ? fallback : null);
    if (content === null) {
      if (!required) return undefined;
      throw new ConfigError({
        source: configFile,
        field,
        message: `${configFile}: ${field} is missing (needed)`,
      });
    }
    const id = vocab[content];
    if (typeof id !== "number" || !added.some((a) => isObj(a) && a.content === content)) {
      throw new ConfigError({
        source: configFile,
        field,
        message: `${configFile}: ${field} ${JSON.stringify(content)} is not an added token of ${file}`,
      });
    }
    return id;
  };
  const roles = {
    pad: role("pad_token", CHAR_SPECIALS.pad, true)!,
    eos: role("eos_token", CHAR_SPECIALS.eos, true)!,
    bos: role("bos_token", CHAR_SPECIALS.bos, false),
  };
  try {
    return new CharTokenizer(tokens, roles);
  } catch (e) {
    if (e instanceof ConfigError) throw ff(e.field, e.message);
    throw e;
  }
};

/** Wrap a parsed real Hugging Face tokenizer (Qwen, Llama...); eos required, pad defaults to eos, bos optional. */
export const hfTokenizerFromJson = (
  json: unknown,
  config: unknown,
  file = "tokenizer.json",
  configFile = "tokenizer_config.json",
): HfTokenizer => {
  let inner: Tokenizer;
  try {
    inner = new Tokenizer(json as object, (isObj(config) ? config : {}) as object);
  } catch (e) {
    throw new FileFormatError({
      file,
      message: `${file}: @huggingface/tokenizers cannot load it (${(e as Error).message})`,
    });
  }
  const cfg = isObj(config) ? config : {};
  const id = (field: string): number | undefined => {
    const content = specialContent(cfg, field, configFile);
    if (content === null) return undefined;
    const v = inner.token_to_id(content);
    if (v === undefined) {
      throw new ConfigError({
        source: configFile,
        field,
        message: `${configFile}: ${field} ${JSON.stringify(content)} is not a token of ${file}`,
      });
    }
    return v;
  };
  const eos = id("eos_token");
  if (eos === undefined) {
    throw new ConfigError({
      source: configFile,
      field: "eos_token",
      message: `${configFile}: eos_token is missing; it names the token that ends a generation`,
    });
  }
  return new HfTokenizer(inner, file, eos, id("pad_token") ?? eos, id("bos_token"));
};

/**
 * Read a tokenizer folder: `tokenizer.json` (required) and `tokenizer_config.json` (optional for the char
 * format, where the specials default to <pad>/<bos>/<eos>; required for real HF tokenizers, which need
 * eos_token). The char format gives a CharTokenizer, anything else an HfTokenizer.
 */
export const readTokenizerDir = (
  dir: string,
): Effect.Effect<CharTokenizer | HfTokenizer, FileFormatError | ConfigError> =>
  Effect.gen(function* () {
    const file = `${dir}/tokenizer.json`, configFile = `${dir}/tokenizer_config.json`;
    const json = yield* readJson(file);
    const config = (yield* exists(configFile)) ? yield* readJson(configFile) : undefined;
    if (config !== undefined && !isObj(config)) {
      return yield* new FileFormatError({
        file: configFile,
        message: `${configFile}: expected a JSON object`,
      });
    }
    return yield* Effect.try({
      try: () =>
        isCharTokenizerJson(json)
          ? charTokenizerFromJson(json, config, file, configFile)
          : hfTokenizerFromJson(json, config, file, configFile),
      catch: (e) => e as FileFormatError | ConfigError,
    });
  });

/** Write a CharTokenizer's tokenizer.json and tokenizer_config.json into `dir` (created if needed), atomically. */
export const writeTokenizerDir = (dir: string, tok: CharTokenizer): Effect.Effect<void, FileFormatError> =>
  Effect.gen(function* () {
    yield* Effect.tryPromise({
      try: () => Deno.mkdir(dir, { recursive: true }),
      catch: (e) => new FileFormatError({ file: dir, message: `${dir}: cannot create folder (${e})` }),
    });
    yield* writeAtomic(`${dir}/tokenizer.json`, JSON.stringify(tok.tokenizerJson(), null, 2) + "\n");
    yield* writeAtomic(
      `${dir}/tokenizer_config.json`,
      JSON.stringify(tok.tokenizerConfigJson(), null, 2) + "\n",
    );
  });

/** Read tokenizer.json (+ tokenizer_config.json) as a Promise; rejects with the FileFormatError or ConfigError. */
export const loadTokenizer = (dir: string): Promise<CharTokenizer | HfTokenizer> =>
  Effect.runPromise(readTokenizerDir(dir));

/** Write a char tokenizer's tokenizer.json and tokenizer_config.json, each atomically, as a Promise. */
export const saveTokenizer = (dir: string, tok: CharTokenizer): Promise<void> =>
  Effect.runPromise(writeTokenizerDir(dir, tok));
