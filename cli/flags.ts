/**
 * The command-line parser of every bupo command: a flag table (core/flags.ts) in, typed values out, strictly.
 * An unknown flag, a missing or bad value, a stray argument or a missing required flag is a ConfigError naming
 * the flag and what it expected (exit code 2 through cli/main.ts); `-h` / `--help` asks for the generated help.
 *
 * Syntax: `--name value` or `--name=value`; switches take no value (`--quiet`; `--quiet=false` also works).
 * A value may start with a dash only when it is a number (`--kl -3` as well as `--kl=-3`); other values that
 * start with a dash need the `=` form. `--` ends the flags: everything after it is positional. A flag whose row
 * says `repeat` may be given several times (its value: every value, in order); any other flag given twice keeps
 * its last value.
 */
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import {
  checkValue,
  defaultsOf,
  expected,
  flagName,
  type FlagSpec,
  type FlagTable,
  type FlagValue,
} from "../core/flags.ts";

export type { FlagSpec, FlagTable } from "../core/flags.ts";

/** Positional arguments a command accepts (none unless given). */
export interface Positionals {
  /** Placeholder in the usage and help, e.g. `NAME`. */
  readonly name: string;
  readonly help: string;
  /** Allowed values (each positional must be one). */
  readonly values?: readonly string[];
  /** Most positionals (default: any number). */
  readonly max?: number;
}

/** A command: its name, usage lines, flag table and the help's prose. */
export interface Command<T extends FlagTable = FlagTable> {
  /** The name used in messages (`grad: ...`) and the help's first line. */
  readonly name: string;
  /** One paragraph: what the command does. */
  readonly summary: string;
  /** Usage lines (without the leading indent). */
  readonly usage: readonly string[];
  readonly flags: T;
  readonly positionals?: Positionals;
  /** Prose after the flag list. */
  readonly notes?: string;
}

/** Declare a command with its table's literal types kept (so `parseFlags` types every value). */
export const defineCommand = <const T extends FlagTable>(c: Command<T>): Command<T> => c;

type NumKind = "int" | "posint" | "num" | "posnum";
type One<S> = S extends { kind: "bool" } ? boolean
  : S extends { kind: NumKind; words: readonly (infer W)[] } ? number | W
  : S extends { kind: NumKind } ? number
  : S extends { kind: "enum"; values: readonly (infer V)[] } ? V
  : S extends { kind: "list"; of: NumKind } ? readonly number[]
  : S extends { kind: "list" } ? readonly string[]
  : string;
type Base<S> = S extends { repeat: true } ? readonly One<S>[] : One<S>;
/**
 * The value of one flag: undefined when it is absent and has no default (and is not required, a switch or
 * repeatable).
 */
export type ValueOf<S> = S extends
  { default: FlagValue } | { required: true } | { kind: "bool" } | { repeat: true } ? Base<S>
  : Base<S> | undefined;
/** The values of a table, by key. */
export type Values<T extends FlagTable> = { readonly [K in keyof T]: ValueOf<T[K]> };

/** What `parseFlags` returns: help asked for, or every value with the keys given explicitly. */
export type Parsed<T extends FlagTable> =
  | { readonly help: true }
  | {
    readonly help: false;
    readonly values: Values<T>;
    /** Keys given on the command line (the rest hold their defaults). */
    readonly given: ReadonlySet<keyof T & string>;
    readonly positionals: readonly string[];
  };

/** A usage error (exit code 2) about `field`. */
export const usageError = (field: string, message: string): ConfigError =>
  new ConfigError({ source: "flags", field, message });

const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

/** Parse `argv` against a command's table. Throws a ConfigError for every problem (see the module doc). */
export const parseFlags = <T extends FlagTable>(cmd: Command<T>, argv: readonly string[]): Parsed<T> => {
  const byName = new Map<string, string>();
  const byShort = new Map<string, string>();
  for (const [key, spec] of Object.entries(cmd.flags)) {
    for (const n of [flagName(key, spec), ...(spec.aliases ?? [])]) byName.set(n, key);
    if (spec.short) byShort.set(spec.short, key);
  }
  const endOfFlags = argv.indexOf("--");
  const flagPart = endOfFlags < 0 ? argv : argv.slice(0, endOfFlags);
  if (flagPart.some((a) => a === "--help" || (a === "-h" && !byShort.has("h")))) return { help: true };

  const raw = new Map<string, { flag: string; value: string | true }>();
  const repeated = new Map<string, { flag: string; values: string[] }>();
  const put = (key: string, flag: string, value: string) => {
    if (!cmd.flags[key].repeat) return void raw.set(key, { flag, value });
    const r = repeated.get(key) ?? { flag, values: [] };
    r.values.push(value);
    repeated.set(key, r);
  };
  const positionals: string[] = [];
  for (let i = 0; i < flagPart.length; i++) {
    const a = flagPart[i];
    let name: string, inline: string | undefined, key: string | undefined;
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      inline = eq < 0 ? undefined : a.slice(eq + 1);
      key = byName.get(name);
      name = `--${name}`;
    } else if (a.startsWith("-") && a.length > 1 && !NEGATIVE_NUMBER.test(a)) {
      name = a;
      key = a.length === 2 ? byShort.get(a[1]) : undefined;
    } else {
      positionals.push(a);
      continue;
    }
    if (key === undefined) throw usageError(name, `unknown flag ${name} (see --help)`);
    const spec = cmd.flags[key];
    const flag = `--${flagName(key, spec)}`;
    if (spec.kind === "bool") {
      raw.set(key, { flag, value: inline ?? true });
      continue;
    }
    if (inline !== undefined) {
      put(key, flag, inline);
      continue;
    }
    const next = flagPart[i + 1];
    if (next === undefined || (next.startsWith("-") && !NEGATIVE_NUMBER.test(next))) {
      throw usageError(flag, `${flag} needs a value: ${expected(spec)}`);
    }
    put(key, flag, next);
    i++;
  }
  if (endOfFlags >= 0) positionals.push(...argv.slice(endOfFlags + 1));

  const p = cmd.positionals;
  if (positionals.length && !p) {
    const arg = `argument ${JSON.stringify(positionals[0])}`;
    throw usageError(arg, `unexpected ${arg} (flags take --name value; see --help)`);
  }
  if (p?.max !== undefined && positionals.length > p.max) {
    throw usageError(p.name, `at most ${p.max} ${p.name} argument${p.max === 1 ? "" : "s"} (see --help)`);
  }
  for (const x of positionals) {
    if (p?.values && !p.values.includes(x)) {
      throw usageError(p.name, `${p.name} ${JSON.stringify(x)}: expected ${p.values.join(" | ")}`);
    }
  }

  const values: Record<string, FlagValue | undefined> = defaultsOf(cmd.flags);
  for (const [key, { flag, value }] of raw) {
    values[key] = value === true
      ? true
      : checkValue(cmd.flags[key], value, { source: "flags", field: flag }, true);
  }
  for (const [key, { flag, values: vs }] of repeated) {
    values[key] = vs.map((v) =>
      checkValue(cmd.flags[key], v, { source: "flags", field: flag }, true)
    ) as FlagValue;
  }
  for (const [key, spec] of Object.entries(cmd.flags)) {
    if (spec.required && values[key] === undefined) {
      const flag = `--${flagName(key, spec)}`;
      throw usageError(flag, `${flag} ${placeholder(spec)} is required (see --help)`);
    }
  }
  return {
    help: false,
    values: values as Values<T>,
    given: new Set([...raw.keys(), ...repeated.keys()]) as ReadonlySet<keyof T & string>,
    positionals,
  };
};

/** `parseFlags` as an Effect failing with the ConfigError. */
export const flagsOf = <T extends FlagTable>(
  cmd: Command<T>,
  argv: readonly string[],
): Effect.Effect<Parsed<T>, ConfigError> =>
  Effect.try({ try: () => parseFlags(cmd, argv), catch: (e) => e as ConfigError });

const placeholder = (spec: FlagSpec): string =>
  spec.arg ??
    (spec.kind === "enum"
      ? spec.values!.join("|")
      : spec.kind === "int" || spec.kind === "posint"
      ? "N"
      : spec.kind === "num" || spec.kind === "posnum"
      ? "X"
      : spec.kind === "list"
      ? "LIST"
      : spec.kind === "bool"
      ? ""
      : "VALUE");

const showDefault = (v: FlagValue): string => (Array.isArray(v) ? v.join(",") : String(v));

/** The generated help: summary, usage, every flag with its placeholder, help and default, then the notes. */
export const helpText = (cmd: Command): string => {
  const rows: [string, string][] = Object.entries(cmd.flags).map(([key, spec]) => {
    const names = [
      ...(spec.short ? [`-${spec.short},`] : []),
      `--${flagName(key, spec)}`,
      placeholder(spec),
    ].filter(Boolean).join(" ");
    const extra = spec.repeat
      ? " (repeatable)"
      : spec.required
      ? " (required)"
      : spec.default !== undefined && spec.kind !== "bool"
      ? ` (default ${showDefault(spec.default)})`
      : "";
    const aliases = spec.aliases?.length ? ` (also --${spec.aliases.join(", --")})` : "";
    return [names, spec.help + extra + aliases];
  });
  rows.push(["-h, --help", "this text"]);
  const pos: [string, string][] = cmd.positionals ? [[cmd.positionals.name, cmd.positionals.help]] : [];
  const width = Math.min(26, Math.max(...[...pos, ...rows].map(([n]) => n.length)) + 2);
  const indent = " ".repeat(width + 2);
  const layout = ([n, h]: [string, string]) => {
    const [first, ...rest] = h.split("\n");
    const head = n.length + 2 > width ? `  ${n}\n${indent}${first}` : `  ${n.padEnd(width)}${first}`;
    return [head, ...rest.map((r) => indent + r)].join("\n");
  };
  return [
    `${cmd.name}: ${cmd.summary}`,
    "",
    "Usage:",
    ...cmd.usage.map((u) => `  ${u}`),
    ...(pos.length ? ["", "Arguments:", ...pos.map(layout)] : []),
    "",
    "Flags:",
    ...rows.map(layout),
    ...(cmd.notes ? ["", cmd.notes] : []),
  ].join("\n");
};
