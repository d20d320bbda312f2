/**
 * Flag tables: one row per setting (kind, help, default), as plain data, and the one value check every row's
 * kind means. The command-line parser (cli/flags.ts) reads argv with a table; config files
 * (training/config.ts) check JSON values with the same rows, so a flag and its config field agree on what
 * they accept and on how a bad value is reported. Pure: no argv, no files.
 */
import { ConfigError, showValue } from "./errors.ts";

/**
 * What a flag holds. Numbers: `int` an integer, `posint` an integer > 0, `num` a finite number, `posnum` a
 * number > 0 (further bounds with `min`, `max`, `multipleOf`); `str` a non-empty string; `enum` one of
 * `values`; `bool` a switch (no value); `list` items separated by `sep` (default ","), each of kind `of`.
 */
export type FlagKind = "int" | "posint" | "num" | "posnum" | "str" | "enum" | "bool" | "list";

/** The kinds a list item may have. */
export type ItemKind = "int" | "posint" | "num" | "posnum" | "str";

/** A value a flag can hold. */
export type FlagValue = string | number | boolean | readonly (string | number)[];

/** One flag (or config field). */
export interface FlagSpec {
  /** What the flag holds (FlagKind). */
  readonly kind: FlagKind;
  /** One line (or several, `\n`-separated) for the generated help. */
  readonly help: string;
  /** The value when the flag is absent; without one the flag is optional (undefined when absent). */
  readonly default?: FlagValue;
  /** The command fails when the flag is absent. */
  readonly required?: boolean;
  /** `enum`: the allowed values. */
  readonly values?: readonly string[];
  /** `list`: the kind of each item (default `str`) and the separator (default ","). */
  readonly of?: ItemKind;
  /** `list`: the item separator (default ","). */
  readonly sep?: string;
  /** Numbers (and numeric list items): inclusive bounds and a step. */
  readonly min?: number;
  /** Inclusive upper bound (see `min`). */
  readonly max?: number;
  /** The value must be a multiple of this. */
  readonly multipleOf?: number;
  /** The flag's name on the command line; default: the key in kebab case (`maxNew` -> `max-new`). */
  readonly flag?: string;
  /** Other accepted names (without dashes), e.g. an old spelling. */
  readonly aliases?: readonly string[];
  /** Numbers: words accepted besides a number (e.g. `auto`); the value is then the word itself. */
  readonly words?: readonly string[];
  /**
   * The flag may be given several times (command lines only): its value is the list of every value given, in
   * order, each checked against this row; absent, the empty list.
   */
  readonly repeat?: boolean;
  /** One-letter short form (`-h`). */
  readonly short?: string;
  /** The value's placeholder in the help (default by kind: N, X, LIST, a|b|c, VALUE). */
  readonly arg?: string;
}

/** A table of flags by setting name (camelCase). */
export type FlagTable = { readonly [key: string]: FlagSpec };

/** `maxNew` -> `max-new`. */
export const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The flag's command-line name, without dashes. */
export const flagName = (key: string, spec: FlagSpec): string => spec.flag ?? kebab(key);

type Num = "int" | "posint" | "num" | "posnum";
const isNum = (k: FlagKind): k is Num => k === "int" || k === "posint" || k === "num" || k === "posnum";

/** What a spec accepts, in words ("a positive integer", "grpo | bupo", ...). */
export const expected = (spec: FlagSpec): string => {
  const k = spec.kind;
  if (spec.words?.length && isNum(k)) {
    return `${expected({ ...spec, words: undefined })} or ${
      spec.words.map((w) => JSON.stringify(w)).join(" or ")
    }`;
  }
  if (k === "str") return "a non-empty string";
  if (k === "enum") return spec.values!.join(" | ");
  if (k === "bool") return "true or false";
  if (k === "list") {
    return `a "${spec.sep ?? ","}"-separated list of ${expected({ ...spec, kind: spec.of ?? "str" })}`;
  }
  const base = k === "posint"
    ? "a positive integer"
    : k === "posnum"
    ? "a positive number"
    : k === "int"
    ? "an integer"
    : "a number";
  const bounds = [
    spec.min !== undefined ? `>= ${spec.min}` : "",
    spec.max !== undefined ? `<= ${spec.max}` : "",
    spec.multipleOf !== undefined ? `a multiple of ${spec.multipleOf}` : "",
  ].filter(Boolean);
  return bounds.length ? `${base} (${bounds.join(", ")})` : base;
};

/** Why a number fails a numeric spec (the first rule it breaks), or undefined when it fits. */
const numberProblem = (kind: Num, spec: FlagSpec, x: number): string | undefined => {
  if (!Number.isFinite(x)) return "a finite number";
  if ((kind === "int" || kind === "posint") && !Number.isInteger(x)) return "an integer";
  if ((kind === "posint" || kind === "posnum") && !(x > 0)) return "a positive number";
  if (spec.min !== undefined && x < spec.min) return `a number >= ${spec.min}`;
  if (spec.max !== undefined && x > spec.max) return `a number <= ${spec.max}`;
  if (spec.multipleOf !== undefined && x % spec.multipleOf !== 0) return `a multiple of ${spec.multipleOf}`;
  return undefined;
};

/** Where a value came from, for the error: the source ("flags", a file) and the field as the user wrote it. */
export interface ValueSite {
  /** `flags`, or the file the value was read from (the ConfigError's `source`). */
  readonly source: string;
  /** `--max-new` for a flag, `maxNew` for a config field. */
  readonly field: string;
  /** Prefix the message with the source (config files: "run.json: maxNew: ..."). */
  readonly prefixSource?: boolean;
}

const fail = (site: ValueSite, what: string, v: unknown): never => {
  const where = site.prefixSource ? `${site.source}: ${site.field}` : site.field;
  throw new ConfigError({
    source: site.source,
    field: site.field,
    message: `${where}: expected ${what}, got ${showValue(v)}`,
  });
};

const item = (kind: ItemKind, spec: FlagSpec, v: unknown, text: boolean): string | number | [string] => {
  if (kind === "str") return typeof v === "string" && v.length > 0 ? v : ["a non-empty string"];
  const s = typeof v === "string" ? v.trim() : undefined;
  const x = text && s !== undefined ? (s === "" ? NaN : Number(s)) : v;
  if (typeof x !== "number" || Number.isNaN(x)) return [expected({ ...spec, kind })];
  const problem = numberProblem(kind, spec, x);
  return problem ? [problem] : x;
};

/**
 * Check one value against its spec and return it typed (numbers parsed when `text`: the value came from the
 * command line). A bad value throws a ConfigError naming the field, what it expected and what it got.
 */
export const checkValue = (spec: FlagSpec, v: unknown, site: ValueSite, text: boolean): FlagValue => {
  const k = spec.kind;
  if (isNum(k) && typeof v === "string" && spec.words?.includes(v)) return v;
  if (k === "bool") {
    if (typeof v === "boolean") return v;
    if (text && (v === "true" || v === "false")) return v === "true";
    return fail(site, "true or false", v);
  }
  if (k === "enum") {
    return typeof v === "string" && spec.values!.includes(v) ? v : fail(site, spec.values!.join(" | "), v);
  }
  if (k === "list") {
    const of = spec.of ?? "str";
    const items: unknown[] | undefined = typeof v === "string" && text
      ? (v === "" ? [] : v.split(spec.sep ?? ","))
      : Array.isArray(v)
      ? v
      : undefined;
    if (!items || items.length === 0) return fail(site, expected(spec), v);
    return items.map((x, i) => {
      const r = item(of, spec, typeof x === "string" && of !== "str" ? x.trim() : x, text);
      if (!Array.isArray(r)) return r;
      const where = site.prefixSource ? `${site.source}: ${site.field}` : site.field;
      throw new ConfigError({
        source: site.source,
        field: site.field,
        message: `${where}: item ${i + 1} ${showValue(x)}: expected ${r[0]}`,
      });
    });
  }
  const r = item(isNum(k) ? k : "str", spec, v, text);
  return Array.isArray(r) ? fail(site, spec.words?.length ? expected(spec) : r[0], v) : r;
};

/** The devices a computing command can run on (cli/device.ts acquires them). */
export const DEVICES = ["auto", "gpu", "cpu"] as const;
/** `--device`: auto (WebGPU when an adapter exists, else the CPU), gpu (WebGPU or fail), cpu (the reference). */
export type DeviceChoice = typeof DEVICES[number];

/** The `--device` row every computing command's table shares. */
export const DEVICE_FLAG = {
  kind: "enum",
  values: DEVICES,
  default: "auto",
  help: "auto: WebGPU when an adapter exists, else the CPU (with a note);\n" +
    "gpu: WebGPU or fail; cpu: the CPU reference backend (f32, slow)",
} as const satisfies FlagSpec;

/** The defaults of a table, by key (flags without a default are left out; switches default to false). */
export const defaultsOf = (table: FlagTable): Record<string, FlagValue> =>
  Object.fromEntries(
    Object.entries(table).flatMap(([k, f]) =>
      f.default !== undefined
        ? [[k, f.default]]
        : f.kind === "bool"
        ? [[k, false]]
        : f.repeat
        ? [[k, []]]
        : []
    ),
  );
