/**
 * The entropy-flow analysis of a model folder, as `deno task entropy` runs it: check the input and read the
 * model (and the prompts and tokenizer), then on a backend sample responses (prompts) and read every layer and
 * module policy, then write the JSON report and the SVG (training/entropy_report.ts builds them).
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { DEVICE_FLAG, type DeviceChoice, type FlagTable } from "../core/flags.ts";
import type { Backend } from "../engine/backend.ts";
import { type HostModel, readModelDir, toParams } from "../formats/hf.ts";
import { readTokenizerDir, type TextTokenizer } from "../formats/tokenizer.ts";
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
  readPrompts,
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
    help: "one prompt per line (blank lines skipped). Responses are sampled from the model's\n" +
      "own policy, then only the response positions are scored: the positions that predict\n" +
      "a response token (eos included), each with that token as the log-prob target.\n" +
      "Needs tokenizer.json in the model folder.",
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
  readonly prompts?: string;
  readonly tokens?: readonly number[];
  readonly out: string;
  readonly svg?: string;
  readonly norm: ReadoutNorm | "both";
  readonly perToken: boolean;
  readonly chunk: number;
  readonly readoutTemperature: number;
  readonly maxNew: number;
  readonly temperature: number;
  readonly seed: number;
  readonly quiet: boolean;
  /** Load non-finite weights and mark them in the report (default false: they are an error). */
  readonly allowNonfinite?: boolean;
  readonly device?: DeviceChoice;
}

const usage = (field: string, message: string) => new ConfigError({ source: "flags", field, message });

/** The input, checked and read: the model, and the prompts encoded with its tokenizer (or the token ids). */
export interface EntropyInput {
  readonly args: EntropyArgs;
  readonly dir: string;
  readonly model: HostModel;
  readonly prompts?: {
    readonly text: readonly string[];
    readonly ids: number[][];
    readonly tok: TextTokenizer;
  };
}

/** Check the input flags and read every model (and the prompts and tokenizer): no backend needed yet. */
export const entropyInputs = (
  args: EntropyArgs,
): Effect.Effect<EntropyInput[], ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    const dirs = args.model.length ? args.model : [undefined];
    const twice = args.model.find((d, i) => args.model.indexOf(d) !== i);
    if (twice) return yield* usage("--model", `--model ${twice} is given twice`);
    const out: EntropyInput[] = [];
    for (const dir of dirs) out.push(yield* entropyInput(args, dir));
    return out;
  });

/** Check the input flags and read one model, `modelDir` (default: DEFAULT_MODEL), with the prompts and tokenizer. */
export const entropyInput = (
  args: EntropyArgs,
  modelDir?: string,
): Effect.Effect<EntropyInput, ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    if ((args.prompts === undefined) === (args.tokens === undefined)) {
      return yield* usage(
        "--prompts/--tokens",
        args.prompts === undefined
          ? "give --prompts FILE or --tokens IDS (see --help)"
          : "give either --prompts or --tokens, not both",
      );
    }
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
    const file = args.prompts;
    const text = yield* Effect.mapError(
      readPrompts(file),
      (e) => new FileFormatError({ file: e.file, message: `--prompts ${e.message}` }),
    );
    const tok = yield* readTokenizerDir(dir);
    if (tok.vocabSize > c.vocabSize) {
      return yield* new FileFormatError({
        file: `${dir}/tokenizer.json`,
        message:
          `${dir}/tokenizer.json: ${tok.vocabSize} token ids, more than the model's vocab_size ${c.vocabSize}`,
      });
    }
    const ids = yield* Effect.try({
      try: () =>
        text.map((s, i) => {
          try {
            return [...(tok.bos !== undefined ? [tok.bos] : []), ...tok.encode(s)];
          } catch (e) {
            throw new FileFormatError({
              file,
              message: `${file}:${i + 1}: cannot tokenize (${(e as Error).message})`,
            });
          }
        }),
      catch: (e) => e as FileFormatError,
    });
    return { args, dir, model, prompts: { text, ids, tok } };
  });

/** What an analysis found: the flow, the batch it scored and where the batch came from. */
export interface EntropyResult {
  readonly flow: EntropyFlow;
  readonly batch: EntropyBatch;
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
          const r = await generate(c, p, ids, {
            maxNew: args.maxNew,
            eos: tok.eos,
            pad: tok.pad,
            vocab: tok.vocabSize,
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
            maxNew: args.maxNew,
            temperature: args.temperature,
            seed: args.seed,
            responses: Array.from({ length: r.B }, (_, b) => ({
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
export const writeEntropyReport = (inputs: readonly EntropyInput[], rs: readonly EntropyResult[]) =>
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
