/**
 * The command-line kit: the strict flag-table parser (unknown flags, bad values, negative numbers both ways,
 * generated help), the one exit-code rule (2 usage, 1 failure, 0 success) in-process and through a CLI in a
 * subprocess, root CLIs that parse nothing at import, `--device` and the portable objective-module URL.
 */
import { Effect } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { checkValue } from "../core/flags.ts";
import { acquireDevice, DEVICE_FLAG, withDevice } from "../cli/device.ts";
import { defineCommand, helpText, parseFlags } from "../cli/flags.ts";
import { errorLine, runMain } from "../cli/main.ts";
import { moduleUrl } from "../formats/module.ts";
import { decodeConfigJson } from "../training/config.ts";
import { runScript } from "./cli_util.ts";

const CMD = defineCommand({
  name: "demo",
  summary: "a command for the tests.",
  usage: ["demo --model DIR [flags]"],
  flags: {
    model: { kind: "str", required: true, arg: "DIR", help: "model folder" },
    steps: { kind: "posint", default: 4, help: "steps" },
    kl: { kind: "num", default: 0, help: "a signed coefficient" },
    layer: { kind: "int", min: 0, help: "0-based layer" },
    chunk: { kind: "posint", multipleOf: 64, default: 8192, help: "chunk" },
    advantages: { kind: "list", of: "num", help: "one per sequence" },
    norm: { kind: "enum", values: ["raw", "normed"], default: "raw", help: "readout norm" },
    quiet: { kind: "bool", help: "no progress" },
    device: { ...DEVICE_FLAG, aliases: ["backend"] },
  },
  notes: "Notes at the end.",
});

const parse = (...argv: string[]) => {
  const p = parseFlags(CMD, ["--model", "m", ...argv]);
  if (p.help) throw new Error("help");
  return p;
};

/** The ConfigError `f` throws (fails when it throws none or another error). */
const usage = (f: () => unknown): ConfigError => {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("no ConfigError");
};

const expectMessage = (f: () => unknown, re: RegExp, field?: string) => {
  const e = usage(f);
  if (!re.test(e.message) || (field !== undefined && e.field !== field)) {
    throw new Error(`got ${e.field}: ${e.message}`);
  }
};

Deno.test("flags: defaults, given keys, typed values, switches and aliases", () => {
  const p = parse("--steps", "7", "--quiet", "--backend", "cpu", "--advantages=1,-2.5");
  const v = p.values;
  if (v.model !== "m" || v.steps !== 7 || v.kl !== 0 || v.layer !== undefined || v.chunk !== 8192) {
    throw new Error(JSON.stringify(v));
  }
  if (v.quiet !== true || v.device !== "cpu" || v.norm !== "raw" || v.advantages?.join() !== "1,-2.5") {
    throw new Error(JSON.stringify(v));
  }
  if ([...p.given].sort().join() !== "advantages,device,model,quiet,steps") {
    throw new Error([...p.given].join());
  }
  if (parse("--quiet=false").values.quiet !== false) throw new Error("--quiet=false");
  if (parse().values.quiet !== false) throw new Error("a switch defaults to false");
});

Deno.test("flags: negative numbers work as --flag -3 and as --flag=-3", () => {
  for (const argv of [["--kl", "-3"], ["--kl=-3"]]) {
    const v = parse(...argv).values;
    if (v.kl !== -3) throw new Error(`${argv.join(" ")}: ${v.kl}`);
  }
  if (parse("--kl", "-.5").values.kl !== -0.5) throw new Error("-.5");
  if (parse("--advantages", "-1,2").values.advantages?.join() !== "-1,2") throw new Error("list");
  // A negative number is still checked against the flag's kind.
  expectMessage(() => parse("--steps", "-4"), /^--steps: expected a positive number, got "-4"$/, "--steps");
  expectMessage(() => parse("--layer=-1"), /^--layer: expected a number >= 0, got "-1"$/, "--layer");
  // A value that starts with a dash and is no number is taken for a flag.
  expectMessage(() => parse("--model", "--steps", "3"), /^--model needs a value/, "--model");
});

Deno.test("flags: an unknown flag, a bad value, a missing value or flag is a usage error naming the flag", () => {
  expectMessage(() => parse("--bogus", "3"), /^unknown flag --bogus \(see --help\)$/, "--bogus");
  expectMessage(() => parse("-x"), /^unknown flag -x/, "-x");
  expectMessage(() => parse("--steps", "x"), /^--steps: expected a positive integer, got "x"$/);
  expectMessage(() => parse("--steps", "2.5"), /^--steps: expected an integer, got "2.5"$/);
  expectMessage(() => parse("--chunk", "100"), /^--chunk: expected a multiple of 64, got "100"$/);
  expectMessage(() => parse("--kl", "1e999"), /^--kl: expected a finite number/);
  expectMessage(() => parse("--norm", "both"), /^--norm: expected raw \| normed, got "both"$/);
  expectMessage(() => parse("--device", "tpu"), /^--device: expected auto \| gpu \| cpu, got "tpu"$/);
  expectMessage(() => parse("--advantages", "1,,2"), /^--advantages: item 2 "": expected a number$/);
  expectMessage(() => parse("--quiet=maybe"), /^--quiet: expected true or false/);
  expectMessage(() => parse("--steps"), /^--steps needs a value: a positive integer$/);
  expectMessage(() => parse("stray"), /^unexpected argument "stray"/);
  expectMessage(() => parseFlags(CMD, ["--steps", "2"]), /^--model DIR is required/, "--model");
  for (const argv of [["--bogus"], ["--steps", "x"]]) {
    if (usage(() => parse(...argv)).source !== "flags") throw new Error("source");
  }
});

Deno.test("flags: -- ends the flags; positionals are checked against the command's", () => {
  const withPos = defineCommand({
    name: "p",
    summary: "s",
    usage: ["p [NAME]"],
    flags: { n: { kind: "int", default: 1, help: "n" } },
    positionals: { name: "NAME", help: "a name", values: ["a", "b"], max: 1 },
  });
  const p = parseFlags(withPos, ["--n", "-2", "b"]);
  if (p.help || p.values.n !== -2 || p.positionals.join() !== "b") throw new Error(JSON.stringify(p));
  expectMessage(() => parseFlags(withPos, ["c"]), /^NAME "c": expected a \| b$/);
  expectMessage(() => parseFlags(withPos, ["a", "b"]), /^at most 1 NAME argument/);
  expectMessage(() => parseFlags(CMD, ["--model", "m", "--", "--steps"]), /^unexpected argument "--steps"/);
});

Deno.test("flags: --help wins over everything and the generated help lists every flag", () => {
  for (const argv of [["--help"], ["-h"], ["--bogus", "--help"]]) {
    if (!parseFlags(CMD, argv).help) throw new Error(argv.join(" "));
  }
  const h = helpText(CMD);
  const want = [
    /^demo: a command for the tests\.\n\nUsage:\n {2}demo --model DIR \[flags\]\n/,
    /\n {2}--model DIR +model folder \(required\)\n/,
    /\n {2}--steps N +steps \(default 4\)\n/,
    /\n {2}--norm raw\|normed +readout norm \(default raw\)\n/,
    /\n {2}--quiet +no progress\n/,
    /\n {2}--advantages LIST +one per sequence\n/,
    /\(default auto\) \(also --backend\)\n/,
    /\n {2}-h, --help +this text\n\nNotes at the end\.$/,
  ];
  for (const re of want) if (!re.test(h)) throw new Error(`help lacks ${re}:\n${h}`);
});

Deno.test("config files are checked with the same rows: fields by name, the file named", () => {
  if (decodeConfigJson("run.json", { group: 4, kl: 0.1, device: "cpu" }).group !== 4) {
    throw new Error("group");
  }
  expectMessage(
    () => decodeConfigJson("run.json", { group: -4 }),
    /^run\.json: group: expected a positive number/,
  );
  expectMessage(
    () => decodeConfigJson("run.json", { group: "4" }),
    /^run\.json: group: expected a positive integer/,
  );
  expectMessage(() => decodeConfigJson("run.json", { frob: 1 }), /unknown field "frob"/);
  const spec = { kind: "list", of: "int", help: "" } as const;
  if ((checkValue(spec, [1, 2], { source: "f", field: "xs" }, false) as number[]).join() !== "1,2") {
    throw new Error("list from JSON");
  }
});

/** Run `f` with console.error captured. */
const captureErr = async <A>(f: () => Promise<A>): Promise<[A, string[]]> => {
  const lines: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  try {
    return [await f(), lines];
  } finally {
    console.error = orig;
  }
};

Deno.test("runMain: 2 for usage errors, 1 for every other failure, 0 on success; one line, no stack", async () => {
  const cases: [unknown, number, RegExp][] = [
    [Effect.void, 0, /^$/],
    [
      Effect.fail(new ConfigError({ source: "flags", field: "--x", message: "--x: bad" })),
      2,
      /^t: --x: bad$/,
    ],
    [
      Effect.fail(new ConfigError({ source: "run.json", field: "g", message: "run.json: g: bad" })),
      2,
      /^t: run/,
    ],
    [
      Effect.fail(new FileFormatError({ file: "f", message: "f: truncated" })),
      1,
      /^t: FileFormatError: f: truncated$/,
    ],
    [Effect.die(new Error("boom")), 1, /^t: boom$/],
    [() => Promise.reject(new Error("async boom")), 1, /^t: async boom$/],
    [
      () => Promise.reject(new ConfigError({ source: "flags", field: "--y", message: "--y: no" })),
      2,
      /^t: --y: no$/,
    ],
    [() => Promise.resolve(3), 0, /^$/],
  ];
  for (const [program, code, re] of cases) {
    const [got, lines] = await captureErr(() => runMain("t", program as Parameters<typeof runMain>[1]));
    if (got !== code || !re.test(lines.join("\n")) || lines.length > 1) {
      throw new Error(`exit ${got} (want ${code}): ${JSON.stringify(lines)}`);
    }
  }
  if (errorLine("t", "plain") !== "t: plain") throw new Error(errorLine("t", "plain"));
});

Deno.test({
  name: "a CLI in a subprocess: exit 0 with help, 2 for a bad flag, 1 for a missing model; one stderr line",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const run = async (...args: string[]) => {
      const r = await runScript("grad.ts", args);
      return { code: r.code, stdout: r.stdout, stderr: r.stderr.trim() };
    };
    const batch = ["--tokens", "1,2,3", "--prompt-len", "1", "--advantages", "-1", "--out", "x.st"];
    const [help, bad, negative, missing] = await Promise.all([
      run("--help"),
      run("--model", "m", "--frobnicate", "3"),
      run("--model", "m", "--step", "-2", ...batch),
      run("--model", "/nonexistent/model", ...batch, "--device", "cpu"),
    ]);
    if (help.code !== 0 || !/^grad: /.test(help.stdout) || !/--device auto\|gpu\|cpu/.test(help.stdout)) {
      throw new Error(`help: ${help.code} ${help.stdout}`);
    }
    const fails: [string, typeof bad, number, RegExp][] = [
      ["unknown flag", bad, 2, /^grad: unknown flag --frobnicate \(see --help\)$/],
      ["negative step", negative, 2, /^grad: --step: expected a number >= 1, got "-2"$/],
      [
        "missing model",
        missing,
        1,
        /^grad: FileFormatError: \/nonexistent\/model: model folder does not exist$/,
      ],
    ];
    for (const [what, r, code, re] of fails) {
      if (r.code !== code || !re.test(r.stderr)) throw new Error(`${what}: exit ${r.code}: ${r.stderr}`);
    }
  },
});

Deno.test({
  name: "root CLIs parse nothing at import; main(argv) returns the exit code",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    for (const name of ["train", "grad", "entropy", "compare", "sweep", "pretrain", "bench/main"]) {
      const mod = await import(`../${name}.ts`) as { main: (argv: readonly string[]) => Promise<number> };
      const logged: string[] = [];
      const log = console.log;
      console.log = (...a: unknown[]) => void logged.push(a.join(" "));
      let help: number;
      try {
        help = await mod.main(["--help"]);
      } finally {
        console.log = log;
      }
      if (help !== 0 || !/\n {2}-h, --help +this text/.test(logged.join("\n"))) {
        throw new Error(`${name} --help: ${help} ${logged.join("\n")}`);
      }
      const [bad, lines] = await captureErr(() => mod.main(["--no-such-flag"]));
      if (bad !== 2 || lines.length !== 1 || !lines[0].includes("unknown flag --no-such-flag")) {
        throw new Error(`${name} --no-such-flag: ${bad} ${lines}`);
      }
    }
  },
});

Deno.test("--device: cpu is the f32 CPU backend; auto falls back with a note; gpu fails without an adapter", async () => {
  const none = { gpu: { requestAdapter: () => Promise.resolve(null) } };
  const cpu = await Effect.runPromise(withDevice("cpu", (b) => Effect.succeed(`${b.kind} ${b.floatArray}`)));
  if (cpu !== "cpu f32") throw new Error(cpu);
  const notes: string[] = [];
  const auto = await Effect.runPromise(
    withDevice("auto", (b) => Effect.succeed(b.kind), { adapter: none, note: (m) => void notes.push(m) }),
  );
  if (auto !== "cpu" || notes.length !== 1 || !/no WebGPU adapter/.test(notes[0])) {
    throw new Error(`${auto} ${notes}`);
  }
  const gpu = await Effect.runPromise(Effect.flip(Effect.scoped(acquireDevice("gpu", { adapter: none }))));
  if (gpu._tag !== "NoAdapterError") throw new Error(String(gpu));
});

Deno.test("objective modules: one portable file URL for POSIX and Windows paths", () => {
  const cases: [string, { cwd: string; windows: boolean }, string][] = [
    ["obj.ts", { cwd: "/work/run", windows: false }, "file:///work/run/obj.ts"],
    ["../o/obj.ts", { cwd: "/work/run/", windows: false }, "file:///work/o/obj.ts"],
    ["/abs/my obj#1.ts", { cwd: "/work", windows: false }, "file:///abs/my%20obj%231.ts"],
    ["a:b.ts", { cwd: "/w", windows: false }, "file:///w/a%3Ab.ts"],
    ["back\\slash.ts", { cwd: "/w", windows: false }, "file:///w/back%5Cslash.ts"],
    ["obj.ts", { cwd: "C:\\Users\\me\\run", windows: true }, "file:///C:/Users/me/run/obj.ts"],
    ["..\\objs\\o.ts", { cwd: "C:\\Users\\me\\run", windows: true }, "file:///C:/Users/me/objs/o.ts"],
    ["D:\\x\\y.ts", { cwd: "C:\\w", windows: true }, "file:///D:/x/y.ts"],
    ["d:/x/y.ts", { cwd: "C:\\w", windows: true }, "file:///d:/x/y.ts"],
    ["\\abs\\o.ts", { cwd: "C:\\w", windows: true }, "file:///C:/abs/o.ts"],
    ["\\\\server\\share\\o.ts", { cwd: "C:\\w", windows: true }, "file://server/share/o.ts"],
    ["o.ts", { cwd: "\\\\server\\share\\dir", windows: true }, "file://server/share/dir/o.ts"],
    ["file:///already/a/url.ts", { cwd: "C:\\w", windows: true }, "file:///already/a/url.ts"],
  ];
  for (const [path, opts, want] of cases) {
    const got = moduleUrl(path, opts);
    if (got !== want) throw new Error(`${path} in ${opts.cwd}: ${got}, want ${want}`);
  }
});
