/**
 * The training row ops on the GPU (native/kernels/cuda/nn.cu) against the CPU ops: layerNorm, embedding,
 * crossEntropy and linear forward and backward, dropout (the CPU's mask bit for bit), sumSquares / clipGradNorm, dense AdamW over several steps, sparse AdamW on rows with per-row step
 * counters; determinism (two runs bit-identical, including the embedding backward with many repeated ids); NaN
 * rows for out-of-range ids and targets (the host cannot check device indices); bad input with typed errors.
 * Skipped with the probe's reason where no GPU is present (test/gpu/nn-emulated.test.ts checks the same kernels
 * under host emulation).
 */
import { describe, expect, it } from 'vitest';

import {
  DeviceError, Tensor, adamwStep, clipGradNormTensors, crossEntropy, crossEntropyBackward, dropout, embedding, embeddingBackward,
  layerNorm, layerNormBackward, linear, linearBackward, memory, sparseAdamwStep, sumSquares,
} from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/nn-ops', st);

const f32 = (t: Tensor) => t.data() as Float32Array;
const ids = (n: number, V: number, seed: number) => {
  const a = new Int32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) a[i] = (s = (s * 1103515245 + 12345) >>> 0) % V;
  return a;
};

describe.skipIf(!st.gpu)('CUDA row ops', () => {
  for (const [T, D] of [[37, 50], [700, 33], [5, 1500]] as const) {
    it(`layerNorm forward and backward match the CPU (T=${T}, D=${D})`, () => {
      const m0 = memory();
      const x = Tensor.from(randn(T * D, 1, 2), { shape: [T, D] });
      const g = Tensor.from(randn(D, 2), { shape: [D] });
      const b = Tensor.from(randn(D, 3), { shape: [D] });
      const dy = Tensor.from(randn(T * D, 4), { shape: [T, D] });
      const [xd, gd, bd, dyd] = [x, g, b, dy].map((t) => t.to('cuda'));
      const c = layerNorm(x, g, b);
      const d = layerNorm(xd!, gd!, bd!);
      expect(d.y.device).toBe('cuda');
      expectClose(f32(d.y), f32(c.y), { atol: 1e-5, rtol: 1e-5 }, 'y');
      const gc = layerNormBackward(dy, x, g, c.saved);
      const gg = layerNormBackward(dyd!, xd!, gd!, d.saved);
      const gg2 = layerNormBackward(dyd!, xd!, gd!, d.saved);
      for (const k of ['dx', 'dg', 'db'] as const) {
        expectClose(f32(gg[k]), f32(gc[k]), { atol: 1e-4, rtol: 1e-4 }, k);
        expectBitIdentical(f32(gg[k]), f32(gg2[k]), `${k} (determinism)`);
      }
      for (const t of [x, g, b, dy, xd, gd, bd, dyd, c.y, c.saved.mean, c.saved.rstd, d.y, d.saved.mean, d.saved.rstd,
        ...Object.values(gc), ...Object.values(gg), ...Object.values(gg2)])
        t?.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  it('embedding forward and backward match the CPU, deterministic with repeated ids', () => {
    const m0 = memory();
    const [T, V, D] = [3000, 97, 40];
    const id = Tensor.from(ids(T, V - 1, 7), { shape: [T] }); // row V-1 never used: its gradient is 0
    const table = Tensor.from(randn(V * D, 8), { shape: [V, D] });
    const dy = Tensor.from(randn(T * D, 9), { shape: [T, D] });
    const [idd, td, dyd] = [id, table, dy].map((t) => t.to('cuda'));
    const yc = embedding(table, id);
    const yg = embedding(td!, idd!);
    expect(Array.from(f32(yg))).toEqual(Array.from(f32(yc)));
    const dc = embeddingBackward(dy, id, V);
    const dg = embeddingBackward(dyd!, idd!, V);
    const dg2 = embeddingBackward(dyd!, idd!, V);
    expectClose(f32(dg), f32(dc), { atol: 1e-5, rtol: 1e-5 }, 'dw');
    expectBitIdentical(f32(dg), f32(dg2), 'dw (determinism)');
    for (const t of [id, table, dy, idd, td, dyd, yc, yg, dc, dg, dg2]) t?.dispose();
    expect(memory()).toEqual(m0);
  });

  it('crossEntropy forward and backward match the CPU', () => {
    const m0 = memory();
    for (const [T, V] of [[300, 77], [8, 5000]] as const) {
      const logits = Tensor.from(randn(T * V, 10, 3), { shape: [T, V] });
      const tg = Tensor.from(ids(T, V, 11), { shape: [T] });
      const [ld, tgd] = [logits, tg].map((t) => t.to('cuda'));
      const c = crossEntropy(logits, tg);
      const g = crossEntropy(ld!, tgd!);
      const g2 = crossEntropy(ld!, tgd!);
      expect(Math.abs(g.loss - c.loss)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(c.loss)));
      expect(g2.loss).toBe(g.loss);
      expectClose(f32(g.lse), f32(c.lse), { atol: 1e-5, rtol: 1e-6 }, 'lse');
      const dc = crossEntropyBackward(0.7, logits, tg, c.lse);
      const dg = crossEntropyBackward(0.7, ld!, tgd!, g.lse);
      expectClose(f32(dg), f32(dc), { atol: 1e-7, rtol: 1e-4 }, 'dlogits');
      for (const t of [logits, tg, ld, tgd, c.lse, g.lse, g2.lse, dc, dg]) t?.dispose();
    }
    expect(memory()).toEqual(m0);
  });

  it('out-of-range ids and targets on the device give NaN rows and a NaN loss', () => {
    const m0 = memory();
    const table = Tensor.from(randn(4 * 3, 1), { shape: [4, 3] }).to('cuda');
    const id = Tensor.from(new Int32Array([0, 9, 3]), { shape: [3] }).to('cuda');
    const e = embedding(table, id);
    const y = f32(e);
    e.dispose();
    expect(Number.isNaN(y[3]) && Number.isNaN(y[5])).toBe(true);
    expect(Number.isNaN(y[0]) || Number.isNaN(y[6])).toBe(false);
    const logits = Tensor.from(randn(2 * 4, 2), { shape: [2, 4] }).to('cuda');
    const tg = Tensor.from(new Int32Array([1, -1]), { shape: [2] }).to('cuda');
    const ce = crossEntropy(logits, tg);
    expect(Number.isNaN(ce.loss)).toBe(true);
    for (const t of [table, id, logits, tg, ce.lse]) t.dispose();
    expect(memory()).toEqual(m0);
  });

  it('AdamW dense (3 steps) and sparse rows match the CPU', () => {
    const m0 = memory();
    const n = 5000;
    const opts = { lr: 1e-2, weightDecay: 0.1 };
    const p = Tensor.from(randn(n, 1), { shape: [n] });
    const m = Tensor.zeros([n]);
    const v = Tensor.zeros([n]);
    const [pd, md, vd] = [p, m, v].map((t) => t.to('cuda'));
    for (let step = 1; step <= 3; step++) {
      const g = Tensor.from(randn(n, 10 + step), { shape: [n] });
      const gd = g.to('cuda');
      adamwStep(p, g, m, v, step, opts);
      adamwStep(pd!, gd, md!, vd!, step, opts);
      g.dispose();
      gd.dispose();
    }
    expectClose(f32(pd!), f32(p), { atol: 1e-6, rtol: 1e-6 }, 'p');
    expectClose(f32(vd!), f32(v), { atol: 1e-9, rtol: 1e-6 }, 'v');

    const [N, D] = [300, 24];
    const tab = Tensor.from(randn(N * D, 2), { shape: [N, D] });
    const mt = Tensor.zeros([N, D]);
    const vt = Tensor.zeros([N, D]);
    const steps = Tensor.from(ids(N, 4, 3), { shape: [N] });
    const [tabd, mtd, vtd, stepsd] = [tab, mt, vt, steps].map((t) => t.to('cuda'));
    const rowsArr = Int32Array.from({ length: 90 }, (_, i) => i * 3 + 1);
    const rows = Tensor.from(rowsArr, { shape: [90] });
    const values = Tensor.from(randn(90 * D, 5), { shape: [90, D] });
    const grad = { rows, values, numRows: N };
    const gradd = { rows: rows.to('cuda'), values: values.to('cuda'), numRows: N };
    sparseAdamwStep(tab, mt, vt, steps, grad, opts);
    sparseAdamwStep(tabd!, mtd!, vtd!, stepsd!, gradd, opts);
    expectClose(f32(tabd!), f32(tab), { atol: 1e-6, rtol: 1e-6 }, 'table');
    expect(Array.from(stepsd!.data() as Int32Array)).toEqual(Array.from(steps.data() as Int32Array));
    for (const t of [p, m, v, pd, md, vd, tab, mt, vt, steps, tabd, mtd, vtd, stepsd, rows, values, gradd.rows, gradd.values])
      t?.dispose();
    expect(memory()).toEqual(m0);
  });

  it('linear forward and backward match the CPU', () => {
    const m0 = memory();
    for (const [T, K, N] of [[37, 20, 9], [300, 130, 260]] as const) {
      const x = Tensor.from(randn(T * K, 1), { shape: [T, K] });
      const w = Tensor.from(randn(N * K, 2), { shape: [N, K] });
      const b = Tensor.from(randn(N, 3), { shape: [N] });
      const dy = Tensor.from(randn(T * N, 4), { shape: [T, N] });
      const [xd, wd, bd, dyd] = [x, w, b, dy].map((t) => t.to('cuda'));
      const yc = linear(x, w, b);
      const yg = linear(xd!, wd!, bd);
      expectClose(f32(yg), f32(yc), { atol: 1e-4, rtol: 1e-4 }, 'y');
      const gc = linearBackward(dy, x, w, { bias: true });
      const gg = linearBackward(dyd!, xd!, wd!, { bias: true });
      const gg2 = linearBackward(dyd!, xd!, wd!, { bias: true });
      for (const k of ['dx', 'dw', 'db'] as const) {
        expectClose(f32(gg[k]!), f32(gc[k]!), { atol: 1e-3, rtol: 1e-4 }, k);
        expectBitIdentical(f32(gg[k]!), f32(gg2[k]!), `${k} (determinism)`);
      }
      for (const t of [x, w, b, dy, xd, wd, bd, dyd, yc, yg, ...Object.values(gc), ...Object.values(gg), ...Object.values(gg2)])
        t?.dispose();
    }
    expect(memory()).toEqual(m0);
  });

  it('dropout has the CPU mask bit for bit; sumSquares, clipGradNormTensors (scaleInPlace) match the CPU', () => {
    const m0 = memory();
    const n = 50000;
    const x = Tensor.from(randn(n, 5), { shape: [n] });
    const xd = x.to('cuda');
    const yc = dropout(x, 0.3, 42);
    const yg = dropout(xd, 0.3, 42);
    expectBitIdentical(f32(yg), f32(yc), 'dropout');
    expect(Math.abs(sumSquares(xd) - sumSquares(x))).toBeLessThanOrEqual(1e-9 * sumSquares(x));
    expect(sumSquares(xd)).toBe(sumSquares(xd));
    const nc = clipGradNormTensors([x], 1);
    const ng = clipGradNormTensors([xd], 1);
    expect(Math.abs(ng - nc)).toBeLessThanOrEqual(1e-9 * nc);
    expectClose(f32(xd), f32(x), { atol: 1e-9, rtol: 1e-6 }, 'clipped');
    for (const t of [x, xd, yc, yg]) t.dispose();
    expect(memory()).toEqual(m0);
  });

  it('rejects mixed devices and the reference impl on cuda tensors', () => {
    const m0 = memory();
    const x = Tensor.from(randn(4 * 3, 1), { shape: [4, 3] }).to('cuda');
    const g = Tensor.zeros([3]);
    const gd = Tensor.zeros([3], { device: 'cuda' });
    expect(() => layerNorm(x, g, g)).toThrow(DeviceError);
    expect(() => layerNorm(x, gd, gd, 1e-5, { impl: 'ref' })).toThrow(DeviceError);
    const p = Tensor.zeros([3], { device: 'cuda' });
    expect(() => adamwStep(p, g, p, p, 1, { lr: 1e-3 })).toThrow(DeviceError);
    expect(() => adamwStep(p, gd, p, p, 1, { lr: 1e-3, impl: 'ref' })).toThrow(DeviceError);
    for (const t of [x, g, gd, p]) t.dispose();
    expect(memory()).toEqual(m0);
  });
});
