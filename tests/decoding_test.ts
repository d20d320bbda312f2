/**
 * Decoding without prototype access: `__proto__`, `constructor` and `toString` keys in a train config file, an
 * objective or tokenizer_config.json are unknown fields, named; deep nesting is an error, not a stack
 * overflow; negative numbers as `--group -3`; a binary JSON file names itself.
 */
import { Effect, Exit } from "effect";
import { ConfigError, FileFormatError } from "../core/errors.ts";
import { parseFlags } from "../cli/flags.ts";
import { readJson } from "../io/files.ts";
import { decodeObjective } from "../objectives/codec.ts";
import { decodeConfigJson, readConfigFile } from "../training/config.ts";
import { main as trainMain, TRAIN } from "../train.ts";

const PROTO_KEYS = ["__proto__", "constructor", "toString"];

/** The ConfigError `f` throws (fails on any other outcome). */
const configError = (f: () => unknown): ConfigError => {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw new Error(`expected a ConfigError, got ${e}`);
  }
  throw new Error("expected a ConfigError, nothing thrown");
};

const expect = (e: { field: string; message: string }, field: string, parts: string[]) => {
  if (e.field !== field) throw new Error(`field ${e.field}, expected ${field}: ${e.message}`);
  for (const p of parts) if (!e.message.includes(p)) throw new Error(`"${e.message}" lacks "${p}"`);
};

Deno.test("train config files: prototype-name keys are unknown fields naming the file and the key", async () => {
  for (const k of PROTO_KEYS) {
    const json = JSON.parse(`{"group": 4, ${JSON.stringify(k)}: {"kind": "int"}}`);
    expect(configError(() => decodeConfigJson("run.json", json)), k, [
      `run.json: unknown field "${k}"`,
      "known: model",
    ]);
  }
  // The decoded object is a plain one and never gains a prototype from the file.
  const ok = decodeConfigJson("run.json", { group: 4 });
  if (Object.getPrototypeOf(ok) !== Object.prototype || ok.group !== 4) throw new Error("plain object");
  const dir = await Deno.makeTempDir({ prefix: "bupo-decode-" });
  try {
    await Deno.writeTextFile(`${dir}/run.json`, `{"__proto__": {"steps": 1}}`);
    const exit = await Effect.runPromiseExit(readConfigFile(`${dir}/run.json`));
    if (Exit.isSuccess(exit) || exit.cause.reasons.length === 0) throw new Error("decoded");
    const [lines, code] = await captureErr(() => trainMain(["--config", `${dir}/run.json`]));
    if (
      code !== 2 || lines.length !== 1 ||
      !lines[0].startsWith(`train: ${dir}/run.json: unknown field "__proto__"`)
    ) {
      throw new Error(`${code}: ${lines.join("\n")}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("objective JSON: prototype-name keys anywhere are unknown fields at their path", () => {
  const pg = `{"kind": "pg", "policy": {"kind": "final"}}`;
  for (const k of PROTO_KEYS) {
    const key = JSON.stringify(k);
    const cases: [string, string][] = [
      [`{"terms": [], ${key}: 1}`, k],
      [`{"terms": [{"kind": "pg", "policy": {"kind": "final"}, ${key}: 1}]}`, `terms[0].${k}`],
      [
        `{"terms": [{"kind": "pg", "policy": {"kind": "layer", "layer": 1, ${key}: 1}}]}`,
        `terms[0].policy.${k}`,
      ],
      [
        `{"terms": [{"kind": "pg", "policy": {"kind": "final"}, "weight": {"kind": "linear", "from": 0, "to": 1, "start": 0, "end": 1, ${key}: 1}}]}`,
        `terms[0].weight.${k}`,
      ],
      [
        `{"terms": [{"kind": "phases", "phases": [{"until": null, "objective": {"terms": [${pg}]}, ${key}: 1}]}]}`,
        `terms[0].phases[0].${k}`,
      ],
    ];
    for (const [text, field] of cases) {
      expect(configError(() => decodeObjective("o.json", JSON.parse(text))), field, [
        `o.json: ${field}: unknown field "${k}"`,
      ]);
    }
    // A kind named like a prototype member is an unknown kind, not a lookup.
    expect(configError(() => decodeObjective("o.json", { terms: [{ kind: k }] })), "terms[0].kind", [
      "unknown term",
    ]);
  }
});

Deno.test("objective JSON nested 10^5 deep is a named error, not a stack overflow", () => {
  let w: unknown = 1;
  for (let i = 0; i < 100_000; i++) w = { kind: "product", factors: [w] };
  const e = configError(() =>
    decodeObjective("o.json", { terms: [{ kind: "nll", policy: { kind: "final" }, weight: w }] })
  );
  if (
    !e.field.startsWith("terms[0].weight.factors[0].factors[0]") || !e.message.includes("nested too deeply")
  ) {
    throw new Error(e.message.slice(0, 300));
  }
  let o: unknown = { terms: [] };
  for (let i = 0; i < 100_000; i++) {
    o = { terms: [{ kind: "phases", phases: [{ until: null, objective: o }] }] };
  }
  const e2 = configError(() => decodeObjective("o.json", o));
  if (!e2.message.includes("nested too deeply")) throw new Error(e2.message.slice(0, 300));
});

Deno.test("negative numbers: --group -3 and --group=-3 both get the group's own message", async () => {
  for (const argv of [["--group", "-3"], ["--group=-3"]]) {
    const e = configError(() => parseFlags(TRAIN, argv));
    expect(e, "--group", [`--group: expected a positive number, got "-3"`]);
    if (e.message.includes("ambiguous")) throw new Error(e.message);
    const [lines, code] = await captureErr(() => trainMain(argv));
    if (code !== 2 || lines.join("\n") !== `train: --group: expected a positive number, got "-3"`) {
      throw new Error(`${argv.join(" ")}: ${code} ${lines.join("\n")}`);
    }
  }
  expect(configError(() => parseFlags(TRAIN, ["--seed", "-1", "--steps", "2"])), "--seed", [
    `--seed: expected a number >= 0, got "-1"`,
  ]);
});

Deno.test("a binary or non-JSON file read as JSON names the file and says what it is", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bupo-binary-" });
  try {
    const bin = Uint8Array.from({ length: 256 }, (_, i) => (i * 151 + 7) & 255);
    await Deno.writeFile(`${dir}/tokenizer.json`, bin);
    const f = await Effect.runPromise(Effect.flip(readJson(`${dir}/tokenizer.json`)));
    if (!(f instanceof FileFormatError) || f.file !== `${dir}/tokenizer.json`) throw new Error(`${f}`);
    if (
      !/^.*\/tokenizer\.json: not UTF-8 text \(invalid byte 0x[0-9a-f]{2} at offset \d+\); expected a JSON file/
        .test(f.message)
    ) {
      throw new Error(f.message);
    }
    // The offset is the first byte that breaks UTF-8.
    await Deno.writeFile(`${dir}/x.json`, Uint8Array.from([0x7b, 0x22, 0xc3, 0xa9, 0x22, 0xff, 0x7d]));
    const g = await Effect.runPromise(Effect.flip(readJson(`${dir}/x.json`)));
    if (!g.message.includes("invalid byte 0xff at offset 5")) throw new Error(g.message);
    // UTF-8 but not JSON, with control characters: the parser's message is shown escaped.
    await Deno.writeTextFile(`${dir}/y.json`, "\u0001\u0002{");
    const h = await Effect.runPromise(Effect.flip(readJson(`${dir}/y.json`)));
    // deno-lint-ignore no-control-regex
    if (!h.message.startsWith(`${dir}/y.json: not valid JSON (`) || /[\u0000-\u001f]/.test(h.message)) {
      throw new Error(JSON.stringify(h.message));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Run `f` with console.error captured: the lines and f's result. */
async function captureErr<A>(f: () => Promise<A>): Promise<[string[], A]> {
  const lines: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  try {
    const r = await f();
    return [lines, r];
  } finally {
    console.error = orig;
  }
}
