/**
 * AdamW over a model's parameters: dense parameters take the native dense step, sparse-row parameters
 * (PKM values, PEER expert tables) the native sparse step that touches only the rows the step read (lazy
 * moments with per-row step counters, like torch SparseAdam plus decoupled decay). Sparse parameters may have
 * their own learning rate (Lample et al. recommend a separate, larger one for the value table); it follows the
 * same schedule (scaled by lr_t / lr). Parameters marked noDecay (norms, biases, tables) get no weight decay.
 *
 * @example
 * ```ts
 * const opt = new AdamW(model.namedParameters(), { lr: 1e-3 });
 * loss.backward();
 * opt.step(cosineLr(step, { lr: 1e-3, total: 1000, warmup: 50 }));
 * model.zeroGrad();
 * ```
 */
import { isObject, showValue } from '../errors.js';
import { Tensor, keep } from '../tensor.js';
import { adamwStep, sparseAdamwStep } from '../ops/optim.js';
import { ConfigError } from '../nn/config.js';
import { Parameter } from '../nn/module.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay for parameters not marked noDecay. Default 0 (the σ-MoE paper's setting). */
  weightDecay?: number;
  /** Learning rate of sparse parameters (default: lr). Scaled by the schedule like lr. */
  sparseLr?: number;
}

interface State {
  m: Tensor;
  v: Tensor;
  /** Per-row step counters (sparse parameters). */
  steps: Tensor | null;
}

/** Checks AdamWOptions (ConfigError naming the field, the expected and the actual value). */
function checkAdamWOptions(o: unknown): asserts o is AdamWOptions {
  if (!isObject(o)) throw new ConfigError(`AdamW: opts must be an object (AdamWOptions), got ${showValue(o)}`);
  const r = o as Record<string, unknown>;
  const check = (f: string, ok: (v: number) => boolean, expected: string, optional = true): void => {
    const v = r[f];
    if (optional && v === undefined) return;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new ConfigError(`AdamW: opts.${f} must be ${expected}, got ${showValue(v)}`);
  };
  check('lr', (v) => v >= 0, 'a finite number ≥ 0', false);
  check('beta1', (v) => v >= 0 && v < 1, 'a number in [0, 1)');
  check('beta2', (v) => v >= 0 && v < 1, 'a number in [0, 1)');
  check('eps', (v) => v > 0, 'a finite number > 0');
  check('weightDecay', (v) => v >= 0, 'a finite number ≥ 0');
  check('sparseLr', (v) => v >= 0, 'a finite number ≥ 0');
}

export class AdamW {
  readonly params: [string, Parameter][];
  readonly opts: Required<Omit<AdamWOptions, 'sparseLr'>> & { sparseLr?: number };
  readonly state = new Map<Parameter, State>();
  /** Dense steps taken (the bias-correction counter). */
  stepCount = 0;

  constructor(params: [string, Parameter][], opts: AdamWOptions) {
    if (!Array.isArray(params))
      throw new TypeError(`AdamW: params must be an array of [name, Parameter] pairs (module.namedParameters()), got ${showValue(params)}`);
    params.forEach((e, i) => {
      if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string' || !(e[1] instanceof Parameter))
        throw new TypeError(`AdamW: params[${i}] must be a [name, Parameter] pair, got ${showValue(e)}`);
    });
    checkAdamWOptions(opts);
    this.params = params;
    this.opts = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, ...opts };
    for (const [, p] of params) {
      const shape = p.shape;
      this.state.set(p, {
        m: keep(Tensor.zeros(shape)),
        v: keep(Tensor.zeros(shape)),
        steps: p.sparse ? keep(Tensor.zeros([shape[0]], { dtype: 'i32' })) : null,
      });
    }
  }

  /** One update with learning rate `lr` (the schedule's value for this step). Parameters without a gradient are skipped. */
  step(lr = this.opts.lr): void {
    if (typeof lr !== 'number' || !Number.isFinite(lr) || lr < 0) throw new RangeError(`AdamW.step: lr must be a finite number ≥ 0, got ${showValue(lr)}`);
    this.stepCount++;
    const scale = this.opts.lr > 0 ? lr / this.opts.lr : 0;
    const base = { beta1: this.opts.beta1, beta2: this.opts.beta2, eps: this.opts.eps };
    for (const [, p] of this.params) {
      const s = this.state.get(p)!;
      const wd = p.noDecay ? 0 : this.opts.weightDecay;
      if (p.sparse) {
        if (!p.sparseGrad) continue;
        const plr = (this.opts.sparseLr ?? this.opts.lr) * scale;
        sparseAdamwStep(p.data, s.m, s.v, s.steps!, p.sparseGrad, { ...base, lr: plr, weightDecay: wd });
      } else {
        if (!p.grad) continue;
        adamwStep(p.data, p.grad, s.m, s.v, this.stepCount, { ...base, lr, weightDecay: wd });
      }
    }
  }

  /** Moments (and per-row counters) by parameter name, for checkpoints. */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [n, p] of this.params) {
      const s = this.state.get(p)!;
      out.set(`${n}.m`, s.m);
      out.set(`${n}.v`, s.v);
      if (s.steps) out.set(`${n}.steps`, s.steps);
    }
    out.set('__step', Tensor.fromHost(Int32Array.of(this.stepCount), [1]));
    return out;
  }

  loadStateDict(sd: Map<string, Tensor>): void {
    if (!(sd instanceof Map)) throw new TypeError(`AdamW.loadStateDict: sd must be a Map<string, Tensor> (what stateDict() returns), got ${showValue(sd)}`);
    for (const [n, p] of this.params) {
      const s = this.state.get(p)!;
      for (const [k, t] of [[`${n}.m`, s.m], [`${n}.v`, s.v], ...(s.steps ? [[`${n}.steps`, s.steps]] : [])] as [string, Tensor][]) {
        const src = sd.get(k);
        if (!src) throw new RangeError(`AdamW.loadStateDict: missing ${k}`);
        if (!(src instanceof Tensor)) throw new TypeError(`AdamW.loadStateDict: ${k} must be a Tensor, got ${showValue(src)}`);
        if (src.size !== t.size || src.dtype !== t.dtype) throw new RangeError(`AdamW.loadStateDict: ${k} has the wrong shape or dtype`);
        (t.data() as Float32Array | Int32Array).set(src.data() as Float32Array & Int32Array);
      }
    }
    const st = sd.get('__step');
    if (!st) throw new RangeError('AdamW.loadStateDict: missing __step');
    if (!(st instanceof Tensor) || st.size !== 1)
      throw new RangeError(`AdamW.loadStateDict: __step must be a one-element Tensor, got ${st instanceof Tensor ? `${st.size} elements` : showValue(st)}`);
    this.stepCount = st.item();
  }

  dispose(): void {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
      s.steps?.dispose();
    }
  }
}
