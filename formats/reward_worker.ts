/**
 * The worker side of module rewards (formats/rewards.ts starts it): imports one module, picks its reward
 * export, and answers score requests one at a time. A reward that loops forever blocks only this worker,
 * which the main thread terminates at the timeout and starts again.
 *
 * Protocol: in {type: "load", url, exportName?, factoryArgs?} -> out {type: "ready"} or {type: "load-error", message};
 * in {type: "score", id, row, completion, info} -> out {type: "result", id, value} or {type: "error", id,
 * message}.
 */
import type { CompletionInfo, RewardFn, RewardRow } from "../tasks/reward.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
};

type Fn = (...args: unknown[]) => unknown;
const isFn = (x: unknown): x is Fn => typeof x === "function";

/**
 * The reward of a module: `exportName` when given; else the default export (a function, or an object with a
 * `score` function), else `reward`, else verl's `compute_score(data_source, solution_str, ground_truth,
 * extra_info)`.
 */
const pick = (mod: Record<string, unknown>, exportName?: string): RewardFn | string => {
  if (exportName !== undefined) {
    const f = mod[exportName];
    return isFn(f) ? (f as RewardFn) : `the module has no function export named ${exportName}`;
  }
  const d = mod.default;
  if (isFn(d)) return d as RewardFn;
  if (typeof d === "object" && d !== null && isFn((d as { score?: unknown }).score)) {
    const o = d as { score: Fn };
    return (row, completion, info) => o.score(row, completion, info) as ReturnType<RewardFn>;
  }
  if (isFn(mod.reward)) return mod.reward as RewardFn;
  const verl = mod.compute_score;
  if (isFn(verl)) {
    return (row: RewardRow, completion: string) =>
      verl(row.dataSource, completion, row.groundTruth, row.extraInfo) as ReturnType<RewardFn>;
  }
  return "the module exports no reward: expected a default export (row, completion, info) => number | " +
    "{score, ...}, an export named `reward`, or verl's `compute_score`";
};

let reward: RewardFn | undefined;
/** The call being answered (an error the module leaves uncaught is reported as that call's failure). */
let current: number | undefined;

const uncaught = (what: string) => (e: Event) => {
  e.preventDefault();
  const err = (e as ErrorEvent).error ?? (e as PromiseRejectionEvent).reason ?? (e as ErrorEvent).message;
  if (current !== undefined) {
    scope.postMessage({ type: "error", id: current, message: `${what}: ${message(err)}` });
    current = undefined;
  }
};
globalThis.addEventListener("error", uncaught("left an error uncaught"));
globalThis.addEventListener("unhandledrejection", uncaught("left a promise rejection unhandled"));

const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0];

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data as
    | { type: "load"; url: string; exportName?: string; factoryArgs?: unknown[] }
    | { type: "score"; id: number; row: RewardRow; completion: string; info: CompletionInfo };
  if (m.type === "load") {
    try {
      let got = pick(await import(m.url), m.exportName);
      // A factory export: called once with the arguments, it returns the reward function.
      if (m.factoryArgs && typeof got !== "string") {
        const made: unknown = (got as unknown as Fn)(...m.factoryArgs);
        got = isFn(made) ? (made as RewardFn) : `the factory ${m.exportName} did not return a function`;
      }
      if (typeof got === "string") scope.postMessage({ type: "load-error", message: got });
      else (reward = got), scope.postMessage({ type: "ready" });
    } catch (err) {
      scope.postMessage({ type: "load-error", message: `cannot import the module (${message(err)})` });
    }
    return;
  }
  current = m.id;
  try {
    const value = await reward!(m.row, m.completion, m.info);
    if (current !== m.id) return;
    try {
      scope.postMessage({ type: "result", id: m.id, value });
    } catch (err) {
      scope.postMessage({
        type: "error",
        id: m.id,
        message: `returned a value that cannot be sent (${message(err)})`,
      });
    }
  } catch (err) {
    if (current === m.id) scope.postMessage({ type: "error", id: m.id, message: `threw: ${message(err)}` });
  } finally {
    if (current === m.id) current = undefined;
  }
};
