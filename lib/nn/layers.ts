/**
 * Basic layers: Linear, Embedding, LayerNorm, CausalSelfAttention (fused QKV, rotary positions, causal
 * softmax attention), DenseFFN and TopKFFN (methods.md §1.2). Activations are [T, D] row-major with
 * T = B·S tokens; every layer is a thin owner of parameters over one or two coarse tape ops.
 */
import { Tensor } from '../tensor.js';
import { Variable } from '../autograd.js';
import { Rng } from '../data/random.js';
import * as F from './functional.js';
import { Module, type Parameter } from './module.js';
import { truncNormal, normal } from './init.js';

/** y = x·Wᵀ + b, W [Dout, Din]. Init: truncated normal, std = scale/√Din. */
export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: { bias?: boolean; std?: number; rng: Rng },
  ) {
    super();
    this.weight = this.param('weight', truncNormal([outFeatures, inFeatures], opts.std ?? 1 / Math.sqrt(inFeatures), opts.rng));
    this.bias = opts.bias === false ? null : this.param('bias', Tensor.zeros([outFeatures]), { noDecay: true });
  }
  forward(x: Variable): Variable {
    return F.linear(x, this.weight, this.bias);
  }
}

/** Rows of a table [V, D] by id. Init N(0, std²), std 1 by default (PyTorch's nn.Embedding). */
export class Embedding extends Module {
  readonly weight: Parameter;
  constructor(
    readonly num: number,
    readonly dim: number,
    opts: { std?: number; rng: Rng },
  ) {
    super();
    this.weight = this.param('weight', normal([num, dim], opts.std ?? 1, opts.rng));
  }
  /** ids [T] i32 → [T, D]. */
  forward(ids: Tensor): Variable {
    return F.embedding(this.weight, ids);
  }
}

export class LayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = this.param('weight', Tensor.full([dim], 1), { noDecay: true });
    this.bias = this.param('bias', Tensor.zeros([dim]), { noDecay: true });
  }
  forward(x: Variable): Variable {
    return F.layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/** Multi-head causal self-attention with rotary position embeddings (no learned positions). */
export class CausalSelfAttention extends Module {
  readonly qkv: Linear;
  readonly out: Linear;
  constructor(
    readonly dModel: number,
    readonly nHeads: number,
    opts: { std: number; rng: Rng },
  ) {
    super();
    this.qkv = this.child('qkv', new Linear(dModel, 3 * dModel, { bias: true, std: opts.std, rng: opts.rng }));
    this.out = this.child('out', new Linear(dModel, dModel, { bias: true, std: opts.std, rng: opts.rng }));
  }
  /** x [B·S, D] → [B·S, D]. */
  forward(x: Variable, B: number, S: number): Variable {
    const a = F.causalAttention(this.qkv.forward(x), { B, S, H: this.nHeads });
    return this.out.forward(a);
  }
}

/** y = W2·act(W1·x + b1) + b2 with W1 [D, F], W2 [F, D] (the dense baseline). */
export class DenseFFN extends Module {
  readonly w1: Parameter;
  readonly b1: Parameter;
  readonly w2: Parameter;
  readonly b2: Parameter;
  /** Channels kept per token (0 = all): the Top-K activation of §1.2. */
  protected topk = 0;
  constructor(
    readonly dModel: number,
    readonly dFF: number,
    opts: { c: number; rng: Rng },
  ) {
    super();
    // §1.7: std c/√fan_in for both maps.
    this.w1 = this.param('w1', truncNormal([dModel, dFF], opts.c / Math.sqrt(dModel), opts.rng));
    this.b1 = this.param('b1', Tensor.zeros([dFF]), { noDecay: true });
    this.w2 = this.param('w2', truncNormal([dFF, dModel], opts.c / Math.sqrt(dFF), opts.rng));
    this.b2 = this.param('b2', Tensor.zeros([dModel]), { noDecay: true });
  }
  forward(x: Variable): Variable {
    return F.ffn(x, this.w1, this.b1, this.w2, this.b2, { topk: this.topk });
  }
}

/**
 * Top-K activation FFN (§1.2): the dense FFN with only the K largest post-ReLU channels of each token kept
 * (the mask is a constant in backward). With K = F it equals DenseFFN.
 */
export class TopKFFN extends DenseFFN {
  constructor(dModel: number, dFF: number, k: number, opts: { c: number; rng: Rng }) {
    super(dModel, dFF, opts);
    this.topk = k;
  }
}
