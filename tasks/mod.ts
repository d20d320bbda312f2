/** Verifiable reasoning tasks: the Task interface, batching helpers and the embedded arithmetic task. */
export * from "./task.ts";
export * from "./arith.ts";
