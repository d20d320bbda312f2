/**
 * Sampling rollouts from the model's own policy (or any internal policy, `policy`) on the GPU: every token is sampled and appended on the device;
 * the host reads the ids once at the end (and a done flag every `checkEvery` tokens to stop early).
 * With the KV cache (default): one prefill forward over all T columns fills every layer's cache and gives the
 * state that predicts the first new column; each later token is one decode step (one column through every layer,
 * attending the cached keys), O(t) per token. Without it (`cache: false`, the oracle of the tests and the
 * baseline of the benchmark): each step runs the full fixed-length forward and reads column t - 1, O(T^2) per
 * sequence. Either way the shapes never change (no shader recompiles) and causal attention makes the
 * not-yet-written columns irrelevant. With `policy` (default `final`), each next token is drawn from that internal
 * policy's readout at the last column instead (policies/policy.ts `policyPoint`: raw or normed).
 */
import { appendToken, column, stopSet } from "../kernels/decode.ts";
import { idsColumn } from "../kernels/kvcache.ts";
import { sample } from "../kernels/sample.ts";
import { type Tensor, tensor, tidy } from "../engine/tensor.ts";
import type { DecoderConfig } from "./config.ts";
import {
  decodeTaps,
  forward,
  type ForwardResult,
  type KVCache,
  kvCache,
  prefill,
  unembedding,
} from "./model.ts";
import { final, type InternalPolicy } from "./internal.ts";
import type { Params } from "./params.ts";
import { policyPoint } from "./policy.ts";
import { unembed } from "./readout.ts";

export interface GenerateOptions {
  /**
   * Most tokens to generate per sequence (eos included), every sequence alike whatever its prompt's length: a
   * sequence that reaches it without a stop id is cut (`finished` false).
   */
  readonly maxNew: number;
  readonly eos: number;
  readonly pad: number;
  /** Another token id that ends a response (kept in it), e.g. the task's stop character. */
  readonly stop?: number;
  /**
   * More ids that end a response (kept in it): every eos of a model's generation_config.json (Qwen3 has two).
   * With eos and stop at most eight distinct ids (kernels/decode.ts MAX_STOP_IDS).
   */
  readonly stops?: readonly number[];
  readonly temperature: number;
  readonly topK?: number;
  readonly topP?: number;
  /**
   * The tokenizer's number of ids when the model's vocabulary is larger (Qwen3: 151,669 of 151,936 rows): ids at
   * or past it are never sampled, greedy decoding included. Default: every row of the unembedding.
   */
  readonly vocab?: number;
  /** Philox seed and training step: token (sequence s, position t) uses counter (step, s, t). */
  readonly seed: number;
  readonly step: number;
  /** Global index of the first sequence (so sub-batches of one step draw distinct numbers). */
  readonly firstSequence?: number;
  /** Read the done flags every this many tokens to stop early (default 8; 0 = never). */
  readonly checkEvery?: number;
  /** Called after each generated column (for progress bars). */
  readonly onToken?: (t: number, total: number) => void;
  /**
   * Decode with a KV cache (default true): L x 2 x B x T x Hkv x D floats of cache for the call. False: a full
   * forward per token (the reference path; same ids up to f32 rounding of the logits).
   */
  readonly cache?: boolean;
  /**
   * The policy every token is sampled from (default `final`, the model's own): at each step the readout of its
   * point at the last column (`layer(k)` raw: E_u h_k, `layer(L-1)` = `final`; attn/ffn: the module output).
   */
  readonly policy?: InternalPolicy;
}

/** Sampled sequences: each row its prompt, its response, then pad. */
export interface Rollout {
  /** Row-major ids (B, T): prompt, response, then pad. T = max prompt length + maxNew. */
  readonly ids: Int32Array;
  /** Sequences (rows). */
  readonly B: number;
  /** Columns of `ids`. */
  readonly T: number;
  /** Prompt tokens of each row (its response starts at that column). */
  readonly promptLens: readonly number[];
  /** Response tokens per sequence, eos included when it was sampled. */
  readonly responseLens: readonly number[];
  /** Whether each sequence ended with a stop id (eos, stop or one of stops; false: cut at maxNew). */
  readonly finished: readonly boolean[];
  /** The stop id each finished sequence ended with (undefined where it was cut at maxNew). */
  readonly stopIds: readonly (number | undefined)[];
}

/** Sample responses to `prompts` (token ids, lengths may differ) from the model's own policy (or `o.policy`). */
export const generate = async (
  c: DecoderConfig,
  p: Params,
  prompts: readonly (readonly number[])[],
  o: GenerateOptions,
): Promise<Rollout> => {
  const B = prompts.length;
  const stops = new Set(stopSet(o));
  const plens = prompts.map((x) => x.length);
  if (plens.some((n) => n < 1)) throw new Error("generate: every prompt needs at least one token");
  const T = Math.max(...plens) + o.maxNew;
  const host = new Int32Array(B * T).fill(o.pad);
  prompts.forEach((x, b) => host.set(x, b * T));
  const be = p.backend;
  const ids = tensor(be, host, [B, T], "i32");
  const done = tensor(be, new Int32Array(B), [B], "i32");
  const promptLen = tensor(be, Int32Array.from(plens), [B], "i32");
  const seqs = tensor(be, Int32Array.from({ length: B }, (_, b) => (o.firstSequence ?? 0) + b), [B], "i32");
  const positions = tensor(be, Int32Array.from({ length: T }, (_, i) => i), [T], "i32");
  const E = unembedding(c, p);
  const start = Math.min(...plens);
  const every = o.checkEvery ?? 8;
  const kv: KVCache | undefined = o.cache ?? true ? kvCache(c, be, B, T) : undefined;
  const policy = o.policy ?? final;
  /** The point the sampled policy reads (the final state by default), of a forward pass or a decoding step. */
  const point = (f: ForwardResult): Tensor => policyPoint(c, p, f, policy);
  /** The state (B, d) that predicts column t. */
  const state = (t: number): Tensor => {
    if (!kv) return column(point(forward(c, p, ids, positions)), t - 1);
    if (t === start) return column(point(prefill(c, p, ids, positions, kv)), t - 1);
    return point(decodeTaps(c, p, kv, idsColumn(ids, t - 1), t - 1));
  };
  try {
    for (let t = start; t < T; t++) {
      tidy(() => {
        const h = state(t); // (B, d): the state that predicts column t
        const z = unembed(h, E); // (B, V)
        const col = tensor(be, new Int32Array(B).fill(t), [B], "i32");
        const s = sample(z, {
          temperature: o.temperature,
          topK: o.topK,
          topP: o.topP,
          key: { seed: o.seed, step: o.step },
          sequences: seqs,
          positions: col,
          vocab: o.vocab !== undefined && o.vocab < c.vocabSize ? o.vocab : undefined,
        });
        appendToken(ids, done, s, promptLen, {
          t,
          eos: o.eos,
          pad: o.pad,
          stop: o.stop,
          stops: o.stops,
          maxNew: o.maxNew,
        });
      });
      o.onToken?.(t - start + 1, T - start);
      if (every > 0 && (t - start + 1) % every === 0 && t + 1 < T) {
        const d = await done.data();
        if (d.every((x) => x !== 0)) break; // a row still inside its prompt is not done
      }
    }
    const out = Int32Array.from(await ids.data());
    const responseLens: number[] = [], finished: boolean[] = [], stopIds: (number | undefined)[] = [];
    for (let b = 0; b < B; b++) {
      const limit = plens[b] + o.maxNew; // <= T; past it the row holds pad only
      let end = limit;
      for (let t = plens[b]; t < limit; t++) {
        if (stops.has(out[b * T + t])) {
          end = t + 1;
          break;
        }
      }
      responseLens.push(end - plens[b]);
      const last = out[b * T + end - 1];
      const ended = end > plens[b] && stops.has(last);
      finished.push(ended);
      stopIds.push(ended ? last : undefined);
    }
    return { ids: out, B, T, promptLens: plens, responseLens, finished, stopIds };
  } finally {
    for (const x of [ids, done, promptLen, seqs, positions] as Tensor[]) x.dispose();
    kv?.dispose();
  }
};
