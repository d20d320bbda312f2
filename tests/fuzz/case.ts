/**
 * One fuzz case: build the inputs, hash every file of the case folder, run the target, hash again (a loader
 * must not change, add or remove a file it was only asked to read; `out/` is the outputs' place), classify.
 */
import { Rng } from "./mutate.ts";
import { type CaseResult, type Outcome, TARGETS, type Templates } from "./targets.ts";

/** SHA-256 of every file under `dir` (symlinks by their target text), except under `skip`. */
export const hashTree = async (dir: string, skip?: string): Promise<Map<string, string>> => {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(d));
    } catch {
      return;
    }
    for (const e of entries) {
      const p = `${d}/${e.name}`;
      if (skip && (p === skip || p.startsWith(`${skip}/`))) continue;
      if (e.isSymlink) out.set(p, `link:${await Deno.readLink(p)}`);
      else if (e.isDirectory) {
        out.set(p, "dir");
        await walk(p);
      } else {
        const h = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(p)));
        out.set(p, Array.from(h, (b) => b.toString(16).padStart(2, "0")).join(""));
      }
    }
  };
  await walk(dir);
  return out;
};

/** The differences of two hash maps, as "changed x", "removed x", "added x". */
export const treeChanges = (before: Map<string, string>, after: Map<string, string>): string[] => {
  const out: string[] = [];
  for (const [p, h] of before) {
    if (!after.has(p)) out.push(`removed ${p}`);
    else if (after.get(p) !== h) out.push(`changed ${p}`);
  }
  for (const p of after.keys()) if (!before.has(p)) out.push(`added ${p}`);
  return out;
};

/** The target of case `index` (weighted; restricted to `only` names when given). */
export const targetOf = (rng: Rng, only?: readonly string[]) => {
  const ts = only?.length ? TARGETS.filter((t) => only.includes(t.name)) : TARGETS;
  return ts[rng.weighted(ts.map((t) => t.weight))];
};

/** Run case `index` of run `seed` in `root/cases/c<index>`; the folder is removed unless the case failed. */
export const runCase = async (
  seed: number,
  index: number,
  tpl: Templates,
  root: string,
  only?: readonly string[],
  keep = false,
): Promise<CaseResult & { dir: string }> => {
  const rng = new Rng(seed, index);
  const target = targetOf(rng, only);
  const dir = `${root}/cases/c${index}`;
  await Deno.mkdir(`${dir}/out`, { recursive: true });
  let what: readonly string[] = [];
  let outcome: Outcome;
  try {
    const prepared = await target.prepare(rng, dir, tpl);
    what = prepared.what;
    const before = await hashTree(dir, `${dir}/out`);
    outcome = await prepared.exec();
    const changes = treeChanges(before, await hashTree(dir, `${dir}/out`));
    if (changes.length) {
      outcome = { kind: "failure", why: `changed files it only had to read: ${changes.join(", ")}` };
    }
  } catch (e) {
    outcome = { kind: "failure", why: `the case itself threw: ${e instanceof Error ? e.stack : e}` };
  }
  if (outcome.kind !== "failure" && !keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
  return { target: target.name, what, outcome, dir };
};
