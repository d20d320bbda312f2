/**
 * A whole RL run: set-up (model, tokenizer, task, objective, run folder), the step loop with evaluation,
 * checkpoints and logs, and resume. `train.ts` runs it from flags.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { exists, writeAtomic } from "../io/files.ts";
import { progress } from "../io/progress.ts";
import type { Backend } from "../engine/backend.ts";
import { paramSpecs } from "../policies/config.ts";
import { final } from "../policies/internal.ts";
import { type HostModel, paramsToHost, readModelDir, toParams } from "../formats/hf.ts";
import { paramsFromHost } from "../policies/params.ts";
import { CharTokenizer, readTokenizerDir } from "../formats/tokenizer.ts";
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
import { arithTask } from "../tasks/arith.ts";
import { loadCheckpoint, type ParamMoments, saveCheckpoint } from "./checkpoint.ts";
import { resolveConfig, type TrainConfig } from "./config.ts";
import { evaluate } from "./evaluate.ts";
import { type EvalRecord, runPlots } from "./report.ts";
import { rlStep, type StepMetrics } from "./rl.ts";
import { requiredReadouts } from "../objectives/readouts.ts";
import { createOptimizer, loadMoments, momentsToHost } from "./optimizer.ts";

/** The objective a config names: `grpo`, `bupo`, or a module exporting an Objective (default or `objective`). */
export const resolveObjective = async (cfg: TrainConfig): Promise<Objective> => {
  const clip = {
    clipLow: cfg.clip,
    clipHigh: cfg.clipHigh,
    tis: cfg.tisCap > 0 ? { cap: cfg.tisCap } : undefined,
  };
  let o: Objective;
  if (cfg.objective === "grpo") o = grpo(final, clip);
  else if (cfg.objective === "bupo") o = bupo({ layer: cfg.layer, until: cfg.phaseSteps, ...clip });
  else o = await loadObjectiveModule(cfg.objective);
  if (cfg.kl > 0) o = MonoidObjective.concat(o, scale(cfg.kl)(klToRef(final, { estimator: "k3" })));
  return o;
};

/** Settings a resumed run may change; every other flag must match the checkpoint. */
const RESUME_MAY_CHANGE = ["steps", "evalEvery", "checkpointEvery", "evalProblems", "evalK", "out", "device"];

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

/** Run (or resume) the RL run described by `cfg` on `gpu`. */
export const runTraining = (gpu: Backend, cfgIn: TrainConfig, o: RunOptions) =>
  Effect.gen(function* () {
    const dir = cfgIn.out;
    let cfg = cfgIn;
    let start = 1;
    let host: HostModel;
    let moments: readonly ParamMoments[] | null = null, optStep = 0;
    if (o.resume) {
      const ck = yield* loadCheckpoint(dir);
      const saved = resolveConfig(ck.state.config as Partial<TrainConfig>, {});
      for (const [k, val] of Object.entries(o.explicit ?? {})) {
        if (
          RESUME_MAY_CHANGE.includes(k) ||
          JSON.stringify(val) === JSON.stringify(saved[k as keyof TrainConfig])
        ) continue;
        return yield* new ConfigError({
          source: `${dir}/latest.json`,
          field: k,
          message: `--resume: ${k} is ${
            JSON.stringify(saved[k as keyof TrainConfig])
          } in the checkpoint but ${JSON.stringify(val)} was given; a resumed run keeps its settings (only ${
            RESUME_MAY_CHANGE.join(", ")
          } may change)`,
        });
      }
      cfg = {
        ...saved,
        steps: o.explicit?.steps ?? saved.steps,
        evalEvery: o.explicit?.evalEvery ?? saved.evalEvery,
        checkpointEvery: o.explicit?.checkpointEvery ?? saved.checkpointEvery,
        evalProblems: o.explicit?.evalProblems ?? saved.evalProblems,
        evalK: o.explicit?.evalK ?? saved.evalK,
        out: dir,
      };
      host = ck.model;
      moments = ck.moments;
      optStep = ck.state.optimizerStep;
      start = ck.state.step + 1;
    } else {
      if (yield* exists(`${dir}/latest.json`)) {
        return yield* new ConfigError({
          source: "flags",
          field: "--out",
          message:
            `--out ${dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out`,
        });
      }
      host = yield* readModelDir(cfg.model);
    }
    const tok = yield* readTokenizerDir(
      o.resume ? `${dir}/checkpoints/step-${String(start - 1).padStart(6, "0")}` : cfg.model,
    );
    if (!(tok instanceof CharTokenizer)) {
      return yield* new ConfigError({
        source: cfg.model,
        field: "tokenizer.json",
        message: `${cfg.model}: the embedded tasks need a char tokenizer`,
      });
    }
    const task = arithTask();
    const missing = [...task.alphabet].filter((ch) => !tok.alphabet.includes(ch));
    if (missing.length) {
      return yield* new ConfigError({
        source: `${cfg.model}/tokenizer.json`,
        field: "model.vocab",
        message: `${cfg.model}: tokenizer lacks task characters ${JSON.stringify(missing.join(""))}`,
      });
    }
    const objective = yield* Effect.tryPromise({
      try: () => resolveObjective(cfg),
      catch: (e) => e as ConfigError,
    });
    const config = host.config;
    if (
      objective &&
      requiredReadouts(objective, 1).logp.some((p) => p.kind !== "final" && p.layer >= config.numLayers)
    ) {
      return yield* new ConfigError({
        source: "flags",
        field: "--layer",
        message: `--layer ${cfg.layer}: the model has ${config.numLayers} layers (0-based: 0..${
          config.numLayers - 1
        })`,
      });
    }
    const params = toParams(gpu, host);
    const opt = createOptimizer(params, {
      lr: cfg.lr,
      weightDecay: cfg.weightDecay,
      maxGradNorm: cfg.gradClip,
    });
    if (moments) {
      // loadCheckpoint checked every moment against paramSpecs(config), the order of params.layout.specs.
      loadMoments(params, opt, moments.map((x) => x.m), moments.map((x) => x.v), optStep);
    }
    const needsRef = cfg.kl > 0;
    const ref = needsRef
      ? (o.resume
        ? toParams(gpu, yield* readModelDir(cfg.model))
        : paramsFromHost(gpu, paramSpecs(config), (n) => host.tensors.get(n)))
      : undefined;

    yield* Effect.tryPromise({
      try: () => Deno.mkdir(dir, { recursive: true }),
      catch: (e) => fileErr(dir, `cannot create (${e})`),
    });
    // Logs: keep only lines up to the checkpoint being resumed (a killed run may have logged past it).
    const metrics = (yield* Effect.promise(() => readJsonl<StepMetrics>(`${dir}/metrics.jsonl`))).filter((
      x,
    ) => x.step < start);
    const evals = (yield* Effect.promise(() => readJsonl<EvalRecord>(`${dir}/eval.jsonl`))).filter((x) =>
      x.step < start
    );
    yield* writeAtomic(`${dir}/metrics.jsonl`, metrics.map((x) => JSON.stringify(x) + "\n").join(""));
    yield* writeAtomic(`${dir}/eval.jsonl`, evals.map((x) => JSON.stringify(x) + "\n").join(""));
    yield* writeAtomic(`${dir}/config.json`, JSON.stringify(cfg, null, 1) + "\n");
    yield* writeAtomic(`${dir}/objective.txt`, show(objective) + "\n");
    const log = (s: string) => {
      if (!o.quiet) console.log(s);
    };
    log(`bupo train: ${cfg.steps} steps of ${cfg.prompts} prompts x ${cfg.group} on ${gpu.name}`);
    log(`objective:\n${show(objective)}`);

    const runEval = (step: number) =>
      Effect.promise(async () => {
        const r = await evaluate(config, params, tok, task, {
          problems: cfg.evalProblems,
          k: cfg.evalK,
          temperature: cfg.temperature,
          maxNew: cfg.maxNew,
          seed: cfg.seed + 7919,
          taskSeed: cfg.seed,
        });
        const rec: EvalRecord = { step, avgAtK: r.avgAtK, passAtK: r.passAtK, greedy: r.greedy, k: r.k };
        evals.push(rec);
        await Deno.writeTextFile(`${dir}/eval.jsonl`, JSON.stringify(rec) + "\n", { append: true });
        await Deno.writeTextFile(
          `${dir}/samples.jsonl`,
          r.samples.map((s) => JSON.stringify({ step, ...s }) + "\n").join(""),
          { append: true },
        );
        log(
          `eval @ step ${step}: avg@${r.k} ${(100 * r.avgAtK).toFixed(1)}%  pass@${r.k} ${
            (100 * r.passAtK).toFixed(1)
          }%  greedy ${(100 * r.greedy).toFixed(1)}%`,
        );
        return rec;
      });
    const checkpoint = (step: number, last?: StepMetrics) =>
      Effect.gen(function* () {
        const tensors = yield* Effect.promise(() => paramsToHost(params));
        const mv = yield* Effect.promise(() => momentsToHost(params, opt));
        const moments = tensors.map((t, i) => ({ name: t.name, shape: t.shape, m: mv.m[i], v: mv.v[i] }));
        yield* saveCheckpoint(dir, config, tensors, tok, moments, {
          step,
          optimizerStep: opt.step,
          objective: JSON.parse(JSON.stringify(objective)),
          config: cfg,
          metrics: last,
        });
        yield* writeAtomic(`${dir}/plots.svg`, runPlots(`bupo run ${dir}`, metrics, evals));
      });

    if (start === 1) yield* runEval(0);
    const bar = o.quiet ? null : progress("train", cfg.steps, { unit: "step" });
    bar?.update(start - 1);
    let done = 0;
    for (let step = start; step <= cfg.steps; step++) {
      const sm = yield* Effect.tryPromise({
        try: () => rlStep({ cfg, config, params, opt, tok, task, objective, ref }, step),
        catch: (e) => e as Error,
      });
      metrics.push(sm);
      yield* Effect.promise(() =>
        Deno.writeTextFile(`${dir}/metrics.jsonl`, JSON.stringify(sm) + "\n", { append: true })
      );
      bar?.setNote(`reward ${sm.rewardMean.toFixed(3)}  acc ${(100 * sm.accuracy).toFixed(0)}%`);
      bar?.update(step);
      if (!o.quiet && (step % 5 === 0 || step === cfg.steps)) {
        console.log(
          `\nstep ${step}: reward ${sm.rewardMean.toFixed(3)}  acc ${(100 * sm.accuracy).toFixed(0)}%  ` +
            `H(final) ${sm.entropy.final.toFixed(3)}  ${sm.time.total.toFixed(2)} s  [${sm.phase}]`,
        );
      }
      if (step % cfg.evalEvery === 0 || step === cfg.steps) yield* runEval(step);
      if (step % cfg.checkpointEvery === 0 || step === cfg.steps) yield* checkpoint(step, sm);
      done++;
      if (o.stopAfter !== undefined && done >= o.stopAfter) break;
    }
    bar?.done();
    yield* writeAtomic(`${dir}/plots.svg`, runPlots(`bupo run ${dir}`, metrics, evals));
    params.dispose();
    ref?.dispose();
    return { dir, metrics, evals } satisfies RunResult;
  });
