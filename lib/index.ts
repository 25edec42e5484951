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

// ---- ops: MoE ----

// ---- ops: PKM / PEER ----

// ---- ops: Transformer (nn ops) ----

// ---- autograd, layers, optimisers, data, training ----
