/**
 * A short seeded slice of `deno task fuzz` (tests/fuzz/main.ts): 240 mutated inputs to the loaders, the
 * parsers and the CLIs, every one accepted or refused with a named error; no stack trace, hang or change to a
 * file the fuzzer does not own. The slice is the same cases on every run (seed 20260101).
 */
import { runFuzz, summary } from "./fuzz/main.ts";
import { TARGETS } from "./fuzz/targets.ts";
import { unsanitizedTest } from "./util.ts";

unsanitizedTest(
  "fuzz slice: 240 seeded cases over every target end accepted or with a named error",
  async () => {
    const r = await runFuzz({ seed: 20260101, seconds: 240, cases: 240, timeout: 60 });
    const text = summary(r);
    if (r.failures.length) throw new Error(text);
    if (r.cases !== 240) throw new Error(`ran ${r.cases} cases, expected 240 (time limit?)\n${text}`);
    // The slice reaches every target and refuses most inputs with a named error.
    const missing = TARGETS.map((t) => t.name).filter((t) => !(r.byTarget[t]?.cases > 0));
    if (missing.length) throw new Error(`targets never drawn: ${missing.join(", ")}\n${text}`);
    if (r.clean < r.cases / 2) throw new Error(`only ${r.clean} clean errors of ${r.cases}\n${text}`);
  },
);

unsanitizedTest(
  "fuzz: the same seed gives the same cases and outcomes; a replayed case is the same case",
  async () => {
    const a = await runFuzz({ seed: 7, seconds: 120, cases: 30, timeout: 60 });
    const b = await runFuzz({ seed: 7, seconds: 120, cases: 30, timeout: 60 });
    const counts = (r: typeof a) => JSON.stringify([r.cases, r.accepted, r.clean, r.byTarget]);
    if (counts(a) !== counts(b)) throw new Error(`${counts(a)} != ${counts(b)}`);
    const lines: string[] = [];
    const one = await runFuzz({
      seed: 7,
      seconds: 60,
      cases: 1,
      timeout: 60,
      only: 12,
      log: (l) => lines.push(l),
    });
    await Deno.remove(one.root, { recursive: true });
    if (one.cases !== 1 || !/^case 12 \(/.test(lines[0] ?? "")) throw new Error(lines.join("\n"));
  },
);
