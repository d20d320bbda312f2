/**
 * Tasks from the command line: the registry of embedded tasks, the Task check every task passes (fields, then
 * drawn problems against the contract), task modules (`./t.ts`, `./t.ts#name`, factories) with errors naming
 * the flag, and a module task trained 2 steps by train.ts, then resumed to the uninterrupted run's bytes.
 */
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import { loadTaskModule, resolveTask, splitTaskSpec } from "../formats/task.ts";
import { checkTask, EMBEDDED_TASKS, embeddedTask, embeddedTaskNames } from "../tasks/index.ts";
import type { Task } from "../tasks/task.ts";
import { resolveConfig } from "../training/config.ts";
import { modelDir, tmp } from "./train_fixture.ts";
import { runScript, tinyTrainArgs } from "./cli_util.ts";

/** Source of a task module over the fixture model's alphabet: echo a 3-digit number, then `.`. */
const ECHO = `
const make = (name: string) => ({
  name,
  description: "echo three digits",
  alphabet: "0123456789=.",
  stop: ".",
  maxPromptChars: 4,
  maxSolutionChars: 4,
  problem: (split: string, index: number, seed: number) => {
    const n = (index * 7919 + seed * 104729) % 500;
    const s = String(2 * n + (split === "eval" ? 1 : 0)).padStart(3, "0"); // odd: eval, even: train
    return { id: \`\${name}/\${split}/\${seed}/\${index}\`, prompt: s + "=", answer: s, solution: s + "." };
  },
  reward: (p: { answer: string }, c: string) => (c.split(".")[0] === p.answer ? 1 : 0),
});
export default make("echo");
export const named = make("echo-named");
export const factory = () => make("echo-factory");
export const notATask = { name: "x" };
export const withArgs = (n: number) => make(String(n));
`;

const taskDir = `${tmp}/tasks`;
await Deno.mkdir(taskDir, { recursive: true });
const echoPath = `${taskDir}/echo.ts`;
await Deno.writeTextFile(echoPath, ECHO);

const fails = async (what: string, f: () => unknown, re: RegExp, field = "--task") => {
  try {
    await f();
  } catch (e) {
    if (!(e instanceof ConfigError) || e.field !== field || !re.test(e.message)) {
      throw new Error(`${what}: wrong error ${e instanceof ConfigError ? `[${e.field}] ` : ""}${e}`);
    }
    return;
  }
  throw new Error(`${what}: no error`);
};

const copyTask = (over: Record<string, unknown> = {}): Task => ({
  name: "copy",
  description: "copy",
  alphabet: "0123456789>.",
  stop: ".",
  problem: (split, index, seed) => {
    const t = String((index * 7 + seed) % 100).padStart(2, "0") + (split === "train" ? "0" : "1");
    return { id: `copy/${split}/${seed}/${index}`, prompt: t + ">", answer: t, solution: t + "." };
  },
  reward: (p, c) => (c.split(".")[0] === p.answer ? 1 : 0),
  ...over,
} as Task);

const site = { field: "--task", spec: "./copy.ts" };

Deno.test("the registry names arith and rewrite; each passes the Task check; unknown names list the known", async () => {
  if (embeddedTaskNames().join() !== "arith,rewrite") throw new Error(embeddedTaskNames().join());
  for (const name of embeddedTaskNames()) {
    const t = embeddedTask(name);
    if (t.name !== name) throw new Error(`${name}: the task is named ${t.name}`);
    if (!EMBEDDED_TASKS[name].model.startsWith("models/")) throw new Error(EMBEDDED_TASKS[name].model);
    const viaSpec = await Effect.runPromise(resolveTask(name));
    if (viaSpec.name !== name) throw new Error(`resolveTask(${name}) gave ${viaSpec.name}`);
  }
  await fails(
    "unknown name",
    () => embeddedTask("algebra"),
    /--task algebra: no such embedded task; embedded: arith, rewrite/,
  );
  await fails(
    "unknown bare name through resolveTask",
    () => Effect.runPromise(resolveTask("algebra")),
    /no such embedded task; embedded: arith, rewrite; a module is named by its path/,
  );
});

Deno.test("checkTask accepts a good task and names what breaks the contract", async () => {
  const good = copyTask();
  if (checkTask(good, site) !== good) throw new Error("a good task is returned as it is");
  const cases: [string, unknown, RegExp][] = [
    ["not an object", 3, /expected a Task object/],
    ["no name", copyTask({ name: "" }), /`name` must be a non-empty string/],
    ["no reward", copyTask({ reward: undefined }), /`reward` must be a function .*it is missing/],
    ["problem not a function", copyTask({ problem: "x" }), /`problem` must be a function .*got string/],
    ["bad bound", copyTask({ maxPromptChars: 2.5 }), /`maxPromptChars` must be a positive integer/],
    ["empty stop", copyTask({ stop: "" }), /`stop` must be a non-empty string/],
    ["alphabet twice", copyTask({ alphabet: "0123456789>.0" }), /alphabet has "0" twice/],
    [
      "outside the alphabet",
      copyTask({ alphabet: "0123456789." }),
      /problem\("train", 0, 1\)\.prompt "010>" has characters outside the alphabet: ">"/,
    ],
    [
      "longer than stated",
      copyTask({ maxSolutionChars: 3 }),
      /problem\("train", 0, 1\)\.solution has 4 characters, more than the task's maxSolutionChars 3/,
    ],
    [
      "solution not rewarded",
      copyTask({ reward: () => 0.5 }),
      /reward of problem\("train", 0, 1\)'s own solution is 0.5; a solution must earn the full reward/,
    ],
    [
      "impure",
      copyTask({
        problem: (() => {
          let n = 0;
          return (split: string) => ({
            id: "i",
            prompt: `${n++}>`,
            answer: "",
            solution: "." + split.length,
          });
        })(),
        alphabet: "0123456789>.",
      }),
      /problem\("train", 0, 1\) is not pure/,
    ],
    [
      "shared prompt",
      copyTask({
        problem: (_s: string, i: number) => ({ id: `${i}`, prompt: "1>", answer: "1", solution: "1." }),
      }),
      /the prompt "1>" is in both splits/,
    ],
    [
      "throws",
      copyTask({
        problem: () => {
          throw new RangeError("boom");
        },
      }),
      /problem\("train", 0, 1\) threw: boom/,
    ],
    [
      "problem field",
      copyTask({ problem: () => ({ id: 1 }) }),
      /problem\("train", 0, 1\)\.id must be a string/,
    ],
  ];
  for (const [what, value, re] of cases) await fails(what, () => checkTask(value, site), re);
});

Deno.test("task modules: default, #named and factory exports load; bad specs fail naming the flag", async () => {
  const eq = (a: string, b: string) => {
    if (a !== b) throw new Error(`${a} !== ${b}`);
  };
  eq(JSON.stringify(splitTaskSpec("./t.ts#copy")), JSON.stringify({ path: "./t.ts", exportName: "copy" }));
  eq(JSON.stringify(splitTaskSpec("./t.ts")), JSON.stringify({ path: "./t.ts" }));
  eq((await loadTaskModule(echoPath)).name, "echo");
  eq((await loadTaskModule(`${echoPath}#named`)).name, "echo-named");
  eq((await loadTaskModule(`${echoPath}#factory`)).name, "echo-factory");
  eq((await Effect.runPromise(resolveTask(`${echoPath}#named`))).name, "echo-named");
  const p = (await loadTaskModule(echoPath)).problem("eval", 3, 1);
  if (p.prompt !== `${String(2 * ((3 * 7919 + 104729) % 500) + 1).padStart(3, "0")}=`) {
    throw new Error(p.prompt);
  }
  await fails(
    "no such export",
    () => loadTaskModule(`${echoPath}#nope`),
    /no export named `nope` \(it exports: /,
  );
  await fails("not a task", () => loadTaskModule(`${echoPath}#notATask`), /`description` must be a string/);
  await fails(
    "a function of arguments",
    () => loadTaskModule(`${echoPath}#withArgs`),
    /a function of arguments/,
  );
  await fails("missing file", () => loadTaskModule(`${taskDir}/missing.ts`), /cannot import the module/);
  const none = `${taskDir}/none.ts`;
  await Deno.writeTextFile(none, "export const other = 1;\n");
  await fails("no default", () => loadTaskModule(none), /exports no Task \(expected a default export/);
  await fails("field named", () => loadTaskModule(none, "task"), /^task /, "task");
});

const cli = (args: string[]) => runScript("train.ts", args);

/** A tiny CPU run of the echo module task into `out`: 2 prompts x 2, 2 eval problems, a checkpoint every step. */
const echoRun = (out: string, task: string, steps: number) => [
  ...tinyTrainArgs(modelDir, out, { steps, evalEvery: 1, checkpointEvery: 1 }),
  "--task",
  task,
  "--layer",
  "0",
  "--phase-steps",
  "1",
  "--device",
  "cpu",
  "--quiet",
];

Deno.test("train.ts --task ./module.ts: 2 steps write every output; a resumed run ends with the same bytes", async () => {
  const whole = `${tmp}/echo-whole`, split = `${tmp}/echo-split`;
  const a = await cli(echoRun(whole, echoPath, 2));
  if (a.code !== 0) throw new Error(`2 steps: exit ${a.code}\n${a.text}`);
  for (const f of ["metrics.jsonl", "eval.jsonl", "samples.jsonl", "plots.svg", "latest.json"]) {
    await Deno.stat(`${whole}/${f}`);
  }
  const cfg = JSON.parse(await Deno.readTextFile(`${whole}/config.json`));
  if (cfg.task !== echoPath) throw new Error(`config.json task ${cfg.task}`);
  const samples = (await Deno.readTextFile(`${whole}/samples.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  // The eval prompts are the echo task's (odd three-digit numbers and "="), not arithmetic.
  if (!samples.length || !samples.every((s) => /^\d\d[13579]=$/.test(s.prompt))) {
    throw new Error(`samples: ${samples.map((s) => s.prompt)}`);
  }
  const evals = (await Deno.readTextFile(`${whole}/eval.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l).step
  );
  if (evals.join() !== "0,1,2") throw new Error(`eval steps ${evals}`);
  const b = await cli(echoRun(split, echoPath, 1));
  if (b.code !== 0) throw new Error(`1 step: exit ${b.code}\n${b.text}`);
  const c = await cli([...echoRun(split, echoPath, 2), "--resume"]);
  if (c.code !== 0) throw new Error(`resume: exit ${c.code}\n${c.text}`);
  const bytes = (d: string) => Deno.readFile(`${d}/checkpoints/step-000002/model.safetensors`);
  const [x, y] = [await bytes(whole), await bytes(split)];
  if (x.length !== y.length || x.some((v, i) => v !== y[i])) {
    throw new Error("the resumed run's step-2 model differs from the uninterrupted run's");
  }
  const steps = (await Deno.readTextFile(`${split}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l).step
  );
  if (steps.join() !== "1,2") throw new Error(`metrics after resume: ${steps}`);
  // Resuming under another task is refused: the checkpoint keeps its settings.
  const d = await cli([...echoRun(split, "arith", 3), "--resume"]);
  if (d.code !== 2 || !/task is ".*echo\.ts" in \S+ but "arith" was given/.test(d.text)) {
    throw new Error(`resume with another task: exit ${d.code}\n${d.text}`);
  }
});

Deno.test("train.ts --task: a bad module, a task the tokenizer cannot spell, fail before any step", async () => {
  const expect = async (task: string, re: RegExp) => {
    const out = `${tmp}/bad-${crypto.randomUUID()}`;
    const r = await cli(echoRun(out, task, 2));
    if (r.code !== 2 || !re.test(r.text)) throw new Error(`--task ${task}: exit ${r.code}\n${r.text}`);
    if (await Deno.stat(out).then(() => true, () => false)) {
      throw new Error(`--task ${task}: ${out} was created`);
    }
  };
  await expect(
    `${echoPath}#notATask`,
    /--task .*echo\.ts#notATask: the task's `description` must be a string/,
  );
  await expect("nonsense", /--task nonsense: no such embedded task; embedded: arith, rewrite/);
  // The fixture model's tokenizer is arithmetic's: the rewrite task's letters are not in it.
  await expect(
    "rewrite",
    /--task rewrite: the tokenizer of .* lacks the task's characters "abc_" \(models\/tiny-rewrite is the shipped model for this task: --model models\/tiny-rewrite\)/,
  );
});

Deno.test("the task field of a config accepts names and paths", () => {
  for (const task of ["arith", "rewrite", "./mine.ts#t"]) {
    if (resolveConfig({ task }, {}).task !== task) throw new Error(task);
  }
});
