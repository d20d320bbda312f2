/** Gradient inspection: the loss of an objective on a batch and the gradient of every parameter, by HF name. */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { DEVICE_FLAG, type FlagTable } from "../core/flags.ts";
import { serializeSafetensors } from "../core/safetensors.ts";
import type { Backend } from "../engine/backend.ts";
import { tidy } from "../engine/tensor.ts";
import { writeAtomic } from "../io/files.ts";
import { rolloutFromSequences, type RolloutHost, rolloutTensors } from "../objectives/batch.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { readModelDir, toParams } from "../formats/hf.ts";
import { type Params, paramsToHostArrays } from "../policies/params.ts";
import { lowerStep, type StepOptions } from "../objectives/lower.ts";
import { bupo, grpo, type Objective, show } from "../objectives/objective.ts";
import { final, layer, type ReadoutNorm } from "../policies/internal.ts";
import { loadObjectiveModule } from "../formats/module.ts";
import { readRolloutFile } from "../formats/rollout.ts";
import { layerProblems } from "../objectives/validate.ts";

/** A batch given inline (sequences = prompt + response ids), as a rollout file, or as a host batch. */
export type GradientsBatch =
  | {
    readonly ids: readonly (readonly number[])[];
    /** prompt length of every sequence, or one per sequence. */
    readonly promptLen: number | readonly number[];
    /** one advantage per sequence. */
    readonly advantages: readonly number[];
  }
  /** A rollout file; `flag` (e.g. `--rollout`) prefixes the errors of reading it. */
  | { readonly rolloutFile: string; readonly flag?: string }
  | { readonly rollout: RolloutHost };

/** What `gradients` needs. */
export interface GradientsInput {
  readonly backend: Backend;
  /** A Hugging Face model folder, or a config with parameters already on `backend`. */
  readonly model: { readonly dir: string } | { readonly config: DecoderConfig; readonly params: Params };
  readonly batch: GradientsBatch;
  readonly objective: Objective;
  /** 1-based training step (selects the phase and the weights); default 1. */
  readonly step?: number;
  /** Readout temperature / chunk and KL detaching (`StepOptions`); old log-probs are always on-policy here. */
  readonly readout?: Omit<StepOptions, "onPolicy">;
  /**
   * Where the objective came from, for the error when it reads a layer the model lacks (default: field
   * `objective`): grad.ts names `--layer k` or `--objective path`.
   */
  readonly objectiveSource?: { readonly field: string; readonly value: string };
}

/** The result: the loss, each parameter's gradient and its L2 norm by Hugging Face name, and metrics. */
export interface GradientsResult {
  readonly loss: number;
  readonly grads: Map<string, Float32Array>;
  readonly norms: Map<string, number>;
  readonly shapes: Map<string, readonly number[]>;
  readonly metrics: {
    readonly clipFraction: number;
    readonly approxKl: number;
    readonly perTerm: readonly { readonly show: string; readonly weight: number; readonly value: number }[];
  };
  /** `show(objective)` and the step, for logs and the output file. */
  readonly objective: string;
  readonly step: number;
}

const hostBatch = (b: GradientsBatch): Effect.Effect<RolloutHost, FileFormatError> =>
  "rollout" in b ? Effect.succeed(b.rollout) : "rolloutFile" in b
    ? Effect.mapError(
      readRolloutFile(b.rolloutFile),
      (e) => (b.flag ? new FileFormatError({ file: e.file, message: `${b.flag} ${e.message}` }) : e),
    )
    : Effect.sync(() => rolloutFromSequences(b.ids, b.promptLen, b.advantages));

/**
 * Loss and gradients of `objective` at `step` on one batch. Old log-probs (and behaviour log-probs) that the
 * batch does not carry are on-policy: the current readouts, detached, so every ratio is exactly 1; a rollout file
 * may carry its own (`old.<policy>`, `behaviour`). Reads back once, at the end. An Effect: files are read when it
 * runs (`Effect.runPromise(gradients(...))`).
 */
export const gradients = (
  input: GradientsInput,
): Effect.Effect<GradientsResult, FileFormatError | ConfigError | Error> =>
  Effect.gen(function* () {
    const be = input.backend;
    const m = "dir" in input.model ? yield* readModelDir(input.model.dir) : null;
    const config = m ? m.config : (input.model as { config: DecoderConfig }).config;
    const problems = layerProblems(input.objective, config.numLayers);
    if (problems.length > 0) {
      const src = input.objectiveSource ?? { field: "objective", value: "" };
      return yield* new ConfigError({
        source: "objective",
        field: src.field,
        message: `${src.field}${src.value ? ` ${src.value}` : ""}: ${problems[0].field}: ${
          problems[0].message
        }`,
      });
    }
    const host = yield* hostBatch(input.batch);
    return yield* Effect.tryPromise({
      try: () =>
        compute(
          input,
          m
            ? { config: m.config, params: toParams(be, m), owned: true }
            : { ...(input.model as { config: DecoderConfig; params: Params }), owned: false },
          host,
        ),
      catch: (e) => e as Error,
    });
  });

const compute = async (
  input: GradientsInput,
  model: { config: DecoderConfig; params: Params; owned: boolean },
  host: RolloutHost,
): Promise<GradientsResult> => {
  const be = input.backend;
  const { config, params, owned } = model;
  const step = input.step ?? 1;
  const batch = rolloutTensors(be, host);
  try {
    return await tidy(async () => {
      const r = lowerStep(config, params, batch, input.objective, step, { ...input.readout, onPolicy: true });
      const host = await paramsToHostArrays(params, r.grads);
      const one = async (t: { data(): Promise<ArrayLike<number>> }) => (await t.data())[0];
      const grads = new Map<string, Float32Array>(), norms = new Map<string, number>();
      const shapes = new Map<string, readonly number[]>();
      params.layout.specs.forEach((s, i) => {
        const g = host[i];
        grads.set(s.name, g);
        shapes.set(s.name, s.shape);
        norms.set(s.name, Math.sqrt(g.reduce((a, x) => a + x * x, 0)));
      });
      const perTerm = [];
      for (const m of r.metrics.perTerm) {
        perTerm.push({ show: m.show, weight: m.weight, value: await one(m.value) });
      }
      return {
        loss: await one(r.loss),
        grads,
        norms,
        shapes,
        metrics: {
          clipFraction: await one(r.metrics.clipFraction),
          approxKl: await one(r.metrics.approxKl),
          perTerm,
        },
        objective: show(input.objective),
        step,
      };
    });
  } finally {
    batch.dispose();
    if (owned) params.dispose();
  }
};

/**
 * Write the gradients to a safetensors file keyed by Hugging Face names (F32), atomically; the loss, step and
 * objective go in `__metadata__` (`loss` as a decimal string that round-trips the f64).
 */
export const writeGradients = (path: string, r: GradientsResult): Effect.Effect<void, FileFormatError> =>
  writeAtomic(
    path,
    serializeSafetensors(
      [...r.grads].map(([name, data]) => ({ name, shape: r.shapes.get(name)!, data })),
      { format: "pt", loss: String(r.loss), step: String(r.step), objective: r.objective },
    ),
  );

/** A fixed-width table of per-tensor gradient norms (and the global norm), one line per tensor. */
export const normTable = (r: GradientsResult): string => {
  const w = Math.max(6, ...[...r.norms.keys()].map((k) => k.length));
  const lines = [`${"tensor".padEnd(w)}  ${"shape".padEnd(14)}  grad L2 norm`];
  let total = 0;
  for (const [name, n] of r.norms) {
    total += n * n;
    lines.push(
      `${name.padEnd(w)}  ${`[${r.shapes.get(name)!.join(",")}]`.padEnd(14)}  ${n.toExponential(4)}`,
    );
  }
  lines.push(`${"(global)".padEnd(w)}  ${"".padEnd(14)}  ${Math.sqrt(total).toExponential(4)}`);
  return lines.join("\n");
};

const usage = (field: string, message: string) => new ConfigError({ source: "flags", field, message });

/**
 * The objective `deno task grad` names: `grpo` on the final policy (or on layer(k, norm) with a layer),
 * `bupo` on layer k (required) until step `until`, or a module exporting an Objective (`path#export`; a layer
 * is then an error).
 */
export const objectiveByName = (o: {
  readonly name: string;
  readonly layer?: number;
  readonly until: number;
  readonly norm: ReadoutNorm;
}): Promise<Objective> => {
  if (o.name === "grpo") return Promise.resolve(grpo(o.layer === undefined ? final : layer(o.layer, o.norm)));
  if (o.name === "bupo") {
    if (o.layer === undefined) return Promise.reject(usage("--layer", "--objective bupo needs --layer k"));
    return Promise.resolve(bupo({ layer: o.layer, until: o.until, norm: o.norm }));
  }
  if (o.layer !== undefined) {
    return Promise.reject(
      usage(
        "--layer",
        `--layer ${o.layer}: the objective module ${o.name} names its own policies (remove --layer)`,
      ),
    );
  }
  return loadObjectiveModule(o.name);
};

/**
 * The batch of grad's flags: a rollout file, or sequences given inline (`tokens`: ids separated by ",",
 * sequences by ";") with one prompt length (or one per sequence) and one advantage per sequence.
 */
export const batchFromFlags = (f: {
  readonly rollout?: string;
  readonly tokens?: string;
  readonly promptLen?: readonly number[];
  readonly advantages?: readonly number[];
}): GradientsBatch => {
  if (f.rollout) return { rolloutFile: f.rollout, flag: "--rollout" };
  if (!f.tokens || !f.promptLen || !f.advantages) {
    throw usage("--tokens", "give --tokens, --prompt-len and --advantages (or --rollout FILE)");
  }
  const ids = f.tokens.split(";").map((seq) =>
    seq.split(",").map((x) => {
      const v = Number(x.trim());
      if (x.trim() === "" || !Number.isInteger(v) || v < 0) {
        throw usage("--tokens", `--tokens: ${JSON.stringify(x)} is not a token id (an integer >= 0)`);
      }
      return v;
    })
  );
  return {
    ids,
    promptLen: f.promptLen.length === 1 ? f.promptLen[0] : f.promptLen,
    advantages: f.advantages,
  };
};

/** The flags of `deno task grad` (a core/flags.ts table; grad.ts parses argv with it). */
export const GRAD_FLAGS = {
  model: {
    kind: "str",
    required: true,
    arg: "DIR",
    help: "model folder (Hugging Face: config.json + model.safetensors)",
  },
  tokens: {
    kind: "str",
    arg: "LIST",
    help: "sequences (prompt + response ids), ';' between sequences, ',' between ids",
  },
  promptLen: {
    kind: "list",
    of: "int",
    min: 0,
    arg: "N|LIST",
    help: "prompt length of every sequence, or one per sequence",
  },
  advantages: { kind: "list", of: "num", help: "one advantage per sequence (comma-separated)" },
  rollout: {
    kind: "str",
    arg: "FILE",
    help: "instead of --tokens/--prompt-len/--advantages: a rollout file (formats/rollout.ts\n" +
      "writeRolloutFile: ids, prompt_lens, response_lens, advantages, optional behaviour,\nold.<policy>, ref.<policy>)",
  },
  objective: {
    kind: "str",
    default: "grpo",
    arg: "NAME",
    help: "grpo: GRPO on the final policy, or on layer(k) with --layer k;\n" +
      "bupo: BuPO with --layer k (required) and --until n;\n" +
      "a module that exports an Objective: path#export, or the default export or `objective` of path",
  },
  layer: { kind: "int", min: 0, arg: "K", help: "0-based layer index (the paper's layer 1 is 0)" },
  until: { kind: "int", min: 1, default: 30, help: "bupo: last step of the internal phase (1-based)" },
  norm: {
    kind: "enum",
    values: ["raw", "normed"],
    default: "raw",
    help: "readout of layer(k): raw (the paper's) or through the final norm",
  },
  step: { kind: "int", min: 1, default: 1, help: "1-based training step (selects the phase)" },
  device: { ...DEVICE_FLAG, aliases: ["backend"] },
  out: { kind: "str", required: true, arg: "FILE", help: "output safetensors file" },
} as const satisfies FlagTable;
