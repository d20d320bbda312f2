/**
 * `deno run -A train.ts` (or `deno task train`): GRPO / BuPO on the embedded arithmetic task from the shipped
 * base model, on the default WebGPU adapter. `--help` lists every flag; `--config run.json` reads them from a
 * file (flags win); `--resume` continues the run in `--out` from its last checkpoint.
 */
import { Cause, Effect, Exit } from "effect";
import { ConfigError } from "./core/errors.ts";
import { readJson } from "./io/files.ts";
import { CpuBackend } from "./engine/cpu.ts";
import { Gpu, GpuLive } from "./engine/gpu/device.ts";
import { decodeConfigJson, flagHelp, parseFlags, resolveConfig } from "./training/config.ts";
import { runTraining } from "./training/run.ts";

const HELP = `bupo train: RL (GRPO, BuPO, or your own Objective) on an embedded reasoning task.

  deno run -A train.ts [flags]          # defaults: BuPO on models/tiny-arith, finishes in minutes on llvmpipe
  deno run -A train.ts --objective grpo --out runs/grpo
  deno run -A train.ts --objective ./my_objective.ts   # a module exporting an Objective
  deno run -A train.ts --out runs/x --resume           # continue a stopped run from its last checkpoint

Flags:
  --config FILE          JSON file with any of the fields below (camelCase names); flags override it
  --resume               continue the run in --out
  --quiet                no progress output
${flagHelp()}

Layers are 0-based: --layer 2 is the paper's layer 3. Outputs in --out: metrics.jsonl, eval.jsonl,
samples.jsonl, plots.svg, config.json, objective.txt, checkpoints/ and latest.json.`;

const program = Effect.gen(function* () {
  const args = yield* Effect.try({ try: () => parseFlags(Deno.args), catch: (e) => e as ConfigError });
  if (args.help) {
    console.log(HELP);
    return;
  }
  const file = args.configFile
    ? yield* Effect.flatMap(
      readJson(args.configFile),
      (j) => Effect.try({ try: () => decodeConfigJson(args.configFile!, j), catch: (e) => e as ConfigError }),
    )
    : {};
  const cfg = yield* Effect.try({
    try: () => resolveConfig(file, args.overrides),
    catch: (e) => e as ConfigError,
  });
  const opts = { resume: args.resume, quiet: args.quiet, explicit: { ...file, ...args.overrides } };
  if (cfg.device === "cpu") {
    yield* runTraining(new CpuBackend("f32"), cfg, opts);
  } else {
    yield* Effect.gen(function* () {
      const gpu = yield* Gpu;
      yield* runTraining(gpu, cfg, opts);
    }).pipe(Effect.provide(GpuLive()));
  }
});

const exit = await Effect.runPromiseExit(program);
if (Exit.isFailure(exit)) {
  const e = Cause.squash(exit.cause) as Error & { _tag?: string };
  console.error(`train: ${e._tag ? `${e._tag}: ` : ""}${e.message}`);
  Deno.exit(e._tag === "ConfigError" ? 2 : 1);
}
