/** `deno task entropy`: the paper's entropy-flow analysis of a model folder, as a JSON report and an SVG. */
import { parseArgs } from "node:util";
import { Cause, Effect, Exit } from "effect";
import { ConfigError, FileFormatError } from "./core/errors.ts";
import { exists, readBytes, writeAtomic } from "./io/files.ts";
import { progress } from "./io/progress.ts";
import { barChart, type Chart, lineChart, panels } from "./io/svg.ts";
import { Gpu, GpuLive } from "./engine/gpu/device.ts";
import {
  type EntropyBatch,
  type EntropyFlow,
  entropyFlow,
  type LayerEntropies,
  nextTokenBatch,
  responseBatch,
} from "./policies/analysis.ts";
import type { DecoderConfig } from "./policies/config.ts";
import { generate } from "./policies/generate.ts";
import { type HostModel, readModelDir, toParams } from "./formats/hf.ts";
import type { ReadoutNorm } from "./policies/internal.ts";
import { readTokenizerDir } from "./formats/tokenizer.ts";

/** The model used when --model is not given (created by the embedded-task training). */
export const DEFAULT_MODEL = "models/tiny-arith";

export const HELP = `deno task entropy: entropy of the internal layer and modular policies, layer by layer.

Usage:
  deno task entropy [--model DIR] (--prompts FILE | --tokens IDS) [options]

Input (exactly one):
  --prompts FILE        one prompt per line (blank lines skipped). Responses are sampled from the model's
                        own policy, then only the response positions are scored: the positions that predict
                        a response token (eos included), each with that token as the log-prob target.
                        Needs tokenizer.json in the model folder.
  --tokens IDS          comma-separated token ids, e.g. 3,17,4 (one sequence). Every position is scored;
                        position t's log-prob target is id t+1. The last position has no next id: it counts
                        in the entropy means but not in the log-prob means.

Options:
  --model DIR           Hugging Face model folder: config.json and model.safetensors (or shards through
                        model.safetensors.index.json). Default: ${DEFAULT_MODEL} when it exists.
  --out FILE            JSON report (default runs/entropy.json)
  --svg FILE            SVG with the two figures (default: --out with .svg)
  --norm raw|normed|both  readout norm(s) to report (default both). raw = E_u x (the paper's convention;
                        the last layer alone is read after the final norm, so layer L-1 is the model's own
                        policy); normed = E_u RMSNorm_final(x) for every readout (the logit lens).
  --per-token           add per-position values to the JSON
  --chunk N             vocabulary ids per streaming chunk, a multiple of 64 (default 8192)
  --readout-temperature X  softmax temperature of every readout (default 1)
  --max-new N           (--prompts) most tokens per response (default 64)
  --temperature X       (--prompts) sampling temperature (default 1)
  --seed N              (--prompts) sampling seed (default 0)
  --quiet               no progress bar
  -h, --help            this text

Layers are numbered from 0: layer l here is the paper's layer l+1 (its "layer 1" is our layer 0; its
last layer L is our layer L-1). Entropies are in nats, token-weighted means over the scored positions.
Entropy change: attention l = H(E_u A_l) - H(E_u RMSNorm_1^l(h_{l-1})); FFN l = H(E_u F_l) -
H(E_u RMSNorm_2^l(h_{l-1} + A_l)); layer l = H(E_u h_l) - H(E_u h_{l-1}), h_{-1} = the embedding output.
The SVG: (1) mean entropy change per layer (attention, FFN, whole layer) with a zero line; (2) the
entropy flow: per layer the layer input, attention output, FFN output and layer output, one line.
`;

const LAYERS_NOTE = "Layers are 0-based: entry `layer: l` is the paper's layer l+1 (paperLayer). " +
  "input = H(E_u h_{l-1}) (h_{-1} = embedding output), attnIn = H(E_u RMSNorm_1^l(h_{l-1})), attn = H(E_u A_l), " +
  "ffnIn = H(E_u RMSNorm_2^l(h_{l-1}+A_l)), ffn = H(E_u F_l), output = H(E_u h_l) (the layer policy); " +
  "change.attn = attn - attnIn, change.ffn = ffn - ffnIn, change.layer = output - input. Entropies in nats; " +
  "logp = mean log-prob of the target ids (null where there are none).";
const NORM_NOTE =
  "raw: E_u x with no norm, except layer L-1 read after the final norm (the paper's convention; " +
  "layer L-1 raw = final). normed: E_u RMSNorm_final(x) for every readout, each with its own RMS (logit lens).";

/** Parsed command line. */
export interface CliArgs {
  readonly model: string | undefined;
  readonly prompts?: string;
  readonly tokens?: number[];
  readonly out: string;
  readonly svg: string;
  readonly norms: ReadoutNorm[];
  readonly perToken: boolean;
  readonly chunk: number;
  readonly readoutTemperature: number;
  readonly maxNew: number;
  readonly temperature: number;
  readonly seed: number;
  readonly quiet: boolean;
  readonly help: boolean;
}

const flagError = (field: string, message: string) => new ConfigError({ source: "flags", field, message });

/** Parse argv strictly: unknown flags, stray arguments and bad values are ConfigErrors naming the flag. */
export const parseCli = (argv: readonly string[]): CliArgs => {
  let v: Record<string, string | boolean | undefined>;
  try {
    v = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        model: { type: "string" },
        prompts: { type: "string" },
        tokens: { type: "string" },
        out: { type: "string" },
        svg: { type: "string" },
        norm: { type: "string" },
        "per-token": { type: "boolean" },
        chunk: { type: "string" },
        "readout-temperature": { type: "string" },
        "max-new": { type: "string" },
        temperature: { type: "string" },
        seed: { type: "string" },
        quiet: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (e) {
    const msg = (e as Error).message;
    const unknown = /Unknown option '([^']+)'/.exec(msg);
    if (unknown) throw flagError(unknown[1], `unknown flag ${unknown[1]} (see --help)`);
    const positional = /Unexpected argument '([^']+)'/.exec(msg);
    if (positional) {
      throw flagError(
        positional[1],
        `unexpected argument ${JSON.stringify(positional[1])} (flags take --name value)`,
      );
    }
    const missing = /Option '(?:-\w, )?(--[\w-]+)[^']*' argument missing/.exec(msg);
    if (missing) throw flagError(missing[1], `${missing[1]} needs a value`);
    throw flagError("(arguments)", `${msg.split(".")[0]} (see --help)`);
  }
  const num = (flag: string, def: number, ok: (x: number) => boolean, what: string): number => {
    const s = v[flag];
    if (s === undefined) return def;
    const x = Number(s);
    if (typeof s !== "string" || s.trim() === "" || !ok(x)) {
      throw flagError(`--${flag}`, `--${flag} ${JSON.stringify(s)}: expected ${what}`);
    }
    return x;
  };
  const int = (x: number) => Number.isInteger(x);
  const help = v.help === true;
  const out = (v.out as string | undefined) ?? "runs/entropy.json";
  const normFlag = (v.norm as string | undefined) ?? "both";
  if (!["raw", "normed", "both"].includes(normFlag)) {
    throw flagError("--norm", `--norm ${JSON.stringify(normFlag)}: expected raw, normed or both`);
  }
  let tokens: number[] | undefined;
  if (v.tokens !== undefined) {
    const parts = (v.tokens as string).split(",").map((s) => s.trim());
    tokens = parts.map((s, i) => {
      const x = Number(s);
      if (s === "" || !Number.isInteger(x) || x < 0) {
        throw flagError(
          "--tokens",
          `--tokens: item ${i + 1} ${JSON.stringify(s)} is not a non-negative integer id`,
        );
      }
      return x;
    });
  }
  if (!help && (v.prompts === undefined) === (tokens === undefined)) {
    throw flagError(
      "--prompts/--tokens",
      v.prompts === undefined
        ? "give --prompts FILE or --tokens IDS (see --help)"
        : "give either --prompts or --tokens, not both",
    );
  }
  return {
    model: v.model as string | undefined,
    prompts: v.prompts as string | undefined,
    tokens,
    out,
    svg: (v.svg as string | undefined) ?? out.replace(/\.json$/i, "") + ".svg",
    norms: normFlag === "both" ? ["raw", "normed"] : [normFlag as ReadoutNorm],
    perToken: v["per-token"] === true,
    chunk: num("chunk", 8192, (x) => int(x) && x > 0 && x % 64 === 0, "a positive multiple of 64"),
    readoutTemperature: num(
      "readout-temperature",
      1,
      (x) => x > 0 && Number.isFinite(x),
      "a positive number",
    ),
    maxNew: num("max-new", 64, (x) => int(x) && x >= 1, "a positive integer"),
    temperature: num("temperature", 1, (x) => x > 0 && Number.isFinite(x), "a positive number"),
    seed: num("seed", 0, (x) => int(x) && x >= 0 && x < 2 ** 32, "an integer in [0, 2^32)"),
    quiet: v.quiet === true,
    help,
  };
};

// ---- report -----------------------------------------------------------------------------------------------

const round = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(7)) : null);
const means = (m: { entropy: number; logp: number }) => ({ entropy: round(m.entropy), logp: round(m.logp) });
const layerJson = (e: LayerEntropies) => ({
  input: means(e.input),
  attnIn: means(e.attnIn),
  attn: means(e.attn),
  ffnIn: means(e.ffnIn),
  ffn: means(e.ffn),
  output: means(e.output),
  change: { attn: round(e.change.attn), ffn: round(e.change.ffn), layer: round(e.change.layer) },
});

/** The JSON report of an analysis. */
export const reportJson = (
  flow: EntropyFlow,
  model: { dir: string; config: DecoderConfig },
  batch: EntropyBatch,
  source: Record<string, unknown>,
): Record<string, unknown> => ({
  model: model.dir,
  architecture: model.config.architecture,
  numLayers: flow.numLayers,
  hiddenSize: model.config.hiddenSize,
  vocabSize: flow.vocabSize,
  notes: { layers: LAYERS_NOTE, norms: NORM_NOTE },
  source,
  readoutTemperature: flow.temperature,
  norms: flow.norms,
  tokens: flow.tokens,
  targets: flow.targets,
  final: means(flow.final),
  layers: flow.layers.map((l) => ({
    layer: l.layer,
    paperLayer: l.layer + 1,
    ...(l.raw ? { raw: layerJson(l.raw) } : {}),
    ...(l.normed ? { normed: layerJson(l.normed) } : {}),
  })),
  ...(flow.perToken
    ? {
      perToken: {
        sequence: Array.from(flow.perToken.index, (i) => Math.floor(i / batch.T)),
        position: Array.from(flow.perToken.index, (i) => i % batch.T),
        token: Array.from(flow.perToken.index, (i) => batch.ids[i]),
        target: Array.from(flow.perToken.index, (i) => (batch.targets[i] >= 0 ? batch.targets[i] : null)),
        entropy: Object.fromEntries([...flow.perToken.entropy].map(([k, a]) => [k, Array.from(a, round)])),
        logp: Object.fromEntries([...flow.perToken.logp].map(([k, a]) => [k, Array.from(a, round)])),
      },
    }
    : {}),
});

/** The paper's two figures for each reported norm: entropy change per layer, and the entropy flow. */
export const reportSvg = (flow: EntropyFlow, title: string): string => {
  const charts: Chart[] = [];
  const L = flow.numLayers;
  const every = Math.max(1, Math.ceil(L / 16));
  const xTicks = Array.from({ length: L + 1 }, (_, l) => l).filter((l) => l % every === 0 || l === L)
    .map((l) => ({ value: l, label: String(l) }));
  for (const norm of flow.norms) {
    const get = (l: number) => flow.layers[l][norm]!;
    charts.push(barChart({
      title: `Entropy change per layer (${norm})`,
      xLabel: "layer (0-based; the paper's layer l+1)",
      yLabel: "mean entropy change (nats)",
      categories: flow.layers.map((l) => String(l.layer)),
      series: [
        { name: "attention", values: flow.layers.map((l) => get(l.layer).change.attn) },
        { name: "FFN", values: flow.layers.map((l) => get(l.layer).change.ffn) },
        { name: "layer", values: flow.layers.map((l) => get(l.layer).change.layer) },
      ],
      zeroLine: true,
    }));
    const pts: [number, number][] = [];
    for (let l = 0; l < L; l++) {
      const e = get(l);
      pts.push([l, e.input.entropy], [l + 0.25, e.attn.entropy], [l + 0.5, e.ffn.entropy], [
        l + 0.75,
        e.output.entropy,
      ]);
    }
    charts.push(lineChart({
      title: `Entropy flow (${norm})`,
      xLabel: "layer l: input, attention, FFN, output (0-based)",
      yLabel: "mean entropy (nats)",
      series: [{ name: `entropy flow (${norm})`, points: pts }],
      xTicks,
      xRange: [-0.1, L],
    }));
  }
  return panels(charts, 2, title);
};

// ---- program ----------------------------------------------------------------------------------------------

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(3).padStart(8) : "     n/a");

const summary = (flow: EntropyFlow): string => {
  const n = flow.norms.includes("raw") ? "raw" : "normed";
  const rows = [
    `layer (0-based, ${n}):   H(input)   H(attn)    H(ffn)  H(output)    dAttn     dFfn   dLayer`,
  ];
  for (const l of flow.layers) {
    const e = l[n]!;
    rows.push(
      `${String(l.layer).padStart(5)}                ${fmt(e.input.entropy)}  ${fmt(e.attn.entropy)}  ${
        fmt(e.ffn.entropy)
      }  ${fmt(e.output.entropy)} ${fmt(e.change.attn)} ${fmt(e.change.ffn)} ${fmt(e.change.layer)}`,
    );
  }
  rows.push(`final policy: H = ${flow.final.entropy.toFixed(4)} nats over ${flow.tokens} scored positions`);
  return rows.join("\n");
};

const readPrompts = (file: string): Effect.Effect<string[], FileFormatError> =>
  Effect.flatMap(readBytes(file), (b) => {
    const lines = new TextDecoder().decode(b).split("\n").map((s) => s.replace(/\r$/, "")).filter((s) =>
      s.trim() !== ""
    );
    return lines.length
      ? Effect.succeed(lines)
      : Effect.fail(new FileFormatError({ file, message: `${file}: no prompts (one per line expected)` }));
  });

const mkdirFor = (path: string) =>
  Effect.tryPromise({
    try: () => Deno.mkdir(path.replace(/\/[^/]*$/, "") || ".", { recursive: true }),
    catch: (e) => new FileFormatError({ file: path, message: `${path}: cannot create its folder (${e})` }),
  });

/** The whole command as an Effect: parse, load, (generate,) analyse, write. Returns the exit code. */
export const main = (argv: readonly string[]) =>
  Effect.gen(function* () {
    const args = yield* Effect.try({ try: () => parseCli(argv), catch: (e) => e as ConfigError });
    if (args.help) {
      console.log(HELP);
      return 0;
    }
    let dir = args.model;
    if (dir === undefined) {
      if (!(yield* exists(`${DEFAULT_MODEL}/config.json`))) {
        return yield* flagError(
          "--model",
          `no --model given and the default ${DEFAULT_MODEL} does not exist yet: pass --model DIR ` +
            "(a Hugging Face folder with config.json and model.safetensors)",
        );
      }
      dir = DEFAULT_MODEL;
    }
    const model: HostModel = yield* readModelDir(dir);
    const c = model.config;
    if (args.tokens?.some((id) => id >= c.vocabSize)) {
      const bad = args.tokens.find((id) => id >= c.vocabSize);
      return yield* flagError(
        "--tokens",
        `--tokens: id ${bad} is outside the vocabulary [0, ${c.vocabSize}) of ${dir}`,
      );
    }
    const prompts = args.prompts === undefined ? undefined : yield* readPrompts(args.prompts);
    const tok = prompts ? yield* readTokenizerDir(dir) : undefined;
    if (tok && tok.vocabSize > c.vocabSize) {
      return yield* new FileFormatError({
        file: `${dir}/tokenizer.json`,
        message:
          `${dir}/tokenizer.json: ${tok.vocabSize} token ids, more than the model's vocab_size ${c.vocabSize}`,
      });
    }
    const encoded = prompts && tok
      ? yield* Effect.try({
        try: () =>
          prompts.map((s, i) => {
            try {
              return [...(tok.bos !== undefined ? [tok.bos] : []), ...tok.encode(s)];
            } catch (e) {
              throw new FileFormatError({
                file: args.prompts!,
                message: `${args.prompts}:${i + 1}: cannot tokenize (${(e as Error).message})`,
              });
            }
          }),
        catch: (e) => e as FileFormatError,
      })
      : undefined;
    const quiet = args.quiet;
    const { flow, batch, source } = yield* Effect.gen(function* () {
      const gpu = yield* Gpu;
      return yield* Effect.tryPromise({
        try: async () => {
          const p = toParams(gpu, model);
          try {
            let batch: EntropyBatch, source: Record<string, unknown>;
            if (encoded && tok) {
              const bar = quiet ? undefined : progress("generate", args.maxNew, { unit: "tok" });
              const r = await generate(c, p, encoded, {
                maxNew: args.maxNew,
                eos: tok.eos,
                pad: tok.pad,
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
                prompts: prompts!.length,
                maxNew: args.maxNew,
                temperature: args.temperature,
                seed: args.seed,
                responses: Array.from({ length: r.B }, (_, b) => ({
                  prompt: prompts![b],
                  response: tok.decode(
                    Array.from(
                      r.ids.subarray(
                        b * r.T + r.promptLens[b],
                        b * r.T + r.promptLens[b] + r.responseLens[b],
                      ),
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
              norms: args.norms,
              perToken: args.perToken,
              chunk: args.chunk,
              temperature: args.readoutTemperature,
              onProgress: (done, total) => {
                if (!quiet && !bar && total > 1) bar = progress("readout", total, { unit: "pass" });
                bar?.update(done);
              },
            });
            bar?.done();
            return { flow, batch, source };
          } finally {
            p.dispose();
          }
        },
        catch: (e) => e as Error,
      });
    }).pipe(Effect.provide(GpuLive()));
    yield* mkdirFor(args.out);
    yield* writeAtomic(args.out, JSON.stringify(reportJson(flow, model, batch, source), null, 1) + "\n");
    yield* mkdirFor(args.svg);
    yield* writeAtomic(args.svg, reportSvg(flow, `${dir} (${c.architecture}, ${c.numLayers} layers)`));
    console.log(summary(flow));
    console.log(`wrote ${args.out} and ${args.svg}`);
    return 0;
  });

if (import.meta.main) {
  const exit = await Effect.runPromiseExit(main(Deno.args));
  if (Exit.isSuccess(exit)) Deno.exit(exit.value);
  const e = Cause.squash(exit.cause) as { _tag?: string; message?: string; source?: string };
  const msg = (e?.message ?? String(e)).split("\n")[0];
  console.error(`entropy: ${msg}`);
  Deno.exit(e?._tag === "ConfigError" && e.source === "flags" ? 2 : 1);
}
