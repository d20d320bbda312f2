/**
 * The fuzzer's worker: runs one case at a time for the runner (tests/fuzz/main.ts), which terminates it when a
 * case outlives its timeout.
 */
import { runCase } from "./case.ts";
import type { Templates } from "./targets.ts";

interface Init {
  readonly type: "init";
  readonly seed: number;
  readonly root: string;
  readonly templates: Templates;
  readonly only?: readonly string[];
  readonly keep?: boolean;
}
interface Case {
  readonly type: "case";
  readonly index: number;
}

{
  let init: Init | undefined;
  const post = (m: unknown) =>
    (globalThis as unknown as { postMessage: (m: unknown) => void }).postMessage(m);
  globalThis.addEventListener("message", async (ev) => {
    const m = (ev as MessageEvent<Init | Case>).data;
    if (m.type === "init") {
      init = m;
      post({ type: "ready" });
      return;
    }
    const r = await runCase(init!.seed, m.index, init!.templates, init!.root, init!.only, init!.keep);
    post({ type: "result", index: m.index, ...r });
  });
}
