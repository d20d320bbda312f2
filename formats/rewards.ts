/**
 * Rewards by name: the built-ins (tasks/rewards.ts) and users' TypeScript modules (`--reward ./mine.ts`, verl's
 * custom_reward_function, TRL's reward_funcs), weighted (`math:1,format:0.1`). Module rewards and the `math`
 * and `regex` built-ins run in Deno Workers: a synchronous infinite loop can only be stopped from outside its thread, so a
 * call that runs past the timeout terminates its worker, scores 0 (counted as an error) and the next call
 * starts a fresh worker.
 */
import { ConfigError } from "../core/errors.ts";
import {
  type CompletionInfo,
  DEFAULT_REWARD_TIMEOUT_MS,
  parseRewardSpec,
  type Reward,
  type RewardRow,
  type RewardSpecItem,
  RewardTimeout,
  scoreCompletion,
  type Scored,
  type WeightedReward,
} from "../tasks/reward.ts";
import { builtinReward, isBuiltinReward, parsePattern } from "../tasks/rewards.ts";
import { moduleUrl } from "./module.ts";

const WORKER_URL = new URL("./reward_worker.ts", import.meta.url).href;
const BUILTINS_URL = new URL("../tasks/rewards.ts", import.meta.url).href;

/** Options of a worker reward. */
export interface WorkerRewardOptions {
  /** Per call, from when the worker starts on it (default 5000 ms). */
  readonly timeoutMs?: number;
  /** For importing the module in a fresh worker (default 30,000 ms). */
  readonly loadTimeoutMs?: number;
  /** Workers run side by side (default 1); calls queue on the least busy. */
  readonly workers?: number;
  /** The export to use (default: `default`, else `reward`, else `compute_score`). */
  readonly exportName?: string;
  /**
   * With `exportName`: the export is a factory, called with these arguments (structured-cloneable) in each
   * worker, that returns the reward function (how `regex` gets its pattern there).
   */
  readonly factoryArgs?: readonly unknown[];
}

interface Pending {
  readonly id: number;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: Error) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

/** One worker holding one reward module; calls run one at a time; a timed-out worker is replaced. */
class RewardWorker {
  private worker?: Worker;
  private ready?: Promise<void>;
  private pending?: Pending;
  private tail: Promise<unknown> = Promise.resolve();
  private nextId = 0;
  /** Calls queued or running. */
  queued = 0;
  /** Workers terminated after a timeout or a crash. */
  restarts = 0;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly exportName: string | undefined,
    private readonly factoryArgs: readonly unknown[] | undefined,
    private readonly timeoutMs: number,
    private readonly loadTimeoutMs: number,
  ) {}

  /** Start a worker and load the module; rejects with the module's problem. */
  start(): Promise<void> {
    const w = new Worker(WORKER_URL, { type: "module" });
    this.worker = w;
    this.ready = new Promise<void>((resolve, reject) => {
      let loading = true;
      const timer = setTimeout(() => {
        this.kill();
        loaded(new Error(`the module took longer than ${this.loadTimeoutMs} ms to load`));
      }, this.loadTimeoutMs);
      const loaded = (err?: Error) => {
        if (!loading) return;
        loading = false;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      w.onmessage = (e: MessageEvent) => {
        const m = e.data as { type: string; id?: number; value?: unknown; message?: string };
        if (m.type === "ready") return loaded();
        if (m.type === "load-error") {
          this.kill();
          return loaded(new Error(m.message));
        }
        const p = this.pending;
        if (!p || p.id !== m.id) return;
        clearTimeout(p.timer);
        this.pending = undefined;
        if (m.type === "result") p.resolve(m.value);
        else p.reject(new Error(m.message));
      };
      w.onerror = (e: ErrorEvent) => {
        // An error the module left uncaught (a throw in a timer callback...): this worker is gone.
        e.preventDefault();
        const err = new Error(`uncaught in the reward's worker: ${e.message}`);
        if (w === this.worker) this.kill(), this.restarts++;
        loaded(err);
        this.failPending(err);
      };
    });
    w.postMessage({
      type: "load",
      url: this.url,
      exportName: this.exportName,
      factoryArgs: this.factoryArgs,
    });
    return this.ready;
  }

  private kill() {
    this.worker?.terminate();
    this.worker = undefined;
    this.ready = undefined;
  }

  private failPending(err: Error) {
    const p = this.pending;
    if (!p) return;
    clearTimeout(p.timer);
    this.pending = undefined;
    p.reject(err);
  }

  /** Score one completion (queued behind this worker's other calls). */
  call(row: RewardRow, completion: string, info: CompletionInfo): Promise<unknown> {
    this.queued++;
    const run = async (): Promise<unknown> => {
      if (this.closed) throw new Error("the reward was closed");
      if (!this.worker) await this.start();
      else await this.ready;
      return await new Promise((resolve, reject) => {
        const id = ++this.nextId;
        const timer = setTimeout(() => {
          this.pending = undefined;
          this.kill();
          this.restarts++;
          reject(new RewardTimeout(this.timeoutMs));
        }, this.timeoutMs);
        this.pending = { id, resolve, reject, timer };
        try {
          this.worker!.postMessage({ type: "score", id, row, completion, info });
        } catch (e) {
          this.failPending(new Error(`cannot send the row to the worker (${(e as Error).message})`));
        }
      });
    };
    const p = this.tail.then(run, run).finally(() => this.queued--);
    this.tail = p.catch(() => {});
    return p;
  }

  close() {
    this.closed = true;
    this.failPending(new Error("the reward was closed"));
    this.kill();
  }
}

/** A reward run in workers: `restarts` counts the workers replaced after a timeout or a crash. */
export interface WorkerReward extends Reward {
  /** Workers time each call themselves (from when it starts running, not while it queues). */
  readonly selfTimed: true;
  /** How many workers were replaced so far. */
  readonly restarts: () => number;
  /** Terminate the workers. */
  readonly close: () => void;
}

/**
 * A reward from the module at `url` (a file URL), run in `workers` workers. Every worker loads the module
 * first: a module that cannot be imported or exports no reward rejects here (an Error saying why).
 */
export const workerReward = async (
  name: string,
  url: string,
  opts: WorkerRewardOptions = {},
): Promise<WorkerReward> => {
  const n = Math.max(1, Math.floor(opts.workers ?? 1));
  const pool = Array.from(
    { length: n },
    () =>
      new RewardWorker(
        url,
        opts.exportName,
        opts.factoryArgs,
        opts.timeoutMs ?? DEFAULT_REWARD_TIMEOUT_MS,
        opts.loadTimeoutMs ?? 30_000,
      ),
  );
  try {
    await Promise.all(pool.map((w) => w.start()));
  } catch (e) {
    pool.forEach((w) => w.close());
    throw e;
  }
  return {
    name,
    selfTimed: true,
    score: (row, completion, info) => {
      const w = pool.reduce((a, b) => (b.queued < a.queued ? b : a));
      return w.call(row, completion, info) as ReturnType<Reward["score"]>;
    },
    restarts: () => pool.reduce((s, w) => s + w.restarts, 0),
    close: () => pool.forEach((w) => w.close()),
  };
};

/** The reward name of a module path: its file name without the extension (`./rewards/mine.ts` -> `mine`). */
export const moduleRewardName = (path: string): string =>
  path.replace(/\\/g, "/").split("/").pop()!.replace(/\.[cm]?[jt]sx?$/, "") || path;

/** Whether a reward name is a module path rather than a built-in's name. */
export const isModulePath = (name: string): boolean => /[\\/]/.test(name) || /\.[cm]?[jt]sx?$/.test(name);

/** Load a user's reward module in workers; every failure is a ConfigError naming `field` and the path. */
export const loadRewardModule = async (
  path: string,
  opts: WorkerRewardOptions & { readonly field?: string; readonly name?: string } = {},
): Promise<WorkerReward> => {
  const field = opts.field ?? "--reward";
  try {
    return await workerReward(opts.name ?? moduleRewardName(path), moduleUrl(path), opts);
  } catch (e) {
    throw new ConfigError({ source: path, field, message: `${field} ${path}: ${(e as Error).message}` });
  }
};

/** Weighted rewards, scoring with errors counted; `close` stops their workers. */
export interface RewardSet {
  /** The rewards with their weights, in spec order. */
  readonly rewards: readonly WeightedReward[];
  /** The per-call timeout in milliseconds. */
  readonly timeoutMs: number;
  /** Score one completion: the weighted sum, each reward's score and parts, and the failures. */
  score(row: RewardRow, completion: string, info: CompletionInfo): Promise<Scored>;
  /** Stop every worker reward's workers. */
  close(): void;
}

/** Options of `resolveRewards`. */
export interface ResolveOptions {
  /** Per reward call (default 5000 ms). */
  readonly timeoutMs?: number;
  /** The `regex` reward's pattern (`/body/flags` or a plain body). */
  readonly pattern?: string;
  /** Run `math` in a worker (default true): the guard against inputs the algebra system grinds on. */
  readonly mathInWorker?: boolean;
  /** Run `regex` in a worker (default true), so a pattern that backtracks for ever is timed out too. */
  readonly regexInWorker?: boolean;
  /** Workers per worker reward (default 1). */
  readonly workers?: number;
  /** The flag named in errors (default `--reward`). */
  readonly field?: string;
}

/**
 * Rewards from a spec (`math:1,format:0.1,./mine.ts:0.5`, or parsed items): built-ins by name, anything that
 * looks like a path as a module. An unknown name, a name given twice or a module that does not load is a
 * ConfigError.
 */
export const resolveRewards = async (
  spec: string | readonly RewardSpecItem[],
  opts: ResolveOptions = {},
): Promise<RewardSet> => {
  const field = opts.field ?? "--reward";
  const timeoutMs = opts.timeoutMs ?? DEFAULT_REWARD_TIMEOUT_MS;
  const items = typeof spec === "string" ? parseRewardSpec(spec, field) : spec;
  const rewards: WeightedReward[] = [];
  const close = () => rewards.forEach(({ reward }) => reward.close?.());
  try {
    for (const { name, weight } of items) {
      let reward: Reward;
      if (isBuiltinReward(name)) {
        if (name === "math" && (opts.mathInWorker ?? true)) {
          reward = await workerReward("math", BUILTINS_URL, {
            timeoutMs,
            exportName: "mathScore",
            workers: opts.workers,
          });
        } else {
          const pattern = opts.pattern === undefined ? undefined : parsePattern(opts.pattern);
          reward = builtinReward(name, { pattern }); // checks the pattern (a ConfigError on this thread)
          if (name === "regex" && (opts.regexInWorker ?? true)) {
            reward = await workerReward("regex", BUILTINS_URL, {
              timeoutMs,
              exportName: "regexScorer",
              factoryArgs: [opts.pattern],
              workers: opts.workers,
            });
          }
        }
      } else if (isModulePath(name)) {
        reward = await loadRewardModule(name, { timeoutMs, field, workers: opts.workers });
      } else {
        throw new ConfigError({
          source: "flags",
          field,
          message: `${field}: unknown reward ${JSON.stringify(name)}; expected math, exact, regex, format ` +
            "or a module path such as ./mine.ts",
        });
      }
      if (rewards.some((r) => r.reward.name === reward.name)) {
        reward.close?.();
        throw new ConfigError({
          source: "flags",
          field,
          message: `${field}: reward ${JSON.stringify(reward.name)} is named twice`,
        });
      }
      rewards.push({ reward, weight });
    }
  } catch (e) {
    close();
    throw e;
  }
  return {
    rewards,
    timeoutMs,
    score: (row, completion, info) => scoreCompletion(rewards, row, completion, info, { timeoutMs }),
    close,
  };
};
