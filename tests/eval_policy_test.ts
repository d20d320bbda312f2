/**
 * Issue 12.6: sampling (and so evaluation) from any internal policy. `final` through the new option is the old
 * sampler bit for bit; greedy sampling from layer(k), attn(k), ffn(k) (raw or normed) equals, token by token, the
 * argmax of the f64 CPU reference readout of that point; evaluation records the policy and reports per-difficulty
 * accuracy; `--eval-policy` is parsed with the policy text form and checked against the model before step 1.
 */
import type { Backend } from "../engine/backend.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { generate, type GenerateOptions } from "../policies/generate.ts";
import {
  attn,
  ffn,
  final,
  type InternalPolicy,
  layer,
  parsePolicy,
  showPolicy,
} from "../policies/internal.ts";
import { forward, unembedding } from "../policies/model.ts";
import { initParams } from "../policies/params.ts";
import { policyPoint } from "../policies/policy.ts";
import { arithTask } from "../tasks/arith.ts";
import type { Task } from "../tasks/task.ts";
import { evalPolicyOf, evaluate } from "../training/evaluate.ts";
import { gpuTest } from "./gpu_util.ts";
import { cpu32, cpu64 } from "./util.ts";
import { modelDir, small, tmp, tok } from "./train_fixture.ts";
import { rlStep } from "../training/rl.ts";
import { taskSource } from "../training/source.ts";
import { grpo } from "../objectives/objective.ts";
import { createOptimizer, disposeOptimizer } from "../training/optimizer.ts";
import { config as fixtureConfig } from "./train_fixture.ts";
import { runScript } from "./cli_util.ts";

const config = tinyConfig({ vocabSize: 24, numLayers: 3 });
const prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 3], [1, 4, 4, 4, 4, 4]];
const SEED = 99, STD = 0.5;

const roll = async (b: Backend, o: Partial<GenerateOptions> = {}) => {
  const p = initParams(b, paramSpecs(config), SEED, STD);
  try {
    return await generate(config, p, prompts, {
      maxNew: 10,
      eos: 2,
      pad: 0,
      temperature: 1,
      seed: 5,
      step: 3,
      ...o,
    });
  } finally {
    p.dispose();
  }
};

const same = (a: { ids: Int32Array }, b: { ids: Int32Array }, what: string) => {
  if (a.ids.join() !== b.ids.join()) throw new Error(`${what}:\n${a.ids}\n${b.ids}`);
};

/**
 * Check that every sampled token of a greedy rollout from `policy` is the argmax of that policy's readout at the
 * previous column, computed in f64 on the CPU backend (forward over the final ids: causal, so column t - 1 sees
 * only the prefix) with the logits summed on the host. Returns how many tokens it checked.
 */
const checkGreedy = async (
  r: Awaited<ReturnType<typeof roll>>,
  policy: InternalPolicy,
): Promise<number> => {
  const p = initParams(cpu64, paramSpecs(config), SEED, STD);
  try {
    const { B, T } = r;
    const { h, E } = await tidy(async () => {
      const ids = tensor(cpu64, r.ids, [B, T], "i32");
      const pos = tensor(cpu64, Int32Array.from({ length: T }, (_, i) => i), [T], "i32");
      const x = policyPoint(config, p, forward(config, p, ids, pos), policy); // (B, T, d)
      return { h: await x.data(), E: await unembedding(config, p).data() };
    });
    const d = config.hiddenSize, V = config.vocabSize;
    let checked = 0;
    for (let b = 0; b < B; b++) {
      const pl = r.promptLens[b];
      for (let t = pl; t < pl + r.responseLens[b]; t++) {
        let best = -1, bestZ = -Infinity, second = -Infinity;
        for (let v = 0; v < V; v++) {
          let z = 0;
          for (let i = 0; i < d; i++) z += h[(b * T + t - 1) * d + i] * E[v * d + i];
          if (z > bestZ) [second, bestZ, best] = [bestZ, z, v];
          else if (z > second) second = z;
        }
        const got = r.ids[b * T + t];
        if (got !== best) {
          throw new Error(
            `${showPolicy(policy)}: row ${b} column ${t}: sampled ${got}, reference argmax ${best} ` +
              `(margin ${bestZ - second})`,
          );
        }
        checked++;
      }
    }
    return checked;
  } finally {
    p.dispose();
  }
};

const POLICIES = [layer(0), layer(1), layer(1, "normed"), attn(1), ffn(0), ffn(2, "normed")];

const greedyEverywhere = async (b: Backend) => {
  const finalIds = await roll(b, { temperature: 0 });
  for (const q of POLICIES) {
    for (const cache of [true, false]) {
      const r = await roll(b, { temperature: 0, policy: q, cache });
      const n = await checkGreedy(r, q);
      if (n < prompts.length) throw new Error(`${showPolicy(q)}: only ${n} tokens checked`);
    }
  }
  // Not vacuous: the internal policies choose other tokens than the model's own.
  const differ = await Promise.all(
    POLICIES.map(async (q) => (await roll(b, { temperature: 0, policy: q })).ids.join()),
  );
  if (differ.filter((x) => x !== finalIds.ids.join()).length < POLICIES.length - 1) {
    throw new Error("the internal policies' greedy rollouts equal the final policy's");
  }
  // layer(L-1) raw is the final policy itself.
  same(await roll(b, { policy: layer(config.numLayers - 1) }), await roll(b), "layer(L-1) vs final");
};

Deno.test("sampling from final through the policy option is the old sampler bit for bit (CPU)", async () => {
  for (const cache of [true, false]) {
    same(await roll(cpu32, { cache }), await roll(cpu32, { cache, policy: final }), `cache ${cache}`);
  }
});

gpuTest("sampling from final through the policy option is the old sampler bit for bit (GPU)", async (g) => {
  for (const temperature of [1, 0]) {
    for (const cache of [true, false]) {
      same(
        await roll(g, { temperature, cache }),
        await roll(g, { temperature, cache, policy: final }),
        "final",
      );
    }
  }
});

Deno.test("greedy sampling from layer/attn/ffn policies follows the f64 reference readout token by token (CPU)", () =>
  greedyEverywhere(cpu32));

gpuTest(
  "greedy sampling from layer/attn/ffn policies follows the f64 reference readout token by token (GPU)",
  (g) => greedyEverywhere(g),
);

Deno.test("a policy past the model's layers is a clear error, and nothing leaks", async () => {
  const before = cpu32.memory().live;
  let msg = "";
  await roll(cpu32, { policy: attn(3) }).catch((e) => (msg = String(e.message)));
  if (!/attn\(3\): layer 3 out of range for a 3-layer model/.test(msg)) throw new Error(`message: ${msg}`);
  if (cpu32.memory().live !== before) throw new Error(`${cpu32.memory().live - before} bytes leaked`);
});

Deno.test("parsePolicy reads showPolicy's text form and nothing else", () => {
  for (
    const q of [final, layer(0), layer(12, "normed"), attn(3), attn(0, "normed"), ffn(7), ffn(1, "normed")]
  ) {
    const back = parsePolicy(showPolicy(q));
    if (!back || showPolicy(back) !== showPolicy(q)) {
      throw new Error(`${showPolicy(q)} -> ${JSON.stringify(back)}`);
    }
  }
  if (showPolicy(parsePolicy(" layer( 2 , raw ) ")!) !== "layer(2)") {
    throw new Error("spaces or explicit raw");
  }
  for (
    const bad of [
      "",
      "Final",
      "layer",
      "layer()",
      "layer(-1)",
      "layer(1.5)",
      "layer(2,lens)",
      "mlp(1)",
      "final()",
    ]
  ) {
    if (parsePolicy(bad) !== null) throw new Error(`${JSON.stringify(bad)} parsed`);
  }
  if (showPolicy(evalPolicyOf("ffn(1,normed)", 2)) !== "ffn(1,normed)") throw new Error("evalPolicyOf");
  for (
    const [text, re] of [["layer(2)", /--eval-policy layer\(2\): the model has 2 layers/], [
      "pi_2",
      /--eval-policy "pi_2": expected final, layer\(k\)/,
    ]] as const
  ) {
    let msg = "";
    try {
      evalPolicyOf(text, 2);
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!re.test(msg)) throw new Error(`${text}: ${msg}`);
  }
});

/** Arithmetic problems whose reward is 1 exactly at even difficulty, whatever the completion. */
const evenTask: Task = { ...arithTask(), reward: (p) => ((p.difficulty ?? 1) % 2 === 0 ? 1 : 0) };

Deno.test("evaluation records its policy and per-difficulty avg@k, pass@k and greedy; rollouts log accuracy per level", async () => {
  const p = initParams(cpu32, paramSpecs(fixtureConfig), 5, 0.2);
  const opt = createOptimizer(p, { lr: 1e-4, weightDecay: 0, maxGradNorm: 1 });
  try {
    const o = { problems: 24, k: 2, temperature: 1, maxNew: 4, seed: 3, taskSeed: 1 };
    for (const policy of [undefined, layer(0)]) {
      const r = await evaluate(fixtureConfig, p, tok, evenTask, { ...o, policy });
      if (r.policy !== (policy ? "layer(0)" : "final")) throw new Error(`policy ${r.policy}`);
      const lv = r.byDifficulty ?? [];
      if (lv.length < 2 || lv.reduce((a, d) => a + d.problems, 0) !== o.problems) {
        throw new Error(`levels ${JSON.stringify(lv)}`);
      }
      for (const d of lv) {
        const want = d.difficulty % 2 === 0 ? 1 : 0;
        if (d.avgAtK !== want || d.passAtK !== want || d.greedy !== want) throw new Error(JSON.stringify(d));
      }
      const even = lv.filter((d) => d.difficulty % 2 === 0).reduce((a, d) => a + d.problems, 0) / o.problems;
      if (r.avgAtK !== even || r.greedy !== even || r.passAtK !== even) throw new Error(JSON.stringify(r));
    }
    // The task's own problems without difficulty: no per-level report.
    const plain: Task = {
      ...evenTask,
      problem: (s, i, seed) => ({ ...arithTask().problem(s, i, seed), difficulty: undefined }),
    };
    if ((await evaluate(fixtureConfig, p, tok, plain, o)).byDifficulty !== undefined) {
      throw new Error("byDifficulty");
    }
    const cfg = small(`${tmp}/unused`, { prompts: 6, group: 2 });
    const m = await rlStep(
      {
        cfg,
        config: fixtureConfig,
        params: p,
        opt,
        source: taskSource(tok, evenTask, cfg.seed),
        objective: grpo(final),
      },
      1,
    );
    const lv = m.accuracyByDifficulty ?? [];
    if (
      lv.reduce((a, d) => a + d.responses, 0) !== 12 ||
      lv.some((d) => d.accuracy !== (d.difficulty % 2 === 0 ? 1 : 0))
    ) {
      throw new Error(JSON.stringify(lv));
    }
  } finally {
    disposeOptimizer(opt);
    p.dispose();
  }
});

const cli = (args: string[]) => runScript("train.ts", args);

Deno.test("--eval-policy: evaluation samples from it and eval.jsonl says so; a bad one fails before step 1", async () => {
  const base = [
    "--model",
    modelDir,
    "--steps",
    "1",
    "--prompts",
    "2",
    "--group",
    "2",
    "--max-new",
    "4",
    "--minibatches",
    "1",
    "--eval-problems",
    "3",
    "--eval-k",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--layer",
    "0",
    "--phase-steps",
    "1",
  ];
  const out = `${tmp}/evalpol`;
  const ok = await cli([...base, "--out", out, "--eval-policy", "layer(0)"]);
  if (ok.code !== 0) throw new Error(ok.text);
  const evals = (await Deno.readTextFile(`${out}/eval.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
  if (evals.length !== 2 || evals.some((e) => e.policy !== "layer(0)")) {
    throw new Error(JSON.stringify(evals));
  }
  if (JSON.parse(await Deno.readTextFile(`${out}/config.json`)).evalPolicy !== "layer(0)") {
    throw new Error("config");
  }
  for (
    const [pol, re] of [["layer(2)", /--eval-policy layer\(2\): the model has 2 layers/], [
      "lm_head",
      /--eval-policy "lm_head"/,
    ]] as const
  ) {
    const bad = await cli([...base, "--out", `${tmp}/evalpol-${pol}`, "--eval-policy", pol]);
    if (bad.code !== 2 || !re.test(bad.text) || /at .*\.ts:\d+/.test(bad.text)) {
      throw new Error(`${pol}: exit ${bad.code}\n${bad.text}`);
    }
    if (await Deno.stat(`${tmp}/evalpol-${pol}/metrics.jsonl`).then(() => true, () => false)) {
      throw new Error(`${pol}: the run started`);
    }
  }
});
