/**
 * A whole RL run: set-up (model, tokenizer, task, objective, run folder), the step loop with evaluation,
 * checkpoints and logs, and resume. `train.ts` runs it from flags.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { exists, writeAtomic } from "../io/files.ts";
import { progress } from "../io/progress.ts";
import type { Backend } from "../engine/backend.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { final } from "../policies/internal.ts";
import { type HostModel, paramsToHost, readModelDir, toParams } from "../formats/hf.ts";
import type { Params } from "../policies/params.ts";
import { loadObjectiveModule } from "../formats/module.ts";
import {
  bupo,
  grpo,
  klToRef,
  MonoidObjective,
  type Objective,
  scale,
  show,
} from "../objectives/objective.ts";
import { loadCheckpoint, type ParamMoments, saveCheckpoint } from "./checkpoint.ts";
import { resolveConfig, type TrainConfig } from "./config.ts";
import { resolveLayer } from "./boundary.ts";
import { evalPolicyOf, evaluateSource } from "./evaluate.ts";
import { type EvalRecord, runPlots } from "./report.ts";
import { type RlContext, rlStep, type StepMetrics } from "./rl.ts";
import { requiredReadouts } from "../objectives/readouts.ts";
import { createOptimizer, disposeOptimizer, loadMoments, momentsToHost } from "./optimizer.ts";
import { type RunDir, runDir } from "./rundir.ts";
import { openSource } from "./source.ts";

/** The objective a config names: `grpo`, `bupo`, or a module exporting an Objective (default or `objective`). */
export const resolveObjective = async (cfg: TrainConfig): Promise<Objective> => {
  const clip = {
    clipLow: cfg.clip,
    clipHigh: cfg.clipHigh,
    tis: cfg.tisCap > 0 ? { cap: cfg.tisCap } : undefined,
  };
  let o: Objective;
  if (cfg.objective === "grpo") o = grpo(final, clip);
  else if (cfg.objective === "bupo") {
    if (cfg.layer === "auto") {
      throw new ConfigError({
        source: "config",
        field: "layer",
        message: "layer auto: resolve it first (runTraining does, with training/boundary.ts resolveLayer)",
      });
    }
    o = bupo({ layer: cfg.layer, until: cfg.phaseSteps, ...clip });
  } else o = await loadObjectiveModule(cfg.objective);
  if (cfg.kl > 0) o = MonoidObjective.concat(o, scale(cfg.kl)(klToRef(final, { estimator: "k3" })));
  return o;
};

/** Settings a resumed run may change; every other flag must match the checkpoint. */
const RESUME_MAY_CHANGE = [
  "steps",
  "evalEvery",
  "checkpointEvery",
  "evalProblems",
  "evalK",
  "evalPolicy",
  "out",
  "device",
];

export interface RunOptions {
  readonly resume: boolean;
  /** The flags given explicitly (checked against the checkpoint on resume). */
  readonly explicit?: Partial<TrainConfig>;
  readonly quiet: boolean;
  /** Stop after this many steps of this invocation (tests simulate an interrupted run). */
  readonly stopAfter?: number;
}

export interface RunResult {
  readonly dir: string;
  readonly metrics: readonly StepMetrics[];
  readonly evals: readonly EvalRecord[];
}

const fileErr = (file: string, message: string) =>
  new FileFormatError({ file, message: `${file}: ${message}` });

const readJsonl = async <T>(path: string): Promise<T[]> => {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as T);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
};

/**
 * Work on the device as one uninterruptible effect: an interruption waits for it, so the run's buffers are never
 * released under a step, an evaluation or a read-back still in flight.
 */
const onDevice = <A>(work: () => Promise<A>) => Effect.uninterruptible(Effect.promise(work));

// ---- set-up stages ----------------------------------------------------------------------------------------

/** Where a run starts: its settings (a resumed run's come from its checkpoint), model, moments and first step. */
interface Origin {
  readonly cfg: TrainConfig;
  readonly host: HostModel;
  /** AdamW moments and step count to continue from (a resumed run). */
  readonly moments: readonly ParamMoments[] | null;
  readonly optStep: number;
  /** The first step this invocation runs (1 for a fresh run). */
  readonly start: number;
}

/** A fresh run: the model folder; refused when `--out` already holds a run. */
const startFresh = (cfg: TrainConfig) =>
  Effect.gen(function* () {
    if (yield* exists(runDir(cfg.out).latest)) {
      return yield* new ConfigError({
        source: "flags",
        field: "--out",
        message:
          `--out ${cfg.out} already holds a run with checkpoints; pass --resume to continue it or choose another --out`,
      });
    }
    return {
      cfg,
      host: yield* readModelDir(cfg.model),
      moments: null,
      optStep: 0,
      start: 1,
    } satisfies Origin;
  });

/** A resumed run: its latest checkpoint, whose settings every explicit flag but RESUME_MAY_CHANGE must match. */
const resumeFrom = (dir: string, explicit: Partial<TrainConfig>) =>
  Effect.gen(function* () {
    const ck = yield* loadCheckpoint(dir);
    const saved = resolveConfig(ck.state.config as Partial<TrainConfig>, {});
    for (const [k, val] of Object.entries(explicit)) {
      if (
        RESUME_MAY_CHANGE.includes(k) ||
        JSON.stringify(val) === JSON.stringify(saved[k as keyof TrainConfig])
      ) continue;
      return yield* new ConfigError({
        source: runDir(dir).latest,
        field: k,
        message: `--resume: ${k} is ${JSON.stringify(saved[k as keyof TrainConfig])} in the checkpoint but ${
          JSON.stringify(val)
        } was given; a resumed run keeps its settings (only ${RESUME_MAY_CHANGE.join(", ")} may change)`,
      });
    }
    const cfg: TrainConfig = {
      ...saved,
      steps: explicit.steps ?? saved.steps,
      evalEvery: explicit.evalEvery ?? saved.evalEvery,
      checkpointEvery: explicit.checkpointEvery ?? saved.checkpointEvery,
      evalProblems: explicit.evalProblems ?? saved.evalProblems,
      evalK: explicit.evalK ?? saved.evalK,
      evalPolicy: explicit.evalPolicy ?? saved.evalPolicy,
      out: dir,
    };
    return {
      cfg,
      host: ck.model,
      moments: ck.moments,
      optStep: ck.state.optimizerStep,
      start: ck.state.step + 1,
    } satisfies Origin;
  });

const resumeOrStart = (
  cfg: TrainConfig,
  o: RunOptions,
): Effect.Effect<Origin, ConfigError | FileFormatError> =>
  o.resume ? resumeFrom(cfg.out, o.explicit ?? {}) : startFresh(cfg);

/**
 * The run's task source (training/source.ts openSource): a dataset (`--data`) over the model folder's tokenizer,
 * chat template and rewards, or the task `cfg.task` names over its char tokenizer; on resume the tokenizer is
 * the checkpoint's. It closes (reward workers stop) with the run's scope.
 */
const loadSource = (origin: Origin, o: RunOptions) => {
  const { cfg, start } = origin;
  const dir = o.resume ? runDir(cfg.out).checkpoint(start - 1) : cfg.model;
  return openSource(cfg, dir, origin.host.config.vocabSize, (s) => o.quiet || console.log(s));
};

/** The run's objective; refused when its first step reads a layer the model does not have. */
const loadObjective = (cfg: TrainConfig, config: DecoderConfig) =>
  Effect.gen(function* () {
    const objective = yield* Effect.tryPromise({
      try: () => resolveObjective(cfg),
      catch: (e) => e as ConfigError,
    });
    if (requiredReadouts(objective, 1).logp.some((p) => p.kind !== "final" && p.layer >= config.numLayers)) {
      return yield* new ConfigError({
        source: "flags",
        field: "--layer",
        message: `--layer ${cfg.layer}: the model has ${config.numLayers} layers (0-based: 0..${
          config.numLayers - 1
        })`,
      });
    }
    return objective;
  });

/** Parameters on the device, disposed when the scope closes. */
const scopedParams = (make: () => Params) =>
  Effect.acquireRelease(Effect.sync(make), (p) => Effect.sync(() => p.dispose()));

/**
 * The run's device state, each piece a resource of the enclosing scope (freed however the run ends): the
 * parameters, the AdamW moments (a resumed run's loaded from its checkpoint) and, with a KL term, the frozen
 * reference model (the base model folder; a fresh run uploads the model it already read).
 */
const acquireModel = (gpu: Backend, origin: Origin, resume: boolean) =>
  Effect.gen(function* () {
    const { cfg, host, moments } = origin;
    const params = yield* scopedParams(() => toParams(gpu, host));
    const opt = yield* Effect.acquireRelease(
      Effect.sync(() =>
        createOptimizer(params, { lr: cfg.lr, weightDecay: cfg.weightDecay, maxGradNorm: cfg.gradClip })
      ),
      (opt) => Effect.sync(() => disposeOptimizer(opt)),
    );
    if (moments) {
      // loadCheckpoint checked every moment against paramSpecs(config), the order of params.layout.specs.
      loadMoments(params, opt, moments.map((x) => x.m), moments.map((x) => x.v), origin.optStep);
    }
    const refHost = cfg.kl > 0 ? (resume ? yield* readModelDir(cfg.model) : host) : undefined;
    const ref = refHost ? yield* scopedParams(() => toParams(gpu, refHost)) : undefined;
    return { params, opt, ref };
  });

/** Everything the run's stages share. */
interface Run extends RlContext {
  readonly rd: RunDir;
  /** The logs so far (resumed runs: up to the checkpoint); each stage appends. */
  readonly metrics: StepMetrics[];
  readonly evals: EvalRecord[];
  readonly log: (s: string) => void;
}

/**
 * Create the run folder; keep only the log lines before `start` (a killed run may have logged past its last
 * checkpoint) and write the config and objective.
 */
const openRunFolder = (rd: RunDir, cfg: TrainConfig, objective: Objective, start: number) =>
  Effect.gen(function* () {
    yield* Effect.tryPromise({
      try: () => Deno.mkdir(rd.dir, { recursive: true }),
      catch: (e) => fileErr(rd.dir, `cannot create (${e})`),
    });
    const before = <T extends { step: number }>(path: string) =>
      Effect.promise(() => readJsonl<T>(path)).pipe(Effect.map((xs) => xs.filter((x) => x.step < start)));
    const metrics = yield* before<StepMetrics>(rd.metrics);
    const evals = yield* before<EvalRecord>(rd.evals);
    yield* writeAtomic(rd.metrics, metrics.map((x) => JSON.stringify(x) + "\n").join(""));
    yield* writeAtomic(rd.evals, evals.map((x) => JSON.stringify(x) + "\n").join(""));
    yield* writeAtomic(rd.config, JSON.stringify(cfg, null, 1) + "\n");
    yield* writeAtomic(rd.objective, show(objective) + "\n");
    return { metrics, evals };
  });

// ---- the stages of the loop -------------------------------------------------------------------------------

/**
 * Evaluate at `step` (0: the base model); append to eval.jsonl and samples.jsonl. A source without held-out
 * prompts (a dataset run without --eval-data) is not evaluated.
 */
const evalStage = (run: Run, step: number) =>
  onDevice(async () => {
    const { cfg, rd } = run;
    if (run.source.evalSize === 0) return undefined;
    const r = await evaluateSource(run.config, run.params, run.source, {
      problems: cfg.evalProblems,
      k: cfg.evalK,
      temperature: cfg.temperature,
      maxNew: cfg.maxNew,
      seed: cfg.seed + 7919,
      policy: evalPolicyOf(cfg.evalPolicy, run.config.numLayers),
    });
    const rec: EvalRecord = {
      step,
      avgAtK: r.avgAtK,
      passAtK: r.passAtK,
      greedy: r.greedy,
      k: r.k,
      policy: r.policy,
      ...(r.byDifficulty ? { byDifficulty: r.byDifficulty } : {}),
      ...(r.byDataSource ? { byDataSource: r.byDataSource } : {}),
      ...(r.rewardErrors ? { rewardErrors: r.rewardErrors } : {}),
    };
    run.evals.push(rec);
    await Deno.writeTextFile(rd.evals, JSON.stringify(rec) + "\n", { append: true });
    await Deno.writeTextFile(
      rd.samples,
      r.samples.map((s) => JSON.stringify({ step, ...s }) + "\n").join(""),
      { append: true },
    );
    run.log(
      `eval @ step ${step}${r.policy === "final" ? "" : ` (${r.policy})`}: avg@${r.k} ${
        (100 * r.avgAtK).toFixed(1)
      }%  pass@${r.k} ${(100 * r.passAtK).toFixed(1)}%  greedy ${(100 * r.greedy).toFixed(1)}%`,
    );
    for (const d of r.byDataSource ?? []) {
      run.log(
        `  ${d.dataSource} (${d.problems}): avg@${r.k} ${(100 * d.avgAtK).toFixed(1)}%  pass@${r.k} ${
          (100 * d.passAtK).toFixed(1)
        }%  greedy ${(100 * d.greedy).toFixed(1)}%`,
      );
    }
    return rec;
  });

/** Checkpoint after `step` (model, moments, state), then redraw the plots. */
const checkpointStage = (run: Run, step: number, last?: StepMetrics) =>
  Effect.gen(function* () {
    const { params, opt } = run;
    const { tensors, mv } = yield* onDevice(async () => ({
      tensors: await paramsToHost(params),
      mv: await momentsToHost(params, opt),
    }));
    const moments = tensors.map((t, i) => ({ name: t.name, shape: t.shape, m: mv.m[i], v: mv.v[i] }));
    yield* saveCheckpoint(run.rd.dir, run.config, tensors, run.source.writeTokenizer, moments, {
      step,
      optimizerStep: opt.step,
      objective: JSON.parse(JSON.stringify(run.objective)),
      config: run.cfg,
      metrics: last,
    });
    yield* writePlots(run);
  });

const writePlots = (run: Run) =>
  writeAtomic(run.rd.plots, runPlots(`bupo run ${run.rd.dir}`, run.metrics, run.evals));

/** One RL step, appended to metrics.jsonl. */
const trainStage = (run: Run, step: number) =>
  Effect.gen(function* () {
    const sm = yield* Effect.uninterruptible(Effect.tryPromise({
      try: () => rlStep(run, step),
      catch: (e) => e as Error,
    }));
    run.metrics.push(sm);
    yield* Effect.promise(() =>
      Deno.writeTextFile(run.rd.metrics, JSON.stringify(sm) + "\n", { append: true })
    );
    return sm;
  });

/** Steps `start..cfg.steps` (or `o.stopAfter` of them), each with its evaluation and checkpoint when due. */
const stepLoop = (run: Run, start: number, o: RunOptions) =>
  Effect.gen(function* () {
    const { cfg } = run;
    const bar = o.quiet ? null : progress("train", cfg.steps, { unit: "step" });
    bar?.update(start - 1);
    let done = 0;
    for (let step = start; step <= cfg.steps; step++) {
      const sm = yield* trainStage(run, step);
      bar?.setNote(`reward ${sm.rewardMean.toFixed(3)}  acc ${(100 * sm.accuracy).toFixed(0)}%`);
      bar?.update(step);
      if (!o.quiet && (step % 5 === 0 || step === cfg.steps)) {
        console.log(
          `\nstep ${step}: reward ${sm.rewardMean.toFixed(3)}  acc ${(100 * sm.accuracy).toFixed(0)}%  ` +
            `H(final) ${sm.entropy.final.toFixed(3)}  ${sm.time.total.toFixed(2)} s  [${sm.phase}]`,
        );
      }
      if (step % cfg.evalEvery === 0 || step === cfg.steps) yield* evalStage(run, step);
      if (step % cfg.checkpointEvery === 0 || step === cfg.steps) yield* checkpointStage(run, step, sm);
      done++;
      if (o.stopAfter !== undefined && done >= o.stopAfter) break;
    }
    bar?.done();
  });

// ---- the run ----------------------------------------------------------------------------------------------

/** Set-up: origin, tokenizer and task, objective, device state (scoped), run folder. */
const setUp = (gpu: Backend, cfgIn: TrainConfig, o: RunOptions) =>
  Effect.gen(function* () {
    const origin = yield* resumeOrStart(cfgIn, o);
    const { cfg } = origin;
    const source = yield* loadSource(origin, o);
    const config = origin.host.config;
    const layer = yield* resolveLayer(gpu, cfg, source, {
      base: origin.host,
      resume: o.resume,
      log: (s) => o.quiet || console.log(s),
    });
    const objective = yield* loadObjective({ ...cfg, layer }, config);
    yield* Effect.try({
      try: () => evalPolicyOf(cfg.evalPolicy, config.numLayers),
      catch: (e) => e as ConfigError,
    });
    const model = yield* acquireModel(gpu, origin, o.resume);
    const rd = runDir(cfg.out);
    const logs = yield* openRunFolder(rd, cfg, objective, origin.start);
    const log = (s: string) => {
      if (!o.quiet) console.log(s);
    };
    const run: Run = { cfg, config, source, objective, rd, ...model, ...logs, log };
    return { run, start: origin.start };
  });

/**
 * Run (or resume) the RL run described by `cfg` on `gpu`. The device state lives in the run's scope: it is
 * freed when the run finishes, fails or is interrupted (interruption waits for the device work in flight).
 */
export const runTraining = (gpu: Backend, cfgIn: TrainConfig, o: RunOptions) =>
  Effect.scoped(
    Effect.gen(function* () {
      const { run, start } = yield* setUp(gpu, cfgIn, o);
      run.log(
        `bupo train: ${run.cfg.steps} steps of ${run.cfg.prompts} prompts x ${run.cfg.group} from ${run.source.name} on ${gpu.name}`,
      );
      run.log(`objective:\n${show(run.objective)}`);
      if (start === 1) yield* evalStage(run, 0);
      yield* stepLoop(run, start, o);
      yield* writePlots(run);
      return { dir: run.rd.dir, metrics: run.metrics, evals: run.evals } satisfies RunResult;
    }),
  );
