/**
 * The shipped base models are what `deno task pretrain --preset NAME` makes: each folder's files match the
 * sha256 hashes in models/manifest.json, its pretrain.json records exactly the preset's settings, its config
 * and tokenizer are the ones the preset describes, and a fresh run's first steps reproduce the recorded losses
 * bit for bit (GPU). Also: the CLI never writes into models/ by default, and bad settings fail naming the flag.
 */
import { Effect } from "effect";
import { ConfigError } from "../core/errors.ts";
import { encodeHfConfig } from "../policies/config.ts";
import { embeddedTask } from "../tasks/index.ts";
import {
  defaultOut,
  modelConfigOf,
  PRESET_NAMES,
  type PresetName,
  PRETRAIN_PRESETS,
  pretrainLosses,
  type PretrainReport,
  settingsOf,
} from "../training/pretrain.ts";
import { main } from "../pretrain.ts";
import { gpuTest } from "./gpu_util.ts";

const root = new URL("..", import.meta.url).pathname;

/** Steps of each preset re-run on the GPU and compared with its pretrain.json. */
const PINNED_STEPS = 2;

const sha256 = async (file: string) =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(file))))
    .map((b) => b.toString(16).padStart(2, "0")).join("");

interface ManifestEntry {
  readonly preset: PresetName;
  readonly sha256: { readonly [file: string]: string };
}
const manifest = JSON.parse(await Deno.readTextFile(`${root}models/manifest.json`)) as {
  readonly [dir: string]: ManifestEntry;
};
const report = async (name: string) =>
  JSON.parse(await Deno.readTextFile(`${root}models/${name}/pretrain.json`)) as PretrainReport;

const same = (a: unknown, b: unknown, what: string) => {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}:\n  ${JSON.stringify(a)}\n  ${JSON.stringify(b)}`);
  }
};

Deno.test("every shipped model is in the manifest, with its preset, and its files have the recorded hashes", async () => {
  const dirs = [...Deno.readDirSync(`${root}models`)].filter((e) => e.isDirectory).map((e) => e.name).sort();
  same(Object.keys(manifest).sort(), dirs, "the manifest lists every model folder");
  same([...PRESET_NAMES].sort(), dirs, "every preset is shipped, every shipped model is a preset");
  const actual: Record<string, ManifestEntry> = {};
  for (const dir of dirs) {
    const files = [...Deno.readDirSync(`${root}models/${dir}`)].map((e) => e.name).filter((f) =>
      f !== "pretrain.json"
    ).sort();
    const hashes: Record<string, string> = {};
    for (const f of files) hashes[f] = await sha256(`${root}models/${dir}/${f}`);
    actual[dir] = { preset: dir as PresetName, sha256: hashes };
  }
  same(manifest, actual, "models/manifest.json (expected) against the files (actual)");
});

Deno.test("each shipped model's pretrain.json, config and tokenizer are its preset's", async () => {
  for (const name of PRESET_NAMES) {
    const r = await report(name);
    const preset = PRETRAIN_PRESETS[name];
    same(r.preset, name, `${name}: pretrain.json preset`);
    same(r.settings, preset, `${name}: pretrain.json settings against PRETRAIN_PRESETS`);
    same(
      r.loss.map((x) => x.step),
      Array.from({ length: preset.steps }, (_, i) => i + 1),
      `${name}: loss steps`,
    );
    same(r.eval, r.evals[r.evals.length - 1], `${name}: eval is the last evaluation`);
    same(r.eval.step, preset.steps, `${name}: the last evaluation is after the last step`);
    // Partial competence: RL has room above and below.
    if (!(r.eval.greedy >= 0.25 && r.eval.greedy <= 0.65)) {
      throw new Error(`${name}: greedy ${r.eval.greedy}`);
    }
    const task = embeddedTask(preset.task);
    const tok = JSON.parse(await Deno.readTextFile(`${root}models/${name}/tokenizer.json`));
    const vocab = Object.keys(tok.model.vocab).length;
    const config = JSON.parse(await Deno.readTextFile(`${root}models/${name}/config.json`));
    same(config, encodeHfConfig(modelConfigOf(preset, vocab)), `${name}: config.json`);
    for (const ch of task.alphabet) {
      if (!(ch in tok.model.vocab)) throw new Error(`${name}: tokenizer lacks ${JSON.stringify(ch)}`);
    }
  }
});

for (const name of PRESET_NAMES) {
  gpuTest(
    `${name}: a fresh run's first ${PINNED_STEPS} losses equal pretrain.json's bit for bit`,
    async (g) => {
      const recorded = (await report(name)).loss.slice(0, PINNED_STEPS).map((x) => x.loss);
      const fresh = await Effect.runPromise(pretrainLosses(g, PRETRAIN_PRESETS[name], PINNED_STEPS));
      fresh.forEach((x, i) => {
        if (!Object.is(x, recorded[i])) throw new Error(`step ${i + 1}: fresh ${x}, recorded ${recorded[i]}`);
      });
    },
  );
}

Deno.test("pretrain never writes into models/ by default; flags override a preset; bad shapes name the flag", async () => {
  for (const p of PRESET_NAMES) same(defaultOut(p, false), `runs/pretrain/${p}`, "default out");
  same(defaultOut("tiny-arith", true), "runs/pretrain/custom", "default out with overrides");
  const s = settingsOf("tiny-arith-llama", { layers: 3, lr: 1e-3 });
  same([s.arch, s.layers, s.lr, s.hidden], ["llama", 3, 1e-3, 64], "overrides");
  const llama = modelConfigOf(s, 20), qwen = modelConfigOf(settingsOf("tiny-arith"), 20);
  same(
    [llama.architecture, llama.qkNorm, llama.tieWordEmbeddings],
    ["LlamaForCausalLM", false, false],
    "the Llama family: no q/k norm, untied lm_head",
  );
  same([qwen.architecture, qwen.qkNorm, qwen.tieWordEmbeddings], ["Qwen3ForCausalLM", true, true], "Qwen3");
  try {
    modelConfigOf(settingsOf("tiny-arith", { kvHeads: 3 }), 20);
    throw new Error("no error");
  } catch (e) {
    if (
      !(e instanceof ConfigError) || e.field !== "--kv-heads" || !/3 must divide --heads 4/.test(e.message)
    ) {
      throw e;
    }
  }
  const errors: string[] = [];
  const err = console.error;
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  let code: number;
  try {
    code = await main(["--arch", "gpt2", "--device", "cpu"]);
  } finally {
    console.error = err;
  }
  if (code !== 2 || !errors.some((l) => /--arch: expected qwen3 \| llama, got "gpt2"/.test(l))) {
    throw new Error(`--arch gpt2: exit ${code}: ${errors}`);
  }
});

Deno.test("pretrain --task ./module.ts with widths from flags writes a model folder outside models/", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bupo-pretrain-" });
  try {
    const task = `${dir}/echo.ts`;
    await Deno.writeTextFile(
      task,
      `export const echo = {
  name: "echo", description: "echo two digits", alphabet: "0123456789=.", stop: ".",
  maxPromptChars: 3, maxSolutionChars: 3,
  problem: (split: string, index: number, seed: number) => {
    const s = String((2 * (index + seed) + (split === "eval" ? 1 : 0)) % 100).padStart(2, "0");
    return { id: split + index, prompt: s + "=", answer: s, solution: s + "." };
  },
  reward: (p: { answer: string }, c: string) => (c.split(".")[0] === p.answer ? 1 : 0),
};
`,
    );
    const flags = [
      "--task",
      `${task}#echo`,
      "--arch",
      "llama",
      "--layers",
      "1",
      "--hidden",
      "16",
      "--heads",
      "2",
    ];
    const rest = ["--kv-heads", "1", "--head-dim", "8", "--ffn", "32", "--steps", "2", "--batch", "4"];
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--config",
        `${root}deno.json`,
        `${root}pretrain.ts`,
        ...flags,
        ...rest,
        "--eval-every",
        "1",
        "--eval-problems",
        "2",
        "--device",
        "cpu",
      ],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    if (out.code !== 0) throw new Error(`exit ${out.code}\n${text}`);
    // No --out, settings overridden: runs/pretrain/custom under the working folder.
    const m = `${dir}/runs/pretrain/custom`;
    const r = JSON.parse(await Deno.readTextFile(`${m}/pretrain.json`)) as PretrainReport;
    same(
      [r.preset, r.settings.task, r.settings.arch, r.taskName],
      [null, `${task}#echo`, "llama", "echo"],
      "report",
    );
    same(r.evals.map((e) => e.step), [0, 1, 2], "evaluations");
    same(r.loss.map((e) => e.step), [1, 2], "losses");
    const config = JSON.parse(await Deno.readTextFile(`${m}/config.json`));
    same([config.architectures[0], config.num_hidden_layers, config.tie_word_embeddings], [
      "LlamaForCausalLM",
      1,
      false,
    ], "config.json");
    await Deno.stat(`${m}/model.safetensors`);
    await Deno.stat(`${m}/tokenizer.json`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
