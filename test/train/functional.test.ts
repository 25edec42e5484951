/**
 * The tape wrappers of the sparse FFN ops (lib/nn/functional.ts): each is one node whose backward calls the
 * native backward; checked against finite differences of the whole node (directional derivatives, see
 * gradcheck.ts), including the auxiliary losses' gradients and the row-sparse table gradients.
 */
import { describe, expect, it } from 'vitest';

import { Embedding, Tensor, noGrad, sparseRowsToDense, tidy } from '../../lib/index.js';
import { Variable, record1 } from '../../lib/autograd.js';
import * as F from '../../lib/nn/functional.js';
import { Parameter } from '../../lib/nn/module.js';
import { checkDirectional, leaf } from './gradcheck.js';
import { guardLeaks, randn } from '../helpers.js';

/** Σ y ⊙ R for a constant R: turns any output into a scalar with a generic upstream gradient. */
function dotConst(y: Variable, R: Float32Array): Variable {
  const yd = y.data.data() as Float32Array;
  let s = 0;
  for (let i = 0; i < yd.length; i++) s += yd[i] * R[i];
  return record1('dotConst', [y], Tensor.fromHost(Float32Array.of(s), []), () => [Tensor.fromHost(R.slice(), y.shape)]);
}

function sparseParam(shape: number[], seed: number, scale: number): Parameter {
  return new Parameter(Tensor.fromHost(randn(shape[0] * shape[1], seed, scale), shape), 'table', { sparse: true });
}

describe('functional wrappers of the sparse ops', () => {
  guardLeaks();
  const T = 12;
  const D = 8;

  it('ffn (dense and Top-K) gradients match finite differences', () => {
    for (const topk of [0, 5]) {
      const x = leaf([T, D], 1);
      const w1 = leaf([D, 16], 2, 0.4);
      const b1 = leaf([16], 3, 0.1);
      const w2 = leaf([16, D], 4, 0.3);
      const b2 = leaf([D], 5, 0.1);
      const R = randn(T * D, 6);
      checkDirectional(
        [['x', x], ['w1', w1], ['b1', b1], ['w2', w2], ['b2', b2]],
        () => dotConst(F.ffn(x, w1, b1, w2, b2, { topk }), R),
        { eps: 1e-3 },
      );
      for (const v of [x, w1, b1, w2, b2]) v.dispose();
    }
  });

  for (const [name, opts, wEnt, wBal] of [
    ['sigma-moe top-2 of 4 with entropy regulariser', { E: 4, k: 2, gate: 'sigmoid', select: 'topk' }, 0.5, 0],
    ['switch top-1 with capacity and balance loss', { E: 4, k: 1, gate: 'softmax', select: 'topk', capacity: 4 }, 0, 0.5],
    ['softmax top-2 renormalised', { E: 4, k: 2, gate: 'softmax-renorm', select: 'topk' }, 0.3, 0.2],
    ['adaptive top-1/top-2', { E: 4, k: 2, gate: 'softmax', select: 'adaptive', threshold: 0.3 }, 0, 0.5],
  ] as [string, F.RouteOptions, number, number][]) {
    it(`moe node: ${name}: dx, dz (gates + aux), dW1, dW2 match finite differences`, () => {
      const x = leaf([T, D], 11);
      const z = leaf([T, 4], 12, 1.5);
      const w1 = leaf([4, D, 6], 13, 0.4);
      const w2 = leaf([4, 6, D], 14, 0.4);
      const R = randn(T * D, 15);
      let counts: Int32Array | null = null;
      const res = checkDirectional(
        [['x', x], ['z', z], ['w1', w1], ['w2', w2]],
        () => {
          const r = F.moe(x, z, w1, w2, opts);
          counts ??= r.counts;
          return F.weightedSum([dotConst(r.y, R), r.entropy, r.balance], [1, wEnt, wBal]);
        },
        { eps: 1e-3, rtol: 3e-2 },
      );
      expect(res.every((r) => Number.isFinite(r.numeric))).toBe(true);
      expect(counts!.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
      for (const v of [x, z, w1, w2]) v.dispose();
    });
  }

  it('moe node: the entropy and balance losses alone have the right gradient in z (every logit, not just the chosen)', () => {
    for (const [gate, wEnt, wBal] of [['sigmoid', 1, 0], ['softmax', 0, 1], ['softmax', 1, 1]] as const) {
      const x = leaf([T, D], 61);
      const z = leaf([T, 4], 62, 1.5);
      const w1 = leaf([4, D, 6], 63, 0.4, false);
      const w2 = leaf([4, 6, D], 64, 0.4, false);
      const res = checkDirectional(
        [['z', z]],
        () => {
          const r = F.moe(x, z, w1, w2, { E: 4, k: 2, gate, select: 'topk' });
          return F.weightedSum([r.entropy, r.balance], [wEnt, wBal]);
        },
        { eps: 1e-3, rtol: 1e-2, atol: 1e-6 },
      );
      expect(Math.abs(res[0].numeric)).toBeGreaterThan(1e-4);
      for (const v of [x, z, w1, w2]) v.dispose();
    }
  });

  it('moe node: every intermediate is freed after backward', () => {
    const x = leaf([T, D], 21);
    const z = leaf([T, 4], 22);
    const w1 = leaf([4, D, 6], 23);
    const w2 = leaf([4, 6, D], 24);
    const R = randn(T * D, 25);
    const l = dotConst(F.moe(x, z, w1, w2, { E: 4, k: 2, gate: 'sigmoid', select: 'topk' }).y, R);
    l.backward();
    l.dispose();
    for (const v of [x, z, w1, w2]) v.dispose();
  });

  it('PKM (Csordás: q = x, relu weights, per-head keys) → embedding bag: dq, dkeys and the sparse value gradient', () => {
    const n = 6;
    const H = 2;
    const x = leaf([T, D], 31);
    const keys = leaf([H, 2, n, D / 2], 32, 0.7);
    const values = sparseParam([n * n, D], 33, 0.5);
    const R = randn(T * D, 34);
    checkDirectional(
      [['x', x], ['keys', keys], ['values', values]],
      () => {
        const sel = F.pkmTopkSelect(x, keys, { H, Hq: 1, Dk: D, k: 3, act: 'relu' });
        return dotConst(F.embeddingBagSum(sel.idx, sel.weights, values), R);
      },
      { eps: 1e-3, rtol: 3e-2 },
    );
    for (const v of [x, keys, values]) v.dispose();
  });

  // A PEER read: n² experts, H heads of k = 3, query width Dk; leaves and tables drawn from seeds s, s+1, ...
  const n = 5;
  const H = 2;
  const Dk = 4;
  const peerLeaves = (s: number) => ({
    x: leaf([T, D], s),
    q: leaf([T, H * Dk], s + 1),
    keys: leaf([1, 2, n, Dk / 2], s + 2, 0.8),
    U: sparseParam([n * n, D], s + 3, 0.5),
    V: sparseParam([n * n, D], s + 4, 0.5),
  });

  it('PEER (shared keys, softmax per head, singleton experts): dx, dq, dkeys, sparse dU and dV', () => {
    const { x, q, keys, U, V } = peerLeaves(41);
    const R = randn(T * D, 46);
    checkDirectional(
      [['x', x], ['q', q], ['keys', keys], ['U', U], ['V', V]],
      () => {
        const sel = F.pkmTopkSelect(q, keys, { H, Hq: H, Dk, k: 3, act: 'softmax' });
        return dotConst(F.peer(x, sel.idx, sel.weights, U, V), R);
      },
      { eps: 1e-3, rtol: 3e-2 },
    );
    for (const v of [x, q, keys, U, V]) v.dispose();
  });

  it('sparse table gradients reuse their buffers from step to step and stay exact under accumulation', () => {
    const { x, q, keys, U, V } = peerLeaves(61);
    const bag = sparseParam([n * n, D], 66, 0.5);
    const tables = [U, V, bag];
    const R1 = randn(T * D, 67);
    const R2 = randn(T * D, 68);
    // One backward through a PEER read of U, V and an embedding-bag read of `bag`, upstream gradient R.
    const backward = (R: Float32Array) => {
      const sel = F.pkmTopkSelect(q, keys, { H, Hq: H, Dk, k: 3, act: 'softmax' });
      const l = dotConst(F.add(F.peer(x, sel.idx, sel.weights, U, V), F.embeddingBagSum(sel.idx, sel.weights, bag)), R);
      l.backward();
      l.dispose();
    };
    const dense = (p: Parameter) => sparseRowsToDense(p.sparseGrad!);
    const grads = () => tables.map((p) => {
      const t = dense(p);
      const a = t.data() as Float32Array;
      t.dispose();
      return a;
    });
    const buffers = () => tables.map((p) => p.sparseGrad!.values.data().buffer);

    backward(R1);
    const g1 = grads();
    const b1 = buffers();
    for (const p of tables) p.zeroGrad();
    backward(R2);
    const g2 = grads();
    // The second step wrote into the first step's buffers (no fresh hundreds of MB per step at 1024² rows).
    for (const [i, b] of buffers().entries()) expect(b).toBe(b1[i]);
    for (const p of tables) p.zeroGrad();
    backward(R1);
    expect(grads()).toEqual(g1);

    // Without zeroGrad the second gradient is merged into the pending one, which must not be overwritten even
    // though it lives in the reused buffers: the sum of the two single-step gradients, rounded to f32 once.
    backward(R2);
    const sum = g1.map((a, i) => a.map((v, j) => v + g2[i][j]));
    expect(grads()).toEqual(sum);
    for (const p of tables) p.zeroGrad();

    // A table read twice in one backward gets the same merged gradient.
    const sel = F.pkmTopkSelect(q, keys, { H, Hq: H, Dk, k: 3, act: 'softmax' });
    const l = F.add(
      dotConst(F.add(F.peer(x, sel.idx, sel.weights, U, V), F.embeddingBagSum(sel.idx, sel.weights, bag)), R1),
      dotConst(F.add(F.peer(x, sel.idx, sel.weights, U, V), F.embeddingBagSum(sel.idx, sel.weights, bag)), R2),
    );
    l.backward();
    l.dispose();
    expect(grads()).toEqual(sum);
    for (const v of [x, q, keys, U, V, bag]) v.dispose();
    expect(U.sparseWorkspace).toBeNull();
  });

  it('crossEntropy, embedding and Embedding.forward leave their constant inputs to the caller', () => {
    // ids and targets reused across steps and under noGrad, as a training loop over a fixed batch would.
    const emb = new Embedding(5, 3, { seed: 1 });
    const ids = Tensor.from([0, 4, 2, 4], { dtype: 'i32' });
    const targets = Tensor.from([1, 0, 2, 2], { dtype: 'i32' });
    const losses: number[] = [];
    const grads: number[][][] = [];
    for (let s = 0; s < 2; s++) {
      const l = F.crossEntropy(emb.forward(ids), targets);
      losses.push(l.data.item());
      l.backward();
      l.dispose();
      grads.push(emb.weight.grad!.toArray() as number[][]);
    }
    noGrad(() => tidy(() => losses.push(F.crossEntropy(F.embedding(emb.weight, ids), targets).data.item())));
    expect(losses[1]).toBe(losses[0]);
    expect(losses[2]).toBe(losses[0]);
    // The second backward accumulated the same gradient again.
    expect(grads[1]).toEqual(grads[0].map((r) => r.map((v) => Math.fround(2 * v))));
    expect(ids.toArray()).toEqual([0, 4, 2, 4]);
    expect(targets.toArray()).toEqual([1, 0, 2, 2]);
    // Disposing them right after the call does not affect the backward.
    const ids2 = ids.clone();
    const targets2 = targets.clone();
    emb.zeroGrad();
    const l = F.crossEntropy(emb.forward(ids2), targets2);
    ids2.dispose();
    targets2.dispose();
    l.backward();
    l.dispose();
    expect(emb.weight.grad!.toArray()).toEqual(grads[0]);
    for (const t of [ids, targets]) t.dispose();
    emb.dispose();
  });

  it('sparse gradients accumulate by row across backward calls', () => {
    const V = sparseParam([9, 2], 51, 1);
    V.accumulateSparse(Tensor.from([1, 4], { dtype: 'i32' }), Tensor.from([[1, 1], [2, 2]]));
    V.accumulateSparse(Tensor.from([0, 4, 8], { dtype: 'i32' }), Tensor.from([[3, 3], [4, 4], [5, 5]]));
    expect(V.sparseGrad!.rows.toArray()).toEqual([0, 1, 4, 8]);
    expect(V.sparseGrad!.values.toArray()).toEqual([[3, 3], [1, 1], [6, 6], [5, 5]]);
    V.dispose();
  });
});
