/**
 * Runs last (`deno test` takes the files of a folder in name order) and holds no GPU itself: the workaround
 * for the abort at exit under WebGPU's GL backend (issue 13 item 6, README "Known issues").
 *
 * The cause: glvnd's libEGL (Debian's 1.6.0) keeps a per-thread state on every thread that calls EGL, freed
 * by a thread-exit destructor. Its library destructor, run by exit(), frees every thread's state and leaves that
 * destructor registered. `deno test` runs each test file on a thread of its blocking pool, so the threads that
 * ran GPU files hold EGL state; at the end Deno shuts the pool down without waiting (tokio's
 * `shutdown_background`) and calls exit() at once, so those threads exit while, or after, libEGL's destructor
 * runs, and free their state a second time: "double free or corruption" or "corrupted size vs. prev_size",
 * exit code 134, after every test passed. Backtraces: the exiting pool threads in `__nptl_deallocate_tsd`
 * calling libEGL's thread-state destructor while the main thread is in `exit` -> `_dl_fini`.
 *
 * So this file makes sure that when the process exits, no pool thread still holds EGL state:
 * - the threads that ran the earlier files are idle, and tokio ends an idle pool thread after 10 s, running
 *   its destructor while libEGL is intact: wait until no pool thread but this one is left;
 * - this file's own thread may be one of them (the pool reuses idle threads): `eglReleaseThread` frees its
 *   state now.
 * Without GL (libEGL not loaded) there is nothing to do. A file run alone (`deno test tests/x_test.ts`) or a
 * shuffled run (`--shuffle`, where this file need not come last) does not get this; `deno task test` does.
 */

const POOL_THREAD = "tokio-runtime-w";
/**
 * Tokio ends a pool thread after 10 s idle, so after a sequential run this waits about 10 s. Under `--parallel`
 * it also waits for the files still running; the cap only bounds a thread that never goes idle.
 */
const WAIT_MS = 300_000;

const read = (path: string): string | undefined => {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
};

/** The ids of this process's blocking-pool threads (by thread name), or undefined without /proc. */
const poolThreads = (): number[] | undefined => {
  try {
    const ids: number[] = [];
    for (const t of Deno.readDirSync("/proc/self/task")) {
      if (read(`/proc/self/task/${t.name}/comm`)?.trim() === POOL_THREAD) ids.push(Number(t.name));
    }
    return ids;
  } catch {
    return undefined;
  }
};

const self = (): number | undefined => {
  const link = (() => {
    try {
      return Deno.readLinkSync("/proc/thread-self");
    } catch {
      return undefined;
    }
  })();
  const id = link ? Number(link.split("/").pop()) : NaN;
  return Number.isInteger(id) ? id : undefined;
};

Deno.test({
  name: "exit: no test thread holds glvnd EGL state when the process exits (GL abort workaround)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    if (!read("/proc/self/maps")?.includes("/libEGL.so.1")) return; // GL never loaded: nothing to release
    const me = self();
    const others = () => (poolThreads() ?? []).filter((id) => id !== me);
    const start = Date.now();
    while (others().length > 0 && Date.now() - start < WAIT_MS) await new Promise((r) => setTimeout(r, 200));
    const left = others();
    if (left.length > 0) {
      console.warn(`${left.length} blocking-pool thread(s) still alive after ${WAIT_MS} ms; exit may abort`);
    }
    const egl = Deno.dlopen("libEGL.so.1", { eglReleaseThread: { parameters: [], result: "u32" } });
    try {
      egl.symbols.eglReleaseThread();
    } finally {
      egl.close();
    }
  },
});
