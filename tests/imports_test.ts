/** Architecture rules, checked by scanning sources: the import direction, no cycles, and where WebGPU, Effect and files live. */
const LAYERS = ["core", "engine", "kernels", "policies", "objectives", "formats", "training", "cli"] as const;
/** Folders beside core: they import core (and each other) only. */
const BESIDE_CORE = ["io", "tasks"] as const;
const beside = (dir: string) => (BESIDE_CORE as readonly string[]).includes(dir);
const rank = (dir: string) => LAYERS.indexOf(dir as typeof LAYERS[number]);
/** Whether a file in folder `from` may import one in folder `to`. */
const allowed = (from: string, to: string): boolean =>
  from === to || to === "core" || (beside(from) ? beside(to) : beside(to) || rank(to) < rank(from));

const files = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  if (!(await Deno.stat(dir).catch(() => null))?.isDirectory) return out;
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await files(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
};

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const rel = (p: string) => p.slice(root.length + 1);
const library = (await Promise.all([...LAYERS, ...BESIDE_CORE].map((d) => files(`${root}/${d}`)))).flat();
const entryPoints = [...Deno.readDirSync(root)].filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) =>
  `${root}/${e.name}`
);
const sources = new Map(
  await Promise.all(
    [...library, ...entryPoints].map(async (f) => [rel(f), await Deno.readTextFile(f)] as const),
  ),
);
/** Source without comments (so prose that names an API does not count). */
const code = (src: string) => src.replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, "");
/** Repo-relative paths a file imports (static and dynamic relative specifiers; `types` false: not `import type`). */
const importsOf = (file: string, types = true): string[] =>
  [...code(sources.get(file)!).matchAll(/(import\s+type\b[^;]*?)?(?:from|import)\s*\(?\s*"(\.\.?\/[^"]+)"/g)]
    .filter((m) => types || !m[1])
    .map((m) => rel(new URL(m[2], `file://${root}/${file}`).pathname));
const folder = (file: string) => (file.includes("/") ? file.split("/")[0] : "(entry)");
const inFolders = (dirs: readonly string[]) => [...sources.keys()].filter((f) => dirs.includes(folder(f)));

Deno.test("imports go core <- engine <- kernels <- policies <- objectives <- formats <- training <- cli, never back", () => {
  const bad = library.map(rel).flatMap((f) =>
    importsOf(f).filter((t) => !allowed(folder(f), folder(t))).map((t) => `${f} imports ${t}`)
  );
  if (bad.length) throw new Error(`imports against the layering:\n${bad.join("\n")}`);
});

Deno.test("engine never imports kernels/, policies/, objectives/, formats/, training/ or cli/", () => {
  const bad = inFolders(["engine"]).flatMap((f) =>
    importsOf(f).filter((t) => !["engine", "core"].includes(folder(t))).map((t) => `${f} imports ${t}`)
  );
  if (bad.length) throw new Error(bad.join("\n"));
});

/** Strongly connected components of more than one file (Tarjan), i.e. import cycles. */
const cycles = (nodes: readonly string[], edges: (n: string) => string[]): string[][] => {
  const index = new Map<string, number>(), low = new Map<string, number>(), onStack = new Set<string>();
  const stack: string[] = [], out: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next), low.set(v, next++), stack.push(v), onStack.add(v);
    for (const w of edges(v)) {
      if (!index.has(w)) visit(w), low.set(v, Math.min(low.get(v)!, low.get(w)!));
      else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do (w = stack.pop()!, onStack.delete(w), scc.push(w)); while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const n of nodes) if (!index.has(n)) visit(n);
  return out;
};

Deno.test("no import cycles: not across folders, not between the files of one folder", () => {
  const nodes = [...sources.keys()];
  // Type-only imports are erased before the program runs, so they cannot form a loading cycle.
  const found = cycles(nodes, (n) => importsOf(n, false).filter((t) => sources.has(t)));
  if (found.length) throw new Error(`import cycles:\n${found.map((c) => c.join(" <-> ")).join("\n")}`);
});

Deno.test("the cycle check finds a cycle (a -> b -> c -> a) and passes a chain", () => {
  const g: Record<string, string[]> = { a: ["b"], b: ["c"], c: ["a"], d: ["a"] };
  const found = cycles(Object.keys(g), (n) => g[n]);
  if (JSON.stringify(found) !== JSON.stringify([["a", "b", "c"]])) throw new Error(JSON.stringify(found));
  if (cycles(["x", "y"], (n) => (n === "x" ? ["y"] : [])).length) throw new Error("a chain is no cycle");
});

Deno.test("only engine/gpu touches navigator.gpu and GPU* globals", () => {
  const bad = [...sources.keys()].filter((f) =>
    !f.startsWith("engine/gpu/") &&
    /navigator\.gpu|GPUBufferUsage|GPUTextureUsage|GPUMapMode|\.createBuffer\(|\.queue\./.test(
      code(sources.get(f)!),
    )
  );
  if (bad.length) throw new Error(`WebGPU used outside engine/gpu/: ${bad.join(", ")}`);
});

Deno.test("engine (but engine/gpu), kernels/, policies/ and objectives/ import no Effect and touch no files", () => {
  const bad: string[] = [];
  for (const f of inFolders(["engine", "kernels", "policies", "objectives"])) {
    if (f.startsWith("engine/gpu/")) continue;
    const src = code(sources.get(f)!);
    if (/from\s+"effect(\/[^"]*)?"/.test(src)) bad.push(`${f} imports effect`);
    if (/Deno\.(read|write|open|create|mkdir|remove|rename|stat|lstat|readDir|realPath)/.test(src)) {
      bad.push(`${f} touches files`);
    }
    if (importsOf(f).some((t) => t.startsWith("io/files"))) bad.push(`${f} imports io/files.ts`);
  }
  if (bad.length) throw new Error(bad.join("\n"));
});

Deno.test("Effect programs are run only by entry points, engine/gpu, io/, cli/ and formats' promise forms", () => {
  const bad = [...library.map(rel)].filter((r) =>
    !/^(engine\/gpu|io|cli|formats)\//.test(r) &&
    /Effect\.run(Promise|Sync|Fork|Callback)/.test(code(sources.get(r)!))
  );
  if (bad.length) throw new Error(`Effect run outside the shell: ${bad.join(", ")}`);
});
