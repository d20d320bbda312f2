/** Verifiable reasoning tasks: the Task interface, batching helpers and the embedded arithmetic and rewriting tasks. */
export * from "./task.ts";
export * from "./arith.ts";
export * from "./rewrite.ts";
