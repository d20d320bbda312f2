/**
 * bupo: internal policies of language models, their entropy, and RL objectives over them, on WebGPU.
 * The public API, by section: core, engine, policies (the decoder, internal policies, model folders,
 * tokenizers), objectives, tasks, data (datasets, chat templates, prompts, rewards), training, sweeps and
 * statistics, and the entropy-flow analysis; everything else is internal. `deno doc mod.ts` prints it. Layers
 * are 0-based everywhere (the paper's layer i is i-1).
 *
 * @module
 */

// core: shapes, errors, JSON codecs, RNG, optimizer math, safetensors
export * from "./core/shape.ts";
export * from "./core/errors.ts";
export type { Decoded, DecodeIssue, JsonCodec } from "./core/codec.ts";
export {
  checkValue,
  DEVICE_FLAG,
  type DeviceChoice,
  DEVICES,
  type FlagKind,
  flagName,
  type FlagSpec,
  type FlagTable,
  type FlagValue,
  type ItemKind,
  type ValueSite,
} from "./core/flags.ts";
export { philox4x32, rngBits, type RngKey, rngUniform, uniform01 } from "./core/rng.ts";
export { type AdamWConfig, adamwHyper, adamwReference, clipScale, globalNorm } from "./core/optim.ts";
export { parseSafetensors, serializeSafetensors, toF32, toI32 } from "./core/safetensors.ts";

// engine: tensors, backends, autodiff, ops
export type { Backend, BackendLimits, MemoryStats, Storage } from "./engine/backend.ts";
export { CpuBackend, type CpuStorage } from "./engine/cpu.ts";
export {
  GpuBackend,
  type GpuBackendOptions,
  type GpuStorage,
  type KernelProfile,
} from "./engine/gpu/backend.ts";
export { type AdapterOptions, Gpu, GpuLive, gpuServiceBase, openGpu, withGpu } from "./engine/gpu/device.ts";
export {
  defineKernel,
  type GpuPass,
  type GpuStep,
  type GpuTarget,
  type HostArray,
  type HostTensor,
  type Kernel,
  type OutSpec,
  type PassBinding,
  type TensorSpec,
  type TextureCopy,
  type VjpContext,
  type VjpRule,
} from "./engine/kernel.ts";
export { apply, apply1 } from "./engine/apply.ts";
export type { Recorder } from "./engine/recorder.ts";
export { custom, Tape } from "./engine/tape.ts";
export {
  keep,
  reshape,
  scalar,
  Tensor,
  tensor,
  type TensorData,
  tidy,
  view,
  zeros,
} from "./engine/tensor.ts";
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
export {
  initParams,
  type LayoutLimits,
  layoutOf,
  type ParamLayout,
  Params,
  paramsFromHost,
  segmentGrads,
} from "./policies/params.ts";
export {
  forward,
  type ForwardResult,
  type LayerTaps,
  lmLoss,
  logits,
  unembedding,
} from "./policies/model.ts";
export * from "./policies/internal.ts";
export { type Readout, type ReadoutOptions, streamReadout } from "./policies/readout.ts";
export { forwardPolicies, policyPoint, readPoints, readPolicies } from "./policies/policy.ts";
export {
  type HostModel,
  type NonFiniteTensor,
  paramsToHost,
  readModelDir,
  type ReadModelOptions,
  toParams,
  writeModelDir,
} from "./formats/hf.ts";
export {
  CharTokenizer,
  type DecodeOptions,
  HfTokenizer,
  type HfTokenizerModel,
  type TextTokenizer,
  UnknownCharError,
} from "./formats/tokenizer.ts";
export { loadTokenizer, saveTokenizer } from "./formats/tokenizer.ts";
export { generate, type Rollout } from "./policies/generate.ts";
export { lossAndGrads, supervisedStep } from "./training/sft.ts";
export { createOptimizer, disposeOptimizer, loadMoments, momentsToHost } from "./training/optimizer.ts";

// objectives: the loss algebra (the whole module as `objectives`; the everyday names directly)
/** The whole objective algebra as one namespace (objectives/mod.ts): terms, codec, advantages, reference, checks. */
export * as objectives from "./objectives/mod.ts";
export {
  activeAt,
  type ActiveTerm,
  type Agg,
  bupo,
  entropy as entropyTerm,
  entropyBonus,
  type EntropyTerm,
  grpo,
  gspo,
  type KlEstimator,
  klPolicies,
  type KlPoliciesTerm,
  type KlTerm,
  klToRef,
  linear,
  MonoidObjective,
  nll,
  type NllTerm,
  type Node as ObjectiveNode,
  type Objective,
  type ObjectiveMonoid,
  pg,
  type PgOptions,
  type PgTerm,
  type Phase,
  phases,
  type PhasesTerm,
  piecewise,
  scale as scaleObjective,
  selfDistill,
  show,
  sum as sumObjectives,
  type Term,
  type Weight,
  zero as zeroObjective,
} from "./objectives/objective.ts";
export { decodeObjective, ObjectiveCodec } from "./objectives/codec.ts";
export { drGrpoAdvantages, grpoAdvantages, rlooAdvantages } from "./objectives/advantages.ts";
export { evaluate as evaluateReference } from "./objectives/reference.ts";
export { requiredReadouts } from "./objectives/readouts.ts";
export { lowerLoss, lowerStep } from "./objectives/lower.ts";
export { rolloutFromSequences, rolloutTensors } from "./objectives/batch.ts";
export { readRolloutFile, writeRolloutFile } from "./formats/rollout.ts";
export { gradients, normTable, writeGradients } from "./training/grad.ts";
export {
  type CheckpointTokenizer,
  datasetSource,
  type SourcePrompt,
  type SourceResponse,
  type SourceScore,
  type TaskSource,
  taskSource,
} from "./training/source.ts";
export { readKl, streamKl } from "./policies/kl.ts";
export * from "./policies/analysis.ts";

// tasks: the Task interface, the embedded tasks (arith, rewrite), their registry and task modules
export * from "./tasks/mod.ts";
export { loadTaskModule, resolveTask, splitTaskSpec } from "./formats/task.ts";

// data: prompt datasets, chat templates, prompts as the model sees them, rewards
export {
  type DataFormat,
  type Dataset,
  type DatasetOptions,
  epochOrder,
  loadDataset,
  makeSampler,
  readDataset,
  type Row,
  RowError,
  type RowSchema,
  type Sampler,
  toPrompt,
} from "./formats/dataset.ts";
export {
  type ChatTemplate,
  type CompiledTemplate,
  parseChatTemplate,
  parseTemplateKwargs,
  readChatTemplate,
  renderChat,
  type RenderOptions,
} from "./formats/chat.ts";
export {
  type EncodedPrompt,
  type GenerationConfig,
  loadPromptSetup,
  type Prepared,
  type PreparedRow,
  prepareRow,
  prepareRows,
  type PromptOptions,
  type PromptParts,
  type PromptSetup,
  promptSetup,
  readGenerationConfig,
  readPromptSetup,
} from "./formats/generation.ts";
export {
  loadRewardModule,
  type ResolveOptions,
  resolveRewards,
  type RewardSet,
  type WorkerReward,
  workerReward,
  type WorkerRewardOptions,
} from "./formats/rewards.ts";
export * from "./tasks/reward.ts";
export {
  BUILTIN_REWARDS,
  type BuiltinOptions,
  type BuiltinReward,
  builtinReward,
  exactScore,
  formatScore,
  mathScore,
  regexReward,
} from "./tasks/rewards.ts";
export {
  answersEqual,
  type AnswerSource,
  extractAnswer,
  gradeMath,
  type MathGrade,
  normalizeAnswer,
} from "./tasks/math_grade.ts";

// training: the configuration, the run, one RL step, evaluation
export {
  decodeConfigJson,
  DEFAULTS,
  readConfigFile,
  resolveConfig,
  TRAIN_FLAGS,
  type TrainConfig,
} from "./training/config.ts";
export { resolveObjective, type RunOptions, type RunResult, runTraining } from "./training/run.ts";
export {
  type DifficultyAccuracy,
  type RlContext,
  rlStep,
  type StepMetrics,
  type TermMetrics,
} from "./training/rl.ts";
export { type Optimizer, optimizerStep } from "./training/optimizer.ts";
export {
  type DataSourceResult,
  type DifficultyResult,
  type EvalOptions,
  evalPolicyOf,
  type EvalResult,
  type EvalSample,
  evaluate,
  evaluateSource,
  type GroupResult,
} from "./training/evaluate.ts";

// sweeps and comparisons: runs over a grid of settings and seeds, and their statistics
export {
  type Axis,
  type Cell,
  planCells,
  type Resources,
  runConfig,
  runSweep,
  type SweepOptions,
  type SweepOutcome,
  type SweepReport,
  type SweepRun,
  type SweepSpec,
  sweepSpec,
} from "./training/sweep.ts";
export { compare, COMPARE_FLAGS, compareSpec } from "./training/compare.ts";
export type { ReportContext } from "./training/sweep_report.ts";
export type { EvalRecord } from "./training/report.ts";
export type { Chart } from "./io/svg.ts";
/** Statistics of sweeps (core/stats.ts): mean, sd, the bootstrap interval, the sign and permutation tests. */
export * as stats from "./core/stats.ts";
export {
  bootstrapMean,
  type BootstrapOptions,
  type Estimate,
  type PairedComparison,
  pairedComparison,
  permutationTest,
  signTest,
} from "./core/stats.ts";

// the entropy-flow analysis of `deno task entropy`
export {
  analyseEntropy,
  type EntropyArgs,
  type EntropyInput,
  entropyInput,
  entropyInputs,
  type EntropyPrompts,
  entropyPrompts,
  type EntropyResult,
  type PromptEntry,
  readPromptEntries,
  writeEntropyReport,
} from "./training/entropy.ts";
