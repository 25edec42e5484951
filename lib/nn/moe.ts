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
import type { Tensor } from '../tensor.js';
import { Variable } from '../autograd.js';
import * as F from './functional.js';
import { Module, layerInput, type Parameter } from './module.js';
import { checkLayerOptions, initRng, normal, positive, selectorInit, type InitOptions } from './init.js';
import { ConfigError, isMoe, posInt, validateFfnConfig, type FfnConfig, type MoeFfnConfig } from './config.js';
import { UsageCounter } from '../train/usage.js';
import { showValue } from '../errors.js';

/** What a sparse FFN returns besides its output: loss terms (Variables with their weights) for the model. */
export interface FfnAux {
  terms: { value: Variable; weight: number; name: string }[];
}

/**
 * Per-call context from the model: the step's seed for stochastic parts (expert dropout). Without one, a layer
 * seeds call n with n (0, 1, 2, ... per layer), so repeated calls draw different masks, reproducibly.
 */
export interface FfnContext {
  seed: number;
}

/** Options of the MoE layers: init scale c (std c/√fan_in, §1.7; default 1), a shared router, the init source. */
export interface MoeOptions extends InitOptions {
  c?: number;
  router?: Router;
}

/**
 * A selector W_S [E, D] held in its own module so several MoE layers can share it (Omni-router). Init N(0, std²)
 * (default std 1/√D), rows renormalised to equal norm unless `renormalize` is false (§1.7).
 */
export class Router extends Module {
  readonly weight: Parameter;
  constructor(
    readonly experts: number,
    readonly dModel: number,
    opts: { std?: number; renormalize?: boolean } & InitOptions = {},
  ) {
    super();
    posInt(experts, 'Router: experts');
    posInt(dModel, 'Router: dModel');
    checkLayerOptions('Router', opts);
    const std = positive(opts.std, 1 / Math.sqrt(dModel), 'Router: opts.std');
    this.weight = this.param('weight', selectorInit(experts, dModel, std, initRng('Router', opts), opts.renormalize ?? true));
  }
}

/**
 * An MoE FFN of any of the four MoE kinds: a router W_S [E, D], experts W1 [E, D, G] and W2 [E, G, D], routing
 * and regularisers by cfg.kind. SigmaMoE and SoftmaxMoE are this with their kinds' initialisations (§1.7, §1.8).
 */
export class MoEBase extends Module {
  readonly router: Router;
  readonly w1: Parameter;
  readonly w2: Parameter;
  readonly usage: UsageCounter;
  /** Slots dropped by capacity in the last forward (Switch). */
  lastDropped = 0;
  #calls = 0;
  constructor(
    readonly dModel: number,
    readonly cfg: MoeFfnConfig,
    opts: MoeOptions & { expertStd?: [number, number]; routerStd?: number; renormalize?: boolean } = {},
  ) {
    super();
    const name = this.constructor.name;
    validateFfnConfig(dModel, cfg, `${name}: cfg`);
    if (!isMoe(cfg)) throw new ConfigError(`${name}: cfg.kind must be 'sigma-moe', 'switch', 'softmax-moe' or 'adaptive', got '${(cfg as FfnConfig).kind}'`);
    checkLayerOptions(name, opts);
    const { experts: E, expertSize: G } = cfg;
    const D = dModel;
    const c = positive(opts.c, 1, `${name}: opts.c`);
    const rng = initRng(name, opts);
    if (opts.router !== undefined && !(opts.router instanceof Router && opts.router.experts === E && opts.router.dModel === D))
      throw new ConfigError(`${name}: opts.router must be a Router of ${E} experts × ${D}, got ${describeRouter(opts.router)}`);
    this.router = this.child('router', opts.router ?? new Router(E, D, { std: opts.routerStd ?? c / Math.sqrt(D), rng, renormalize: opts.renormalize ?? true }));
    const [s1, s2] = opts.expertStd ?? [c / Math.sqrt(D), c / Math.sqrt(E * G)];
    this.w1 = this.param('w1', normal([E, D, G], s1, rng));
    this.w2 = this.param('w2', normal([E, G, D], s2, rng));
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

  /**
   * x [T, D] → y [T, D] and the auxiliary loss terms of this layer (add Σ weight · value to the loss). `ctx` seeds
   * expert dropout (see FfnContext).
   */
  forward(x: Variable | Tensor, ctx?: FfnContext): { y: Variable; aux: FfnAux } {
    const op = `${this.constructor.name}.forward`;
    const v = layerInput(op, x, this.dModel);
    if (ctx !== undefined && (ctx === null || typeof ctx !== 'object'))
      throw new ConfigError(`${op}: ctx must be an object ({ seed }) or undefined, got ${showValue(ctx)}`);
    const seed = ctx === undefined ? this.#calls : ctx.seed;
    if (!Number.isSafeInteger(seed)) throw new ConfigError(`${op}: ctx.seed must be an integer, got ${String(seed)}`);
    this.#calls++;
    const T = v.shape[0];
    const z = F.linear(v, this.router.weight, null);
    const r = F.moe(v, z, this.w1, this.w2, this.routeOptions(T, { seed }));
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

function describeRouter(r: unknown): string {
  return r instanceof Router ? `a Router of ${r.experts} experts × ${r.dModel}` : String(r);
}

/**
 * σ-MoE (§1.3–1.7): sigmoid gates, top-K experts, entropy regulariser and expert dropout.
 *
 * @example
 * ```ts
 * const moe = new SigmaMoE(128, { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 }, { seed: 1 });
 * const { y, aux } = moe.forward(x);        // x [T, 128] → y [T, 128]; aux.terms: the entropy regulariser
 * ```
 */
export class SigmaMoE extends MoEBase {
  constructor(dModel: number, cfg: MoeFfnConfig, opts: MoeOptions = {}) {
    if (cfg?.kind !== 'sigma-moe') throw new ConfigError(`SigmaMoE: cfg.kind must be 'sigma-moe', got '${String(cfg?.kind)}'`);
    checkLayerOptions('SigmaMoE', opts);
    super(dModel, cfg, { ...opts, renormalize: true });
  }
}

/** Switch top-1 with capacity, top-K softmax, or adaptive top-1/top-2 (§4, §6). */
export class SoftmaxMoE extends MoEBase {
  constructor(dModel: number, cfg: MoeFfnConfig, opts: MoeOptions = {}) {
    if (cfg?.kind !== 'switch' && cfg?.kind !== 'softmax-moe' && cfg?.kind !== 'adaptive')
      throw new ConfigError(`SoftmaxMoE: cfg.kind must be 'switch', 'softmax-moe' or 'adaptive', got '${String(cfg?.kind)}'`);
    checkLayerOptions('SoftmaxMoE', opts);
    const D = dModel;
    const G = cfg.expertSize;
    const c = positive(opts.c, 1, 'SoftmaxMoE: opts.c');
    // Switch baseline (§1.8): "standard" G-based expert init, experts and selector std × √0.1, no row renorm.
    const sw = cfg.kind === 'switch';
    const k = sw ? Math.sqrt(0.1) : 1;
    super(dModel, cfg, {
      ...opts,
      renormalize: !sw,
      routerStd: (k * c) / Math.sqrt(D),
      expertStd: sw ? [(k * c) / Math.sqrt(D), (k * c) / Math.sqrt(G)] : undefined,
    });
  }
}
