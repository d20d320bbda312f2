/** The objective algebra of bupo: objectives as values, their JSON codec, advantages and the reference interpreter. */
export * from "./objective.ts";
export * from "./codec.ts";
export * from "./advantages.ts";
export * from "./reference.ts";
export * from "./validate.ts";
