/**
 * broadcastTo materializes a broadcast with the expand kernel (the registry sweep checks it on the GPU against
 * its CPU reference): its gradient is sumTo, checked here against finite differences; it keeps no tensor.
 */
import fc from "fast-check";
import { size } from "../core/shape.ts";
import { broadcastTo, mul } from "../kernels/elementwise.ts";
import { checkGrad } from "../kernels/gradcheck.ts";
import { CpuBackend } from "../engine/cpu.ts";
import { tensor, tidy } from "../engine/tensor.ts";
import type { Tensor } from "../engine/tensor.ts";
import { awkwardDim, cpu64, randomData, throwsShape } from "./util.ts";

/** A shape of rank 0-4 and one that broadcasts to it (some axes set to 1, leading axes dropped). */
const target = fc.array(awkwardDim(7), { minLength: 0, maxLength: 4 }).chain((out) =>
  fc.tuple(
    fc.array(fc.boolean(), { minLength: out.length, maxLength: out.length }),
    fc.nat({ max: out.length }),
  )
    .map(([ones, drop]) => ({ out, from: out.map((d, i) => (ones[i] ? 1 : d)).slice(drop) }))
);

Deno.test("broadcastTo: the gradient (sumTo) equals central finite differences (f64)", async () => {
  await fc.assert(
    fc.asyncProperty(target, fc.nat(), async ({ out, from }, seed) => {
      const w = tensor(cpu64, randomData(size(out), seed + 3), out);
      const f = (x: Tensor) => mul(broadcastTo(x, out), w);
      const r = await checkGrad(cpu64, f, [{ data: randomData(size(from), seed), shape: from }], { seed });
      w.dispose();
      // f is linear in x: central differences are exact up to rounding, ~1e-11 at eps 1e-5.
      if (r.error > 1e-6) throw new Error(`${from} -> ${out}: analytic ${r.analytic}, numeric ${r.numeric}`);
    }),
    { numRuns: 60 },
  );
});

Deno.test("broadcastTo: values repeat along broadcast axes; a shape that does not broadcast is a ShapeError", async () => {
  const b = new CpuBackend();
  const got = await tidy(() => broadcastTo(tensor(b, [1, 2, 3], [3, 1]), [2, 3, 2]).data());
  if (Array.from(got).join() !== "1,1,2,2,3,3,1,1,2,2,3,3") throw new Error(`got ${Array.from(got)}`);
  const x = tensor(b, [1, 2, 3], [3]);
  throwsShape(() => broadcastTo(x, [2, 2]), /\[3\]/);
  x.dispose();
  // Nothing is cached per shape: every byte is back once the tensors are gone.
  if (b.memory().live !== 0) throw new Error(`${b.memory().live} bytes live after the tensors were disposed`);
});
