// The Transformer ops (lib/ops/nn.ts): linear, embedding, layerNorm, attention (causal, rotary), crossEntropy,
// dropout, clipGradNorm. Each: cpu against the float64-accumulating ref (forward and backward), the ref's backward
// against finite differences of the ref's forward (directional derivatives, float64 objective), determinism (two runs
// and 1 vs 2 threads bit-identical), bad input (a typed error, the process survives), no leaks.
import { describe, expect, test } from 'vitest';

import { DTypeError, ShapeError, Tensor } from '../../lib/index.js';
import * as nn from '../../lib/ops/nn.js';
import { expectBitIdentical, expectClose, guardLeaks, randn, withThreads } from '../helpers.js';

guardLeaks();

type Impl = 'cpu' | 'ref';
interface Case {
  name: string;
  /** Differentiable inputs. */
  inputs: () => Record<string, Tensor>;
  /** Forward: the output tensor (the caller disposes everything). */
  forward: (x: Record<string, Tensor>, impl: Impl) => { y: Tensor; extra: Tensor[] };
  /** Backward: gradients of Σ y ⊙ dy with respect to every input. */
  backward: (x: Record<string, Tensor>, dy: Tensor, impl: Impl) => Record<string, Tensor>;
  tol?: { atol: number; rtol: number };
}

function f32(t: Tensor): Float32Array {
  return t.data() as Float32Array;
}

const T = 10;
const cases: Case[] = [
  {
    name: 'linear',
    inputs: () => ({ x: Tensor.from(randn(T * 6, 1), { shape: [T, 6] }), w: Tensor.from(randn(5 * 6, 2), { shape: [5, 6] }), b: Tensor.from(randn(5, 3), { shape: [5] }) }),
    forward: (x, impl) => ({ y: nn.linear(x.x, x.w, x.b, { impl }), extra: [] }),
    backward: (x, dy, impl) => {
      const g = nn.linearBackward(dy, x.x, x.w, { bias: true, impl });
      return { x: g.dx!, w: g.dw, b: g.db! };
    },
  },
  {
    name: 'layerNorm',
    inputs: () => ({ x: Tensor.from(randn(T * 8, 4, 2), { shape: [T, 8] }), g: Tensor.from(randn(8, 5), { shape: [8] }), b: Tensor.from(randn(8, 6), { shape: [8] }) }),
    forward: (x, impl) => {
      const r = nn.layerNorm(x.x, x.g, x.b, 1e-5, { impl });
      return { y: r.y, extra: [r.saved.mean, r.saved.rstd] };
    },
    backward: (x, dy, impl) => {
      const r = nn.layerNorm(x.x, x.g, x.b, 1e-5, { impl });
      const g = nn.layerNormBackward(dy, x.x, x.g, r.saved, { impl });
      for (const t of [r.y, r.saved.mean, r.saved.rstd]) t.dispose();
      return { x: g.dx, g: g.dg, b: g.db };
    },
  },
  {
    name: 'attention (B=2, S=5, H=2, dh=4)',
    inputs: () => ({ qkv: Tensor.from(randn(10 * 24, 7), { shape: [10, 24] }) }),
    forward: (x, impl) => {
      const r = nn.attention(x.qkv, { B: 2, S: 5, H: 2 }, { impl });
      return { y: r.out, extra: [r.saved.qr, r.saved.kr, r.saved.p] };
    },
    backward: (x, dy, impl) => {
      const r = nn.attention(x.qkv, { B: 2, S: 5, H: 2 }, { impl });
      const d = nn.attentionBackward(dy, x.qkv, { B: 2, S: 5, H: 2 }, r.saved, { impl });
      for (const t of [r.out, r.saved.qr, r.saved.kr, r.saved.p]) t.dispose();
      return { qkv: d };
    },
  },
  {
    name: 'crossEntropy',
    inputs: () => ({ logits: Tensor.from(randn(T * 7, 8, 2), { shape: [T, 7] }) }),
    forward: (x, impl) => {
      const tg = Tensor.from(Int32Array.from({ length: T }, (_, i) => (i * 3) % 7));
      const r = nn.crossEntropy(x.logits, tg, { impl });
      return { y: Tensor.from([r.loss]), extra: [r.lse, tg] };
    },
    backward: (x, dy, impl) => {
      const tg = Tensor.from(Int32Array.from({ length: T }, (_, i) => (i * 3) % 7));
      const r = nn.crossEntropy(x.logits, tg, { impl });
      const d = nn.crossEntropyBackward(dy.item(), x.logits, tg, r.lse, { impl });
      r.lse.dispose();
      tg.dispose();
      return { logits: d };
    },
  },
];

describe('nn ops against the reference and finite differences', () => {
  for (const c of cases) {
    test(`${c.name}: cpu = ref (forward, backward); ref backward = finite differences; deterministic`, async () => {
      const x = c.inputs();
      const fr = c.forward(x, 'ref');
      const fc = c.forward(x, 'cpu');
      expectClose(f32(fc.y), f32(fr.y), { atol: 1e-5, rtol: 1e-4 }, `${c.name} forward`);
      const dy = Tensor.from(randn(fr.y.size, 99), { shape: fr.y.shape });
      const gr = c.backward(x, dy, 'ref');
      const gc = c.backward(x, dy, 'cpu');
      for (const k of Object.keys(gr)) expectClose(f32(gc[k]), f32(gr[k]), { atol: 1e-5, rtol: 1e-4 }, `${c.name} d${k}`);
      // Directional finite differences of Σ ref(x)·dy (float64 objective).
      for (const k of Object.keys(x)) {
        const u = randn(x[k].size, 123);
        const xs = f32(x[k]);
        const orig = xs.slice();
        const obj = (s: number): number => {
          for (let i = 0; i < xs.length; i++) xs[i] = orig[i] + s * u[i];
          const r = c.forward(x, 'ref');
          const y = f32(r.y);
          const d = f32(dy);
          let v = 0;
          for (let i = 0; i < y.length; i++) v += y[i] * d[i];
          r.y.dispose();
          r.extra.forEach((t) => t.dispose());
          return v;
        };
        const eps = 1e-3;
        const numeric = (obj(eps) - obj(-eps)) / (2 * eps);
        xs.set(orig);
        let analytic = 0;
        const g = f32(gr[k]);
        for (let i = 0; i < g.length; i++) analytic += g[i] * u[i];
        expect(Math.abs(numeric - analytic), `${c.name} d${k}: analytic ${analytic} vs numeric ${numeric}`).toBeLessThan(2e-3 * (1 + Math.abs(analytic)));
      }
      // Determinism: two runs and 1 vs 2 threads, bit for bit.
      const g1 = await withThreads(1, () => c.backward(x, dy, 'cpu'));
      const g2 = await withThreads(2, () => c.backward(x, dy, 'cpu'));
      for (const k of Object.keys(gc)) {
        expectBitIdentical(f32(g1[k]), f32(gc[k]), `${c.name} d${k} 1 thread`);
        expectBitIdentical(f32(g2[k]), f32(gc[k]), `${c.name} d${k} 2 threads`);
      }
      for (const t of [...Object.values(x), fr.y, fc.y, ...fr.extra, ...fc.extra, dy, ...Object.values(gr), ...Object.values(gc), ...Object.values(g1), ...Object.values(g2)]) t.dispose();
    });
  }

  test('attention is causal: the output at position i does not depend on later positions', () => {
    const qkv = Tensor.from(randn(6 * 12, 5), { shape: [6, 12] });
    const a = nn.attention(qkv, { B: 1, S: 6, H: 2 });
    const q = f32(qkv);
    for (let c = 0; c < 12; c++) q[5 * 12 + c] += 1; // perturb the last position
    const b = nn.attention(qkv, { B: 1, S: 6, H: 2 });
    expectBitIdentical(f32(a.out).subarray(0, 5 * 4), f32(b.out).subarray(0, 5 * 4), 'positions 0..4');
    for (const t of [qkv, a.out, b.out, ...Object.values(a.saved), ...Object.values(b.saved)]) t.dispose();
  });

  test('embedding: rows by id; backward sums rows per id; matches the ref; ids out of range throw', () => {
    const w = Tensor.from(randn(5 * 3, 1), { shape: [5, 3] });
    const ids = Tensor.from(Int32Array.of(4, 0, 4, 2));
    const y = nn.embedding(w, ids);
    expect(Array.from(f32(y).subarray(0, 3))).toEqual(Array.from(f32(w).subarray(12, 15)));
    const dy = Tensor.from(randn(4 * 3, 2), { shape: [4, 3] });
    const dw = nn.embeddingBackward(dy, ids, 5);
    const dwr = nn.embeddingBackward(dy, ids, 5, { impl: 'ref' });
    expectClose(f32(dw), f32(dwr));
    expect(f32(dw)[12]).toBeCloseTo(f32(dy)[0] + f32(dy)[6], 6);
    expect(f32(dw)[3]).toBe(0);
    const bad = Tensor.from(Int32Array.of(5));
    expect(() => nn.embedding(w, bad)).toThrow(/ids\[0\] must be in \[0, 5\), got 5/);
    for (const t of [w, ids, y, dy, dw, dwr, bad]) t.dispose();
  });

  test('dropout: keeps about 1 − p, scales by 1/(1 − p), the same seed gives the same mask (backward)', () => {
    const x = Tensor.full([10000], 1);
    const y = nn.dropout(x, 0.25, 7);
    const kept = f32(y).filter((v) => v !== 0);
    expect(kept.length / 10000).toBeGreaterThan(0.72);
    expect(kept.length / 10000).toBeLessThan(0.78);
    expect(kept[0]).toBeCloseTo(1 / 0.75, 6);
    const y2 = nn.dropout(x, 0.25, 7);
    expectBitIdentical(f32(y), f32(y2));
    expect(() => nn.dropout(x, 1, 7)).toThrow(/p must be in \[0, 1\)/);
    for (const t of [x, y, y2]) t.dispose();
  });

  test('clipGradNorm: global norm over tensors, scales only above the limit, thread-count independent', async () => {
    const a = Tensor.from([3, 0]);
    const b = Tensor.from([0, 4]);
    expect(nn.clipGradNorm([a, b], 10)).toBeCloseTo(5, 6);
    expect(a.toArray()).toEqual([3, 0]);
    expect(nn.clipGradNorm([a, b], 1)).toBeCloseTo(5, 6);
    expect(Math.hypot(...(a.toArray() as number[]), ...(b.toArray() as number[]))).toBeCloseTo(1, 5);
    const big = Tensor.from(randn(100_000, 3));
    const s1 = await withThreads(1, () => nn.sumSquares(big));
    const s2 = await withThreads(2, () => nn.sumSquares(big));
    expect(s1).toBe(s2);
    for (const t of [a, b, big]) t.dispose();
  });

  test('bad input: typed errors naming the op and argument, the process survives', () => {
    const x = Tensor.from(randn(12, 1), { shape: [3, 4] });
    const w = Tensor.from(randn(8, 2), { shape: [2, 4] });
    const wBad = Tensor.from(randn(10, 2), { shape: [2, 5] });
    const xi = Tensor.from(Int32Array.of(1, 2, 3));
    expect(() => nn.linear(x, wBad)).toThrow(ShapeError);
    expect(() => nn.linear(x, wBad)).toThrow(/linear: w must have shape \[2, 4\], got \[2, 5\]/);
    expect(() => nn.linear(xi, w)).toThrow(DTypeError);
    const qkv = Tensor.zeros([6, 12]);
    expect(() => nn.attention(qkv, { B: 2, S: 4, H: 2 })).toThrow(/qkv has 6 rows, expected B·S = 2·4 = 8/);
    expect(() => nn.attention(qkv, { B: 1, S: 6, H: 4 })).toThrow(/head width D\/H must be even/);
    const logits = Tensor.zeros([3, 4]);
    const tg = Tensor.from(Int32Array.of(0, 4, 1));
    expect(() => nn.crossEntropy(logits, tg)).toThrow(/targets\[1\] must be in \[0, 4\), got 4/);
    x.dispose();
    expect(() => nn.linear(x, w)).toThrow(/linear: x is disposed/);
    for (const t of [w, wBad, xi, qkv, logits, tg]) t.dispose();
  });
});
