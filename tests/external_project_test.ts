/**
 * bupo from another project, as the README's "Using bupo from another project" shows it: its deno.json and
 * main.ts, written into a temporary folder outside the checkout (bupo's paths pointed at this checkout), run in
 * a subprocess with `deno run -A --config deno.json main.ts` (one BuPO step of models/tiny-arith on the CPU)
 * and type-checked; the same main.ts under `--config <checkout>/deno.json`; a plain import without either
 * fails as the README says. The README's map must cover every bare name the library imports, at the versions
 * of bupo's deno.json.
 */
const root = new URL("..", import.meta.url);
const rootPath = decodeURIComponent(root.pathname);

/** The README section's ```json and ```ts blocks (the first of each). */
const readmeBlocks = async (): Promise<{ config: string; main: string }> => {
  const readme = await Deno.readTextFile(new URL("README.md", root));
  const start = readme.indexOf("\n## Using bupo from another project");
  if (start < 0) throw new Error("README: no section ## Using bupo from another project");
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const json = /```json\n([\s\S]*?)```/.exec(section), ts = /```ts\n([\s\S]*?)```/.exec(section);
  if (!json || !ts) throw new Error("README: the section needs a ```json and a ```ts block");
  return { config: json[1], main: ts[1] };
};

type ImportMap = Record<string, string>;

/** Where the map sends a bare specifier (exact key, else the longest "prefix/" key), or undefined. */
const resolveIn = (map: ImportMap, spec: string): string | undefined => {
  if (Object.hasOwn(map, spec)) return map[spec];
  const key = Object.keys(map).filter((k) => k.endsWith("/") && spec.startsWith(k))
    .sort((a, b) => b.length - a.length)[0];
  return key === undefined ? undefined : map[key] + spec.slice(key.length);
};

/** Every bare specifier the library's own files import (tests and benchmarks left out). */
const libraryBareSpecifiers = async (): Promise<Set<string>> => {
  const out = new Set<string>();
  const dirs = [
    "core",
    "engine",
    "kernels",
    "policies",
    "objectives",
    "formats",
    "tasks",
    "training",
    "cli",
    "io",
  ];
  const files: string[] = [];
  for await (const e of Deno.readDir(root)) if (e.isFile && e.name.endsWith(".ts")) files.push(e.name);
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(`${dir}/`, root))) {
      if (e.isDirectory) await walk(`${dir}/${e.name}`);
      else if (e.name.endsWith(".ts")) files.push(`${dir}/${e.name}`);
    }
  };
  for (const d of dirs) await walk(d);
  // Static imports and re-exports (one line, or the closing line of a multi-line one), side-effect imports,
  // dynamic imports with a literal specifier.
  const res = [
    /^\s*(?:import|export)\b[^"\n]*\sfrom\s+"([^"]+)"/gm,
    /^\s*}\s*from\s+"([^"]+)"/gm,
    /^\s*import\s+"([^"]+)"/gm,
    /\bimport\(\s*"([^"]+)"\s*\)/g,
  ];
  for (const f of files) {
    const text = await Deno.readTextFile(new URL(f, root));
    for (const m of res.flatMap((re) => [...text.matchAll(re)])) {
      const s = m[1];
      if (!/^(\.|\/|node:|npm:|jsr:|https?:|file:|data:)/.test(s)) out.add(s);
    }
  }
  return out;
};

const run = async (args: string[], cwd: string) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
};

/** The README's printed line and the run folder's metrics: one step, every number finite. */
const checkRun = async (dir: string, r: { code: number; stdout: string; stderr: string }, what: string) => {
  if (r.code !== 0) throw new Error(`${what}: exit ${r.code}\n${r.stderr}`);
  const line = r.stdout.trim().split("\n").at(-1) ?? "";
  const m = /^step 1: loss (\S+), reward (\S+), entropy (\S+)$/.exec(line);
  if (!m || !m.slice(1).every((x) => Number.isFinite(Number(x)))) {
    throw new Error(`${what}: printed ${JSON.stringify(line)}`);
  }
  const lines = (await Deno.readTextFile(`${dir}/runs/one-step/metrics.jsonl`)).trim().split("\n");
  if (lines.length !== 1) throw new Error(`${what}: ${lines.length} metrics lines, expected 1`);
  const sm = JSON.parse(lines[0]);
  const numbers: [string, unknown][] = [
    ["loss", sm.loss],
    ["gradNorm", sm.gradNorm],
    ["rewardMean", sm.rewardMean],
    ["responseLength", sm.responseLength],
    ["entropy.final", sm.entropy?.final],
    ...(sm.entropy?.layers ?? []).map((
      x: unknown,
      l: number,
    ): [string, unknown] => [`entropy.layers[${l}]`, x]),
    ...(sm.terms ?? []).map((
      t: { value: unknown },
      i: number,
    ): [string, unknown] => [`terms[${i}].value`, t.value]),
  ];
  const bad = numbers.find(([, v]) => typeof v !== "number" || !Number.isFinite(v));
  const layers = JSON.parse(await Deno.readTextFile(new URL("models/tiny-arith/config.json", root)))
    .num_hidden_layers;
  if (sm.step !== 1 || sm.entropy?.layers?.length !== layers || sm.terms?.length < 1 || bad) {
    throw new Error(`${what}: metrics ${lines[0].slice(0, 400)}${bad ? ` (${bad[0]} = ${bad[1]})` : ""}`);
  }
  if (Number(m[1]) !== sm.loss) throw new Error(`${what}: printed loss ${m[1]}, metrics.jsonl ${sm.loss}`);
};

Deno.test("README's deno.json maps every bare name the library imports, at the versions of bupo's deno.json", async () => {
  const { config } = await readmeBlocks();
  const map: ImportMap = JSON.parse(config).imports;
  const own: ImportMap = JSON.parse(await Deno.readTextFile(new URL("deno.json", root))).imports;
  if (map.bupo !== "../bupo/mod.ts" || map["bupo/"] !== "../bupo/") {
    throw new Error(
      `README: bupo -> ${map.bupo}, bupo/ -> ${map["bupo/"]}; expected ../bupo/mod.ts and ../bupo/`,
    );
  }
  for (const [k, v] of Object.entries(map)) {
    if (k.startsWith("bupo")) continue;
    if (own[k] !== v) throw new Error(`README maps ${k} to ${v}; bupo's deno.json to ${own[k]}`);
  }
  const specs = await libraryBareSpecifiers();
  if (!specs.has("effect") || !specs.has("fp-ts/Either.js")) throw new Error(`scan found ${[...specs]}`);
  const missing = [...specs].filter((s) => resolveIn(map, s) === undefined);
  if (missing.length) throw new Error(`README's deno.json does not map ${missing.join(", ")}`);
});

Deno.test({
  name:
    "README's project outside the checkout: deno run --config its deno.json runs one RL step; deno check passes",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { config, main } = await readmeBlocks();
    const dir = await Deno.makeTempDir({ prefix: "bupo-project-" });
    try {
      if ((await Deno.realPath(dir)).startsWith(await Deno.realPath(rootPath))) {
        throw new Error(`${dir} is inside the checkout`);
      }
      const json = JSON.parse(config);
      json.imports.bupo = new URL("mod.ts", root).href;
      json.imports["bupo/"] = root.href;
      await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify(json, null, 2));
      await Deno.writeTextFile(`${dir}/main.ts`, main);
      await checkRun(
        dir,
        await run(["run", "-A", "--config", `${dir}/deno.json`, "main.ts"], dir),
        "deno run",
      );
      const check = await run(["check", "--config", `${dir}/deno.json`, "main.ts"], dir);
      if (check.code !== 0) throw new Error(`deno check: exit ${check.code}\n${check.stderr}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "the same main.ts under --config <checkout>/deno.json; a plain import of mod.ts without either fails",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { main } = await readmeBlocks();
    const dir = await Deno.makeTempDir({ prefix: "bupo-noconfig-" });
    try {
      await Deno.writeTextFile(`${dir}/main.ts`, main);
      // --frozen: the run must not touch the checkout's deno.lock.
      const r = await run(["run", "-A", "--frozen", "--config", `${rootPath}deno.json`, "main.ts"], dir);
      await checkRun(dir, r, "deno run --config <checkout>/deno.json");
      await Deno.writeTextFile(`${dir}/plain.ts`, `import "${new URL("mod.ts", root).href}";\n`);
      const plain = await run(["run", "-A", "--no-config", "plain.ts"], dir);
      if (plain.code === 0 || !plain.stderr.includes('Import "effect" not a dependency')) {
        throw new Error(`a plain import: exit ${plain.code}\n${plain.stderr}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
