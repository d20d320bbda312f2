/**
 * Runs share a device (compare.ts trains several in one process): every run gives back every byte its tensors
 * held (parameters, reference model, optimizer moments, batches) however it ends: finished, failed part-way,
 * refused at set-up, or interrupted between steps.
 */
import { Cause, Effect, Exit, Fiber } from "effect";
import { GpuError } from "../core/errors.ts";
import type { Backend } from "../engine/backend.ts";
import type { GpuBackend } from "../engine/gpu/backend.ts";
import type { TrainConfig } from "../training/config.ts";
import { runTraining } from "../training/run.ts";
import { gpuTest } from "./gpu_util.ts";
import { small, tmp } from "./train_fixture.ts";

const root = new URL("..", import.meta.url).pathname;

/** An objective module: `body` is the default export's expression over objectives/objective.ts and internal.ts. */
const objectiveModule = async (name: string, body: string): Promise<string> => {
  const file = `${tmp}/${name}.ts`;
  await Deno.writeTextFile(
    file,
    `import { grpo, phases, piecewise, scale } from "${root}objectives/objective.ts";\n` +
      `import { final, layer } from "${root}policies/internal.ts";\n` +
      `export default ${body};\n`,
  );
  return file;
};

const live = async (g: GpuBackend) => {
  await g.sync();
  return g.memory().live;
};

/**
 * `g` with a device failure to inject: once armed, the `nth` dispatch of the kernel `kernel` throws a GpuError
 * instead of running (a driver error in the middle of a step); `apply` releases the outputs it allocated for it.
 */
const failing = (g: GpuBackend) => {
  let arm: { kernel: string; nth: number } | null = null, seen = 0;
  const backend: Backend = new Proxy(g, {
    get(target, key) {
      if (key === "exec") {
        return (...a: Parameters<GpuBackend["exec"]>) => {
          if (arm && a[0].name === arm.kernel && ++seen === arm.nth) {
            throw new GpuError({ kind: "injected", message: `${arm.kernel}: an injected device failure` });
          }
          return target.exec(...a);
        };
      }
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { backend, arm: (kernel: string, nth: number) => (arm = { kernel, nth }, seen = 0) };
};

/** Run to its end; the failure's tag (or "ok"). */
const outcome = async (g: Backend, cfg: TrainConfig, resume = false): Promise<string> => {
  const exit = await Effect.runPromiseExit(runTraining(g, cfg, { resume, quiet: true }));
  if (Exit.isSuccess(exit)) return "ok";
  const e = Cause.squash(exit.cause) as { _tag?: string; name?: string };
  return e._tag ?? e.name ?? String(e);
};

gpuTest(
  "training runs on one GPU backend give back every live byte: finished, failed, interrupted",
  async (g) => {
    // A warm-up run on each backend object first, so that only what the measured runs leave counts. (Nothing
    // should outlive a run any more: broadcasts no longer keep a cached tensor of ones per shape;
    // tests/gpu_trim_test.ts checks runs without a warm-up.)
    const flaky = failing(g);
    for (const b of [g, flaky.backend]) {
      if (await outcome(b, small(`${tmp}/warm-${b === g ? "g" : "f"}`, { steps: 3, kl: 0.05 })) !== "ok") {
        throw new Error("warm-up failed");
      }
    }
    const start = await live(g);
    // Every stage is measured; the test fails at the end, naming the live bytes after each.
    const seen: { what: string; live: number }[] = [];
    const expectBack = async (what: string) => seen.push({ what, live: await live(g) });

    // A finished run with a KL term, so a reference model is loaded too.
    if (await outcome(g, small(`${tmp}/ok`, { kl: 0.05 })) !== "ok") throw new Error("the run failed");
    await expectBack("after a finished run");

    // A run whose objective switches at step 2 to a layer the 2-layer model lacks: refused at set-up, before
    // anything is allocated or written.
    const badLayer = await objectiveModule(
      "late_layer",
      "phases([{ until: 1, objective: grpo(final) }, { objective: grpo(layer(9)) }])",
    );
    const late = await outcome(g, small(`${tmp}/late`, { objective: badLayer, steps: 3 }));
    if (late !== "ConfigError") throw new Error(`the late bad layer: expected a ConfigError, got ${late}`);
    if (await Deno.stat(`${tmp}/late`).then(() => true, () => false)) {
      throw new Error("the refused run wrote");
    }
    await expectBack("after a run refused at set-up (a bad layer in a later phase)");

    // A device failure inside step 2's backward (the second dispatch of the readout gradient: one per step).
    flaky.arm("readoutGrad", 2);
    const failed = await outcome(flaky.backend, small(`${tmp}/late2`, { steps: 3 }));
    if (failed !== "GpuError") throw new Error(`the failing device: expected a GpuError, got ${failed}`);
    const logged = await Deno.readTextFile(`${tmp}/late2/metrics.jsonl`);
    if (logged.trim().split("\n").length !== 1) throw new Error(`the failure was not in step 2: ${logged}`);
    await expectBack("after a run failing inside step 2 (a device error)");

    // A non-finite loss at step 2 (weight 1e39 overflows f32), with a reference model loaded.
    const exploding = await objectiveModule(
      "exploding",
      "scale(piecewise([[1, 1], [2, 1e39]]))(grpo(final))",
    );
    const nan = await outcome(g, small(`${tmp}/nan`, { objective: exploding, steps: 3, kl: 0.05 }));
    if (nan !== "NonFiniteError") {
      throw new Error(
        `the exploding loss: expected a NonFiniteError, got ${nan}`,
      );
    }
    await expectBack("after a run failing at a non-finite loss");

    // A resume of the finished run that changes a setting it may not change: refused after loading the checkpoint.
    const refused = await Effect.runPromiseExit(
      runTraining(g, small(`${tmp}/ok`, { steps: 3, kl: 0.05 }), {
        resume: true,
        quiet: true,
        explicit: { lr: 1 },
      }),
    );
    if (Exit.isSuccess(refused)) throw new Error("a resume changing --lr was accepted");
    await expectBack("after a refused resume");

    // A resume that runs on (optimizer moments loaded from the checkpoint), then a run interrupted after step 1.
    if (await outcome(g, small(`${tmp}/ok`, { steps: 3, kl: 0.05 }), true) !== "ok") {
      throw new Error("the resume failed");
    }
    await expectBack("after a resumed run");
    const cfg = small(`${tmp}/interrupted`, { steps: 50, kl: 0.05, evalEvery: 100 });
    const fiber = Effect.runFork(runTraining(g, cfg, { resume: false, quiet: true }));
    const t0 = Date.now();
    while (!(await Deno.readTextFile(`${cfg.out}/metrics.jsonl`).catch(() => "")).includes('"step":1')) {
      if (Date.now() - t0 > 120_000) throw new Error("the run never finished step 1");
      await new Promise((r) => setTimeout(r, 20));
    }
    await Effect.runPromise(Fiber.interrupt(fiber));
    await expectBack("after an interrupted run");
    if (seen.some((x) => x.live !== start)) {
      throw new Error(
        `live bytes: ${start} before the runs, ${seen.map((x) => `${x.live} ${x.what}`).join(", ")}`,
      );
    }
  },
);
