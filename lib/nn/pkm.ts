/**
 * Product-Key Memory and PEER layers over the native product-key top-k, embedding bag and PEER ops.
 *
 * ProductKeyMemory, 'csordas' variant (methods.md §1.10, the σ-MoE paper's improved PKM): the query is x
 * itself (no projection, no BatchNorm), each head h has its own sub-keys C_h, C'_h [n, D/2]; the top-k of
 * s1[a] + s2[b] over all N = n² slots are found exactly; weights = ReLU(scores) (non-competitive);
 * y = Σ_heads Σ_i w_i V[i], V [N, D]. 'lample' variant (§2): q = W_q x + b_q [H, Dk], softmax per head.
 * PEER (§3): q = W_q x [H, Dk], sub-keys shared by all heads, softmax over each head's k scores → g;
 * y = Σ_heads Σ_i g_i · ReLU(U[i]·x) · V[i] with singleton experts U, V [N, D]. Query BatchNorm (the
 * paper's default) is not used: BN statistics mix time positions in a causal LM (§2.3).
 * The value tables (PKM V, PEER U and V) are sparse parameters: their gradients are the touched rows only
 * and the sparse AdamW step updates those rows, optionally with their own learning rate.
 */
import { Tensor } from '../tensor.js';
import { Variable } from '../autograd.js';
import * as F from './functional.js';
import { Module, layerInput, type Parameter } from './module.js';
import { checkLayerOptions, initRng, normal, positive, truncNormal, uniform, type InitOptions } from './init.js';
import { ConfigError, validateFfnConfig, type PeerFfnConfig, type PkmFfnConfig } from './config.js';
import type { FfnAux } from './moe.js';
import { UsageCounter } from '../train/usage.js';

/** Options of the PKM and PEER layers: init scale c (§1.7; default 1) and the init source. */
export interface PkmOptions extends InitOptions {
  c?: number;
}

/** Checks a PKM / PEER layer's arguments before anything is allocated; returns c. */
function checkPkmArgs(layer: string, kind: 'pkm' | 'peer', dModel: number, cfg: PkmFfnConfig | PeerFfnConfig, opts: PkmOptions): number {
  if (cfg?.kind !== kind) throw new ConfigError(`${layer}: cfg.kind must be '${kind}', got '${String(cfg?.kind)}'`);
  validateFfnConfig(dModel, cfg, `${layer}: cfg`);
  checkLayerOptions(layer, opts);
  return positive(opts.c, 1, `${layer}: opts.c`);
}

/**
 * Product-Key Memory (§1.10 'csordas', §2 'lample'): H heads each pick k of N = subKeys² value rows by exact
 * product-key search and sum them weighted.
 *
 * @example
 * ```ts
 * const pkm = new ProductKeyMemory(128, { kind: 'pkm', heads: 4, subKeys: 64, k: 16 }, { seed: 1 });
 * const { y } = pkm.forward(x);            // x [T, 128] → y [T, 128]; values.sparseGrad after backward
 * ```
 */
export class ProductKeyMemory extends Module {
  readonly keys: Parameter;
  readonly values: Parameter;
  readonly query: Parameter | null;
  readonly queryBias: Parameter | null;
  readonly variant: 'csordas' | 'lample';
  readonly dk: number;
  readonly usage: UsageCounter;
  constructor(
    readonly dModel: number,
    readonly cfg: PkmFfnConfig,
    opts: PkmOptions = {},
  ) {
    super();
    const c = checkPkmArgs('ProductKeyMemory', 'pkm', dModel, cfg, opts);
    const rng = initRng('ProductKeyMemory', opts);
    const D = dModel;
    const { heads: H, subKeys: n } = cfg;
    this.variant = cfg.variant ?? 'csordas';
    this.dk = this.variant === 'csordas' ? D : (cfg.queryDim ?? D);
    const dk = this.dk;
    if (this.variant === 'lample') {
      this.query = this.param('query', truncNormal([H * dk, D], c / Math.sqrt(D), rng));
      this.queryBias = this.param('query_bias', Tensor.zeros([H * dk]), { noDecay: true });
      // Lample: uniform sub-keys ±1/√(Dk/2), values N(0, 1/D).
      this.keys = this.param('keys', uniform([H, 2, n, dk / 2], 1 / Math.sqrt(dk / 2), rng));
      this.values = this.param('values', normal([n * n, D], 1 / Math.sqrt(D), rng), { sparse: true, noDecay: true });
    } else {
      this.query = null;
      this.queryBias = null;
      // Csordás: sub-keys N(0, c²/D); values dense-like N(0, c²/N) (the "value-count" init of §1.10 (v)).
      this.keys = this.param('keys', normal([H, 2, n, dk / 2], c / Math.sqrt(D), rng));
      this.values = this.param('values', normal([n * n, D], c / Math.sqrt(n * n), rng), { sparse: true, noDecay: true });
    }
    this.usage = new UsageCounter(n * n);
  }

  /** x [T, dModel] → y [T, dModel] (aux has no loss terms). */
  forward(x: Variable | Tensor): { y: Variable; aux: FfnAux } {
    x = layerInput('ProductKeyMemory.forward', x, this.dModel);
    const { heads: H, k } = this.cfg;
    const q = this.query ? F.linear(x, this.query, this.queryBias) : x;
    const sel = F.pkmTopkSelect(q, this.keys, { H, Hq: this.query ? H : 1, Dk: this.dk, k, act: this.variant === 'csordas' ? 'relu' : 'softmax' });
    this.usage.addIds(sel.idx.data() as Int32Array);
    const y = F.embeddingBagSum(sel.idx, sel.weights, this.values);
    return { y, aux: { terms: [] } };
  }
}

/**
 * PEER (§3): H heads each pick k of N = subKeys² single-neuron experts (rows of U and V) by product-key search;
 * y = Σ g · ReLU(U[i]·x) · V[i].
 *
 * @example
 * ```ts
 * const peer = new PEER(128, { kind: 'peer', heads: 4, subKeys: 128, k: 8 }, { seed: 1 });
 * const { y } = peer.forward(x);           // x [T, 128] → y [T, 128]
 * ```
 */
export class PEER extends Module {
  readonly query: Parameter;
  readonly keys: Parameter;
  readonly down: Parameter;
  readonly up: Parameter;
  readonly dk: number;
  readonly usage: UsageCounter;
  constructor(
    readonly dModel: number,
    readonly cfg: PeerFfnConfig,
    opts: PkmOptions = {},
  ) {
    super();
    const c = checkPkmArgs('PEER', 'peer', dModel, cfg, opts);
    const rng = initRng('PEER', opts);
    const D = dModel;
    const { heads: H, subKeys: n } = cfg;
    const dk = (this.dk = cfg.queryDim ?? D);
    const N = n * n;
    this.query = this.param('query', truncNormal([H * dk, D], c / Math.sqrt(D), rng));
    this.keys = this.param('keys', normal([1, 2, n, dk / 2], 1 / Math.sqrt(dk / 2), rng));
    // Singleton experts as rows of a width-N MLP: U like W1 (std c/√D), V like W2 (std c/√N).
    this.down = this.param('down', normal([N, D], c / Math.sqrt(D), rng), { sparse: true, noDecay: true });
    this.up = this.param('up', normal([N, D], c / Math.sqrt(N), rng), { sparse: true, noDecay: true });
    this.usage = new UsageCounter(N);
  }

  /** x [T, dModel] → y [T, dModel] (aux has no loss terms). */
  forward(x: Variable | Tensor): { y: Variable; aux: FfnAux } {
    x = layerInput('PEER.forward', x, this.dModel);
    const { heads: H, k } = this.cfg;
    const q = F.linear(x, this.query, null);
    const sel = F.pkmTopkSelect(q, this.keys, { H, Hq: H, Dk: this.dk, k, act: 'softmax' });
    this.usage.addIds(sel.idx.data() as Int32Array);
    const y = F.peer(x, sel.idx, sel.weights, this.down, this.up);
    return { y, aux: { terms: [] } };
  }
}
