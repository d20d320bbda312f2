/** Promise forms of the tokenizer folder effects (policies/tokenizer.ts), for scripts and tests. */
import { Effect } from "effect";
import {
  type CharTokenizer,
  type HfTokenizer,
  readTokenizerDir,
  writeTokenizerDir,
} from "../policies/tokenizer.ts";

/** Read tokenizer.json (+ tokenizer_config.json); rejects with the FileFormatError or ConfigError itself. */
export const loadTokenizer = (dir: string): Promise<CharTokenizer | HfTokenizer> =>
  Effect.runPromise(readTokenizerDir(dir));

/** Write a char tokenizer's tokenizer.json and tokenizer_config.json, each atomically. */
export const saveTokenizer = (dir: string, tok: CharTokenizer): Promise<void> =>
  Effect.runPromise(writeTokenizerDir(dir, tok));
