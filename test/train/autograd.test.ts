import { describe, expect, it } from 'vitest';

import { Tensor, memory, tidy } from '../../lib/index.js';
import { Variable, addInPlace, noGrad, record1, releaseGraph } from '../../lib/autograd.js';
import { add, reshape, scale, weightedSum } from '../../lib/nn/functional.js';
import { expectClose, guardLeaks } from '../helpers.js';

// Test-local differentiable ops (not kernels: tiny tensors) to exercise the tape itself.
function mul(a: Variable, b: Variable): Variable {
  const x = a.data.data() as Float32Array;
  const y = b.data.data() as Float32Array;
  const out = Float32Array.from(x, (v, i) => v * y[i]);
  return record1('mul', [a, b], Tensor.fromHost(out, a.shape), (g) => {
    const gs = g.data() as Float32Array;
    return [Tensor.fromHost(Float32Array.from(gs, (v, i) => v * y[i]), a.shape), Tensor.fromHost(Float32Array.from(gs, (v, i) => v * x[i]), b.shape)];
  });
}
function sum(a: Variable): Variable {
  const x = a.data.data() as Float32Array;
  const s = x.reduce((p, v) => p + v, 0);
  return record1('sum', [a], Tensor.fromHost(Float32Array.of(s), []), (g) => [Tensor.full(a.shape, g.item())]);
}

describe('autograd', () => {
  guardLeaks();

  it('computes gradients through a diamond (a used twice) and accumulates', () => {
    const a = new Variable(Tensor.from([1, 2, 3]), { requiresGrad: true });
    const b = new Variable(Tensor.from([4, 5, 6]), { requiresGrad: true });
    // L = sum(a*b + a*a) → dL/da = b + 2a, dL/db = a
    const loss = sum(add(mul(a, b), mul(a, a)));
    expect(loss.data.item()).toBe(4 + 10 + 18 + 1 + 4 + 9);
    loss.backward();
    expectClose(a.grad!.data() as Float32Array, [6, 9, 12]);
    expectClose(b.grad!.data() as Float32Array, [1, 2, 3]);
    // Leaf gradients accumulate across backward calls (gradient accumulation).
    const loss2 = sum(mul(a, b));
    loss2.backward();
    expectClose(a.grad!.data() as Float32Array, [10, 14, 18]);
    loss.dispose();
    loss2.dispose();
    a.dispose();
    b.dispose();
  });

  it('frees intermediates after backward: memory() does not grow across steps', () => {
    const w = new Variable(Tensor.from([1, -2, 3, 0.5]), { requiresGrad: true });
    const x = new Variable(Tensor.from([0.1, 0.2, 0.3, 0.4]));
    // tidy frees values no graph owns (the reshape view of the constant x); backward frees the rest.
    const step = (): void => {
      tidy(() => {
      const loss = weightedSum([sum(mul(reshape(w, [2, 2]), reshape(x, [2, 2]))), sum(scale(w, 3))], [1, 0.5]);
      loss.backward();
      loss.dispose();
      w.zeroGrad();
        return null;
      });
    };
    step();
    const m0 = memory();
    for (let i = 0; i < 5; i++) step();
    expect(memory()).toEqual(m0);
    w.dispose();
    x.dispose();
  });

  it('weightedSum, scale and reshape have the right gradients', () => {
    const w = new Variable(Tensor.from([1, 2, 3, 4]), { requiresGrad: true });
    const l1 = sum(mul(reshape(w, [2, 2]), reshape(w, [2, 2])));
    const l2 = sum(scale(w, -2));
    const loss = weightedSum([l1, l2], [0.5, 3]);
    expect(loss.data.item()).toBeCloseTo(0.5 * 30 + 3 * -20, 5);
    loss.backward();
    // d/dw (0.5·Σw² − 6Σw) = w − 6
    expectClose(w.grad!.data() as Float32Array, [-5, -4, -3, -2]);
    loss.dispose();
    w.dispose();
  });

  it('noGrad records nothing and frees saved tensors at once', () => {
    const w = new Variable(Tensor.from([1, 2]), { requiresGrad: true });
    const before = memory().liveTensors;
    const saved = Tensor.zeros([8]);
    const y = noGrad(() => record1('id', [w], w.data.clone(), (g) => [g.clone()], [saved]));
    expect(y.node).toBeNull();
    expect(saved.isDisposed).toBe(true);
    expect(memory().liveTensors).toBe(before + 1);
    expect(() => y.backward()).toThrow(/does not require grad/);
    y.dispose();
    w.dispose();
  });

  it('retainGraph allows a second backward; without it the graph is released', () => {
    const w = new Variable(Tensor.from([3]), { requiresGrad: true });
    const loss = sum(mul(w, w));
    loss.backward(undefined, { retainGraph: true });
    loss.backward();
    expectClose(w.grad!.data() as Float32Array, [12]);
    expect(loss.node).toBeNull();
    loss.dispose();
    w.dispose();
  });

  it('releaseGraph frees a recorded graph that is never back-propagated', () => {
    const w = new Variable(Tensor.from([3, 4]), { requiresGrad: true });
    const before = memory();
    const loss = sum(mul(w, w));
    releaseGraph(loss);
    loss.dispose();
    expect(memory()).toEqual(before);
    w.dispose();
  });

  it('errors: non-scalar root without seed, gradient of the wrong shape, bad add', () => {
    const w = new Variable(Tensor.from([1, 2]), { requiresGrad: true });
    const y = mul(w, w);
    expect(() => y.backward()).toThrow(/explicit seed/);
    const seed = Tensor.from([1, 1]);
    y.backward(seed);
    expectClose(w.grad!.data() as Float32Array, [2, 4]);
    const bad = Tensor.zeros([3]);
    expect(() => w.accumulate(bad)).toThrow(/shape \[3\], expected \[2\]/);
    expect(() => addInPlace(w.data, bad)).toThrow(/cannot add/);
    expect(() => add(w, new Variable(bad))).toThrow(/shapes differ/);
    bad.dispose();
    seed.dispose();
    y.dispose();
    w.dispose();
  });
});
