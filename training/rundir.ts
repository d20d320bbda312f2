/**
 * The layout of a run folder, in one place: the marker `bupo-run.json`, the logs and reports a run writes,
 * `latest.json`, and the checkpoint folders `checkpoints/step-NNNNNN` with what each holds besides the model and
 * tokenizer files. And the rule for where a run may write: a new or empty folder, or one that the marker says is
 * a bupo run (resumed or overwritten on request); never a model folder, never inside `--model`, never anything
 * else that is not empty. `--overwrite` removes only the run's own files.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { readJson, writeAtomic } from "../io/files.ts";

/** The folder name of the checkpoint of `step`: `step-000042`. */
export const stepName = (step: number): string => `step-${String(step).padStart(6, "0")}`;

/** Whether a folder name is a checkpoint's (`step-` and digits). */
export const isStepName = (name: string): boolean => /^step-\d+$/.test(name);

/** The files of one checkpoint folder `ck`, besides the model (formats/hf.ts) and tokenizer files. */
export const checkpointFiles = (ck: string) => ({
  /** AdamW moments, one tensor per parameter and moment (`m.<name>`, `v.<name>`). */
  optimizer: `${ck}/optimizer.safetensors`,
  /** Step, optimizer step, objective and config (`CheckpointState`). */
  state: `${ck}/state.json`,
});

/** The marker file of a run folder, written first (atomically) when the folder is created. */
export const RUN_MARKER = "bupo-run.json";
/** The marker file of a comparison folder (training/compare.ts). */
export const COMPARE_MARKER = "bupo-compare.json";
/** The run folder format this code writes and reads (the marker's `version`). */
export const RUN_FORMAT_VERSION = 1;

/** Paths of the run folder `dir`. */
export const runDir = (dir: string) => ({
  dir,
  /** `{ "format": "bupo-run", "version": 1, "created": ISO time }`: this folder is a bupo run. */
  marker: `${dir}/${RUN_MARKER}`,
  /** One line of step metrics per step. */
  metrics: `${dir}/metrics.jsonl`,
  /** One line per evaluation. */
  evals: `${dir}/eval.jsonl`,
  /** Example completions of every evaluation. */
  samples: `${dir}/samples.jsonl`,
  plots: `${dir}/plots.svg`,
  /** The resolved run config. */
  config: `${dir}/config.json`,
  /** `--layer auto`: the entropy flow of the base model and the boundary layer chosen from it (training/boundary.ts). */
  boundary: `${dir}/boundary.json`,
  /** The objective in its text form. */
  objective: `${dir}/objective.txt`,
  /** `{ "checkpoint": "checkpoints/step-NNNNNN", "step": N }`: the newest complete checkpoint. */
  latest: `${dir}/latest.json`,
  checkpoints: `${dir}/checkpoints`,
  /** The checkpoint folder of `step`. */
  checkpoint: (step: number) => `${dir}/checkpoints/${stepName(step)}`,
  /** The checkpoint of `step` relative to the run folder, as latest.json names it. */
  checkpointRef: (step: number) => `checkpoints/${stepName(step)}`,
  /** A folder named by latest.json (relative to the run folder). */
  resolve: (rel: string) => `${dir}/${rel}`,
  /** Where the checkpoint of `step` is written before it is renamed into place (one per process). */
  checkpointTmp: (step: number) => `${dir}/checkpoints/.tmp-${stepName(step)}-${Deno.pid}`,
});

export type RunDir = ReturnType<typeof runDir>;

/** The run's own files at the top of its folder (besides the marker and `checkpoints/`). */
const RUN_FILES = [
  "latest.json",
  "config.json",
  "objective.txt",
  "metrics.jsonl",
  "eval.jsonl",
  "samples.jsonl",
  "plots.svg",
] as const;

/** What a folder holds, as far as the right to write there goes. */
export type FolderState =
  | { readonly kind: "new" }
  | {
    readonly kind: "run";
    /** Whether latest.json exists (there is a checkpoint to resume from). */
    readonly checkpoint: boolean;
    /** Whether the run's config.json exists. */
    readonly config: boolean;
    /** False for a run written before markers (latest.json and checkpoints/ but no bupo-run.json). */
    readonly marker: boolean;
  };

/** How a run treats its folder: start (new or empty folders only), continue, or start over. */
export type FolderMode = "fresh" | "resume" | "overwrite";

const outError = (message: string) => new ConfigError({ source: "flags", field: "--out", message });

/** The names in a folder (sorted), null when nothing is there, "file" when the path is not a folder. */
const entriesOf = (dir: string): Effect.Effect<string[] | null | "file", FileFormatError> =>
  Effect.tryPromise({
    try: async () => {
      const st = await Deno.stat(dir).catch((e) => {
        if (e instanceof Deno.errors.NotFound) return null;
        throw e;
      });
      if (st === null) return null;
      if (!st.isDirectory) return "file" as const;
      const names: string[] = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
      return names.sort();
    },
    catch: (e) => new FileFormatError({ file: dir, message: `${dir}: cannot read the folder (${e})` }),
  });

/** The entries of `out`, or a ConfigError naming --out when it is a file. */
const folderEntries = (out: string) =>
  Effect.flatMap(
    entriesOf(out),
    (x) =>
      x === "file"
        ? Effect.fail(
          outError(`--out ${out} exists and is not a folder; a run writes into a folder of its own`),
        )
        : Effect.succeed(x),
  );

/** Why `entries` (a folder's names) make a Hugging Face model folder, or null. */
export const modelFolderReason = (entries: readonly string[]): string | null => {
  const has = (n: string) => entries.includes(n);
  if (has("config.json") && has("model.safetensors")) return "it holds config.json and model.safetensors";
  if (has("config.json") && has("model.safetensors.index.json")) {
    return "it holds config.json and model.safetensors.index.json";
  }
  if (has("tokenizer.json")) return "it holds tokenizer.json";
  return null;
};

/** Check a marker file: a bupo marker of `format` in a version this code reads. */
const checkMarker = (path: string, format: string) =>
  Effect.flatMap(readJson(path), (j) => {
    const m = j as { format?: unknown; version?: unknown } | null;
    if (!m || typeof m !== "object" || m.format !== format || !Number.isInteger(m.version)) {
      return Effect.fail(
        new FileFormatError({
          file: path,
          message: `${path}: not a bupo marker (expected { "format": "${format}", "version": N })`,
        }),
      );
    }
    if ((m.version as number) > RUN_FORMAT_VERSION) {
      return Effect.fail(
        new FileFormatError({
          file: path,
          message:
            `${path}: written by a newer bupo (folder format version ${m.version}; this one reads up to ${RUN_FORMAT_VERSION})`,
        }),
      );
    }
    return Effect.void;
  });

/** Write a marker file atomically. */
export const writeMarker = (path: string, format: string): Effect.Effect<void, FileFormatError> =>
  writeAtomic(
    path,
    JSON.stringify({ format, version: RUN_FORMAT_VERSION, created: new Date().toISOString() }) + "\n",
  );

/**
 * A path made absolute, `.` and `..` resolved, with the symbolic links of its longest existing prefix resolved
 * (so two names of one folder compare equal even when the folder does not exist yet).
 */
export const canonicalPath = (path: string): string => {
  const abs = path.startsWith("/") || /^[A-Za-z]:[\\/]/.test(path) ? path : `${Deno.cwd()}/${path}`;
  const parts: string[] = [];
  for (const p of abs.replaceAll("\\", "/").split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") parts.pop();
    else parts.push(p);
  }
  const root = /^[A-Za-z]:$/.test(parts[0] ?? "") ? "" : "/";
  for (let i = parts.length; i >= 0; i--) {
    const head = root + parts.slice(0, i).join("/");
    try {
      const real = Deno.realPathSync(head || "/").replaceAll("\\", "/");
      const rest = parts.slice(i);
      return rest.length ? `${real.replace(/\/$/, "")}/${rest.join("/")}` : real;
    } catch { /* does not exist: try the parent */ }
  }
  return root + parts.join("/");
};

/** Whether `inner` is `outer` or lies inside it (canonical paths). */
export const sameOrInside = (inner: string, outer: string): boolean => {
  const a = canonicalPath(inner), b = canonicalPath(outer).replace(/\/$/, "");
  return a === b || a.startsWith(`${b}/`);
};

const listed = (entries: readonly string[]) =>
  `${entries.slice(0, 5).join(", ")}${entries.length > 5 ? `, ... (${entries.length} entries)` : ""}`;

/**
 * Decide whether a run may write into `out` (`mode`: a fresh start, --resume or --overwrite) with model folder
 * `model`. Refused, with a ConfigError naming --out: a model folder; `out` equal to or inside `model`, or
 * `model` inside `out`; a file; a non-empty folder that is not a bupo run; a bupo run without --resume or
 * --overwrite; --resume with nothing to resume. Reads only; writes nothing.
 */
export const claimRunFolder = (
  out: string,
  model: string,
  mode: FolderMode,
): Effect.Effect<FolderState, ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    const entries = yield* folderEntries(out);
    const modelReason = entries ? modelFolderReason(entries) : null;
    if (modelReason) {
      return yield* outError(
        `--out ${out} is a model folder (${modelReason}); a run never writes into a model folder: choose another --out`,
      );
    }
    if (sameOrInside(out, model)) {
      return yield* outError(
        `--out ${out} is ${
          canonicalPath(out) === canonicalPath(model) ? "the model folder" : "inside the model folder"
        } --model ${model}; choose an --out outside it`,
      );
    }
    if (sameOrInside(model, out)) {
      return yield* outError(
        `--model ${model} lies inside --out ${out}; the run would write (and prune checkpoints) around its own base model: choose another --out`,
      );
    }
    if (entries === null || entries.length === 0) {
      if (mode === "resume") {
        return yield* outError(
          `--resume: ${out} holds no run to resume (${entries === null ? "no such folder" : "empty folder"})`,
        );
      }
      return { kind: "new" } as const;
    }
    const rd = runDir(out);
    const marker = entries.includes(RUN_MARKER);
    const checkpoint = entries.includes("latest.json");
    if (marker) yield* checkMarker(rd.marker, "bupo-run");
    else if (!(checkpoint && entries.includes("checkpoints"))) {
      return yield* outError(
        `--out ${out} is not empty and is not a bupo run (no ${RUN_MARKER}; it holds ${
          listed(entries)
        }); a run writes only into a new or empty folder or into a bupo run's folder: choose another --out`,
      );
    }
    const state = { kind: "run", checkpoint, config: entries.includes("config.json"), marker } as const;
    if (mode === "fresh") {
      return yield* outError(
        `--out ${out} already holds a bupo run (${
          checkpoint ? "with checkpoints" : "without a checkpoint yet"
        }); pass --resume to continue it, --overwrite to start it over (removing only the run's files), or choose another --out`,
      );
    }
    return state;
  });

const removeIfThere = (path: string, recursive = false) =>
  Deno.remove(path, { recursive }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });

/** Whether a name is a temporary file of `writeAtomic` for one of the run's files. */
const isTempOfRunFile = (name: string) =>
  [...RUN_FILES, RUN_MARKER].some((f) => name.startsWith(`${f}.tmp-`));

/**
 * Remove what a killed process left half-written in a run folder: temporary checkpoint folders
 * (`checkpoints/.tmp-*`) and temporary files of the run's files. A run folder is used by one process at a time.
 */
export const removeStaleTemps = (dir: string): Effect.Effect<void, FileFormatError> =>
  Effect.tryPromise({
    try: async () => {
      const rd = runDir(dir);
      for await (const e of Deno.readDir(dir)) {
        if (isTempOfRunFile(e.name)) await removeIfThere(`${dir}/${e.name}`);
      }
      try {
        for await (const e of Deno.readDir(rd.checkpoints)) {
          if (e.name.startsWith(".tmp-")) await removeIfThere(`${rd.checkpoints}/${e.name}`, true);
        }
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    },
    catch: (e) =>
      new FileFormatError({ file: dir, message: `${dir}: cannot clean up temporary files (${e})` }),
  });

/**
 * `--overwrite`: remove the run's own files from its folder, latest.json first and config.json second (a crash
 * part-way leaves a run without a checkpoint, which --resume starts over), then the logs, reports and checkpoint
 * folders. The marker stays; anything else in the folder is left alone.
 */
export const removeRunFiles = (dir: string): Effect.Effect<void, FileFormatError> =>
  Effect.tryPromise({
    try: async () => {
      const rd = runDir(dir);
      for (const f of RUN_FILES) await removeIfThere(`${dir}/${f}`);
      try {
        for await (const e of Deno.readDir(rd.checkpoints)) {
          if (isStepName(e.name) || e.name.startsWith(".tmp-")) {
            await removeIfThere(`${rd.checkpoints}/${e.name}`, true);
          }
        }
        await Deno.remove(rd.checkpoints).catch(() => {}); // only when nothing else is in it
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    },
    catch: (e) => new FileFormatError({ file: dir, message: `${dir}: cannot remove the run's files (${e})` }),
  }).pipe(Effect.andThen(removeStaleTemps(dir)));

/**
 * Claim `out` as a comparison folder (training/compare.ts): a new or empty folder (the marker is written), or
 * one with the comparison marker (or, from before markers, a report.json). A model folder, `out` inside `model`,
 * and any other non-empty folder are errors naming `--out`.
 */
export const claimCompareFolder = (
  out: string,
  model: string,
): Effect.Effect<void, ConfigError | FileFormatError> =>
  Effect.gen(function* () {
    const entries = yield* folderEntries(out);
    const reason = entries ? modelFolderReason(entries) : null;
    if (reason) return yield* outError(`--out ${out} is a model folder (${reason}); choose another --out`);
    if (sameOrInside(out, model) || sameOrInside(model, out)) {
      return yield* outError(`--out ${out} and the model folder ${model} overlap; choose another --out`);
    }
    const marker = `${out}/${COMPARE_MARKER}`;
    if (entries?.includes(COMPARE_MARKER)) return yield* checkMarker(marker, "bupo-compare");
    if (entries && entries.length > 0 && !entries.includes("report.json")) {
      return yield* outError(
        `--out ${out} is not empty and is not a bupo comparison (no ${COMPARE_MARKER}; it holds ${
          listed(entries)
        }): choose another --out`,
      );
    }
    yield* Effect.tryPromise({
      try: () => Deno.mkdir(out, { recursive: true }),
      catch: (e) => new FileFormatError({ file: out, message: `${out}: cannot create (${e})` }),
    });
    yield* writeMarker(marker, "bupo-compare");
  });
