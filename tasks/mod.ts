/** Verifiable reasoning tasks: the Task interface, batching helpers, the embedded tasks and their registry. */
export * from "./task.ts";
export * from "./arith.ts";
export * from "./rewrite.ts";
export * from "./index.ts";
