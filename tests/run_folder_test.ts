/**
 * Issue 13.1: a run writes only into a new or empty folder, or into a bupo run's folder (its marker) with
 * --resume or --overwrite; a model folder, a folder inside --model and any other non-empty folder are errors
 * naming --out, and leave every file as it was. --overwrite removes only the run's own files.
 */
import { Cause, Effect, Exit } from "effect";
import { readModelDir } from "../formats/hf.ts";
import type { TrainConfig } from "../training/config.ts";
import { type RunOptions, runTraining } from "../training/run.ts";
import { claimCompareFolder, claimRunFolder, RUN_MARKER } from "../training/rundir.ts";
import { cpu32 } from "./util.ts";
import { modelDir, small, tmp } from "./train_fixture.ts";
import { runScript } from "./cli_util.ts";

/** Run on the CPU backend: "ok", or the failure's tag and message. */
const attempt = async (cfg: TrainConfig, o: Partial<RunOptions> = {}) => {
  const exit = await Effect.runPromiseExit(runTraining(cpu32, cfg, { resume: false, quiet: true, ...o }));
  if (Exit.isSuccess(exit)) return { tag: "ok", message: "", field: "" };
  const e = Cause.squash(exit.cause) as { _tag?: string; message: string; field?: string };
  return { tag: e._tag ?? String(e), message: e.message, field: e.field ?? "" };
};

const expectRefused = async (what: string, cfg: TrainConfig, re: RegExp, o: Partial<RunOptions> = {}) => {
  const r = await attempt(cfg, o);
  if (r.tag !== "ConfigError" || r.field !== "--out" && r.field !== "--overwrite" || !re.test(r.message)) {
    throw new Error(`${what}: ${r.tag} ${r.field}: ${r.message}`);
  }
};

/** Every file under `dir` with its bytes. */
const snapshot = async (dir: string): Promise<Map<string, string>> => {
  const out = new Map<string, string>();
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${dir}/${rel}`)) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) await walk(p);
      else out.set(p, new TextDecoder("latin1").decode(await Deno.readFile(`${dir}/${p}`)));
    }
  };
  await walk("");
  return out;
};

const same = (a: Map<string, string>, b: Map<string, string>, what: string) => {
  const keys = new Set([...a.keys(), ...b.keys()]);
  for (const k of keys) if (a.get(k) !== b.get(k)) throw new Error(`${what}: ${k} changed`);
};

const copyDir = async (from: string, to: string) => {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyDir(`${from}/${e.name}`, `${to}/${e.name}`);
    else await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
};

Deno.test("a model folder, a folder inside --model, or --model inside --out is never a run's output", async () => {
  const model = `${tmp}/model-copy`;
  await copyDir(modelDir, model);
  const before = await snapshot(model);
  await expectRefused(
    "--out = a model folder",
    small(model),
    /is a model folder \(it holds config\.json and model\.safetensors\)/,
  );
  await expectRefused("--out = a model folder (overwrite)", small(model), /is a model folder/, {
    overwrite: true,
  });
  await expectRefused("--out = a model folder (resume)", small(model), /is a model folder/, { resume: true });
  // A folder holding only a tokenizer.json is a (tokenizer) model folder too.
  await Deno.mkdir(`${tmp}/tok-only`);
  await Deno.copyFile(`${modelDir}/tokenizer.json`, `${tmp}/tok-only/tokenizer.json`);
  await expectRefused("--out = a tokenizer folder", small(`${tmp}/tok-only`), /holds tokenizer\.json/);
  // Inside the model folder (also through another spelling of its path).
  await expectRefused(
    "--out inside --model",
    { ...small(`${model}/../model-copy/./runs/x`), model },
    /inside the model folder/,
  );
  await expectRefused("--model inside --out", { ...small(tmp), model }, /lies inside --out/, {
    overwrite: true,
  });
  same(before, await snapshot(model), "the model folder");
  await Effect.runPromise(readModelDir(model)); // still loads
});

Deno.test("train.ts --out <the model folder> exits 2 and the model still loads", async () => {
  const model = `${tmp}/model-cli`;
  await copyDir(modelDir, model);
  const before = await snapshot(model);
  const out = await runScript("train.ts", ["--model", model, "--out", model, "--device", "cpu"]);
  const text = out.stderr;
  if (out.code !== 2 || !text.includes(`--out ${model} is a model folder`) || /\n\s+at /.test(text)) {
    throw new Error(`exit ${out.code}: ${text}`);
  }
  same(before, await snapshot(model), "the model folder");
  await Effect.runPromise(readModelDir(model));
});

Deno.test("a non-empty folder that is not a run, or a file, is refused and left alone", async () => {
  const dir = `${tmp}/user-files`;
  await Deno.mkdir(dir);
  await Deno.writeTextFile(`${dir}/config.json`, '{"mine": true}\n');
  await Deno.writeTextFile(`${dir}/metrics.jsonl`, "my notes\n");
  const before = await snapshot(dir);
  for (const o of [{}, { overwrite: true }, { resume: true }]) {
    await expectRefused(
      `a user folder ${JSON.stringify(o)}`,
      small(dir),
      /is not empty and is not a bupo run \(no bupo-run\.json; it holds config\.json, metrics\.jsonl\)/,
      o,
    );
  }
  same(before, await snapshot(dir), "the user folder");
  await Deno.writeTextFile(`${tmp}/a-file`, "x");
  await expectRefused("a file", small(`${tmp}/a-file`), /exists and is not a folder/);
  await Deno.mkdir(`${tmp}/empty`);
  if ((await attempt(small(`${tmp}/empty`))).tag !== "ok") throw new Error("an empty folder was refused");
  await expectRefused("--resume of an empty folder", small(`${tmp}/empty2`), /holds no run to resume/, {
    resume: true,
  });
  await expectRefused("--resume with --overwrite", small(`${tmp}/empty`), /give one of them/, {
    resume: true,
    overwrite: true,
  });
});

Deno.test("a bupo run needs --resume or --overwrite; --overwrite removes only the run's files and starts over", async () => {
  const dir = `${tmp}/run-a`;
  if ((await attempt(small(dir))).tag !== "ok") throw new Error("the first run failed");
  const marker = JSON.parse(await Deno.readTextFile(`${dir}/${RUN_MARKER}`));
  if (marker.format !== "bupo-run" || marker.version !== 1) {
    throw new Error(`marker ${JSON.stringify(marker)}`);
  }
  const first = await snapshot(dir);
  await expectRefused(
    "a rerun without flags",
    small(dir),
    /already holds a bupo run \(with checkpoints\); pass --resume.*--overwrite/,
  );
  same(first, await snapshot(dir), "the refused rerun");
  // A user's file in the run folder survives --overwrite; the run's files are made anew, identical.
  await Deno.writeTextFile(`${dir}/notes.txt`, "keep me\n");
  await Deno.mkdir(`${dir}/checkpoints/mine`);
  if ((await attempt(small(dir), { overwrite: true })).tag !== "ok") throw new Error("--overwrite failed");
  if ((await Deno.readTextFile(`${dir}/notes.txt`)) !== "keep me\n") throw new Error("notes.txt was touched");
  await Deno.stat(`${dir}/checkpoints/mine`);
  const again = await snapshot(dir);
  for (
    const f of [
      "checkpoints/step-000002/model.safetensors",
      "checkpoints/step-000002/optimizer.safetensors",
      "eval.jsonl",
      "latest.json",
    ]
  ) {
    if (first.get(f) !== again.get(f)) throw new Error(`${f} differs after --overwrite`);
  }
  // An overwrite that set-up refuses removes nothing.
  const r = await attempt({ ...small(dir), model: `${tmp}/no-such-model` }, { overwrite: true });
  if (r.tag === "ok") throw new Error("a missing model was accepted");
  await Deno.stat(`${dir}/latest.json`);
});

Deno.test("a run from before markers resumes (and gets its marker); a newer marker version is refused", async () => {
  const dir = `${tmp}/legacy`;
  if ((await attempt(small(dir, { steps: 1 }))).tag !== "ok") throw new Error("the first run failed");
  await Deno.remove(`${dir}/${RUN_MARKER}`);
  await expectRefused("a legacy run without --resume", small(dir, { steps: 2 }), /already holds a bupo run/);
  if ((await attempt(small(dir, { steps: 2 }), { resume: true })).tag !== "ok") {
    throw new Error("the resume failed");
  }
  await Deno.stat(`${dir}/${RUN_MARKER}`);
  await Deno.writeTextFile(`${dir}/${RUN_MARKER}`, JSON.stringify({ format: "bupo-run", version: 99 }));
  const r = await attempt(small(dir, { steps: 3 }), { resume: true });
  if (r.tag !== "FileFormatError" || !/written by a newer bupo \(folder format version 99/.test(r.message)) {
    throw new Error(`${r.tag}: ${r.message}`);
  }
});

Deno.test("--resume of a run killed before its first checkpoint starts it over with its saved settings", async () => {
  // What a kill during the step-0 evaluation leaves: the marker, config.json, objective.txt, empty logs.
  const dir = `${tmp}/early`;
  const whole = `${tmp}/early-whole`;
  if ((await attempt(small(whole))).tag !== "ok") throw new Error("the uninterrupted run failed");
  if ((await attempt(small(dir), { stopAfter: 0 })).tag !== "ok") throw new Error("the stopped run failed");
  await Deno.remove(`${dir}/latest.json`);
  await Deno.remove(`${dir}/checkpoints`, { recursive: true });
  await Deno.writeTextFile(`${dir}/metrics.jsonl.tmp-1-0`, "half"); // a kill inside an atomic write
  const r = await attempt(small(dir), { resume: true, explicit: { lr: 0.5 } });
  if (r.tag !== "ConfigError" || !/lr is 0\.0001 in .*config\.json but 0\.5 was given/.test(r.message)) {
    throw new Error(`a changed --lr: ${r.tag}: ${r.message}`);
  }
  if ((await attempt(small(dir), { resume: true })).tag !== "ok") throw new Error("the restart failed");
  if (await Deno.stat(`${dir}/metrics.jsonl.tmp-1-0`).then(() => true, () => false)) {
    throw new Error("the half-written temporary file is still there");
  }
  const [a, b] = [await snapshot(whole), await snapshot(dir)];
  for (const f of ["checkpoints/step-000002/model.safetensors", "eval.jsonl", "samples.jsonl"]) {
    if (a.get(f) !== b.get(f)) throw new Error(`${f} differs from the uninterrupted run`);
  }
  const evals = (b.get("eval.jsonl") ?? "").trim().split("\n").map((l) => JSON.parse(l).step);
  if (evals.join() !== "0,2") throw new Error(`eval.jsonl steps after the restart: ${evals}`);
});

Deno.test("claimRunFolder reads only; compare's --out follows the same rule", async () => {
  const dir = `${tmp}/claim`;
  const st = await Effect.runPromise(claimRunFolder(dir, modelDir, "fresh"));
  if (st.kind !== "new" || (await Deno.stat(dir).then(() => true, () => false))) throw new Error("it wrote");
  const refuse = async (out: string, re: RegExp) => {
    const e = await Effect.runPromiseExit(claimCompareFolder(out, modelDir));
    const err = Exit.isFailure(e) ? Cause.squash(e.cause) as { message: string; field?: string } : null;
    if (!err || err.field !== "--out" || !re.test(err.message)) throw new Error(`${out}: ${err?.message}`);
  };
  await refuse(modelDir, /is a model folder/);
  await refuse(`${tmp}/user-files`, /not a bupo comparison/);
  await Effect.runPromise(claimCompareFolder(`${tmp}/cmp`, modelDir));
  await Deno.stat(`${tmp}/cmp/bupo-compare.json`);
  await Effect.runPromise(claimCompareFolder(`${tmp}/cmp`, modelDir)); // its own folder again
});
