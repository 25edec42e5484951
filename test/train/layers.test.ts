/**
 * The layers as public building blocks, used on their own: construction from a seed (no Rng needed), forward
 * shapes on Tensors and Variables, gradients of every parameter and of the input against finite differences,
 * sharing a router, and clear errors for bad arguments and bad inputs (thrown before anything is allocated).
 */
import { describe, expect, it } from 'vitest';

import {
  CausalSelfAttention,
  ConfigError,
  DenseFFN,
  Embedding,
  F,
  LayerNorm,
  Linear,
  MoEBase,
  Module,
  PEER,
  ProductKeyMemory,
  Rng,
  Router,
  ShapeError,
  SigmaMoE,
  SoftmaxMoE,
  Tensor,
  TopKFFN,
  Variable,
  buildFfn,
  noGrad,
  validateFfnConfig,
  tidy,
  type FfnConfig,
} from '../../lib/index.js';
import { checkDirectional, leaf } from './gradcheck.js';
import { expectBitIdentical, guardLeaks, randn } from '../helpers.js';

/** Every parameter's values, concatenated in state-dict order. */
function weights(m: Module): Float32Array {
  const parts = m.parameters().map((p) => p.data.data() as Float32Array);
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A smooth scalar of a [T, C] output: mean cross-entropy against fixed targets in [0, C). */
function lossOf(y: Variable, seed: number): Variable {
  const [T, C] = y.shape;
  const r = new Rng(seed);
  const targets = Tensor.fromHost(Int32Array.from({ length: T }, () => r.int(C)), [T]);
  const loss = F.crossEntropy(y, targets);
  targets.dispose();
  return loss;
}

/** f's output values, computed without a graph and copied out of a tidy scope. */
function values(f: () => Variable): Float32Array {
  let out = new Float32Array(0);
  noGrad(() =>
    tidy(() => {
      out = (f().data.data() as Float32Array).slice();
      return null;
    }),
  );
  return out;
}

/** The FFN output of any layer kind. */
function ffnOut(m: Module, x: Variable): Variable {
  if (m instanceof DenseFFN) return m.forward(x);
  if (m instanceof MoEBase) return m.forward(x, { seed: 1 }).y;
  if (m instanceof ProductKeyMemory || m instanceof PEER) return m.forward(x).y;
  throw new Error(`not an FFN: ${m.constructor.name}`);
}

const D = 8;
const FFNS: [string, FfnConfig, new (...a: never[]) => Module][] = [
  ['dense', { kind: 'dense', dFF: 16 }, DenseFFN],
  ['topk', { kind: 'topk', dFF: 16, k: 4 }, TopKFFN],
  ['sigma-moe', { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 4, gamma: 0.01 }, SigmaMoE],
  ['switch', { kind: 'switch', experts: 4, k: 1, expertSize: 4, capacityFactor: 4 }, SoftmaxMoE],
  ['softmax-moe', { kind: 'softmax-moe', experts: 4, k: 2, expertSize: 4 }, SoftmaxMoE],
  ['adaptive', { kind: 'adaptive', experts: 4, k: 2, expertSize: 4, threshold: 0.3 }, SoftmaxMoE],
  ['pkm (csordas)', { kind: 'pkm', heads: 2, subKeys: 4, k: 2 }, ProductKeyMemory],
  ['pkm (lample)', { kind: 'pkm', variant: 'lample', heads: 2, subKeys: 4, k: 2, queryDim: 6 }, ProductKeyMemory],
  ['peer', { kind: 'peer', heads: 2, subKeys: 4, k: 2, queryDim: 6 }, PEER],
];

describe('layers built on their own', () => {
  guardLeaks();

  it('a seed replaces the Rng: the same seed gives the same weights, another seed others, no seed is seed 0', () => {
    const a = new Linear(6, 5, { seed: 3 });
    const b = new Linear(6, 5, { seed: 3 });
    const c = new Linear(6, 5, { seed: 4 });
    const d = new Linear(6, 5);
    const e = new Linear(6, 5, { seed: 0 });
    const f = new Linear(6, 5, { rng: new Rng(3) });
    expectBitIdentical(weights(a), weights(b), 'seed 3 twice');
    expectBitIdentical(weights(d), weights(e), 'default seed');
    expectBitIdentical(weights(a), weights(f), 'rng: new Rng(3)');
    expect(weights(a)).not.toEqual(weights(c));
    // Default init: truncated normal with std 1/√inFeatures, zero bias.
    const w = a.weight.data.data() as Float32Array;
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual((2 / Math.sqrt(6)) * 1.1369 + 1e-6);
    expect(Array.from(a.bias!.data.data() as Float32Array)).toEqual([0, 0, 0, 0, 0]);
    const g = new Linear(6, 5, { bias: false });
    expect(g.bias).toBeNull();
    for (const m of [a, b, c, d, e, f, g]) m.dispose();
  });

  it('Linear: y = x·Wᵀ + b on a Tensor or a Variable', () => {
    const m = new Linear(3, 2, { seed: 1 });
    (m.bias!.data.data() as Float32Array).set([0.5, -1]);
    const xs = randn(4 * 3, 2);
    const x = Tensor.fromHost(xs, [4, 3]);
    const y = noGrad(() => m.forward(x).data);
    const w = m.weight.data.data() as Float32Array;
    const want = new Float32Array(8);
    for (let t = 0; t < 4; t++) for (let o = 0; o < 2; o++) want[t * 2 + o] = [0, 1, 2].reduce((s, i) => s + xs[t * 3 + i] * w[o * 3 + i], [0.5, -1][o]);
    const got = y.data() as Float32Array;
    for (let i = 0; i < 8; i++) expect(got[i]).toBeCloseTo(want[i], 5);
    x.dispose();
    y.dispose();
    m.dispose();
  });

  it('Embedding takes an Int32Array or an i32 Tensor of ids', () => {
    const m = new Embedding(10, 4, { seed: 2 });
    tidy(() => {
      const a = m.forward(new Int32Array([3, 9, 3]));
      const b = m.forward(Tensor.fromHost(new Int32Array([3, 9, 3]), [3]));
      expect(a.shape).toEqual([3, 4]);
      const tab = m.weight.data.data() as Float32Array;
      expectBitIdentical((a.data.data() as Float32Array).subarray(0, 4), tab.subarray(12, 16), 'row 3');
      expectBitIdentical(a.data.data() as Float32Array, b.data.data() as Float32Array, 'Tensor ids');
      expect(() => m.forward(new Int32Array([10]))).toThrow(/ids\[0\] must be in \[0, 10\), got 10/);
      return null;
    });
    m.dispose();
  });

  it('Linear, LayerNorm and CausalSelfAttention: gradients of the parameters and the input', () => {
    const lin = new Linear(D, 6, { seed: 1 });
    const ln = new LayerNorm(D);
    (ln.weight.data.data() as Float32Array).set(randn(D, 3, 0.5).map((v) => v + 1));
    const att = new CausalSelfAttention(D, 2, { seed: 2 });
    const x = leaf([6, D], 4);
    const params = (m: Module): [string, Variable][] => [...m.namedParameters(), ['x', x]];
    checkDirectional(params(lin), () => lossOf(lin.forward(x), 5), { eps: 1e-3, atol: 1e-4 });
    checkDirectional(params(ln), () => lossOf(ln.forward(x), 6), { eps: 1e-3, atol: 1e-4 });
    checkDirectional(params(att), () => lossOf(att.forward(x, 2, 3), 7), { eps: 1e-3, atol: 1e-4 });
    for (const m of [lin, ln, att]) m.dispose();
    x.dispose();
  });

  for (const [name, cfg, cls] of FFNS) {
    it(`${name}: buildFfn and the class agree; [T, D] → [T, D]; gradients of every parameter and of x`, () => {
      const m = buildFfn(D, cfg, { seed: 9 });
      expect(m).toBeInstanceOf(cls);
      const again = buildFfn(D, cfg, { seed: 9 });
      expectBitIdentical(weights(m), weights(again), 'same seed');
      again.dispose();
      // A Tensor input works (a constant); the output keeps the input's rows.
      noGrad(() =>
        tidy(() => {
          expect(ffnOut(m, new Variable(Tensor.fromHost(randn(5 * D, 1), [5, D]))).shape).toEqual([5, D]);
          return null;
        }),
      );
      const x = leaf([6, D], 11, 0.5);
      const params: [string, Variable][] = [...m.namedParameters(), ['x', x]];
      checkDirectional(params, () => lossOf(ffnOut(m, x), 12), { eps: 1e-3, rtol: 3e-2, atol: 2e-4 });
      m.dispose();
      x.dispose();
    });
  }

  it('MoE layers without a context seed call n with n: expert dropout draws new masks, reproducibly', () => {
    const cfg: FfnConfig = { kind: 'sigma-moe', experts: 8, k: 2, expertSize: 4, expertDropout: 0.5 };
    const run = (): Float32Array[] => {
      const m = new SigmaMoE(D, cfg, { seed: 1 });
      const x = Tensor.fromHost(randn(16 * D, 2), [16, D]);
      const ys = [0, 1, 2].map(() => values(() => m.forward(x).y));
      x.dispose();
      m.dispose();
      return ys;
    };
    const [a, b] = [run(), run()];
    a.forEach((y, i) => expectBitIdentical(y, b[i], `call ${i}`));
    expect(a[0]).not.toEqual(a[1]);
    // Call n without a context is call n with { seed: n }.
    const m = new SigmaMoE(D, cfg, { seed: 1 });
    const x = Tensor.fromHost(randn(16 * D, 2), [16, D]);
    const y1 = values(() => m.forward(x, { seed: 1 }).y);
    expectBitIdentical(y1, a[1], 'seed 1');
    x.dispose();
    m.dispose();
  });

  it('a Router shared by two MoE layers is one parameter of their parent', () => {
    class Two extends Module {
      readonly router = this.child('router', new Router(4, D, { seed: 3 }));
      readonly a = this.child('a', new SigmaMoE(D, { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 4 }, { router: this.router, seed: 1 }));
      readonly b = this.child('b', new SoftmaxMoE(D, { kind: 'softmax-moe', experts: 4, k: 1, expertSize: 4 }, { router: this.router, seed: 2 }));
    }
    const m = new Two();
    expect(m.a.router).toBe(m.router);
    expect(m.b.router).toBe(m.router);
    expect(m.parameters().filter((p) => p === m.router.weight)).toHaveLength(1);
    expect(m.namedParameters().map(([n]) => n)).toEqual(['router.weight', 'a.w1', 'a.w2', 'b.w1', 'b.w2']);
    // Rows renormalised to equal norm (§1.7) unless asked otherwise.
    const w = m.router.weight.data.data() as Float32Array;
    const norm = (e: number): number => Math.hypot(...w.subarray(e * D, (e + 1) * D));
    for (let e = 1; e < 4; e++) expect(norm(e)).toBeCloseTo(norm(0), 5);
    m.dispose();
  });
});

describe('layers: bad arguments and inputs get clear errors', () => {
  guardLeaks();
  const moe: FfnConfig = { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 4 };

  it('constructors name the layer, the argument, the expected and the actual value', () => {
    const other = new Router(5, 8);
    const cases: [() => unknown, RegExp][] = [
      [() => new Linear(-4, 3), /^Linear: inFeatures must be a positive integer, got -4$/],
      [() => new Linear(4, 2.5), /^Linear: outFeatures must be a positive integer, got 2.5$/],
      [() => new Linear(4, 3, { std: 0 }), /^Linear: opts\.std must be a finite number > 0, got 0$/],
      [() => new Linear(4, 3, { seed: 0.5 }), /^Linear: opts\.seed must be an integer, got 0.5$/],
      [() => new Linear(4, 3, { rng: 7 as unknown as Rng }), /^Linear: opts\.rng must be an Rng, got 7$/],
      [() => new Embedding(0, 4), /^Embedding: num must be a positive integer, got 0$/],
      [() => new LayerNorm(4, -1), /^LayerNorm: eps must be a finite number > 0, got -1$/],
      [() => new CausalSelfAttention(8, 3), /^CausalSelfAttention: dModel \/ nHeads must be an even integer \(rotary embeddings\), got 8 \/ 3$/],
      [() => new DenseFFN(8, NaN), /^DenseFFN: dFF must be a positive integer, got NaN$/],
      [() => new DenseFFN(8, 16, { c: -1 }), /^DenseFFN: opts\.c must be a finite number > 0, got -1$/],
      [() => new TopKFFN(8, 16, 17), /^TopKFFN: k must be in \[1, dFF=16\], got 17$/],
      [() => new SigmaMoE(8, { ...moe, k: 5 }), /^SigmaMoE: cfg\.k must be in \[1, experts=4\], got 5$/],
      [() => new SigmaMoE(8, { ...moe, kind: 'switch', k: 1 }), /^SigmaMoE: cfg\.kind must be 'sigma-moe', got 'switch'$/],
      [() => new SoftmaxMoE(8, moe), /^SoftmaxMoE: cfg\.kind must be 'switch', 'softmax-moe' or 'adaptive', got 'sigma-moe'$/],
      [() => new SoftmaxMoE(8, { ...moe, kind: 'adaptive', k: 1 }), /^SoftmaxMoE: cfg\.k must be 2 for adaptive gating/],
      [() => new SigmaMoE(0, moe), /^SigmaMoE: cfg: the model width D must be a positive integer, got 0$/],
      [() => new SigmaMoE(8, moe, { router: other }), /^SigmaMoE: opts\.router must be a Router of 4 experts × 8, got a Router of 5 experts × 8$/],
      [() => new Router(4, 8, { std: Infinity }), /^Router: opts\.std must be a finite number > 0, got Infinity$/],
      [() => new ProductKeyMemory(8, { kind: 'pkm', heads: 2, subKeys: 4, k: 5 }), /^ProductKeyMemory: cfg\.k must be in \[1, subKeys=4\], got 5$/],
      [() => new ProductKeyMemory(8, { kind: 'peer', heads: 2, subKeys: 4, k: 2 } as unknown as FfnConfig & { kind: 'pkm' }), /^ProductKeyMemory: cfg\.kind must be 'pkm', got 'peer'$/],
      [() => new PEER(7, { kind: 'peer', heads: 2, subKeys: 4, k: 2 }), /^PEER: cfg: the query width must be even \(two halves\), got 7$/],
      [() => new PEER(8, { kind: 'peer', heads: 0, subKeys: 4, k: 2 }), /^PEER: cfg\.heads must be a positive integer, got 0$/],
      [() => buildFfn(8, { kind: 'nope' } as unknown as FfnConfig), /^buildFfn: f\.kind: unknown FFN kind 'nope', expected one of dense, topk/],
    ];
    for (const [f, re] of cases) {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err, String(re)).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(re);
    }
    other.dispose();
  });

  it('validateFfnConfig checks one FFN config for a model width, naming fields after its prefix', () => {
    for (const [, cfg] of FFNS) expect(() => validateFfnConfig(D, cfg)).not.toThrow();
    expect(() => validateFfnConfig(D, { kind: 'topk', dFF: 16, k: 0 })).toThrow(new ConfigError('ffn.k must be a positive integer, got 0'));
    expect(() => validateFfnConfig(D, { ...moe, expertDropout: 1 }, 'layer 3')).toThrow(new ConfigError('layer 3.expertDropout must be in [0, 1), got 1'));
    expect(() => validateFfnConfig(D, { kind: 'peer', heads: 2, subKeys: 4, k: 2, queryDim: 5 })).toThrow(/^ffn: the query width must be even \(two halves\), got 5$/);
    expect(() => validateFfnConfig(-1, moe)).toThrow(new ConfigError('ffn: the model width D must be a positive integer, got -1'));
    expect(() => validateFfnConfig(D, null as unknown as FfnConfig)).toThrow(new ConfigError('ffn must be an object, got null'));
  });

  it('forward checks its input: a Variable or a Tensor of shape [T, width]', () => {
    const layers: [string, (x: Variable | Tensor) => unknown][] = [];
    const lin = new Linear(4, 3);
    const ln = new LayerNorm(4);
    const att = new CausalSelfAttention(4, 2);
    const dense = new DenseFFN(4, 8);
    const topk = new TopKFFN(4, 8, 2);
    const sig = new SigmaMoE(4, { ...moe });
    const pkm = new ProductKeyMemory(4, { kind: 'pkm', heads: 2, subKeys: 4, k: 2 });
    const peer = new PEER(4, { kind: 'peer', heads: 2, subKeys: 4, k: 2 });
    layers.push(
      ['Linear', (x) => lin.forward(x)],
      ['LayerNorm', (x) => ln.forward(x)],
      ['CausalSelfAttention', (x) => att.forward(x, 1, 2)],
      ['DenseFFN', (x) => dense.forward(x)],
      ['TopKFFN', (x) => topk.forward(x)],
      ['SigmaMoE', (x) => sig.forward(x)],
      ['ProductKeyMemory', (x) => pkm.forward(x)],
      ['PEER', (x) => peer.forward(x)],
    );
    const wrong = Tensor.zeros([2, 5]);
    const flat = Tensor.zeros([8]);
    for (const [name, f] of layers) {
      expect(() => f(wrong)).toThrow(ShapeError);
      expect(() => f(wrong)).toThrow(`${name}.forward: x must have shape [T, 4], got [2, 5]`);
      expect(() => f(flat)).toThrow(`${name}.forward: x must have shape [T, 4], got [8]`);
      expect(() => f([1, 2, 3, 4] as unknown as Tensor)).toThrow(new TypeError(`${name}.forward: x must be a Variable or a Tensor, got an array of length 4`));
    }
    const x = Tensor.zeros([4, 4]);
    expect(() => att.forward(x, 1, 3)).toThrow(new ShapeError('CausalSelfAttention.forward: x has 4 rows, expected B·S = 1·3 = 3'));
    expect(() => att.forward(x, 0, 4)).toThrow(/CausalSelfAttention\.forward: B must be a positive integer, got 0/);
    expect(() => sig.forward(x, { seed: 1.5 })).toThrow(/SigmaMoE\.forward: ctx\.seed must be an integer, got 1\.5/);
    for (const t of [wrong, flat, x]) t.dispose();
    for (const m of [lin, ln, att, dense, topk, sig, pkm, peer]) m.dispose();
  });
});
