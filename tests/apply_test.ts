/** engine/apply.ts: a failing kernel or a bad in-place output leaves no storage behind. */
import { apply } from "../engine/apply.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { defineKernel } from "../engine/kernel.ts";
import { tensor } from "../engine/tensor.ts";
import { throwsShape } from "./util.ts";

const throwing = defineKernel<{ alias: boolean }>({
  name: "throwsOnExec",
  // two fresh outputs, and (with alias) a third that updates input 0 in place
  infer: ({ alias }, [x]) => [
    { shape: x.shape, dtype: "f32" },
    { shape: [3], dtype: "f32" },
    ...(alias ? [{ shape: x.shape, dtype: "f32" as const, alias: 0 }] : []),
  ],
  cpu: () => {
    throw new Error("kernel failed");
  },
  gpu: () => [],
});

const misaliased = defineKernel<Record<string, never>>({
  name: "badInPlace",
  infer: (_p, [x]) => [{ shape: [x.shape[0] + 1], dtype: "f32", alias: 0 }],
  cpu: () => {},
  gpu: () => [],
});

Deno.test("apply: a kernel that throws while executing releases the outputs it allocated", async () => {
  for (const alias of [false, true]) {
    const b = new CpuBackend();
    const x = tensor(b, [1, 2, 3, 4], [4]);
    const before = b.memory().live;
    let message = "";
    try {
      apply(throwing, { alias }, [x]);
    } catch (e) {
      message = (e as Error).message;
    }
    if (message !== "kernel failed") {
      throw new Error(`expected the kernel's error, got ${JSON.stringify(message)}`);
    }
    const after = b.memory().live;
    if (after !== before) {
      throw new Error(`alias ${alias}: live bytes ${before} before, ${after} after the failure`);
    }
    if ((await x.data())[3] !== 4) throw new Error("the input was changed");
    x.dispose();
    if (b.memory().live !== 0) throw new Error(`input disposed: ${b.memory().live} bytes still live`);
  }
});

Deno.test("apply: an in-place output that does not match its input is a ShapeError before anything is allocated", () => {
  const b = new CpuBackend();
  const x = tensor(b, [1, 2], [2]);
  const { allocations, live } = b.memory();
  throwsShape(() => apply(misaliased, {}, [x]), /in-place output \[3\] does not match input \[2\]/);
  if (b.memory().allocations !== allocations || b.memory().live !== live) {
    throw new Error("something was allocated");
  }
});
