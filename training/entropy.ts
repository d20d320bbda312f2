/**
 * The entropy-flow analysis of a model folder, as `deno task entropy` runs it: check the input and read the
 * model (and the prompts, rendered through the folder's chat template when it has one, and its tokenizer), then
 * on a backend sample responses (prompts) and read every layer and module policy, then write the JSON report and
 * the SVG (training/entropy_report.ts builds them).
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { DEVICE_FLAG, type DeviceChoice, type FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { parseTemplateKwargs } from "../formats/chat.ts";
import { getPath, readRecords, RowError, toPrompt } from "../formats/dataset.ts";
import { readPromptSetup } from "../formats/generation.ts";
import { type HostModel, readModelDir, toParams } from "../formats/hf.ts";
import type { TextTokenizer } from "../formats/tokenizer.ts";
import type { Prompt } from "../tasks/reward.ts";
import { exists, writeAtomic } from "../io/files.ts";
import { progress } from "../io/progress.ts";
import {
  type EntropyBatch,
  type EntropyFlow,
  entropyFlow,
  nextTokenBatch,
  responseBatch,
} from "../policies/analysis.ts";
import { generate } from "../policies/generate.ts";
import type { ReadoutNorm } from "../policies/internal.ts";
import {
  boundaryLine,
  modelNames,
  multiModelSvg,
  readPromptLines,
  reportJson,
  reportSvg,
  summaryTable,
} from "./entropy_report.ts";

/** The model used when --model is not given (created by the embedded-task training). */
export const DEFAULT_MODEL = "models/tiny-arith";

/** The flags of `deno task entropy` (a core/flags.ts table). */
export const ENTROPY_FLAGS = {
  model: {
    kind: "str",
    repeat: true,
    arg: "DIR",
    help: "Hugging Face model folder: config.json and model.safetensors (or shards through\n" +
      `model.safetensors.index.json). Default: ${DEFAULT_MODEL} when it exists. Several\n` +
      "--model: every model on the same input, one figure (depth l/(L-1) when layer counts differ).",
  },
  prompts: {
    kind: "str",
    arg: "FILE",
    help: "prompts: one per line (blank lines skipped), or rows of a .jsonl/.ndjson, .json (an\n" +
      'array) or .parquet file: {"prompt": "..."} (multi-line text), {"prompt": [messages]} or\n' +
      '{"messages": [{"role": "user", "content": "..."}, ...]} (--prompt-key names another\n' +
      "field). With a chat template in the model folder every prompt is rendered through it\n" +
      "(a string prompt as the user's message, the assistant's turn opened); without one, string\n" +
      "prompts go as they are (after the tokenizer's bos). Responses are sampled from the\n" +
      "model's own policy, then only the response positions are scored: the positions that\n" +
      "predict a response token (eos included), each with that token as the log-prob target.\n" +
      "Needs tokenizer.json in the model folder.",
  },
  promptKey: {
    kind: "str",
    arg: "PATH",
    help: "(--prompts data files) the prompt's field, a dotted path (default: prompt, else messages)",
  },
  chatTemplateKwargs: {
    kind: "str",
    arg: "JSON",
    help: `(--prompts) chat template variables, e.g. '{"enable_thinking": false}'`,
  },
  noChatTemplate: {
    kind: "bool",
    help: "(--prompts) send string prompts as they are, without the folder's chat template",
  },
  tokens: {
    kind: "list",
    of: "int",
    min: 0,
    arg: "IDS",
    help: "comma-separated token ids, e.g. 3,17,4 (one sequence). Every position is scored;\n" +
      "position t's log-prob target is id t+1. The last position has no next id: it counts\n" +
      "in the entropy means but not in the log-prob means.",
  },
  out: { kind: "str", default: "runs/entropy.json", arg: "FILE", help: "JSON report" },
  svg: { kind: "str", arg: "FILE", help: "SVG with the two figures (default: --out with .svg)" },
  norm: {
    kind: "enum",
    values: ["raw", "normed", "both"],
    default: "both",
    help: "readout norm(s) to report. raw = E_u x (the paper's convention; the last layer alone\n" +
      "is read after the final norm, so layer L-1 is the model's own policy);\n" +
      "normed = E_u RMSNorm_final(x) for every readout (the logit lens).",
  },
  perToken: { kind: "bool", help: "add per-position values to the JSON" },
  chunk: { kind: "posint", multipleOf: 64, default: 8192, help: "vocabulary ids per streaming chunk" },
  readoutTemperature: { kind: "posnum", default: 1, help: "softmax temperature of every readout" },
  maxNew: { kind: "posint", default: 64, help: "(--prompts) most tokens per response" },
  temperature: { kind: "posnum", default: 1, help: "(--prompts) sampling temperature" },
  seed: { kind: "int", min: 0, max: 2 ** 32 - 1, default: 0, help: "(--prompts) sampling seed" },
  quiet: { kind: "bool", help: "no progress bar" },
  allowNonfinite: {
    kind: "bool",
    help: "load weights that hold NaN or infinite values (to analyse a broken checkpoint); the\n" +
      "report lists those tensors (nonFiniteTensors) and the summary says so. Without it they\n" +
      "are an error naming the tensor and the first bad element.",
  },
  device: DEVICE_FLAG,
} as const satisfies FlagTable;

/** The settings of one analysis (ENTROPY_FLAGS' values). */
export interface EntropyArgs {
  /** Model folders (none: the default model). */
  readonly model: readonly string[];
  /** The prompt file: one prompt per line, or a data file (`.jsonl`, `.ndjson`, `.json`, `.parquet`) of rows. */
  readonly prompts?: string;
  /** The token ids of one sequence (instead of prompts). */
  readonly tokens?: readonly number[];
  /** The prompt field of a data file's rows (a dotted path); default `prompt`, else `messages`. */
  readonly promptKey?: string;
  /** Chat template variables as JSON text (`{"enable_thinking": false}`). */
  readonly chatTemplateKwargs?: string;
  /** Send string prompts as they are even when the folder has a chat template. */
  readonly noChatTemplate?: boolean;
  /** The JSON report's path. */
  readonly out: string;
  /** The SVG's path (default: `out` with .svg). */
  readonly svg?: string;
  /** Readout norm(s) reported: raw (the paper's), normed (the logit lens) or both. */
  readonly norm: ReadoutNorm | "both";
  /** Add per-position entropies and log-probs to the JSON. */
  readonly perToken: boolean;
  /** Vocabulary ids per streaming chunk of the readouts (a multiple of 64). */
  readonly chunk: number;
  /** Softmax temperature of every readout. */
  readonly readoutTemperature: number;
  /** Most tokens per sampled response (prompts). */
  readonly maxNew: number;
  /** Sampling temperature of the responses (prompts). */
  readonly temperature: number;
  /** Sampling seed (prompts). */
  readonly seed: number;
  /** No progress bars. */
  readonly quiet: boolean;
  /** Load non-finite weights and mark them in the report (default false: they are an error). */
  readonly allowNonfinite?: boolean;
  /** Where to run (default auto). */
  readonly device?: DeviceChoice;
}

const usage = (field: string, message: string) => new ConfigError({ source: "flags", field, message });

/** One prompt of a --prompts file and where it came from. */
export interface PromptEntry {
  /** `file:line` in a text file, `file: row n (line l)` in a data file: how messages name the prompt. */
  readonly where: string;
  /** A string, or chat messages (formats/dataset.ts toPrompt checked them). */
  readonly prompt: Prompt;
}

/** Whether a --prompts file holds rows (formats/dataset.ts reads it) rather than one prompt per line. */
export const isPromptDataFile = (file: string): boolean => /\.(jsonl|ndjson|json|parquet)$/i.test(file);

/**
 * The prompt fields looked for in each row of a data file without --prompt-key, in order: verl's and TRL's
 * `prompt` (a string or messages), then `messages` (TRL's conversational rows).
 */
export const PROMPT_FIELDS = ["prompt", "messages"] as const;

const withPrefix = <E extends FileFormatError | RowError>(e: E, prefix: string): E =>
  (e instanceof RowError
    ? new RowError({ file: e.file, row: e.row, field: e.field, message: `${prefix}${e.message}` })
    : new FileFormatError({ file: e.file, message: `${prefix}${e.message}` })) as E;

/**
 * Read a --prompts file: a data file's rows, each holding a prompt at `promptKey` (a dotted path) or, without
 * it, at the first of PROMPT_FIELDS the row has; or one prompt per line. Every error names the file and the row
 * or line.
 */
export const readPromptEntries = (
  file: string,
  promptKey?: string,
): Effect.Effect<PromptEntry[], FileFormatError | RowError | ConfigError> =>
  Effect.gen(function* () {
    if (!isPromptDataFile(file)) {
      if (promptKey !== undefined) {
        return yield* usage(
          "--prompt-key",
          `--prompt-key applies to prompt data files (.jsonl, .ndjson, .json, .parquet); ${file} is read ` +
            "as one prompt per line",
        );
      }
      const lines = yield* readPromptLines(file);
      return lines.map((l) => ({ where: `${file}:${l.line}`, prompt: l.text }));
    }
    const recs = yield* readRecords(file, "--prompts");
    if (recs.records.length === 0) {
      return yield* new FileFormatError({ file, message: `${file}: holds no rows` });
    }
    return yield* Effect.try({
      try: () =>
        recs.records.map((r, i): PromptEntry => {
          const line = recs.lines?.[i];
          const where = `${file}: row ${i + 1}${line !== undefined ? ` (line ${line})` : ""}`;
          const path = promptKey ?? PROMPT_FIELDS.find((f) => getPath(r, f).found);
          if (path === undefined || !getPath(r, path).found) {
            throw new RowError({
              file,
              row: i + 1,
              field: path ?? PROMPT_FIELDS[0],
              message: `${where}: no ${path ?? PROMPT_FIELDS.join(" or ")} field (its fields: ${
                Object.keys(r).join(", ") || "none"
              }); name the prompt's field with --prompt-key (a dotted path such as question or input.text)`,
            });
          }
          return { where, prompt: toPrompt(file, i + 1, path, getPath(r, path).value, where) };
        }),
      catch: (e) => e as RowError,
    });
  });

/** The prompts of an analysis as the model sees them. */
export interface EntropyPrompts {
  /** Each prompt's text: rendered through the chat template when one is used, else the prompt itself. */
  readonly text: readonly string[];
  /** Each prompt's ids (the tokenizer's bos first when no template is used; a template writes its own). */
  readonly ids: number[][];
  /** The folder's tokenizer (decodes the responses). */
  readonly tok: TextTokenizer;
  /** Where each prompt came from (PromptEntry.where). */
  readonly where: readonly string[];
  /** The chat template's file, when prompts were rendered through one. */
  readonly template?: string;
  /** The template variables (--chat-template-kwargs). */
  readonly templateKwargs?: Readonly<Record<string, unknown>>;
  /** Generation stops at any of these (generation_config.json's eos ids, then the tokenizer's eos). */
  readonly stopIds: readonly number[];
  /** The padding id. */
  readonly pad: number;
  /** Ids the tokenizer has, [0, vocab): only these are sampled. */
  readonly vocab: number;
}

/** The input, checked and read: the model, and the prompts encoded with its tokenizer (or the token ids). */
export interface EntropyInput {
  /** The settings. */
  readonly args: EntropyArgs;
  /** The model folder. */
  readonly dir: string;
  /** Its config and weights, on the host. */
  readonly model: HostModel;
  /** The prompts, with --prompts. */
  readonly prompts?: EntropyPrompts;
}

/** Check the input flags and read every model (and the prompts and tokenizer): no backend needed yet. */
export const entropyInputs = (
  args: EntropyArgs,
): Effect.Effect<EntropyInput[], ConfigError | FileFormatError | RowError> =>
  Effect.gen(function* () {
    const dirs = args.model.length ? args.model : [undefined];
    const twice = args.model.find((d, i) => args.model.indexOf(d) !== i);
    if (twice) return yield* usage("--model", `--model ${twice} is given twice`);
    const out: EntropyInput[] = [];
    for (const dir of dirs) out.push(yield* entropyInput(args, dir));
    return out;
  });

/** The flags that only apply to --prompts, as [flag, given]. */
const promptOnly = (args: EntropyArgs): [string, boolean][] => [
  ["--prompt-key", args.promptKey !== undefined],
  ["--chat-template-kwargs", args.chatTemplateKwargs !== undefined],
  ["--no-chat-template", args.noChatTemplate === true],
];

/** The settings of EntropyArgs that shape how prompts are read and rendered. */
export type PromptSettings = Pick<EntropyArgs, "promptKey" | "chatTemplateKwargs" | "noChatTemplate">;

/**
 * Read the prompts of `file` for the model folder `dir` (whose config.json says `modelVocab` rows):
 * each rendered through the folder's chat template (unless --no-chat-template; string prompts as the user's
 * message, with add_generation_prompt) or, without one, taken as it is after the tokenizer's bos, then encoded
 * with the folder's tokenizer. Needs no weights.
 */
export const entropyPrompts = (
  file: string,
  args: PromptSettings,
  dir: string,
  modelVocab: number,
): Effect.Effect<EntropyPrompts, ConfigError | FileFormatError | RowError> =>
  Effect.gen(function* () {
    const kwargs = args.chatTemplateKwargs === undefined ? undefined : yield* Effect.try({
      try: () => parseTemplateKwargs(args.chatTemplateKwargs!),
      catch: (e) => e as ConfigError,
    });
    if (kwargs && args.noChatTemplate) {
      return yield* usage(
        "--chat-template-kwargs",
        "--chat-template-kwargs sets chat template variables, but --no-chat-template turns the template off",
      );
    }
    const entries = yield* Effect.mapError(
      readPromptEntries(file, args.promptKey),
      (e) => (e instanceof ConfigError ? e : withPrefix(e, "--prompts ")),
    );
    const setup = yield* readPromptSetup(dir, {
      chatTemplate: args.noChatTemplate !== true,
      ...(kwargs ? { chatTemplateKwargs: kwargs } : {}),
    });
    const tok = setup.tokenizer;
    if (tok.vocabSize > modelVocab) {
      return yield* new FileFormatError({
        file: `${dir}/tokenizer.json`,
        message:
          `${dir}/tokenizer.json: ${tok.vocabSize} token ids, more than the model's vocab_size ${modelVocab}`,
      });
    }
    const bos = setup.template === undefined && tok.bos !== undefined ? [tok.bos] : [];
    const encoded = yield* Effect.try({
      try: () =>
        entries.map(({ where, prompt }) => {
          let text: string;
          try {
            text = setup.render(prompt);
          } catch (e) {
            if (e instanceof ConfigError) {
              throw new ConfigError({ source: e.source, field: e.field, message: `${where}: ${e.message}` });
            }
            throw new FileFormatError({ file, message: `${where}: ${(e as Error).message}` });
          }
          try {
            return { text, ids: [...bos, ...tok.encode(text)] };
          } catch (e) {
            throw new FileFormatError({
              file,
              message: `${where}: cannot tokenize (${(e as Error).message})`,
            });
          }
        }),
      catch: (e) => e as ConfigError | FileFormatError,
    });
    return {
      text: encoded.map((x) => x.text),
      ids: encoded.map((x) => x.ids),
      tok,
      where: entries.map((x) => x.where),
      ...(setup.template ? { template: setup.template.file } : {}),
      ...(setup.template && kwargs ? { templateKwargs: kwargs } : {}),
      stopIds: setup.stopIds,
      pad: setup.pad,
      vocab: setup.tokenizerVocab,
    };
  });

/** Check the input flags and read one model, `modelDir` (default: DEFAULT_MODEL), with the prompts and tokenizer. */
export const entropyInput = (
  args: EntropyArgs,
  modelDir?: string,
): Effect.Effect<EntropyInput, ConfigError | FileFormatError | RowError> =>
  Effect.gen(function* () {
    if ((args.prompts === undefined) === (args.tokens === undefined)) {
      return yield* usage(
        "--prompts/--tokens",
        args.prompts === undefined
          ? "give --prompts FILE or --tokens IDS (see --help)"
          : "give either --prompts or --tokens, not both",
      );
    }
    const stray = args.tokens !== undefined ? promptOnly(args).find(([, given]) => given) : undefined;
    if (stray) return yield* usage(stray[0], `${stray[0]} applies to --prompts, not to --tokens`);
    let dir = modelDir;
    if (dir === undefined) {
      if (!(yield* exists(`${DEFAULT_MODEL}/config.json`))) {
        return yield* usage(
          "--model",
          `no --model given and the default ${DEFAULT_MODEL} does not exist yet: pass --model DIR ` +
            "(a Hugging Face folder with config.json and model.safetensors)",
        );
      }
      dir = DEFAULT_MODEL;
    }
    const model = yield* readModelDir(dir, { allowNonFinite: args.allowNonfinite === true });
    const c = model.config;
    const bad = args.tokens?.find((id) => id >= c.vocabSize);
    if (bad !== undefined) {
      return yield* usage(
        "--tokens",
        `--tokens: id ${bad} is outside the vocabulary [0, ${c.vocabSize}) of ${dir}`,
      );
    }
    if (args.prompts === undefined) return { args, dir, model };
    const prompts = yield* entropyPrompts(args.prompts, args, dir, c.vocabSize);
    return { args, dir, model, prompts };
  });

/** What an analysis found: the flow, the batch it scored and where the batch came from. */
export interface EntropyResult {
  /** Per layer, per readout norm: the entropies and log-probs of every policy, and their changes. */
  readonly flow: EntropyFlow;
  /** The (B, T) ids scored, their mask and log-prob targets. */
  readonly batch: EntropyBatch;
  /** The report's `source`: the token ids, or the prompts file with each prompt and its response. */
  readonly source: Record<string, unknown>;
}

/** On `backend`: sample the responses (prompts) and read every layer and module policy. */
export const analyseEntropy = (
  backend: Backend,
  input: EntropyInput,
): Effect.Effect<EntropyResult, unknown> =>
  Effect.tryPromise({
    try: async () => {
      const { args, model } = input, c = model.config;
      const p = toParams(backend, model);
      try {
        let batch: EntropyBatch, source: Record<string, unknown>;
        if (input.prompts) {
          const { text, ids, tok } = input.prompts;
          const bar = args.quiet ? undefined : progress("generate", args.maxNew, { unit: "tok" });
          // generate stops at eos and at every other stop id (Qwen3: <|endoftext|> beside <|im_end|>).
          const stops = input.prompts.stopIds.filter((id) => id !== tok.eos);
          const r = await generate(c, p, ids, {
            maxNew: args.maxNew,
            eos: tok.eos,
            ...(stops.length ? { stops } : {}),
            pad: input.prompts.pad,
            vocab: input.prompts.vocab,
            temperature: args.temperature,
            seed: args.seed,
            step: 0,
            onToken: (t, total) => {
              bar?.setTotal(total);
              bar?.update(t);
            },
          });
          bar?.done();
          batch = responseBatch(r);
          source = {
            kind: "prompts",
            file: args.prompts,
            prompts: text.length,
            chatTemplate: input.prompts.template ?? null,
            ...(input.prompts.templateKwargs ? { chatTemplateKwargs: input.prompts.templateKwargs } : {}),
            maxNew: args.maxNew,
            temperature: args.temperature,
            seed: args.seed,
            responses: Array.from({ length: r.B }, (_, b) => ({
              from: input.prompts!.where[b],
              prompt: text[b],
              response: tok.decode(
                Array.from(
                  r.ids.subarray(b * r.T + r.promptLens[b], b * r.T + r.promptLens[b] + r.responseLens[b]),
                ),
              ),
              finished: r.finished[b],
            })),
          };
        } else {
          const ids = Int32Array.from(args.tokens!);
          batch = nextTokenBatch(ids, 1, ids.length);
          source = { kind: "tokens", ids: args.tokens };
        }
        let bar: ReturnType<typeof progress> | undefined;
        const flow = await entropyFlow(c, p, batch, {
          norms: args.norm === "both" ? ["raw", "normed"] : [args.norm],
          perToken: args.perToken,
          chunk: args.chunk,
          temperature: args.readoutTemperature,
          onProgress: (done, total) => {
            if (!args.quiet && !bar && total > 1) bar = progress("readout", total, { unit: "pass" });
            bar?.update(done);
          },
        });
        bar?.done();
        return { flow, batch, source };
      } finally {
        p.dispose();
      }
    },
    catch: (e) => e,
  });

/** The SVG path of an analysis: --svg, or --out with .svg. */
export const svgPath = (args: EntropyArgs): string => args.svg ?? args.out.replace(/\.json$/i, "") + ".svg";

const mkdirFor = (path: string) =>
  Effect.tryPromise({
    try: () => Deno.mkdir(path.replace(/\/[^/]*$/, "") || ".", { recursive: true }),
    catch: (e) => new FileFormatError({ file: path, message: `${path}: cannot create its folder (${e})` }),
  });

/**
 * Write the JSON report and the SVG (creating their folders) and print the summary table and boundary layer of
 * each model. One model: its report and the paper's two figures per norm. Several: `{ models: [report, ...] }`
 * and the multi-model figure (entropy_report.ts multiModelSvg).
 */
export const writeEntropyReport = (
  inputs: readonly EntropyInput[],
  rs: readonly EntropyResult[],
): Effect.Effect<void, FileFormatError> =>
  Effect.gen(function* () {
    const args = inputs[0].args, svg = svgPath(args);
    const json = inputs.map((input, i) => reportJson(rs[i].flow, input.model, rs[i].batch, rs[i].source));
    const names = modelNames(inputs.map((x) => x.dir));
    const c = inputs[0].model.config;
    yield* mkdirFor(args.out);
    yield* writeAtomic(
      args.out,
      JSON.stringify(inputs.length === 1 ? json[0] : { models: json }, null, 1) + "\n",
    );
    yield* mkdirFor(svg);
    yield* writeAtomic(
      svg,
      inputs.length === 1
        ? reportSvg(rs[0].flow, `${inputs[0].dir} (${c.architecture}, ${c.numLayers} layers)`)
        : multiModelSvg(
          rs.map((r, i) => ({ name: names[i], flow: r.flow })),
          `Entropy flow of ${names.join(", ")}`,
        ),
    );
    inputs.forEach((input, i) => {
      if (inputs.length > 1) console.log(`\n${input.dir}:`);
      console.log(summaryTable(rs[i].flow, input.model.nonFinite));
      console.log(boundaryLine(rs[i].flow));
    });
    console.log(`wrote ${args.out} and ${svg}`);
  });
