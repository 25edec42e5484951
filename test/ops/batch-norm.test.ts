// batchNorm / batchNormBackward (the optional PKM/PEER query BatchNorm): fast kernel vs the float64 reference and a
// float64 TS BatchNorm1d, finite differences in both modes, running statistics, determinism, bad input.
import { describe, expect, it } from 'vitest';

import { ShapeError, Tensor, batchNorm, batchNormBackward } from '../../lib/index.js';
import { expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, withThreads } from '../helpers.js';

// Float64 training-mode BatchNorm1d: y[t, f] = γ (x − μ_f) / √(σ²_f + ε) + β.
function bnF64(x: ArrayLike<number>, T: number, F: number, g: ArrayLike<number>, b: ArrayLike<number>, eps: number) {
  const y = new Float64Array(T * F);
  for (let f = 0; f < F; f++) {
    let m = 0;
    for (let t = 0; t < T; t++) m += x[t * F + f];
    m /= T;
    let v = 0;
    for (let t = 0; t < T; t++) v += (x[t * F + f] - m) ** 2;
    v /= T;
    for (let t = 0; t < T; t++) y[t * F + f] = (g[f] * (x[t * F + f] - m)) / Math.sqrt(v + eps) + b[f];
  }
  return y;
}

describe('batchNorm', () => {
  guardLeaks();
  const T = 9;
  const H = 2;
  const Dk = 5;
  const F = H * Dk;

  it('training mode: forward, running statistics and gradients match float64 and finite differences', () => {
    using x = Tensor.from(randn(T * F, 1, 2), { shape: [T, H, Dk] });
    using gamma = Tensor.from(randn(F, 2));
    using beta = Tensor.from(randn(F, 3));
    using dy = Tensor.from(randn(T * F, 4), { shape: [T, H, Dk] });
    const xs = x.data() as Float32Array;
    const gs = gamma.data() as Float32Array;
    const bs = beta.data() as Float32Array;
    const run = { mean: Tensor.zeros([F]), var: Tensor.full([F], 1) };
    const runRef = { mean: Tensor.zeros([F]), var: Tensor.full([F], 1) };
    const f = batchNorm(x, gamma, beta, run, { training: true, momentum: 0.2 });
    const r = batchNorm(x, gamma, beta, runRef, { training: true, momentum: 0.2, impl: 'ref' });
    expect(f.y.shape).toEqual([T, H, Dk]);
    expectClose(f.y.data() as Float32Array, bnF64(xs, T, F, gs, bs, 1e-5), undefined, 'y');
    expectClose(r.y.data() as Float32Array, bnF64(xs, T, F, gs, bs, 1e-5), undefined, 'ref y');
    // Running statistics: 0.8·old + 0.2·(batch mean, unbiased batch variance).
    const mu = Array.from({ length: F }, (_, k) => Array.from({ length: T }, (_, t) => xs[t * F + k]).reduce((a, c) => a + c, 0) / T);
    const uv = mu.map((m, k) => Array.from({ length: T }, (_, t) => (xs[t * F + k] - m) ** 2).reduce((a, c) => a + c, 0) / (T - 1));
    expectClose(run.mean.data() as Float32Array, mu.map((m) => 0.2 * m), undefined, 'running mean');
    expectClose(run.var.data() as Float32Array, uv.map((v) => 0.8 + 0.2 * v), undefined, 'running var');
    expectClose(runRef.var.data() as Float32Array, run.var.data() as Float32Array, undefined, 'ref running var');
    const b = batchNormBackward(dy, x, gamma, f.saved, { training: true });
    const rb = batchNormBackward(dy, x, gamma, r.saved, { training: true, impl: 'ref' });
    const dys = dy.data() as Float32Array;
    const L = (xx: ArrayLike<number>, gg: ArrayLike<number>, bb: ArrayLike<number>) =>
      bnF64(xx, T, F, gg, bb, 1e-5).reduce((s, v, i) => s + v * dys[i], 0);
    const tol = { atol: 1e-4, rtol: 1e-4 };
    expectClose(rb.dx.data() as Float32Array, finiteDiff((v) => L(v, gs, bs), Float64Array.from(xs)), tol, 'ref dx vs FD');
    expectClose(rb.dGamma!.data() as Float32Array, finiteDiff((v) => L(xs, v, bs), Float64Array.from(gs)), tol, 'dGamma vs FD');
    expectClose(rb.dBeta!.data() as Float32Array, finiteDiff((v) => L(xs, gs, v), Float64Array.from(bs)), tol, 'dBeta vs FD');
    expectClose(b.dx.data() as Float32Array, rb.dx.data() as Float32Array, tol, 'dx');
    expectClose(b.dGamma!.data() as Float32Array, rb.dGamma!.data() as Float32Array, undefined, 'dGamma');
    expectClose(b.dBeta!.data() as Float32Array, rb.dBeta!.data() as Float32Array, undefined, 'dBeta');
    for (const t of [f.y, f.saved.mean, f.saved.invStd, r.y, r.saved.mean, r.saved.invStd, b.dx, b.dGamma!, b.dBeta!, rb.dx, rb.dGamma!, rb.dBeta!, run.mean, run.var, runRef.mean, runRef.var])
      t.dispose();
  });

  it('eval mode uses the running statistics; its backward is the per-feature scale', () => {
    using x = Tensor.from(randn(T * F, 5), { shape: [T, F] });
    using dy = Tensor.from(randn(T * F, 6), { shape: [T, F] });
    using rm = Tensor.from(randn(F, 7));
    using rv = Tensor.from(randn(F, 8).map((v) => 0.5 + v * v));
    const f = batchNorm(x, null, null, { mean: rm, var: rv }, { training: false });
    const xs = x.data() as Float32Array;
    const m = rm.data() as Float32Array;
    const v = rv.data() as Float32Array;
    expectClose(f.y.data() as Float32Array, Array.from(xs, (xv, i) => (xv - m[i % F]) / Math.sqrt(v[i % F] + 1e-5)));
    const b = batchNormBackward(dy, x, null, f.saved, { training: false });
    expect(b.dGamma).toBeNull();
    expectClose(b.dx.data() as Float32Array, Array.from(dy.data() as Float32Array, (d, i) => d / Math.sqrt(v[i % F] + 1e-5)));
    for (const t of [f.y, f.saved.mean, f.saved.invStd, b.dx]) t.dispose();
  });

  it('is deterministic for 1 vs 2 threads', async () => {
    using x = Tensor.from(randn(300 * 200, 1), { shape: [300, 200] });
    using dy = Tensor.from(randn(300 * 200, 2), { shape: [300, 200] });
    const run = () => {
      const f = batchNorm(x, null, null, null, { training: true });
      const b = batchNormBackward(dy, x, null, f.saved, { training: true });
      const out = [(f.y.data() as Float32Array).slice(), (b.dx.data() as Float32Array).slice()];
      for (const t of [f.y, f.saved.mean, f.saved.invStd, b.dx]) t.dispose();
      return out;
    };
    const a = await withThreads(1, run);
    const c = await withThreads(2, run);
    expectBitIdentical(a[0], c[0], 'y');
    expectBitIdentical(a[1], c[1], 'dx');
  });

  it('rejects bad input with typed errors', () => {
    using x = Tensor.zeros([4, 6]);
    using g5 = Tensor.zeros([5]);
    expect(() => batchNorm(x, g5, null, null, { training: true })).toThrow(ShapeError);
    expect(() => batchNorm(x, null, null, null, { training: false })).toThrow(/eval mode .* needs running statistics/);
    expect(() => batchNorm(x, null, null, null, { training: true, momentum: 2 })).toThrow(/momentum must be in \[0, 1\]/);
    using x1 = Tensor.zeros([4]);
    expect(() => batchNorm(x1, null, null, null, { training: true })).toThrow(ShapeError);
    using x0 = Tensor.zeros([0, 6]);
    expect(() => batchNorm(x0, null, null, null, { training: true })).toThrow(/at least one token/);
  });
});
