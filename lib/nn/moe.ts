/**
 * Mixture-of-Experts FFN layers over the native routing and grouped-GEMM ops.
 *
 * SigmaMoE (methods.md §1.3–1.7): z = x·W_Sᵀ [T, E]; s = σ(z) with expert dropout δ (training only, mask
 * before top-K, no rescaling); y = Σ_{e ∈ topK(s)} s_e · W2[e]ᵀ ReLU(W1[e]ᵀ x). Loss term γ·Σ_e p̄_e log p̄_e
 * with p̄ the batch mean of softmax(z) (the entropy regulariser, whole-batch marginal). Init as one dense
 * MLP of width E·G; selector rows renormalised.
 * SoftmaxMoE (§4, §6): softmax gates; `switch` = top-1 with capacity ⌈cf·T/E⌉ and the Switch loss
 * α·E·Σ_e f_e P_e, experts initialised the "standard" way (G-based) scaled by √0.1 (the paper's baseline);
 * `softmax-moe` = top-K with the entropy regulariser; `adaptive` = top-1, or top-2 when p1 − p2 ≤ threshold.
 * Shapes: x [T, D], W_S [E, D], W1 [E, D, G], W2 [E, G, D].
 */
import { Variable } from '../autograd.js';
import { Rng } from '../data/random.js';
import * as F from './functional.js';
import { Module, type Parameter } from './module.js';
import { normal, selectorInit } from './init.js';
import type { MoeFfnConfig } from './config.js';
import { UsageCounter } from '../train/usage.js';

/** What a sparse FFN returns besides its output: loss terms (Variables with their weights) for the model. */
export interface FfnAux {
  terms: { value: Variable; weight: number; name: string }[];
}

/** Per-call context from the model: the step's seed for stochastic parts (expert dropout). */
export interface FfnContext {
  seed: number;
}

/** A selector W_S [E, D] held in its own module so several MoE layers can share it (Omni-router). */
export class Router extends Module {
  readonly weight: Parameter;
  constructor(E: number, D: number, std: number, rng: Rng, renormalize: boolean) {
    super();
    this.weight = this.param('weight', selectorInit(E, D, std, rng, renormalize));
  }
}

export class MoEBase extends Module {
  readonly router: Router;
  readonly w1: Parameter;
  readonly w2: Parameter;
  readonly usage: UsageCounter;
  /** Slots dropped by capacity in the last forward (Switch). */
  lastDropped = 0;
  constructor(
    readonly dModel: number,
    readonly cfg: MoeFfnConfig,
    opts: { c: number; rng: Rng; router?: Router; expertStd?: [number, number]; routerStd?: number; renormalize?: boolean },
  ) {
    super();
    const { experts: E, expertSize: G } = cfg;
    const D = dModel;
    this.router = this.child('router', opts.router ?? new Router(E, D, opts.routerStd ?? opts.c / Math.sqrt(D), opts.rng, opts.renormalize ?? true));
    const [s1, s2] = opts.expertStd ?? [opts.c / Math.sqrt(D), opts.c / Math.sqrt(E * G)];
    this.w1 = this.param('w1', normal([E, D, G], s1, opts.rng));
    this.w2 = this.param('w2', normal([E, G, D], s2, opts.rng));
    this.usage = new UsageCounter(E);
  }

  protected routeOptions(T: number, ctx: FfnContext): F.RouteOptions {
    const c = this.cfg;
    switch (c.kind) {
      case 'sigma-moe':
        return { E: c.experts, k: c.k, gate: 'sigmoid', select: 'topk', dropout: this.training ? (c.expertDropout ?? 0) : 0, seed: ctx.seed };
      case 'switch': {
        const cf = c.capacityFactor ?? 1.25;
        // Capacity applies in training; evaluation is dropless so valid numbers do not depend on batch composition.
        const capacity = this.training && cf > 0 ? Math.ceil((cf * T) / c.experts) : -1;
        return { E: c.experts, k: 1, gate: 'softmax', select: 'topk', capacity };
      }
      case 'softmax-moe':
        return { E: c.experts, k: c.k, gate: c.renormalize ? 'softmax-renorm' : 'softmax', select: 'topk' };
      case 'adaptive':
        return { E: c.experts, k: 2, gate: 'softmax', select: 'adaptive', threshold: c.threshold ?? 0.1 };
    }
  }

  /** x [T, D] → y [T, D] and the auxiliary loss terms of this layer. */
  forward(x: Variable, ctx: FfnContext): { y: Variable; aux: FfnAux } {
    const T = x.shape[0];
    const z = F.linear(x, this.router.weight, null);
    const r = F.moe(x, z, this.w1, this.w2, this.routeOptions(T, ctx));
    this.usage.addCounts(r.counts);
    this.lastDropped = r.dropped;
    const y = r.y;
    const c = this.cfg;
    const terms: FfnAux['terms'] = [];
    const gamma = c.kind === 'sigma-moe' || c.kind === 'softmax-moe' ? (c.gamma ?? 0.001) : (c.gamma ?? 0);
    const alpha = c.kind === 'switch' || c.kind === 'adaptive' ? (c.balance ?? 0.01) : (c.balance ?? 0);
    if (gamma > 0) terms.push({ value: r.entropy, weight: gamma, name: 'entropy' });
    if (alpha > 0) terms.push({ value: r.balance, weight: alpha, name: 'balance' });
    return { y, aux: { terms } };
  }
}

/** σ-MoE (§1.3–1.7). */
export class SigmaMoE extends MoEBase {
  constructor(dModel: number, cfg: MoeFfnConfig, opts: { c: number; rng: Rng; router?: Router }) {
    super(dModel, cfg, { ...opts, renormalize: true });
  }
}

/** Switch top-1 with capacity, top-K softmax, or adaptive top-1/top-2 (§4, §6). */
export class SoftmaxMoE extends MoEBase {
  constructor(dModel: number, cfg: MoeFfnConfig, opts: { c: number; rng: Rng; router?: Router }) {
    const D = dModel;
    const G = cfg.expertSize;
    // Switch baseline (§1.8): "standard" G-based expert init, experts and selector std × √0.1, no row renorm.
    const sw = cfg.kind === 'switch';
    const k = sw ? Math.sqrt(0.1) : 1;
    super(dModel, cfg, {
      ...opts,
      renormalize: !sw,
      routerStd: (k * opts.c) / Math.sqrt(D),
      expertStd: sw ? [(k * opts.c) / Math.sqrt(D), (k * opts.c) / Math.sqrt(G)] : undefined,
    });
  }
}
