/**
 * Rewards by name: the built-ins (tasks/rewards.ts) and users' TypeScript modules (`--reward ./mine.ts`, verl's
 * custom_reward_function, TRL's reward_funcs), weighted (`math:1,format:0.1`). Module rewards and the `math`
 * and `regex` built-ins run in worker processes (`deno run formats/reward_process.ts`): a synchronous
 * infinite loop can only be stopped from outside, so a call that runs past the timeout kills its process
 * (SIGKILL), scores 0 (counted as an error) and the next call starts a fresh one. Deno Workers would not do:
 * `Worker.terminate()` leaves a worker stuck in synchronous code spinning on its thread (README, "Known
 * issues").
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
import { decodeMessage, encodeMessage, lines } from "./reward_process.ts";

const PROCESS_URL = new URL("./reward_process.ts", import.meta.url).href;
const ENCODER = new TextEncoder();
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

/**
 * The permission flags of this process for a child `deno run`: `-A` when every permission is granted, else an
 * `--allow-<name>` for each one granted as a whole (a grant limited to some paths or hosts is not passed on).
 */
const permissionFlags = (): string[] => {
  const names = ["read", "write", "net", "env", "run", "ffi", "sys", "import"] as const;
  const granted = names.filter((name) => {
    try {
      return Deno.permissions.querySync({ name } as Deno.PermissionDescriptor).state === "granted";
    } catch {
      return false; // a name this Deno does not know
    }
  });
  return granted.length === names.length ? ["-A"] : granted.map((n) => `--allow-${n}`);
};

/**
 * One child process (`deno run formats/reward_process.ts`) holding one reward module; calls run one at a time; a
 * timed-out or crashed process is killed and replaced. It finds its deno.json as `deno run` does, from this
 * process's working folder, and gets this process's permissions (whole grants only).
 */
class RewardWorker {
  private child?: Deno.ChildProcess;
  private writer?: WritableStreamDefaultWriter<Uint8Array>;
  private ready?: Promise<void>;
  private pending?: Pending;
  private tail: Promise<unknown> = Promise.resolve();
  private nextId = 0;
  /** Calls queued or running. */
  queued = 0;
  /** Processes killed after a timeout or a crash. */
  restarts = 0;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly exportName: string | undefined,
    private readonly factoryArgs: readonly unknown[] | undefined,
    private readonly timeoutMs: number,
    private readonly loadTimeoutMs: number,
  ) {}

  /** Start a process and load the module; rejects with the module's problem. */
  start(): Promise<void> {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--no-prompt", ...permissionFlags(), PROCESS_URL],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.child = child;
    this.writer = child.stdin.getWriter();
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
      const onMessage = (m: { type: string; id?: number; value?: unknown; message?: string }) => {
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
      (async () => {
        try {
          for await (const line of child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lines())) {
            const m = decodeMessage(line);
            if (m === undefined) console.error(line); // the reward's own output
            else onMessage(m as Parameters<typeof onMessage>[0]);
          }
        } catch { /* the process was killed */ }
        // stdout ended: the process is gone. Unless we killed it, it crashed (Deno.exit, an abort...).
        if (child === this.child) {
          const code = (await child.status).code;
          this.kill();
          this.restarts++;
          const err = new Error(`the reward's process exited (code ${code})`);
          loaded(err);
          this.failPending(err);
        } else await child.status;
      })();
    });
    this.send({ type: "load", url: this.url, exportName: this.exportName, factoryArgs: this.factoryArgs });
    return this.ready;
  }

  private send(m: unknown) {
    this.writer!.write(ENCODER.encode(encodeMessage(m))).catch(() => {/* the process is gone */});
  }

  private kill() {
    const child = this.child;
    this.child = undefined;
    this.ready = undefined;
    this.writer?.close().catch(() => {});
    this.writer = undefined;
    try {
      child?.kill("SIGKILL");
    } catch { /* already exited */ }
  }

  private failPending(err: Error) {
    const p = this.pending;
    if (!p) return;
    clearTimeout(p.timer);
    this.pending = undefined;
    p.reject(err);
  }

  /** Score one completion (queued behind this process's other calls). */
  call(row: RewardRow, completion: string, info: CompletionInfo): Promise<unknown> {
    this.queued++;
    const run = async (): Promise<unknown> => {
      if (this.closed) throw new Error("the reward was closed");
      if (!this.child) await this.start();
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
          this.send({ type: "score", id, row, completion, info });
        } catch (e) {
          this.failPending(
            new Error(`cannot send the row to the reward's process (${(e as Error).message})`),
          );
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

/** A reward run in worker processes: `restarts` counts the processes replaced after a timeout or a crash. */
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

/** Load a user's reward module in worker processes; every failure is a ConfigError naming `field` and the path. */
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
  /** Run `math` in a worker process (default true): the guard against inputs the algebra system grinds on. */
  readonly mathInWorker?: boolean;
  /** Run `regex` in a worker process (default true), so a pattern that backtracks for ever is killed too. */
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
