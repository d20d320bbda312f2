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
        message: e instanceof Deno.errors.NotFound ? `${path}: no such file` : `${path}: cannot read (${e})`,
      }),
  });

/** Read and parse a JSON file. */
export const readJson = (path: string): Effect.Effect<unknown, FileFormatError> =>
  Effect.flatMap(readBytes(path), (b) =>
    Effect.try({
      try: () => JSON.parse(new TextDecoder().decode(b)) as unknown,
      catch: (e) =>
        new FileFormatError({ file: path, message: `${path}: not valid JSON (${(e as Error).message})` }),
    }));

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
