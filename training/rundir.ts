/**
 * The layout of a run folder, in one place: the logs and reports a run writes, `latest.json`, and the checkpoint
 * folders `checkpoints/step-NNNNNN` with what each holds besides the model and tokenizer files.
 */

/** The folder name of the checkpoint of `step`: `step-000042`. */
export const stepName = (step: number): string => `step-${String(step).padStart(6, "0")}`;

/** Whether a folder name is a checkpoint's (`step-` and digits). */
export const isStepName = (name: string): boolean => /^step-\d+$/.test(name);

/** The files of one checkpoint folder `ck`, besides the model (formats/hf.ts) and tokenizer files. */
export const checkpointFiles = (ck: string) => ({
  /** AdamW moments, one tensor per parameter and moment (`m.<name>`, `v.<name>`). */
  optimizer: `${ck}/optimizer.safetensors`,
  /** Step, optimizer step, objective and config (`CheckpointState`). */
  state: `${ck}/state.json`,
});

/** Paths of the run folder `dir`. */
export const runDir = (dir: string) => ({
  dir,
  /** One line of step metrics per step. */
  metrics: `${dir}/metrics.jsonl`,
  /** One line per evaluation. */
  evals: `${dir}/eval.jsonl`,
  /** Example completions of every evaluation. */
  samples: `${dir}/samples.jsonl`,
  plots: `${dir}/plots.svg`,
  /** The resolved run config. */
  config: `${dir}/config.json`,
  /** `--layer auto`: the entropy flow of the base model and the boundary layer chosen from it (training/boundary.ts). */
  boundary: `${dir}/boundary.json`,
  /** The objective in its text form. */
  objective: `${dir}/objective.txt`,
  /** `{ "checkpoint": "checkpoints/step-NNNNNN", "step": N }`: the newest complete checkpoint. */
  latest: `${dir}/latest.json`,
  checkpoints: `${dir}/checkpoints`,
  /** The checkpoint folder of `step`. */
  checkpoint: (step: number) => `${dir}/checkpoints/${stepName(step)}`,
  /** The checkpoint of `step` relative to the run folder, as latest.json names it. */
  checkpointRef: (step: number) => `checkpoints/${stepName(step)}`,
  /** A folder named by latest.json (relative to the run folder). */
  resolve: (rel: string) => `${dir}/${rel}`,
  /** Where the checkpoint of `step` is written before it is renamed into place (one per process). */
  checkpointTmp: (step: number) => `${dir}/checkpoints/.tmp-${stepName(step)}-${Deno.pid}`,
});

export type RunDir = ReturnType<typeof runDir>;
