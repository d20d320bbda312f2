/**
 * The registry of embedded tasks (what `--task NAME` picks) and the check every task passes before it is used,
 * embedded or loaded from a module: the fields of the Task interface, then a few drawn problems against the
 * contract (pure, disjoint splits, characters in the alphabet, within the stated lengths, solutions earn the
 * full reward). Pure: no files, no imports of modules (formats/task.ts loads a task module).
 */
import { ConfigError } from "../core/errors.ts";
import { arithTask } from "./arith.ts";
import { rewriteTask } from "./rewrite.ts";
import { outsideAlphabet, type Problem, type Split, type Task } from "./task.ts";

/** One embedded task: how to make it, and the shipped base model pretrained on it. */
export interface EmbeddedTask {
  /** The task with its default options. */
  readonly make: () => Task;
  /** The shipped model folder (relative to the repository) whose tokenizer fits the task. */
  readonly model: string;
}

/** The embedded tasks by name: `--task arith`, `--task rewrite`. */
export const EMBEDDED_TASKS: { readonly [name: string]: EmbeddedTask } = {
  arith: { make: () => arithTask(), model: "models/tiny-arith" },
  rewrite: { make: () => rewriteTask(), model: "models/tiny-rewrite" },
};

/** The names of the embedded tasks, in registry order. */
export const embeddedTaskNames = (): string[] => Object.keys(EMBEDDED_TASKS);

/** Whether `spec` names an embedded task (rather than a module path). */
export const isEmbeddedTask = (spec: string): boolean => Object.hasOwn(EMBEDDED_TASKS, spec);

/** Where a task came from, for error messages: the flag or field, and the value given (a name or a path). */
export interface TaskSite {
  /** The flag or config field that named the task (`--task`). */
  readonly field: string;
  /** What it said: an embedded name or a module path. */
  readonly spec: string;
}

const bad = (site: TaskSite, message: string): ConfigError =>
  new ConfigError({
    source: site.spec,
    field: site.field,
    message: `${site.field} ${site.spec}: ${message}`,
  });

const isPosInt = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x > 0;

/** Problems drawn per split by `checkTask`'s contract check. */
export const TASK_CHECK_PROBLEMS = 16;

/**
 * Check that `value` is a Task and that a few of its problems keep the Task contract; returns it typed. Checks:
 * `name`, `description` and `alphabet` are strings (name and alphabet non-empty, each alphabet character once),
 * `problem` and `reward` are functions (`format` too when present), `stop` a non-empty string and the length
 * bounds positive integers when present; then, for the first TASK_CHECK_PROBLEMS problems of each split under
 * `seed`: `problem` returns a Problem (string id, prompt, answer, solution) and the same one when asked again,
 * prompt and solution use only alphabet characters and fit the stated bounds, no prompt appears in both
 * splits, and `reward(p, p.solution)` is a finite number >= 1. A failure is a ConfigError naming the flag, the
 * task and what was expected.
 */
export const checkTask = (value: unknown, site: TaskSite, seed = 1): Task => {
  if (value === null || typeof value !== "object") {
    throw bad(
      site,
      `expected a Task object (name, description, alphabet, problem, reward), got ${typeof value}`,
    );
  }
  const o = value as Record<string, unknown>;
  const need = (field: string, ok: boolean, what: string) => {
    if (!ok) {
      const got = o[field] === undefined ? "it is missing" : `got ${typeof o[field]}`;
      throw bad(site, `the task's \`${field}\` must be ${what} (${got})`);
    }
  };
  need("name", typeof o.name === "string" && o.name.length > 0, "a non-empty string");
  need("description", typeof o.description === "string", "a string");
  need("alphabet", typeof o.alphabet === "string" && o.alphabet.length > 0, "a non-empty string");
  need("problem", typeof o.problem === "function", "a function (split, index, seed) => Problem");
  need("reward", typeof o.reward === "function", "a function (problem, completion) => number");
  if (o.format !== undefined) need("format", typeof o.format === "function", "a function when present");
  if (o.stop !== undefined) {
    need("stop", typeof o.stop === "string" && o.stop.length > 0, "a non-empty string");
  }
  for (const f of ["maxPromptChars", "maxSolutionChars"]) {
    if (o[f] !== undefined) need(f, isPosInt(o[f]), "a positive integer when present");
  }
  const task = value as Task;
  const chars = Array.from(task.alphabet);
  const twice = chars.find((c, i) => chars.indexOf(c) !== i);
  if (twice !== undefined) {
    throw bad(site, `the task's alphabet has ${JSON.stringify(twice)} twice (each character once)`);
  }
  const draw = (split: Split, i: number): Problem => {
    const call = `problem(${JSON.stringify(split)}, ${i}, ${seed})`;
    let p: unknown;
    try {
      p = task.problem(split, i, seed);
    } catch (e) {
      throw bad(site, `${call} threw: ${(e as Error)?.message ?? String(e)}`);
    }
    if (p === null || typeof p !== "object") throw bad(site, `${call} returned ${typeof p}, not a Problem`);
    for (const f of ["id", "prompt", "answer", "solution"]) {
      const v = (p as Record<string, unknown>)[f];
      if (typeof v !== "string") throw bad(site, `${call}.${f} must be a string (got ${typeof v})`);
    }
    return p as Problem;
  };
  const prompts: Record<Split, Set<string>> = { train: new Set(), eval: new Set() };
  for (const split of ["train", "eval"] as const) {
    for (let i = 0; i < TASK_CHECK_PROBLEMS; i++) {
      const p = draw(split, i);
      const call = `problem(${JSON.stringify(split)}, ${i}, ${seed})`;
      if (JSON.stringify(draw(split, i)) !== JSON.stringify(p)) {
        throw bad(site, `${call} is not pure: a second call returned another problem`);
      }
      for (const f of ["prompt", "solution"] as const) {
        const out = outsideAlphabet(task.alphabet, p[f]);
        if (out.length) {
          throw bad(
            site,
            `${call}.${f} ${JSON.stringify(p[f])} has characters outside the alphabet: ${
              JSON.stringify(out.join(""))
            }`,
          );
        }
      }
      for (
        const [f, bound] of [["prompt", task.maxPromptChars], ["solution", task.maxSolutionChars]] as const
      ) {
        const n = Array.from(p[f]).length;
        if (bound !== undefined && n > bound) {
          throw bad(
            site,
            `${call}.${f} has ${n} characters, more than the task's max${
              f === "prompt" ? "Prompt" : "Solution"
            }Chars ${bound}`,
          );
        }
      }
      let r: unknown;
      try {
        r = task.reward(p, p.solution);
      } catch (e) {
        throw bad(site, `reward of ${call}'s own solution threw: ${(e as Error)?.message ?? String(e)}`);
      }
      if (typeof r !== "number" || !Number.isFinite(r) || r < 1) {
        throw bad(
          site,
          `reward of ${call}'s own solution is ${
            JSON.stringify(r)
          }; a solution must earn the full reward (>= 1)`,
        );
      }
      prompts[split].add(p.prompt);
    }
  }
  const shared = [...prompts.train].find((x) => prompts.eval.has(x));
  if (shared !== undefined) {
    throw bad(
      site,
      `the prompt ${JSON.stringify(shared)} is in both splits (train and eval must be disjoint)`,
    );
  }
  return task;
};

/** The embedded task `name` (checked like any task); an unknown name is a ConfigError listing the known ones. */
export const embeddedTask = (name: string, field = "--task"): Task => {
  if (!isEmbeddedTask(name)) {
    throw bad(
      { field, spec: name },
      `no such embedded task; embedded: ${embeddedTaskNames().join(", ")} (or a module path, ./mytask.ts)`,
    );
  }
  return checkTask(EMBEDDED_TASKS[name].make(), { field, spec: name });
};
