/** Generation: GPU rollouts equal CPU rollouts token for token (same Philox key), replay is exact, eos stops rows. */
import { paramSpecs, tinyConfig } from "../policies/config.ts";
import { initParams } from "../policies/params.ts";
import { generate } from "../policies/generate.ts";
import { appendToken, column } from "../kernels/decode.ts";
import { tensor } from "../engine/tensor.ts";
import type { Backend } from "../engine/backend.ts";
import { gpuTest } from "./gpu_util.ts";
import { assertClose, cpu32, randomData } from "./util.ts";

const config = tinyConfig({ vocabSize: 24, numLayers: 2 });
const prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 3], [1, 4, 4, 4, 4, 4]];

const roll = async (b: Backend, seed: number) => {
  const p = initParams(b, paramSpecs(config), 99, 0.5);
  try {
    return await generate(config, p, prompts, { maxNew: 10, eos: 2, pad: 0, temperature: 1, seed, step: 3 });
  } finally {
    p.dispose();
  }
};

gpuTest("rollouts: GPU ids equal CPU ids for the same key; a replay is exact", async (g) => {
  const a = await roll(g, 5), b = await roll(cpu32, 5), c = await roll(g, 5), d = await roll(g, 6);
  // The sampler draws u from Philox on both backends; f32 logits agree to ~1e-6, so a different token would need
  // u within ~1e-6 of a CDF boundary (probability ~1e-5 per token over these 40 tokens; the seeds are fixed).
  if (a.ids.join() !== b.ids.join()) throw new Error(`GPU ${a.ids}\nCPU ${b.ids}`);
  if (a.ids.join() !== c.ids.join()) throw new Error("replay differs");
  if (a.ids.join() === d.ids.join()) throw new Error("another seed gave the same rollout");
  for (let r = 0; r < prompts.length; r++) {
    const row = Array.from(a.ids.subarray(r * a.T, (r + 1) * a.T));
    if (row.slice(0, prompts[r].length).join() !== prompts[r].join()) {
      throw new Error(`prompt ${r} overwritten`);
    }
    const e = row.indexOf(2, prompts[r].length);
    if (e >= 0 && row.slice(e + 1).some((x) => x !== 0)) {
      throw new Error(`row ${r}: tokens after eos: ${row}`);
    }
    // maxNew 10 for every row, whatever its prompt's length: past it, pad.
    if (a.responseLens[r] !== (e >= 0 ? e + 1 - prompts[r].length : 10)) {
      throw new Error(`length of row ${r}`);
    }
    if (row.slice(prompts[r].length + 10).some((x) => x !== 0)) throw new Error(`row ${r} ran past maxNew`);
  }
});

gpuTest("column and appendToken: GPU equals CPU", async (g) => {
  const x = randomData(2 * 5 * 3, 4);
  for (const t of [0, 2, 4]) {
    const run = (b: Backend) => column(tensor(b, x, [2, 5, 3]), t).data();
    assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "column");
  }
  const run = async (b: Backend) => {
    const ids = tensor(b, [1, 2, 0, 0, 1, 0, 0, 0, 1, 2, 3, 0], [3, 4], "i32");
    const done = tensor(b, [0, 0, 1], [3], "i32");
    appendToken(ids, done, tensor(b, [7, 2, 9], [3], "i32"), tensor(b, [2, 1, 3], [3], "i32"), {
      t: 2,
      eos: 2,
      pad: 0,
    });
    return [...await ids.data(), ...await done.data()];
  };
  assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "append");
  // row 0: prompt ended, writes 7; row 1: writes eos and is done; row 2: still in its prompt at t = 2.
  assertClose(
    await run(cpu32),
    [1, 2, 7, 0, 1, 0, 2, 0, 1, 2, 3, 0, 0, 1, 1],
    { atol: 0, rtol: 0 },
    "append",
  );
});

gpuTest("appendToken: a second stop id ends a row like eos (GPU equals CPU)", async (g) => {
  const run = async (b: Backend) => {
    const ids = tensor(b, [1, 0, 1, 0], [2, 2], "i32");
    const done = tensor(b, [0, 0], [2], "i32");
    appendToken(ids, done, tensor(b, [7, 9], [2], "i32"), tensor(b, [1, 1], [2], "i32"), {
      t: 1,
      eos: 2,
      pad: 0,
      stop: 7,
    });
    return [...await ids.data(), ...await done.data()];
  };
  assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "append");
  assertClose(await run(cpu32), [1, 7, 1, 9, 1, 0], { atol: 0, rtol: 0 }, "stop ends row 0 only");
});

gpuTest(
  "appendToken: a set of stop ids (eos, stop and more) ends rows at any of them (GPU equals CPU)",
  async (g) => {
    // Eight rows, each sampling one id: 2 (eos), 7 (stop) and 11, 13, 17 (stops) end a row; 5, 9 and 0 (pad) do not.
    const sampled = [2, 7, 11, 13, 17, 5, 9, 0];
    const run = async (b: Backend) => {
      const ids = tensor(b, new Int32Array(8 * 2).fill(1), [8, 2], "i32");
      const done = tensor(b, new Int32Array(8), [8], "i32");
      appendToken(
        ids,
        done,
        tensor(b, sampled, [8], "i32"),
        tensor(b, new Int32Array(8).fill(1), [8], "i32"),
        {
          t: 1,
          eos: 2,
          pad: 0,
          stop: 7,
          stops: [11, 13, 17, 13],
        },
      );
      return [...await done.data()];
    };
    assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "append");
    assertClose(await run(cpu32), [1, 1, 1, 1, 1, 0, 0, 0], { atol: 0, rtol: 0 }, "done flags");
    // Nine distinct ids do not fit the kernel's eight slots: a RangeError naming the count, before any dispatch.
    let msg = "";
    try {
      const ids = tensor(cpu32, new Int32Array(2), [1, 2], "i32");
      const one = tensor(cpu32, [0], [1], "i32");
      appendToken(ids, one, one, one, { t: 1, eos: 2, pad: 0, stops: [10, 11, 12, 13, 14, 15, 16, 17] });
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!/9 stop ids.*at most 8/.test(msg)) {
      throw new Error(
        `expected a RangeError on 9 stop ids, got "${msg}"`,
      );
    }
  },
);

gpuTest(
  "rollouts stop at every id of `stops`; finished and stopIds say which (GPU equals CPU)",
  async (g) => {
    // Greedy rollouts of a random model: the ids each row writes first, unstopped; then each of them in turn as an
    // extra stop id must end that row right there, with finished and stopIds naming it.
    const greedy = { maxNew: 6, eos: 23, pad: 0, temperature: 1, topK: 1, seed: 1, step: 0 };
    for (const b of [g, cpu32] as Backend[]) {
      const p = initParams(b, paramSpecs(config), 99, 0.5);
      try {
        const free = await generate(config, p, prompts, greedy);
        const first = prompts.map((x, r) => free.ids[r * free.T + x.length]);
        if (first.includes(23)) throw new Error("the fixture's first tokens must not be eos");
        const stopped = await generate(config, p, prompts, { ...greedy, stops: [...new Set(first)] });
        for (let r = 0; r < prompts.length; r++) {
          if (stopped.responseLens[r] !== 1 || !stopped.finished[r] || stopped.stopIds[r] !== first[r]) {
            throw new Error(
              `${b.name} row ${r}: len ${stopped.responseLens[r]}, finished ${stopped.finished[r]}, ` +
                `stop ${stopped.stopIds[r]} (expected 1, true, ${first[r]})`,
            );
          }
        }
        if (free.finished.some((f, r) => f !== (free.stopIds[r] !== undefined))) {
          throw new Error("finished and stopIds disagree");
        }
      } finally {
        p.dispose();
      }
    }
  },
);

gpuTest(
  "ragged prompts: every row writes at most maxNew tokens, then pad; a cut row is not finished even when pad is a stop id",
  async (g) => {
    // Prompts of 1 and 6 tokens, maxNew 3: the buffer is 9 wide, but the short row may not use the long row's room.
    // pad is also the eos (as Qwen3's <|endoftext|>), chosen among ids the rows never sample, so no row finishes.
    const ragged = [[1], [1, 3, 3, 3, 3, 3]];
    for (const b of [g, cpu32] as Backend[]) {
      const p = initParams(b, paramSpecs(config), 99, 0.5);
      try {
        const base = { maxNew: 3, temperature: 1, topK: 1, seed: 1, step: 0 };
        const free = await generate(config, p, ragged, { ...base, eos: 23, pad: 0, maxNew: 8 });
        const seen = new Set(free.ids);
        const unused = Array.from({ length: 23 }, (_, i) => 22 - i).find((i) => !seen.has(i))!;
        const r = await generate(config, p, ragged, { ...base, eos: unused, pad: unused });
        for (let row = 0; row < 2; row++) {
          const ids = Array.from(r.ids.subarray(row * r.T, (row + 1) * r.T));
          const pl = ragged[row].length;
          const tail = ids.slice(pl + 3);
          if (r.responseLens[row] !== 3 || r.finished[row] || r.stopIds[row] !== undefined) {
            throw new Error(`${b.name} row ${row}: len ${r.responseLens[row]}, finished ${r.finished[row]}`);
          }
          if (tail.some((x) => x !== unused)) {
            throw new Error(`${b.name} row ${row} wrote past maxNew: ${ids}`);
          }
          if (
            ids.slice(pl, pl + 3).join() !==
              Array.from(free.ids.subarray(row * free.T + pl, row * free.T + pl + 3)).join()
          ) {
            throw new Error(`${b.name} row ${row}: the first 3 tokens differ from the uncapped rollout`);
          }
        }
      } finally {
        p.dispose();
      }
    }
  },
);

gpuTest("appendToken: maxNew ends a row once it has written that many tokens (GPU equals CPU)", async (g) => {
  // Prompt lengths 1, 2, 3 at column 3 with maxNew 2: row 0 writes its 3rd token (done though cut), row 1 its
  // 2nd (done), row 2 its 1st (not done).
  const run = async (b: Backend) => {
    const ids = tensor(b, new Int32Array(3 * 5).fill(1), [3, 5], "i32");
    const done = tensor(b, new Int32Array(3), [3], "i32");
    appendToken(ids, done, tensor(b, [5, 5, 5], [3], "i32"), tensor(b, [1, 2, 3], [3], "i32"), {
      t: 3,
      eos: 2,
      pad: 0,
      maxNew: 2,
    });
    return [...await done.data()];
  };
  assertClose(await run(g), await run(cpu32), { atol: 0, rtol: 0 }, "append");
  assertClose(await run(cpu32), [1, 1, 0], { atol: 0, rtol: 0 }, "done flags");
});

Deno.test("early stop waits for rows still inside their prompt (a short row's eos does not end a long one)", async () => {
  const p = initParams(cpu32, paramSpecs(config), 99, 0.5);
  try {
    const greedy = { maxNew: 4, pad: 0, temperature: 1, topK: 1, seed: 1, step: 0, checkEvery: 1 };
    // The greedy token after [1] becomes eos, so row 0 is done after one token while row 1 is still in its prompt.
    const first = await generate(config, p, [[1]], { ...greedy, eos: 23, maxNew: 1 });
    const eos = first.ids[1];
    const long = [1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3];
    const both = await generate(config, p, [[1], long], { ...greedy, eos });
    const alone = await generate(config, p, [long], { ...greedy, eos, firstSequence: 1 });
    if (both.responseLens[0] !== 1) throw new Error(`row 0 should stop at its eos: ${both.responseLens}`);
    const row1 = Array.from(both.ids.subarray(both.T, 2 * both.T));
    if (row1.join() !== Array.from(alone.ids).join() || both.responseLens[1] !== alone.responseLens[0]) {
      throw new Error(`row 1 in a batch ${row1} differs from row 1 alone ${Array.from(alone.ids)}`);
    }
  } finally {
    p.dispose();
  }
});

gpuTest(
  "rollouts with vocab below the model's: no id at or past it, sampled or greedy, on GPU and CPU",
  async (g) => {
    // A random 24-row model where only 10 ids are the tokenizer's: unmasked, about 14 of every 24 draws would land
    // past id 9; 4 rows x 12 tokens x 2 temperatures x 2 backends never do.
    for (const b of [g, cpu32] as Backend[]) {
      const p = initParams(b, paramSpecs(config), 7, 0.5);
      try {
        for (const temperature of [1, 0]) {
          const r = await generate(config, p, prompts, {
            maxNew: 12,
            eos: 2,
            pad: 0,
            temperature,
            seed: 11,
            step: 1,
            vocab: 10,
            checkEvery: 0,
          });
          for (let s = 0; s < r.B; s++) {
            const resp = Array.from(r.ids.subarray(s * r.T + prompts[s].length, (s + 1) * r.T));
            if (resp.some((id) => id >= 10)) throw new Error(`${b.name} T=${temperature}: ${resp}`);
          }
        }
      } finally {
        p.dispose();
      }
    }
  },
);
