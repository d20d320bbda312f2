/**
 * Issue 14.2 and 14.3: `--objective ./file.ts#exportName` picks any export; with an objective module the flags
 * it makes meaningless are errors and absent from config.json; every policy of every phase and term is checked
 * against the model before step 1, the error naming the term, the layer count, and a flag only when one set it.
 */
import { Cause, Effect, Exit } from "effect";
import { ConfigError } from "../core/errors.ts";
import { attn, ffn, final, layer } from "../policies/internal.ts";
import { loadObjectiveModule, splitExport } from "../formats/module.ts";
import { entropyBonus, grpo, klPolicies, klToRef, nll, phases, sum } from "../objectives/objective.ts";
import { allTerms, layerProblems } from "../objectives/validate.ts";
import { resolveConfig, type TrainConfig } from "../training/config.ts";
import { gradients } from "../training/grad.ts";
import { runTraining } from "../training/run.ts";
import { cpu32 } from "./util.ts";
import { config, modelDir, small, tmp } from "./train_fixture.ts";
import { runScript, tinyTrainArgs } from "./cli_util.ts";

const root = new URL("..", import.meta.url).pathname;

/** A module in the test folder over objectives/objective.ts and policies/internal.ts. */
const moduleFile = async (name: string, body: string): Promise<string> => {
  const file = `${tmp}/${name}.ts`;
  await Deno.writeTextFile(
    file,
    `import { bupo, entropyBonus, grpo, phases, sum } from "${root}objectives/objective.ts";\n` +
      `import { attn, final, layer } from "${root}policies/internal.ts";\n${body}\n`,
  );
  return file;
};

const failure = async <A, E>(e: Effect.Effect<A, E>) => {
  const exit = await Effect.runPromiseExit(e);
  if (Exit.isSuccess(exit)) return null;
  return Cause.squash(exit.cause) as { _tag?: string; field?: string; message: string };
};

const rejects = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (e) {
    return e as ConfigError;
  }
  return null;
};

const cli = (...args: string[]) => runScript("train.ts", args);

const tinyRun = (out: string) => [
  ...tinyTrainArgs(modelDir, out, { steps: 2, evalEvery: 2 }),
  "--device",
  "cpu",
  "--quiet",
];

// ---- 14.2: exports by name ---------------------------------------------------------------------------------

Deno.test("path#name picks an export; a bare path without default or `objective` lists the exports", async () => {
  const file = await moduleFile(
    "many",
    `export const buPO = bupo({ layer: 0, until: 1 });\n` +
      `export const multiLayer = sum(grpo(layer(0)), grpo(final));\n` +
      `export const helper = (k: number) => grpo(layer(k));\n` +
      `export const notOne = 3;`,
  );
  if (JSON.stringify(splitExport(`${file}#buPO`)) !== JSON.stringify({ path: file, name: "buPO" })) {
    throw new Error(`splitExport: ${JSON.stringify(splitExport(`${file}#buPO`))}`);
  }
  if (splitExport("a#b/c.ts").name !== undefined) throw new Error("a # inside a path was read as an export");
  const o = await loadObjectiveModule(`${file}#multiLayer`);
  if (allTerms(o).length !== 2) throw new Error(`multiLayer: ${JSON.stringify(o)}`);
  const bare = await rejects(loadObjectiveModule(file));
  if (
    !bare ||
    !/its Objective exports: buPO, multiLayer \(pick one with --objective .*many\.ts#buPO\)/.test(
      bare.message,
    )
  ) {
    throw new Error(`bare: ${bare?.message}`);
  }
  const missing = await rejects(loadObjectiveModule(`${file}#nope`));
  if (
    !missing || missing.field !== "--objective" ||
    !/no export named "nope"; its Objective exports: buPO, multiLayer/.test(missing.message)
  ) {
    throw new Error(`missing: ${missing?.message}`);
  }
  const fn = await rejects(loadObjectiveModule(`${file}#helper`));
  if (!fn || !/"helper" is a function, not an Objective/.test(fn.message)) {
    throw new Error(`fn: ${fn?.message}`);
  }
  const num = await rejects(loadObjectiveModule(`${file}#notOne`));
  if (!num || !/"notOne" is not a valid Objective/.test(num.message)) throw new Error(`num: ${num?.message}`);
});

Deno.test("an objective export by name trains 2 steps from the command line; config.json omits the built-in flags", async () => {
  const file = await moduleFile("named", `export const buPO = bupo({ layer: 1, until: 1, clipHigh: 0.28 });`);
  const out = `${tmp}/named-run`;
  const r = await cli(...tinyRun(out), "--objective", `${file}#buPO`);
  if (r.code !== 0) throw new Error(r.text);
  const cfg = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
  for (const k of ["layer", "phaseSteps", "clip", "clipHigh", "tisCap"]) {
    if (k in cfg) throw new Error(`config.json records ${k} for an objective module: ${JSON.stringify(cfg)}`);
  }
  if (cfg.objective !== `${file}#buPO`) throw new Error(`config.json objective ${cfg.objective}`);
  const objective = await Deno.readTextFile(`${out}/objective.txt`);
  if (!/pg\(layer\(1\), clip=0\.2\/0\.28/.test(objective)) throw new Error(objective);
  const state = JSON.parse(await Deno.readTextFile(`${out}/checkpoints/step-000002/state.json`));
  if ("layer" in state.config) throw new Error("the checkpoint records --layer");
  // It resumes with the same flags (the saved config takes defaults for what it does not record).
  const more = await cli(...tinyRun(out), "--objective", `${file}#buPO`, "--resume", "--steps", "3");
  if (more.code !== 0) throw new Error(more.text);
});

Deno.test("with an objective module, --layer, --phase-steps, --clip, --clip-high and --tis-cap are errors", async () => {
  const file = await moduleFile("plain", `export default grpo(final);`);
  for (
    const [flag, value] of [["--layer", "1"], ["--phase-steps", "3"], ["--clip", "0.1"], [
      "--clip-high",
      "0.3",
    ], ["--tis-cap", "2"]]
  ) {
    const r = await cli(...tinyRun(`${tmp}/meaningless`), "--objective", file, flag, value);
    if (r.code !== 2 || !r.text.includes(`${flag} ${value}: the objective module ${file} defines its own`)) {
      throw new Error(`${flag}: exit ${r.code}: ${r.text}`);
    }
  }
  const e = (() => {
    try {
      resolveConfig({ objective: file, layer: 1 } as Partial<TrainConfig>, {});
    } catch (x) {
      return x as ConfigError;
    }
  })();
  if (!e || e.field !== "layer" || e.source !== "config file") {
    throw new Error(`config file: ${e?.field} ${e?.source}`);
  }
  // The built-in objectives still take them.
  resolveConfig({}, { objective: "bupo", layer: 1, clip: 0.1 });
});

// ---- 14.3: checked against the model before step 1 ---------------------------------------------------------

Deno.test("layerProblems finds every policy of every phase and term that the model lacks", () => {
  const o = sum(
    phases([{ until: 3, objective: grpo(layer(0)) }, { objective: grpo(layer(5)) }]),
    entropyBonus(attn(2), 0.01),
    klPolicies(final, ffn(7)),
    nll(layer(1)),
    klToRef(layer(2)),
  );
  const ps = layerProblems(o, 2);
  const got = ps.map((p) => `${p.field} ${p.policy} ${p.steps}`);
  const want = [
    "terms[0].phases[1].objective.terms[0] layer(5) 4..",
    "terms[1] attn(2) 1..",
    "terms[2] ffn(7) 1..",
    "terms[4] layer(2) 1..",
  ];
  if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${JSON.stringify(got)}`);
  if (
    !/term pg\(layer\(5\), .*\) \(steps 4\.\.\) reads layer\(5\), but the model has 2 layers \(0-based: 0\.\.1\)/
      .test(ps[0].message)
  ) {
    throw new Error(ps[0].message);
  }
  if (layerProblems(o, 8).length !== 0) throw new Error("an 8-layer model lacks nothing");
});

Deno.test("a bad layer anywhere in a module's objective is refused before step 1, naming the term, not --layer", async () => {
  for (
    const [name, body, re] of [
      [
        "layer7",
        "export default grpo(layer(7));",
        /terms\[0\]: term pg\(layer\(7\), .*reads layer\(7\), but the model has 2 layers/,
      ],
      [
        "later_phase",
        "export default phases([{ until: 1, objective: grpo(final) }, { objective: grpo(layer(4)) }]);",
        /phases\[1\]\.objective\.terms\[0\]: term pg\(layer\(4\).*\(steps 2\.\.\) reads layer\(4\)/,
      ],
      [
        "entropy",
        "export default sum(grpo(final), entropyBonus(attn(3), 0.01));",
        /term entropy\(attn\(3\).* reads attn\(3\)/,
      ],
    ] as const
  ) {
    const file = await moduleFile(name, body);
    const out = `${tmp}/bad-${name}`;
    const e = await failure(
      runTraining(cpu32, small(out, { objective: file }), { resume: false, quiet: true }),
    );
    if (
      !e || e._tag !== "ConfigError" || e.field !== "--objective" || !re.test(e.message) ||
      /--layer/.test(e.message)
    ) {
      throw new Error(`${name}: ${e?._tag} ${e?.field}: ${e?.message}`);
    }
    if (await Deno.stat(out).then(() => true, () => false)) {
      throw new Error(`${name}: the refused run wrote ${out}`);
    }
  }
  // --layer is named when BuPO's layer came from it, and its default is named as one.
  const given = await failure(
    runTraining(cpu32, small(`${tmp}/bad-flag`, { layer: 5 }), {
      resume: false,
      quiet: true,
      explicit: { layer: 5 },
    }),
  );
  if (
    !given || given.field !== "--layer" ||
    !given.message.startsWith("--layer 5: BuPO's internal phase reads layer(5), but the model")
  ) {
    throw new Error(`given: ${given?.message}`);
  }
  const dflt = await failure(
    runTraining(cpu32, small(`${tmp}/bad-default`, { layer: 2 }), { resume: false, quiet: true }),
  );
  if (!dflt || !dflt.message.startsWith("--layer 2 (the default):")) {
    throw new Error(`default: ${dflt?.message}`);
  }
});

Deno.test("a KL-to-reference term inside a module loads the reference model (no --kl needed)", async () => {
  const file = await moduleFile(
    "with_kl",
    `import { klToRef } from "${root}objectives/objective.ts";\n` +
      `export default phases([{ until: 1, objective: grpo(final) }, { objective: sum(grpo(final), klToRef(final, { coef: 0.1 })) }]);`,
  );
  const e = await failure(
    runTraining(cpu32, small(`${tmp}/module-kl`, { objective: file }), { resume: false, quiet: true }),
  );
  if (e) throw new Error(`${e._tag}: ${e.message}`);
});

Deno.test("grad checks the objective against the model too, naming --layer only when it set the layer", async () => {
  const batch = { ids: [[1, 2, 3]], promptLen: 1, advantages: [1] };
  const e = await failure(
    gradients({
      backend: cpu32,
      model: { dir: modelDir },
      batch,
      objective: grpo(layer(9)),
      objectiveSource: { field: "--layer", value: "9" },
    }),
  );
  if (
    !e || e.field !== "--layer" ||
    !/^--layer 9: terms\[0\]: term pg\(layer\(9\).*the model has 2 layers/.test(e.message)
  ) {
    throw new Error(`${e?.field}: ${e?.message}`);
  }
  const lib = await failure(
    gradients({ backend: cpu32, model: { dir: modelDir }, batch, objective: grpo(attn(4)) }),
  );
  if (!lib || lib.field !== "objective" || !/reads attn\(4\)/.test(lib.message)) {
    throw new Error(`${lib?.message}`);
  }
  void config;
});
