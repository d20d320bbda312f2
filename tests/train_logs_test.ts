/**
 * Issue 14.5's logs: every step logs each term's weight and value (the weighted values sum to the loss), the
 * entropy of every policy the objective names (attn/ffn and normed ones too), its phase indices and per-difficulty
 * rollout accuracy; evaluations log per-difficulty accuracy and the policy sampled; the plots mark the phase
 * switch on every curve and give the small update statistics their own panels.
 */
import { Effect } from "effect";
import type { Backend } from "../engine/backend.ts";
import type { StepMetrics } from "../training/rl.ts";
import { objectivePolicies, phaseIndexAt } from "../training/rl.ts";
import { type EvalRecord, phaseSwitches, runPlots } from "../training/report.ts";
import { runTraining } from "../training/run.ts";
import { attn, ffn, final, layer, showPolicy } from "../policies/internal.ts";
import { bupo, entropyBonus, grpo, klPolicies, phases, scale, sum } from "../objectives/objective.ts";
import { gpuTest } from "./gpu_util.ts";
import { cpu32 } from "./util.ts";
import { config, small, tmp } from "./train_fixture.ts";

const root = new URL("..", import.meta.url).pathname;

/** BuPO on layer(0) for step 1, an entropy bonus on attn(1) and a KL between final and ffn(0, normed). */
const MODULE = `${tmp}/logged_objective.ts`;
await Deno.writeTextFile(
  MODULE,
  `import { bupo, entropyBonus, klPolicies, scale, sum } from "${root}objectives/objective.ts";\n` +
    `import { attn, ffn, final } from "${root}policies/internal.ts";\n` +
    `export default sum(\n` +
    `  bupo({ layer: 0, until: 1 }),\n` +
    `  entropyBonus(attn(1), 0.01),\n` +
    `  scale(0.5)(klPolicies(final, ffn(0, "normed"))),\n` +
    `);\n`,
);

const readJsonl = async <T>(path: string): Promise<T[]> =>
  (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l) as T);

/** f32 sums of a few terms: |sum of the parts - loss| within 8 f32 roundings of the parts' magnitudes. */
const assertSumsToLoss = (m: StepMetrics) => {
  const parts = m.terms.reduce((a, t) => a + t.loss, 0);
  const scaleOf = m.terms.reduce((a, t) => a + Math.abs(t.loss), 0);
  if (!(Math.abs(parts - m.loss) <= 8 * 2 ** -24 * scaleOf)) {
    throw new Error(`step ${m.step}: terms sum to ${parts}, the logged loss is ${m.loss}`);
  }
  for (const t of m.terms) {
    if (t.loss !== t.weight * t.value) throw new Error(`step ${m.step}: ${t.term}: loss != weight x value`);
  }
};

const checkRun = async (b: Backend, out: string) => {
  const cfg = small(out, { objective: MODULE, steps: 3, evalEvery: 3, evalProblems: 6 });
  await Effect.runPromise(runTraining(b, cfg, { resume: false, quiet: true }));
  const ms = await readJsonl<StepMetrics>(`${out}/metrics.jsonl`);
  if (ms.length !== 3) throw new Error(`${ms.length} metrics lines`);
  for (const m of ms) {
    // The active terms, in the objective's order, with the weights at this step.
    const want = [
      m.step === 1 ? "pg(layer(0)" : "pg(final",
      "entropy(attn(1)",
      "klPolicies(final || ffn(0,normed)",
    ];
    if (m.terms.length !== 3 || m.terms.some((t, i) => !t.term.startsWith(want[i]))) {
      throw new Error(`step ${m.step}: terms ${m.terms.map((t) => t.term)}`);
    }
    if (m.terms.map((t) => t.weight).join() !== "1,-0.01,0.5") {
      throw new Error(`step ${m.step}: weights ${m.terms.map((t) => t.weight)}`);
    }
    assertSumsToLoss(m);
    // One pg term: the step's clip fraction and KL are exactly its own (decoded from the one read-back in order).
    const pg = m.terms[0];
    if (pg.clipFraction !== m.clipFraction || pg.approxKl !== m.approxKl || pg.dualClipFraction !== 0) {
      throw new Error(`step ${m.step}: pg ${JSON.stringify(pg)} vs step ${m.clipFraction}, ${m.approxKl}`);
    }
    if (m.terms.slice(1).some((t) => t.clipFraction !== undefined || t.approxKl !== undefined)) {
      throw new Error(`step ${m.step}: a non-pg term has clip metrics`);
    }
    // Every policy the objective names, in any phase: layer(0) and final from BuPO's phases, then attn(1), ffn(0).
    const keys = Object.keys(m.entropy.policies);
    if (keys.join() !== "layer(0),final,attn(1),ffn(0,normed)") throw new Error(`entropy keys ${keys}`);
    for (const [k, v] of Object.entries(m.entropy.policies)) {
      if (!(v > 0 && v <= Math.log(config.vocabSize) + 1e-6)) throw new Error(`H(${k}) = ${v}`);
    }
    if (
      m.entropy.policies["layer(0)"] !== m.entropy.layers[0] || m.entropy.policies.final !== m.entropy.final
    ) {
      throw new Error(`step ${m.step}: the named layer(0)/final entropies differ from the layer ones`);
    }
    if (JSON.stringify(m.phaseIndex) !== (m.step === 1 ? "[0]" : "[1]")) {
      throw new Error(`step ${m.step}: phaseIndex ${JSON.stringify(m.phaseIndex)}`);
    }
    // Per-difficulty rollout accuracy: every response counted once, the levels' accuracies average to the whole.
    const lv = m.accuracyByDifficulty ?? [];
    const n = lv.reduce((a, d) => a + d.responses, 0);
    const acc = lv.reduce((a, d) => a + d.accuracy * d.responses, 0) / n;
    if (lv.length === 0 || n !== cfg.prompts * cfg.group || Math.abs(acc - m.accuracy) > 1e-12) {
      throw new Error(`step ${m.step}: by difficulty ${JSON.stringify(lv)} vs accuracy ${m.accuracy}`);
    }
    if (lv.some((d, i) => i > 0 && d.difficulty <= lv[i - 1].difficulty)) {
      throw new Error("levels not ascending");
    }
  }
  const sw = phaseSwitches(ms);
  if (sw.length !== 1 || sw[0].step !== 2) throw new Error(`phase switches ${JSON.stringify(sw)}`);
  const evals = await readJsonl<EvalRecord>(`${out}/eval.jsonl`);
  for (const e of evals) {
    const lv = e.byDifficulty ?? [];
    const n = lv.reduce((a, d) => a + d.problems, 0);
    const greedy = lv.reduce((a, d) => a + d.greedy * d.problems, 0) / n;
    const avg = lv.reduce((a, d) => a + d.avgAtK * d.problems, 0) / n;
    if (
      e.policy !== "final" || n !== cfg.evalProblems || Math.abs(greedy - e.greedy) > 1e-12 ||
      Math.abs(avg - e.avgAtK) > 1e-12
    ) {
      throw new Error(`eval at ${e.step}: ${JSON.stringify(e)}`);
    }
  }
  const svg = await Deno.readTextFile(`${out}/plots.svg`);
  const panelCount = svg.split('class="panel"').length - 1;
  const vlineCount = svg.split('class="vline"').length - 1;
  if (vlineCount !== panelCount) throw new Error(`${vlineCount} phase markers on ${panelCount} panels`);
  for (const title of ["clip fraction", "approx KL", "gradient norm", "each term", "by difficulty"]) {
    if (!svg.includes(title)) throw new Error(`plots.svg has no panel titled ${title}`);
  }
  // Constant weights are written in the legend; only scheduled ones get a panel.
  if (!svg.includes('data-name="-0.01 * entropy(attn(1)') || svg.includes("weights of the scheduled terms")) {
    throw new Error("plots.svg: the constant weights");
  }
  if (!svg.includes('data-name="attn(1)"') || !svg.includes('data-name="ffn(0,normed)"')) {
    throw new Error("plots.svg does not draw the named policies' entropies");
  }
};

Deno.test("CPU: per-term metrics sum to the loss; named policies' entropies, phases and difficulty are logged", () =>
  checkRun(cpu32, `${tmp}/logs-cpu`));

gpuTest(
  "GPU: per-term metrics sum to the loss; named policies' entropies, phases and difficulty are logged",
  (g) => checkRun(g, `${tmp}/logs-gpu`),
);

Deno.test("objectivePolicies names every policy of every phase and term once; phaseIndexAt follows the phases", () => {
  const o = sum(
    phases([
      { until: 3, objective: grpo(layer(1)) },
      { until: 5, objective: phases([{ until: 4, objective: grpo(attn(0)) }, { objective: grpo(final) }]) },
      { objective: entropyBonus(ffn(1), 0.1) },
    ]),
    scale(2)(klPolicies(layer(0, "normed"), final)),
    bupo({ layer: 1, until: 2 }),
  );
  const got = objectivePolicies(o).map(showPolicy).join();
  if (got !== "layer(1),attn(0),final,ffn(1),layer(0,normed)") throw new Error(got);
  const idx = [1, 3, 4, 5, 6].map((s) => JSON.stringify(phaseIndexAt(o, s))).join(" ");
  if (idx !== "[0,0] [0,1] [1,0,1] [1,1,1] [2,1]") throw new Error(idx);
});

Deno.test("phase switches are found from phaseIndex (weights may change within a phase) and drawn", () => {
  const term = (weight: number) => ({ term: "a", weight, value: 2, loss: 2 * weight });
  const m = (step: number, phaseIndex: number[], phase: string): StepMetrics =>
    ({
      step,
      phase,
      phaseIndex,
      rewardMean: 0,
      accuracy: 0,
      loss: 1,
      gradNorm: 1,
      clipFraction: 0,
      approxKl: 0,
      terms: phase.endsWith("a") ? [term(Number(phase.split(" ")[0]))] : [],
      entropy: { final: 1, layers: [1, 1], policies: {} },
    }) as unknown as StepMetrics;
  const ms = [m(1, [0], "0.5 * a"), m(2, [0], "0.6 * a"), m(3, [1], "1 * b"), m(4, [1], "1 * b")];
  const sw = phaseSwitches(ms);
  if (JSON.stringify(sw) !== JSON.stringify([{ step: 3, phase: "1 * b" }])) {
    throw new Error(JSON.stringify(sw));
  }
  const svg = runPlots("t", ms, []);
  // Drawn at x = 2.5, between the last step of the old phase and the first of the new one, on every panel.
  const panelCount = svg.split('class="panel"').length - 1;
  if ((svg.match(/class="vline"/g) ?? []).length !== panelCount) throw new Error("a panel lacks the marker");
  if (!svg.includes("phase switch")) throw new Error("no label");
  // Term a's weight goes 0.5 -> 0.6: a scheduled weight, drawn in its own panel.
  if (!svg.includes("weights of the scheduled terms")) throw new Error("no weights panel");
  // Lines logged before phaseIndex existed: the phase text decides.
  const old = ms.map((x) => ({ ...x, phaseIndex: undefined }) as unknown as StepMetrics);
  if (phaseSwitches(old).map((s) => s.step).join() !== "2,3") throw new Error("fallback to the phase text");
});
