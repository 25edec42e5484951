// ffnDense / ffnDenseBackward (dense FFN and Top-K activation) against a float64 model with finite differences,
// the native ref, determinism, every ISA, and bad input.
import { describe, expect, test } from 'vitest';

import { DTypeError, ShapeError, Tensor, ffnDense, ffnDenseBackward, type Activation } from '../../lib/index.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';
import { actF, dot, toF64 } from './moe-model.js';

guardLeaks();

interface P {
  T: number;
  D: number;
  F: number;
  act: Activation;
  topk: number;
  bias: boolean;
}

/** y = act(x·W1 + b1) ⊙ mask · W2 + b2 in float64; the mask (from the f32 forward) is a constant. */
function model(p: P, v: Record<string, Float64Array>, mask: Uint8Array | null): Float64Array {
  const { T, D, F } = p;
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < D; d++) y[t * D + d] = v.b2 ? v.b2[d] : 0;
    for (let f = 0; f < F; f++) {
      if (mask && !mask[t * F + f]) continue;
      let a = v.b1 ? v.b1[f] : 0;
      for (let d = 0; d < D; d++) a += v.x[t * D + d] * v.w1[d * F + f];
      const h = actF(p.act, a);
      for (let d = 0; d < D; d++) y[t * D + d] += h * v.w2[f * D + d];
    }
  }
  return y;
}

function make(p: P, seed = 1) {
  const t: Record<string, Tensor> = {
    x: Tensor.from(randn(p.T * p.D, seed), { shape: [p.T, p.D] }),
    w1: Tensor.from(randn(p.D * p.F, seed + 1, 1 / Math.sqrt(p.D)), { shape: [p.D, p.F] }),
    w2: Tensor.from(randn(p.F * p.D, seed + 2, 1 / Math.sqrt(p.F)), { shape: [p.F, p.D] }),
    dy: Tensor.from(randn(p.T * p.D, seed + 3), { shape: [p.T, p.D] }),
  };
  if (p.bias) {
    t.b1 = Tensor.from(randn(p.F, seed + 4, 0.1), { shape: [p.F] });
    t.b2 = Tensor.from(randn(p.D, seed + 5, 0.1), { shape: [p.D] });
  }
  const params = { w1: t.w1, w2: t.w2, b1: t.b1, b2: t.b2 };
  return { t, params, dispose: () => Object.values(t).forEach((u) => u.dispose()) };
}

function run(p: P, m: ReturnType<typeof make>, impl: 'cpu' | 'ref') {
  const f = ffnDense(m.t.x, m.params, { act: p.act, topk: p.topk, impl });
  const g = ffnDenseBackward(m.t.dy, m.t.x, m.params, f.saved, { act: p.act, topk: p.topk, impl });
  const out: Record<string, Float32Array> = {
    y: f.y.data() as Float32Array, h: f.saved.h.data() as Float32Array, dx: g.dx.data() as Float32Array,
    dw1: g.dw1.data() as Float32Array, dw2: g.dw2.data() as Float32Array,
  };
  if (g.db1) out.db1 = g.db1.data() as Float32Array;
  if (g.db2) out.db2 = g.db2.data() as Float32Array;
  for (const u of [f.y, f.saved.pre, f.saved.h, g.dx, g.dw1, g.dw2, g.db1, g.db2]) u?.dispose();
  return out;
}

function checkModel(p: P, impl: 'cpu' | 'ref') {
  const m = make(p);
  const o = run(p, m, impl);
  const v: Record<string, Float64Array> = {};
  for (const [k, u] of Object.entries(m.t)) v[k] = toF64(u.data() as Float32Array);
  // The kept set is what the kernel chose (h != 0 or a kept zero): recompute it as the top-k of act(pre).
  let mask: Uint8Array | null = null;
  if (p.topk > 0 && p.topk < p.F) {
    mask = new Uint8Array(p.T * p.F);
    for (let t = 0; t < p.T; t++) {
      const a = Array.from({ length: p.F }, (_, f) => {
        let s = v.b1 ? v.b1[f] : 0;
        for (let d = 0; d < p.D; d++) s += v.x[t * p.D + d] * v.w1[d * p.F + f];
        return actF(p.act, s);
      });
      const th = [...a].sort((x, y) => y - x)[p.topk - 1];
      a.forEach((val, f) => (mask![t * p.F + f] = val >= th ? 1 : 0));
    }
  }
  expectClose(o.y, model(p, v, mask), { atol: 2e-5, rtol: 2e-4 }, `y ${impl}`);
  const dy = v.dy;
  for (const [key, grad] of [['x', 'dx'], ['w1', 'dw1'], ['w2', 'dw2'], ['b1', 'db1'], ['b2', 'db2']]) {
    if (!v[key]) continue;
    const fd = finiteDiff((val) => dot(dy, model(p, { ...v, [key]: val }, mask)), Float64Array.from(v[key]));
    expectClose(o[grad], fd, { atol: 1e-4, rtol: 1e-3 }, `${grad} ${impl}`);
  }
  m.dispose();
}

describe('ffnDense matches the float64 model (finite differences for every gradient)', () => {
  for (const impl of ['cpu', 'ref'] as const)
    for (const act of ['relu', 'gelu', 'silu'] as const)
      test(`${impl} ${act}`, () => {
        checkModel({ T: 5, D: 4, F: 7, act, topk: 0, bias: true }, impl);
        checkModel({ T: 4, D: 3, F: 9, act, topk: 3, bias: false }, impl);
      });
});

describe('ffnDense cpu vs ref, determinism, ISAs', () => {
  test('larger shapes, top-k, every ISA; bit-identical runs and thread counts', async () => {
    const p: P = { T: 130, D: 48, F: 200, act: 'gelu', topk: 0, bias: true };
    const m = make(p, 9);
    const ref = run(p, m, 'ref');
    for (const isa of await cpuIsas()) {
      const c = await withIsa(isa, () => run(p, m, 'cpu'));
      for (const k of Object.keys(ref)) expectClose(c[k], ref[k], { atol: 1e-4, rtol: 1e-3 }, `${k} ${isa}`);
    }
    const a = run(p, m, 'cpu');
    const b = run(p, m, 'cpu');
    for (const k of Object.keys(a)) expectBitIdentical(a[k], b[k], k);
    const one = await withThreads(1, () => run(p, m, 'cpu'));
    const two = await withThreads(2, () => run(p, m, 'cpu'));
    for (const k of Object.keys(a)) expectBitIdentical(one[k], two[k], `${k} 1 vs 2 threads`);
    const pk: P = { ...p, act: 'relu', topk: 17 };
    const rk = run(pk, m, 'ref');
    const ck = run(pk, m, 'cpu');
    for (const k of Object.keys(rk)) expectClose(ck[k], rk[k], { atol: 1e-4, rtol: 1e-3 }, `topk ${k}`);
    // At most ~17 non-zeros per row (ties could keep more; with random data they do not).
    for (let t = 0; t < p.T; t++) expect(ck.h.subarray(t * p.F, (t + 1) * p.F).filter((v) => v !== 0).length).toBeLessThanOrEqual(17);
    m.dispose();
  });

  test('Top-K activation with K = F equals the dense FFN', () => {
    const p: P = { T: 20, D: 16, F: 24, act: 'silu', topk: 0, bias: true };
    const m = make(p, 3);
    const a = run(p, m, 'cpu');
    const b = run({ ...p, topk: 24 }, m, 'cpu');
    for (const k of Object.keys(a)) expectBitIdentical(a[k], b[k], k);
    m.dispose();
  });
});

describe('ffnDense bad input', () => {
  test('shapes, dtypes, topk range, disposed', () => {
    const m = make({ T: 3, D: 4, F: 5, act: 'relu', topk: 0, bias: false });
    const { w1, w2 } = m.params;
    expect(() => ffnDense(m.t.x, { w1, w2: w1 })).toThrow(/ffnDense: w2 must have shape \[5, 4\], got \[4, 5\]/);
    const xi = Tensor.zeros([3, 4], { dtype: 'i32' });
    expect(() => ffnDense(xi, { w1, w2 })).toThrow(DTypeError);
    const x3 = Tensor.zeros([3, 4, 1]);
    expect(() => ffnDense(x3, { w1, w2 })).toThrow(ShapeError);
    expect(() => ffnDense(m.t.x, { w1, w2 }, { topk: 6 })).toThrow(/topk must be an integer in \[0, F=5\], got 6/);
    const f = ffnDense(m.t.x, { w1, w2 });
    f.saved.h.dispose();
    expect(() => ffnDenseBackward(m.t.dy, m.t.x, { w1, w2 }, f.saved)).toThrow(/disposed/);
    for (const u of [xi, x3, f.y, f.saved.pre]) u.dispose();
    m.dispose();
  });
});
