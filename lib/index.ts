/**
 * sparse-ffn: sparse feed-forward layers (σ-MoE, Switch/top-k MoE, Top-K, PKM, PEER) for Node.js.
 * @packageDocumentation
 */
export * from './errors.js';
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
