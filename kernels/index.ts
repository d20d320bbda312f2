/**
 * The registry of every kernel value, keyed by its name: total by construction (a kernel missing here fails the
 * registry sweep in tests/registry_test.ts, which runs each through the CPU reference, device-free WGSL generation
 * and the GPU). Importing it registers nothing: it is a plain record.
 */
import { accumulateKernel } from "../engine/tape.ts";
import { adamwKernel, adamwNormKernel, adamwSumsqKernel, adamwUpdateKernel } from "./adamw.ts";
import { attentionBwdKVKernel, attentionBwdQKernel, attentionKernel } from "./attention.ts";
import { fillZeroKernel, putColumnsKernel, takeColumnsKernel } from "./chunked.ts";
import { appendKernel, columnKernel } from "./decode.ts";
import { binary, expandKernel, sumToKernel, unary } from "./elementwise.ts";
import {
  embeddingBlockKernel,
  embeddingGrad,
  embeddingGradPrep,
  embeddingGradRows,
  embeddingKernel,
} from "./embedding.ts";
import { klFinish, klFold, klGrad } from "./kl.ts";
import { decodeAttentionKernel, kvWriteKernel } from "./kvcache.ts";
import { concatKernel, copyKernel, permuteKernel, sliceRowsKernel, zerosLikeKernel } from "./layout.ts";
import { matmulKernel } from "./matmul.ts";
import { swigluBwdKernel, swigluKernel } from "./mlp.ts";
import { philoxKernel } from "./philox_wgsl.ts";
import { readoutFinish, readoutFold, readoutGrad, readoutTopK, readoutTopKFinish } from "./readout.ts";
import { maxGrad, reduceRows, sumSquaresKernel } from "./reduce.ts";
import { rmsNormGrad, rmsNormKernel } from "./rmsnorm.ts";
import { ropeKernel } from "./rope.ts";
import { sampleKernel } from "./sample.ts";
import { selectKernel } from "./select.ts";
import { crossEntropyGrad, crossEntropyKernel, softmaxGrad, softmaxKernel } from "./softmax.ts";

/** Every kernel, by name. */
export const KERNELS = {
  accumulate: accumulateKernel,
  adamw: adamwKernel,
  adamwSumsq: adamwSumsqKernel,
  adamwNorm: adamwNormKernel,
  adamwUpdate: adamwUpdateKernel,
  attention: attentionKernel,
  attentionBwdQ: attentionBwdQKernel,
  attentionBwdKV: attentionBwdKVKernel,
  fillZero: fillZeroKernel,
  putColumns: putColumnsKernel,
  takeColumns: takeColumnsKernel,
  column: columnKernel,
  appendToken: appendKernel,
  unary: unary,
  binary: binary,
  sumTo: sumToKernel,
  expand: expandKernel,
  embedding: embeddingKernel,
  embeddingGrad: embeddingGrad,
  embeddingGradPrep: embeddingGradPrep,
  embeddingGradRows: embeddingGradRows,
  embeddingBlock: embeddingBlockKernel,
  klFold: klFold,
  klFinish: klFinish,
  klGrad: klGrad,
  kvWrite: kvWriteKernel,
  decodeAttention: decodeAttentionKernel,
  permute: permuteKernel,
  copy: copyKernel,
  sliceRows: sliceRowsKernel,
  zerosLike: zerosLikeKernel,
  concatRows: concatKernel,
  matmul: matmulKernel,
  swiglu: swigluKernel,
  swigluBwd: swigluBwdKernel,
  philox: philoxKernel,
  readoutFold: readoutFold,
  readoutGrad: readoutGrad,
  readoutFinish: readoutFinish,
  readoutTopK: readoutTopK,
  readoutTopKFinish: readoutTopKFinish,
  reduce: reduceRows,
  maxGrad: maxGrad,
  sumSquares: sumSquaresKernel,
  rmsNorm: rmsNormKernel,
  rmsNormGrad: rmsNormGrad,
  rope: ropeKernel,
  sample: sampleKernel,
  select: selectKernel,
  softmax: softmaxKernel,
  softmaxGrad: softmaxGrad,
  crossEntropy: crossEntropyKernel,
  crossEntropyGrad: crossEntropyGrad,
} as const;

/** The name of a registered kernel. */
export type KernelName = keyof typeof KERNELS;

/** The params type of a registered kernel. */
export type KernelParams<K extends KernelName> = typeof KERNELS[K] extends
  import("../engine/kernel.ts").Kernel<infer P> ? P : never;
