/**
 * bupo: internal policies of language models, their entropy, and RL objectives over them, on WebGPU.
 * The public API; everything else is internal. Layers are 0-based everywhere (the paper's layer i is i-1).
 */

// core: shapes, errors, RNG, optimizer math, safetensors
export * from "./core/shape.ts";
export * from "./core/errors.ts";
export { philox4x32, rngBits, type RngKey, rngUniform, uniform01 } from "./core/rng.ts";
export { type AdamWConfig, adamwHyper, adamwReference, clipScale, globalNorm } from "./core/optim.ts";
export { parseSafetensors, serializeSafetensors, toF32, toI32 } from "./core/safetensors.ts";

// engine: tensors, backends, autodiff, ops
export type { Backend, MemoryStats } from "./engine/backend.ts";
export { CpuBackend } from "./engine/cpu.ts";
export { GpuBackend } from "./engine/gpu/backend.ts";
export { Gpu, GpuLive, openGpu, withGpu } from "./engine/gpu/device.ts";
export { defineKernel, type GpuPass, type Kernel } from "./engine/kernel.ts";
export { apply, apply1 } from "./engine/apply.ts";
export { custom, Tape } from "./engine/tape.ts";
export { keep, reshape, scalar, Tensor, tensor, tidy, view, zeros } from "./engine/tensor.ts";
export { checkGrad } from "./kernels/gradcheck.ts";
export * from "./kernels/elementwise.ts";
export { concatRows, copyInto, permute, sliceRows, transpose } from "./kernels/layout.ts";
export { matmul } from "./kernels/matmul.ts";
export { max, mean, sum, sumSquares } from "./kernels/reduce.ts";
export { crossEntropy, logProbOf, logSoftmax, softmax } from "./kernels/softmax.ts";
export { rmsNorm } from "./kernels/rmsnorm.ts";
export { embedding } from "./kernels/embedding.ts";
export { rope } from "./kernels/rope.ts";
export { attention } from "./kernels/attention.ts";
export { swiglu } from "./kernels/mlp.ts";
export { adamwSegments, adamwStep, adamwStepChecked } from "./kernels/adamw.ts";
export { sample } from "./kernels/sample.ts";

// policies: the decoder, its parameters, internal policies and their readouts
export * from "./policies/config.ts";
export { initParams, layoutOf, Params, paramsFromHost, segmentGrads } from "./policies/params.ts";
export {
  forward,
  type ForwardResult,
  type LayerTaps,
  lmLoss,
  logits,
  unembedding,
} from "./policies/model.ts";
export * from "./policies/internal.ts";
export { streamReadout } from "./policies/readout.ts";
export { forwardPolicies, policyPoint, readPoints, readPolicies } from "./policies/policy.ts";
export { paramsToHost, readModelDir, toParams, writeModelDir } from "./formats/hf.ts";
export { CharTokenizer, HfTokenizer, type TextTokenizer } from "./formats/tokenizer.ts";
export { loadTokenizer, saveTokenizer } from "./formats/tokenizer.ts";
export { generate, type Rollout } from "./policies/generate.ts";
export { lossAndGrads, supervisedStep } from "./training/sft.ts";
export { createOptimizer, disposeOptimizer, loadMoments, momentsToHost } from "./training/optimizer.ts";

// objectives: the loss algebra (the whole module as `objectives`; the everyday names directly)
export * as objectives from "./objectives/mod.ts";
export {
  activeAt,
  bupo,
  entropy as entropyTerm,
  entropyBonus,
  grpo,
  gspo,
  klPolicies,
  klToRef,
  linear,
  MonoidObjective,
  nll,
  type Objective,
  pg,
  phases,
  piecewise,
  scale as scaleObjective,
  selfDistill,
  show,
  sum as sumObjectives,
  zero as zeroObjective,
} from "./objectives/objective.ts";
export { decodeObjective, ObjectiveCodec } from "./objectives/codec.ts";
export { drGrpoAdvantages, grpoAdvantages, rlooAdvantages } from "./objectives/advantages.ts";
export { evaluate as evaluateReference } from "./objectives/reference.ts";
export { requiredReadouts } from "./objectives/readouts.ts";
export { lowerLoss, lowerStep } from "./objectives/lower.ts";
export { batchTensors, rolloutFromSequences } from "./objectives/batch.ts";
export { readRolloutFile, writeRolloutFile } from "./formats/rollout.ts";
export { loadTaskModule, resolveTask } from "./formats/task.ts";
export { gradients, normTable, writeGradients } from "./training/grad.ts";
export {
  datasetSource,
  type SourcePrompt,
  type SourceScore,
  type TaskSource,
  taskSource,
} from "./training/source.ts";
export { readKl, streamKl } from "./policies/kl.ts";
export { entropyFlow } from "./policies/analysis.ts";

// tasks
export * from "./tasks/mod.ts";
