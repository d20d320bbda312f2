/**
 * Objectives from TypeScript modules named by a path (a `--objective` flag or a config field): the module's
 * file URL, built portably (POSIX and Windows paths, relative to the working folder, percent-encoded), and
 * the one loader every command uses. The export rule: `path#name` picks the export `name`; a bare path takes
 * the default export, else an export named `objective`. The value is checked by the objective codec.
 */
import { ConfigError } from "../core/errors.ts";
import { decodeObjective } from "../objectives/codec.ts";
import type { Objective } from "../objectives/objective.ts";

/** How to read a path (defaults: this process's working folder and operating system). */
export interface PathOptions {
  readonly cwd?: string;
  /** Read `\` as a separator and `C:/...` as a drive (default: on Windows). */
  readonly windows?: boolean;
}

const isWindows = () => Deno.build.os === "windows";

/** Percent-encode every segment (a `C:` drive segment stays as it is). */
const encodeSegments = (p: string) =>
  p.split("/").map((s, i) => (i === 0 && /^[A-Za-z]:$/.test(s) ? s : encodeURIComponent(s))).join("/");

/** A path as a URL (absolute: `file:...`) or as a relative reference (to resolve against a folder URL). */
const reference = (path: string, windows: boolean): string => {
  const p = windows ? path.replaceAll("\\", "/") : path;
  if (windows && /^[A-Za-z]:\//.test(p)) return `file:///${encodeSegments(p)}`;
  if (windows && p.startsWith("//")) return `file://${encodeSegments(p.slice(2))}`; // UNC: //server/share/...
  return encodeSegments(p);
};

/** The file URL of a folder (with the trailing slash URL resolution needs). */
const folderUrl = (dir: string, windows: boolean): string => {
  const d = windows ? dir.replaceAll("\\", "/") : dir;
  const r = reference(d.endsWith("/") ? d : `${d}/`, windows);
  return r.startsWith("file:") ? r : `file://${r.startsWith("/") ? "" : "/"}${r}`;
};

/** The file URL of a module path; a `file:` URL is returned as it is. */
export const moduleUrl = (path: string, opts: PathOptions = {}): string => {
  if (/^file:/i.test(path)) return new URL(path).href;
  const windows = opts.windows ?? isWindows();
  return new URL(reference(path, windows), folderUrl(opts.cwd ?? Deno.cwd(), windows)).href;
};

/** The usage error of a module reference: `<field> <spec>: <message>`. */
export const moduleProblem = (spec: string, field: string, message: string): ConfigError =>
  new ConfigError({ source: spec, field, message: `${field} ${spec}: ${message}` });
const problem = moduleProblem;

/** A module reference split into its path and, after a final `#`, the export it names (a JS identifier). */
export const splitExport = (spec: string): { readonly path: string; readonly name?: string } => {
  const m = /^(.+)#([A-Za-z_$][\w$]*)$/.exec(spec);
  return m ? { path: m[1], name: m[2] } : { path: spec };
};

/**
 * Import the module a reference (`path` or `path#name`) names; a failure to import is a ConfigError naming
 * `field`, the reference and the first line of the import's error.
 */
export const importModule = async (
  spec: string,
  field: string,
): Promise<{ readonly path: string; readonly name?: string; readonly mod: Record<string, unknown> }> => {
  const { path, name } = splitExport(spec);
  try {
    return { path, name, mod: await import(moduleUrl(path)) };
  } catch (e) {
    throw problem(spec, field, `cannot import the module (${(e as Error).message.split("\n")[0]})`);
  }
};

const decodes = (value: unknown): boolean => {
  try {
    decodeObjective("", JSON.parse(JSON.stringify(value)));
    return true;
  } catch {
    return false;
  }
};

/**
 * Import the module `spec` names (`path` or `path#export`) and decode its Objective: the named export, else the
 * default export, else `objective`. Every failure is a ConfigError (a usage error) naming `field` and the
 * reference: cannot import, no such export (listing the exports that are Objectives), not an Objective.
 */
export const loadObjectiveModule = async (spec: string, field = "--objective"): Promise<Objective> => {
  const { path, name, mod } = await importModule(spec, field);
  const candidates = () => Object.keys(mod).filter((k) => decodes(mod[k]));
  const pick = (names: string[]) => `pick one with ${field} ${path}#${names[0]}`;
  if (name !== undefined && !(name in mod)) {
    const names = candidates();
    throw problem(
      spec,
      field,
      `the module has no export named ${JSON.stringify(name)}; ${
        names.length
          ? `its Objective exports: ${names.join(", ")} (${pick(names)})`
          : "it exports no Objective"
      }`,
    );
  }
  const key = name ?? ("default" in mod ? "default" : "objective" in mod ? "objective" : undefined);
  if (key === undefined) {
    const names = candidates();
    throw problem(
      spec,
      field,
      names.length
        ? `the module has no default export and no export named \`objective\`; its Objective exports: ${
          names.join(", ")
        } (${pick(names)})`
        : "the module exports no Objective (expected a default export, an export named `objective`, or path#name)",
    );
  }
  const value = mod[key];
  if (typeof value === "function") {
    throw problem(
      spec,
      field,
      `the export ${
        JSON.stringify(key)
      } is a function, not an Objective (export the value it returns, e.g. \`export const o = ${key}(...)\`)`,
    );
  }
  try {
    return decodeObjective(spec, JSON.parse(JSON.stringify(value ?? null)));
  } catch (e) {
    throw problem(
      spec,
      field,
      `the export ${JSON.stringify(key)} is not a valid Objective: ${(e as Error).message}`,
    );
  }
};
