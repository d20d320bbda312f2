/** Tokenizers: char layout and round trips, agreement with @huggingface/tokenizers and Rust ids, folder IO, errors. */
import fc from "fast-check";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import {
  CHAR_SPECIALS,
  CharTokenizer,
  charTokenizerFromJson,
  hfTokenizerFromJson,
  isCharTokenizerJson,
  UnknownCharError,
} from "../formats/tokenizer.ts";
import { loadTokenizer, saveTokenizer } from "../formats/tokenizer.ts";
import { ARITH_ALPHABET, arithTask, drawProblems } from "../tasks/mod.ts";
import { eq, throwsWith, withTempDir } from "./util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;

// A wide alphabet: the arithmetic characters, newline, space, the letters of the special tokens (so random
// text spells "<eos>" now and then), and a character outside the BMP.
const WIDE = ARITH_ALPHABET + "\n <>abdeops😀";
/** Random text over the alphabet's characters and the special tokens' contents. */
const arbText = (alphabet: string) =>
  fc.array(fc.constantFrom(...Array.from(alphabet), ...Object.values(CHAR_SPECIALS)), { maxLength: 40 })
    .map((xs) => xs.join(""));

Deno.test("char layout: pad 0, bos 1, eos 2, then the alphabet in order", () => {
  const t = new CharTokenizer(ARITH_ALPHABET);
  eq([t.pad, t.bos, t.eos, t.vocabSize], [0, 1, 2, 3 + ARITH_ALPHABET.length], "ids");
  eq(t.encode("0"), [3], "first character");
  eq(t.encode("3+5=8|8."), [6, 13, 8, 15, 11, 17, 11, 18], "an arithmetic string");
  eq(t.alphabet, ARITH_ALPHABET, "alphabet");
  eq(t.encode(""), [], "empty text");
  eq(t.decode([]), "", "empty ids");
  eq(t.encode("1<eos>"), [4, 2], "a special token in the text");
  eq(t.decode([1, 4, 2, 0], { skipSpecial: true }), "1", "skipSpecial");
  eq(t.decode([1, 4, 2, 0]), "<bos>1<eos><pad>", "specials written out");
});

Deno.test("char round trip: decode(encode(s)) == s, and encode(decode(ids)) == ids", () => {
  const t = new CharTokenizer(WIDE);
  fc.assert(
    fc.property(arbText(WIDE), (s) => eq(t.decode(t.encode(s)), s, `round trip of ${JSON.stringify(s)}`)),
  );
  fc.assert(fc.property(fc.array(fc.nat(t.vocabSize - 1), { maxLength: 40 }), (ids) => {
    // A char id sequence may spell a special ("<", "e", "o", "s", ">"), which re-encodes to the special's id:
    // that is the one way ids do not round trip, as in Hugging Face tokenizers.
    const text = t.decode(ids);
    if (!Object.values(CHAR_SPECIALS).some((s) => text.includes(s) && !ids.includes(t.encode(s)[0]))) {
      eq(t.encode(text), ids, `ids ${ids}`);
    }
  }));
});

Deno.test("every arithmetic problem encodes and decodes exactly", () => {
  const t = new CharTokenizer(arithTask().alphabet);
  for (const p of drawProblems(arithTask(), "train", 0, 0, 500)) {
    const s = p.prompt + p.solution;
    eq(t.decode(t.encode(s)), s, "round trip");
  }
});

Deno.test("@huggingface/tokenizers reads our tokenizer.json and gives identical ids and text", () => {
  for (const alphabet of [ARITH_ALPHABET, WIDE]) {
    const t = new CharTokenizer(alphabet);
    const h = hfTokenizerFromJson(t.tokenizerJson(), t.tokenizerConfigJson());
    eq([h.vocabSize, h.pad, h.bos, h.eos], [t.vocabSize, t.pad, t.bos, t.eos], "sizes and specials");
    fc.assert(fc.property(arbText(alphabet), (s) => {
      eq(h.encode(s), t.encode(s), `ids of ${JSON.stringify(s)}`);
      eq(h.decode(t.encode(s)), s, `HF decode of ${JSON.stringify(s)}`);
    }));
  }
});

Deno.test("the char fixture gives the ids the Rust tokenizers gave, through both loaders", async () => {
  const dir = `${FIX}char_tokenizer`;
  const t = await loadTokenizer(dir);
  if (!(t instanceof CharTokenizer)) throw new Error(`loaded as ${t.kind}`);
  eq(t.alphabet, WIDE, "alphabet");
  const json = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`));
  const cfg = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
  const h = hfTokenizerFromJson(json, cfg);
  const golden: { cases: { text: string; ids: number[] }[] } = JSON.parse(
    await Deno.readTextFile(`${dir}/rust_ids.json`),
  );
  if (golden.cases.length < 40) throw new Error("fixture too small");
  for (const { text, ids } of golden.cases) {
    eq(t.encode(text), ids, `ours, ${JSON.stringify(text)}`);
    eq(h.encode(text), ids, `@huggingface/tokenizers, ${JSON.stringify(text)}`);
    eq(t.decode(ids), text, `decode ${ids}`);
  }
  eq(t.tokenizerJson(), json, "tokenizer.json is what CharTokenizer writes");
  eq(t.tokenizerConfigJson(), cfg, "tokenizer_config.json is what CharTokenizer writes");
});

Deno.test("save then load gives the same tokenizer; writes leave no temp files", async () => {
  await withTempDir("bupo-tok-", async (dir) => {
    const t = new CharTokenizer(WIDE);
    await saveTokenizer(`${dir}/tok`, t);
    await saveTokenizer(`${dir}/tok`, t); // overwrite in place
    eq([...Deno.readDirSync(`${dir}/tok`)].map((e) => e.name).sort(), [
      "tokenizer.json",
      "tokenizer_config.json",
    ], "files");
    const back = await loadTokenizer(`${dir}/tok`);
    if (!(back instanceof CharTokenizer)) throw new Error(`loaded as ${back.kind}`);
    eq([back.tokens, back.pad, back.bos, back.eos], [t.tokens, t.pad, t.bos, t.eos], "tokens and specials");
    // Without tokenizer_config.json the specials are found by their contents.
    await Deno.remove(`${dir}/tok/tokenizer_config.json`);
    const bare = await loadTokenizer(`${dir}/tok`);
    eq([bare.pad, bare.bos, bare.eos], [0, 1, 2], "specials without config");
  });
});

Deno.test("a char layout read from a file may differ from the standard one", () => {
  const tokens = ["a", "b", "</s>", "<pad>", "c"];
  const json = {
    ...new CharTokenizer("x").tokenizerJson(),
    added_tokens: [{ id: 2, content: "</s>", special: true }, { id: 3, content: "<pad>", special: true }],
    model: { type: "WordLevel", vocab: Object.fromEntries(tokens.map((t, i) => [t, i])), unk_token: "<unk>" },
  };
  if (!isCharTokenizerJson(json)) throw new Error("not recognised as char format");
  const t = charTokenizerFromJson(json, {
    eos_token: "</s>",
    pad_token: { content: "<pad>" },
    bos_token: null,
  });
  eq([t.eos, t.pad, t.bos, t.vocabSize, t.alphabet], [2, 3, undefined, 5, "abc"], "roles");
  eq(t.encode("ca</s>"), [4, 0, 2], "encode");
  const h = hfTokenizerFromJson(json, { eos_token: "</s>", pad_token: "<pad>" });
  eq(h.encode("ca</s>b<pad>"), t.encode("ca</s>b<pad>"), "HF agrees");
});

Deno.test("unknown characters and bad ids are errors naming them", async () => {
  const t = new CharTokenizer(ARITH_ALPHABET);
  const e = await throwsWith(() => t.encode("3+x=4"), UnknownCharError, [
    `"x" (U+0078)`,
    "index 2",
    ARITH_ALPHABET,
  ]);
  eq([(e as UnknownCharError).char, (e as UnknownCharError).index], ["x", 2], "fields");
  await throwsWith(() => t.encode("1 2"), UnknownCharError, [`" " (U+0020)`, "index 1"]);
  await throwsWith(() => t.encode("😀"), UnknownCharError, ["U+1F600", "index 0"]);
  await throwsWith(() => t.encode("<eo"), UnknownCharError, [`"<"`]);
  await throwsWith(() => t.decode([3, 19]), RangeError, ["id 19", "position 1", "[0, 19)"]);
  await throwsWith(() => t.decode([1.5]), RangeError, ["id 1.5"]);
  const h = hfTokenizerFromJson(t.tokenizerJson(), t.tokenizerConfigJson(), "x/tokenizer.json");
  await throwsWith(() => h.encode("3+x"), UnknownCharError, ["x/tokenizer.json", `"x"`]);
  await throwsWith(() => h.decode([-1]), RangeError, ["id -1"]);
  await throwsWith(() => new CharTokenizer("abca"), ConfigError, [`"a" (U+0061) appears twice`]);
  await throwsWith(() => new CharTokenizer(""), ConfigError, ["empty"]);
});

Deno.test("the hand-made HF BPE fixture loads through @huggingface/tokenizers with the Rust ids", async () => {
  const t = await loadTokenizer(`${FIX}hf_tiny_bpe`);
  if (t.kind !== "hf") throw new Error(`loaded as ${t.kind}`);
  // Qwen-style: eos <|im_end|>, pad <|endoftext|>, no bos.
  eq([t.vocabSize, t.eos, t.pad, t.bos], [32, 31, 29, undefined], "sizes and specials");
  // Expected ids from the Rust tokenizers 0.23.2 (npm `tokenizers`, addSpecialTokens false) on this file.
  const golden: [string, number[]][] = [
    ["hello world", [23, 28]],
    ["hello world<|im_end|>", [23, 28, 31]],
    ["1+2=3", [1, 10, 2, 11, 3]],
    ["held", [20, 15, 19]],
    ["<|im_start|>hello<|endoftext|>", [30, 23, 29]],
    ["hello  world", [23, 12, 28]],
  ];
  for (const [s, ids] of golden) {
    eq(t.encode(s), ids, `ids of ${JSON.stringify(s)}`);
    eq(t.decode(ids), s, `decode of ${ids}`);
  }
  eq(t.decode([]), "", "empty");
  eq(t.decode([30, 23, 31], { skipSpecial: true }), "hello", "skipSpecial");
  if (isCharTokenizerJson(JSON.parse(await Deno.readTextFile(`${FIX}hf_tiny_bpe/tokenizer.json`)))) {
    throw new Error("BPE fixture taken for the char format");
  }
});

Deno.test("folder errors name the file and the field", async () => {
  await withTempDir("bupo-tok-", async (dir) => {
    const put = async (name: string, data: unknown) => {
      await Deno.mkdir(`${dir}/${name}`, { recursive: true });
      const [tok, cfg] = data as [unknown, unknown];
      await Deno.writeTextFile(
        `${dir}/${name}/tokenizer.json`,
        typeof tok === "string" ? tok : JSON.stringify(tok),
      );
      if (cfg !== undefined) {
        await Deno.writeTextFile(
          `${dir}/${name}/tokenizer_config.json`,
          typeof cfg === "string" ? cfg : JSON.stringify(cfg),
        );
      }
      return `${dir}/${name}`;
    };
    const bpe = JSON.parse(await Deno.readTextFile(`${FIX}hf_tiny_bpe/tokenizer.json`));
    const char = new CharTokenizer("ab");
    await throwsWith(() => loadTokenizer(`${dir}/none`), FileFormatError, [
      `${dir}/none/tokenizer.json`,
      "no such file",
    ]);
    await throwsWith(() => loadTokenizer(`${dir}/none`), FileFormatError, ["no such file"]);
    let d = await put("badjson", ["{ nope", undefined]);
    await throwsWith(() => loadTokenizer(d), FileFormatError, [`${d}/tokenizer.json`, "not valid JSON"]);
    d = await put("badcfg", [bpe, "[1]"]);
    await throwsWith(() => loadTokenizer(d), FileFormatError, [`${d}/tokenizer_config.json`, "JSON object"]);
    d = await put("noeos", [bpe, { pad_token: "<|endoftext|>" }]);
    const e = await throwsWith(() => loadTokenizer(d), ConfigError, [
      `${d}/tokenizer_config.json`,
      "eos_token",
    ]);
    eq((e as ConfigError).field, "eos_token", "field");
    d = await put("badeos", [bpe, { eos_token: "<|nope|>" }]);
    await throwsWith(() => loadTokenizer(d), ConfigError, ["eos_token", `"<|nope|>" is not a token`]);
    d = await put("eosnum", [bpe, { eos_token: 7 }]);
    await throwsWith(() => loadTokenizer(d), ConfigError, ["eos_token must be a string"]);
    d = await put("badmodel", [{ ...bpe, model: { type: "Nope" } }, { eos_token: "<|im_end|>" }]);
    await throwsWith(() => loadTokenizer(d), FileFormatError, [`${d}/tokenizer.json`, "cannot load"]);
    const dup = {
      ...char.tokenizerJson(),
      model: { type: "WordLevel", vocab: { "<pad>": 0, "<bos>": 1, "<eos>": 2, a: 3, b: 3 } },
    };
    d = await put("dupids", [dup, char.tokenizerConfigJson()]);
    await throwsWith(() => loadTokenizer(d), FileFormatError, [`${d}/tokenizer.json`, "model.vocab", "id 3"]);
    const gap = {
      ...char.tokenizerJson(),
      model: { type: "WordLevel", vocab: { "<pad>": 0, "<bos>": 1, "<eos>": 2, a: 3, b: 9 } },
    };
    d = await put("gapids", [gap, char.tokenizerConfigJson()]);
    await throwsWith(() => loadTokenizer(d), FileFormatError, [`model.vocab["b"]`, "is 9"]);
    d = await put("padnotadded", [char.tokenizerJson(), { ...char.tokenizerConfigJson(), pad_token: "a" }]);
    await throwsWith(() => loadTokenizer(d), ConfigError, [
      `${d}/tokenizer_config.json`,
      "pad_token",
      "not an added token",
    ]);
    d = await put("nopad", [char.tokenizerJson(), { ...char.tokenizerConfigJson(), pad_token: null }]);
    await throwsWith(() => loadTokenizer(d), ConfigError, [
      `${d}/tokenizer_config.json`,
      "pad_token is missing",
    ]);
  });
});

Deno.test("robustness: binary files, prototype keys, special tokens named like prototype members, links out", async () => {
  await withTempDir("bupo-tok-", async (dir) => {
    const char = new CharTokenizer("ab");
    // A binary tokenizer.json (and tokenizer_config.json) is named, with what is wrong.
    await Deno.mkdir(`${dir}/bin`);
    await Deno.writeFile(`${dir}/bin/tokenizer.json`, Uint8Array.from({ length: 64 }, (_, i) => 0x80 + i));
    await throwsWith(() => loadTokenizer(`${dir}/bin`), FileFormatError, [
      `${dir}/bin/tokenizer.json: not UTF-8 text (invalid byte 0x80 at offset 0)`,
    ]);
    await Deno.writeTextFile(`${dir}/bin/tokenizer.json`, JSON.stringify(char.tokenizerJson()));
    await Deno.writeFile(`${dir}/bin/tokenizer_config.json`, Uint8Array.from([0x7b, 0xfe, 0x7d]));
    await throwsWith(() => loadTokenizer(`${dir}/bin`), FileFormatError, [
      `${dir}/bin/tokenizer_config.json: not UTF-8 text (invalid byte 0xfe at offset 1)`,
    ]);
    // tokenizer.json that is JSON but not an object.
    await Deno.mkdir(`${dir}/num`);
    await Deno.writeTextFile(`${dir}/num/tokenizer.json`, "[1, 2]");
    await throwsWith(() => loadTokenizer(`${dir}/num`), FileFormatError, [
      `${dir}/num/tokenizer.json: expected a JSON object`,
    ]);
    // Prototype-name keys in tokenizer_config.json are unknown fields.
    for (const k of ["__proto__", "constructor", "toString"]) {
      await Deno.mkdir(`${dir}/${k}`);
      await Deno.writeTextFile(`${dir}/${k}/tokenizer.json`, JSON.stringify(char.tokenizerJson()));
      await Deno.writeTextFile(
        `${dir}/${k}/tokenizer_config.json`,
        `{${JSON.stringify(k)}: {"eos_token": "<eos>"}, "eos_token": "<eos>"}`,
      );
      const e = await throwsWith(() => loadTokenizer(`${dir}/${k}`), ConfigError, [
        `${dir}/${k}/tokenizer_config.json: ${k}: unknown field`,
      ]);
      eq((e as ConfigError).field, k, "field");
    }
    // Special tokens whose text is a prototype member's name are ordinary tokens.
    const odd = new CharTokenizer(["constructor", "__proto__", "toString", "a"], { pad: 0, bos: 1, eos: 2 });
    await saveTokenizer(`${dir}/odd`, odd);
    const back = await loadTokenizer(`${dir}/odd`);
    if (!(back instanceof CharTokenizer)) throw new Error("char");
    eq([back.pad, back.bos, back.eos], [0, 1, 2], "roles");
    eq(back.encode("a__proto__atoString"), [3, 1, 3, 2], "encode");
    // A pad_token naming a prototype member that is not a token is an error, not a lookup.
    await Deno.writeTextFile(
      `${dir}/odd/tokenizer_config.json`,
      JSON.stringify({ ...odd.tokenizerConfigJson(), pad_token: "valueOf" }),
    );
    await throwsWith(() => loadTokenizer(`${dir}/odd`), ConfigError, [
      `pad_token "valueOf" is not an added token`,
    ]);
    // tokenizer.json linked from outside the folder.
    await Deno.mkdir(`${dir}/link`);
    await Deno.writeTextFile(`${dir}/outside.json`, JSON.stringify(char.tokenizerJson()));
    await Deno.symlink(`${dir}/outside.json`, `${dir}/link/tokenizer.json`);
    await throwsWith(() => loadTokenizer(`${dir}/link`), FileFormatError, [
      `${dir}/link/tokenizer.json: resolves to`,
      "outside the folder",
    ]);
  });
});
