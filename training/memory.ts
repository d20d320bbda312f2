/**
 * The memory a run needs, estimated from its flags and the model config before step 1, and checked against
 * what the machine has: each stage's device memory (rollouts with their KV cache and prefill activations, the
 * old-log-prob pass, the minibatch update with its backward, evaluation) on top of the parameters, AdamW
 * moments and reference model; the largest tensor each stage binds whole against the device's binding and
 * buffer limits; host memory (typed arrays, the JavaScript heap, a checkpoint's host copies) against free memory.
 * A run that would not fit is refused with an error naming the flag, the estimate and the limit, and the
 * largest value of that flag that fits.
 *
 * The model of each stage counts the tensors that are alive together at its peak, in 4-byte floats per token
 * position (`forwardFloats`, `updateFloats`); tests/memory_test.ts checks the estimates against the measured
 * `backend.memory().peak` of tiny runs (within 25% either way). Evaluation is streamed in batches of
 * `EVAL_BATCH` sequences, so its memory does not depend on `--eval-problems`.
 */
import v8 from "node:v8";
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import { type Backend, limitsOf } from "../engine/backend.ts";
import { type DecoderConfig, paramSpecs } from "../policies/config.ts";
import type { InternalPolicy } from "../policies/internal.ts";
import { showPolicy } from "../policies/internal.ts";
import type { Objective } from "../objectives/objective.ts";
import { allTerms } from "../objectives/validate.ts";
import { DEFAULTS, flagOf, type TrainConfig } from "./config.ts";
import { EVAL_BATCH } from "./evaluate.ts";
import type { TaskSource } from "./source.ts";

const F32 = 4;

/**
 * Gradient floats the backward keeps per forward float of each layer it passes through (measured: 1.24-1.25 on the
 * shipped tiny model, for GRPO on the final policy and for BuPO's layer-2 phase; rounded up).
 */
const GRAD_PER_LAYER_FLOAT = 1.3;

/** Everything the estimate depends on: the model config, the flags' sizes and what the objective reads. */
export interface MemoryShape {
  readonly config: DecoderConfig;
  readonly prompts: number;
  readonly group: number;
  readonly maxNew: number;
  readonly minibatches: number;
  /** Sequences per evaluation (problems x k); evaluation generates at most EVAL_BATCH of them at a time. */
  readonly evalSequences: number;
  /** The longest prompt in tokens (bos included). */
  readonly promptTokens: number;
  /** Policies the old-log-prob pass reads: final, the pg terms' policies and every layer (distinct keys). */
  readonly oldPolicies: number;
  /** Policies the update differentiates (logp and entropy keys; each klPolicies pair counts two). */
  readonly updatePolicies: number;
  /** Layers the backward passes through: the deepest policy the update reads (final: all). */
  readonly updateDepth: number;
  /** pg policies whose old log-probs travel with each minibatch. */
  readonly oldInputs: number;
  /** Whether a frozen reference model is on the device (KL-to-reference terms). */
  readonly reference: boolean;
}

/** A named amount of memory. */
export interface Part {
  readonly what: string;
  readonly bytes: number;
}

/** One stage of a step: its device memory beyond the persistent state, its host memory, its largest tensor. */
export interface StageEstimate {
  readonly stage: "rollout" | "old" | "update" | "eval" | "checkpoint";
  /** In words, for messages: "a step's rollouts". */
  readonly words: string;
  /** Sequences the stage handles at once (stages of equal counts share the GPU buffer pool's size classes). */
  readonly sequences: number;
  readonly device: readonly Part[];
  /** Host typed arrays. */
  readonly host: number;
  /** JavaScript heap objects (arrays, strings). */
  readonly heap: number;
  /** The largest tensor the stage binds whole in one kernel (the device's binding limit applies to it). */
  readonly largest: Part;
}

/** The estimate of a run. */
export interface MemoryEstimate {
  /** Parameters, AdamW moments and the reference model: on the device for the whole run. */
  readonly persistent: readonly Part[];
  readonly stages: readonly StageEstimate[];
  /** Persistent plus the largest stage: what `backend.memory().peak` measures. */
  readonly devicePeak: number;
  /**
   * Persistent plus, per distinct sequence count, its largest stage: what the GPU buffer pool may hold (it keeps
   * freed buffers for reuse by size).
   */
  readonly deviceFootprint: number;
  readonly hostPeak: number;
  readonly heapPeak: number;
}

const sum = (xs: readonly Part[]) => xs.reduce((a, p) => a + p.bytes, 0);

/** Floats per layer per token position of a forward pass: every intermediate of a block (taps included). */
export const layerFloats = (c: DecoderConfig): number => {
  const d = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKvHeads * c.headDim;
  const norm = c.qkNorm ? 1 : 0;
  // attnIn, o_proj, mid, ffnIn, ffn, out: 6 d; q, k: linear, [norm], rope; attention output (qd) and v (kvd);
  // bias adds; gate, up and the gated product; the attention's log-sum-exp per head.
  return 6 * d + (qd + kvd) * (3 + norm) + (c.qkvBias ? qd + 2 * kvd : 0) + 3 * c.intermediateSize +
    c.numHeads;
};

/** Floats per token position of a whole forward pass with its taps (embedding, every layer, final norm). */
export const forwardFloats = (c: DecoderConfig): number => 2 * c.hiddenSize + c.numLayers * layerFloats(c);

/** Vocabulary ids per chunk of a streaming readout over `rows` rows (policies/readout.ts's choice). */
const readoutChunk = (c: DecoderConfig, rows: number, binding: number): number => {
  const want = 8192;
  const per = Number.isFinite(binding)
    ? Math.max(64, Math.floor(binding / (F32 * Math.max(c.hiddenSize, rows)) / 64) * 64)
    : Infinity;
  return Math.min(c.vocabSize, want, per);
};

/** The number of parameters of a config. */
export const parameterCount = (c: DecoderConfig): number =>
  paramSpecs(c).reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);

/** The largest per-position tensor of a forward pass, in floats per position. */
const widest = (c: DecoderConfig) =>
  Math.max(c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize, c.numKvHeads * c.headDim);

/**
 * The estimate of a run of `s` on a backend whose storage bindings hold `binding` bytes (Infinity: no limit).
 * Pure.
 */
export const estimateMemory = (s: MemoryShape, binding = Infinity): MemoryEstimate => {
  const c = s.config;
  const d = c.hiddenSize, kvd = c.numKvHeads * c.headDim, L = c.numLayers, V = c.vocabSize;
  const T = s.promptTokens + s.maxNew;
  const B = s.prompts * s.group;
  const P = parameterCount(c);
  const fwd = forwardFloats(c);
  const persistent: Part[] = [
    { what: "parameters", bytes: F32 * P },
    { what: "AdamW moments", bytes: 2 * F32 * P },
    ...(s.reference ? [{ what: "reference model", bytes: F32 * P }] : []),
  ];
  const rolloutOf = (
    stage: "rollout" | "eval",
    words: string,
    n: number,
  ): StageEstimate => ({
    stage,
    words,
    sequences: n,
    device: [
      { what: "prefill activations", bytes: F32 * n * T * fwd },
      { what: "KV cache", bytes: F32 * 2 * L * n * T * kvd },
      { what: "sampling logits", bytes: F32 * 2 * n * V },
      { what: "ids and flags", bytes: F32 * (2 * n * T + 4 * n) },
    ],
    host: F32 * 3 * n * T,
    // a prompt's id array, the response text, lengths, rewards and advantages per sequence
    heap: n * (160 + 8 * s.promptTokens + 2 * s.maxNew),
    largest: n * T * widest(c) >= n * V
      ? { what: `a prefill activation (${n} x ${T} x ${widest(c)} floats)`, bytes: F32 * n * T * widest(c) }
      : { what: `the sampling logits (${n} x ${V} floats)`, bytes: F32 * n * V },
  });
  const readout = (rows: number) => {
    const C = readoutChunk(c, rows, binding);
    return { C, floats: rows * (d + C + 6) };
  };
  const rollout = rolloutOf("rollout", "a step's rollouts", B);
  // A pass over `seqs` sequences that reads `policies` policies: its forward activations, the parts `more` names
  // (given the readout's chunk width and floats), and its largest single binding: the stacked readout rows or a
  // forward activation.
  const pass = (
    stage: StageEstimate["stage"],
    words: string,
    seqs: number,
    policies: number,
    more: (read: { C: number; floats: number }) => Part[],
    host: number,
  ): StageEstimate => {
    const rows = policies * seqs * T, read = readout(rows), width = Math.max(d, read.C);
    return {
      stage,
      words,
      sequences: seqs,
      device: [{ what: "forward activations", bytes: F32 * seqs * T * fwd }, ...more(read)],
      host,
      heap: 0,
      largest: rows * width >= seqs * T * widest(c)
        ? {
          what: `the stacked readout rows (${policies} policies x ${seqs * T} positions x ${width} floats)`,
          bytes: F32 * rows * width,
        }
        : {
          what: `a forward activation (${seqs} x ${T} x ${widest(c)} floats)`,
          bytes: F32 * seqs * T * widest(c),
        },
    };
  };
  const old = pass("old", "a step's old log-prob pass", B, s.oldPolicies, (read) => [
    { what: `readouts of ${s.oldPolicies} policies`, bytes: F32 * read.floats },
    { what: "batch", bytes: F32 * 6 * B * T },
  ], F32 * B * T * (2 * s.oldPolicies + 3 * (1 + s.oldInputs)) + 8 * 6 * B * T);
  const Bm = B / s.minibatches; // sequences per minibatch
  const grads = GRAD_PER_LAYER_FLOAT * s.updateDepth * layerFloats(c) + (s.updateDepth === L ? 2 * d : 0);
  const update = pass("update", "a minibatch update (forward and backward)", Bm, s.updatePolicies, (read) => [
    { what: "backward gradients", bytes: F32 * Bm * T * grads },
    { what: `readouts of ${s.updatePolicies} policies and their gradients`, bytes: 2 * F32 * read.floats },
    { what: "parameter gradients", bytes: F32 * P },
    { what: "batch", bytes: F32 * (8 + s.oldInputs) * Bm * T },
  ], F32 * Bm * T * (2 + s.oldInputs) + 8 * (6 + s.oldInputs) * Bm * T);
  const evalN = Math.min(EVAL_BATCH, s.evalSequences);
  const evaluation = rolloutOf("eval", `an evaluation batch (${evalN} sequences)`, evalN);
  const checkpoint: StageEstimate = {
    stage: "checkpoint",
    words: "a checkpoint (host copies of the parameters and moments, and their files)",
    sequences: 0,
    device: [],
    host: F32 * 6 * P,
    heap: 0,
    largest: { what: "a parameter segment read back", bytes: 0 },
  };
  const stages = [rollout, old, update, evaluation, checkpoint];
  const base = sum(persistent);
  const bySequences = new Map<number, number>();
  for (const st of stages) {
    if (st.device.length === 0) continue;
    bySequences.set(st.sequences, Math.max(bySequences.get(st.sequences) ?? 0, sum(st.device)));
  }
  return {
    persistent,
    stages,
    devicePeak: base + Math.max(...stages.map((st) => sum(st.device))),
    deviceFootprint: base + [...bySequences.values()].reduce((a, b) => a + b, 0),
    hostPeak: Math.max(...stages.map((st) => st.host)),
    heapPeak: Math.max(...stages.map((st) => st.heap)),
  };
};

// ---- limits -------------------------------------------------------------------------------------------------

/** What the machine offers. */
export interface MemoryLimits {
  /** Largest storage binding and buffer (Infinity on the CPU backend). */
  readonly binding: number;
  readonly buffer: number;
  /**
   * Device memory the run may fill: a number for a GPU with a budget (BUPO_DEVICE_MEMORY), "host" when device
   * memory is host memory (llvmpipe, the CPU backend), null when unknown (a GPU without a budget).
   */
  readonly device: number | "host" | null;
  /** Free host memory (MemAvailable). */
  readonly host: number;
  /** Free space of the JavaScript heap (V8's heap limit less what is in use). */
  readonly heap: number;
  /** Whether freed device buffers stay in a pool for reuse (the GPU backend): the footprint, not the peak, counts. */
  readonly pool: boolean;
  /** How `device` was found, for messages. */
  readonly deviceWords: string;
}

/** Bytes in a size such as `24G`, `512MiB`, `1e9`; null when it does not parse. */
export const parseBytes = (s: string): number | null => {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(s);
  if (!m) return null;
  const scale = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase()]!;
  return Math.floor(Number(m[1]) * scale);
};

const env = (k: string): string | undefined => {
  try {
    return Deno.env.get(k);
  } catch {
    return undefined;
  }
};

/**
 * The limits of `backend` on this machine: its binding and buffer limits, free host memory
 * (Deno.systemMemoryInfo's `available`, MemAvailable on Linux; unlimited without --allow-sys), the heap's free
 * space from V8, and a device budget: BUPO_DEVICE_MEMORY (e.g. `80G`) when set, host memory for llvmpipe and
 * the CPU backend, none otherwise (WebGPU does not tell a GPU's memory size).
 */
export const memoryLimits = (backend: Backend): MemoryLimits => {
  const l = limitsOf(backend);
  let host = Infinity; // unknown without the permission to ask
  try {
    host = Deno.systemMemoryInfo().available;
  } catch { /* no --allow-sys */ }
  const h = v8.getHeapStatistics();
  const software = backend.kind === "cpu" ||
    (backend as { target?: { software?: boolean } }).target?.software === true;
  const budget = env("BUPO_DEVICE_MEMORY");
  const parsed = budget === undefined ? null : parseBytes(budget);
  return {
    binding: l.maxStorageBufferBindingSize,
    buffer: l.maxBufferSize,
    device: parsed !== null ? parsed : software ? "host" : null,
    host,
    heap: h.heap_size_limit - h.used_heap_size,
    pool: backend.kind === "gpu",
    deviceWords: parsed !== null
      ? "the device budget BUPO_DEVICE_MEMORY"
      : backend.kind === "cpu"
      ? "free host memory (the CPU backend computes in host memory)"
      : "free host memory (a software adapter's device memory is host memory)",
  };
};

// ---- the check ------------------------------------------------------------------------------------------

/** What does not fit: the stage (null: the persistent state), the amount and the limit, in words. */
export interface Shortfall {
  readonly stage: StageEstimate["stage"] | null;
  readonly need: number;
  readonly limit: number;
  /** "a step's rollouts need about 3.1 GiB of device memory (KV cache 1.0 GiB, ...), more than ..." */
  readonly message: string;
}

/** Bytes for people: `1.5 GiB`. */
export const showBytes = (n: number): string => {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0, x = n;
  while (x >= 1024 && i < units.length - 1) (x /= 1024, i++);
  return i === 0 ? `${Math.round(x)} bytes` : `${x.toFixed(1)} ${units[i]}`;
};

const top = (parts: readonly Part[]) =>
  [...parts].filter((p) => p.bytes > 0).sort((a, b) => b.bytes - a.bytes).slice(0, 3)
    .map((p) => `${p.what} ${showBytes(p.bytes)}`).join(", ");

/** The first thing of `e` that does not fit `lim`, or null. Pure. */
export const shortfall = (e: MemoryEstimate, lim: MemoryLimits): Shortfall | null => {
  const bind = Math.min(lim.binding, lim.buffer);
  for (const st of e.stages) {
    if (st.largest.bytes > bind) {
      const which = lim.binding <= lim.buffer ? "maxStorageBufferBindingSize" : "maxBufferSize";
      return {
        stage: st.stage,
        need: st.largest.bytes,
        limit: bind,
        message: `${st.words} would bind ${st.largest.what} in one buffer: ${
          showBytes(st.largest.bytes)
        }, more than the device's ${which}, ${showBytes(bind)}`,
      };
    }
  }
  const base = sum(e.persistent);
  const shared = lim.device === "host";
  const deviceLimit = typeof lim.device === "number" ? lim.device : shared ? lim.host : null;
  if (deviceLimit !== null) {
    const hostShare = shared ? e.hostPeak : 0;
    if (base > deviceLimit) {
      return {
        stage: null,
        need: base,
        limit: deviceLimit,
        message: `the model's state would need about ${showBytes(base)} (${
          top(e.persistent)
        }), more than ${lim.deviceWords}, ${showBytes(deviceLimit)}`,
      };
    }
    const worst = [...e.stages].sort((a, b) => sum(b.device) - sum(a.device))[0];
    const need = (lim.pool ? e.deviceFootprint : e.devicePeak) + hostShare;
    if (need > deviceLimit) {
      const with_ = [
        `the model's state (${showBytes(base)})`,
        ...(lim.pool ? ["the buffers the GPU pool keeps for the other stages"] : []),
        ...(shared ? ["host memory"] : []),
      ];
      return {
        stage: worst.stage,
        need,
        limit: deviceLimit,
        message: `${worst.words} would need about ${showBytes(sum(worst.device))} of device memory (${
          top(worst.device)
        }); with ${with_.join(", ")}: about ${showBytes(need)}, more than ${lim.deviceWords}, ${
          showBytes(deviceLimit)
        }`,
      };
    }
  }
  return (shared ? null : overLimit(e, "host", lim.host, "host memory", "free")) ??
    overLimit(e, "heap", lim.heap, "JavaScript heap", "left below V8's heap limit");
};

/** The stage that needs the most host memory or heap (`field`), as a shortfall where it needs more than `limit`. */
const overLimit = (
  e: MemoryEstimate,
  field: "host" | "heap",
  limit: number,
  what: string,
  left: string,
): Shortfall | null => {
  const worst = [...e.stages].sort((a, b) => b[field] - a[field])[0];
  if (worst[field] <= limit) return null;
  return {
    stage: worst.stage,
    need: worst[field],
    limit,
    message: `${worst.words} would need about ${showBytes(worst[field])} of ${what}, more than the ${
      showBytes(limit)
    } ${left}`,
  };
};

// ---- from a run's settings ----------------------------------------------------------------------------------

/** The depth (layers the backward passes through) of reading a policy. */
const depthOf = (p: InternalPolicy, L: number) => (p.kind === "final" ? L : Math.min(L, p.layer + 1));

/** What an objective reads, over all its phases and terms (an upper bound for every step). */
export const objectiveReads = (objective: Objective, numLayers: number) => {
  const old = new Map<string, InternalPolicy>(), up = new Map<string, InternalPolicy>();
  let pairs = 0, depth = 0;
  const pgs = new Set<string>();
  for (const t of allTerms(objective)) {
    const ps = t.kind === "klPolicies" ? [t.from, t.to] : [t.policy];
    if (t.kind === "klPolicies") pairs++;
    else up.set(showPolicy(t.policy), t.policy);
    if (t.kind === "pg") (old.set(showPolicy(t.policy), t.policy), pgs.add(showPolicy(t.policy)));
    for (const p of ps) depth = Math.max(depth, depthOf(p, numLayers));
  }
  const oldKeys = new Set([
    "final",
    ...old.keys(),
    ...Array.from({ length: numLayers }, (_, l) => `layer(${l})`),
  ]);
  return {
    oldPolicies: oldKeys.size,
    updatePolicies: Math.max(1, up.size + 2 * pairs),
    updateDepth: Math.max(1, depth),
    oldInputs: pgs.size,
  };
};

/**
 * The longest prompt of a source in tokens: its declared bound (a task's maxPromptChars, a dataset's rows),
 * else the longest of a step's and an eval batch's prompts.
 */
export const promptTokens = (source: TaskSource, cfg: TrainConfig): number => {
  if (source.maxPromptTokens !== undefined) return source.maxPromptTokens;
  const seen = [
    ...source.train(1, Math.min(cfg.prompts, 256)),
    ...source.eval(0, Math.min(cfg.evalProblems, 256, source.evalSize)),
  ];
  return Math.max(1, ...seen.map((p) => p.ids.length));
};

/** What the memory check of a run reads. */
export interface RunMemoryInput {
  readonly cfg: TrainConfig;
  readonly config: DecoderConfig;
  readonly objective: Objective;
  /** Where the prompts come from (their length in tokens). */
  readonly source: TaskSource;
  /** Whether a reference model will be loaded. */
  readonly reference: boolean;
  /** The settings given explicitly (a default is named as one in messages). */
  readonly explicit?: Partial<TrainConfig>;
}

type SizeFlag = "group" | "prompts" | "maxNew" | "minibatches";

/** The divisors of n, ascending. */
const divisors = (n: number): number[] => {
  const lo: number[] = [], hi: number[] = [];
  for (let d = 1; d * d <= n; d++) {
    if (n % d !== 0) continue;
    lo.push(d);
    if (d * d !== n) hi.unshift(n / d);
  }
  return [...lo, ...hi];
};

/** The memory shape of a run's settings. */
export const memoryShape = (
  cfg: Pick<TrainConfig, "prompts" | "group" | "maxNew" | "minibatches" | "evalProblems" | "evalK">,
  config: DecoderConfig,
  reads: ReturnType<typeof objectiveReads>,
  prompt: number,
  reference: boolean,
): MemoryShape => ({
  config,
  prompts: cfg.prompts,
  group: cfg.group,
  maxNew: cfg.maxNew,
  minibatches: cfg.minibatches,
  evalSequences: cfg.evalProblems * cfg.evalK,
  promptTokens: prompt,
  ...reads,
  reference,
});

/**
 * The memory problem of a run, as a ConfigError naming the flag to change (the size flag furthest above its
 * default among those the stage depends on, or --model for the model's own state), the estimate and the
 * limit, and the largest value of that flag that fits (the smallest --minibatches, for an update); null when
 * it fits. Pure given the limits.
 */
export const memoryProblem = (input: RunMemoryInput, lim: MemoryLimits): ConfigError | null => {
  const { cfg, config } = input;
  const reads = objectiveReads(input.objective, config.numLayers);
  const prompt = promptTokens(input.source, cfg);
  const shapeWith = (over: Partial<TrainConfig>) =>
    memoryShape({ ...cfg, ...over }, config, reads, prompt, input.reference);
  const fits = (over: Partial<TrainConfig>) =>
    shortfall(estimateMemory(shapeWith(over), lim.binding), lim) === null;
  const s = shortfall(estimateMemory(shapeWith({}), lim.binding), lim);
  if (s === null) return null;
  const explicit = input.explicit ?? {};
  if (s.stage === null || s.stage === "checkpoint") {
    return new ConfigError({
      source: "flags",
      field: "--model",
      message: `--model ${cfg.model}: ${s.message}${
        input.reference ? " (the reference model comes with --kl or a KL term)" : ""
      }`,
    });
  }
  const candidates: SizeFlag[] = s.stage === "eval" ? ["maxNew"] : ["group", "prompts", "maxNew"];
  const flag = candidates.reduce((a, b) => (cfg[b] / DEFAULTS[b] > cfg[a] / DEFAULTS[a] ? b : a));
  const min = flag === "group" ? 2 : 1;
  const divides = (v: number) =>
    flag === "maxNew" || ((flag === "group" ? cfg.prompts * v : v * cfg.group) % cfg.minibatches === 0);
  // Largest value below the current one that fits (fits is monotone in each size); then the nearest that keeps
  // --minibatches a divisor of prompts x group.
  let lo = min - 1, hi = cfg[flag];
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits({ [flag]: mid })) lo = mid;
    else hi = mid;
  }
  while (lo >= min && !divides(lo)) lo--;
  const name = flagOf(flag);
  const given = flag in explicit ? "" : " (the default)";
  const advice = lo >= min
    ? `the largest ${name} that fits is ${lo}`
    : `no ${name} fits (even ${min}); lower the other sizes or choose a smaller model`;
  let also = "";
  if (s.stage === "update") {
    const m = divisors(cfg.prompts * cfg.group).find((m) => m > cfg.minibatches && fits({ minibatches: m }));
    if (m !== undefined) also = `, or raise --minibatches to ${m}`;
  }
  return new ConfigError({
    source: "flags",
    field: name,
    message: `${name} ${cfg[flag]}${given}: ${s.message}; ${advice}${also}`,
  });
};

/** Refuse a run whose estimated memory does not fit this machine (before anything is allocated for it). */
export const checkTrainingMemory = (
  backend: Backend,
  input: RunMemoryInput,
): Effect.Effect<void, ConfigError> =>
  Effect.suspend(() => {
    const e = memoryProblem(input, memoryLimits(backend));
    return e ? Effect.fail(e) : Effect.void;
  });

/** The estimate of a run's settings (for reports and tests). */
export const estimateRun = (input: RunMemoryInput, binding = Infinity): MemoryEstimate =>
  estimateMemory(
    memoryShape(
      input.cfg,
      input.config,
      objectiveReads(input.objective, input.config.numLayers),
      promptTokens(input.source, input.cfg),
      input.reference,
    ),
    binding,
  );
