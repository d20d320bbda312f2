/**
 * Prompts and tokens: Qwen3's real tokenizer against ids computed by Rust `tokenizers`, its chat template's
 * thinking and non-thinking forms against strings derived by hand from the template, stop and pad ids, the
 * tokenizer's vocabulary against config.json's; chat_template.jinja, template errors, no-template mode.
 */
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { parseTemplateKwargs, renderChat, templateSourceOf } from "../formats/chat.ts";
import type { Row } from "../formats/dataset.ts";
import { RowError } from "../formats/dataset.ts";
import {
  generationConfigFromJson,
  loadPromptSetup,
  prepareRows,
  type PromptOptions,
  type PromptSetup,
  promptSetup,
} from "../formats/generation.ts";
import { hfTokenizerFromJson } from "../formats/tokenizer.ts";
import { QWEN3_GENERATION_CONFIG, qwen3Files, writeQwen3Folder } from "./qwen3_folder.ts";
import { eq, refusesOn, throwsWith } from "./util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;

const qwenDir = await writeQwen3Folder();
const qwen = await loadPromptSetup(qwenDir);
globalThis.addEventListener("unload", () => Deno.removeSync(qwenDir, { recursive: true }));
/** The Qwen3 setup with other options (the tokenizer loaded once). */
const qwenWith = (options: PromptOptions): PromptSetup =>
  promptSetup({
    dir: qwenDir,
    tokenizer: qwen.tokenizer,
    template: qwen.template,
    tokenizerConfig: JSON.parse(Deno.readTextFileSync(`${qwenDir}/tokenizer_config.json`)),
    generation: generationConfigFromJson(QWEN3_GENERATION_CONFIG, `${qwenDir}/generation_config.json`),
    modelVocab: qwen.modelVocab,
  }, options);

Deno.test("Qwen3 tokenizer: the ids of a varied corpus equal Rust tokenizers' (fixture), decode round trips", () => {
  const fx = JSON.parse(Deno.readTextFileSync(`${FIX}qwen3/rust_ids.json`)) as {
    vocabSize: number;
    cases: { text: string; ids: number[] }[];
  };
  eq(qwen.tokenizerVocab, fx.vocabSize, "vocabulary size with added tokens");
  for (const c of fx.cases) {
    eq(qwen.tokenizer.encode(c.text), c.ids, `ids of ${JSON.stringify(c.text)}`);
    // Qwen3 normalizes to NFC, so decode gives the NFC form of the text.
    eq(qwen.tokenizer.decode(c.ids), c.text.normalize("NFC"), `decode of ${JSON.stringify(c.text)}`);
  }
  if (fx.cases.length < 20) throw new Error("the corpus is too small");
});

Deno.test("Qwen3: stop ids are both eos ids, pad <|endoftext|>, 151,669 tokenizer ids against vocab_size 151,936", () => {
  eq(qwen.stopIds, [151645, 151643], "stop ids");
  eq(qwen.pad, 151643, "pad");
  eq([qwen.tokenizerVocab, qwen.modelVocab], [151669, 151936], "vocabularies");
  eq(qwen.tokenizer.decode([151645, 151643]), "<|im_end|><|endoftext|>", "the stop tokens");
  if (!qwen.template?.file.endsWith("tokenizer_config.json")) throw new Error("template file");
});

const MESSAGES = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "What is 1+1?" },
];

Deno.test("Qwen3 chat template: thinking and non-thinking forms, derived by hand from the template", () => {
  // Derived from the template: a leading system message opens the text; each user turn is
  // '<|im_start|>user\n' + content + '<|im_end|>\n'; add_generation_prompt adds '<|im_start|>assistant\n',
  // and enable_thinking false adds the empty think block '<think>\n\n</think>\n\n'.
  const head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n";
  eq(qwen.render(MESSAGES), head + "<|im_start|>assistant\n", "thinking (default)");
  const off = qwenWith({ chatTemplateKwargs: { enable_thinking: false } });
  eq(off.render(MESSAGES), head + "<|im_start|>assistant\n<think>\n\n</think>\n\n", "non-thinking");
  const on = qwenWith({ chatTemplateKwargs: { enable_thinking: true } });
  eq(on.render(MESSAGES), head + "<|im_start|>assistant\n", "enable_thinking true is the default form");
  const noGen = qwenWith({ addGenerationPrompt: false });
  eq(noGen.render(MESSAGES), head, "without add_generation_prompt");
  eq(qwen.render("Hi"), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "a string prompt");
  // History: an earlier assistant turn loses its reasoning (its index is before the last user query).
  const history = [
    { role: "user", content: "q1" },
    { role: "assistant", content: "<think>\nr1\n</think>\n\na1" },
    { role: "user", content: "q2" },
  ];
  eq(
    qwen.render(history),
    "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n" +
      "<|im_start|>assistant\n",
    "multi-turn",
  );
  // The ids: the template's special tokens are single ids.
  const { ids } = off.encode(MESSAGES);
  eq(ids.slice(0, 3), [151644, 8948, 198], "<|im_start|> system \\n");
  eq(ids.filter((i) => i === 151644).length, 3, "three turns opened");
  eq(ids.slice(-7), [151644, 77091, 198, 151667, 271, 151668, 271], "assistant, <think>, </think>");
  const plain = qwenWith({ chatTemplate: false });
  eq(plain.encode("2+2=").text, "2+2=", "no-template mode sends the string as it is");
});

Deno.test("template variables: a JSON object without messages", () => {
  eq(parseTemplateKwargs('{"enable_thinking": false}'), { enable_thinking: false }, "object");
  refusesOn("--chat-template-kwargs", ["{", "[1]", "3", '{"messages": []}'], parseTemplateKwargs);
});

/** A folder with the tiny BPE tokenizer (no chat template) plus the given extra files. */
const tinyFolder = async (extra: Record<string, string> = {}): Promise<string> => {
  const d = await Deno.makeTempDir({ prefix: "tiny-" });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${FIX}hf_tiny_bpe/${f}`, `${d}/${f}`);
  }
  for (const [f, text] of Object.entries(extra)) await Deno.writeTextFile(`${d}/${f}`, text);
  return d;
};

Deno.test("chat_template.jinja beside tokenizer_config.json is used; kwargs and special tokens reach it", async () => {
  const d = await tinyFolder({
    "chat_template.jinja": "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}" +
      "{% if add_generation_prompt %}[assistant]{% endif %}{% if style %}({{ style }}){% endif %}{{ eos_token }}" +
      "{% if tools is not none %}[tools]{% endif %}",
  });
  try {
    const s = await loadPromptSetup(d, { chatTemplateKwargs: { style: "short" } });
    eq(s.template?.file, `${d}/chat_template.jinja`, "file");
    eq(s.render([{ role: "user", content: "hi" }]), "[user]hi[assistant](short)<|im_end|>", "rendered");
  } finally {
    await Deno.remove(d, { recursive: true });
  }
});

Deno.test("template sources: a string, a named list, and a bad value naming the file", () => {
  eq(templateSourceOf({ chat_template: "x" }, "c.json"), "x", "string");
  eq(
    templateSourceOf({
      chat_template: [{ name: "tool_use", template: "t" }, { name: "default", template: "d" }],
    }, "c"),
    "d",
    "named list",
  );
  eq(templateSourceOf({}, "c.json"), undefined, "absent");
  try {
    templateSourceOf({ chat_template: 3 }, "c.json");
    throw new Error("accepted");
  } catch (e) {
    if (!(e instanceof FileFormatError) || !e.message.startsWith("c.json: chat_template")) throw e;
  }
});

const row = (n: number, prompt: Row["prompt"]): Row => ({ row: n, prompt, groundTruth: "1", raw: {} });

Deno.test("folders without a template: strings as they are, messages a ConfigError; template errors name the row", async () => {
  const d = await tinyFolder();
  const bad = await tinyFolder({ "chat_template.jinja": "{% if %}" });
  const raising = await tinyFolder({
    "chat_template.jinja":
      "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}x",
  });
  try {
    const s = await loadPromptSetup(d);
    eq(s.template, undefined, "no template");
    eq(s.render("hello world"), "hello world", "string as it is");
    await throwsWith(() => s.render([{ role: "user", content: "x" }]), ConfigError, ["no chat template"]);
    await throwsWith(() => loadPromptSetup(bad), FileFormatError, ["chat_template.jinja", "does not parse"]);
    const r = await loadPromptSetup(raising);
    const e = await throwsWith(
      () => prepareRows(r, "data.jsonl", [row(1, "ok"), row(2, [{ role: "system", content: "s" }])]),
      RowError,
      ["data.jsonl: row 2: prompt:", "no system role"],
    );
    eq([(e as RowError).row, (e as RowError).field], [2, "prompt"], "row and field");
  } finally {
    for (const x of [d, bad, raising]) await Deno.remove(x, { recursive: true });
  }
});

Deno.test("generation_config.json: eos ids one or many; bad fields and ids the tokenizer lacks name the file", async () => {
  eq(generationConfigFromJson({ eos_token_id: 7 }, "g.json").eosIds, [7], "one");
  eq(generationConfigFromJson({ eos_token_id: [7, 8, 7], pad_token_id: 0 }, "g.json"), {
    file: "g.json",
    eosIds: [7, 8],
    padId: 0,
  }, "many, deduplicated");
  await throwsWith(() => generationConfigFromJson({ eos_token_id: "x" }, "g.json"), FileFormatError, [
    "g.json: eos_token_id must be",
  ]);
  await throwsWith(() => generationConfigFromJson({ pad_token_id: -1 }, "g.json"), FileFormatError, [
    "pad_token_id",
  ]);
  const far = await tinyFolder({ "generation_config.json": '{"eos_token_id": [1, 100000]}' });
  const small = await tinyFolder({ "config.json": '{"vocab_size": 3}' });
  try {
    await throwsWith(() => loadPromptSetup(far), FileFormatError, [
      "generation_config.json: eos_token_id 100000 is not an id of the tokenizer",
    ]);
    await throwsWith(() => loadPromptSetup(small), ConfigError, [
      "vocab_size 3 is smaller than the tokenizer's",
    ]);
  } finally {
    for (const x of [far, small]) await Deno.remove(x, { recursive: true });
  }
});

Deno.test("prepareRows drops prompts longer than maxPrompt tokens, with their row numbers; limit stops early", () => {
  const s: PromptSetup = qwen;
  const rows = [row(1, "short"), row(2, "a much longer prompt than the others, by far"), row(3, "tiny")];
  const lens = rows.map((r) => s.encode(r.prompt).ids.length);
  const max = Math.max(lens[0], lens[2]);
  const p = prepareRows(s, "f.jsonl", rows, { maxPrompt: max });
  eq(p.rows.map((r) => r.row.row), [1, 3], "kept");
  eq(p.dropped, [2], "dropped");
  eq(prepareRows(s, "f.jsonl", rows, { limit: 1 }).examined, 1, "limit");
  eq(prepareRows(s, "f.jsonl", rows).rows.length, 3, "no filter");
});

Deno.test("the Qwen3 tokenizer files load directly too (hfTokenizerFromJson)", async () => {
  const { tokenizer, config } = await qwen3Files();
  const t = hfTokenizerFromJson(tokenizer, config);
  eq([t.eos, t.pad, t.vocabSize], [151645, 151643, 151669], "eos, pad, vocab");
  const ids = t.encode("<|im_start|>user\n你好 😀<|im_end|>");
  eq(
    renderChat(qwen.template!, [{ role: "user", content: "你好 😀" }], { addGenerationPrompt: false }),
    "<|im_start|>user\n你好 😀<|im_end|>\n",
    "render",
  );
  eq(ids[0], 151644, "<|im_start|>");
});
