/**
 * How every bupo command runs and exits. One rule: exit code 2 for a usage error (a ConfigError: a bad flag,
 * a bad config value, a flag combination that cannot work), 1 for every other failure, 0 on success. Errors
 * print as one `<name>: <message>` line on stderr (tagged failures other than ConfigError name their tag:
 * `train: NonFiniteError: ...`), never with a stack trace.
 */
import { Cause, Effect, Exit } from "effect";
import { type Command, flagsOf, helpText, type Parsed } from "./flags.ts";
import type { FlagTable } from "../core/flags.ts";

/** A command's work: an Effect (every requirement provided) or an async function. */
export type Program = Effect.Effect<unknown, unknown, never> | (() => Promise<unknown>);

const tagOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && typeof (e as { _tag?: unknown })._tag === "string"
    ? (e as { _tag: string })._tag
    : undefined;

/** Whether a failure is a usage error (exit code 2). */
export const isUsageError = (e: unknown): boolean => tagOf(e) === "ConfigError";

/** The exit code of a failure: 2 for usage errors, 1 otherwise. */
export const exitCodeOf = (e: unknown): 1 | 2 => (isUsageError(e) ? 2 : 1);

/** The line printed for a failure: `<name>: <message>`, with the tag of tagged non-usage errors. */
export const errorLine = (name: string, e: unknown): string => {
  const m = typeof e === "object" && e !== null ? (e as { message?: unknown }).message : undefined;
  const message = typeof m === "string" && m.trim() !== "" ? m.trim() : String(e);
  const tag = tagOf(e);
  return `${name}: ${tag && tag !== "ConfigError" ? `${tag}: ` : ""}${message}`;
};

/** Run a command's program; print its failure, if any, and return the exit code (the caller exits with it). */
export const runMain = async (name: string, program: Program): Promise<number> => {
  const effect = typeof program === "function"
    ? Effect.tryPromise({ try: program, catch: (e) => e })
    : program;
  const exit = await Effect.runPromiseExit(effect);
  if (Exit.isSuccess(exit)) return 0;
  if (Cause.hasInterruptsOnly(exit.cause)) {
    console.error(`${name}: interrupted`);
    return 1;
  }
  const e = Cause.squash(exit.cause);
  console.error(errorLine(name, e));
  return exitCodeOf(e);
};

/**
 * A command's `main`: parses `argv` against the command's flag table, prints its help for --help, else runs
 * `body` on the parsed flags; resolves to the exit code (`runMain`'s rule).
 */
export const commandMain = <T extends FlagTable>(
  cmd: Command<T>,
  body: (args: Extract<Parsed<T>, { help: false }>) => Effect.Effect<unknown, unknown, never>,
) =>
(argv: readonly string[]): Promise<number> =>
  runMain(
    cmd.name,
    Effect.gen(function* () {
      const args = yield* flagsOf(cmd, argv);
      if (args.help) return console.log(helpText(cmd));
      yield* body(args);
    }),
  );
