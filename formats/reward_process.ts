/**
 * The child-process side of worker rewards (formats/rewards.ts starts it with `deno run`): imports one module,
 * picks its reward export, and answers score requests one at a time. A reward that loops for ever blocks only
 * this process, which the parent kills (SIGKILL) at the timeout and starts again. (A Deno Worker cannot be used:
 * in Deno 2.9, `Worker.terminate()` leaves a worker that is stuck in synchronous code running on its thread,
 * one CPU core each, until the process exits; see README, "Known issues".)
 *
 * Protocol, one message a line, each a structured-clone serialization (node:v8) in base64 after the marker
 * `\x1ebupo:`; other lines on stdout (a reward's console.log) are the reward's output and are passed on.
 * In: {type: "load", url, exportName?, factoryArgs?} -> out {type: "ready"} or {type: "load-error", message};
 * in: {type: "score", id, row, completion, info} -> out {type: "result", id, value} or {type: "error", id,
 * message}.
 */
import { Buffer } from "node:buffer";
import v8 from "node:v8";
import type { CompletionInfo, RewardFn, RewardRow } from "../tasks/reward.ts";

/** The marker that starts every protocol line. */
export const MARK = "\x1ebupo:";

/** A message as one protocol line. */
export const encodeMessage = (m: unknown): string =>
  `${MARK}${Buffer.from(v8.serialize(m)).toString("base64")}\n`;

/** The message of a protocol line (without its newline), or undefined for any other line. */
export const decodeMessage = (line: string): unknown =>
  line.startsWith(MARK) ? v8.deserialize(Buffer.from(line.slice(MARK.length), "base64")) : undefined;

/** Text split into lines (without their newlines); a last line without one is passed on at the end. */
export const lines = (): TransformStream<string, string> => {
  let rest = "";
  return new TransformStream({
    transform(chunk, out) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const p of parts) out.enqueue(p);
    },
    flush(out) {
      if (rest) out.enqueue(rest);
    },
  });
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

const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0];

if (import.meta.main) {
  const encoder = new TextEncoder();
  const post = (m: unknown) => {
    let line: string;
    try {
      line = encodeMessage(m);
    } catch (err) {
      const id = (m as { id?: number }).id;
      line = encodeMessage({
        type: "error",
        id,
        message: `returned a value that cannot be sent (${message(err)})`,
      });
    }
    const bytes = encoder.encode(line);
    for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
  };

  let reward: RewardFn | undefined;
  /** The call being answered (an error the module leaves uncaught is reported as that call's failure). */
  let current: number | undefined;
  const uncaught = (what: string) => (e: Event) => {
    e.preventDefault();
    const err = (e as ErrorEvent).error ?? (e as PromiseRejectionEvent).reason ?? (e as ErrorEvent).message;
    if (current !== undefined) {
      post({ type: "error", id: current, message: `${what}: ${message(err)}` });
      current = undefined;
    }
  };
  globalThis.addEventListener("error", uncaught("left an error uncaught"));
  globalThis.addEventListener("unhandledrejection", uncaught("left a promise rejection unhandled"));

  const handle = async (
    m:
      | { type: "load"; url: string; exportName?: string; factoryArgs?: unknown[] }
      | { type: "score"; id: number; row: RewardRow; completion: string; info: CompletionInfo },
  ) => {
    if (m.type === "load") {
      try {
        let got = pick(await import(m.url), m.exportName);
        // A factory export: called once with the arguments, it returns the reward function.
        if (m.factoryArgs && typeof got !== "string") {
          const made: unknown = (got as unknown as Fn)(...m.factoryArgs);
          got = isFn(made) ? (made as RewardFn) : `the factory ${m.exportName} did not return a function`;
        }
        if (typeof got === "string") post({ type: "load-error", message: got });
        else (reward = got), post({ type: "ready" });
      } catch (err) {
        post({ type: "load-error", message: `cannot import the module (${message(err)})` });
      }
      return;
    }
    current = m.id;
    try {
      const value = await reward!(m.row, m.completion, m.info);
      if (current === m.id) post({ type: "result", id: m.id, value });
    } catch (err) {
      if (current === m.id) post({ type: "error", id: m.id, message: `threw: ${message(err)}` });
    } finally {
      if (current === m.id) current = undefined;
    }
  };

  for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(lines())) {
    const m = decodeMessage(line);
    // Not awaited: a call that never settles (its error was reported as uncaught) must not block the next one.
    if (m !== undefined) handle(m as Parameters<typeof handle>[0]);
  }
}
