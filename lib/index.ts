/**
 * sparse-ffn: sparse feed-forward layers (σ-MoE, Switch/top-k MoE, Top-K, PKM, PEER) for Node.js.
 * @packageDocumentation
 */
export { ShapeError, DTypeError, DeviceError, DisposedError, BackendUnavailableError, type LoadAttempt } from './errors.js';
export {
  Tensor,
  tidy,
  keep,
  memory,
  type DType,
  type Device,
  type HostData,
  type MemoryInfo,
  type TensorOptions,
} from './tensor.js';
export { info, formatInfo, setNumThreads, getNumThreads, setIsa, type BackendInfo } from './info.js';

// ---- ops: GEMM (foundation) ----
export { gemm, matmul, type GemmOptions } from './ops/gemm.js';

// ---- ops: MoE ----
export {
  moeRoute,
  moeRouteBackward,
  moeExperts,
  moeExpertsBackward,
  moeExpertUp,
  moeExpertDown,
  moeCombine,
  type MoeGate,
  type MoeSelect,
  type Activation,
  type MoeRouteOptions,
  type MoeRouting,
  type MoeAuxLosses,
  type MoeAuxWeights,
  type MoeExpertParams,
  type MoeExpertsSaved,
  type MoeExpertsOptions,
  type MoeExpertsGrads,
} from './ops/moe.js';
export { ffnDense, ffnDenseBackward, type FfnParams, type FfnOptions, type FfnSaved, type FfnGrads } from './ops/ffn.js';

// ---- ops: PKM / PEER ----
export {
  pkmTopk,
  pkmTopkBackward,
  embeddingBag,
  embeddingBagBackward,
  peerExperts,
  peerExpertsBackward,
  sparseRowsToDense,
  SparseGradWorkspace,
  subKeyCount,
  memBandwidth,
  adviseHugePages,
  batchNorm,
  batchNormBackward,
  type BatchNormOptions,
  type BatchNormSaved,
  type PkmScoreAct,
  type PeerAct,
  type PkmTopkOptions,
  type PkmTopkResult,
  type PeerOptions,
  type SparseRows,
  type ImplOption,
  type BackwardOptions,
} from './ops/pkm.js';
export { adamwStep, sparseAdamwStep, type AdamwOptions } from './ops/optim.js';

// ---- ops: Transformer (nn ops) ----
export {
  linear,
  linearBackward,
  embedding,
  embeddingBackward,
  layerNorm,
  layerNormBackward,
  attention,
  attentionBackward,
  crossEntropy,
  crossEntropyBackward,
  dropout,
  sumSquares,
  scaleInPlace,
  clipGradNorm as clipGradNormTensors,
  type AttentionDims,
  type AttentionSaved,
  type LayerNormSaved,
} from './ops/nn.js';

// ---- autograd, layers, optimisers, data, training ----
export { Variable, noGrad, isGradEnabled, needsGrad, record, record1, releaseGraph, type BackwardFn, type TapeNode } from './autograd.js';
export { Module, Parameter, type ParamOptions } from './nn/module.js';
export * as F from './nn/functional.js';
export { cosineLr, type ScheduleOptions } from './optim/schedule.js';
export {
  loadCorpus,
  Batcher,
  evalBatches,
  splitBytes,
  enwik8Split,
  encodeText,
  decodeBytes,
  DataError,
  BYTE_VOCAB,
  type Corpus,
  type Batch,
  type BatchOptions,
} from './data/corpus.js';
export { saveSafetensors, loadSafetensors, encodeSafetensors, decodeSafetensors, type SafetensorsFile } from './train/safetensors.js';
export { JsonlLog, Progress } from './train/log.js';
export {
  FFN_KINDS,
  ConfigError,
  layerFfn,
  isMoe,
  validateModelConfig,
  validateFfnConfig,
  ffnParams,
  modelParams,
  ffnFlopsPerToken,
  modelFlopsPerToken,
  parameterEqual,
  type FfnKind,
  type DenseFfnConfig,
  type TopKFfnConfig,
  type MoeFfnConfig,
  type PkmFfnConfig,
  type PeerFfnConfig,
  type FfnConfig,
  type ModelConfig,
  type SparseOptions,
  type ParameterEqualPair,
} from './nn/config.js';
export { Rng } from './data/random.js';
export { type InitOptions } from './nn/init.js';
export { Linear, Embedding, LayerNorm, CausalSelfAttention, DenseFFN, TopKFFN } from './nn/layers.js';
export { SigmaMoE, SoftmaxMoE, MoEBase, Router, type FfnAux, type FfnContext, type MoeOptions } from './nn/moe.js';
export { ProductKeyMemory, PEER, type PkmOptions } from './nn/pkm.js';
export { TransformerLM, Block, buildFfn, type ForwardOptions, type ForwardResult } from './nn/transformer.js';
export { AdamW, type AdamWOptions } from './optim/adamw.js';
export { clipGradNorm } from './optim/clip.js';
export {
  Trainer,
  generateText,
  validateTrainConfig,
  resolveTrainConfig,
  type TrainConfig,
  type StepResult,
  type EvalResult,
  type LayerUsage,
} from './train/trainer.js';
export { AsyncTrainer } from './train/async.js';
export { runCompare, compareConfigs, PRESETS, DEFAULT_KINDS, type CompareRow, type CompareOptions } from './train/compare.js';
export { sampleLogits, type SampleOptions } from './train/sample.js';
export { usageStats, UsageCounter, type UsageStats } from './train/usage.js';
