/**
 * Math answer checking: the final answer of a completion (the last balanced `\boxed{...}` or `\fbox{...}`,
 * else a final "the answer is X"), normalized as the MATH benchmark's graders do, then compared as strings,
 * by value and symbolically (@cortex-js/compute-engine): fractions against decimals, equivalent radicals and
 * polynomials, tuples and intervals in order, sets and bare lists in any order.
 *
 * Every step's work is bounded, whatever the input: the boxed search looks at the last 8 `\boxed` at most and
 * scans at most MAX_ANSWER_CHARS after each; "the answer is" is looked for in the last 20,000 characters;
 * regular expressions have no nested quantifiers; the computer-algebra system sees only short, shallow
 * answers without sums, products, integrals, limits, factorials or exponent towers (on which it can run for
 * minutes). Those guard the common case; run the reward in a worker with a timeout (formats/rewards.ts does)
 * to be safe against anything else.
 */
import { ComputeEngine } from "@cortex-js/compute-engine";

/** Longest answer considered, in characters: a longer boxed content is no answer. */
export const MAX_ANSWER_CHARS = 2000;
/** How many `\boxed` / `\fbox` (from the last) are tried for a balanced argument. */
const MAX_BOXED_TRIES = 8;
/** "the answer is" is looked for in this many trailing characters. */
const TAIL_CHARS = 20_000;
/** The computer-algebra system sees answers this short and this shallow only. */
const MAX_CAS_CHARS = 300;
const MAX_CAS_DEPTH = 24;
/** Items of a tuple, set or list compared at most. */
const MAX_ITEMS = 64;

/** The argument of a macro at `j` (after its name): `{...}` balanced (escaped braces skipped), or `\boxed 5`. */
const argumentAt = (text: string, j: number): string | undefined => {
  let k = j;
  while (k < text.length && (text[k] === " " || text[k] === "\t")) k++;
  if (text[k] === "{") {
    let depth = 0;
    const end = Math.min(text.length, k + MAX_ANSWER_CHARS + 2);
    for (let i = k; i < end; i++) {
      const c = text[i];
      if (c === "\\") i++; // \{ \} \\ and macro names: the next character is not a brace of ours
      else if (c === "{") depth++;
      else if (c === "}" && --depth === 0) return text.slice(k + 1, i);
    }
    return undefined;
  }
  if (k > j) {
    // MATH's `\boxed 5` form: up to a dollar sign or the end of the line.
    let e = k;
    const end = Math.min(text.length, k + MAX_ANSWER_CHARS);
    while (e < end && text[e] !== "$" && text[e] !== "\n") e++;
    const s = text.slice(k, e).trim();
    return s === "" ? undefined : s;
  }
  return undefined;
};

/** The content of the last balanced `\boxed{...}` or `\fbox{...}` of `text`, if any. */
export const lastBoxed = (text: string): string | undefined => {
  let from = text.length;
  for (let tries = 0; tries < MAX_BOXED_TRIES && from > 0; tries++) {
    const b = text.lastIndexOf("\\boxed", from - 1), f = text.lastIndexOf("\\fbox", from - 1);
    const at = Math.max(b, f);
    if (at < 0) return undefined;
    const after = at + (at === b ? 6 : 5);
    if (!/[A-Za-z]/.test(text[after] ?? "")) {
      const arg = argumentAt(text, after);
      if (arg !== undefined) return arg;
    }
    from = at;
  }
  return undefined;
};

/** The answer after the last "answer is" of the text's tail: the rest of that line, one sentence or math span. */
const answerIsAnswer = (text: string): string | undefined => {
  const tail = text.length > TAIL_CHARS ? text.slice(-TAIL_CHARS) : text;
  const k = tail.toLowerCase().lastIndexOf("answer is");
  if (k < 0) return undefined;
  let rest = tail.slice(k + "answer is".length);
  const nl = rest.indexOf("\n");
  if (nl >= 0) rest = rest.slice(0, nl);
  rest = rest.replace(/^[\s:*]+/, "").replace(/\*\*/g, "");
  const spans: [string, string][] = [["$$", "$$"], ["$", "$"], ["\\(", "\\)"], ["\\[", "\\]"]];
  for (const [open, close] of spans) {
    if (rest.startsWith(open)) {
      const e = rest.indexOf(close, open.length);
      if (e > open.length) rest = rest.slice(open.length, e);
      break;
    }
  }
  const stop = rest.search(/\.(\s|$)/);
  if (stop >= 0) rest = rest.slice(0, stop);
  rest = rest.trim().replace(/[.;,!]+$/, "").trim();
  return rest === "" || rest.length > MAX_ANSWER_CHARS ? undefined : rest;
};

/** How the answer was found. */
export type AnswerSource = "boxed" | "answer-is";

/** The final answer of a completion: the last `\boxed{}` / `\fbox{}`, else a final "the answer is X". */
export const extractAnswer = (completion: string): { answer: string; source: AnswerSource } | undefined => {
  const boxed = lastBoxed(completion);
  if (boxed !== undefined && boxed.trim() !== "") return { answer: boxed.trim(), source: "boxed" };
  const said = answerIsAnswer(completion);
  return said === undefined ? undefined : { answer: said, source: "answer-is" };
};

/** Remove every `\name{...}` group (balanced) or, with `keep`, replace it by its content; bounded passes. */
const unwrapMacro = (s: string, names: readonly string[], keep: boolean): string => {
  let out = s;
  for (let pass = 0; pass < 50; pass++) {
    let best = -1, name = "";
    for (const n of names) {
      const i = out.indexOf(`\\${n}{`);
      if (i >= 0 && (best < 0 || i < best)) best = i, name = n;
    }
    if (best < 0) return out;
    const open = best + name.length + 1;
    const arg = argumentAt(out, open);
    if (arg === undefined) return out;
    out = out.slice(0, best) + (keep ? arg : "") + out.slice(open + arg.length + 2);
  }
  return out;
};

/** `\name{X}` spanning the whole string -> X (for each name, once). */
const unwrapWhole = (s: string, names: readonly string[]): string => {
  for (const n of names) {
    const m = new RegExp(`^\\\\${n}\\s*\\{`).exec(s);
    if (!m) continue;
    const arg = argumentAt(s, m[0].length - 1);
    if (arg !== undefined && m[0].length + arg.length + 1 === s.length) return arg.trim();
  }
  return s;
};

const TEXT_MACROS = ["text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mbox", "operatorname"];

/** Drop a trailing `\text{ units}` group after a value (MATH's _remove_right_units, for any unit words). */
const removeRightUnits = (s: string): string => {
  const t = s.trimEnd();
  if (!t.endsWith("}")) return s;
  for (const n of ["text", "mbox", "textrm", "mathrm"]) {
    const i = t.lastIndexOf(`\\${n}{`);
    if (i <= 0) continue;
    const arg = argumentAt(t, i + n.length + 1);
    if (arg === undefined || i + n.length + 1 + arg.length + 2 !== t.length) continue;
    const before = t.slice(0, i).trim();
    if (before !== "" && /^[\sA-Za-z^\d.\\]*$/.test(arg) && /[A-Za-z]/.test(arg)) return before;
  }
  return s;
};

/** Drop trailing unit words after a number ("5 cm", "12 square units"). */
const removeUnitWords = (s: string): string => {
  let i = s.length;
  while (i > 0 && /[A-Za-z ]/.test(s[i - 1])) i--;
  const words = s.slice(i);
  if (!/^ +[A-Za-z]{2}/.test(words)) return s;
  const before = s.slice(0, i).trimEnd();
  return /\d$/.test(before) ? before : s;
};

/** `\sqrt3` -> `\sqrt{3}`, `\frac12` -> `\frac{1}{2}` (MATH's _fix_sqrt and _fix_fracs). */
const fixSqrtFrac = (s: string): string =>
  s
    .replace(/\\sqrt\s*([0-9A-Za-z])/g, "\\sqrt{$1}")
    .replace(/\\frac\s*([0-9])\s*([0-9A-Za-z])/g, "\\frac{$1}{$2}")
    .replace(/\\frac\s*([0-9])\s*\{/g, "\\frac{$1}{")
    .replace(/\\frac\s*\{([^{}]*)\}\s*([0-9A-Za-z])/g, "\\frac{$1}{$2}");

/** A leading `x =`, `f(x) =`, `\theta =` or `x \in` (one variable on the left) removed. */
const stripVariable = (s: string): string => {
  const m = /^\s*([A-Za-z]|\\[A-Za-z]+)(_\{?[A-Za-z0-9]+\}?)?(\([A-Za-z]\))?\s*(=|\\in(?![A-Za-z]))/.exec(s);
  if (!m) return s;
  const rest = s.slice(m[0].length);
  return m[4] === "=" && rest.includes("=") ? s : rest;
};

/** Normalize an answer as the MATH graders do (strip_string, plus units, thousands separators, `x =`). */
export const normalizeAnswer = (answer: string): string => {
  let s = answer.length > MAX_ANSWER_CHARS ? answer.slice(0, MAX_ANSWER_CHARS) : answer;
  s = s.replace(/[\r\n]+/g, " ").trim();
  s = unwrapWhole(s, ["boxed", "fbox"]);
  s = s
    .replace(/\\!/g, "")
    .replace(/\\displaystyle/g, "")
    .replace(/\\[dtc]frac/g, "\\frac")
    .replace(/\\(left|right)\./g, "")
    .replace(/\\(left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)(?![A-Za-z])/g, "")
    .replace(/\^\s*\{\s*\\circ\s*\}/g, "")
    .replace(/\^\s*\\circ(?![A-Za-z])/g, "")
    .replace(/\\circ(?![A-Za-z])/g, "")
    .replace(/\\degree(?![A-Za-z])|°/g, "")
    .replace(/\\\$/g, "")
    .replace(/\$/g, "")
    .replace(/\\(quad|qquad)(?![A-Za-z])/g, " ")
    .replace(/(?<!\\)\\[,;: ]|~/g, " ")
    .replace(/\{,\}/g, ",");
  s = removeRightUnits(s);
  s = unwrapMacro(s, TEXT_MACROS, true);
  s = s.replace(/\\?%/g, "").trim();
  s = removeUnitWords(s);
  s = stripVariable(s);
  s = fixSqrtFrac(s);
  // Spaces go, but a macro name must not run into the letter after it (`\pi r` is not `\pir`).
  s = s.replace(/(\\[A-Za-z]+)\s+(?=[A-Za-z])/g, "$1{}").replace(/\s+/g, "");
  s = s.replace(/(^|[^\d])\.(\d)/g, "$10.$2");
  s = s.replace(/\.$/, "");
  // Thousands separators: only when the whole answer is one number written with them.
  if (/^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$/.test(s)) s = s.replace(/,/g, "");
  const slash = /^([+-]?\d+)\/(\d+)$/.exec(s);
  if (slash) s = `\\frac{${slash[1]}}{${slash[2]}}`;
  const choice = /^\(([A-Ea-e])\)$/.exec(s);
  if (choice) s = choice[1].toUpperCase();
  return s;
};

/** Depth of brackets ((, [, {) of a string. */
const depthOf = (s: string): number => {
  let d = 0, max = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "(" || c === "[" || c === "{") max = Math.max(max, ++d);
    else if (c === ")" || c === "]" || c === "}") d--;
  }
  return max;
};

/** Split at top-level occurrences of `sep` (brackets of every kind, `\\{` `\\}` too, counted together). */
const splitTop = (s: string, sep: string): string[] => {
  const out: string[] = [];
  let d = 0, start = 0;
  for (let i = 0; i < s.length; i++) {
    if (d === 0 && s.startsWith(sep, i)) {
      out.push(s.slice(start, i)), start = i + sep.length, i += sep.length - 1;
      continue;
    }
    const c = s[i];
    if (c === "\\") {
      if (s[i + 1] === "{") d++;
      else if (s[i + 1] === "}") d--;
      i++;
    } else if (c === "(" || c === "[" || c === "{") d++;
    else if (c === ")" || c === "]" || c === "}") d--;
  }
  out.push(s.slice(start));
  return out;
};

/** Whether the bracket opened at 0 (of length `open`) closes only at the end (length `close`). */
const wraps = (s: string, open: number, close: number): boolean => {
  let d = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    const escBrace = c === "\\" && (s[i + 1] === "{" || s[i + 1] === "}");
    if (escBrace) {
      d += s[i + 1] === "{" ? 1 : -1;
      i++;
    } else if (c === "(" || c === "[" || c === "{") d++;
    else if (c === ")" || c === "]" || c === "}") d--;
    if (d === 0 && i < s.length - 1 && i >= open - 1) return false;
  }
  return d === 0 && s.length >= open + close;
};

type Shape =
  | { readonly kind: "scalar"; readonly value: string }
  | { readonly kind: "seq"; readonly open: string; readonly close: string; readonly items: readonly string[] }
  | { readonly kind: "bag"; readonly items: readonly string[] }
  | { readonly kind: "union"; readonly pieces: readonly Shape[] };

/** The shape of a normalized answer: a union of intervals, a set, a tuple or interval, a bare list, a value. */
const shapeOf = (s: string, top = true): Shape => {
  if (top) {
    const pieces = splitTop(s, "\\cup");
    if (pieces.length > 1) return { kind: "union", pieces: pieces.map((p) => shapeOf(p, false)) };
  }
  if (s.startsWith("\\{") && s.endsWith("\\}") && wraps(s, 2, 2)) {
    const items = splitTop(s.slice(2, -2), ",");
    return { kind: "bag", items };
  }
  if (/^[([]/.test(s) && /[)\]]$/.test(s) && wraps(s, 1, 1)) {
    const items = splitTop(s.slice(1, -1), ",");
    if (items.length >= 2) return { kind: "seq", open: s[0], close: s[s.length - 1], items };
  }
  const items = splitTop(s, ",");
  if (items.length >= 2) return { kind: "bag", items };
  return { kind: "scalar", value: s };
};

/** Items of `a` and `b` matched one to one in any order. */
const sameBag = (a: readonly string[], b: readonly string[]): boolean => {
  if (a.length !== b.length || a.length > MAX_ITEMS) return false;
  const used = new Array<boolean>(b.length).fill(false);
  return a.every((x) => {
    const j = b.findIndex((y, k) => !used[k] && valuesEqual(x, y));
    if (j < 0) return false;
    used[j] = true;
    return true;
  });
};

const shapesEqual = (a: Shape, b: Shape): boolean => {
  if (a.kind === "union" || b.kind === "union") {
    if (a.kind !== "union" || b.kind !== "union" || a.pieces.length !== b.pieces.length) return false;
    const used = new Array<boolean>(b.pieces.length).fill(false);
    return a.pieces.every((p) => {
      const j = b.pieces.findIndex((q, k) => !used[k] && shapesEqual(p, q));
      return j >= 0 && (used[j] = true);
    });
  }
  if (a.kind === "seq" && b.kind === "seq") {
    return a.open === b.open && a.close === b.close && a.items.length === b.items.length &&
      a.items.length <= MAX_ITEMS && a.items.every((x, i) => valuesEqual(x, b.items[i]));
  }
  if (a.kind === "bag" && b.kind === "bag") return sameBag(a.items, b.items);
  if (a.kind === "scalar" && b.kind === "scalar") return valuesEqual(a.value, b.value);
  return false;
};

/** A plain number: integer, decimal, scientific, `\frac{p}{q}` of numbers, a mixed number `2\frac{1}{2}`. */
export const parseNumber = (s: string): number | undefined => {
  const t = s.replace(/^\+/, "");
  if (/^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return Number(t);
  const f = /^(-?)\\frac\{(-?\d+\.?\d*)\}\{(-?\d+\.?\d*)\}$/.exec(t);
  if (f) {
    const v = Number(f[2]) / Number(f[3]);
    return Number.isFinite(v) ? (f[1] ? -v : v) : undefined;
  }
  const m = /^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$/.exec(t);
  if (m && Number(m[4]) !== 0) {
    const v = Number(m[2]) + Number(m[3]) / Number(m[4]);
    return m[1] ? -v : v;
  }
  return undefined;
};

const INTEGER = /^[+-]?\d+$/;
const canonicalInteger = (s: string) => BigInt(s.replace(/^\+/, "")).toString();

const closeNumbers = (x: number, y: number, rel = 1e-6): boolean => {
  if (!Number.isFinite(x) || !Number.isFinite(y)) return x === y;
  if (Number.isInteger(x) && Number.isInteger(y) && Math.abs(x) < 2 ** 53 && Math.abs(y) < 2 ** 53) {
    return x === y;
  }
  return Math.abs(x - y) <= rel * Math.max(Math.abs(x), Math.abs(y), 1e-12);
};

let engine: ComputeEngine | undefined;
/** The shared compute engine, made on first use. */
const ce = (): ComputeEngine => (engine ??= new ComputeEngine());

/** Whether an answer is safe for the computer-algebra system (short, shallow, nothing that it may grind on). */
export const casSafe = (s: string): boolean =>
  s.length <= MAX_CAS_CHARS && depthOf(s) <= MAX_CAS_DEPTH &&
  !/\\(sum|prod|int|iint|iiint|oint|lim|binom|dbinom|tbinom|choose|Gamma|zeta)(?![A-Za-z])|!/.test(s) &&
  !/\d{16,}/.test(s) &&
  // No exponent towers (9^{9^{9^9}}) and no large literal exponents (x^{12345}).
  !/\^\s*\{[^{}]*\^/.test(s) && !/\^\s*\d{4,}/.test(s) && !/\^\s*\{\s*-?\d{4,}/.test(s) &&
  (s.match(/\^/g)?.length ?? 0) <= 8;

/** Fixed sample points for identity checks in free variables (deterministic: no random draws). */
const SAMPLES = [
  [0.5378, 1.8351, -0.7812, 2.2147],
  [1.3183, -0.4276, 0.9134, -1.6461],
  [-1.1779, 0.6892, 1.4617, 0.3321],
];

type Expr = NonNullable<ReturnType<ComputeEngine["parse"]>>;
const numericValue = (e: Expr): number | undefined => {
  const n = e.N();
  const re = (n as unknown as { re?: number }).re;
  const im = (n as unknown as { im?: number }).im ?? 0;
  return typeof re === "number" && Number.isFinite(re) && Math.abs(im) < 1e-12 ? re : undefined;
};

/** Two expressions equal as values, or as functions of their (same) free variables at the sample points. */
const casEqual = (a: string, b: string): boolean => {
  try {
    const A = ce().parse(a), B = ce().parse(b);
    if (!A || !B || !A.isValid || !B.isValid) return false;
    if (A.isSame(B)) return true;
    const ua = [...A.unknowns].sort(), ub = [...B.unknowns].sort();
    if (ua.length === 0 && ub.length === 0) {
      if (A.isEqual(B) === true) return true;
      const x = numericValue(A), y = numericValue(B);
      return x !== undefined && y !== undefined && closeNumbers(x, y, 1e-9);
    }
    if (ua.length !== ub.length || ua.some((v, i) => v !== ub[i]) || ua.length > 4) return false;
    let agreed = 0;
    for (const pt of SAMPLES) {
      const subs = Object.fromEntries(ua.map((v, i) => [v, ce().number(pt[i])]));
      const x = numericValue(A.subs(subs)), y = numericValue(B.subs(subs));
      if (x === undefined && y === undefined) continue;
      if (x === undefined || y === undefined || !closeNumbers(x, y, 1e-8)) return false;
      agreed++;
    }
    return agreed >= 2;
  } catch {
    return false;
  }
};

/** Two single values equal: as strings, case-insensitively as words, as numbers, or symbolically. */
const valuesEqual = (a: string, b: string): boolean => {
  if (a === b) return true;
  if (a === "" || b === "") return false;
  if (/^[A-Za-z ]+$/.test(a) && /^[A-Za-z ]+$/.test(b)) return a.toLowerCase() === b.toLowerCase();
  if (INTEGER.test(a) && INTEGER.test(b)) return canonicalInteger(a) === canonicalInteger(b);
  const x = parseNumber(a), y = parseNumber(b);
  if (x !== undefined && y !== undefined) return closeNumbers(x, y);
  // Equations: the same up to moving terms across and a sign (x+y=3 against 3=y+x).
  const ea = splitTop(a, "="), eb = splitTop(b, "=");
  if (ea.length === 2 && eb.length === 2) {
    if (!casSafe(a) || !casSafe(b)) return false;
    const da = `(${ea[0]})-(${ea[1]})`, db = `(${eb[0]})-(${eb[1]})`;
    return casEqual(da, db) || casEqual(da, `-(${eb[0]})+(${eb[1]})`);
  }
  if (ea.length !== 1 || eb.length !== 1) return false;
  return casSafe(a) && casSafe(b) && casEqual(a, b);
};

/** Whether two answers are equivalent (both normalized first); bounded work on any input. */
export const answersEqual = (predicted: string, reference: string): boolean => {
  if (predicted.length > MAX_ANSWER_CHARS || reference.length > MAX_ANSWER_CHARS) return false;
  const a = normalizeAnswer(predicted), b = normalizeAnswer(reference);
  if (a === b) return a !== "";
  if (a === "" || b === "") return false;
  return shapesEqual(shapeOf(a), shapeOf(b));
};

/** The grade of a completion against a reference answer (a reference holding `\boxed{}` gives its content). */
export interface MathGrade {
  /** The extracted answer equals the reference (normalized, then by value or symbolically). */
  readonly correct: boolean;
  /** The answer found in the completion, if any. */
  readonly extracted?: string;
  /** Where that answer was found, if any. */
  readonly source?: AnswerSource;
}

/** Grade a completion: extract its final answer and compare it to the reference. */
export const gradeMath = (completion: string, groundTruth: string): MathGrade => {
  const found = extractAnswer(completion);
  if (!found) return { correct: false };
  const ref = groundTruth.includes("\\boxed") || groundTruth.includes("\\fbox")
    ? lastBoxed(groundTruth) ?? groundTruth
    : groundTruth;
  return { correct: answersEqual(found.answer, ref), extracted: found.answer, source: found.source };
};
