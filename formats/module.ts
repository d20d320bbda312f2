/**
 * Objectives from TypeScript modules named by a path (a `--objective` flag or a config field): the module's
 * file URL, built portably (POSIX and Windows paths, relative to the working folder, percent-encoded), and
 * the one loader every command uses. The export rule: the default export, else an export named `objective`;
 * the value is checked by the objective codec.
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

const problem = (path: string, field: string, message: string) =>
  new ConfigError({ source: path, field, message: `${field} ${path}: ${message}` });

/**
 * Import the module at `path` and decode its Objective (default export, else `objective`). Every failure is a
 * ConfigError (a usage error) naming `field` and the path: cannot import, no such export, not an Objective.
 */
export const loadObjectiveModule = async (path: string, field = "--objective"): Promise<Objective> => {
  let mod: Record<string, unknown>;
  try {
    mod = await import(moduleUrl(path));
  } catch (e) {
    throw problem(path, field, `cannot import the module (${(e as Error).message.split("\n")[0]})`);
  }
  const value = mod.default ?? mod.objective;
  if (value === undefined) {
    throw problem(
      path,
      field,
      "the module exports no Objective (expected a default export or an export named `objective`)",
    );
  }
  try {
    return decodeObjective(path, JSON.parse(JSON.stringify(value)));
  } catch (e) {
    throw problem(path, field, `the export is not a valid Objective: ${(e as Error).message}`);
  }
};
