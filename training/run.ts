/**
 * A whole RL run: set-up (run folder rule, model, tokenizer, task, objective checked against the model, memory
 * checked against the device and host), the step loop with evaluation, checkpoints and logs, and resume.
 * Every file is written atomically, in an order that leaves the run resumable after a kill at any moment.
 * `train.ts` runs it from flags.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { readJson, writeAtomic } from "../io/files.ts";
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
import { decodeConfigJson, recordedConfig, resolveConfig, type TrainConfig } from "./config.ts";
import { resolveLayer } from "./boundary.ts";
import { evalPolicyOf, evaluateSource } from "./evaluate.ts";
import { type EvalRecord, runPlots } from "./report.ts";
import { type RlContext, rlStep, type StepMetrics } from "./rl.ts";
import { allTerms, layerProblems } from "../objectives/validate.ts";
import { checkTrainingMemory } from "./memory.ts";
import { createOptimizer, disposeOptimizer, loadMoments, momentsToHost } from "./optimizer.ts";
import {
  checkpointFiles,
  claimRunFolder,
  type FolderMode,
  type FolderState,
  removeRunFiles,
  removeStaleTemps,
  type RunDir,
  runDir,
  writeMarker,
} from "./rundir.ts";
import { openSource } from "./source.ts";

/**
 * The objective a config names: `grpo`, `bupo`, or a module exporting an Objective (`path#export`, or the
 * default export or `objective` of `path`; formats/module.ts), plus `--kl`'s KL-to-reference term.
 */
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

/** How `runTraining` starts and reports. */
export interface RunOptions {
  /** Continue the run in `cfg.out` (from its latest checkpoint; one killed before any checkpoint starts over). */
  readonly resume: boolean;
  /**
   * Start over in `cfg.out`, an existing bupo run: only the run's own files are removed (latest.json first), and
   * only once set-up has succeeded. Without it (and without `resume`) `cfg.out` must be new or empty.
   */
  readonly overwrite?: boolean;
  /** The flags given explicitly (checked against the checkpoint on resume). */
  readonly explicit?: Partial<TrainConfig>;
  /** No progress bars or log lines (the run folder's files are written all the same). */
  readonly quiet: boolean;
  /** Stop after this many steps of this invocation (tests simulate an interrupted run). */
  readonly stopAfter?: number;
}

/** What a finished run gives back (its folder holds the same, and more). */
export interface RunResult {
  /** The run folder. */
  readonly dir: string;
  /** Every step's metrics (metrics.jsonl; a resumed run's earlier steps included). */
  readonly metrics: readonly StepMetrics[];
  /** Every evaluation (eval.jsonl), step 0 first. */
  readonly evals: readonly EvalRecord[];
}

const fileErr = (file: string, message: string) =>
  new FileFormatError({ file, message: `${file}: ${message}` });

/**
 * The lines of a JSONL log (none when it is absent). A last line without its newline (a kill while an older
 * version appended) is dropped; any other line that is not JSON is an error naming the file and line.
 */
const readJsonl = <T>(path: string): Effect.Effect<T[], FileFormatError> =>
  Effect.flatMap(
    Effect.tryPromise({
      try: () =>
        Deno.readTextFile(path).catch((e) => (e instanceof Deno.errors.NotFound ? "" : Promise.reject(e))),
      catch: (e) => fileErr(path, `cannot read (${e})`),
    }),
    (text) =>
      Effect.try({
        try: () => {
          const lines = text.split("\n");
          const torn = !text.endsWith("\n") ? lines.length - 1 : -1;
          const out: T[] = [];
          lines.forEach((l, i) => {
            if (!l.trim()) return;
            try {
              out.push(JSON.parse(l) as T);
            } catch (e) {
              if (i !== torn) throw fileErr(path, `line ${i + 1} is not JSON (${(e as Error).message})`);
            }
          });
          return out;
        },
        catch: (e) => e as FileFormatError,
      }),
  );

/** Replace a JSONL log atomically with `xs`, one JSON line each. */
const writeJsonl = (path: string, xs: readonly unknown[]) =>
  writeAtomic(path, xs.map((x) => JSON.stringify(x) + "\n").join(""));

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
  /** What `cfg.out` held before (claimRunFolder). */
  readonly folder: FolderState;
  /** Where the tokenizer is read: the checkpoint's folder, or the model folder. */
  readonly tokDir: string;
  /** Whether the model came from a checkpoint (the base model folder is read again for a reference model). */
  readonly fromCheckpoint: boolean;
}

/** The folder mode the options ask for; --resume with --overwrite is an error. */
const folderMode = (o: RunOptions): Effect.Effect<FolderMode, ConfigError> =>
  o.resume && o.overwrite
    ? Effect.fail(
      new ConfigError({
        source: "flags",
        field: "--overwrite",
        message: "--overwrite starts the run over and --resume continues it: give one of them",
      }),
    )
    : Effect.succeed(o.resume ? "resume" : o.overwrite ? "overwrite" : "fresh");

/** A fresh run (or one started over): the model folder. */
const startFresh = (cfg: TrainConfig, folder: FolderState) =>
  Effect.gen(function* () {
    return {
      cfg,
      host: yield* readModelDir(cfg.model),
      moments: null,
      optStep: 0,
      start: 1,
      folder,
      tokDir: cfg.model,
      fromCheckpoint: false,
    } satisfies Origin;
  });

/** A saved config with the explicit flags applied: only RESUME_MAY_CHANGE may differ from it. */
const continueWith = (saved: TrainConfig, explicit: Partial<TrainConfig>, source: string, dir: string) =>
  Effect.gen(function* () {
    for (const [k, val] of Object.entries(explicit)) {
      if (
        RESUME_MAY_CHANGE.includes(k) ||
        JSON.stringify(val) === JSON.stringify(saved[k as keyof TrainConfig])
      ) continue;
      return yield* new ConfigError({
        source,
        field: k,
        message: `--resume: ${k} is ${JSON.stringify(saved[k as keyof TrainConfig])} in ${source} but ${
          JSON.stringify(val)
        } was given; a resumed run keeps its settings (only ${RESUME_MAY_CHANGE.join(", ")} may change)`,
      });
    }
    return {
      ...saved,
      steps: explicit.steps ?? saved.steps,
      evalEvery: explicit.evalEvery ?? saved.evalEvery,
      checkpointEvery: explicit.checkpointEvery ?? saved.checkpointEvery,
      evalProblems: explicit.evalProblems ?? saved.evalProblems,
      evalK: explicit.evalK ?? saved.evalK,
      evalPolicy: explicit.evalPolicy ?? saved.evalPolicy,
      device: explicit.device ?? saved.device,
      out: dir,
    } satisfies TrainConfig;
  });

/** A saved config (a checkpoint's or config.json) as a TrainConfig: its objective's unused settings take defaults. */
const savedConfig = (source: string, json: unknown) =>
  Effect.try({
    try: () => resolveConfig(recordedConfig(decodeConfigJson(source, json)), {}),
    catch: (e) => e as ConfigError,
  });

/** A resumed run: its latest checkpoint, whose settings every explicit flag but RESUME_MAY_CHANGE must match. */
const resumeFrom = (dir: string, explicit: Partial<TrainConfig>, folder: FolderState) =>
  Effect.gen(function* () {
    const ck = yield* loadCheckpoint(dir);
    const source = checkpointFiles(ck.dir).state;
    const cfg = yield* continueWith(yield* savedConfig(source, ck.state.config), explicit, source, dir);
    return {
      cfg,
      host: ck.model,
      moments: ck.moments,
      optStep: ck.state.optimizerStep,
      start: ck.state.step + 1,
      folder,
      tokDir: ck.dir,
      fromCheckpoint: true,
    } satisfies Origin;
  });

/**
 * --resume of a run killed before its first checkpoint: it starts over from step 1 with the settings of its
 * config.json (checked against the explicit flags like a checkpoint's), or the flags' when it was killed before
 * writing one.
 */
const restartFrom = (cfgIn: TrainConfig, explicit: Partial<TrainConfig>, folder: FolderState) =>
  Effect.gen(function* () {
    const rd = runDir(cfgIn.out);
    const cfg = folder.kind === "run" && folder.config
      ? yield* continueWith(
        yield* savedConfig(rd.config, yield* readJson(rd.config)),
        explicit,
        rd.config,
        rd.dir,
      )
      : cfgIn;
    return yield* startFresh(cfg, folder);
  });

/** The run folder claimed for `o`'s mode, then the origin: a checkpoint, a restart, or the model folder. */
const resumeOrStart = (
  cfgIn: TrainConfig,
  mode: FolderMode,
  explicit: Partial<TrainConfig>,
): Effect.Effect<Origin, ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    const folder = yield* claimRunFolder(cfgIn.out, cfgIn.model, mode);
    const origin = mode !== "resume"
      ? yield* startFresh(cfgIn, folder)
      : folder.kind === "run" && folder.checkpoint
      ? yield* resumeFrom(cfgIn.out, explicit, folder)
      : yield* restartFrom(cfgIn, explicit, folder);
    if (origin.cfg.model !== cfgIn.model) {
      // A resumed run's model folder is its saved one: the same overlap rule applies to it.
      yield* claimRunFolder(cfgIn.out, origin.cfg.model, mode);
    }
    return origin;
  });

/**
 * The run's task source (training/source.ts openSource): a dataset (`--data`) over the model folder's tokenizer,
 * chat template and rewards, or the task `cfg.task` names over its char tokenizer; on resume the tokenizer is
 * the checkpoint's. It closes (reward workers stop) with the run's scope.
 */
const loadSource = (origin: Origin, o: RunOptions) =>
  openSource(origin.cfg, origin.tokDir, origin.host.config.vocabSize, (s) => o.quiet || console.log(s));

/**
 * The run's objective, checked against the model before step 1: every policy of every term in every phase must
 * be one of its layers. The error names the term and the layer count, and `--layer` only when BuPO's layer came
 * from it (or its default).
 */
const loadObjective = (cfg: TrainConfig, config: DecoderConfig, explicit: Partial<TrainConfig>) =>
  Effect.gen(function* () {
    const objective = yield* Effect.tryPromise({
      try: () => resolveObjective(cfg),
      catch: (e) => e as ConfigError,
    });
    const problems = layerProblems(objective, config.numLayers);
    if (problems.length === 0) return objective;
    const L = config.numLayers;
    if (cfg.objective === "bupo") {
      return yield* new ConfigError({
        source: "flags",
        field: "--layer",
        message: `--layer ${cfg.layer}${
          "layer" in explicit ? "" : " (the default)"
        }: BuPO's internal phase reads ${
          problems[0].policy
        }, but the model ${cfg.model} has ${L} layers (0-based: 0..${L - 1})`,
      });
    }
    const more = problems.length > 1
      ? ` (and ${problems.length - 1} more: ${problems.slice(1).map((p) => p.policy).join(", ")})`
      : "";
    return yield* new ConfigError({
      source: cfg.objective,
      field: "--objective",
      message: `--objective ${cfg.objective}: ${problems[0].field}: ${problems[0].message}${more}`,
    });
  });

/** Whether a run needs the frozen reference model: --kl, or a KL-to-reference term anywhere in the objective. */
const needsReference = (cfg: TrainConfig, objective: Objective) =>
  cfg.kl > 0 || allTerms(objective).some((t) => t.kind === "kl");

/** Parameters on the device, disposed when the scope closes. */
const scopedParams = (make: () => Params) =>
  Effect.acquireRelease(Effect.sync(make), (p) => Effect.sync(() => p.dispose()));

/**
 * The run's device state, each piece a resource of the enclosing scope (freed however the run ends): the
 * parameters, the AdamW moments (a resumed run's loaded from its checkpoint) and, with a KL term, the frozen
 * reference model (the base model folder; a fresh run uploads the model it already read).
 */
const acquireModel = (gpu: Backend, origin: Origin, withRef: boolean) =>
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
    const refHost = withRef ? (origin.fromCheckpoint ? yield* readModelDir(cfg.model) : host) : undefined;
    const ref = refHost ? yield* scopedParams(() => toParams(gpu, refHost)) : undefined;
    return { params, opt, ref };
  });

/** One line of samples.jsonl: an example completion of an evaluation. */
interface SampleRecord {
  readonly step: number;
  readonly prompt: string;
  readonly completion: string;
  readonly reward: number;
}

/** Everything the run's stages share. */
interface Run extends RlContext {
  readonly rd: RunDir;
  /** The logs so far (resumed runs: up to the checkpoint); each stage appends and rewrites its file atomically. */
  readonly metrics: StepMetrics[];
  readonly evals: EvalRecord[];
  readonly samples: SampleRecord[];
  readonly log: (s: string) => void;
}

/**
 * Claim the run folder on disk, in an order that leaves a resumable run at every moment: a new folder gets its
 * marker first; `--overwrite` removes the run's files (latest.json first); a resumed one loses what a killed
 * process left half-written. Then config.json and objective.txt, and the logs cut to what the checkpoint
 * covers (a killed run may have logged past it; a run starting at step 1 redoes the step-0 evaluation too).
 */
const openRunFolder = (rd: RunDir, origin: Origin, objective: Objective, mode: FolderMode) =>
  Effect.gen(function* () {
    const { folder, start, cfg } = origin;
    if (folder.kind === "new") {
      yield* Effect.tryPromise({
        try: () => Deno.mkdir(rd.dir, { recursive: true }),
        catch: (e) => fileErr(rd.dir, `cannot create (${e})`),
      });
      yield* writeMarker(rd.marker, "bupo-run");
    } else if (mode === "overwrite") {
      yield* removeRunFiles(rd.dir);
      yield* writeMarker(rd.marker, "bupo-run");
    } else {
      yield* removeStaleTemps(rd.dir);
      if (!folder.marker) yield* writeMarker(rd.marker, "bupo-run");
    }
    yield* writeAtomic(rd.config, JSON.stringify(recordedConfig(cfg), null, 1) + "\n");
    yield* writeAtomic(rd.objective, show(objective) + "\n");
    const keepBelow = start === 1 ? 0 : start;
    const before = <T extends { step: number }>(path: string) =>
      readJsonl<T>(path).pipe(Effect.map((xs) => xs.filter((x) => x.step < keepBelow)));
    const metrics = yield* before<StepMetrics>(rd.metrics);
    const evals = yield* before<EvalRecord>(rd.evals);
    const samples = yield* before<SampleRecord>(rd.samples);
    yield* writeJsonl(rd.metrics, metrics);
    yield* writeJsonl(rd.evals, evals);
    yield* writeJsonl(rd.samples, samples);
    return { metrics, evals, samples };
  });

// ---- the stages of the loop -------------------------------------------------------------------------------

/**
 * Evaluate at `step` (0: the base model); add to eval.jsonl and samples.jsonl. A source without held-out
 * prompts (a dataset run without --eval-data) is not evaluated.
 */
const evalStage = (run: Run, step: number) =>
  Effect.gen(function* () {
    const { cfg, rd } = run;
    if (run.source.evalSize === 0) return undefined;
    const r = yield* onDevice(() =>
      evaluateSource(run.config, run.params, run.source, {
        problems: cfg.evalProblems,
        k: cfg.evalK,
        temperature: cfg.temperature,
        maxNew: cfg.maxNew,
        seed: cfg.seed + 7919,
        policy: evalPolicyOf(cfg.evalPolicy, run.config.numLayers),
      })
    );
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
    run.samples.push(...r.samples.map((s) => ({ step, ...s })));
    yield* writeJsonl(rd.evals, run.evals);
    yield* writeJsonl(rd.samples, run.samples);
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
    yield* saveCheckpoint(run.rd.dir, run.config, tensors, run.source.tokenizer, moments, {
      step,
      optimizerStep: opt.step,
      objective: JSON.parse(JSON.stringify(run.objective)),
      config: recordedConfig(run.cfg),
      metrics: last,
    });
    yield* writePlots(run);
  });

const writePlots = (run: Run) =>
  writeAtomic(run.rd.plots, runPlots(`bupo run ${run.rd.dir}`, run.metrics, run.evals));

/** One RL step, added to metrics.jsonl. */
const trainStage = (run: Run, step: number) =>
  Effect.gen(function* () {
    const sm = yield* Effect.uninterruptible(Effect.tryPromise({
      try: () => rlStep(run, step),
      catch: (e) => e as Error,
    }));
    run.metrics.push(sm);
    yield* writeJsonl(run.rd.metrics, run.metrics);
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

/**
 * Set-up, everything checked before anything is written: the run folder's rule and the origin, tokenizer and
 * task, the objective against the model, the memory the flags need against the device's and the host's, the
 * device state (scoped); only then the run folder.
 */
const setUp = (gpu: Backend, cfgIn: TrainConfig, o: RunOptions) =>
  Effect.gen(function* () {
    const explicit = o.explicit ?? {};
    const mode = yield* folderMode(o);
    const origin = yield* resumeOrStart(cfgIn, mode, explicit);
    const { cfg } = origin;
    const source = yield* loadSource(origin, o);
    const config = origin.host.config;
    const layer = yield* resolveLayer(gpu, cfg, source, {
      base: origin.host,
      resume: o.resume,
      log: (s) => o.quiet || console.log(s),
    });
    const objective = yield* loadObjective({ ...cfg, layer }, config, explicit);
    yield* Effect.try({
      try: () => evalPolicyOf(cfg.evalPolicy, config.numLayers),
      catch: (e) => e as ConfigError,
    });
    const withRef = needsReference(cfg, objective);
    yield* checkTrainingMemory(gpu, { cfg, config, objective, source, reference: withRef, explicit });
    const model = yield* acquireModel(gpu, origin, withRef);
    const rd = runDir(cfg.out);
    const logs = yield* openRunFolder(rd, origin, objective, mode);
    const log = (s: string) => {
      if (!o.quiet) console.log(s);
    };
    const run: Run = { cfg, config, source, objective, rd, ...model, ...logs, log };
    return { run, start: origin.start };
  });

/**
 * Run (or resume) the RL run described by `cfg` on `gpu`. The device state lives in the run's scope: it is
 * freed when the run finishes, fails or is interrupted (interruption waits for the device work in flight), and
 * the buffers the GPU pool kept are given back (`Backend.trim`).
 */
export const runTraining = (
  gpu: Backend,
  cfgIn: TrainConfig,
  o: RunOptions,
): Effect.Effect<RunResult, Error> =>
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
  ).pipe(
    // After the scope has freed the run's tensors: give the pool's buffers back too, so runs one after another
    // on one device (compare, sweep) start from the same allocation.
    Effect.ensuring(Effect.sync(() => gpu.trim())),
  );
