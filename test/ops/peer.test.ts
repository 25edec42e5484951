// peerExperts / peerExpertsBackward: fast CPU kernels against a float64 TS reference and the native reference,
// finite differences for every activation, sparse rows vs dense, duplicated experts across heads, every ISA,
// determinism, the 1024²-expert table with small D, bad input.
import { describe, expect, it } from 'vitest';

import {
  DTypeError,
  ShapeError,
  Tensor,
  embeddingBagBackward,
  peerExperts,
  peerExpertsBackward,
  pkmTopk,
  sparseRowsToDense,
  type PeerAct,
  type SparseRows,
} from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, rng, withIsa, withThreads } from '../helpers.js';

const ACTS: PeerAct[] = ['relu', 'gelu', 'silu', 'identity'];

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is not accurate enough for finite differences; use a series / continued fraction.
  const t = Math.abs(x);
  if (t < 3) {
    let sum = t;
    let term = t;
    for (let n = 1; n < 80; n++) {
      term *= (-t * t) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (t + f);
  return Math.sign(x) * (1 - Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f));
}

function actF64(act: PeerAct, h: number): number {
  switch (act) {
    case 'relu':
      return Math.max(h, 0);
    case 'gelu':
      return 0.5 * h * (1 + erf(h / Math.SQRT2));
    case 'silu':
      return h / (1 + Math.exp(-h));
    case 'identity':
      return h;
  }
}

function randIdx(n: number, N: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * N));
}

// out[t] = Σ_j g · act(U[i]·x[t]) · V[i] in float64.
function peerF64(act: PeerAct, x: ArrayLike<number>, U: ArrayLike<number>, V: ArrayLike<number>, idx: Int32Array, g: ArrayLike<number>, T: number, J: number, D: number): Float64Array {
  const out = new Float64Array(T * D);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < J; j++) {
      const r = idx[t * J + j];
      let h = 0;
      for (let i = 0; i < D; i++) h += U[r * D + i] * x[t * D + i];
      const c = g[t * J + j] * actF64(act, h);
      for (let i = 0; i < D; i++) out[t * D + i] += c * V[r * D + i];
    }
  return out;
}

function disposeSparse(...s: SparseRows[]) {
  for (const x of s) {
    x.rows.dispose();
    x.values.dispose();
  }
}

type PeerFwd = { out: Tensor; h: Tensor };
type PeerBwd = { dx: Tensor; dGates: Tensor; dU: SparseRows; dV: SparseRows };

// A fast forward/backward pair against the reference pair: the same touched rows, close values; then disposes
// the fast pair.
function expectPeerMatches(
  f: PeerFwd,
  b: PeerBwd,
  ref: PeerFwd,
  rb: PeerBwd,
  tol: { atol: number; rtol: number } | undefined,
  what: string,
) {
  expectClose(f.out.data() as Float32Array, ref.out.data() as Float32Array, tol, `${what} out`);
  expectClose(f.h.data() as Float32Array, ref.h.data() as Float32Array, tol, `${what} h`);
  expect(Array.from(b.dU.rows.data() as Int32Array)).toEqual(Array.from(rb.dU.rows.data() as Int32Array));
  expect(Array.from(b.dV.rows.data() as Int32Array)).toEqual(Array.from(rb.dV.rows.data() as Int32Array));
  expectClose(b.dx.data() as Float32Array, rb.dx.data() as Float32Array, tol, `${what} dx`);
  expectClose(b.dGates.data() as Float32Array, rb.dGates.data() as Float32Array, tol, `${what} dg`);
  expectClose(b.dU.values.data() as Float32Array, rb.dU.values.data() as Float32Array, tol, `${what} dU`);
  expectClose(b.dV.values.data() as Float32Array, rb.dV.values.data() as Float32Array, tol, `${what} dV`);
  for (const t of [f.out, f.h, b.dx, b.dGates]) t.dispose();
  disposeSparse(b.dU, b.dV);
}

// Random inputs of shape T, J, D, N (seeds seed ... seed + 5; x and U scaled by xuScale, default 0.2), the
// reference forward and backward, and every ISA's fast pair checked against them.
async function expectEveryIsaMatchesRef(
  s: { T: number; J: number; D: number; N: number; seed: number; gScale?: number; xuScale?: number },
  act: PeerAct,
  what: string,
) {
  using x = Tensor.from(randn(s.T * s.D, s.seed, s.xuScale ?? 0.2), { shape: [s.T, s.D] });
  using U = Tensor.from(randn(s.N * s.D, s.seed + 1, s.xuScale ?? 0.2), { shape: [s.N, s.D] });
  using V = Tensor.from(randn(s.N * s.D, s.seed + 2), { shape: [s.N, s.D] });
  using idx = Tensor.from(randIdx(s.T * s.J, s.N, s.seed + 3), { shape: [s.T, s.J] });
  using g = Tensor.from(randn(s.T * s.J, s.seed + 4, s.gScale ?? 1), { shape: [s.T, s.J] });
  using dOut = Tensor.from(randn(s.T * s.D, s.seed + 5), { shape: [s.T, s.D] });
  const ref = peerExperts(x, U, V, idx, g, { act, impl: 'ref' });
  const rb = peerExpertsBackward(dOut, x, U, V, idx, g, ref.h, { act, impl: 'ref' });
  const tol = { atol: 1e-4, rtol: 1e-4 };
  for (const isa of await cpuIsas()) {
    const f = await withIsa(isa, () => peerExperts(x, U, V, idx, g, { act }));
    const b = await withIsa(isa, () => peerExpertsBackward(dOut, x, U, V, idx, g, f.h, { act }));
    expectPeerMatches(f, b, ref, rb, tol, `${what}, ${isa}`);
  }
  for (const t of [ref.out, ref.h, rb.dx, rb.dGates]) t.dispose();
  disposeSparse(rb.dU, rb.dV);
}

describe('peerExperts', () => {
  guardLeaks();
  const T = 7;
  const J = 5;
  const N = 11;
  const D = 6;

  for (const act of ACTS) {
    it(`${act}: forward and backward match float64, finite differences and the reference on every ISA`, async () => {
      using x = Tensor.from(randn(T * D, 1), { shape: [T, D] });
      using U = Tensor.from(randn(N * D, 2, 0.5), { shape: [N, D] });
      using V = Tensor.from(randn(N * D, 3), { shape: [N, D] });
      // Duplicated experts inside a token (as when heads select the same expert) and across tokens.
      using idx = Tensor.from(randIdx(T * J, 6, 4), { shape: [T, J] });
      using g = Tensor.from(randn(T * J, 5), { shape: [T, J] });
      using dOut = Tensor.from(randn(T * D, 6), { shape: [T, D] });
      const xs = x.data() as Float32Array;
      const Us = U.data() as Float32Array;
      const Vs = V.data() as Float32Array;
      const gs = g.data() as Float32Array;
      const ids = idx.data() as Int32Array;
      const want = peerF64(act, xs, Us, Vs, ids, gs, T, J, D);
      const ref = peerExperts(x, U, V, idx, g, { act, impl: 'ref' });
      expectClose(ref.out.data() as Float32Array, want, undefined, 'ref out');
      const rb = peerExpertsBackward(dOut, x, U, V, idx, g, ref.h, { act, impl: 'ref' });
      // Finite differences of L = <dOut, out> in float64 with respect to x, U, V, g.
      const dO = dOut.data() as Float32Array;
      const L = (xx: ArrayLike<number>, UU: ArrayLike<number>, VV: ArrayLike<number>, gg: ArrayLike<number>) =>
        peerF64(act, xx, UU, VV, ids, gg, T, J, D).reduce((s, o, i) => s + o * dO[i], 0);
      const tol = { atol: 2e-4, rtol: 2e-4 };
      expectClose(rb.dx.data() as Float32Array, finiteDiff((v) => L(v, Us, Vs, gs), Float64Array.from(xs)), tol, 'dx vs FD');
      expectClose(rb.dGates.data() as Float32Array, finiteDiff((v) => L(xs, Us, Vs, v), Float64Array.from(gs)), tol, 'dg vs FD');
      using dUd = sparseRowsToDense(rb.dU);
      using dVd = sparseRowsToDense(rb.dV);
      expectClose(dUd.data() as Float32Array, finiteDiff((v) => L(xs, v, Vs, gs), Float64Array.from(Us)), tol, 'dU vs FD');
      expectClose(dVd.data() as Float32Array, finiteDiff((v) => L(xs, Us, v, gs), Float64Array.from(Vs)), tol, 'dV vs FD');
      for (const isa of await cpuIsas()) {
        const f = await withIsa(isa, () => peerExperts(x, U, V, idx, g, { act }));
        const b = await withIsa(isa, () => peerExpertsBackward(dOut, x, U, V, idx, g, f.h, { act }));
        expectPeerMatches(f, b, ref, rb, undefined, isa);
      }
      for (const t of [ref.out, ref.h, rb.dx, rb.dGates]) t.dispose();
      disposeSparse(rb.dU, rb.dV);
    });
  }

  it('composes with pkmTopk over shared keys ([T, H, k] indices) and is deterministic for 1 vs 2 threads', async () => {
    const TT = 300;
    const H = 4;
    const k = 4;
    const n = 16;
    const DD = 24;
    using q = Tensor.from(randn(TT * H * 8, 1), { shape: [TT, H, 8] });
    using keys = Tensor.from(randn(2 * n * 4, 2), { shape: [1, 2, n, 4] });
    using x = Tensor.from(randn(TT * DD, 3), { shape: [TT, DD] });
    using U = Tensor.from(randn(n * n * DD, 4, 0.3), { shape: [n * n, DD] });
    using V = Tensor.from(randn(n * n * DD, 5), { shape: [n * n, DD] });
    using dOut = Tensor.from(randn(TT * DD, 6), { shape: [TT, DD] });
    const sel = pkmTopk(q, keys, k);
    const run = () => {
      const f = peerExperts(x, U, V, sel.indices, sel.weights, { act: 'gelu' });
      const b = peerExpertsBackward(dOut, x, U, V, sel.indices, sel.weights, f.h, { act: 'gelu' });
      const r = {
        out: (f.out.data() as Float32Array).slice(),
        dx: (b.dx.data() as Float32Array).slice(),
        dg: (b.dGates.data() as Float32Array).slice(),
        dU: (b.dU.values.data() as Float32Array).slice(),
        dV: (b.dV.values.data() as Float32Array).slice(),
      };
      expect(b.dGates.shape).toEqual([TT, H, k]);
      for (const t of [f.out, f.h, b.dx, b.dGates]) t.dispose();
      disposeSparse(b.dU, b.dV);
      return r;
    };
    const a = await withThreads(1, run);
    const b = await withThreads(2, run);
    const c = await withThreads(2, run);
    for (const key of ['out', 'dx', 'dg', 'dU', 'dV'] as const) {
      expectBitIdentical(a[key], b[key], `${key} 1 vs 2 threads`);
      expectBitIdentical(b[key], c[key], `${key} run to run`);
    }
    for (const t of [sel.indices, sel.scores, sel.weights]) t.dispose();
  });

  it('is bit-identical for 1 to 4 threads at a size where the reverse index and the act pass are split', async () => {
    // 2^16 rows and T·J = 2^16 positions: the reverse index is built in one row block per thread and the act(h)
    // pass is split over threads (both must give the same result wherever the splits fall). The token and row
    // passes hand out blocks dynamically, so repeated runs at one thread count schedule them differently.
    const NN = 1 << 16;
    const TT = 512;
    const JJ = 128;
    const DD = 8;
    using x = Tensor.from(randn(TT * DD, 1), { shape: [TT, DD] });
    using U = Tensor.from(randn(NN * DD, 2), { shape: [NN, DD] });
    using V = Tensor.from(randn(NN * DD, 3), { shape: [NN, DD] });
    using idx = Tensor.from(randIdx(TT * JJ, NN, 4), { shape: [TT, JJ] });
    using g = Tensor.from(randn(TT * JJ, 5), { shape: [TT, JJ] });
    using dOut = Tensor.from(randn(TT * DD, 6), { shape: [TT, DD] });
    const run = () => {
      const f = peerExperts(x, U, V, idx, g, { act: 'gelu' });
      const b = peerExpertsBackward(dOut, x, U, V, idx, g, f.h, { act: 'gelu' });
      const r = {
        out: (f.out.data() as Float32Array).slice(),
        dx: (b.dx.data() as Float32Array).slice(),
        dg: (b.dGates.data() as Float32Array).slice(),
        rows: (b.dU.rows.data() as Int32Array).slice(),
        dU: (b.dU.values.data() as Float32Array).slice(),
        dV: (b.dV.values.data() as Float32Array).slice(),
      };
      for (const t of [f.out, f.h, b.dx, b.dGates]) t.dispose();
      disposeSparse(b.dU, b.dV);
      return r;
    };
    const a = await withThreads(1, run);
    for (const n of [2, 3, 3, 4]) {
      const b = await withThreads(n, run);
      expect(Array.from(b.rows)).toEqual(Array.from(a.rows));
      for (const key of ['out', 'dx', 'dg', 'dU', 'dV'] as const) expectBitIdentical(a[key], b[key], `${key} 1 vs ${n} threads`);
    }
    // The touched rows, ascending and distinct.
    const touched = [...new Set(idx.data() as Int32Array)].sort((p, q) => p - q);
    expect(Array.from(a.rows)).toEqual(touched);
  });

  // The row kernels are compiled with D as a constant for 64, 128, 256, 512 and 1024 (pkm_rows.h with_row_width);
  // the tests above run the generic width. Each specialised width against the reference, forward and backward.
  it('the specialised row widths (D = 64 ... 1024) match the reference on every ISA, forward and backward', async () => {
    for (const D of [64, 128, 256, 512, 1024])
      await expectEveryIsaMatchesRef({ T: 6, J: 4, D, N: 13, seed: 1 }, 'gelu', `D = ${D}`);
  });

  // The forward weights the V rows 256 coefficients at a time; at D = 256 its running sums live in registers
  // (pkm_rows.h weighted_row_sum), stored after each block of 256 and reloaded for the next. J = 300 crosses it.
  it('more than 256 experts per token (J = 300, D = 256) match the reference on every ISA', async () => {
    await expectEveryIsaMatchesRef({ T: 3, J: 300, D: 256, N: 97, seed: 11, gScale: 0.1 }, 'silu', 'J = 300');
  });

  // The backward row passes sum each gradient row in registers, one column block at a time (pkm_rows.h
  // stream_row_sums): D = 1100 takes many full blocks, then single vectors, then a scalar tail, on every ISA.
  it('wide rows (D = 1100: register column blocks and tails) agree with the reference on every ISA', async () => {
    await expectEveryIsaMatchesRef({ T: 4, J: 3, D: 1100, N: 10, seed: 1, xuScale: 0.1 }, 'silu', 'D = 1100');
  });

  // The row passes stream gradient rows out with aligned non-temporal stores; the sparse value arrays the binding
  // allocates start on a 64-byte boundary so they can (at a V8 buffer's own start they could not).
  it('returns sparse gradient values that start on a 64-byte boundary', () => {
    const DD = 64;
    using x = Tensor.from(randn(8 * DD, 1), { shape: [8, DD] });
    using U = Tensor.from(randn(300 * DD, 2), { shape: [300, DD] });
    using V = Tensor.from(randn(300 * DD, 3), { shape: [300, DD] });
    using idx = Tensor.from(randIdx(8 * 16, 300, 4), { shape: [8, 16] });
    using g = Tensor.from(randn(8 * 16, 5), { shape: [8, 16] });
    using dOut = Tensor.from(randn(8 * DD, 6), { shape: [8, DD] });
    const f = peerExperts(x, U, V, idx, g);
    const b = peerExpertsBackward(dOut, x, U, V, idx, g, f.h);
    const e = embeddingBagBackward(dOut, V, idx, g);
    for (const [name, t] of [['dU', b.dU.values], ['dV', b.dV.values], ['embedding bag dV', e.dV.values]] as const) {
      const d = t.data() as Float32Array;
      expect(d.byteOffset, name).toBe(native().alignOffset(d.buffer as ArrayBuffer, 64));
    }
    for (const t of [f.out, f.h, b.dx, b.dGates, e.dWeights]) t.dispose();
    disposeSparse(b.dU, b.dV, e.dV);
  });

  it('works with 1024² experts (small D): sparse gradients only for the rows touched', () => {
    const NN = 1024 * 1024;
    const DD = 2;
    using U = Tensor.from(randn(NN * DD, 1), { shape: [NN, DD] });
    using V = Tensor.from(randn(NN * DD, 2), { shape: [NN, DD] });
    const ids = Int32Array.from([NN - 1, 5, 5, 999999, 0, NN - 1]);
    using idx = Tensor.from(ids, { shape: [3, 2] });
    using g = Tensor.from(randn(6, 3), { shape: [3, 2] });
    using x = Tensor.from(randn(6, 4), { shape: [3, DD] });
    using dOut = Tensor.from(randn(6, 5), { shape: [3, DD] });
    const f = peerExperts(x, U, V, idx, g);
    const b = peerExpertsBackward(dOut, x, U, V, idx, g, f.h);
    const r = peerExpertsBackward(dOut, x, U, V, idx, g, f.h, { impl: 'ref' });
    expect(Array.from(b.dU.rows.data() as Int32Array)).toEqual([0, 5, 999999, NN - 1]);
    expectClose(b.dU.values.data() as Float32Array, r.dU.values.data() as Float32Array);
    expectClose(b.dV.values.data() as Float32Array, r.dV.values.data() as Float32Array);
    for (const t of [f.out, f.h, b.dx, b.dGates, r.dx, r.dGates]) t.dispose();
    disposeSparse(b.dU, b.dV, r.dU, r.dV);
  });

  it('rejects bad input with typed errors', () => {
    using x = Tensor.zeros([2, 4]);
    using U = Tensor.zeros([9, 4]);
    using V = Tensor.zeros([9, 4]);
    using idx = Tensor.from(new Int32Array([0, 1, 9, 2]), { shape: [2, 2] });
    using g = Tensor.zeros([2, 2]);
    expect(() => peerExperts(x, U, V, idx, g)).toThrow(/peerExperts: idx\[2\] must be in \[0, N=9\), got 9/);
    (idx.data() as Int32Array)[2] = 3;
    using V2 = Tensor.zeros([8, 4]);
    expect(() => peerExperts(x, U, V2, idx, g)).toThrow(ShapeError);
    using x2 = Tensor.zeros([2, 5]);
    expect(() => peerExperts(x2, U, V, idx, g)).toThrow(ShapeError);
    using gi = Tensor.zeros([2, 2], { dtype: 'i32' });
    expect(() => peerExperts(x, U, V, idx, gi)).toThrow(DTypeError);
    expect(() => peerExperts(x, U, V, idx, g, { act: 'tanh' as PeerAct })).toThrow(/act must be one of/);
    const f = peerExperts(x, U, V, idx, g);
    using hBad = Tensor.zeros([2, 3]);
    using dOut = Tensor.zeros([2, 4]);
    expect(() => peerExpertsBackward(dOut, x, U, V, idx, g, hBad)).toThrow(ShapeError);
    f.out.dispose();
    f.h.dispose();
  });
});
