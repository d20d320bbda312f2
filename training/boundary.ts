/**
 * `--layer auto`: BuPO's layer k by the paper's boundary-layer rule (policies/analysis.ts boundaryLayer) on the
 * base model's entropy flow over training prompts: the first step's problems, `group` responses each, sampled from
 * the base model, scored on the raw readout. The flow and the choice go to the run's boundary.json and the console;
 * a resumed run reads its boundary.json back (the choice never changes under a run).
 */
import { Effect } from "effect";
import { type ConfigError, FileFormatError } from "../core/errors.ts";
import type { Backend } from "../engine/backend.ts";
import { type HostModel, readModelDir, toParams } from "../formats/hf.ts";
import { exists, readJson, writeAtomic } from "../io/files.ts";
import {
  BOUNDARY_RULE,
  type BoundaryChoice,
  boundaryOfFlow,
  type EntropyFlow,
  entropyFlow,
  responseBatch,
} from "../policies/analysis.ts";
import { generate } from "../policies/generate.ts";
import type { TrainConfig } from "./config.ts";
import { generateOptionsOf, type TaskSource } from "./source.ts";
import { runDir } from "./rundir.ts";

/** What boundary.json holds. */
export interface BoundaryRecord extends BoundaryChoice {
  readonly rule: string;
  readonly norm: "raw";
  readonly model: string;
  readonly prompts: number;
  readonly responses: number;
  /** Scored response positions. */
  readonly tokens: number;
  /** Per layer (0-based): the entropy changes and the four entropies of the flow, in nats. */
  readonly flow: readonly {
    readonly layer: number;
    readonly ffnChange: number;
    readonly attnChange: number;
    readonly layerChange: number;
    readonly input: number;
    readonly attn: number;
    readonly ffn: number;
    readonly output: number;
  }[];
}

/** boundary.json's object for a flow. */
export const boundaryRecord = (
  flow: EntropyFlow,
  o: { readonly model: string; readonly prompts: number; readonly responses: number },
): BoundaryRecord => ({
  ...boundaryOfFlow(flow, "raw"),
  rule: `${BOUNDARY_RULE}; read on the raw readout`,
  norm: "raw",
  ...o,
  tokens: flow.tokens,
  flow: flow.layers.map((l) => {
    const e = l.raw!;
    return {
      layer: l.layer,
      ffnChange: e.change.ffn,
      attnChange: e.change.attn,
      layerChange: e.change.layer,
      input: e.input.entropy,
      attn: e.attn.entropy,
      ffn: e.ffn.entropy,
      output: e.output.entropy,
    };
  }),
});

/** The lines the console gets: the FFN change per layer, the chosen layer marked. */
export const boundaryLines = (r: BoundaryRecord): string[] => [
  `--layer auto: entropy flow of ${r.model} on ${r.prompts} training prompts x ${
    r.responses / Math.max(1, r.prompts)
  } responses (${r.tokens} tokens, raw readout)`,
  `  layer   dFFN      dAttn     dLayer    H(output)`,
  ...r.flow.map((l) =>
    `  ${String(l.layer).padStart(5)} ${sgn(l.ffnChange)} ${sgn(l.attnChange)} ${sgn(l.layerChange)} ${
      l.output.toFixed(4).padStart(9)
    }${l.layer === r.layer ? "  <- k" : ""}`
  ),
  `  boundary layer k = ${r.layer} (the paper's layer ${r.layer + 1}; ${r.reason}): ${r.rule}`,
];

const sgn = (x: number) => (x >= 0 ? "+" : "") + x.toFixed(4).padStart(8);

/** The entropy flow of the base model `host` on the run's training prompts (raw readouts). */
export const trainingFlow = async (
  gpu: Backend,
  host: HostModel,
  cfg: TrainConfig,
  source: TaskSource,
): Promise<{ flow: EntropyFlow; prompts: number; responses: number }> => {
  const problems = source.train(1, cfg.prompts);
  const prompts = problems.flatMap((q) => Array.from({ length: cfg.group }, () => q.ids));
  const p = toParams(gpu, host);
  try {
    const r = await generate(host.config, p, prompts, {
      maxNew: cfg.maxNew,
      ...generateOptionsOf(source),
      temperature: cfg.temperature,
      seed: cfg.seed,
      step: 0, // training steps are 1-based: step 0's draws are the analysis's own
    });
    const flow = await entropyFlow(host.config, p, responseBatch(r), { norms: ["raw"] });
    return { flow, prompts: problems.length, responses: prompts.length };
  } finally {
    p.dispose();
  }
};

const isRecord = (x: unknown): x is BoundaryRecord =>
  typeof x === "object" && x !== null && Number.isInteger((x as BoundaryRecord).layer) &&
  (x as BoundaryRecord).layer >= 0 && Array.isArray((x as BoundaryRecord).flow);

/**
 * The layer the run's objective uses: `cfg.layer` itself, or for `auto` with BuPO the boundary layer (other
 * objectives do not read the layer, so `auto` stays). A fresh run computes it on `base` (the base model) and writes
 * boundary.json; a resumed run reads boundary.json (or recomputes it from cfg.model when it is missing).
 */
export const resolveLayer = (
  gpu: Backend,
  cfg: TrainConfig,
  source: TaskSource,
  o: { readonly base?: HostModel; readonly resume: boolean; readonly log: (s: string) => void },
): Effect.Effect<number | "auto", ConfigError | FileFormatError | Error> =>
  Effect.gen(function* () {
    if (cfg.layer !== "auto" || cfg.objective !== "bupo") return cfg.layer;
    const file = runDir(cfg.out).boundary;
    if (o.resume && (yield* exists(file))) {
      const saved = yield* readJson(file);
      if (!isRecord(saved)) {
        return yield* new FileFormatError({
          file,
          message: `${file}: expected { "layer": K, "flow": [...] }`,
        });
      }
      o.log(`--layer auto: boundary layer k = ${saved.layer}, as ${file} records`);
      return saved.layer;
    }
    const host = o.base && !o.resume ? o.base : yield* readModelDir(cfg.model);
    const r = yield* Effect.tryPromise({
      try: () => trainingFlow(gpu, host, cfg, source),
      catch: (e) => e as Error,
    });
    const rec = boundaryRecord(r.flow, { model: cfg.model, prompts: r.prompts, responses: r.responses });
    yield* Effect.tryPromise({
      try: () => Deno.mkdir(cfg.out, { recursive: true }),
      catch: (e) => new FileFormatError({ file: cfg.out, message: `${cfg.out}: cannot create (${e})` }),
    });
    yield* writeAtomic(file, JSON.stringify(rec, null, 1) + "\n");
    for (const line of boundaryLines(rec)) o.log(line);
    return rec.layer;
  });
