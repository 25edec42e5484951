/**
 * Model configuration: validation (every error is raised before any training starts), parameter counts
 * in closed form, and the σ-MoE paper's parameter-equal protocol (methods.md §1.11): a sparse model and a
 * dense twin with the same total parameter count, the dense d_ff enlarged to cover the selector.
 *
 * Shapes: D model width, H heads, F dense width, E experts, K experts per token, G expert width,
 * n sub-keys per half (N = n² memory slots / PEER experts), V vocabulary (256 bytes).
 */

/** The FFN kinds a TransformerLM layer can use. */
export const FFN_KINDS = ['dense', 'topk', 'sigma-moe', 'switch', 'softmax-moe', 'adaptive', 'pkm', 'peer'] as const;
export type FfnKind = (typeof FFN_KINDS)[number];

export interface DenseFfnConfig {
  kind: 'dense';
  /** Hidden width F. */
  dFF: number;
}
export interface TopKFfnConfig {
  kind: 'topk';
  dFF: number;
  /** Channels kept per token (K ≤ F). */
  k: number;
}
export interface MoeFfnConfig {
  /**
   * sigma-moe: σ gates, top-K, entropy regulariser and expert dropout (§1.3–1.7).
   * switch: softmax top-1 with capacity and the Switch load-balancing loss (§4).
   * softmax-moe: softmax top-K (no renormalisation unless `renormalize`), entropy regulariser.
   * adaptive: softmax top-1, plus top-2 when p1 − p2 ≤ threshold (§6).
   */
  kind: 'sigma-moe' | 'switch' | 'softmax-moe' | 'adaptive';
  experts: number;
  /** Experts per token K (switch: 1; adaptive: 2 = the maximum). */
  k: number;
  /** Expert width G. */
  expertSize: number;
  /** Entropy regulariser weight γ (sigma-moe, softmax-moe). */
  gamma?: number;
  /** Expert dropout δ (sigma-moe). */
  expertDropout?: number;
  /** Switch capacity factor (tokens per expert = ⌈cf·T/E⌉); ≤ 0 for dropless. */
  capacityFactor?: number;
  /** Switch load-balancing loss weight α. */
  balance?: number;
  /** Adaptive gating threshold T. */
  threshold?: number;
  /** softmax-moe: renormalise the K gates to sum to 1. */
  renormalize?: boolean;
}
export interface PkmFfnConfig {
  kind: 'pkm';
  /** 'csordas': ReLU weights, no query projection (x itself is the query), per-head keys (§1.10).
   *  'lample': a query projection, softmax per head (§2). */
  variant?: 'csordas' | 'lample';
  heads: number;
  /** Sub-keys per half n (N = n² value rows). */
  subKeys: number;
  /** Slots kept per head k. */
  k: number;
  /** Query width Dk (lample; csordas uses D). */
  queryDim?: number;
  /** Learning rate of the value table (sparse AdamW); defaults to the model's. */
  valueLr?: number;
}
export interface PeerFfnConfig {
  kind: 'peer';
  heads: number;
  /** Sub-keys per half n (N = n² singleton experts). */
  subKeys: number;
  k: number;
  queryDim?: number;
  valueLr?: number;
}
export type FfnConfig = DenseFfnConfig | TopKFfnConfig | MoeFfnConfig | PkmFfnConfig | PeerFfnConfig;

export interface ModelConfig {
  /** Vocabulary V (256 for bytes). */
  vocab: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  /** Context length S. */
  context: number;
  /** Residual dropout. */
  dropout?: number;
  /** The FFN of every layer, or one per layer. */
  ffn: FfnConfig | FfnConfig[];
  /** One router (selector) shared by every MoE layer (Omni-router, methods.md §7). */
  sharedRouter?: boolean;
}

import { isObject, showValue } from '../errors.js';

/** A configuration problem, raised before any tensor is allocated. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** `v` as a positive integer, or a ConfigError naming `what` (also used by the layers for their dimensions). */
export function posInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new ConfigError(`${what} must be a positive integer, got ${showValue(v)}`);
  return v;
}
function frac(v: unknown, what: string, lo = 0, hi = 1): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !(v >= lo && v < hi)) throw new ConfigError(`${what} must be in [${lo}, ${hi}), got ${showValue(v)}`);
}
function nonneg(v: unknown, what: string): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) throw new ConfigError(`${what} must be a finite number ≥ 0, got ${showValue(v)}`);
}

/** The FFN config of layer l (0 ≤ l < nLayers) of a model config: its own entry of a per-layer list, or the one for all. */
export function layerFfn(cfg: ModelConfig, l: number): FfnConfig {
  if (!cfg || typeof cfg !== 'object') throw new ConfigError(`layerFfn: cfg must be a model config, got ${showValue(cfg)}`);
  const layers = Array.isArray(cfg.ffn) ? cfg.ffn.length : cfg.nLayers;
  if (typeof l !== 'number' || !Number.isInteger(l) || l < 0 || !(l < layers))
    throw new ConfigError(`layerFfn: l must be an integer in [0, ${Array.isArray(cfg.ffn) ? `ffn.length=${layers}` : `nLayers=${layers}`}), got ${showValue(l)}`);
  return Array.isArray(cfg.ffn) ? cfg.ffn[l] : cfg.ffn;
}

/** Whether f is one of the four MoE kinds (sigma-moe, switch, softmax-moe, adaptive). */
export function isMoe(f: FfnConfig): f is MoeFfnConfig {
  if (!f || typeof f !== 'object') throw new ConfigError(`isMoe: f must be an FFN config, got ${showValue(f)}`);
  return f.kind === 'sigma-moe' || f.kind === 'switch' || f.kind === 'softmax-moe' || f.kind === 'adaptive';
}

/**
 * Checks a model configuration; throws ConfigError naming the field, the expected and the actual value. `at` names
 * the config in the messages (e.g. `modelParams: cfg` gives `modelParams: cfg.dModel must be ...`); without it the
 * fields are named on their own (`dModel must be ...`).
 */
export function validateModelConfig(cfg: ModelConfig, at?: string): void {
  if (!isObject(cfg))
    throw new ConfigError(
      at === undefined ? `model config must be an object, got ${showValue(cfg)}` : `${at} must be an object (ModelConfig), got ${showValue(cfg)}`,
    );
  const p = at === undefined ? '' : `${at}.`;
  posInt(cfg.vocab, `${p}vocab`);
  posInt(cfg.dModel, `${p}dModel`);
  posInt(cfg.nLayers, `${p}nLayers`);
  posInt(cfg.nHeads, `${p}nHeads`);
  posInt(cfg.context, `${p}context`);
  frac(cfg.dropout, `${p}dropout`);
  if (cfg.dModel % cfg.nHeads !== 0)
    throw new ConfigError(`${p}dModel must be divisible by nHeads: dModel=${cfg.dModel}, nHeads=${cfg.nHeads}`);
  if ((cfg.dModel / cfg.nHeads) % 2 !== 0)
    throw new ConfigError(`${at === undefined ? '' : `${at}: `}the head width dModel/nHeads must be even for rotary embeddings, got ${cfg.dModel / cfg.nHeads}`);
  if (Array.isArray(cfg.ffn) && cfg.ffn.length !== cfg.nLayers)
    throw new ConfigError(`${p}ffn has ${cfg.ffn.length} entries, expected one per layer (nLayers=${cfg.nLayers})`);
  let moeExperts = -1;
  for (let l = 0; l < cfg.nLayers; l++) {
    const f = layerFfn(cfg, l);
    const fat = Array.isArray(cfg.ffn) ? `${p}ffn[${l}]` : `${p}ffn`;
    validateFfnConfig(cfg.dModel, f, fat);
    if (cfg.sharedRouter && isMoe(f)) {
      if (moeExperts >= 0 && moeExperts !== f.experts)
        throw new ConfigError(`${p}sharedRouter needs the same number of experts in every MoE layer, got ${moeExperts} and ${f.experts}`);
      moeExperts = f.experts;
    }
  }
}

/**
 * Checks one FFN configuration for model width D; throws ConfigError naming the field (prefixed by `at`), the
 * expected and the actual value. The FFN layers check their config with it when constructed on their own.
 */
export function validateFfnConfig(D: number, f: FfnConfig, at = 'ffn'): void {
  posInt(D, `${at}: the model width D`);
  if (!f || typeof f !== 'object') throw new ConfigError(`${at} must be an object, got ${String(f)}`);
  if (!(FFN_KINDS as readonly string[]).includes(f.kind))
    throw new ConfigError(`${at}.kind: unknown FFN kind '${String((f as { kind: unknown }).kind)}', expected one of ${FFN_KINDS.join(', ')}`);
  switch (f.kind) {
    case 'dense':
      posInt(f.dFF, `${at}.dFF`);
      break;
    case 'topk':
      posInt(f.dFF, `${at}.dFF`);
      posInt(f.k, `${at}.k`);
      if (f.k > f.dFF) throw new ConfigError(`${at}.k must be in [1, dFF=${f.dFF}], got ${f.k}`);
      break;
    case 'sigma-moe':
    case 'switch':
    case 'softmax-moe':
    case 'adaptive': {
      const E = posInt(f.experts, `${at}.experts`);
      posInt(f.k, `${at}.k`);
      posInt(f.expertSize, `${at}.expertSize`);
      if (f.k > E) throw new ConfigError(`${at}.k must be in [1, experts=${E}], got ${f.k}`);
      if (f.kind === 'switch' && f.k !== 1) throw new ConfigError(`${at}.k must be 1 for switch, got ${f.k}`);
      if (f.kind === 'adaptive' && f.k !== 2) throw new ConfigError(`${at}.k must be 2 for adaptive gating (top-1 or top-2), got ${f.k}`);
      nonneg(f.gamma, `${at}.gamma`);
      frac(f.expertDropout, `${at}.expertDropout`);
      nonneg(f.balance, `${at}.balance`);
      frac(f.threshold, `${at}.threshold`, 0, 1.0000001);
      if (f.capacityFactor !== undefined && (typeof f.capacityFactor !== 'number' || !Number.isFinite(f.capacityFactor)))
        throw new ConfigError(`${at}.capacityFactor must be a number, got ${String(f.capacityFactor)}`);
      break;
    }
    case 'pkm':
    case 'peer': {
      posInt(f.heads, `${at}.heads`);
      const n = posInt(f.subKeys, `${at}.subKeys`);
      posInt(f.k, `${at}.k`);
      if (f.k > n) throw new ConfigError(`${at}.k must be in [1, subKeys=${n}], got ${f.k}`);
      if (f.kind === 'pkm' && f.variant !== undefined && f.variant !== 'csordas' && f.variant !== 'lample')
        throw new ConfigError(`${at}.variant must be 'csordas' or 'lample', got '${String(f.variant)}'`);
      const dk = f.kind === 'pkm' && (f.variant ?? 'csordas') === 'csordas' ? D : (f.queryDim ?? D);
      posInt(dk, `${at}.queryDim`);
      if (dk % 2 !== 0) throw new ConfigError(`${at}: the query width must be even (two halves), got ${dk}`);
      nonneg(f.valueLr, `${at}.valueLr`);
      break;
    }
  }
}

// ---- parameter counts ------------------------------------------------------------------------------------

/** Parameters of one FFN block of width D (closed form; the layers allocate exactly these). */
export function ffnParams(D: number, f: FfnConfig): number {
  validateFfnConfig(D, f, 'ffnParams: f');
  return ffnParamsOf(D, f);
}

/** ffnParams of a config already checked (the model-level counts and the parameter-equal search). */
function ffnParamsOf(D: number, f: FfnConfig): number {
  switch (f.kind) {
    case 'dense':
    case 'topk':
      return 2 * D * f.dFF + f.dFF + D; // W1, W2 and biases, as in the paper's dense baseline
    case 'sigma-moe':
    case 'switch':
    case 'softmax-moe':
    case 'adaptive':
      return 2 * f.experts * D * f.expertSize + f.experts * D; // experts + selector W_S [E, D], no biases
    case 'pkm': {
      const n = f.subKeys;
      if ((f.variant ?? 'csordas') === 'csordas') return f.heads * 2 * n * (D / 2) + n * n * D; // keys + values
      const dk = f.queryDim ?? D;
      return D * f.heads * dk + f.heads * dk + f.heads * 2 * n * (dk / 2) + n * n * D; // query proj + keys + values
    }
    case 'peer': {
      const n = f.subKeys;
      const dk = f.queryDim ?? D;
      return D * f.heads * dk + 2 * n * (dk / 2) + 2 * n * n * D; // queries + shared keys + U, V
    }
  }
}

/** Parameters of a whole TransformerLM (embedding, attention, norms, FFNs, output head). */
export function modelParams(cfg: ModelConfig): number {
  validateModelConfig(cfg, 'modelParams: cfg');
  return modelParamsOf(cfg);
}

function modelParamsOf(cfg: ModelConfig): number {
  const D = cfg.dModel;
  let n = cfg.vocab * D + cfg.vocab * D + cfg.vocab + 2 * D; // embedding, head W [V, D] + bias, final norm
  for (let l = 0; l < cfg.nLayers; l++) {
    n += 4 * D * D + 4 * D; // Wqkv [3D, D] + Wo [D, D], two LayerNorms
    const f = layerFfn(cfg, l);
    n += ffnParamsOf(D, f);
    if (cfg.sharedRouter && isMoe(f)) n -= f.experts * D; // counted once below
  }
  if (cfg.sharedRouter) {
    const m = (Array.isArray(cfg.ffn) ? cfg.ffn : [cfg.ffn]).find(isMoe);
    if (m) n += m.experts * D;
  }
  return n;
}

/** FLOPs of one FFN block per token, forward (multiply-adds × 2), selector and retrieval included. */
export function ffnFlopsPerToken(D: number, f: FfnConfig): number {
  validateFfnConfig(D, f, 'ffnFlopsPerToken: f');
  return ffnFlopsOf(D, f);
}

function ffnFlopsOf(D: number, f: FfnConfig): number {
  switch (f.kind) {
    case 'dense':
      return 4 * D * f.dFF;
    case 'topk':
      return 2 * D * f.dFF + 2 * D * f.k;
    case 'sigma-moe':
    case 'switch':
    case 'softmax-moe':
    case 'adaptive':
      // adaptive uses 1 or 2 experts; count the maximum
      return 2 * D * f.experts + 4 * D * f.k * f.expertSize;
    case 'pkm': {
      const dk = (f.variant ?? 'csordas') === 'csordas' ? D : (f.queryDim ?? D);
      const proj = (f.variant ?? 'csordas') === 'csordas' ? 0 : 2 * D * f.heads * dk;
      return proj + f.heads * (2 * dk * f.subKeys + 2 * f.k * f.k) + 2 * f.heads * f.k * D;
    }
    case 'peer': {
      const dk = f.queryDim ?? D;
      return 2 * D * f.heads * dk + f.heads * (2 * dk * f.subKeys + 2 * f.k * f.k) + 4 * f.heads * f.k * D;
    }
  }
}

/** Forward FLOPs per token of the whole model, and the FFN share of them. */
export function modelFlopsPerToken(cfg: ModelConfig): { total: number; ffn: number } {
  validateModelConfig(cfg, 'modelFlopsPerToken: cfg');
  const D = cfg.dModel;
  let ffn = 0;
  let rest = 2 * D * cfg.vocab; // output head
  for (let l = 0; l < cfg.nLayers; l++) {
    ffn += ffnFlopsOf(D, layerFfn(cfg, l));
    rest += 8 * D * D + 2 * cfg.context * D; // projections; causal attention averages S/2 keys (QKᵀ and AV)
  }
  return { total: ffn + rest, ffn };
}

// ---- parameter-equal protocol -----------------------------------------------------------------------------

export interface SparseOptions {
  /** Experts E (MoE kinds); default 16 (the paper's WT-S / enwik8 setting). */
  experts?: number;
  /** K; default E/4 for sigma-moe and softmax-moe. */
  k?: number;
  gamma?: number;
  expertDropout?: number;
  pkmHeads?: number;
  pkmK?: number;
  peerHeads?: number;
  peerK?: number;
}

export interface ParameterEqualPair {
  /** The dense twin: d_ff enlarged so its total matches the sparse model (the paper's protocol). */
  dense: ModelConfig;
  sparse: ModelConfig;
  denseParams: number;
  sparseParams: number;
}

const SPARSE_INTS = ['experts', 'k', 'pkmHeads', 'pkmK', 'peerHeads', 'peerK'] as const;

/** Checks SparseOptions given as `at` (e.g. `parameterEqual: opts`): an object whose fields have their types. */
export function checkSparseOptions(o: unknown, at: string): asserts o is SparseOptions {
  if (!isObject(o)) throw new ConfigError(`${at} must be an object (SparseOptions), got ${showValue(o)}`);
  const r = o as Record<string, unknown>;
  for (const f of SPARSE_INTS) if (r[f] !== undefined) posInt(r[f], `${at}.${f}`);
  nonneg(r.gamma, `${at}.gamma`);
  frac(r.expertDropout, `${at}.expertDropout`);
}

function withFfn(cfg: ModelConfig, ffn: FfnConfig): ModelConfig {
  return { ...cfg, ffn };
}

/**
 * The parameter-equal pair for a dense configuration (one FFN config for every layer) and a sparse kind.
 * MoE kinds keep the dense width as E·G (so the experts hold exactly the dense FFN's weights) and the dense
 * twin's d_ff grows by about E·D / (2D + 1) channels to cover the selector (rounded to the closest total); Switch
 * uses E/K experts of K·G (the paper's Switch baseline: K = 1 at the σ-MoE's FLOPs); PKM and PEER choose the number of sub-keys
 * n whose table is closest to the dense FFN's parameters, and the dense twin is then resized to match.
 *
 * @example
 * ```ts
 * const { dense, sparse } = parameterEqual({ vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128,
 *   ffn: { kind: 'dense', dFF: 512 } }, 'sigma-moe');
 * modelParams(dense) === modelParams(sparse);   // up to one channel of rounding
 * ```
 */
export function parameterEqual(denseCfg: ModelConfig, kind: FfnKind, opts: SparseOptions = {}): ParameterEqualPair {
  validateModelConfig(denseCfg);
  if (Array.isArray(denseCfg.ffn) || denseCfg.ffn.kind !== 'dense')
    throw new ConfigError(`parameterEqual: the base config must have one dense FFN for every layer, got ${JSON.stringify(denseCfg.ffn)}`);
  if (!(FFN_KINDS as readonly string[]).includes(kind))
    throw new ConfigError(`parameterEqual: unknown FFN kind '${String(kind)}', expected one of ${FFN_KINDS.join(', ')}`);
  checkSparseOptions(opts, 'parameterEqual: opts');
  const D = denseCfg.dModel;
  const F = denseCfg.ffn.dFF;
  let sparseFfn: FfnConfig;
  switch (kind) {
    case 'dense':
      sparseFfn = { kind: 'dense', dFF: F };
      break;
    case 'topk':
      sparseFfn = { kind: 'topk', dFF: F, k: opts.k ?? Math.max(1, Math.round(F / 4)) };
      break;
    case 'sigma-moe':
    case 'softmax-moe': {
      const E = opts.experts ?? 16;
      if (F % E !== 0) throw new ConfigError(`parameterEqual: dFF=${F} must be divisible by experts=${E}`);
      const k = opts.k ?? Math.max(1, E / 4);
      sparseFfn =
        kind === 'sigma-moe'
          ? { kind, experts: E, k, expertSize: F / E, gamma: opts.gamma ?? 0.001, expertDropout: opts.expertDropout ?? 0 }
          : { kind, experts: E, k, expertSize: F / E, gamma: opts.gamma ?? 0.001 };
      break;
    }
    case 'switch': {
      // The paper's Switch baseline at equal FLOPs: K times fewer experts, each K times wider (E/K experts of K·G).
      const Es = opts.experts ?? 16;
      const E = Math.max(1, Math.round(Es / (opts.k ?? Math.max(1, Es / 4))));
      if (F % E !== 0) throw new ConfigError(`parameterEqual: dFF=${F} must be divisible by the Switch expert count ${E}`);
      sparseFfn = { kind: 'switch', experts: E, k: 1, expertSize: F / E, capacityFactor: 1.25, balance: 0.01 };
      break;
    }
    case 'adaptive': {
      const E = opts.experts ?? 16;
      if (F % E !== 0) throw new ConfigError(`parameterEqual: dFF=${F} must be divisible by experts=${E}`);
      sparseFfn = { kind: 'adaptive', experts: E, k: 2, expertSize: F / E, threshold: 0.1, balance: 0.01 };
      break;
    }
    case 'pkm':
    case 'peer': {
      const heads = kind === 'pkm' ? (opts.pkmHeads ?? 4) : (opts.peerHeads ?? 4);
      const k = kind === 'pkm' ? (opts.pkmK ?? 8) : (opts.peerK ?? 8);
      const target = ffnParamsOf(D, denseCfg.ffn);
      let best: FfnConfig | undefined;
      for (let n = Math.max(k, 2); n <= 4096; n++) {
        // PEER's query width: D/2 per head (the query projection, H·Dk·D, would otherwise cost more than the experts).
        const f: FfnConfig =
          kind === 'pkm' ? { kind: 'pkm', variant: 'csordas', heads, subKeys: n, k } : { kind: 'peer', heads, subKeys: n, k, queryDim: Math.max(16, 2 * Math.floor(D / 4)) };
        if (!best || Math.abs(ffnParamsOf(D, f) - target) < Math.abs(ffnParamsOf(D, best) - target)) best = f;
        if (ffnParamsOf(D, f) > target) break;
      }
      sparseFfn = best!;
      break;
    }
  }
  const sparse = withFfn(denseCfg, sparseFfn);
  validateModelConfig(sparse);
  // Grow (or shrink) the dense twin's d_ff until its FFN matches the sparse FFN's parameters: 2D+1 per channel.
  const dFF = Math.max(1, Math.round((ffnParamsOf(D, sparseFfn) - D) / (2 * D + 1)));
  const dense = withFfn(denseCfg, { kind: 'dense', dFF });
  return { dense, sparse, denseParams: modelParamsOf(dense), sparseParams: modelParamsOf(sparse) };
}
