// pkmTopk / pkmTopkBackward: the fast CPU kernel against the float64 reference (kernels/ref/pkm_topk.cpp), the
// reference against exhaustive search over all N full keys and against finite differences (float64, in TS),
// every CPU ISA, thread-count determinism, duplicated rows across heads, and bad input.
import { describe, expect, it } from 'vitest';

import {
  DTypeError,
  DisposedError,
  ShapeError,
  Tensor,
  pkmTopk,
  pkmTopkBackward,
  subKeyCount,
  type PkmScoreAct,
  type PkmTopkResult,
} from '../../lib/index.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';

interface Cfg {
  name: string;
  T: number;
  H: number;
  Hq: number;
  Hk: number;
  Dk: number;
  n: number;
  k: number;
}

const CONFIGS: Cfg[] = [
  { name: 'PKM per-head keys', T: 13, H: 3, Hq: 3, Hk: 3, Dk: 8, n: 9, k: 5 },
  { name: 'PEER shared keys', T: 11, H: 4, Hq: 4, Hk: 1, Dk: 6, n: 8, k: 8 },
  { name: 'Csordas shared query', T: 9, H: 2, Hq: 1, Hk: 2, Dk: 10, n: 7, k: 3 },
];
const ACTS: PkmScoreAct[] = ['none', 'softmax', 'softmax-all', 'relu', 'sigmoid'];

function inputs(c: Cfg, seed: number) {
  const q = Tensor.from(randn(c.T * c.Hq * c.Dk, seed), { shape: [c.T, c.Hq, c.Dk] });
  const keys = Tensor.from(randn(c.Hk * c.n * c.Dk, seed + 1), { shape: [c.Hk, 2, c.n, c.Dk / 2] });
  return { q, keys };
}

function disposeSel(s: PkmTopkResult) {
  s.indices.dispose();
  s.scores.dispose();
  s.weights.dispose();
}

// Float64 exhaustive search over all n² full keys [C[a]; C'[b]]: the k best slots per (t, h), score desc, slot asc.
function exhaustive(c: Cfg, q: Float32Array, keys: Float32Array): { idx: number[]; s: number[] } {
  const half = c.Dk / 2;
  const idx: number[] = [];
  const s: number[] = [];
  for (let t = 0; t < c.T; t++)
    for (let h = 0; h < c.H; h++) {
      const qo = (t * c.Hq + (c.Hq === 1 ? 0 : h)) * c.Dk;
      const ko = (c.Hk === 1 ? 0 : h) * 2 * c.n * half;
      const all: [number, number][] = [];
      for (let a = 0; a < c.n; a++)
        for (let b = 0; b < c.n; b++) {
          let v = 0;
          for (let i = 0; i < half; i++) {
            v += q[qo + i] * keys[ko + a * half + i];
            v += q[qo + half + i] * keys[ko + (c.n + b) * half + i];
          }
          all.push([v, a * c.n + b]);
        }
      all.sort((x, y) => y[0] - x[0] || x[1] - y[1]);
      for (let j = 0; j < c.k; j++) {
        idx.push(all[j][1]);
        s.push(all[j][0]);
      }
    }
  return { idx, s };
}

// Float64 loss L = Σ dw · act(selected scores) at fixed indices, as a function of the flattened [q; keys].
function lossWithFixedIndices(c: Cfg, act: PkmScoreAct, idx: Int32Array, dw: Float32Array) {
  const half = c.Dk / 2;
  const nq = c.T * c.Hq * c.Dk;
  return (x: Float64Array): number => {
    let L = 0;
    for (let t = 0; t < c.T; t++) {
      const s: number[] = [];
      for (let h = 0; h < c.H; h++) {
        const qo = (t * c.Hq + (c.Hq === 1 ? 0 : h)) * c.Dk;
        const ko = nq + (c.Hk === 1 ? 0 : h) * 2 * c.n * half;
        for (let j = 0; j < c.k; j++) {
          const slot = idx[(t * c.H + h) * c.k + j];
          const a = Math.floor(slot / c.n);
          const b = slot % c.n;
          let v = 0;
          for (let i = 0; i < half; i++) v += x[qo + i] * x[ko + a * half + i] + x[qo + half + i] * x[ko + (c.n + b) * half + i];
          s.push(v);
        }
      }
      const w = actF64(act, s, c.H, c.k);
      for (let i = 0; i < w.length; i++) L += dw[t * c.H * c.k + i] * w[i];
    }
    return L;
  };
}

function actF64(act: PkmScoreAct, s: number[], H: number, k: number): number[] {
  const softmax = (x: number[]) => {
    const m = Math.max(...x);
    const e = x.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / z);
  };
  switch (act) {
    case 'none':
      return s;
    case 'relu':
      return s.map((v) => Math.max(v, 0));
    case 'sigmoid':
      return s.map((v) => 1 / (1 + Math.exp(-v)));
    case 'softmax-all':
      return softmax(s);
    case 'softmax': {
      const out: number[] = [];
      for (let h = 0; h < H; h++) out.push(...softmax(s.slice(h * k, (h + 1) * k)));
      return out;
    }
  }
}

describe('pkmTopk', () => {
  guardLeaks();

  for (const c of CONFIGS) {
    it(`${c.name}: matches the float64 reference and exhaustive search, every act and ISA`, async () => {
      const { q, keys } = inputs(c, 7);
      const ex = exhaustive(c, q.data() as Float32Array, keys.data() as Float32Array);
      for (const act of ACTS) {
        const ref = pkmTopk(q, keys, c.k, { act, impl: 'ref' });
        expect(Array.from(ref.indices.data() as Int32Array), `ref indices (${act})`).toEqual(ex.idx);
        expectClose(ref.scores.data() as Float32Array, ex.s, undefined, `ref scores (${act})`);
        expectClose(
          ref.weights.data() as Float32Array,
          Array.from({ length: c.T }, (_, t) =>
            actF64(act, ex.s.slice(t * c.H * c.k, (t + 1) * c.H * c.k), c.H, c.k),
          ).flat(),
          undefined,
          `ref weights (${act})`,
        );
        for (const isa of await cpuIsas()) {
          const got = await withIsa(isa, () => pkmTopk(q, keys, c.k, { act }));
          expect(Array.from(got.indices.data() as Int32Array), `${isa} indices (${act})`).toEqual(ex.idx);
          expectClose(got.scores.data() as Float32Array, ref.scores.data() as Float32Array, undefined, `${isa} scores`);
          expectClose(got.weights.data() as Float32Array, ref.weights.data() as Float32Array, undefined, `${isa} weights`);
          disposeSel(got);
        }
        disposeSel(ref);
      }
      q.dispose();
      keys.dispose();
    });

    it(`${c.name}: backward matches the reference, and the reference matches finite differences`, async () => {
      const { q, keys } = inputs(c, 21);
      for (const act of ACTS) {
        const sel = pkmTopk(q, keys, c.k, { act });
        const dw = Tensor.from(randn(c.T * c.H * c.k, 99), { shape: [c.T, c.H, c.k] });
        const ref = pkmTopkBackward(dw, q, keys, sel, { impl: 'ref' });
        // Finite differences of the float64 loss at the selected indices (selection is piecewise constant).
        const x = Float64Array.from([...(q.data() as Float32Array), ...(keys.data() as Float32Array)]);
        const fd = finiteDiff(lossWithFixedIndices(c, act, sel.indices.data() as Int32Array, dw.data() as Float32Array), x);
        const analytic = [...(ref.dq.data() as Float32Array), ...(ref.dkeys.data() as Float32Array)];
        expectClose(analytic, fd, { atol: 2e-5, rtol: 1e-4 }, `ref gradient vs finite differences (${act})`);
        for (const isa of await cpuIsas()) {
          const got = await withIsa(isa, () => pkmTopkBackward(dw, q, keys, sel));
          expectClose(got.dq.data() as Float32Array, ref.dq.data() as Float32Array, undefined, `${isa} dq (${act})`);
          expectClose(got.dkeys.data() as Float32Array, ref.dkeys.data() as Float32Array, undefined, `${isa} dkeys (${act})`);
          got.dq.dispose();
          got.dkeys.dispose();
        }
        ref.dq.dispose();
        ref.dkeys.dispose();
        dw.dispose();
        disposeSel(sel);
      }
      q.dispose();
      keys.dispose();
    });
  }

  it('k = n = √N equals exhaustive search over all N keys (larger table, pruned candidate scan)', () => {
    const c: Cfg = { name: '', T: 6, H: 2, Hq: 2, Hk: 2, Dk: 16, n: 32, k: 32 };
    const { q, keys } = inputs(c, 3);
    const ex = exhaustive(c, q.data() as Float32Array, keys.data() as Float32Array);
    const got = pkmTopk(q, keys, c.k, { act: 'none' });
    expect(Array.from(got.indices.data() as Int32Array)).toEqual(ex.idx);
    expectClose(got.scores.data() as Float32Array, ex.s);
    disposeSel(got);
    q.dispose();
    keys.dispose();
  });

  it('k = 1, 16, 17, 32, 33 (vector and scalar list paths) match exhaustive search on every ISA, also with ties', async () => {
    for (const k of [1, 16, 17, 32, 33]) {
      const c: Cfg = { name: '', T: 7, H: 2, Hq: 2, Hk: 2, Dk: 8, n: 40, k };
      const { q, keys } = inputs(c, 50 + k);
      // Quantised keys make many sub-key scores equal: ties must resolve to the lower index everywhere.
      const kd = keys.data() as Float32Array;
      if (k % 2) for (let i = 0; i < kd.length; i++) kd[i] = Math.round(kd[i] * 2) / 2;
      const qd = q.data() as Float32Array;
      if (k % 2) for (let i = 0; i < qd.length; i++) qd[i] = Math.round(qd[i]);
      const ref = pkmTopk(q, keys, k, { act: 'none', impl: 'ref' });
      for (const isa of await cpuIsas()) {
        const got = await withIsa(isa, () => pkmTopk(q, keys, k, { act: 'none' }));
        expect(Array.from(got.indices.data() as Int32Array), `${isa} k=${k}`).toEqual(Array.from(ref.indices.data() as Int32Array));
        expectClose(got.scores.data() as Float32Array, ref.scores.data() as Float32Array);
        disposeSel(got);
      }
      disposeSel(ref);
      q.dispose();
      keys.dispose();
    }
  });

  it('ties: equal scores keep the lower slot first, results are sorted best first', () => {
    // All-zero keys: every slot scores 0, so the top-k are slots 0..k-1 in order.
    const q = Tensor.from(randn(2 * 1 * 4, 5), { shape: [2, 1, 4] });
    const keys = Tensor.zeros([1, 2, 5, 2]);
    const sel = pkmTopk(q, keys, 5, { act: 'softmax' });
    expect(Array.from(sel.indices.data() as Int32Array)).toEqual([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    expectClose(sel.weights.data() as Float32Array, new Array(10).fill(0.2));
    disposeSel(sel);
    q.dispose();
    keys.dispose();
  });

  it('duplicated sub-key rows across heads accumulate (identical heads: shared query and shared keys)', () => {
    const c: Cfg = { name: '', T: 5, H: 4, Hq: 1, Hk: 1, Dk: 6, n: 6, k: 4 };
    const { q, keys } = inputs(c, 8);
    const sel = pkmTopk(q, keys, c.k, { act: 'relu', heads: c.H });
    const dw = Tensor.from(randn(c.T * c.H * c.k, 12), { shape: [c.T, c.H, c.k] });
    const got = pkmTopkBackward(dw, q, keys, sel);
    const x = Float64Array.from([...(q.data() as Float32Array), ...(keys.data() as Float32Array)]);
    const fd = finiteDiff(lossWithFixedIndices(c, 'relu', sel.indices.data() as Int32Array, dw.data() as Float32Array), x);
    expectClose([...(got.dq.data() as Float32Array), ...(got.dkeys.data() as Float32Array)], fd, { atol: 2e-5, rtol: 1e-4 });
    for (const t of [got.dq, got.dkeys, dw, q, keys]) t.dispose();
    disposeSel(sel);
  });

  // Tokens and sub-key rows are handed out in blocks dynamically (core.h parallel_for_dynamic), so repeated runs at
  // one thread count schedule them differently.
  it('is deterministic: bit-identical across runs and for 1 to 4 threads', async () => {
    const c: Cfg = { name: '', T: 300, H: 4, Hq: 4, Hk: 1, Dk: 32, n: 24, k: 8 };
    const { q, keys } = inputs(c, 4);
    const run = () => {
      const sel = pkmTopk(q, keys, c.k, { act: 'softmax' });
      const dw = Tensor.from(randn(c.T * c.H * c.k, 5), { shape: [c.T, c.H, c.k] });
      const g = pkmTopkBackward(dw, q, keys, sel);
      const out = {
        idx: Float32Array.from(sel.indices.data() as Int32Array),
        w: (sel.weights.data() as Float32Array).slice(),
        dq: (g.dq.data() as Float32Array).slice(),
        dk: (g.dkeys.data() as Float32Array).slice(),
      };
      for (const t of [g.dq, g.dkeys, dw]) t.dispose();
      disposeSel(sel);
      return out;
    };
    const a = await withThreads(1, run);
    for (const n of [2, 2, 3, 4]) {
      const b = await withThreads(n, run);
      for (const key of ['idx', 'w', 'dq', 'dk'] as const) expectBitIdentical(a[key], b[key], `${key} 1 vs ${n} threads`);
    }
    q.dispose();
    keys.dispose();
  });

  // 2·32768 sub-key rows and 2·T·H·k = 4096 entries: the backward's reverse index over the entries takes the radix
  // sort (row_index.cpp: N >= 2^16), with the unused entries (row -1, where a half's rows repeat) skipped.
  it('backward over 65,536 sub-key rows (radix reverse index) matches the reference, for 1, 2 and 3 threads', async () => {
    const c: Cfg = { name: '', T: 64, H: 4, Hq: 4, Hk: 1, Dk: 4, n: 32768, k: 8 };
    const { q, keys } = inputs(c, 6);
    const sel = pkmTopk(q, keys, c.k, { act: 'softmax' });
    using dw = Tensor.from(randn(c.T * c.H * c.k, 7), { shape: [c.T, c.H, c.k] });
    const ref = pkmTopkBackward(dw, q, keys, sel, { impl: 'ref' });
    const run = () => {
      const g = pkmTopkBackward(dw, q, keys, sel);
      const out = { dq: (g.dq.data() as Float32Array).slice(), dk: (g.dkeys.data() as Float32Array).slice() };
      g.dq.dispose();
      g.dkeys.dispose();
      return out;
    };
    const one = await withThreads(1, run);
    expectClose(one.dq, ref.dq.data() as Float32Array, undefined, 'dq');
    expectClose(one.dk, ref.dkeys.data() as Float32Array, undefined, 'dkeys');
    for (const n of [2, 3]) {
      const got = await withThreads(n, run);
      expectBitIdentical(got.dq, one.dq, `dq 1 vs ${n} threads`);
      expectBitIdentical(got.dk, one.dk, `dkeys 1 vs ${n} threads`);
    }
    for (const t of [ref.dq, ref.dkeys, q, keys]) t.dispose();
    disposeSel(sel);
  });

  it('rejects bad input with typed errors', () => {
    const q = Tensor.zeros([3, 2, 8]);
    const keys = Tensor.zeros([2, 2, 4, 4]);
    expect(() => pkmTopk(q, keys, 5)).toThrow(/pkmTopk: k must be an integer in \[1, n=4\].*got 5/);
    expect(() => pkmTopk(q, keys, 0)).toThrow(RangeError);
    expect(() => pkmTopk(q, keys, 2, { act: 'tanh' as PkmScoreAct })).toThrow(/act must be one of/);
    using badKeys = Tensor.zeros([2, 2, 4, 3]);
    expect(() => pkmTopk(q, badKeys, 2)).toThrow(ShapeError);
    using badHeads = Tensor.zeros([3, 2, 4, 4]);
    expect(() => pkmTopk(q, badHeads, 2)).toThrow(/must each be 1 or the same H/);
    using odd = Tensor.zeros([3, 2, 7]);
    expect(() => pkmTopk(odd, keys, 2)).toThrow(/Dk must be even/);
    using qi = Tensor.zeros([3, 2, 8], { dtype: 'i32' });
    expect(() => pkmTopk(qi, keys, 2)).toThrow(DTypeError);
    expect(() => subKeyCount(1000)).toThrow(/N must be a perfect square/);
    expect(subKeyCount(1024 * 1024)).toBe(1024);
    const sel = pkmTopk(q, keys, 2);
    using dwBad = Tensor.zeros([3, 2, 3]);
    expect(() => pkmTopkBackward(dwBad, q, keys, sel)).toThrow(ShapeError);
    // An index table of the wrong size, and an out-of-range slot, are caught before any kernel runs.
    using dw = Tensor.zeros([3, 2, 2]);
    const shortIdx = { ...sel, indices: Tensor.zeros([3, 2, 1], { dtype: 'i32' }) };
    expect(() => pkmTopkBackward(dw, q, keys, shortIdx)).toThrow(ShapeError);
    shortIdx.indices.dispose();
    (sel.indices.data() as Int32Array)[3] = 16;
    expect(() => pkmTopkBackward(dw, q, keys, sel)).toThrow(/idx\[3\] must be in \[0, N=16\), got 16/);
    disposeSel(sel);
    const gone = Tensor.zeros([3, 2, 8]);
    gone.dispose();
    expect(() => pkmTopk(gone, keys, 2)).toThrow(DisposedError);
    q.dispose();
    keys.dispose();
  });
});
