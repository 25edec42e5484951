/**
 * TransformerLM: a pre-LN decoder-only byte model with a pluggable FFN per layer (methods.md §1.11).
 *   h = Embed(x)                                     x [B, S] byte ids → h [T = B·S, D]
 *   h ← h + Drop(Attn(LN1(h)))                        causal, rotary positions
 *   h ← h + Drop(FFN(LN2(h)))                         dense | topk | σ-MoE | Switch | softmax-MoE | adaptive | PKM | PEER
 *   logits = Head(LN_f(h)) [T, V];  loss = mean CE + Σ_layers weight·aux (entropy / balance terms)
 * Optionally one router (selector) is shared by every MoE layer. Init per §1.7 (c = √(2/L)).
 *
 * @example
 * ```ts
 * const lm = new TransformerLM({ vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128,
 *   ffn: { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 } }, { seed: 1 });
 * const { loss } = lm.forward(x, y, B, S, { step: 0 });
 * loss.backward();
 * ```
 */
import { ShapeError, checkInt, isObject, showValue } from '../errors.js';
import { Tensor, tidy } from '../tensor.js';
import { Variable, noGrad, scope } from '../autograd.js';
import { Rng, hash32 } from '../data/random.js';
import * as F from './functional.js';
import { Module } from './module.js';
import { CausalSelfAttention, DenseFFN, Embedding, LayerNorm, Linear, TopKFFN } from './layers.js';
import { MoEBase, Router, SigmaMoE, SoftmaxMoE, type FfnAux, type FfnContext, type MoeOptions } from './moe.js';
import { PEER, ProductKeyMemory } from './pkm.js';
import { type FfnConfig, type ModelConfig, ConfigError, isMoe, layerFfn, validateFfnConfig, validateModelConfig } from './config.js';
import type { UsageCounter } from '../train/usage.js';

export type FfnModule = DenseFFN | MoEBase | ProductKeyMemory | PEER;

/**
 * Builds the FFN module for model width D and config f (any kind; the model's layers are built with it). `opts`:
 * init scale c (default 1), a router shared by MoE layers, and the init source (rng or seed).
 */
export function buildFfn(D: number, f: FfnConfig, opts: MoeOptions = {}): FfnModule {
  validateFfnConfig(D, f, 'buildFfn: f');
  switch (f.kind) {
    case 'dense':
      return new DenseFFN(D, f.dFF, opts);
    case 'topk':
      return new TopKFFN(D, f.dFF, f.k, opts);
    case 'sigma-moe':
      return new SigmaMoE(D, f, opts);
    case 'switch':
    case 'softmax-moe':
    case 'adaptive':
      return new SoftmaxMoE(D, f, opts);
    case 'pkm':
      return new ProductKeyMemory(D, f, opts);
    case 'peer':
      return new PEER(D, f, opts);
  }
}

export class Block extends Module {
  readonly ln1: LayerNorm;
  readonly attn: CausalSelfAttention;
  readonly ln2: LayerNorm;
  readonly ffn: FfnModule;
  constructor(
    readonly cfg: ModelConfig,
    readonly index: number,
    rng: Rng,
    router?: Router,
  ) {
    super();
    validateModelConfig(cfg, 'Block: cfg');
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= cfg.nLayers)
      throw new ConfigError(`Block: index must be an integer in [0, nLayers=${cfg.nLayers}), got ${showValue(index)}`);
    if (!(rng instanceof Rng)) throw new ConfigError(`Block: rng must be an Rng, got ${showValue(rng)}`);
    if (router !== undefined && !(router instanceof Router)) throw new ConfigError(`Block: router must be a Router or undefined, got ${showValue(router)}`);
    const D = cfg.dModel;
    const c = Math.sqrt(2 / cfg.nLayers);
    this.ln1 = this.child('ln1', new LayerNorm(D));
    this.attn = this.child('attn', new CausalSelfAttention(D, cfg.nHeads, { std: c / Math.sqrt(D), rng }));
    this.ln2 = this.child('ln2', new LayerNorm(D));
    this.ffn = this.child('ffn', buildFfn(D, layerFfn(cfg, index), { c, rng, router }));
  }

  forward(h: Variable, B: number, S: number, seed: number, aux: FfnAux['terms']): Variable {
    const p = this.training ? (this.cfg.dropout ?? 0) : 0;
    h = scope('attention', () => {
      let a = this.attn.forward(this.ln1.forward(h), B, S);
      if (p > 0) a = F.dropout(a, p, hash32(seed, this.index, 1));
      return F.add(h, a);
    });
    const kind = layerFfn(this.cfg, this.index).kind;
    return scope(`ffn:${kind}`, () => {
      const x = this.ln2.forward(h);
      let y: Variable;
      if (this.ffn instanceof DenseFFN) y = this.ffn.forward(x);
      else {
        const ctx: FfnContext = { seed: hash32(seed, this.index, 3) };
        const r = this.ffn instanceof MoEBase ? this.ffn.forward(x, ctx) : this.ffn.forward(x);
        aux.push(...r.aux.terms);
        y = r.y;
      }
      if (p > 0) y = F.dropout(y, p, hash32(seed, this.index, 2));
      return F.add(h, y);
    });
  }
}

export interface ForwardOptions {
  /** Training step (seeds dropout and expert dropout: resumed runs draw the same masks). */
  step?: number;
  /** Keep the logits Variable in the result (generation, tests). */
  logits?: boolean;
}

export interface ForwardResult {
  /** Total loss (CE + weighted auxiliary terms), a scalar Variable. */
  loss: Variable;
  /** Mean cross-entropy in nats (a number). */
  ce: number;
  /** Weighted auxiliary loss (a number). */
  aux: number;
  logits?: Variable;
}

/** x [B, S] ids as an Int32Array, B and S positive integers. */
function checkIds(op: string, x: unknown, B: unknown, S: unknown): void {
  if (!(x instanceof Int32Array)) throw new TypeError(`${op}: x must be an Int32Array of token ids [B·S], got ${showValue(x)}`);
  checkInt(B, `${op}: B`, 1);
  checkInt(S, `${op}: S`, 1);
}

export class TransformerLM extends Module {
  readonly config: ModelConfig;
  readonly embed: Embedding;
  readonly blocks: Block[];
  readonly lnf: LayerNorm;
  readonly head: Linear;
  readonly router: Router | null;
  readonly seed: number;

  constructor(config: ModelConfig, opts: { seed?: number } = {}) {
    super();
    validateModelConfig(config);
    if (!isObject(opts))
      throw new ConfigError(`TransformerLM: opts must be an object ({ seed?: number }), got ${showValue(opts)}`);
    if (opts.seed !== undefined) checkInt(opts.seed, 'TransformerLM: opts.seed', -Infinity, ConfigError);
    this.config = config;
    this.seed = opts.seed ?? 0;
    const rng = new Rng(hash32(this.seed, 0x1417));
    const D = config.dModel;
    this.embed = this.child('embed', new Embedding(config.vocab, D, { rng }));
    let router: Router | null = null;
    if (config.sharedRouter) {
      const m = (Array.isArray(config.ffn) ? config.ffn : [config.ffn]).find(isMoe);
      if (m) router = this.child('router', new Router(m.experts, D, { std: Math.sqrt(2 / config.nLayers) / Math.sqrt(D), rng, renormalize: m.kind !== 'switch' }));
    }
    this.router = router;
    this.blocks = [];
    for (let l = 0; l < config.nLayers; l++) this.blocks.push(this.child(`blocks.${l}`, new Block(config, l, rng, router ?? undefined)));
    this.lnf = this.child('lnf', new LayerNorm(D));
    this.head = this.child('head', new Linear(D, config.vocab, { bias: true, std: 1 / Math.sqrt(D), rng }));
  }

  /**
   * x, y: [B, S] byte ids (Int32Array, row-major). Returns the loss Variable (on the tape when grad is
   * enabled) and its parts as numbers.
   */
  forward(x: Int32Array, y: Int32Array, B: number, S: number, opts: ForwardOptions = {}): ForwardResult {
    const op = 'TransformerLM.forward';
    checkIds(op, x, B, S);
    if (!(y instanceof Int32Array)) throw new TypeError(`${op}: y must be an Int32Array of target ids, got ${showValue(y)}`);
    if (y.length !== x.length) throw new ShapeError(`${op}: y must have B·S = ${x.length} ids like x, got ${y.length}`);
    if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object (ForwardOptions), got ${showValue(opts)}`);
    const step = opts.step === undefined ? 0 : checkInt(opts.step, `${op}: opts.step`, 0);
    this.#checkLength(x, B, S);
    const logits = this.#logits(x, B, S, step);
    const ce = scope('embed+head', () => {
      const targets = Tensor.fromHost(y, [B * S]);
      try {
        return F.crossEntropy(logits.v, targets);
      } finally {
        targets.dispose();
      }
    });
    const ceVal = ce.data.item();
    let loss = ce;
    let auxVal = 0;
    if (logits.aux.length) {
      loss = F.weightedSum([ce, ...logits.aux.map((t) => t.value)], [1, ...logits.aux.map((t) => t.weight)]);
      auxVal = loss.data.item() - ceVal;
    }
    return { loss, ce: ceVal, aux: auxVal, logits: opts.logits ? logits.v : undefined };
  }

  /** Logits [B·S, V] for ids x [B, S], and the auxiliary loss terms of the sparse layers. */
  logits(x: Int32Array, B: number, S: number, step = 0): { v: Variable; aux: FfnAux['terms'] } {
    checkIds('TransformerLM.logits', x, B, S);
    checkInt(step, 'TransformerLM.logits: step', 0);
    this.#checkLength(x, B, S);
    return this.#logits(x, B, S, step);
  }

  /** x holds B·S ids and S fits the context (after checkIds). */
  #checkLength(x: Int32Array, B: number, S: number): void {
    if (x.length !== B * S) throw new ConfigError(`TransformerLM: x has ${x.length} ids, expected B·S = ${B}·${S}`);
    if (S > this.config.context) throw new ConfigError(`TransformerLM: sequence length ${S} exceeds the context ${this.config.context}`);
  }

  /** logits() on checked arguments (forward checks its own first). */
  #logits(x: Int32Array, B: number, S: number, step: number): { v: Variable; aux: FfnAux['terms'] } {
    const seed = hash32(this.seed, step, 0x5eed);
    let h = scope('embed+head', () => this.embed.forward(x));
    const aux: FfnAux['terms'] = [];
    for (const b of this.blocks) h = b.forward(h, B, S, seed, aux);
    return { v: scope('embed+head', () => this.head.forward(this.lnf.forward(h))), aux };
  }

  /** The usage counters of the sparse layers, by layer index. */
  usageCounters(): { layer: number; kind: string; counter: UsageCounter }[] {
    const out: { layer: number; kind: string; counter: UsageCounter }[] = [];
    this.blocks.forEach((b, l) => {
      const f = b.ffn;
      if (!(f instanceof DenseFFN)) out.push({ layer: l, kind: layerFfn(this.config, l).kind, counter: f.usage });
    });
    return out;
  }

  resetUsage(): void {
    for (const u of this.usageCounters()) u.counter.reset();
  }

  /** Next-byte logits for one context (evaluation mode, no graph), as a Float32Array [V]. */
  nextLogits(ctx: Int32Array): Float32Array {
    if (!(ctx instanceof Int32Array) || ctx.length === 0)
      throw new TypeError(`TransformerLM.nextLogits: ctx must be a non-empty Int32Array of byte ids, got ${showValue(ctx)}`);
    const V = this.config.vocab;
    const S = ctx.length;
    let out = new Float32Array(V);
    noGrad(() =>
      tidy(() => {
        const { v } = this.logits(ctx, 1, S);
        out = (v.data.data() as Float32Array).slice((S - 1) * V, S * V);
        return null;
      }),
    );
    return out;
  }
}
