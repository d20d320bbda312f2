/** kernels/decode.ts's column kernel past one dispatch dimension: the grid folds into y and every element lands. */
import { column, columnKernel } from "../kernels/decode.ts";
import { tensor } from "../engine/tensor.ts";
import { gpuTest, softwareTarget } from "./gpu_util.ts";

// B * d = 3 * 1,400,001 = 4,200,003 elements: more than 65,535 workgroups of 64 (4,194,240 invocations).
const [B, T, d] = [3, 2, 1_400_001];

Deno.test("column: a (B, T, d) past 65,535 workgroups of 64 folds its grid into y", () => {
  const [pass] = columnKernel.gpu({ t: 1 }, [{ shape: [B, T, d], dtype: "f32" }], softwareTarget());
  if (!("wgsl" in pass)) throw new Error("expected a compute pass");
  const [x, y, z] = pass.workgroups;
  if (x > 65535 || y < 2 || z !== 1) throw new Error(`grid ${pass.workgroups} does not fold into y`);
  if (x * y * 64 < B * d) throw new Error(`grid ${pass.workgroups} covers fewer than ${B * d} invocations`);
  if (!pass.wgsl.includes(`gid.y * ${x * 64}u`)) {
    throw new Error("the shader does not recover the folded index");
  }
});

gpuTest(
  "column on the GPU equals the CPU reference past 65,535 workgroups (4,200,003 elements)",
  async (g) => {
    // Small integers (below 8191, exact in f32) that differ by row, position and column: a copy compares exactly.
    const data = new Float32Array(B * T * d);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < d; j++) data[(b * T + t) * d + j] = (b * 7 + t * 3 + j) % 8191;
      }
    }
    const x = tensor(g, data, [B, T, d]);
    const y = column(x, 1);
    const got = await y.data();
    x.dispose();
    y.dispose();
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < d; j++) {
        const want = (b * 7 + 3 + j) % 8191;
        if (got[b * d + j] !== want) throw new Error(`y[${b}, ${j}] = ${got[b * d + j]}, expected ${want}`);
      }
    }
  },
);
