/**
 * One RL step (GRPO / BuPO / any Objective): rollouts from the final policy on the GPU, rewards, group
 * advantages, old log-probs from whichever internal policies the objective names (plus the entropy of every
 * layer policy and of every policy the objective names, for the logs) in one streaming pass, optional reference
 * log-probs, then minibatch AdamW updates. Reads back only what a step reports: the rollout ids, one set of old
 * log-probs, and the updates' scalars (loss, gradient norm, and each term's value, clip fractions and KL) in one
 * read at the end.
 */
import { NonFiniteError } from "../core/errors.ts";
import { reshape, type Tensor, tidy } from "../engine/tensor.ts";
import { concatRows } from "../kernels/layout.ts";
import type { DecoderConfig } from "../policies/config.ts";
import { generate, type GenerateOptions, type Rollout } from "../policies/generate.ts";
import { final, type InternalPolicy, layer, showPolicy } from "../policies/internal.ts";
import type { Params } from "../policies/params.ts";
import { forwardPolicies } from "../policies/policy.ts";
import { type RolloutHost, rolloutTensors } from "../objectives/batch.ts";
import { drGrpoAdvantages, grpoAdvantages, rlooAdvantages } from "../objectives/advantages.ts";
import { lowerStep } from "../objectives/lower.ts";
import {
  activeAt,
  type Objective,
  phaseAt,
  showActive,
  showTerm,
  type Term,
} from "../objectives/objective.ts";
import type { TrainConfig } from "./config.ts";
import { generateOptionsOf, type SourcePrompt, type SourceScore, type TaskSource } from "./source.ts";
import { requiredReadouts } from "../objectives/readouts.ts";
import { type Optimizer, optimizerStep } from "./optimizer.ts";

/** Everything a step needs. */
export interface RlContext {
  /** The run's settings (prompts, group, maxNew, temperature, advantage, epochs, minibatches, seed...). */
  readonly cfg: TrainConfig;
  /** The model's architecture. */
  readonly config: DecoderConfig;
  /** The parameters trained (updated in place). */
  readonly params: Params;
  /** AdamW's moments for `params` (updated in place). */
  readonly opt: Optimizer;
  /** Where the prompts come from and how responses are scored (a task or a dataset). */
  readonly source: TaskSource;
  /** The loss (its phases are resolved at the step). */
  readonly objective: Objective;
  /** Frozen reference model for KL terms (absent when no term needs it). */
  readonly ref?: Params;
}

/**
 * The prompts of RL step `step` (1-based) from the source, each one's ids repeated once per group member, and
 * the sampler's options (the source's stop ids, pad and vocabulary).
 */
export const rolloutPlan = (ctx: RlContext, step: number) => {
  const { cfg, source } = ctx;
  const problems = source.train(step, cfg.prompts);
  const prompts = problems.flatMap((q) => Array.from({ length: cfg.group }, () => q.ids));
  const options: GenerateOptions = {
    maxNew: cfg.maxNew,
    ...generateOptionsOf(source),
    temperature: cfg.temperature,
    seed: cfg.seed,
    step,
  };
  return { problems, prompts, options };
};

/** One active term of a step's objective: its weight and its value, means over the step's updates. */
export interface TermMetrics {
  /** The term (`showTerm`, without its weight). */
  readonly term: string;
  /** Its weight at this step (schedules evaluated, nested weights multiplied). */
  readonly weight: number;
  /** Its unweighted value. */
  readonly value: number;
  /** weight x value: the term's part of `StepMetrics.loss` (the parts sum to it, up to f32 rounding). */
  readonly loss: number;
  /** pg terms: the fraction of response tokens clipped (and dual-clipped), and approx KL(old || new). */
  readonly clipFraction?: number;
  /** pg terms with a dual clip: the fraction of response tokens the dual clip bound. */
  readonly dualClipFraction?: number;
  /** pg terms: the token-mean of logp_old - logp_new (verl's ppo_kl). */
  readonly approxKl?: number;
}

/** Rollout accuracy of the problems at one difficulty level (`Problem.difficulty`). */
export interface DifficultyAccuracy {
  /** The level (`Problem.difficulty`). */
  readonly difficulty: number;
  /** Responses at this level (prompts x group). */
  readonly responses: number;
  /** Fraction of those responses with reward >= 1. */
  readonly accuracy: number;
}

/**
 * One line of metrics.jsonl. Sources whose rewards have parts (datasets) add `reward/<part>`: the mean of each
 * part over the step's responses that have it (`reward/math`, `reward/format/stopped`, ...), and
 * `reward/errors`: how many reward calls failed in the step (threw, non-finite, timed out; each scored 0).
 */
export interface StepMetrics {
  /** The step, 1-based. */
  readonly step: number;
  /** The active terms with their weights (`showActive`, joined by " + "). */
  readonly phase: string;
  /**
   * The index of the active phase of every `phases` node reached (tree order); it changes exactly where the
   * active phase does (BuPO: [0] in its internal phase, [1] after; [] without phases).
   */
  readonly phaseIndex: readonly number[];
  /** Mean reward over the step's responses (prompts x group). */
  readonly rewardMean: number;
  /** Their standard deviation (population). */
  readonly rewardStd: number;
  /** Fraction of responses with reward >= 1 (a correct answer). */
  readonly accuracy: number;
  /** Fraction of responses the task's `format` check accepts (0 when the task has none). */
  readonly formatRate: number;
  /** Fraction of groups whose rewards are all equal: their advantages are 0 and they teach nothing. */
  readonly zeroVarianceGroups: number;
  /** Mean response length in tokens (eos included). */
  readonly responseLength: number;
  /** Fraction of responses cut at maxNew (no stop id): left out of the loss with `maskTruncated`. */
  readonly truncated: number;
  /** The objective's value, mean over the step's updates (epochs x minibatches). */
  readonly loss: number;
  /** Global gradient norm before clipping, mean over the updates. */
  readonly gradNorm: number;
  /** Mean over the updates of the pg terms' mean clip fraction (0 without pg terms). */
  readonly clipFraction: number;
  /** Mean over the updates of the pg terms' mean approx KL(old || new) (0 without pg terms). */
  readonly approxKl: number;
  /** Every active term's weight, value and share of the loss, in the objective's order. */
  readonly terms: readonly TermMetrics[];
  /**
   * Mean entropy over response tokens of the final policy, of every layer policy (raw readout), and of every
   * policy the objective names in any phase or term (`objectivePolicies`, by `showPolicy`: attn/ffn too).
   */
  readonly entropy: {
    readonly final: number;
    readonly layers: readonly number[];
    readonly policies: { readonly [policy: string]: number };
  };
  /** Rollout accuracy per difficulty level, ascending (absent when the task's problems have none). */
  readonly accuracyByDifficulty?: readonly DifficultyAccuracy[];
  /** Seconds per phase of the step. */
  readonly time: { rollout: number; old: number; update: number; total: number };
  /** Response tokens sampled, and response tokens trained on (x epochs). */
  readonly tokens: { readonly rollout: number; readonly trained: number };
  /** One response of the step (the first correct one, else the first) with its prompt and reward. */
  readonly example: { readonly prompt: string; readonly completion: string; readonly reward: number };
  /** Per reward part (datasets): `reward/<part>`, the part's mean; `reward/errors`, the failed calls. */
  readonly [part: `reward/${string}`]: number;
}

/** Every policy an objective names, in any phase or term (KL pairs' both sides), deduplicated, in tree order. */
export const objectivePolicies = (o: Objective): InternalPolicy[] => {
  const out = new Map<string, InternalPolicy>();
  const add = (q: InternalPolicy) => out.has(showPolicy(q)) || out.set(showPolicy(q), q);
  const term = (t: Term) => {
    switch (t.kind) {
      case "pg":
      case "kl":
      case "nll":
      case "entropy":
        return add(t.policy);
      case "klPolicies":
        add(t.from);
        return add(t.to);
      default:
        return t satisfies never;
    }
  };
  const go = (obj: Objective): void => {
    for (const n of obj.terms) {
      if (n.kind === "phases") n.phases.forEach((ph) => go(ph.objective));
      else term(n);
    }
  };
  go(o);
  return [...out.values()];
};

/** The index of the active phase of every `phases` node reached at `step`, in tree order (see StepMetrics). */
export const phaseIndexAt = (o: Objective, step: number): number[] => {
  const out: number[] = [];
  const go = (obj: Objective): void => {
    for (const n of obj.terms) {
      if (n.kind !== "phases") continue;
      const i = phaseAt(n.phases, step);
      out.push(i);
      go(n.phases[i].objective);
    }
  };
  go(o);
  return out;
};

const mean = (x: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s / Math.max(1, x.length);
};

/** Host slice of sequences [from, to) of a rollout batch. */
const sliceRows = (h: RolloutHost, from: number, to: number): RolloutHost => {
  const T = h.T;
  const cut = (x: ArrayLike<number>) =>
    Float32Array.prototype.slice.call(x, from * T, to * T) as Float32Array;
  return {
    ids: h.ids.slice(from * T, to * T),
    B: to - from,
    T,
    promptLens: h.promptLens.slice(from, to),
    responseLens: h.responseLens?.slice(from, to),
    advantages: Array.prototype.slice.call(h.advantages, from, to) as number[],
    behaviour: h.behaviour ? cut(h.behaviour) : undefined,
    old: h.old ? new Map([...h.old].map(([k, v]) => [k, cut(v)])) : undefined,
    ref: h.ref ? new Map([...h.ref].map(([k, v]) => [k, cut(v)])) : undefined,
  };
};

/** Stage 1, rollout: the step's prompts and a group of responses to each from the final policy. */
const rolloutStage = async (ctx: RlContext, step: number) => {
  const { problems, prompts, options } = rolloutPlan(ctx, step);
  return { problems, roll: await generate(ctx.config, ctx.params, prompts, options) };
};

/**
 * Stage 2, score: each response's text and score from its prompt's scorer (a dataset's rewards run
 * concurrently, in their workers), whether it was cut at maxNew, and the group advantages.
 */
const scoreStage = async (ctx: RlContext, problems: readonly SourcePrompt[], roll: Rollout) => {
  const { cfg, source } = ctx;
  const G = cfg.group, T = roll.T;
  const texts = roll.promptLens.map((pl, b) => source.responseText(roll.ids, b * T + pl, (b + 1) * T));
  const scores: SourceScore[] = await Promise.all(texts.map((text, b) =>
    problems[Math.floor(b / G)].score({
      text,
      finished: roll.finished[b],
      ...(roll.stopIds[b] !== undefined ? { stopId: roll.stopIds[b] } : {}),
      tokens: roll.responseLens[b],
    })
  ));
  const rewards = scores.map((x) => x.reward);
  const formats = scores.map((x) => (x.format ? 1 : 0));
  const truncated = roll.finished.map((f) => !f);
  const adv = cfg.advantage === "grpo"
    ? grpoAdvantages(rewards, G)
    : cfg.advantage === "drgrpo"
    ? drGrpoAdvantages(rewards, G)
    : rlooAdvantages(rewards, G);
  return { texts, scores, rewards, formats, truncated, adv };
};

/**
 * The response lengths the loss sees: the rollout's, with `maskTruncated` those of responses cut at maxNew set
 * to 0 (their tokens leave the loss mask; their rewards still count in the group advantages, as in TRL).
 */
export const lossLengths = (
  responseLens: readonly number[],
  truncated: readonly boolean[],
  maskTruncated: boolean,
): number[] => responseLens.map((n, b) => (maskTruncated && truncated[b] ? 0 : n));

/** `reward/<part>` means over the responses that have the part, and `reward/errors` (none without parts). */
export const rewardPartMetrics = (scores: readonly SourceScore[]): Record<`reward/${string}`, number> => {
  const sums = new Map<string, [number, number]>();
  let errors = 0;
  for (const s of scores) {
    errors += s.errors;
    for (const [k, v] of Object.entries(s.parts)) {
      const e = sums.get(k) ?? [0, 0];
      sums.set(k, [e[0] + v, e[1] + 1]);
    }
  }
  if (sums.size === 0 && errors === 0) return {};
  const out: Record<`reward/${string}`, number> = {};
  for (const [k, [sum, n]] of sums) out[`reward/${k}`] = sum / n;
  out["reward/errors"] = errors;
  return out;
};

/** Host log-probs and entropies per position of the policies read, by key. */
type HostReads = Map<string, { logp: Float32Array; entropy: Float32Array }>;

/**
 * Stage 3, old log-probs: one forward pass and one streaming pass read the behaviour (final) policy, the
 * policies the objective's pg terms need old log-probs of, and every layer policy and every policy the objective
 * names (entropies for the logs); with KL-to-reference terms, the reference model's log-probs too. The probe
 * batch is freed however it ends.
 */
const oldStage = async (
  ctx: RlContext,
  step: number,
  host: RolloutHost,
  layers: readonly InternalPolicy[],
  named: readonly InternalPolicy[],
) => {
  const { config, params, objective } = ctx;
  const req = requiredReadouts(objective, step);
  const probe = rolloutTensors(params.backend, host);
  try {
    const reads: HostReads = await tidy(async () => {
      const r = forwardPolicies(config, params, probe.ids, probe.positions)
        .read([final, ...req.old, ...layers, ...named], probe.targets);
      const out: HostReads = new Map();
      for (const [k, v] of r) {
        out.set(k, {
          logp: (await v.logp.data()) as Float32Array,
          entropy: (await v.entropy.data()) as Float32Array,
        });
      }
      return out;
    });
    let ref: Map<string, Float32Array> | undefined;
    if (req.ref.length > 0) {
      if (!ctx.ref) {
        throw new Error("the objective has a KL-to-reference term but no reference model was loaded");
      }
      const refParams = ctx.ref;
      ref = await tidy(async () => {
        const r = forwardPolicies(config, refParams, probe.ids, probe.positions).read(req.ref, probe.targets);
        const out = new Map<string, Float32Array>();
        for (const [k, v] of r) out.set(k, (await v.logp.data()) as Float32Array);
        return out;
      });
    }
    const full: RolloutHost = {
      ...host,
      behaviour: reads.get("final")!.logp,
      old: new Map(req.old.map((q) => [showPolicy(q), reads.get(showPolicy(q))!.logp])),
      ref,
    };
    return { full, reads, mask: probe.host.mask };
  } finally {
    probe.dispose();
  }
};

/** One active term's scalars of one update (pg terms have the clip fractions and KL). */
interface TermValues<A> {
  readonly value: A;
  readonly clipFraction?: A;
  readonly dualClipFraction?: A;
  readonly approxKl?: A;
}

/** One update's scalars: as tensors on the device, then (A = number) as host values. */
interface UpdateScalars<A> {
  readonly loss: A;
  readonly norm: A;
  readonly clip: A;
  readonly kl: A;
  readonly terms: readonly TermValues<A>[];
}

/** Host values of one update's scalars. */
type UpdateValues = UpdateScalars<number>;

const TERM_FIELDS = ["value", "clipFraction", "dualClipFraction", "approxKl"] as const;

/** The tensors of one update's scalars in their fixed order (the order `readScalars` decodes). */
const scalarList = (s: UpdateScalars<Tensor>): Tensor[] => [
  s.loss,
  s.norm,
  s.clip,
  s.kl,
  ...s.terms.flatMap((t) => TERM_FIELDS.flatMap((k) => (t[k] ? [t[k]!] : []))),
];

/** Every update's scalars in ONE read-back: the scalars concatenated on the device, then decoded in order. */
const readScalars = async (scalars: readonly UpdateScalars<Tensor>[]): Promise<UpdateValues[]> => {
  const all = scalars.flatMap(scalarList);
  if (all.length === 0) return [];
  const host = await tidy(async () => await concatRows(all.map((t) => reshape(t, [1]))).data());
  let i = 0;
  const next = () => host[i++];
  return scalars.map((s) => ({
    loss: next(),
    norm: next(),
    clip: next(),
    kl: next(),
    terms: s.terms.map((t) => {
      const v: { -readonly [K in keyof TermValues<number>]?: number } = {};
      for (const k of TERM_FIELDS) if (t[k]) v[k] = next();
      return v as TermValues<number>;
    }),
  }));
};

/**
 * Stage 4, update: `cfg.epochs` passes of `cfg.minibatches` AdamW steps on the lowered objective; the scalars
 * (each update's loss, gradient norm, clip fraction and KL, and every term's metrics) are read back once, in one
 * read after the last update. Every batch and scalar is freed however it ends.
 */
const updateStage = async (ctx: RlContext, step: number, full: RolloutHost): Promise<UpdateValues[]> => {
  const { cfg, config, params, opt, objective } = ctx;
  const per = full.B / cfg.minibatches;
  const scalars: UpdateScalars<Tensor>[] = [];
  try {
    for (let e = 0; e < cfg.epochs; e++) {
      for (let m = 0; m < cfg.minibatches; m++) {
        const part = rolloutTensors(params.backend, sliceRows(full, m * per, (m + 1) * per));
        try {
          const out = tidy((): UpdateScalars<Tensor> => {
            const r = lowerStep(config, params, part, objective, step);
            const norm = optimizerStep(params, opt, r.grads);
            const terms = r.metrics.perTerm.map((t) => ({
              value: t.value,
              ...(t.clipFraction ? { clipFraction: t.clipFraction } : {}),
              ...(t.dualClipFraction ? { dualClipFraction: t.dualClipFraction } : {}),
              ...(t.approxKl ? { approxKl: t.approxKl } : {}),
            }));
            return { loss: r.loss, norm, clip: r.metrics.clipFraction, kl: r.metrics.approxKl, terms };
          });
          scalars.push(out);
        } finally {
          part.dispose();
        }
      }
    }
    return await readScalars(scalars);
  } finally {
    for (const s of scalars) for (const t of new Set(scalarList(s))) t.dispose();
  }
};

/** Throws NonFiniteError naming the first update whose loss or gradient norm is not finite. */
const checkFinite = (step: number, vals: readonly UpdateValues[]): void => {
  for (const [i, v] of vals.entries()) {
    if (!Number.isFinite(v.loss)) {
      throw new NonFiniteError({
        what: `loss (step ${step}, update ${i + 1})`,
        index: i,
        value: v.loss,
        message: `step ${step}: the loss of update ${
          i + 1
        } is ${v.loss}; stopping (the last checkpoint is intact)`,
      });
    }
    if (!Number.isFinite(v.norm)) {
      throw new NonFiniteError({
        what: `gradient norm (step ${step}, update ${i + 1})`,
        index: i,
        value: v.norm,
        message: `step ${step}: the gradient norm of update ${
          i + 1
        } is ${v.norm}; the update was refused and the run stops (the last checkpoint is intact)`,
      });
    }
  }
};

/** Stage 5, metrics: the step's line of metrics.jsonl from what the stages returned. */
const stepMetrics = (
  ctx: RlContext,
  step: number,
  r: {
    problems: readonly SourcePrompt[];
    roll: Rollout;
    score: Awaited<ReturnType<typeof scoreStage>>;
    /** Response tokens in the loss (lossLengths), summed. */
    lossTokens: number;
    old: Awaited<ReturnType<typeof oldStage>>;
    layers: readonly InternalPolicy[];
    named: readonly InternalPolicy[];
    vals: readonly UpdateValues[];
    /** performance.now() at the start and after the rollout, old log-prob and update stages. */
    t: readonly [number, number, number, number];
  },
): StepMetrics => {
  const { cfg, objective } = ctx;
  const { problems, roll, vals, layers, named, t: [t0, t1, t2, t3] } = r;
  const { texts, rewards, formats, adv, scores, truncated } = r.score;
  const { reads, mask } = r.old;
  const maskedMean = (x: ArrayLike<number>) => {
    let s = 0, n = 0;
    for (let i = 0; i < mask.length; i++) if (mask[i] > 0) (s += x[i] * mask[i], n += mask[i]);
    return n > 0 ? s / n : NaN;
  };
  const G = cfg.group;
  const rm = mean(rewards);
  const best = scores.findIndex((x) => x.correct);
  const ex = best >= 0 ? best : 0;
  const active = activeAt(objective, step);
  const termMean = (i: number, k: (typeof TERM_FIELDS)[number]) =>
    vals[0]?.terms[i]?.[k] === undefined ? undefined : mean(vals.map((v) => v.terms[i][k]!));
  const terms = active.map((a, i): TermMetrics => {
    const value = termMean(i, "value")!;
    const opt = (k: "clipFraction" | "dualClipFraction" | "approxKl") => {
      const v = termMean(i, k);
      return v === undefined ? {} : { [k]: v };
    };
    return {
      term: showTerm(a.term),
      weight: a.weight,
      value,
      loss: a.weight * value,
      ...opt("clipFraction"),
      ...opt("dualClipFraction"),
      ...opt("approxKl"),
    };
  });
  const levelOf = (b: number) => problems[Math.floor(b / G)].difficulty;
  const levels = [...new Set(rewards.flatMap((_, b) => levelOf(b) ?? []))].sort((x, y) => x - y);
  const byLevel = levels.map((level): DifficultyAccuracy => {
    const hits = scores.flatMap((x, b) => (levelOf(b) === level ? [x.correct ? 1 : 0] : []));
    return { difficulty: level, responses: hits.length, accuracy: mean(hits) };
  });
  return {
    step,
    phase: active.map(showActive).join(" + "),
    phaseIndex: phaseIndexAt(objective, step),
    rewardMean: rm,
    rewardStd: Math.sqrt(mean(rewards.map((r) => (r - rm) ** 2))),
    accuracy: mean(scores.map((x) => (x.correct ? 1 : 0))),
    formatRate: mean(formats),
    zeroVarianceGroups: adv.zeroVarianceFraction,
    responseLength: mean(roll.responseLens),
    truncated: mean(truncated.map((x) => (x ? 1 : 0))),
    loss: mean(vals.map((v) => v.loss)),
    gradNorm: mean(vals.map((v) => v.norm)),
    clipFraction: mean(vals.map((v) => v.clip)),
    approxKl: mean(vals.map((v) => v.kl)),
    terms,
    entropy: {
      final: maskedMean(reads.get("final")!.entropy),
      layers: layers.map((q) => maskedMean(reads.get(showPolicy(q))!.entropy)),
      policies: Object.fromEntries(
        named.map((q) => [showPolicy(q), maskedMean(reads.get(showPolicy(q))!.entropy)]),
      ),
    },
    ...(byLevel.length ? { accuracyByDifficulty: byLevel } : {}),
    time: {
      rollout: (t1 - t0) / 1000,
      old: (t2 - t1) / 1000,
      update: (t3 - t2) / 1000,
      total: (t3 - t0) / 1000,
    },
    tokens: {
      rollout: roll.responseLens.reduce((a, b) => a + b, 0),
      trained: r.lossTokens * cfg.epochs,
    },
    example: { prompt: problems[Math.floor(ex / G)].text, completion: texts[ex], reward: rewards[ex] },
    ...rewardPartMetrics(scores),
  };
};

/**
 * Run RL step `step` (1-based): rollout, score, old log-probs, update, metrics. Throws NonFiniteError (nothing is
 * checkpointed) on a non-finite loss or gradient. Whatever a stage allocates it frees, however it ends.
 */
export const rlStep = async (ctx: RlContext, step: number): Promise<StepMetrics> => {
  const t0 = performance.now();
  const { problems, roll } = await rolloutStage(ctx, step);
  const score = await scoreStage(ctx, problems, roll);
  const t1 = performance.now();
  const layers = Array.from({ length: ctx.config.numLayers }, (_, l) => layer(l));
  const host: RolloutHost = {
    ids: roll.ids,
    B: ctx.cfg.prompts * ctx.cfg.group,
    T: roll.T,
    promptLens: roll.promptLens,
    responseLens: roll.responseLens,
    advantages: score.adv.advantages,
  };
  const named = objectivePolicies(ctx.objective);
  // The entropies of the logs cover every response token; the loss only the tokens lossLengths keeps.
  const old = await oldStage(ctx, step, host, layers, named);
  const lens = lossLengths(roll.responseLens, score.truncated, ctx.cfg.maskTruncated === true);
  const t2 = performance.now();
  const vals = await updateStage(ctx, step, { ...old.full, responseLens: lens });
  const t3 = performance.now();
  checkFinite(step, vals);
  const lossTokens = lens.reduce((a, b) => a + b, 0);
  return stepMetrics(ctx, step, {
    problems,
    roll,
    score,
    lossTokens,
    old,
    layers,
    named,
    vals,
    t: [t0, t1, t2, t3],
  });
};
