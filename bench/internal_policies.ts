/**
 * Held-out accuracy of every internal layer policy of a model, each sampled by itself (what `--eval-policy
 * layer(k)` evaluates during training), beside the final policy: how good pi_k is before any RL.
 * Run: `deno run -A bench/internal_policies.ts [--model models/tiny-arith] [--task arith] [--problems 128]
 * [--k 4] [--max-new 64]`; prints one table row per policy.
 */
import { Effect } from "effect";
import { withGpu } from "../engine/gpu/device.ts";
import { readModelDir, toParams } from "../formats/hf.ts";
import { resolveTask } from "../formats/task.ts";
import { CharTokenizer, readTokenizerDir } from "../formats/tokenizer.ts";
import { final, type InternalPolicy, layer } from "../policies/internal.ts";
import { evaluate } from "../training/evaluate.ts";

const arg = (name: string, dflt: string) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : dflt;
};
const model = arg("model", "models/tiny-arith");
const problems = Number(arg("problems", "128")),
  k = Number(arg("k", "4")),
  maxNew = Number(arg("max-new", "64"));
const host = await Effect.runPromise(readModelDir(model));
const tok = await Effect.runPromise(readTokenizerDir(model));
if (!(tok instanceof CharTokenizer)) throw new Error(`${model}: a char model is needed (the embedded tasks)`);
const task = await Effect.runPromise(resolveTask(arg("task", "arith"), "--task", 1));
const policies: InternalPolicy[] = [
  ...Array.from({ length: host.config.numLayers - 1 }, (_, l) => layer(l)),
  final,
];
await withGpu(async (gpu) => {
  const p = toParams(gpu, host);
  try {
    console.log(`## internal policies of ${model} on ${task.name}: ${problems} held-out problems, k = ${k}`);
    console.log("| policy | avg@k | pass@k | greedy | seconds |\n| --- | ---: | ---: | ---: | ---: |");
    for (const policy of policies) {
      const t0 = performance.now();
      const r = await evaluate(host.config, p, tok, task, {
        problems,
        k,
        temperature: 1,
        maxNew,
        seed: 1 + 7919,
        taskSeed: 1,
        policy,
      });
      const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
      console.log(
        `| ${r.policy} | ${pct(r.avgAtK)} | ${pct(r.passAtK)} | ${pct(r.greedy)} | ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } |`,
      );
    }
  } finally {
    p.dispose();
  }
});
