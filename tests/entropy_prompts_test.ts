/**
 * `deno task entropy --prompts FILE` with JSONL rows: multi-line string prompts and chat messages, rendered
 * through the model folder's chat template (add_generation_prompt, --chat-template-kwargs, --no-chat-template)
 * and encoded with its tokenizer: on a hand-made character model with a small template (end to end, sampled on
 * the CPU), and on a weightless Qwen3 folder with the real tokenizer and template (the prompts alone).
 */
import { Effect } from "effect";
import { CharTokenizer } from "../formats/tokenizer.ts";
import { main } from "../entropy.ts";
import { type EntropyArgs, entropyInput, entropyPrompts, readPromptEntries } from "../training/entropy.ts";
import { writeQwen3Folder } from "./qwen3_folder.ts";
import { eq, unsanitizedTest, withTempDir } from "./util.ts";
import { narrowConfig, writeRandomModel } from "./model_util.ts";

/** The flag values of ENTROPY_FLAGS' defaults, with `over`. */
const argsOf = (over: Partial<EntropyArgs>): EntropyArgs => ({
  model: [],
  out: "runs/entropy.json",
  norm: "raw",
  perToken: false,
  chunk: 8192,
  readoutTemperature: 1,
  maxNew: 4,
  temperature: 1,
  seed: 0,
  quiet: true,
  ...over,
});

/** A template in the character model's alphabet: `role: content` lines, `assistant:` opened, `mode` if set. */
const TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}" +
  "{% if add_generation_prompt %}assistant:{% endif %}{% if mode is defined %}{{ mode }}.{% endif %}";

const tok = new CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789+=?:. \n");

/** Write a tiny random character model with TEMPLATE as its chat_template.jinja into `dir`/m, and `dir`/p.jsonl. */
const writeFolder = async (dir: string) => {
  await writeRandomModel(`${dir}/m`, narrowConfig({ vocabSize: tok.vocabSize }), 2, 0.3, tok);
  await Deno.writeTextFile(`${dir}/m/chat_template.jinja`, TEMPLATE);
  await Deno.writeTextFile(
    `${dir}/p.jsonl`,
    [
      { prompt: "what is 1+2?\nthink first." },
      "",
      { messages: [{ role: "system", content: "be short." }, { role: "user", content: "2+2=?" }] },
      { prompt: [{ role: "user", content: [{ type: "text", text: "3+" }, { type: "text", text: "4=?" }] }] },
    ].map((r) => (r === "" ? "" : JSON.stringify(r))).join("\n") + "\n",
  );
};

const ROW1 = "<bos>user: what is 1+2?\nthink first.\nassistant:";
const ROW2 = "<bos>system: be short.\nuser: 2+2=?\nassistant:";
const ROW3 = "<bos>user: 3+4=?\nassistant:";

/** Run main(argv) with stdout and stderr captured. */
const run = async (argv: string[]) => {
  const logs: string[] = [], errs: string[] = [];
  const [log, err] = [console.log, console.error];
  console.log = (...a: unknown[]) => void logs.push(a.join(" "));
  console.error = (...a: unknown[]) => void errs.push(a.join(" "));
  try {
    return { code: await main(argv), logs, errs };
  } finally {
    console.log = log;
    console.error = err;
  }
};

unsanitizedTest(
  "entropy --prompts x.jsonl: multi-line and chat rows rendered through the folder's template, end to end",
  () =>
    withTempDir("bupo-entropy-chat-", async (dir) => {
      await writeFolder(dir);
      const m = `${dir}/m`, file = `${dir}/p.jsonl`;
      // The rows, read: where each came from, strings kept whole, text parts joined.
      const entries = await Effect.runPromise(readPromptEntries(file));
      eq(entries.map((e) => e.where), [
        `${file}: row 1 (line 1)`,
        `${file}: row 2 (line 3)`,
        `${file}: row 3 (line 4)`,
      ], "where");
      eq(entries[0].prompt, "what is 1+2?\nthink first.", "a multi-line string prompt");
      eq(entries[2].prompt, [{ role: "user", content: "3+4=?" }], "text parts joined");

      // What reaches the analysis: the rendered text and its ids (the template writes the bos; none added).
      const input = await Effect.runPromise(entropyInput(argsOf({ prompts: file }), m));
      const p = input.prompts!;
      eq(p.text, [ROW1, ROW2, ROW3], "rendered text");
      eq(p.ids, [ROW1, ROW2, ROW3].map((t) => tok.encode(t)), "ids");
      eq(p.ids.map((x) => x.filter((id) => id === tok.bos).length), [1, 1, 1], "one bos each");
      eq(p.template, `${m}/chat_template.jinja`, "template file");

      // --chat-template-kwargs reaches the template.
      const kw = await Effect.runPromise(
        entropyInput(argsOf({ prompts: file, chatTemplateKwargs: '{"mode": "fast"}' }), m),
      );
      eq(kw.prompts!.text[1], ROW2 + "fast.", "template variables");

      // End to end: sampled on the CPU, the report records the rendered prompts and the template.
      const r = await run([
        ...["--model", m, "--prompts", file, "--max-new", "4", "--norm", "raw"],
        ...["--device", "cpu", "--quiet", "--out", `${dir}/e.json`],
      ]);
      if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.errs.join("\n")}`);
      const j = JSON.parse(await Deno.readTextFile(`${dir}/e.json`));
      eq(j.source.prompts, 3, "prompts");
      eq(j.source.chatTemplate, `${m}/chat_template.jinja`, "source.chatTemplate");
      eq(j.source.responses.map((x: { prompt: string }) => x.prompt), [ROW1, ROW2, ROW3], "report prompts");
      eq(j.source.responses[1].from, `${file}: row 2 (line 3)`, "report from");
      // At least one scored position per response.
      if (!(j.tokens >= 3)) throw new Error(`${j.tokens} scored positions (3 or more expected)`);

      // A text file on the same folder: each line is the user's message.
      await Deno.writeTextFile(`${dir}/p.txt`, "1+2=\n\n3+4=\n");
      const txt = await Effect.runPromise(entropyInput(argsOf({ prompts: `${dir}/p.txt` }), m));
      eq(txt.prompts!.text, ["<bos>user: 1+2=\nassistant:", "<bos>user: 3+4=\nassistant:"], "text lines");
      eq(txt.prompts!.where, [`${dir}/p.txt:1`, `${dir}/p.txt:3`], "text where");

      // --no-chat-template: string prompts as they are after the tokenizer's bos; messages cannot go.
      await Deno.writeTextFile(`${dir}/s.jsonl`, JSON.stringify({ prompt: "1+2=\n3+4=" }) + "\n");
      const raw = await Effect.runPromise(
        entropyInput(argsOf({ prompts: `${dir}/s.jsonl`, noChatTemplate: true }), m),
      );
      eq(raw.prompts!.text, ["1+2=\n3+4="], "no template: text");
      eq(raw.prompts!.ids, [[tok.bos!, ...tok.encode("1+2=\n3+4=")]], "no template: bos then the text");
      if (raw.prompts!.template !== undefined) throw new Error("no template expected");

      const fails: [string, string[], number, RegExp][] = [
        [
          "messages under --no-chat-template",
          ["--prompts", file, "--no-chat-template"],
          2,
          new RegExp(`row 2 \\(line 3\\): --no-chat-template sends string prompts as they are`),
        ],
        [
          "a row without a prompt",
          ["--prompts", await write(dir, "np.jsonl", [{ prompt: "1+1=" }, { question: "x" }])],
          1,
          /RowError: --prompts .*np\.jsonl: row 2 \(line 2\): no prompt or messages field \(its fields: question\)/,
        ],
        [
          "a bad message",
          ["--prompts", await write(dir, "bm.jsonl", [{ messages: [{ role: "user" }] }])],
          1,
          /bm\.jsonl: row 1 \(line 1\): messages\[0\]\.content: expected a string/,
        ],
        [
          "a character the tokenizer lacks",
          ["--prompts", await write(dir, "ch.jsonl", [{ prompt: "1+1=" }, { prompt: "ÿ" }])],
          1,
          /ch\.jsonl: row 2 \(line 2\): cannot tokenize/,
        ],
        [
          "--prompt-key names a missing field",
          ["--prompts", file, "--prompt-key", "question"],
          1,
          /row 1 \(line 1\): no question field \(its fields: prompt\)/,
        ],
        [
          "--prompt-key on a text file",
          ["--prompts", `${dir}/p.txt`, "--prompt-key", "q"],
          2,
          /applies to prompt data files/,
        ],
        [
          "bad kwargs",
          ["--prompts", file, "--chat-template-kwargs", "[1]"],
          2,
          /--chat-template-kwargs: expected a JSON object/,
        ],
        [
          "a prompt flag with --tokens",
          ["--tokens", "3,4", "--no-chat-template"],
          2,
          /--no-chat-template applies to --prompts, not to --tokens/,
        ],
      ];
      for (const [what, argv, code, re] of fails) {
        const f = await run(["--model", m, "--device", "cpu", "--quiet", "--out", `${dir}/f.json`, ...argv]);
        if (f.code !== code || f.errs.length !== 1 || !re.test(f.errs[0])) {
          throw new Error(`${what}: exit ${f.code} (want ${code}): ${f.errs.join("\n")}`);
        }
      }
    }),
);

/** Write rows as JSONL into `dir/name`; returns the path. */
const write = async (dir: string, name: string, rows: unknown[]): Promise<string> => {
  await Deno.writeTextFile(`${dir}/${name}`, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return `${dir}/${name}`;
};

Deno.test("entropy prompts on Qwen3's folder: its template with enable_thinking, its tokenizer's ids, both eos ids", async () => {
  const dir = await writeQwen3Folder();
  try {
    const file = await write(dir, "p.jsonl", [
      { prompt: "Line one.\nLine two?" },
      { messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "What is 1+1?" }] },
    ]);
    const p = await Effect.runPromise(
      entropyPrompts(file, { chatTemplateKwargs: '{"enable_thinking": false}' }, dir, 151936),
    );
    const open = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    eq(p.text, [
      "<|im_start|>user\nLine one.\nLine two?<|im_end|>\n" + open,
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n" + open,
    ], "rendered");
    eq(p.ids, p.text.map((t) => p.tok.encode(t)), "ids: the tokenizer's, no bos added");
    eq(
      p.ids.map((
        x,
      ) => [x[0], x.filter((id) => id === 151644).length, x.filter((id) => id === 151645).length]),
      [
        [151644, 2, 1],
        [151644, 3, 2],
      ],
      "<|im_start|> and <|im_end|> are single ids",
    );
    eq(p.templateKwargs, { enable_thinking: false }, "kwargs recorded");
    eq([...p.stopIds].sort(), [151643, 151645], "stop ids");
    eq(p.vocab, 151669, "sampled ids stay below the tokenizer's");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
