/**
 * The GPU pool gives its buffers back: `trim` destroys what the pool keeps (freed buffers, staging buffers and
 * textures) and nothing a live tensor holds, and a training run trims when it ends, so runs one after another
 * on one device (compare, sweep) leave no pooled buffers behind, whatever their shapes.
 */
import { Effect } from "effect";
import { matmul } from "../kernels/matmul.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import { runTraining } from "../training/run.ts";
import { gpuTest } from "./gpu_util.ts";
import { assertClose, cpu64, randomData } from "./util.ts";
import { small, tmp } from "./train_fixture.ts";

gpuTest("trim gives back every pooled byte and keeps live tensors intact", async (g) => {
  await g.sync();
  g.trim();
  const base = g.memory();
  if (base.allocated !== base.live) {
    throw new Error(`after a trim: allocated ${base.allocated}, live ${base.live}`);
  }
  // Matmuls of a few shapes (their passes take scratch buffers and, on llvmpipe, textures) and a read (staging).
  const a = randomData(37 * 53, 1), b = randomData(53 * 29, 2);
  const keepA = tensor(g, a, [37, 53]);
  for (const [m, k, n] of [[5, 7, 3], [64, 96, 80], [33, 130, 17]]) {
    const x = tensor(g, randomData(m * k, m), [m, k]), y = tensor(g, randomData(k * n, n), [k, n]);
    const z = matmul(x, y);
    await z.data();
    for (const t of [x, y, z]) t.dispose();
  }
  await g.sync();
  const pooled = g.memory();
  if (pooled.allocated <= pooled.live) throw new Error("expected the pool to hold the freed buffers");
  const freed = g.trim();
  const after = g.memory();
  if (
    freed !== pooled.allocated - pooled.live || after.allocated !== after.live || after.live !== pooled.live
  ) {
    throw new Error(
      `trim freed ${freed} of ${pooled.allocated - pooled.live} pooled; now ${JSON.stringify(after)}`,
    );
  }
  // The live tensor survived, and the device still computes after a trim (new buffers from scratch).
  const keepB = tensor(g, b, [53, 29]);
  const got = await tidy(() => matmul(keepA, keepB).data());
  const want = await tidy(() => matmul(tensor(cpu64, a, [37, 53]), tensor(cpu64, b, [53, 29])).data());
  // matmul_test.ts's bound: a K-term f32 sum against f64, at most K^2 * 6e-8 <= 1e-5 K for K <= 168 (K = 53).
  assertClose(got, want, { atol: 1e-5 * 53, rtol: 1e-6 }, "matmul after trim");
  keepA.dispose();
  keepB.dispose();
});

gpuTest("training runs of different shapes one after another leave nothing pooled", async (g) => {
  await g.sync();
  const before = g.memory().live;
  for (const [i, over] of [{ group: 2 }, { group: 4, prompts: 1 }, { group: 3 }].entries()) {
    const exit = await Effect.runPromiseExit(
      runTraining(g, small(`${tmp}/trim-${i}`, over), { resume: false, quiet: true }),
    );
    if (exit._tag !== "Success") throw new Error(`run ${i} failed`);
    await g.sync();
    const m = g.memory();
    // Every tensor of the run is gone (no cache keeps one either), and the pool is empty.
    if (m.allocated !== m.live || m.live !== before) {
      throw new Error(
        `after run ${i} (${
          JSON.stringify(over)
        }): allocated ${m.allocated}, live ${m.live} (${before} before the runs)`,
      );
    }
  }
});
