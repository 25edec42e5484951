// embeddingBag / embeddingBagBackward: fast CPU kernels against a float64 TS reference and the native reference,
// finite differences, sparse vs dense gradients, duplicates, every ISA, determinism, the 1024²-row table, bad input.
import { describe, expect, it } from 'vitest';

import {
  DTypeError,
  DisposedError,
  ShapeError,
  Tensor,
  embeddingBag,
  embeddingBagBackward,
  SparseGradWorkspace,
  adviseHugePages,
  sparseRowsToDense,
  type SparseRows,
} from '../../lib/index.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, rng, withIsa, withThreads } from '../helpers.js';

function randIdx(n: number, N: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * N));
}

// Float64 forward.
function bagF64(V: ArrayLike<number>, D: number, idx: Int32Array, w: ArrayLike<number>, T: number, J: number): Float64Array {
  const out = new Float64Array(T * D);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < J; j++) {
      const r = idx[t * J + j];
      for (let i = 0; i < D; i++) out[t * D + i] += w[t * J + j] * V[r * D + i];
    }
  return out;
}

function disposeSparse(s: SparseRows) {
  s.rows.dispose();
  s.values.dispose();
}

describe('embeddingBag', () => {
  guardLeaks();
  const T = 17;
  const J = 6;
  const N = 23;
  const D = 19;

  it('forward matches float64 on every ISA and the reference', async () => {
    using V = Tensor.from(randn(N * D, 1), { shape: [N, D] });
    using idx = Tensor.from(randIdx(T * J, N, 2), { shape: [T, 2, 3] });
    using w = Tensor.from(randn(T * J, 3), { shape: [T, 2, 3] });
    const want = bagF64(V.data() as Float32Array, D, idx.data() as Int32Array, w.data() as Float32Array, T, J);
    using ref = embeddingBag(V, idx, w, { impl: 'ref' });
    expectClose(ref.data() as Float32Array, want, undefined, 'ref');
    for (const isa of await cpuIsas()) {
      using got = await withIsa(isa, () => embeddingBag(V, idx, w));
      expect(got.shape).toEqual([T, D]);
      expectClose(got.data() as Float32Array, want, undefined, isa);
    }
  });

  it('backward: dWeights and the sparse dV match the reference and finite differences; sparse equals dense', async () => {
    using V = Tensor.from(randn(N * D, 4), { shape: [N, D] });
    // Force duplicates within a token and across tokens: only 9 distinct rows for 102 positions.
    using idx = Tensor.from(randIdx(T * J, 9, 5).map((r) => r * 2), { shape: [T, J] });
    using w = Tensor.from(randn(T * J, 6), { shape: [T, J] });
    using dOut = Tensor.from(randn(T * D, 7), { shape: [T, D] });
    const ref = embeddingBagBackward(dOut, V, idx, w, { impl: 'ref' });
    // Unique rows ascending.
    const rows = Array.from(ref.dV.rows.data() as Int32Array);
    expect(rows).toEqual([...new Set(Array.from(idx.data() as Int32Array))].sort((a, b) => a - b));
    // Finite differences of L = <dOut, out> with respect to V and w (float64).
    const g = dOut.data() as Float32Array;
    const L = (VV: ArrayLike<number>, ww: ArrayLike<number>) =>
      bagF64(VV, D, idx.data() as Int32Array, ww, T, J).reduce((s, o, i) => s + o * g[i], 0);
    const fdV = finiteDiff((x) => L(x, w.data() as Float32Array), Float64Array.from(V.data() as Float32Array));
    const fdW = finiteDiff((x) => L(V.data() as Float32Array, x), Float64Array.from(w.data() as Float32Array));
    using denseRef = sparseRowsToDense(ref.dV);
    expectClose(denseRef.data() as Float32Array, fdV, { atol: 1e-4, rtol: 1e-4 }, 'ref dV vs finite differences');
    expectClose(ref.dWeights.data() as Float32Array, fdW, { atol: 1e-4, rtol: 1e-4 }, 'ref dWeights vs finite differences');
    for (const isa of await cpuIsas()) {
      const got = await withIsa(isa, () => embeddingBagBackward(dOut, V, idx, w));
      expect(Array.from(got.dV.rows.data() as Int32Array)).toEqual(rows);
      expect(got.dV.values.shape).toEqual([rows.length, D]);
      expectClose(got.dV.values.data() as Float32Array, ref.dV.values.data() as Float32Array, undefined, `${isa} dV`);
      expectClose(got.dWeights.data() as Float32Array, ref.dWeights.data() as Float32Array, undefined, `${isa} dW`);
      expect(got.dWeights.shape).toEqual([T, J]);
      disposeSparse(got.dV);
      got.dWeights.dispose();
    }
    disposeSparse(ref.dV);
    ref.dWeights.dispose();
  });

  // dV is summed in registers one column block at a time (pkm_rows.h stream_row_sums): D = 1100 takes many full
  // blocks, then single vectors, then a scalar tail.
  it('backward with wide rows (D = 1100) matches the reference on every ISA', async () => {
    const DD = 1100;
    using V = Tensor.from(randn(10 * DD, 1), { shape: [10, DD] });
    using idx = Tensor.from(randIdx(4 * 3, 10, 2), { shape: [4, 3] });
    using w = Tensor.from(randn(4 * 3, 3), { shape: [4, 3] });
    using dOut = Tensor.from(randn(4 * DD, 4), { shape: [4, DD] });
    const ref = embeddingBagBackward(dOut, V, idx, w, { impl: 'ref' });
    for (const isa of await cpuIsas()) {
      const got = await withIsa(isa, () => embeddingBagBackward(dOut, V, idx, w));
      expect(Array.from(got.dV.rows.data() as Int32Array)).toEqual(Array.from(ref.dV.rows.data() as Int32Array));
      expectClose(got.dV.values.data() as Float32Array, ref.dV.values.data() as Float32Array, undefined, `${isa} dV`);
      expectClose(got.dWeights.data() as Float32Array, ref.dWeights.data() as Float32Array, undefined, `${isa} dW`);
      disposeSparse(got.dV);
      got.dWeights.dispose();
    }
    disposeSparse(ref.dV);
    ref.dWeights.dispose();
  });

  // Threads claim blocks of tokens / rows dynamically (core.h parallel_for_dynamic), so which thread computes what
  // changes from run to run; a block skipped or split wrongly would show against the 1-thread result.
  it('is deterministic: bit-identical across runs and for 1 to 4 threads', async () => {
    const TT = 500;
    using V = Tensor.from(randn(300 * 32, 1), { shape: [300, 32] });
    using idx = Tensor.from(randIdx(TT * 16, 300, 2), { shape: [TT, 16] });
    using w = Tensor.from(randn(TT * 16, 3), { shape: [TT, 16] });
    using dOut = Tensor.from(randn(TT * 32, 4), { shape: [TT, 32] });
    const run = () => {
      using out = embeddingBag(V, idx, w);
      const b = embeddingBagBackward(dOut, V, idx, w);
      const r = { out: (out.data() as Float32Array).slice(), dw: (b.dWeights.data() as Float32Array).slice(), dv: (b.dV.values.data() as Float32Array).slice() };
      b.dWeights.dispose();
      disposeSparse(b.dV);
      return r;
    };
    const a = await withThreads(1, run);
    for (const n of [2, 2, 3, 4]) {
      const b = await withThreads(n, run);
      for (const k of ['out', 'dw', 'dv'] as const) expectBitIdentical(a[k], b[k], `${k} 1 vs ${n} threads`);
    }
  });

  it('works with N = 1024² rows (small D) and touches only the rows used', () => {
    const NN = 1024 * 1024;
    const DD = 4;
    using V = Tensor.from(randn(NN * DD, 9), { shape: [NN, DD] });
    const ids = Int32Array.from([NN - 1, 0, 524288, NN - 1, 77, 1048575, 3, 0]);
    using idx = Tensor.from(ids, { shape: [2, 4] });
    using w = Tensor.from(randn(8, 10), { shape: [2, 4] });
    using dOut = Tensor.from(randn(2 * DD, 11), { shape: [2, DD] });
    using out = embeddingBag(V, idx, w);
    expectClose(out.data() as Float32Array, bagF64(V.data() as Float32Array, DD, ids, w.data() as Float32Array, 2, 4));
    const b = embeddingBagBackward(dOut, V, idx, w);
    expect(Array.from(b.dV.rows.data() as Int32Array)).toEqual([0, 3, 77, 524288, NN - 1]);
    expect(b.dV.numRows).toBe(NN);
    const ref = embeddingBagBackward(dOut, V, idx, w, { impl: 'ref' });
    expectClose(b.dV.values.data() as Float32Array, ref.dV.values.data() as Float32Array);
    for (const s of [b.dV, ref.dV]) disposeSparse(s);
    b.dWeights.dispose();
    ref.dWeights.dispose();
  });

  // The row kernels are compiled with D as a constant for 64, 128, 256, 512 and 1024 (pkm_rows.h with_row_width);
  // the tests above run the generic width. Each specialised width against the reference, forward and backward.
  it('the specialised row widths (D = 64 ... 1024) match the reference on every ISA, forward and backward', async () => {
    for (const DD of [64, 128, 256, 512, 1024]) {
      using V = Tensor.from(randn(12 * DD, 1), { shape: [12, DD] });
      using idx = Tensor.from(randIdx(6 * 4, 12, 2), { shape: [6, 4] });
      using w = Tensor.from(randn(24, 3), { shape: [6, 4] });
      using dOut = Tensor.from(randn(6 * DD, 4), { shape: [6, DD] });
      using fr = embeddingBag(V, idx, w, { impl: 'ref' });
      const ref = embeddingBagBackward(dOut, V, idx, w, { impl: 'ref' });
      const tol = { atol: 1e-4, rtol: 1e-4 };
      for (const isa of await cpuIsas()) {
        const what = `D = ${DD}, ${isa}`;
        using f = await withIsa(isa, () => embeddingBag(V, idx, w));
        expectClose(f.data() as Float32Array, fr.data() as Float32Array, tol, `${what} out`);
        const got = await withIsa(isa, () => embeddingBagBackward(dOut, V, idx, w));
        expectClose(got.dV.values.data() as Float32Array, ref.dV.values.data() as Float32Array, tol, `${what} dV`);
        expectClose(got.dWeights.data() as Float32Array, ref.dWeights.data() as Float32Array, tol, `${what} dWeights`);
        got.dWeights.dispose();
        disposeSparse(got.dV);
      }
      ref.dWeights.dispose();
      disposeSparse(ref.dV);
    }
  });

  it('wide rows (D > 1024: two-pass backward) agree with the reference', () => {
    const DD = 1100;
    using V = Tensor.from(randn(12 * DD, 1), { shape: [12, DD] });
    using idx = Tensor.from(randIdx(5 * 3, 12, 2), { shape: [5, 3] });
    using w = Tensor.from(randn(15, 3), { shape: [5, 3] });
    using dOut = Tensor.from(randn(5 * DD, 4), { shape: [5, DD] });
    const got = embeddingBagBackward(dOut, V, idx, w);
    const ref = embeddingBagBackward(dOut, V, idx, w, { impl: 'ref' });
    expectClose(got.dV.values.data() as Float32Array, ref.dV.values.data() as Float32Array);
    expectClose(got.dWeights.data() as Float32Array, ref.dWeights.data() as Float32Array, { atol: 1e-4, rtol: 1e-4 });
    for (const b of [got, ref]) {
      b.dWeights.dispose();
      disposeSparse(b.dV);
    }
  });

  it('handles empty bags and T = 0', () => {
    using V = Tensor.from(randn(4 * 3, 1), { shape: [4, 3] });
    using idx = Tensor.zeros([0, 5], { dtype: 'i32' });
    using w = Tensor.zeros([0, 5]);
    using out = embeddingBag(V, idx, w);
    expect(out.shape).toEqual([0, 3]);
    using idx2 = Tensor.zeros([3, 0], { dtype: 'i32' });
    using w2 = Tensor.zeros([3, 0]);
    using out2 = embeddingBag(V, idx2, w2);
    expect(Array.from(out2.data() as Float32Array)).toEqual(new Array(9).fill(0));
    using dOut = Tensor.from(randn(9, 2), { shape: [3, 3] });
    const b = embeddingBagBackward(dOut, V, idx2, w2);
    expect(b.dV.rows.size).toBe(0);
    expect(b.dV.values.shape).toEqual([0, 3]);
    disposeSparse(b.dV);
    b.dWeights.dispose();
  });

  it('rejects bad input with typed errors', () => {
    using V = Tensor.zeros([8, 4]);
    using idx = Tensor.from(new Int32Array([0, 1, 2, 8]), { shape: [2, 2] });
    using w = Tensor.zeros([2, 2]);
    expect(() => embeddingBag(V, idx, w)).toThrow(/embeddingBag: idx\[3\] must be in \[0, N=8\), got 8/);
    (idx.data() as Int32Array)[3] = -1;
    expect(() => embeddingBag(V, idx, w)).toThrow(RangeError);
    (idx.data() as Int32Array)[3] = 1;
    using wShort = Tensor.zeros([2, 3]);
    expect(() => embeddingBag(V, idx, wShort)).toThrow(ShapeError);
    using idxF = Tensor.zeros([2, 2]);
    expect(() => embeddingBag(V, idxF, w)).toThrow(DTypeError);
    using V3 = Tensor.zeros([2, 2, 2]);
    expect(() => embeddingBag(V3, idx, w)).toThrow(/V must be \[N, D\]/);
    using dBad = Tensor.zeros([2, 5]);
    expect(() => embeddingBagBackward(dBad, V, idx, w)).toThrow(ShapeError);
    const gone = Tensor.zeros([8, 4]);
    gone.dispose();
    expect(() => embeddingBag(gone, idx, w)).toThrow(DisposedError);
    expect(() => embeddingBag(V, idx, w).dispose()).not.toThrow();
  });
});

describe('SparseGradWorkspace', () => {
  guardLeaks();

  it('reuses its buffers across calls, replaces them when a call could touch more rows, same gradients', () => {
    const N = 400;
    const D = 8;
    using V = Tensor.from(randn(N * D, 1), { shape: [N, D] });
    const ws = new SparseGradWorkspace();
    let prevBuffer: ArrayBufferLike | undefined;
    for (const [T, J, seed] of [
      [10, 4, 1],
      [8, 4, 2],
      [60, 8, 3],
      [50, 8, 4],
    ]) {
      using idx = Tensor.from(randIdx(T * J, N, seed), { shape: [T, J] });
      using w = Tensor.from(randn(T * J, seed + 10), { shape: [T, J] });
      using dOut = Tensor.from(randn(T * D, seed + 20), { shape: [T, D] });
      const fresh = embeddingBagBackward(dOut, V, idx, w);
      const viaWs = embeddingBagBackward(dOut, V, idx, w, { workspace: ws });
      expect(Array.from(viaWs.dV.rows.data() as Int32Array)).toEqual(Array.from(fresh.dV.rows.data() as Int32Array));
      expectBitIdentical(viaWs.dV.values.data() as Float32Array, fresh.dV.values.data() as Float32Array);
      const buf = (viaWs.dV.values.data() as Float32Array).buffer;
      // Sized for min(T·J, N) rows: the second call (T·J = 32 ≤ 40) reuses the first buffer, the third
      // (T·J = 480: up to N = 400 rows) replaces it, the fourth (T·J = 400) reuses that.
      if (seed === 1) expect(ws.rows!.length).toBe(40);
      if (seed === 2 || seed === 4) expect(buf).toBe(prevBuffer);
      if (seed === 3) expect(buf).not.toBe(prevBuffer);
      if (seed === 3) expect(ws.bytes).toBe(N * 4 + N * D * 4);
      prevBuffer = buf;
      for (const t of [fresh.dWeights, viaWs.dWeights]) t.dispose();
      disposeSparse(fresh.dV);
      disposeSparse(viaWs.dV);
    }
    expect(ws.bytes).toBeGreaterThan(0);
    ws.release();
    expect(ws.bytes).toBe(0);
    using d1 = Tensor.zeros([1, D]);
    using i1 = Tensor.zeros([1, 1], { dtype: 'i32' });
    using w1 = Tensor.zeros([1, 1]);
    expect(() => embeddingBagBackward(d1, V, i1, w1, { workspace: {} as SparseGradWorkspace })).toThrow(
      /workspace must be a SparseGradWorkspace/,
    );
  });
});

describe('adviseHugePages', () => {
  guardLeaks();

  it('returns a boolean, keeps the data, and the table still works', () => {
    using V = Tensor.zeros([8192, 64]); // 2 MiB: has at least one aligned huge page inside on Linux
    const r = adviseHugePages(V);
    expect(typeof r).toBe('boolean');
    (V.data() as Float32Array).set(randn(8192 * 64, 3));
    using idx = Tensor.from(Int32Array.from([8191, 0]), { shape: [1, 2] });
    using w = Tensor.from(Float32Array.from([1, 2]), { shape: [1, 2] });
    using out = embeddingBag(V, idx, w);
    const v = V.data() as Float32Array;
    expectClose(out.data() as Float32Array, Array.from({ length: 64 }, (_, i) => v[8191 * 64 + i] + 2 * v[i]));
    using small = Tensor.zeros([4]);
    expect(adviseHugePages(small)).toBe(false);
  });
});
