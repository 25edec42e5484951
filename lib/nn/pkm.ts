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
import { Rng } from '../data/random.js';
import * as F from './functional.js';
import { Module, type Parameter } from './module.js';
import { normal, truncNormal, uniform } from './init.js';
import type { PeerFfnConfig, PkmFfnConfig } from './config.js';
import type { FfnAux } from './moe.js';
import { UsageCounter } from '../train/usage.js';

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
    opts: { c: number; rng: Rng },
  ) {
    super();
    const D = dModel;
    const { heads: H, subKeys: n } = cfg;
    this.variant = cfg.variant ?? 'csordas';
    this.dk = this.variant === 'csordas' ? D : (cfg.queryDim ?? D);
    const dk = this.dk;
    if (this.variant === 'lample') {
      this.query = this.param('query', truncNormal([H * dk, D], opts.c / Math.sqrt(D), opts.rng));
      this.queryBias = this.param('query_bias', Tensor.zeros([H * dk]), { noDecay: true });
      // Lample: uniform sub-keys ±1/√(Dk/2), values N(0, 1/D).
      this.keys = this.param('keys', uniform([H, 2, n, dk / 2], 1 / Math.sqrt(dk / 2), opts.rng));
      this.values = this.param('values', normal([n * n, D], 1 / Math.sqrt(D), opts.rng), { sparse: true, noDecay: true });
    } else {
      this.query = null;
      this.queryBias = null;
      // Csordás: sub-keys N(0, c²/D); values dense-like N(0, c²/N) (the "value-count" init of §1.10 (v)).
      this.keys = this.param('keys', normal([H, 2, n, dk / 2], opts.c / Math.sqrt(D), opts.rng));
      this.values = this.param('values', normal([n * n, D], opts.c / Math.sqrt(n * n), opts.rng), { sparse: true, noDecay: true });
    }
    this.usage = new UsageCounter(n * n);
  }

  forward(x: Variable): { y: Variable; aux: FfnAux } {
    const { heads: H, k } = this.cfg;
    const q = this.query ? F.linear(x, this.query, this.queryBias) : x;
    const sel = F.pkmTopkSelect(q, this.keys, { H, Hq: this.query ? H : 1, Dk: this.dk, k, act: this.variant === 'csordas' ? 'relu' : 'softmax' });
    this.usage.addIds(sel.idx.data() as Int32Array);
    const y = F.embeddingBagSum(sel.idx, sel.weights, this.values);
    return { y, aux: { terms: [] } };
  }
}

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
    opts: { c: number; rng: Rng },
  ) {
    super();
    const D = dModel;
    const { heads: H, subKeys: n } = cfg;
    const dk = (this.dk = cfg.queryDim ?? D);
    const N = n * n;
    this.query = this.param('query', truncNormal([H * dk, D], opts.c / Math.sqrt(D), opts.rng));
    this.keys = this.param('keys', normal([1, 2, n, dk / 2], 1 / Math.sqrt(dk / 2), opts.rng));
    // Singleton experts as rows of a width-N MLP: U like W1 (std c/√D), V like W2 (std c/√N).
    this.down = this.param('down', normal([N, D], opts.c / Math.sqrt(D), opts.rng), { sparse: true, noDecay: true });
    this.up = this.param('up', normal([N, D], opts.c / Math.sqrt(N), opts.rng), { sparse: true, noDecay: true });
    this.usage = new UsageCounter(N);
  }

  forward(x: Variable): { y: Variable; aux: FfnAux } {
    const { heads: H, k } = this.cfg;
    const q = F.linear(x, this.query, null);
    const sel = F.pkmTopkSelect(q, this.keys, { H, Hq: H, Dk: this.dk, k, act: 'softmax' });
    this.usage.addIds(sel.idx.data() as Int32Array);
    const y = F.peer(x, sel.idx, sel.weights, this.down, this.up);
    return { y, aux: { terms: [] } };
  }
}
