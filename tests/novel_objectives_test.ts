/** The README's novel objectives, run verbatim: build, show, JSON round trip, one training step on a tiny model. */
import { adamwHyper } from "../core/optim.ts";
import { adamwSegments } from "../kernels/adamw.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { tidy } from "../engine/tensor.ts";
import { objectiveFromJson, objectiveToJson } from "../objectives/codec.ts";
import { lowerStep } from "../objectives/lower.ts";
import { EqObjective, type Objective, show } from "../objectives/objective.ts";
import { rolloutFromSequences, rolloutTensors } from "../objectives/batch.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { showPolicy } from "../policies/internal.ts";
import { initParams, paramsToHostArrays } from "../policies/params.ts";
import { requiredReadouts } from "../objectives/readouts.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";

const root = new URL("..", import.meta.url);

/** The first ```ts block of the README's "## Objectives" section, with its imports pointed at this checkout. */
const snippet = async (): Promise<string> => {
  const readme = await Deno.readTextFile(new URL("README.md", root));
  const section = readme.slice(readme.indexOf("\n## Objectives"));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error("README: no ts block in ## Objectives");
  return m[1].replaceAll(`from "./`, `from "${root.href}`);
};

const load = async (): Promise<Record<string, Objective>> => {
  const path = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(path, await snippet());
  try {
    return await import(`file://${path}`);
  } finally {
    await Deno.remove(path);
  }
};

const objectives = await load();
const NAMES = ["buPO", "multiLayer", "internalExploration", "selfDistilled"];

Deno.test("README objectives: all four build, show their term trees and round-trip through JSON", () => {
  if (Object.keys(objectives).sort().join() !== [...NAMES].sort().join()) {
    throw new Error(`README exports ${Object.keys(objectives)}`);
  }
  for (const name of NAMES) {
    const o = objectives[name];
    const text = show(o);
    if (text.length === 0 || text === "0") throw new Error(`${name}: empty show`);
    const back = objectiveFromJson(name, objectiveToJson(o));
    if (!EqObjective.equals(o, back)) throw new Error(`${name}: JSON round trip changed it:\n${text}`);
  }
  const s = show(objectives.buPO);
  if (
    !/steps 1\.\.30:\n\s+\+ 1 \* pg\(layer\(5\)/.test(s) || !/steps 31\.\.:\n\s+\+ 1 \* pg\(final/.test(s)
  ) {
    throw new Error(s);
  }
  const kl = requiredReadouts(objectives.selfDistilled, 1).kl.map((p) =>
    `${showPolicy(p.from)}|${showPolicy(p.to)}`
  );
  if (kl.join() !== "final|layer(3)") throw new Error(`self-distillation reads ${kl}`);
});

Deno.test("README objectives: one AdamW step on an 8-layer tiny model, finite loss, parameters move", async () => {
  const cfg = tinyConfig({ numLayers: 8, vocabSize: 48, hiddenSize: 16, numHeads: 2, numKvHeads: 1 });
  const be = new CpuBackend("f32");
  const host = rolloutFromSequences([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14]], 2, [
    1,
    -0.5,
    -0.5,
  ]);
  for (const name of NAMES) {
    for (const step of [1, 31]) {
      const p = initParams(be, paramSpecs(cfg), 21, 0.2);
      const opt = createOptimizer(p, { lr: 1e-3 });
      const batch = rolloutTensors(be, host);
      await tidy(async () => {
        const before = (await paramsToHostArrays(p)).flatMap((x) => [...x]);
        const r = lowerStep(cfg, p, batch, objectives[name], step, { onPolicy: true, chunk: 64 });
        adamwSegments(p.segments, r.grads, opt.m, opt.v, adamwHyper(opt.config, ++opt.step));
        const loss = (await r.loss.data())[0];
        if (!Number.isFinite(loss)) throw new Error(`${name} step ${step}: loss ${loss}`);
        const after = (await paramsToHostArrays(p)).flatMap((x) => [...x]);
        if (!after.some((x, i) => x !== before[i]) || after.some((x) => !Number.isFinite(x))) {
          throw new Error(`${name} step ${step}: parameters did not move or went non-finite`);
        }
      });
      batch.dispose();
      disposeOptimizer(opt);
      p.dispose();
    }
  }
});
