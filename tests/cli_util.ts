/**
 * Runs bupo's commands in a child process, as a user would: `deno run -A <checkout>/<script> ...args` with
 * NO_COLOR set, from the checkout unless told otherwise. For the tests of the root CLIs.
 */
const root = new URL("..", import.meta.url).pathname;

/** What a command printed, and its exit code. */
export interface ScriptResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout, then stderr. */
  readonly text: string;
}

/** Where and how a command runs. */
export interface ScriptOptions {
  /** The working folder (default: the checkout). */
  readonly cwd?: string;
  /** More environment variables. */
  readonly env?: Record<string, string>;
  /** Pass `--config <checkout>/deno.json` (for a cwd outside the checkout). */
  readonly config?: boolean;
}

/** Run `script` (relative to the checkout, e.g. "train.ts") with `args`; wait for it to exit. */
export const runScript = async (
  script: string,
  args: readonly string[],
  o: ScriptOptions = {},
): Promise<ScriptResult> => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...(o.config ? ["--config", `${root}deno.json`] : []), `${root}${script}`, ...args],
    cwd: o.cwd ?? root,
    env: { NO_COLOR: "1", ...o.env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const stdout = dec.decode(out.stdout), stderr = dec.decode(out.stderr);
  return { code: out.code, stdout, stderr, text: stdout + stderr };
};

/** The batch flags of a tiny CLI run: 2 prompts x 2 responses of at most 5 tokens, one minibatch. */
export const TINY_BATCH: readonly string[] = [
  "--prompts",
  "2",
  "--group",
  "2",
  "--max-new",
  "5",
  "--minibatches",
  "1",
];

/** The evaluation flags of a tiny CLI run: 2 held-out problems at k = 1. */
export const TINY_EVAL: readonly string[] = ["--eval-problems", "2", "--eval-k", "1"];

/** The shape of a tiny train.ts run: its length, how often it evaluates and checkpoints. */
export interface TinyRun {
  readonly steps: number;
  readonly evalEvery: number;
  /** Held-out problems of each evaluation, at k = 1 (default: TINY_EVAL's 2). */
  readonly evalProblems?: number;
  /** Checkpoint every this many steps (default: the CLI's). */
  readonly checkpointEvery?: number;
}

/** The flags of a tiny train.ts run of `model` into `out`: TINY_BATCH for `o.steps` steps, evaluated as `o` says. */
export const tinyTrainArgs = (model: string, out: string, o: TinyRun): string[] => [
  "--model",
  model,
  "--out",
  out,
  "--steps",
  `${o.steps}`,
  ...TINY_BATCH,
  "--eval-every",
  `${o.evalEvery}`,
  ...(o.evalProblems === undefined ? TINY_EVAL : ["--eval-problems", `${o.evalProblems}`, "--eval-k", "1"]),
  ...(o.checkpointEvery === undefined ? [] : ["--checkpoint-every", `${o.checkpointEvery}`]),
];
