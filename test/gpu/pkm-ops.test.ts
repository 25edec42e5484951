/**
 * The PKM / PEER ops on the GPU (native/kernels/cuda/pkm.cu) against the CPU ops: pkmTopk forward (the same
 * indices) and backward for per-head, shared and single-query keys; embeddingBag and peerExperts
 * forward and backward (every PEER activation), the sparse table gradients (worst-case size: the CPU's rows, then
 * −1 rows with zero values) through sparseRowsToDense and a sparseAdamwStep on the device; determinism (two
 * backward runs bit-identical, many positions per row); NaN rows for out-of-range indices (the host cannot check
 * device indices); bad input with the CPU path's typed errors; batchNorm still CPU-only. Skipped with the probe's
 * reason where no GPU is present (test/gpu/pkm-emulated.test.ts checks the same kernels under host emulation).
 */
import { describe, expect, it } from 'vitest';

import {
  DeviceError, ShapeError, Tensor, batchNorm, embeddingBag, embeddingBagBackward, memory, peerExperts,
  peerExpertsBackward, pkmTopk, pkmTopkBackward, sparseAdamwStep, sparseRowsToDense, type PeerAct, type PkmScoreAct,
  type SparseRows,
} from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn, rng } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/pkm-ops', st);

const f32 = (t: Tensor) => t.data() as Float32Array;
const i32 = (t: Tensor) => t.data() as Int32Array;
// Indices in [0, N) drawn from `spread` rows spaced N / spread apart (repeats when spread is small).
const randIdx = (n: number, N: number, spread: number, seed: number) => {
  const r = rng(seed);
  const s = Math.min(spread, N);
  return Int32Array.from({ length: n }, () => Math.floor(r() * s) * Math.floor(N / s));
};

// A device sparse gradient against the CPU's: the same rows, then −1 rows with zero values; equal dense forms.
function expectSparse(g: SparseRows, c: SparseRows, what: string, tol: number): void {
  const U = c.rows.size;
  const rows = i32(g.rows);
  expect(g.rows.device).toBe('cuda');
  expect(Array.from(rows.subarray(0, U))).toEqual(Array.from(i32(c.rows)));
  expect(rows.subarray(U).every((r) => r === -1)).toBe(true);
  expect(f32(g.values).subarray(U * c.values.shape[1]).every((v) => v === 0)).toBe(true);
  const [dg, dc] = [sparseRowsToDense(g), sparseRowsToDense(c)];
  expectClose(f32(dg), f32(dc), { atol: tol, rtol: tol }, what);
  dg.dispose();
  dc.dispose();
}

const disposeSparse = (...s: SparseRows[]) => s.forEach((x) => (x.rows.dispose(), x.values.dispose()));

describe.skipIf(!st.gpu)('CUDA PKM / PEER row ops', () => {
  for (const [what, T, H, Hq, Hk, Dk, n, k, act] of [
    ['PKM per-head keys', 200, 4, 4, 4, 64, 128, 16, 'softmax'],
    ['PEER shared keys', 150, 8, 8, 1, 32, 256, 8, 'softmax-all'],
    ['Csordás single query', 100, 4, 1, 4, 48, 64, 4, 'relu'],
    ['sigmoid, k = n', 20, 2, 2, 2, 8, 6, 6, 'sigmoid'],
  ] as const) {
    it(`pkmTopk forward (same indices) and backward match the CPU, deterministic (${what})`, () => {
      const m0 = memory();
      const q = Tensor.from(randn(T * Hq * Dk, 21), { shape: [T, Hq, Dk] });
      const keys = Tensor.from(randn(Hk * 2 * n * (Dk / 2), 22), { shape: [Hk, 2, n, Dk / 2] });
      const [qd, kd] = [q, keys].map((t) => t.to('cuda')) as [Tensor, Tensor];
      const c = pkmTopk(q, keys, k, { act: act as PkmScoreAct, heads: H });
      const g = pkmTopk(qd, kd, k, { act: act as PkmScoreAct, heads: H });
      expect(g.indices.device).toBe('cuda');
      // The same slots (both select exactly; sub-key scores round differently, so a near-tie may swap: then the
      // scores at that place agree).
      const [gi, ci] = [i32(g.indices), i32(c.indices)];
      const [gs, cs] = [f32(g.scores), f32(c.scores)];
      let swaps = 0;
      for (let i = 0; i < ci.length; i++)
        if (gi[i] !== ci[i]) {
          swaps++;
          expect(Math.abs(gs[i] - cs[i])).toBeLessThan(1e-4);
        }
      expect(swaps).toBeLessThanOrEqual(Math.ceil(ci.length / 1000));
      expectClose(gs, cs, { atol: 1e-4, rtol: 1e-4 }, 'scores');
      expectClose(f32(g.weights), f32(c.weights), { atol: 1e-5, rtol: 1e-4 }, 'weights');
      // Backward from the CPU's selection on both devices.
      const dW = Tensor.from(randn(T * H * k, 23), { shape: [T, H, k] });
      const dWd = dW.to('cuda');
      const sel = { indices: c.indices.to('cuda'), scores: c.scores.to('cuda'), weights: c.weights.to('cuda'), act: c.act };
      const bc = pkmTopkBackward(dW, q, keys, c);
      const bg = pkmTopkBackward(dWd, qd, kd, sel);
      const bg2 = pkmTopkBackward(dWd, qd, kd, sel);
      for (const key of ['dq', 'dkeys'] as const) {
        expectClose(f32(bg[key]), f32(bc[key]), { atol: 1e-4, rtol: 1e-4 }, key);
        expectBitIdentical(f32(bg[key]), f32(bg2[key]), `${key} (determinism)`);
      }
      for (const t of [q, keys, qd, kd, dW, dWd, c.indices, c.scores, c.weights, g.indices, g.scores, g.weights,
        sel.indices, sel.scores, sel.weights, bc.dq, bc.dkeys, bg.dq, bg.dkeys, bg2.dq, bg2.dkeys])
        t.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  for (const [T, H, k, N, D, spread] of [
    [37, 2, 4, 50, 24, 50], // many positions per row
    [300, 4, 8, 65536, 64, 65536], // rows touched about once, three radix passes
    [700, 1, 3, 7, 5, 7], // seven rows, hundreds of positions each
  ] as const) {
    it(`embeddingBag forward and backward match the CPU, deterministic (T=${T}, J=${H * k}, N=${N}, D=${D})`, () => {
      const m0 = memory();
      const J = H * k;
      const idx = Tensor.from(randIdx(T * J, N, spread, 1), { shape: [T, H, k] });
      const w = Tensor.from(randn(T * J, 2), { shape: [T, H, k] });
      const V = Tensor.from(randn(N * D, 3), { shape: [N, D] });
      const dOut = Tensor.from(randn(T * D, 4), { shape: [T, D] });
      const [idxd, wd, Vd, dOutd] = [idx, w, V, dOut].map((t) => t.to('cuda'));
      const oc = embeddingBag(V, idx, w);
      const og = embeddingBag(Vd!, idxd!, wd!);
      expect(og.device).toBe('cuda');
      expectClose(f32(og), f32(oc), { atol: 1e-5, rtol: 1e-5 }, 'out');
      const gc = embeddingBagBackward(dOut, V, idx, w);
      const gg = embeddingBagBackward(dOutd!, Vd!, idxd!, wd!);
      const gg2 = embeddingBagBackward(dOutd!, Vd!, idxd!, wd!);
      expect(gg.dV.rows.shape).toEqual([Math.min(T * J, N)]);
      expectClose(f32(gg.dWeights), f32(gc.dWeights), { atol: 1e-4, rtol: 1e-4 }, 'dWeights');
      expectSparse(gg.dV, gc.dV, 'dV', 1e-4);
      expectBitIdentical(f32(gg.dWeights), f32(gg2.dWeights), 'dWeights (determinism)');
      expectBitIdentical(f32(gg.dV.values), f32(gg2.dV.values), 'dV (determinism)');
      for (const t of [idx, w, V, dOut, idxd, wd, Vd, dOutd, oc, og, gc.dWeights, gg.dWeights, gg2.dWeights]) t?.dispose();
      disposeSparse(gc.dV, gg.dV, gg2.dV);
      expect(memory()).toEqual(m0);
    });
  }

  for (const act of ['relu', 'gelu', 'silu', 'identity'] as PeerAct[]) {
    it(`peerExperts forward and backward match the CPU, deterministic (act ${act})`, () => {
      const m0 = memory();
      const [T, H, k, N, D] = [200, 4, 4, act === 'relu' ? 4096 : 60, 40];
      const J = H * k;
      const idx = Tensor.from(randIdx(T * J, N, N, 5), { shape: [T, H, k] });
      const g = Tensor.from(randn(T * J, 6), { shape: [T, H, k] });
      const x = Tensor.from(randn(T * D, 7), { shape: [T, D] });
      const U = Tensor.from(randn(N * D, 8, 0.3), { shape: [N, D] });
      const V = Tensor.from(randn(N * D, 9), { shape: [N, D] });
      const dOut = Tensor.from(randn(T * D, 10), { shape: [T, D] });
      const dv = [idx, g, x, U, V, dOut].map((t) => t.to('cuda'));
      const [idxd, gd, xd, Ud, Vd, dOutd] = dv as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
      const fc = peerExperts(x, U, V, idx, g, { act });
      const fg = peerExperts(xd, Ud, Vd, idxd, gd, { act });
      expect(fg.out.device).toBe('cuda');
      expectClose(f32(fg.out), f32(fc.out), { atol: 1e-4, rtol: 1e-4 }, 'out');
      expectClose(f32(fg.h), f32(fc.h), { atol: 1e-5, rtol: 1e-5 }, 'h');
      const bc = peerExpertsBackward(dOut, x, U, V, idx, g, fc.h, { act });
      const bg = peerExpertsBackward(dOutd, xd, Ud, Vd, idxd, gd, fg.h, { act });
      const bg2 = peerExpertsBackward(dOutd, xd, Ud, Vd, idxd, gd, fg.h, { act });
      expectClose(f32(bg.dx), f32(bc.dx), { atol: 1e-4, rtol: 1e-4 }, 'dx');
      expectClose(f32(bg.dGates), f32(bc.dGates), { atol: 1e-4, rtol: 1e-4 }, 'dGates');
      expectSparse(bg.dU, bc.dU, 'dU', 1e-4);
      expectSparse(bg.dV, bc.dV, 'dV', 1e-4);
      for (const key of ['dx', 'dGates'] as const) expectBitIdentical(f32(bg[key]), f32(bg2[key]), `${key} (determinism)`);
      for (const key of ['dU', 'dV'] as const) expectBitIdentical(f32(bg[key].values), f32(bg2[key].values), `${key} (determinism)`);
      for (const t of [...dv, idx, g, x, U, V, dOut, fc.out, fc.h, fg.out, fg.h, bc.dx, bc.dGates, bg.dx, bg.dGates, bg2.dx, bg2.dGates])
        t.dispose();
      disposeSparse(bc.dU, bc.dV, bg.dU, bg.dV, bg2.dU, bg2.dV);
      expect(memory()).toEqual(m0);
    });
  }

  it('a device sparse gradient (with its −1 padding) drives sparseAdamwStep like the CPU one', () => {
    const m0 = memory();
    const [T, J, N, D] = [64, 8, 1000, 16];
    const idx = Tensor.from(randIdx(T * J, N, 300, 11), { shape: [T, J] });
    const w = Tensor.from(randn(T * J, 12), { shape: [T, J] });
    const V = Tensor.from(randn(N * D, 13), { shape: [N, D] });
    const dOut = Tensor.from(randn(T * D, 14), { shape: [T, D] });
    const [idxd, wd, Vd, dOutd] = [idx, w, V, dOut].map((t) => t.to('cuda')) as Tensor[];
    const gc = embeddingBagBackward(dOut, V, idx, w);
    const gg = embeddingBagBackward(dOutd, Vd, idxd, wd);
    const state = (device: 'cpu' | 'cuda') =>
      [Tensor.zeros([N, D], { device }), Tensor.zeros([N, D], { device }), Tensor.zeros([N], { device, dtype: 'i32' })];
    const [mc, vc, sc] = state('cpu');
    const [mg, vg, sg] = state('cuda');
    sparseAdamwStep(V, mc, vc, sc, gc.dV, { lr: 1e-2, weightDecay: 0 });
    sparseAdamwStep(Vd, mg, vg, sg, gg.dV, { lr: 1e-2, weightDecay: 0 });
    expectClose(f32(Vd), f32(V), { atol: 1e-5, rtol: 1e-5 }, 'p');
    expect(Array.from(i32(sg))).toEqual(Array.from(i32(sc)));
    for (const t of [idx, w, V, dOut, idxd, wd, Vd, dOutd, gc.dWeights, gg.dWeights, mc, vc, sc, mg, vg, sg]) t.dispose();
    disposeSparse(gc.dV, gg.dV);
    expect(memory()).toEqual(m0);
  });

  it('out-of-range indices on the device give NaN rows and are left out of the table gradients', () => {
    const m0 = memory();
    const [T, J, N, D] = [6, 3, 10, 4];
    const ids = randIdx(T * J, N, N, 15);
    ids[4] = N + 3; // token 1
    const idx = Tensor.from(ids, { shape: [T, J] }).to('cuda');
    const w = Tensor.from(randn(T * J, 16), { shape: [T, J] }).to('cuda');
    const V = Tensor.from(randn(N * D, 17), { shape: [N, D] }).to('cuda');
    const dOut = Tensor.from(randn(T * D, 18), { shape: [T, D] }).to('cuda');
    const out = f32(embeddingBag(V, idx, w));
    for (let t = 0; t < T; t++) expect(out.subarray(t * D, (t + 1) * D).every(Number.isNaN)).toBe(t === 1);
    const g = embeddingBagBackward(dOut, V, idx, w);
    const dw = f32(g.dWeights);
    expect(Number.isNaN(dw[4])).toBe(true);
    expect(Array.from(dw).filter(Number.isNaN).length).toBe(1);
    expect(Array.from(i32(g.dV.rows))).not.toContain(N + 3);
    expect(f32(g.dV.values).every(Number.isFinite)).toBe(true);
    for (const t of [idx, w, V, dOut, g.dWeights]) t.dispose();
    disposeSparse(g.dV);
    expect(memory()).toEqual(m0);
  });

  it('bad input gets the CPU path\'s typed errors; mixed devices, impl ref on cuda and batchNorm on cuda are DeviceErrors', () => {
    const m0 = memory();
    const V = Tensor.zeros([10, 4], { device: 'cuda' });
    const idx = Tensor.zeros([3, 2], { device: 'cuda', dtype: 'i32' });
    const w = Tensor.zeros([3, 2], { device: 'cuda' });
    const wBad = Tensor.zeros([3, 3], { device: 'cuda' });
    const wHost = Tensor.zeros([3, 2]);
    expect(() => embeddingBag(V, idx, wBad)).toThrow(ShapeError);
    expect(() => embeddingBag(V, idx, wHost)).toThrow(/embeddingBag: weights is on cpu but V is on cuda/);
    expect(() => embeddingBag(V, idx, w, { impl: 'ref' })).toThrow(DeviceError);
    const dOutBad = Tensor.zeros([3, 5], { device: 'cuda' });
    expect(() => embeddingBagBackward(dOutBad, V, idx, w)).toThrow(ShapeError);
    const x = Tensor.zeros([3, 4], { device: 'cuda' });
    expect(() => peerExperts(x, V, V, idx, w, { act: 'tanh' as PeerAct })).toThrow(RangeError);
    expect(() => peerExperts(x, V, wHost, idx, w)).toThrow(ShapeError);
    const q = Tensor.zeros([3, 1, 4], { device: 'cuda' });
    const keys = Tensor.zeros([1, 2, 4, 2], { device: 'cuda' });
    expect(() => pkmTopk(q, keys, 5)).toThrow(/pkmTopk: k must be an integer in \[1, n=4\]/);
    const keysBad = Tensor.zeros([1, 2, 4, 3], { device: 'cuda' });
    expect(() => pkmTopk(q, keysBad, 2)).toThrow(ShapeError);
    expect(() => pkmTopk(q, keys, 2, { impl: 'ref' })).toThrow(DeviceError);
    expect(() => batchNorm(x, null, null, null, { training: true })).toThrow(DeviceError);
    for (const t of [V, idx, w, wBad, wHost, dOutBad, x, q, keys, keysBad]) t.dispose();
    expect(memory()).toEqual(m0);
  });
});
