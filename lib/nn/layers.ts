/**
 * Basic layers: Linear, Embedding, LayerNorm, CausalSelfAttention (fused QKV, rotary positions, causal
 * softmax attention), DenseFFN and TopKFFN (methods.md §1.2). Activations are [T, D] row-major with
 * T = B·S tokens; every layer is a thin owner of parameters over one or two coarse tape ops.
 */
import { ShapeError } from '../errors.js';
import { Tensor } from '../tensor.js';
import { Variable } from '../autograd.js';
import { ConfigError, posInt } from './config.js';
import * as F from './functional.js';
import { Module, layerInput, type Parameter } from './module.js';
import { checkLayerOptions, initRng, normal, positive, truncNormal, type InitOptions } from './init.js';

/** y = x·Wᵀ + b, W [Dout, Din]. Init: truncated normal, std = 1/√Din unless `std` is given. */
export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: { bias?: boolean; std?: number } & InitOptions = {},
  ) {
    super();
    posInt(inFeatures, 'Linear: inFeatures');
    posInt(outFeatures, 'Linear: outFeatures');
    checkLayerOptions('Linear', opts);
    const std = positive(opts.std, 1 / Math.sqrt(inFeatures), 'Linear: opts.std');
    this.weight = this.param('weight', truncNormal([outFeatures, inFeatures], std, initRng('Linear', opts)));
    this.bias = opts.bias === false ? null : this.param('bias', Tensor.zeros([outFeatures]), { noDecay: true });
  }
  /** x [T, inFeatures] → [T, outFeatures]. */
  forward(x: Variable | Tensor): Variable {
    return F.linear(layerInput('Linear.forward', x, this.inFeatures), this.weight, this.bias);
  }
}

/** Rows of a table [V, D] by id. Init N(0, std²), std 1 by default (PyTorch's nn.Embedding). */
export class Embedding extends Module {
  readonly weight: Parameter;
  constructor(
    readonly num: number,
    readonly dim: number,
    opts: { std?: number } & InitOptions = {},
  ) {
    super();
    posInt(num, 'Embedding: num');
    posInt(dim, 'Embedding: dim');
    checkLayerOptions('Embedding', opts);
    this.weight = this.param('weight', normal([num, dim], positive(opts.std, 1, 'Embedding: opts.std'), initRng('Embedding', opts)));
  }
  /** ids [T] (an i32 Tensor or an Int32Array, each in [0, num)) → [T, D]. */
  forward(ids: Tensor | Int32Array): Variable {
    if (!(ids instanceof Int32Array)) return F.embedding(this.weight, ids);
    const t = Tensor.fromHost(ids, [ids.length]);
    try {
      return F.embedding(this.weight, t);
    } finally {
      t.dispose();
    }
  }
}

/** Normalises each row of x [T, dim] to zero mean and unit variance, then scales by weight and adds bias. */
export class LayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    posInt(dim, 'LayerNorm: dim');
    positive(eps, 1e-5, 'LayerNorm: eps');
    this.weight = this.param('weight', Tensor.full([dim], 1), { noDecay: true });
    this.bias = this.param('bias', Tensor.zeros([dim]), { noDecay: true });
  }
  forward(x: Variable | Tensor): Variable {
    return F.layerNorm(layerInput('LayerNorm.forward', x, this.dim), this.weight, this.bias, this.eps);
  }
}

/**
 * Multi-head causal self-attention with rotary position embeddings (no learned positions). Init: both maps
 * truncated normal with std 1/√dModel unless `std` is given.
 */
export class CausalSelfAttention extends Module {
  readonly qkv: Linear;
  readonly out: Linear;
  constructor(
    readonly dModel: number,
    readonly nHeads: number,
    opts: { std?: number } & InitOptions = {},
  ) {
    super();
    posInt(dModel, 'CausalSelfAttention: dModel');
    posInt(nHeads, 'CausalSelfAttention: nHeads');
    if (dModel % nHeads !== 0 || (dModel / nHeads) % 2 !== 0)
      throw new ConfigError(`CausalSelfAttention: dModel / nHeads must be an even integer (rotary embeddings), got ${dModel} / ${nHeads}`);
    checkLayerOptions('CausalSelfAttention', opts);
    const rng = initRng('CausalSelfAttention', opts);
    const std = positive(opts.std, 1 / Math.sqrt(dModel), 'CausalSelfAttention: opts.std');
    this.qkv = this.child('qkv', new Linear(dModel, 3 * dModel, { bias: true, std, rng }));
    this.out = this.child('out', new Linear(dModel, dModel, { bias: true, std, rng }));
  }
  /** x [B·S, D], B sequences of S tokens each (row b·S + s) → [B·S, D]. */
  forward(x: Variable | Tensor, B: number, S: number): Variable {
    const op = 'CausalSelfAttention.forward';
    const v = layerInput(op, x, this.dModel);
    posInt(B, `${op}: B`);
    posInt(S, `${op}: S`);
    if (B * S !== v.shape[0]) throw new ShapeError(`${op}: x has ${v.shape[0]} rows, expected B·S = ${B}·${S} = ${B * S}`);
    const a = F.causalAttention(this.qkv.forward(v), { B, S, H: this.nHeads });
    return this.out.forward(a);
  }
}

/**
 * y = W2·act(W1·x + b1) + b2 with W1 [D, F], W2 [F, D] (the dense baseline). Init (§1.7): truncated normal with
 * std c/√fan_in for both maps; c = √(2/L) in an L-layer model, 1 by default.
 */
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
    opts: { c?: number } & InitOptions = {},
  ) {
    super();
    const name = this.constructor.name;
    posInt(dModel, `${name}: dModel`);
    posInt(dFF, `${name}: dFF`);
    checkLayerOptions(name, opts);
    const c = positive(opts.c, 1, `${name}: opts.c`);
    const rng = initRng(name, opts);
    this.w1 = this.param('w1', truncNormal([dModel, dFF], c / Math.sqrt(dModel), rng));
    this.b1 = this.param('b1', Tensor.zeros([dFF]), { noDecay: true });
    this.w2 = this.param('w2', truncNormal([dFF, dModel], c / Math.sqrt(dFF), rng));
    this.b2 = this.param('b2', Tensor.zeros([dModel]), { noDecay: true });
  }
  /** x [T, dModel] → [T, dModel]. */
  forward(x: Variable | Tensor): Variable {
    const v = layerInput(`${this.constructor.name}.forward`, x, this.dModel);
    return F.ffn(v, this.w1, this.b1, this.w2, this.b2, { topk: this.topk });
  }
}

/**
 * Top-K activation FFN (§1.2): the dense FFN with only the K largest post-ReLU channels of each token kept
 * (the mask is a constant in backward). With K = F it equals DenseFFN.
 */
export class TopKFFN extends DenseFFN {
  constructor(dModel: number, dFF: number, k: number, opts: { c?: number } & InitOptions = {}) {
    posInt(k, 'TopKFFN: k');
    if (k > dFF) throw new ConfigError(`TopKFFN: k must be in [1, dFF=${dFF}], got ${k}`);
    super(dModel, dFF, opts);
    this.topk = k;
  }
}
