/**
 * `deno task fuzz`: the fault tests as one seeded, time-bounded suite. Mutated safetensors files (headers and
 * bodies), model folders (config.json, model.safetensors.index.json, shards, links out), tokenizer folders,
 * rollout files, objective JSON, train config files and flag vectors go to the loaders, the parsers and the
 * CLIs' main(argv), in a worker. A case fails on a stack trace, an unnamed error (not a tagged error whose
 * message names the file or the flag), a hang (the per-case timeout; the worker is replaced) or a change to a
 * file it did not own (each case's inputs are hashed before and after it runs; the repository's models/,
 * tests/fixtures/, deno.json, the templates and the working folder's entries are compared around the run).
 * Prints the cases tried, the clean errors and the failures, with the command that replays each failure.
 */
import { defineCommand, helpText, parseFlags } from "../../cli/flags.ts";
import { runMain } from "../../cli/main.ts";
import { hashTree, targetOf, treeChanges } from "./case.ts";
import { Rng } from "./mutate.ts";
import { buildTemplates, type CaseResult, TARGETS, type Templates } from "./targets.ts";

/** The settings of one run. */
export interface FuzzOptions {
  readonly seed: number;
  /** Stop after this many seconds (cases already started finish). */
  readonly seconds: number;
  /** Stop after this many cases. */
  readonly cases: number;
  /** A case running longer than this is a hang (seconds). */
  readonly timeout: number;
  /** Only these targets (default: all). */
  readonly targets?: readonly string[];
  /** Run only case `only` (replay a failure; its folder is kept). */
  readonly only?: number;
  /** Keep every case's folder. */
  readonly keep?: boolean;
  /** Progress and failures as they happen (default: only the summary). */
  readonly log?: (line: string) => void;
}

/** One failing case: what to replay and why it failed. */
export interface FuzzFailure {
  readonly index: number;
  readonly target: string;
  readonly what: readonly string[];
  readonly why: string;
  readonly dir?: string;
}

/** What a run found. */
export interface FuzzReport {
  readonly seed: number;
  readonly cases: number;
  readonly accepted: number;
  readonly clean: number;
  /** Failures of filed, unfixed bugs (targets.ts KNOWN), by issue. */
  readonly known: Readonly<Record<string, number>>;
  readonly failures: readonly FuzzFailure[];
  readonly byTarget: Readonly<
    Record<string, { cases: number; accepted: number; clean: number; failures: number }>
  >;
  readonly seconds: number;
  /** The run's folder (kept when something failed). */
  readonly root: string;
}

const repoRoot = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** What the run must leave as it found it: the repository's data and settings, and the working folder's entries. */
const guarded = async (tpl: Templates): Promise<Map<string, string>> => {
  const out = new Map<string, string>();
  for (const d of [`${repoRoot}/models`, `${repoRoot}/tests/fixtures`, tpl.root]) {
    for (const [k, v] of await hashTree(d)) out.set(k, v);
  }
  for (const f of ["deno.json", "deno.lock"]) {
    const p = `${repoRoot}/${f}`;
    out.set(
      p,
      await Deno.readFile(p).then((b) => crypto.subtle.digest("SHA-256", b)).then(
        (h) => btoa(String.fromCharCode(...new Uint8Array(h))),
        () => "absent",
      ),
    );
  }
  for await (const e of Deno.readDir(Deno.cwd())) out.set(`${Deno.cwd()}/${e.name} (entry)`, "present");
  return out;
};

class Runner {
  private worker?: Worker;
  private pending?: { resolve: (r: CaseResult & { dir: string }) => void; reject: (e: Error) => void };
  constructor(
    private readonly init: {
      seed: number;
      root: string;
      templates: Templates;
      only?: readonly string[];
      keep?: boolean;
    },
  ) {}

  private async start(): Promise<void> {
    const w = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    await new Promise<void>((resolve, reject) => {
      w.onmessage = (ev) => {
        if (ev.data?.type === "ready") resolve();
        else if (ev.data?.type === "result") this.pending?.resolve(ev.data);
      };
      w.onerror = (ev) => {
        ev.preventDefault();
        const e = new Error(`worker error: ${ev.message}`);
        reject(e);
        this.pending?.reject(e);
      };
      w.postMessage({ type: "init", ...this.init });
    });
    this.worker = w;
  }

  /** Run case `index` in the worker; reject on a hang (the worker is terminated and replaced next time). */
  async run(index: number, timeoutMs: number): Promise<CaseResult & { dir: string }> {
    if (!this.worker) await this.start();
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await new Promise((resolve, reject) => {
        this.pending = { resolve, reject };
        timer = setTimeout(() => reject(new Error(`hang: no result after ${timeoutMs / 1000} s`)), timeoutMs);
        this.worker!.postMessage({ type: "case", index });
      });
    } catch (e) {
      this.stop();
      throw e;
    } finally {
      clearTimeout(timer);
      this.pending = undefined;
    }
  }

  stop(): void {
    this.worker?.terminate();
    this.worker = undefined;
  }
}

/** Run the fuzzer. */
export const runFuzz = async (o: FuzzOptions): Promise<FuzzReport> => {
  const log = o.log ?? (() => {});
  const t0 = performance.now();
  const root = await Deno.makeTempDir({ prefix: "bupo-fuzz-" });
  const unknown = (o.targets ?? []).filter((t) => !TARGETS.some((x) => x.name === t));
  if (unknown.length) throw new Error(`unknown fuzz targets ${unknown.join(", ")}`);
  const templates = await buildTemplates(root);
  const before = await guarded(templates);
  const keep = o.keep === true || o.only !== undefined;
  const runner = new Runner({ seed: o.seed, root, templates, only: o.targets, keep });
  const byTarget: Record<string, { cases: number; accepted: number; clean: number; failures: number }> = {};
  const failures: FuzzFailure[] = [];
  let cases = 0, accepted = 0, clean = 0;
  const known: Record<string, number> = {};
  const indices = o.only !== undefined ? [o.only] : undefined;
  try {
    for (let k = 0;; k++) {
      const index = indices ? indices[k] : k;
      if (index === undefined || cases >= o.cases || (performance.now() - t0) / 1000 >= o.seconds) break;
      let r: CaseResult & { dir?: string };
      try {
        r = await runner.run(index, o.timeout * 1000);
      } catch (e) {
        // A hang (or a dead worker): the case's target is the seeded choice, made here without running it.
        const target = targetOf(new Rng(o.seed, index), o.targets).name;
        r = { target, what: [], outcome: { kind: "failure", why: (e as Error).message } };
      }
      cases++;
      const bt = byTarget[r.target] ??= { cases: 0, accepted: 0, clean: 0, failures: 0 };
      bt.cases++;
      if (r.outcome.kind === "accepted") accepted++, bt.accepted++;
      else if (r.outcome.kind === "clean") clean++, bt.clean++;
      else if (r.outcome.kind === "known") known[r.outcome.issue] = (known[r.outcome.issue] ?? 0) + 1;
      else {
        bt.failures++;
        failures.push({ index, target: r.target, what: r.what, why: r.outcome.why, dir: r.dir });
        log(
          `FAIL case ${index} (${r.target}): ${r.what.join("; ")}\n  ${
            r.outcome.why.split("\n").join("\n  ")
          }`,
        );
      }
      if (o.only !== undefined) {
        log(`case ${index} (${r.target}): ${r.what.join("; ")}\n  ${JSON.stringify(r.outcome)}`);
      }
      if (cases % 500 === 0) log(`${cases} cases, ${clean} clean errors, ${failures.length} failures`);
    }
  } finally {
    runner.stop();
  }
  const changes = treeChanges(before, await guarded(templates));
  if (changes.length) {
    failures.push({
      index: -1,
      target: "(run)",
      what: [],
      why: `files the fuzzer does not own changed: ${changes.join(", ")}`,
    });
  }
  if (!failures.length && !keep) await Deno.remove(root, { recursive: true }).catch(() => {});
  return {
    seed: o.seed,
    cases,
    accepted,
    clean,
    known,
    failures,
    byTarget,
    seconds: (performance.now() - t0) / 1000,
    root,
  };
};

/** The report as text: the counts, one line per target, every failure with its replay command. */
export const summary = (r: FuzzReport): string => {
  const rows = Object.entries(r.byTarget).sort(([a], [b]) => a.localeCompare(b)).map(([t, c]) =>
    `  ${t.padEnd(14)} ${String(c.cases).padStart(7)} cases ${String(c.accepted).padStart(6)} accepted ${
      String(c.clean).padStart(7)
    } clean errors ${String(c.failures).padStart(4)} failures`
  );
  const fails = r.failures.slice(0, 20).map((f) =>
    `  case ${f.index} (${f.target}): ${
      f.why.split("\n")[0].slice(0, 300)
    }\n    replay: deno task fuzz --seed ${r.seed} --case ${f.index}`
  );
  return [
    `fuzz: seed ${r.seed}: ${r.cases} cases in ${
      r.seconds.toFixed(1)
    } s: ${r.accepted} accepted, ${r.clean} clean errors, ${r.failures.length} failures`,
    ...rows,
    ...Object.entries(r.known).map(([issue, n]) => `known, not yet fixed: ${n} cases of ${issue}`),
    ...(fails.length
      ? ["failures:", ...fails, ...(r.failures.length > 20 ? ["  ..."] : []), `  case folders: ${r.root}`]
      : []),
  ].join("\n");
};

export const FUZZ = defineCommand({
  name: "fuzz",
  summary: "the loaders, parsers and CLIs fed mutated inputs, seeded and bounded in time.",
  usage: [
    "deno task fuzz [--seed N] [--seconds S] [--cases N] [--timeout S] [--targets a,b]",
    "deno task fuzz --seed N --case K      # replay one case (its folder is kept)",
  ],
  flags: {
    seed: { kind: "int", min: 0, max: 2 ** 32 - 1, default: 1, help: "seed of every case's mutations" },
    seconds: { kind: "posnum", default: 60, help: "stop starting cases after this long" },
    cases: { kind: "posint", default: 1_000_000, help: "stop after this many cases" },
    timeout: { kind: "posnum", default: 30, help: "a case running longer is a hang (seconds)" },
    targets: {
      kind: "list",
      arg: "LIST",
      help: `only these targets: ${TARGETS.map((t) => t.name).join(", ")}`,
    },
    case: { kind: "int", min: 0, arg: "K", help: "replay case K only" },
    keep: { kind: "bool", help: "keep every case's folder" },
    quiet: { kind: "bool", help: "only the summary" },
  },
  notes: "Exit code 1 when a case failed. Case k of seed s is the same mutation on every run.",
});

/** Run the command; returns the exit code. */
export const main = (argv: readonly string[]): Promise<number> =>
  runMain("fuzz", async () => {
    const p = parseFlags(FUZZ, argv);
    if (p.help) return console.log(helpText(FUZZ));
    const v = p.values;
    const r = await runFuzz({
      seed: v.seed,
      seconds: v.seconds,
      cases: v.cases,
      timeout: v.timeout,
      targets: v.targets,
      only: v.case,
      keep: v.keep,
      log: v.quiet ? undefined : (l) => console.log(l),
    });
    console.log(summary(r));
    if (r.failures.length) throw new Error(`${r.failures.length} failing cases`);
  });

if (import.meta.main) Deno.exit(await main(Deno.args));
