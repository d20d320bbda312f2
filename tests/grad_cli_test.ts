/** `deno task grad` and `gradients()`: HF-named gradients in safetensors, loss in metadata, objectives from modules. */
import { Effect } from "effect";
import { parseSafetensors, toF32 } from "../core/safetensors.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { gradients } from "../training/grad.ts";
import { bupo, grpo } from "../objectives/objective.ts";
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { paramsToHost, writeModelDir } from "../formats/hf.ts";
import { final, layer, showPolicy } from "../policies/internal.ts";
import { initParams } from "../policies/params.ts";
import { assertClose } from "./util.ts";
import { writeRolloutFile } from "../formats/rollout.ts";
import { runScript } from "./cli_util.ts";

const cfg = tinyConfig({ numLayers: 3, vocabSize: 40, hiddenSize: 16, numHeads: 2, numKvHeads: 1 });
const cpu = new CpuBackend("f32");
const dir = await Deno.makeTempDir({ prefix: "bupo-grad-" });
const modelDir = `${dir}/model`;
{
  const p = initParams(cpu, paramSpecs(cfg), 5, 0.3);
  await Effect.runPromise(writeModelDir(modelDir, cfg, await paramsToHost(p)));
  p.dispose();
}
const root = new URL("..", import.meta.url).pathname;

const cli = (...args: string[]) => runScript("grad.ts", args, { cwd: dir });

const readOut = async (path: string) => parseSafetensors(path, await Deno.readFile(path));

Deno.test({
  name:
    "grad CLI: BuPO at layer 1 writes every HF tensor's gradient (zero above layer 1) and the loss, same as gradients()",
  sanitizeResources: false,
  fn: async () => {
    const args = [
      "--model",
      modelDir,
      "--tokens",
      "1,2,3,4;5,6,7",
      "--prompt-len",
      "2",
      "--advantages",
      "1,-1",
    ];
    const r = await cli(
      ...args,
      "--objective",
      "bupo",
      "--layer",
      "1",
      "--until",
      "5",
      "--backend",
      "cpu",
      "--out",
      "g.safetensors",
    );
    if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
    if (!/model\.layers\.2\.mlp\.down_proj\.weight\s+\[16,64\]\s+0\.0000e\+0/.test(r.stdout)) {
      throw new Error(`norm table:\n${r.stdout}`);
    }
    const st = await readOut(`${dir}/g.safetensors`);
    const names = paramSpecs(cfg).map((s) => s.name);
    if ([...st.tensors.keys()].sort().join() !== [...names].sort().join()) {
      throw new Error("tensor names differ");
    }
    const want = await Effect.runPromise(gradients({
      backend: cpu,
      model: { dir: modelDir },
      batch: { ids: [[1, 2, 3, 4], [5, 6, 7]], promptLen: 2, advantages: [1, -1] },
      objective: bupo({ layer: 1, until: 5 }),
    }));
    if (st.metadata?.loss !== String(want.loss)) throw new Error(`loss ${st.metadata?.loss} vs ${want.loss}`);
    for (const n of names) {
      // same program on the same f32 CPU backend in another process: bitwise equal
      assertClose(toF32("g", st.tensors.get(n)!), want.grads.get(n)!, { atol: 0, rtol: 0 }, n);
      if (/layers\.2\.|model\.norm/.test(n) && want.norms.get(n) !== 0) throw new Error(`${n} above layer 1`);
    }
    if (!(want.norms.get("model.layers.0.self_attn.q_proj.weight")! > 0)) {
      throw new Error("no gradient below k");
    }
  },
});

Deno.test({
  name: "grad CLI: an objective module (default export) and a rollout file with old log-probs",
  sanitizeResources: false,
  fn: async () => {
    await Deno.writeTextFile(
      `${dir}/obj.ts`,
      `import { entropyBonus, grpo, sum } from "${root}objectives/objective.ts";
import { layer } from "${root}policies/internal.ts";
export default sum(grpo(layer(0)), entropyBonus(layer(2), 0.01));\n`,
    );
    const ids = Int32Array.from([3, 4, 5, 6, 7, 8, 9, 10]);
    const old = new Map([[showPolicy(layer(0)), Float32Array.from({ length: 8 }, (_, i) => -3.5 + 0.1 * i)]]);
    await Effect.runPromise(
      writeRolloutFile(`${dir}/r.safetensors`, {
        ids,
        B: 2,
        T: 4,
        promptLens: [1, 2],
        advantages: [0.5, -2],
        old,
      }),
    );
    const r = await cli(
      "--model",
      modelDir,
      "--rollout",
      "r.safetensors",
      "--objective",
      "obj.ts",
      "--backend",
      "cpu",
      "--out",
      "m.safetensors",
    );
    if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}`);
    if (!r.stdout.includes("entropy(layer(2)")) throw new Error(r.stdout);
    const st = await readOut(`${dir}/m.safetensors`);
    const loss = Number(st.metadata?.loss);
    // off-policy old log-probs: the ratios are not 1, so the loss is not the on-policy -mean(A)
    const onPolicy = await Effect.runPromise(gradients({
      backend: cpu,
      model: { dir: modelDir },
      batch: { ids: [[3, 4, 5, 6], [7, 8, 9, 10]], promptLen: [1, 2], advantages: [0.5, -2] },
      objective: grpo(layer(0)),
    }));
    if (!Number.isFinite(loss) || Math.abs(loss - onPolicy.loss) < 1e-3) {
      throw new Error(`loss ${loss} vs on-policy ${onPolicy.loss}`);
    }
  },
});

Deno.test({
  name:
    "grad CLI: a module without an Objective export, a bad objective and a missing flag give clear errors",
  sanitizeResources: false,
  fn: async () => {
    await Deno.writeTextFile(`${dir}/none.ts`, "export const x = 1;\n");
    await Deno.writeTextFile(
      `${dir}/bad.ts`,
      `export const objective = { terms: [{ weight: 1, kind: "foo" }] };\n`,
    );
    const base = [
      "--model",
      modelDir,
      "--tokens",
      "1,2,3",
      "--prompt-len",
      "1",
      "--advantages",
      "1",
      "--out",
      "x.st",
    ];
    const none = await cli(...base, "--objective", "none.ts");
    if (none.code !== 2 || !/none\.ts: the module exports no Objective/.test(none.stderr)) {
      throw new Error(none.stderr);
    }
    const bad = await cli(...base, "--objective", "bad.ts");
    if (bad.code !== 2 || !/bad\.ts.*terms\[0\]/.test(bad.stderr)) throw new Error(bad.stderr);
    const noLayer = await cli(...base, "--objective", "bupo");
    if (noLayer.code !== 2 || !/bupo needs --layer/.test(noLayer.stderr)) throw new Error(noLayer.stderr);
    const help = await cli("--help");
    if (help.code !== 0 || !/on-policy/.test(help.stdout)) throw new Error(help.stdout);
  },
});

Deno.test("gradients(): config + params in memory, grpo(final) gives the final norm a gradient", async () => {
  const p = initParams(cpu, paramSpecs(cfg), 9, 0.3);
  const r = await Effect.runPromise(gradients({
    backend: cpu,
    model: { config: cfg, params: p },
    batch: { ids: [[1, 2, 3], [4, 5, 6]], promptLen: 1, advantages: [1, -1] },
    objective: grpo(final),
  }));
  if (!(r.norms.get("model.norm.weight")! > 0) || !Number.isFinite(r.loss)) {
    throw new Error(JSON.stringify(r.loss));
  }
  if (r.metrics.clipFraction !== 0 || r.metrics.approxKl !== 0) {
    throw new Error("on-policy: no clipping, no KL");
  }
  p.dispose();
});

globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
