/**
 * Task sources: where an RL run's prompts come from and how its responses are scored, behind one interface.
 * Two kinds implement it: a Task (embedded or a module) over its char tokenizer (`taskSource`), and a prompt
 * dataset over the model folder's own tokenizer, chat template, stop ids and rewards (`datasetSource`).
 * rlStep, evaluate, the boundary analysis and runTraining see only the TaskSource; `openSource` builds the one
 * a run's config names, as a resource of the run's scope (a dataset's reward workers stop with it).
 */
import { Effect, type Scope } from "effect";
import { ConfigError, type FileFormatError } from "../core/errors.ts";
import type { GenerateOptions } from "../policies/generate.ts";
import { parseTemplateKwargs } from "../formats/chat.ts";
import { makeSampler, readDataset, type RowError } from "../formats/dataset.ts";
import { type PreparedRow, prepareRows, type PromptSetup, readPromptSetup } from "../formats/generation.ts";
import { resolveRewards, type RewardSet } from "../formats/rewards.ts";
import { resolveTask } from "../formats/task.ts";
import { CharTokenizer, readTokenizerDir } from "../formats/tokenizer.ts";
import { extractAnswer } from "../tasks/math_grade.ts";
import { EMBEDDED_TASKS, isEmbeddedTask } from "../tasks/index.ts";
import { drawProblems, outsideAlphabet, type Problem, type Task } from "../tasks/task.ts";
import { DEFAULT_DATA_REWARD, DEFAULT_REWARD_TIMEOUT_S, type TrainConfig } from "./config.ts";
import { promptIds, responseText, stopId } from "./data.ts";

/** One response as the sampler ended it. */
export interface SourceResponse {
  /** The response's text (tasks: up to eos, the stop character kept; datasets: before the stop id). */
  readonly text: string;
  /** It ended with a stop id, rather than being cut at the length limit. */
  readonly finished: boolean;
  /** The stop id it ended with, when finished. */
  readonly stopId?: number;
  /** Response tokens, the stop id included. */
  readonly tokens: number;
}

/** A response's score. */
export interface SourceScore {
  /** The reward the advantages are computed from. */
  readonly reward: number;
  /**
   * Counts as correct (accuracy, pass@k, greedy): tasks, a reward of at least 1; datasets, the first reward of
   * `--reward` (math by default) scoring 1 unweighted.
   */
  readonly correct: boolean;
  /** Well formed (formatRate): the task's `format`; datasets, ended with a stop id and holds an answer. */
  readonly format: boolean;
  /** Named parts, logged as `reward/<part>` (datasets: each reward's score and its parts); tasks: none. */
  readonly parts: Readonly<Record<string, number>>;
  /** Rewards that failed on this response (threw, non-finite, timed out): `reward/errors`. */
  readonly errors: number;
}

/** One prompt of a source: its ids as the model sees them, what logs show of it, and its scorer. */
export interface SourcePrompt {
  /** Identifies the draw: the task's problem id, or `<file>:<row>`. */
  readonly id: string;
  /** The prompt's text as the model sees it (a dataset's: the chat template applied). */
  readonly text: string;
  /** Its ids (at least one). */
  readonly ids: readonly number[];
  /** The reference answer (samples.jsonl). */
  readonly answer: string;
  /** The task's difficulty level, where it defines one (accuracy and evaluation per level). */
  readonly difficulty?: number;
  /** verl's data_source, where the row has one (evaluation per source). */
  readonly dataSource?: string;
  /** Score a response to this prompt. */
  score(r: SourceResponse): SourceScore | Promise<SourceScore>;
}

/**
 * The tokenizer a checkpoint carries, so that it loads as a model folder by itself: a char tokenizer (written
 * as its tokenizer.json), or the files of a model folder's tokenizer to copy (those that exist).
 */
export type CheckpointTokenizer = CharTokenizer | { readonly dir: string; readonly files: readonly string[] };

/** Where a run's prompts come from and how its responses are scored. */
export interface TaskSource {
  /** For logs: `task arith`, `data train.parquet (7,473 rows)`. */
  readonly name: string;
  /** The ids that end a response, eos first (generation stops at any of them). */
  readonly stops: readonly number[];
  /** The padding id. */
  readonly pad: number;
  /** Ids the tokenizer has, [0, vocab): nothing past them is sampled (the model may have more rows). */
  readonly vocab: number;
  /** The `count` prompts of RL step `step` (1-based): a pure function of (step, count), so resumes match. */
  train(step: number, count: number): SourcePrompt[];
  /**
   * The most tokens of any prompt, where known without drawing them (a task's maxPromptChars plus bos, a
   * dataset's longest row); absent: the memory estimate measures a step's and an eval batch's prompts.
   */
  readonly maxPromptTokens?: number;
  /** How many held-out prompts there are (Infinity: as many as asked; 0: the source is not evaluated). */
  readonly evalSize: number;
  /**
   * Held-out prompts `first` .. `first + count - 1` (within evalSize), the same at every evaluation; a range, so
   * that evaluation can stream them.
   */
  eval(first: number, count: number): SourcePrompt[];
  /** The text of the response written in ids [from, to) of a rollout row. */
  responseText(ids: ArrayLike<number>, from: number, to: number): string;
  /** The tokenizer checkpoints carry. */
  readonly tokenizer: CheckpointTokenizer;
  /** Stop what the source holds (reward workers). */
  close(): void;
}

/** The sampler's stop, pad and vocabulary options of a source. */
export const generateOptionsOf = (
  s: TaskSource,
): Pick<GenerateOptions, "eos" | "stops" | "pad" | "vocab"> => ({
  eos: s.stops[0],
  ...(s.stops.length > 1 ? { stops: s.stops.slice(1) } : {}),
  pad: s.pad,
  vocab: s.vocab,
});

// ---- tasks ------------------------------------------------------------------------------------------------

/**
 * A Task over its char tokenizer: step s draws train problems (s - 1) * count .. s * count - 1 under `seed`,
 * evaluation the first eval problems; prompts are bos + the prompt's characters; a response stops at eos or
 * the task's stop character; the reward is `task.reward`, correct at >= 1, `task.format` the format flag.
 */
export const taskSource = (tok: CharTokenizer, task: Task, seed: number): TaskSource => {
  const stop = stopId(tok, task);
  const prompt = (q: Problem): SourcePrompt => ({
    id: q.id,
    text: q.prompt,
    ids: promptIds(tok, q.prompt),
    answer: q.answer,
    ...(q.difficulty !== undefined ? { difficulty: q.difficulty } : {}),
    score: (r) => {
      const reward = task.reward(q, r.text);
      return {
        reward,
        correct: reward >= 1,
        format: task.format?.(q, r.text) ?? false,
        parts: {},
        errors: 0,
      };
    },
  });
  return {
    name: `task ${task.name}`,
    stops: stop === undefined ? [tok.eos] : [tok.eos, stop],
    pad: tok.pad,
    vocab: tok.vocabSize,
    train: (step, count) => drawProblems(task, "train", seed, (step - 1) * count, count).map(prompt),
    ...(task.maxPromptChars !== undefined
      ? { maxPromptTokens: (tok.bos === undefined ? 0 : 1) + task.maxPromptChars }
      : {}),
    evalSize: Infinity,
    eval: (first, count) => drawProblems(task, "eval", seed, first, count).map(prompt),
    responseText: (ids, from, to) => responseText(tok, ids, from, to),
    tokenizer: tok,
    close: () => {},
  };
};

// ---- datasets ---------------------------------------------------------------------------------------------

/** The files of a model folder that make up its tokenizer and prompt set-up, copied into checkpoints. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "chat_template.jinja",
] as const;

/** What a dataset source is made of. */
export interface DatasetSourceParts {
  readonly setup: PromptSetup;
  /** The training rows (rendered, encoded, overlong ones dropped) and their file. */
  readonly train: readonly PreparedRow[];
  readonly trainFile: string;
  /** Held-out rows (file order), when there are any. */
  readonly eval?: readonly PreparedRow[];
  readonly evalFile?: string;
  readonly rewards: RewardSet;
  /** The shuffle's seed: step s draws rows (s - 1) * count .. s * count - 1 of the seeded, cycled order. */
  readonly seed: number;
}

/** The response's text of a dataset row: the ids before the first stop id, special tokens left out. */
const datasetText = (setup: PromptSetup, ids: ArrayLike<number>, from: number, to: number): string => {
  const stops = new Set(setup.stopIds);
  const out: number[] = [];
  for (let t = from; t < to; t++) {
    if (stops.has(ids[t])) break;
    out.push(ids[t]);
  }
  return setup.tokenizer.decode(out, { skipSpecial: true });
};

/**
 * A prompt dataset: rows drawn in a seeded order (reshuffled each epoch, cycled), prompts rendered by the
 * folder's chat template, responses ending at any stop id and scored by the weighted rewards (a failing reward
 * scores 0 and counts in `errors`); correct when the first reward scores 1; the format flag when the response
 * ended with a stop id and holds an answer (\boxed{...} or "the answer is").
 */
export const datasetSource = (d: DatasetSourceParts): TaskSource => {
  if (d.train.length === 0) throw new RangeError(`${d.trainFile}: no rows to train on`);
  const sampler = makeSampler(d.train, d.seed);
  const first = d.rewards.rewards[0]?.reward.name;
  const prompt = (file: string) => (p: PreparedRow): SourcePrompt => ({
    id: `${file}:${p.row.row}`,
    text: p.text,
    ids: p.ids,
    answer: p.row.groundTruth,
    ...(p.row.dataSource !== undefined ? { dataSource: p.row.dataSource } : {}),
    score: async (r) => {
      const s = await d.rewards.score(p.row, r.text, {
        finished: r.finished,
        ...(r.stopId !== undefined ? { stopId: r.stopId } : {}),
        tokens: r.tokens,
      });
      return {
        reward: s.score,
        correct: first !== undefined && (s.parts[first] ?? 0) >= 1,
        format: r.finished && extractAnswer(r.text) !== undefined,
        parts: s.parts,
        errors: s.errors,
      };
    },
  });
  const evalRows = d.eval ?? [];
  const { setup } = d;
  return {
    name: `data ${d.trainFile} (${d.train.length} rows)`,
    stops: setup.stopIds,
    pad: setup.pad,
    vocab: setup.tokenizerVocab,
    train: (step, count) => sampler.batch((step - 1) * count, count).map(prompt(d.trainFile)),
    maxPromptTokens: [d.train, evalRows].flat().reduce((m, p) => Math.max(m, p.ids.length), 1),
    evalSize: evalRows.length,
    eval: (first, count) => evalRows.slice(first, first + count).map(prompt(d.evalFile ?? d.trainFile)),
    responseText: (ids, from, to) => datasetText(setup, ids, from, to),
    tokenizer: { dir: setup.dir, files: TOKENIZER_FILES },
    close: () => d.rewards.close(),
  };
};

// ---- opening a run's source -------------------------------------------------------------------------------

/** What opening a source may print (counts of dropped rows, notes). */
export type Log = (line: string) => void;

/**
 * The char tokenizer of `dir` and the task `cfg.task` names, which must fit each other: every character of the
 * task's alphabet is a token.
 */
const openTask = (cfg: TrainConfig, dir: string, log: Log) =>
  Effect.gen(function* () {
    const tok = yield* readTokenizerDir(dir);
    if (!(tok instanceof CharTokenizer)) {
      return yield* new ConfigError({
        source: cfg.model,
        field: "tokenizer.json",
        message: `${cfg.model}: the tasks train char models; this tokenizer is not a char tokenizer ` +
          "(train it on a prompt dataset: --data FILE)",
      });
    }
    const task = yield* resolveTask(cfg.task, "--task", cfg.seed);
    const missing = outsideAlphabet(tok.alphabet, task.alphabet);
    if (missing.length) {
      const shipped = isEmbeddedTask(cfg.task) ? EMBEDDED_TASKS[cfg.task].model : undefined;
      return yield* new ConfigError({
        source: `${dir}/tokenizer.json`,
        field: "--task",
        message: `--task ${cfg.task}: the tokenizer of ${dir} lacks the task's characters ${
          JSON.stringify(missing.join(""))
        }${
          shipped && shipped !== cfg.model
            ? ` (${shipped} is the shipped model for this task: --model ${shipped})`
            : ""
        }`,
      });
    }
    const longest = task.maxSolutionChars;
    if (longest !== undefined && cfg.maxNew < longest) {
      log(
        `note: --max-new ${cfg.maxNew} is below the task's longest solution (${longest} characters); ` +
          `longer responses are cut off (pass --max-new ${longest + 1})`,
      );
    }
    return taskSource(tok, task, cfg.seed);
  });

/** Read, render and encode a data file's rows, dropping (and counting) prompts past --max-prompt. */
const readRows = (cfg: TrainConfig, setup: PromptSetup, file: string, field: string, log: Log) =>
  Effect.gen(function* () {
    const ds = yield* readDataset(file, { promptKey: cfg.promptKey, answerKey: cfg.answerKey, field });
    const prepared = yield* Effect.try({
      try: () => prepareRows(setup, ds.file, ds.rows, { maxPrompt: cfg.maxPrompt }),
      catch: (e) => e as ConfigError | RowError,
    });
    const empty = prepared.rows.find((p) => p.ids.length === 0);
    if (empty) {
      return yield* new ConfigError({
        source: file,
        field: "prompt",
        message: `${file}: row ${empty.row.row}: the prompt renders to no tokens`,
      });
    }
    const dropped = prepared.dropped.length;
    log(
      `${field} ${file}: ${ds.rows.length} rows, ${ds.schema} schema (prompt: ${ds.promptPath}, answer: ` +
        `${ds.answerPath})` +
        (cfg.maxPrompt !== undefined
          ? `; dropped ${dropped} prompt${
            dropped === 1 ? "" : "s"
          } longer than --max-prompt ${cfg.maxPrompt} tokens`
          : ""),
    );
    if (prepared.rows.length === 0) {
      return yield* new ConfigError({
        source: file,
        field: "--max-prompt",
        message: `${field} ${file}: every prompt is longer than --max-prompt ${cfg.maxPrompt} tokens`,
      });
    }
    return prepared.rows;
  });

/**
 * The dataset source of a run: the prompt set-up of `dir` (the model folder, or a resumed run's checkpoint),
 * the rows of --data (and --eval-data), and the rewards; the tokenizer must fit the model's `modelVocab` rows.
 */
const openDataset = (cfg: TrainConfig, dir: string, modelVocab: number, log: Log) =>
  Effect.gen(function* () {
    const kwargs = cfg.chatTemplateKwargs === undefined ? undefined : yield* Effect.try({
      try: () => parseTemplateKwargs(cfg.chatTemplateKwargs!),
      catch: (e) => e as ConfigError,
    });
    const setup = yield* readPromptSetup(dir, {
      chatTemplate: cfg.noChatTemplate !== true,
      ...(kwargs ? { chatTemplateKwargs: kwargs } : {}),
    });
    if (setup.tokenizerVocab > modelVocab) {
      return yield* new ConfigError({
        source: `${dir}/config.json`,
        field: "vocab_size",
        message:
          `${dir}: the model has ${modelVocab} rows of unembedding but its tokenizer ${setup.tokenizerVocab} ids`,
      });
    }
    const train = yield* readRows(cfg, setup, cfg.data!, "--data", log);
    const evalRows = cfg.evalData === undefined
      ? undefined
      : yield* readRows(cfg, setup, cfg.evalData, "--eval-data", log);
    const rewards = yield* Effect.tryPromise({
      try: () =>
        resolveRewards(cfg.reward ?? DEFAULT_DATA_REWARD, {
          timeoutMs: 1000 * (cfg.rewardTimeout ?? DEFAULT_REWARD_TIMEOUT_S),
          pattern: cfg.rewardPattern,
        }),
      catch: (e) => e as ConfigError,
    });
    return datasetSource({
      setup,
      train,
      trainFile: cfg.data!,
      ...(evalRows ? { eval: evalRows, evalFile: cfg.evalData } : {}),
      rewards,
      seed: cfg.seed,
    });
  });

/**
 * The source a run's config names: `cfg.data` (a dataset over the tokenizer of `dir`) or `cfg.task` (a task
 * over the char tokenizer of `dir`); `dir` is the model folder, or a resumed run's checkpoint. It is closed
 * when the enclosing scope closes.
 */
export const openSource = (
  cfg: TrainConfig,
  dir: string,
  modelVocab: number,
  log: Log,
): Effect.Effect<TaskSource, ConfigError | FileFormatError | RowError, Scope.Scope> =>
  Effect.acquireRelease(
    cfg.data === undefined ? openTask(cfg, dir, log) : openDataset(cfg, dir, modelVocab, log),
    (s) => Effect.sync(() => s.close()),
  );
