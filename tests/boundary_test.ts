/**
 * The boundary-layer rule (`--layer auto`) on hand-made FFN entropy changes, its edge cases (no positive layer, all
 * positive, the run reaching the top after leading negatives, one layer, zeros, non-finite values), the flag and
 * config value `auto`, and a tiny `--layer auto` run: boundary.json, the objective's layer, the config kept as
 * `auto`, a resume that reads the choice back.
 */
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import { parseFlags } from "../cli/flags.ts";
import {
  type BoundaryChoice,
  boundaryLayer,
  boundaryOfFlow,
  type EntropyFlow,
} from "../policies/analysis.ts";
import { decodeConfigJson } from "../training/config.ts";
import { runTraining } from "../training/run.ts";
import { TRAIN } from "../train.ts";
import { cpu32 } from "./util.ts";
import { small, tmp } from "./train_fixture.ts";

const expect = (got: BoundaryChoice, layer: number, reason: BoundaryChoice["reason"], what: string) => {
  if (got.layer !== layer || got.reason !== reason) {
    throw new Error(`${what}: expected layer ${layer} (${reason}), got ${JSON.stringify(got)}`);
  }
};

Deno.test("boundaryLayer: the last layer of the first run of positive FFN entropy changes", () => {
  // Exploration in layers 0..2, then convergence: k = 2.
  expect(boundaryLayer([0.4, 0.2, 0.05, -0.3, -1.2]), 2, "rule", "a plain run");
  const r = boundaryLayer([0.4, 0.2, 0.05, -0.3, -1.2]);
  if (r.runStart !== 0 || r.runEnd !== 2) throw new Error(`run ${r.runStart}..${r.runEnd}`);
  // A positive layer after the change has turned does not pull k up ("still" positive).
  expect(boundaryLayer([0.3, 0.1, -0.2, 0.5, -0.4, -0.9]), 1, "rule", "a later positive blip");
  // Leading non-positive layers are skipped: the run starts at the first positive layer.
  expect(boundaryLayer([-0.1, 0, 0.2, 0.3, -0.5, -0.2]), 3, "rule", "leading negatives");
  // Zero is not positive: it ends the run.
  expect(boundaryLayer([0.2, 0, 0.4, -1]), 0, "rule", "a zero ends the run");
  expect(boundaryLayer([0.5, -0.5]), 0, "rule", "two layers");
});

Deno.test("boundaryLayer edge cases: none positive -> 0; the run reaching the top -> L-2; one layer -> 0", () => {
  expect(boundaryLayer([-0.1, -0.2, -0.3, -0.4]), 0, "none-positive", "no positive layer");
  expect(boundaryLayer([0, 0, 0]), 0, "none-positive", "all zero");
  expect(boundaryLayer([0.1, 0.2, 0.3, 0.4]), 2, "positive-to-top", "all positive");
  expect(boundaryLayer([-0.1, 0.2, 0.3, 0.4]), 2, "positive-to-top", "leading negative, then up to the top");
  expect(boundaryLayer([0.3, 0.2]), 0, "positive-to-top", "two layers, both positive");
  expect(boundaryLayer([0.3]), 0, "positive-to-top", "one positive layer");
  expect(boundaryLayer([-0.3]), 0, "none-positive", "one negative layer");
  for (const bad of [[0.1, NaN, -1], [Infinity, -1], []]) {
    let threw = false;
    try {
      boundaryLayer(bad);
    } catch (e) {
      threw = e instanceof RangeError;
    }
    if (!threw) throw new Error(`no RangeError for ${JSON.stringify(bad)}`);
  }
});

/** A flow whose raw and normed FFN changes are given; everything else is filler. */
const flowOf = (raw: number[], normed: number[]): EntropyFlow => {
  const m = { entropy: 1, logp: -1 };
  const e = (ffn: number) => ({
    input: m,
    attnIn: m,
    attn: m,
    ffnIn: m,
    ffn: m,
    output: m,
    change: { attn: 0, ffn, layer: 0 },
  });
  return {
    numLayers: raw.length,
    vocabSize: 5,
    temperature: 1,
    norms: ["raw", "normed"],
    tokens: 1,
    targets: 1,
    final: m,
    layers: raw.map((x, l) => ({ layer: l, raw: e(x), normed: e(normed[l]) })),
    means: new Map(),
    passes: 1,
    forwards: 1,
  };
};

Deno.test("boundaryOfFlow reads the FFN changes of the norm asked for (raw by default)", () => {
  const f = flowOf([0.2, 0.1, -0.3, -0.1], [0.2, -0.1, -0.3, -0.1]);
  expect(boundaryOfFlow(f), 1, "rule", "raw");
  expect(boundaryOfFlow(f, "normed"), 0, "rule", "normed");
  let threw = false;
  try {
    boundaryOfFlow({ ...f, norms: ["normed"] }, "raw");
  } catch (e) {
    threw = e instanceof RangeError && /no raw readouts/.test(e.message);
  }
  if (!threw) throw new Error("a flow without raw readouts must be refused");
});

Deno.test("--layer accepts a 0-based layer or auto, on the command line and in config files", () => {
  const v = (argv: string[]) => {
    const p = parseFlags(TRAIN, argv);
    if (p.help) throw new Error("help");
    return p.values.layer as unknown;
  };
  if (v(["--layer", "auto"]) !== "auto" || v(["--layer", "3"]) !== 3) throw new Error("values");
  try {
    v(["--layer", "top"]);
    throw new Error("--layer top was accepted");
  } catch (e) {
    if (
      !(e instanceof ConfigError) || e.message !== `--layer: expected an integer (>= 0) or "auto", got "top"`
    ) {
      throw e;
    }
  }
  if (decodeConfigJson("run.json", { layer: "auto" }).layer !== "auto") throw new Error("config file");
  try {
    decodeConfigJson("run.json", { layer: "Auto" });
    throw new Error("layer Auto was accepted");
  } catch (e) {
    if (!(e instanceof ConfigError) || !/^run\.json: layer: expected an integer/.test(e.message)) throw e;
  }
});

Deno.test("--layer auto: boundary.json holds the flow and the rule's layer; the objective trains it; resume reads it", async () => {
  const out = `${tmp}/auto`;
  const cfg = small(out, { layer: "auto", steps: 2, phaseSteps: 2 });
  await Effect.runPromise(runTraining(cpu32, { ...cfg, steps: 1 }, { resume: false, quiet: true }));
  const rec = JSON.parse(await Deno.readTextFile(`${out}/boundary.json`));
  const changes = rec.flow.map((l: { ffnChange: number }) => l.ffnChange);
  const want = boundaryLayer(changes);
  if (rec.layer !== want.layer || rec.reason !== want.reason || rec.flow.length !== 2) {
    throw new Error(`boundary.json: ${JSON.stringify(rec)}`);
  }
  if (rec.norm !== "raw" || rec.prompts !== cfg.prompts || rec.responses !== cfg.prompts * cfg.group) {
    throw new Error(`what the flow was read on: ${JSON.stringify(rec)}`);
  }
  if (!(rec.tokens > 0) || !/still positive/.test(rec.rule)) throw new Error(JSON.stringify(rec));
  const objective = await Deno.readTextFile(`${out}/objective.txt`);
  if (!objective.includes(`layer(${rec.layer})`)) throw new Error(`objective.txt:\n${objective}`);
  const saved = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
  if (saved.layer !== "auto") throw new Error(`config.json keeps the request: ${saved.layer}`);
  // A resume reads the layer back: tamper with boundary.json's choice and the resumed objective follows it.
  const other = rec.layer === 0 ? 1 : 0;
  await Deno.writeTextFile(`${out}/boundary.json`, JSON.stringify({ ...rec, layer: other }));
  await Effect.runPromise(runTraining(cpu32, cfg, { resume: true, quiet: true, explicit: { steps: 2 } }));
  const resumed = await Deno.readTextFile(`${out}/objective.txt`);
  if (!resumed.includes(`layer(${other})`)) throw new Error(`resumed objective.txt:\n${resumed}`);
  // GRPO never reads the layer: auto computes nothing and writes no boundary.json.
  const g = `${tmp}/auto-grpo`;
  await Effect.runPromise(
    runTraining(cpu32, small(g, { layer: "auto", objective: "grpo", steps: 1 }), {
      resume: false,
      quiet: true,
    }),
  );
  if (await Deno.stat(`${g}/boundary.json`).then(() => true, () => false)) {
    throw new Error("grpo wrote a boundary.json");
  }
});
