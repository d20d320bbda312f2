/** Architecture rules, checked by scanning sources: the import direction and where WebGPU and Effect runs live. */
const LAYERS = ["core", "kernels", "policies", "objectives", "training"] as const;
const rank = (dir: string) => LAYERS.indexOf(dir as typeof LAYERS[number]);

const files = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await files(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
};

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const library = (await Promise.all([...LAYERS, "io", "tasks"].map((d) => files(`${root}/${d}`)))).flat();
const rel = (p: string) => p.slice(root.length + 1);

Deno.test("imports go core <- kernels <- policies <- objectives <- training, never back", async () => {
  const bad: string[] = [];
  for (const f of library) {
    const from = rel(f).split("/")[0];
    const src = await Deno.readTextFile(f);
    for (const m of src.matchAll(/from\s+"(\.\.?\/[^"]+)"/g)) {
      const target = rel(new URL(m[1], `file://${f}`).pathname).split("/")[0];
      if (rank(from) >= 0 && rank(target) > rank(from)) bad.push(`${rel(f)} imports ${m[1]}`);
    }
  }
  if (bad.length) throw new Error(`imports against the layering:\n${bad.join("\n")}`);
});

Deno.test("only kernels/gpu touches navigator.gpu and GPU* globals", async () => {
  const bad: string[] = [];
  for (const f of library) {
    if (rel(f).startsWith("kernels/gpu/")) continue;
    const src = (await Deno.readTextFile(f)).replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, "");
    if (/navigator\.gpu|GPUBufferUsage|GPUTextureUsage|GPUMapMode|\.createBuffer\(|\.queue\./.test(src)) {
      bad.push(rel(f));
    }
  }
  if (bad.length) throw new Error(`WebGPU used outside kernels/gpu/: ${bad.join(", ")}`);
});

Deno.test("Effect programs are run only by entry points, kernels/gpu and the io shell", async () => {
  const bad: string[] = [];
  for (const f of library) {
    const r = rel(f);
    if (r.startsWith("kernels/gpu/") || r.startsWith("io/")) continue;
    const src = (await Deno.readTextFile(f)).replace(/\/\/.*$|\/\*[\s\S]*?\*\//gm, "");
    if (/Effect\.run(Promise|Sync|Fork|Callback)/.test(src)) bad.push(r);
  }
  if (bad.length) throw new Error(`Effect run outside the shell: ${bad.join(", ")}`);
});
