/**
 * Tasks named on the command line or in a config (`--task`): an embedded task's name (tasks/index.ts), or the
 * path of a TypeScript module that exports a Task, optionally `path#exportName`. The module's URL is built by
 * formats/module.ts (portable paths); the export is checked by `checkTask` like the embedded tasks.
 */
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import { checkTask, embeddedTask, embeddedTaskNames, isEmbeddedTask } from "../tasks/index.ts";
import type { Task } from "../tasks/task.ts";
import { importModule, moduleProblem, splitExport } from "./module.ts";

/** A task spec split into its module path and export name (`./t.ts#copy` -> ["./t.ts", "copy"]). */
export const splitTaskSpec = (spec: string): { path: string; exportName?: string } => {
  const { path, name } = splitExport(spec);
  return name === undefined ? { path } : { path, exportName: name };
};

const problem = moduleProblem;

/** Whether a spec reads as a module path rather than an embedded name. */
const looksLikePath = (spec: string) => /[/\\]|\.[cm]?[jt]sx?(#|$)|^file:|#/i.test(spec);

/**
 * Import the module of `spec` (`path` or `path#exportName`) and return its Task, checked by `checkTask` with
 * `seed`. The export rule: the named export when `#exportName` is given, else the default export, else an
 * export named `task`; a function of no arguments is called (a task factory, like `arithTask`). Every failure
 * is a ConfigError naming `field` and the spec: cannot import, no such export, not a Task, contract broken.
 */
export const loadTaskModule = async (spec: string, field = "--task", seed = 1): Promise<Task> => {
  const { name: exportName, mod } = await importModule(spec, field);
  let value: unknown;
  if (exportName !== undefined) {
    if (!(exportName in mod)) {
      const names = Object.keys(mod);
      throw problem(
        spec,
        field,
        `the module has no export named \`${exportName}\` (it exports: ${
          names.length ? names.join(", ") : "nothing"
        })`,
      );
    }
    value = mod[exportName];
  } else {
    value = mod.default ?? mod.task;
    if (value === undefined) {
      throw problem(
        spec,
        field,
        "the module exports no Task (expected a default export, an export named `task`, or path#exportName)",
      );
    }
  }
  if (typeof value === "function") {
    if (value.length !== 0) {
      throw problem(
        spec,
        field,
        "the export is a function of arguments; expected a Task or a function of none",
      );
    }
    try {
      value = (value as () => unknown)();
    } catch (e) {
      throw problem(spec, field, `the task factory threw: ${(e as Error)?.message ?? String(e)}`);
    }
  }
  return checkTask(value, { field, spec }, seed);
};

/**
 * The task a spec names: an embedded task (`arith`, `rewrite`) or a module (`./mytask.ts[#export]`), checked
 * against the Task contract. An unknown bare name is a ConfigError listing the embedded names.
 */
export const resolveTask = (spec: string, field = "--task", seed = 1): Effect.Effect<Task, ConfigError> =>
  Effect.tryPromise({
    try: async () => {
      if (isEmbeddedTask(spec)) return embeddedTask(spec, field);
      if (!looksLikePath(spec)) {
        throw problem(
          spec,
          field,
          `no such embedded task; embedded: ${
            embeddedTaskNames().join(", ")
          }; a module is named by its path (./mytask.ts or ./mytask.ts#exportName)`,
        );
      }
      return await loadTaskModule(spec, field, seed);
    },
    catch: (e) =>
      e instanceof ConfigError
        ? e
        : problem(spec, field, `cannot load the task (${(e as Error)?.message ?? e})`),
  });
