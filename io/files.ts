/** File effects: reading with errors that name the file, and atomic writes (temp file, then rename). */
import { Effect } from "effect";
import { FileFormatError } from "../core/errors.ts";

/** Read a whole file; a missing or unreadable file is a FileFormatError naming it. */
export const readBytes = (path: string): Effect.Effect<Uint8Array, FileFormatError> =>
  Effect.tryPromise({
    try: () => Deno.readFile(path),
    catch: (e) =>
      new FileFormatError({
        file: path,
        message: e instanceof Deno.errors.NotFound
          ? `${path}: no such file`
          : e instanceof Deno.errors.IsADirectory
          ? `${path}: is a folder, expected a file`
          : `${path}: cannot read (${e})`,
      }),
  });

/** A parser's message made printable: control characters escaped, at most `max` characters. */
export const printable = (s: string, max = 160): string => {
  let p = "";
  for (const c of s) {
    const k = c.codePointAt(0)!;
    p += k < 0x20 || (k >= 0x7f && k <= 0x9f) || k === 0xfffd ? `\\u${k.toString(16).padStart(4, "0")}` : c;
  }
  return p.length > max ? `${p.slice(0, max - 3)}...` : p;
};

/** Parse JSON text read from `path`: a file that is not UTF-8 or not JSON is a FileFormatError naming it. */
export const parseJsonBytes = (path: string, b: Uint8Array): unknown => {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(b);
  } catch {
    const at = firstBadUtf8(b);
    throw new FileFormatError({
      file: path,
      message: `${path}: not UTF-8 text (${
        at < b.length
          ? `invalid byte 0x${b[at].toString(16).padStart(2, "0")} at offset ${at}`
          : "unfinished character at the end"
      }); ` +
        "expected a JSON file (a binary file?)",
    });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new FileFormatError({
      file: path,
      message: `${path}: not valid JSON (${printable(e instanceof Error ? e.message : String(e))})`,
    });
  }
};

/** The offset of the first byte that breaks UTF-8 (a lead byte without its continuation bytes, or a stray one). */
const firstBadUtf8 = (b: Uint8Array): number => {
  // A prefix "decodes" when it holds no invalid sequence (streaming: an unfinished last character is fine).
  const ok = (n: number) => {
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(b.subarray(0, n), { stream: true });
      return true;
    } catch {
      return false;
    }
  };
  if (ok(b.length)) return b.length; // only the end is unfinished
  let lo = 0, hi = b.length; // ok(lo), !ok(hi)
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (ok(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
};

/** Read and parse a JSON file. */
export const readJson = (path: string): Effect.Effect<unknown, FileFormatError> =>
  Effect.flatMap(
    readBytes(path),
    (b) => Effect.try({ try: () => parseJsonBytes(path, b), catch: (e) => e as FileFormatError }),
  );

/**
 * The real path of `path` (symlinks resolved); a missing path is undefined. Other failures (no permission, a
 * loop of links) are a FileFormatError naming it.
 */
export const realPath = (path: string): Effect.Effect<string | undefined, FileFormatError> =>
  Effect.tryPromise({
    try: () =>
      Deno.realPath(path).catch((e) => (e instanceof Deno.errors.NotFound ? undefined : Promise.reject(e))),
    catch: (e) => new FileFormatError({ file: path, message: `${path}: cannot resolve (${e})` }),
  });

/**
 * Why a relative file name read from a folder's own files (an index's weight_map, a tokenizer's file names)
 * cannot be used, lexically: empty, absolute (`/x`, a backslash, a drive letter), or with a `..` segment. Undefined when fine.
 */
export const relativeNameProblem = (name: string): string | undefined => {
  if (name === "") return "is empty";
  if (name.includes("\0")) return "contains a NUL character";
  if (/^[\\/]/.test(name) || /^[A-Za-z]:/.test(name)) return "is an absolute path";
  if (name.split(/[\\/]/).some((s) => s === "..")) return 'has a ".." segment';
  return undefined;
};

/**
 * The folders files of `dir` may resolve into: `dir`'s real path and, where `dir` is a snapshot of the Hugging
 * Face cache (`.../models--org--name/snapshots/<revision>`, whose files are links into `../../blobs`), that
 * repository's `blobs` folder. Undefined when `dir` does not exist.
 */
export const folderRoots = (dir: string): Effect.Effect<readonly string[] | undefined, FileFormatError> =>
  Effect.map(realPath(dir), (real) => {
    if (real === undefined) return undefined;
    const m = /^(.*[\\/]models--[^\\/]+)[\\/]snapshots[\\/][^\\/]+$/.exec(real);
    return m ? [real, `${m[1]}/blobs`] : [real];
  });

/** Whether `path` (a real path) is inside one of `roots` (real paths). */
export const isInside = (path: string, roots: readonly string[]): boolean =>
  roots.some((r) => path === r || path.startsWith(r.endsWith("/") ? r : `${r}/`));

/**
 * Check that `name` (relative to `dir`) names a file that resolves inside the folder (see folderRoots): no
 * `..`, no absolute path, no symbolic link that leads out. Returns `dir/name`; a missing file is fine here
 * (the read that follows names it). `what(problem)` words the error, which names `file` (where the name came
 * from: the index file, or the folder itself).
 */
export const insideFolder = (
  dir: string,
  roots: readonly string[],
  name: string,
  file: string,
  what: (problem: string) => string,
): Effect.Effect<string, FileFormatError> =>
  Effect.gen(function* () {
    const lexical = relativeNameProblem(name);
    if (lexical) return yield* new FileFormatError({ file, message: what(lexical) });
    const path = `${dir}/${name}`;
    const real = yield* realPath(path);
    if (real !== undefined && !isInside(real, roots)) {
      return yield* new FileFormatError({
        file,
        message: what(`resolves to ${real}, outside the folder ${roots[0]} (a symbolic link that leads out)`),
      });
    }
    return path;
  });

/**
 * Write a file atomically: the bytes go to `path.tmp-<pid>-<n>`, are flushed, then renamed over `path`, so a
 * reader (or a crash) sees the old file or the new one, never a mix.
 */
let tmpCounter = 0;
export const writeAtomic = (path: string, data: Uint8Array | string): Effect.Effect<void, FileFormatError> =>
  Effect.tryPromise({
    try: async () => {
      const tmp = `${path}.tmp-${Deno.pid}-${tmpCounter++}`;
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      try {
        const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
        try {
          let off = 0;
          while (off < bytes.length) off += await f.write(bytes.subarray(off));
          await f.sync();
        } finally {
          f.close();
        }
        await Deno.rename(tmp, path);
      } catch (e) {
        await Deno.remove(tmp).catch(() => {});
        throw e;
      }
    },
    catch: (e) => new FileFormatError({ file: path, message: `${path}: cannot write (${e})` }),
  });

/** True when a path exists. */
export const exists = (path: string): Effect.Effect<boolean> =>
  Effect.promise(() => Deno.stat(path).then(() => true, () => false));
