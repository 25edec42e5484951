// moeExperts / moeExpertsBackward (the grouped-GEMM expert block) and its primitives, against the float64 model
// with finite differences on the model, the native ref, pinned semantics (σ-MoE with k = E is a gated dense MLP;
// top-1 softmax is Switch), determinism, every ISA, edge routings and bad input.
import { describe, expect, test } from 'vitest';

import {
  DTypeError,
  ShapeError,
  Tensor,
  ffnDense,
  moeCombine,
  moeExpertDown,
  moeExpertUp,
  moeExperts,
  moeExpertsBackward,
  moeRoute,
  type Activation,
  type MoeRouteOptions,
} from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';
import { dot, expertsModel, logits, toF64, type ExpertsIn } from './moe-model.js';

guardLeaks();

interface Problem {
  T: number;
  D: number;
  E: number;
  k: number;
  G: number;
  act: Activation;
  bias: boolean;
  route: MoeRouteOptions;
  kind?: 'random' | 'skewed' | 'one';
  seed?: number;
}

function make(p: Problem) {
  const s = p.seed ?? 1;
  const z = Tensor.from(logits(p.T, p.E, s, p.kind), { shape: [p.T, p.E] });
  const x = Tensor.from(randn(p.T * p.D, s + 1), { shape: [p.T, p.D] });
  const w1 = Tensor.from(randn(p.E * p.D * p.G, s + 2, 1 / Math.sqrt(p.D)), { shape: [p.E, p.D, p.G] });
  const w2 = Tensor.from(randn(p.E * p.G * p.D, s + 3, 1 / Math.sqrt(p.G)), { shape: [p.E, p.G, p.D] });
  const b1 = p.bias ? Tensor.from(randn(p.E * p.G, s + 4, 0.1), { shape: [p.E, p.G] }) : undefined;
  const b2 = p.bias ? Tensor.from(randn(p.D, s + 5, 0.1), { shape: [p.D] }) : undefined;
  const dy = Tensor.from(randn(p.T * p.D, s + 6), { shape: [p.T, p.D] });
  const r = moeRoute(z, p.route);
  const params = { w1, w2, b1, b2 };
  const dispose = () => {
    for (const t of [z, x, w1, w2, b1, b2, dy]) t?.dispose();
    r.dispose();
  };
  return { z, x, params, dy, r, dispose };
}

function modelIn(p: Problem, m: ReturnType<typeof make>): ExpertsIn {
  return {
    T: p.T, D: p.D, E: p.E, k: p.k, G: p.G, act: p.act,
    x: toF64(m.x.data() as Float32Array),
    w1: toF64(m.params.w1.data() as Float32Array),
    w2: toF64(m.params.w2.data() as Float32Array),
    b1: m.params.b1 ? toF64(m.params.b1.data() as Float32Array) : undefined,
    b2: m.params.b2 ? toF64(m.params.b2.data() as Float32Array) : undefined,
    ids: m.r.ids.data() as Int32Array,
    gates: toF64(m.r.gates.data() as Float32Array),
  };
}

const TOL = { atol: 2e-5, rtol: 2e-4 };

/** Forward and every gradient of one impl against the model (forward) and finite differences (backward). */
function checkAgainstModel(p: Problem, impl: 'cpu' | 'ref') {
  const m = make(p);
  const { y, saved } = moeExperts(m.x, m.r, m.params, { act: p.act, impl });
  const inp = modelIn(p, m);
  expectClose(y.data() as Float32Array, expertsModel(inp), TOL, 'y');
  const g = moeExpertsBackward(m.dy, m.x, m.r, m.params, saved, { act: p.act, impl });
  const dyv = toF64(m.dy.data() as Float32Array);
  const lossWith = (key: keyof ExpertsIn) => (v: Float64Array) => dot(dyv, expertsModel({ ...inp, [key]: v }));
  const cases: [keyof ExpertsIn, Tensor | undefined][] = [
    ['x', g.dx], ['w1', g.dw1], ['w2', g.dw2], ['b1', g.db1], ['b2', g.db2], ['gates', g.dgates],
  ];
  for (const [key, grad] of cases) {
    if (!inp[key]) continue;
    const fd = finiteDiff(lossWith(key), toF64(inp[key] as ArrayLike<number>));
    // Slots that are not kept have no gate gradient (the model's derivative there is 0 too).
    expectClose(grad!.data() as Float32Array, fd, { atol: 1e-4, rtol: 1e-3 }, `d${String(key)} (${impl})`);
  }
  for (const t of [y, saved.pre, saved.hs, g.dx, g.dw1, g.dw2, g.db1, g.db2, g.dgates]) t?.dispose();
  m.dispose();
}

function runBoth(p: Problem) {
  const m = make(p);
  const out = (impl: 'cpu' | 'ref') => {
    const f = moeExperts(m.x, m.r, m.params, { act: p.act, impl });
    const g = moeExpertsBackward(m.dy, m.x, m.r, m.params, f.saved, { act: p.act, impl });
    const res: Record<string, Float32Array> = {
      y: f.y.data() as Float32Array, pre: f.saved.pre.data() as Float32Array, hs: f.saved.hs.data() as Float32Array,
      dx: g.dx.data() as Float32Array, dw1: g.dw1.data() as Float32Array, dw2: g.dw2.data() as Float32Array,
      dgates: g.dgates.data() as Float32Array,
    };
    if (g.db1) res.db1 = g.db1.data() as Float32Array;
    if (g.db2) res.db2 = g.db2.data() as Float32Array;
    for (const t of [f.y, f.saved.pre, f.saved.hs, g.dx, g.dw1, g.dw2, g.db1, g.db2, g.dgates]) t?.dispose();
    return res;
  };
  return { m, out };
}

/** The fast path against the native reference on a problem too large for finite differences. */
function checkCpuVsRef(p: Problem) {
  const { m, out } = runBoth(p);
  const a = out('cpu');
  const b = out('ref');
  for (const key of Object.keys(b)) expectClose(a[key], b[key], { atol: 1e-4, rtol: 1e-3 }, `${key} cpu vs ref`);
  m.dispose();
  return a;
}

describe('moeExperts forward and backward match the float64 model', () => {
  for (const impl of ['cpu', 'ref'] as const)
    for (const act of ['relu', 'gelu', 'silu'] as const)
      test(`${impl} ${act}`, () => {
        checkAgainstModel({ T: 7, D: 5, E: 4, k: 2, G: 3, act, bias: true, route: { k: 2 } }, impl);
        checkAgainstModel(
          { T: 8, D: 4, E: 3, k: 1, G: 5, act, bias: false, route: { k: 1, gate: 'softmax', capacity: 2 }, kind: 'skewed' },
          impl,
        );
      });
});

describe('moeExperts cpu matches the native reference', () => {
  test('multi-tile shapes: row blocks, column blocks and long dW reductions', () => {
    checkCpuVsRef({ T: 700, D: 24, E: 3, k: 2, G: 136, act: 'relu', bias: true, route: { k: 2 } });
    checkCpuVsRef({ T: 1100, D: 8, E: 1, k: 1, G: 8, act: 'silu', bias: true, route: { k: 1 } });
    checkCpuVsRef({ T: 60, D: 8, E: 2, k: 1, G: 530, act: 'gelu', bias: true, route: { k: 1 } });
    checkCpuVsRef({ T: 30, D: 600, E: 2, k: 2, G: 8, act: 'relu', bias: true, route: { k: 2 } });
  });
  test('routings: skewed, one expert takes all, dropout with capacity', () => {
    checkCpuVsRef({ T: 200, D: 16, E: 8, k: 2, G: 24, act: 'gelu', bias: false, route: { k: 2 }, kind: 'skewed' });
    checkCpuVsRef({ T: 120, D: 16, E: 6, k: 1, G: 16, act: 'relu', bias: true, route: { k: 1, gate: 'softmax' }, kind: 'one' });
    checkCpuVsRef({
      T: 150, D: 12, E: 8, k: 3, G: 20, act: 'relu', bias: true,
      route: { k: 3, gate: 'softmax-renorm', dropout: 0.3, seed: 2, capacityFactor: 0.8 },
    });
    checkCpuVsRef({ T: 90, D: 12, E: 8, k: 2, G: 8, act: 'silu', bias: false, route: { k: 2, select: 'adaptive', gate: 'softmax', threshold: 0.2 } });
  });
  test('edge routings: T=1, k=E, E=1, T=0', () => {
    checkCpuVsRef({ T: 1, D: 8, E: 4, k: 2, G: 8, act: 'relu', bias: true, route: { k: 2 } });
    checkCpuVsRef({ T: 9, D: 8, E: 4, k: 4, G: 8, act: 'relu', bias: true, route: { k: 4 } });
    checkCpuVsRef({ T: 9, D: 8, E: 1, k: 1, G: 8, act: 'gelu', bias: true, route: { k: 1 } });
    const r = checkCpuVsRef({ T: 0, D: 8, E: 3, k: 2, G: 8, act: 'relu', bias: true, route: { k: 2 } });
    expect(r.dw1.every((v) => v === 0)).toBe(true);
    expect(r.db2.every((v) => v === 0)).toBe(true);
  });
  test('experts that receive no tokens get exactly zero weight gradients', () => {
    const p: Problem = { T: 40, D: 8, E: 5, k: 1, G: 6, act: 'relu', bias: true, route: { k: 1, gate: 'softmax' }, kind: 'one' };
    const { m, out } = runBoth(p);
    const counts = m.r.counts.data() as Int32Array;
    expect(counts[4]).toBe(40);
    for (const impl of ['cpu', 'ref'] as const) {
      const g = out(impl);
      for (let e = 0; e < 4; e++) {
        expect(g.dw1.subarray(e * 48, e * 48 + 48).every((v) => v === 0), `dw1[${e}] ${impl}`).toBe(true);
        expect(g.dw2.subarray(e * 48, e * 48 + 48).every((v) => v === 0), `dw2[${e}] ${impl}`).toBe(true);
        expect(g.db1.subarray(e * 6, e * 6 + 6).every((v) => v === 0), `db1[${e}] ${impl}`).toBe(true);
      }
    }
    // Native contract: without the dwZeroed promise the kernel overwrites whatever the dW buffers held.
    const n = native();
    const { T, D, E, k, G } = { T: 40, D: 8, E: 5, k: 1, G: 6 };
    const f = moeExperts(m.x, m.r, m.params, { act: 'relu' });
    const dirty = (len: number) => new Float32Array(len).fill(Number.NaN);
    const dw1 = dirty(E * D * G);
    const dw2 = dirty(E * G * D);
    const db1 = dirty(E * G);
    n.moeExpertsBackward(
      T, D, E, k, G, 'relu', false, m.r.gates.data() as Float32Array, m.r.offsets.data() as BigInt64Array,
      m.r.sortedSlots.data() as Int32Array, m.r.slotRank.data() as Int32Array, m.x.data() as Float32Array,
      m.params.w1.data() as Float32Array, m.params.w2.data() as Float32Array, f.saved.pre.data() as Float32Array,
      f.saved.hs.data() as Float32Array, m.dy.data() as Float32Array, new Float32Array(T * D), dw1, db1, dw2,
      new Float32Array(D), new Float32Array(T * k), false,
    );
    expect(dw1.subarray(0, 4 * D * G).every((v) => v === 0)).toBe(true);
    expect(dw2.subarray(0, 4 * G * D).every((v) => v === 0)).toBe(true);
    expect(db1.subarray(0, 4 * G).every((v) => v === 0)).toBe(true);
    expect(dw1.every((v) => Number.isFinite(v))).toBe(true);
    for (const u of [f.y, f.saved.pre, f.saved.hs]) u.dispose();
    m.dispose();
  });
});

describe('pinned semantics', () => {
  test('sigma-moe with K=E and no dropout equals a dense MLP of width E·G with channels scaled by their gate', () => {
    const T = 6;
    const D = 10;
    const E = 4;
    const G = 5;
    const p: Problem = { T, D, E, k: E, G, act: 'relu', bias: false, route: { k: E, gate: 'sigmoid' } };
    const m = make(p);
    const { y, saved } = moeExperts(m.x, m.r, m.params, { act: 'relu' });
    const z = m.z.data() as Float32Array;
    const xv = m.x.data() as Float32Array;
    const w1 = m.params.w1.data() as Float32Array;
    const w2 = m.params.w2.data() as Float32Array;
    // Dense W1 [D, E·G] (expert blocks side by side) and W2 [E·G, D]; per token the rows of W2 are scaled by
    // σ(z) of their group, which equals scaling the channels since the gate multiplies after the activation.
    const W1 = new Float32Array(D * E * G);
    for (let e = 0; e < E; e++) for (let d = 0; d < D; d++) for (let c = 0; c < G; c++) W1[d * E * G + e * G + c] = w1[(e * D + d) * G + c];
    const w1d = Tensor.from(W1, { shape: [D, E * G] });
    const yv = y.data() as Float32Array;
    for (let t = 0; t < T; t++) {
      const W2 = new Float32Array(E * G * D);
      for (let e = 0; e < E; e++) {
        const s = 1 / (1 + Math.exp(-z[t * E + e]));
        for (let i = 0; i < G * D; i++) W2[e * G * D + i] = s * w2[e * G * D + i];
      }
      const w2d = Tensor.from(W2, { shape: [E * G, D] });
      const xt = Tensor.from(xv.slice(t * D, t * D + D), { shape: [1, D] });
      const dense = ffnDense(xt, { w1: w1d, w2: w2d }, { act: 'relu' });
      expectClose(yv.subarray(t * D, t * D + D), dense.y.data() as Float32Array, TOL, `token ${t}`);
      for (const u of [w2d, xt, dense.y, dense.saved.pre, dense.saved.h]) u.dispose();
    }
    for (const u of [w1d, y, saved.pre, saved.hs]) u.dispose();
    m.dispose();
  });

  test('top-1 softmax MoE equals Switch: p_max times the argmax expert FFN', () => {
    const T = 12;
    const D = 6;
    const E = 5;
    const G = 7;
    const m = make({ T, D, E, k: 1, G, act: 'gelu', bias: false, route: { k: 1, gate: 'softmax' } });
    const { y, saved } = moeExperts(m.x, m.r, m.params, { act: 'gelu' });
    const z = m.z.data() as Float32Array;
    const xv = m.x.data() as Float32Array;
    const w1 = m.params.w1.data() as Float32Array;
    const w2 = m.params.w2.data() as Float32Array;
    for (let t = 0; t < T; t++) {
      const row = Array.from(z.subarray(t * E, t * E + E));
      const e = row.indexOf(Math.max(...row));
      const pm = Math.exp(row[e]) / row.reduce((s, v) => s + Math.exp(v), 0);
      const a = Tensor.from(w1.slice(e * D * G, (e + 1) * D * G), { shape: [D, G] });
      const b = Tensor.from(w2.slice(e * G * D, (e + 1) * G * D).map((v) => v * pm), { shape: [G, D] });
      const xt = Tensor.from(xv.slice(t * D, t * D + D), { shape: [1, D] });
      const dense = ffnDense(xt, { w1: a, w2: b }, { act: 'gelu' });
      expectClose((y.data() as Float32Array).subarray(t * D, t * D + D), dense.y.data() as Float32Array, TOL, `token ${t}`);
      for (const u of [a, b, xt, dense.y, dense.saved.pre, dense.saved.h]) u.dispose();
    }
    for (const u of [y, saved.pre, saved.hs]) u.dispose();
    m.dispose();
  });

  test('the primitives (up, down, combine) compose to moeExperts', () => {
    const m = make({ T: 64, D: 16, E: 4, k: 2, G: 12, act: 'silu', bias: true, route: { k: 2 } });
    const whole = moeExperts(m.x, m.r, m.params, { act: 'silu' });
    const up = moeExpertUp(m.x, m.params.w1, m.r, { b1: m.params.b1, act: 'silu' });
    const yr = moeExpertDown(up.hs, m.params.w2, m.r);
    const y = moeCombine(yr, m.r, { b2: m.params.b2 });
    expectBitIdentical(up.pre.data() as Float32Array, whole.saved.pre.data() as Float32Array, 'pre');
    expectBitIdentical(up.hs.data() as Float32Array, whole.saved.hs.data() as Float32Array, 'hs');
    // The fused layer sums a token's experts in expert order, the combine primitive in slot order.
    expectClose(y.data() as Float32Array, whole.y.data() as Float32Array, { atol: 1e-6, rtol: 1e-5 }, 'y');
    for (const u of [whole.y, whole.saved.pre, whole.saved.hs, up.pre, up.hs, yr, y]) u.dispose();
    m.dispose();
  });

  test('capacity-dropped tokens get only the shared bias', () => {
    const m = make({ T: 20, D: 6, E: 2, k: 1, G: 4, act: 'relu', bias: true, route: { k: 1, gate: 'softmax', capacity: 3 }, kind: 'one' });
    const { y, saved } = moeExperts(m.x, m.r, m.params, { act: 'relu' });
    const ids = m.r.ids.data() as Int32Array;
    const b2 = m.params.b2!.data() as Float32Array;
    const yv = y.data() as Float32Array;
    for (let t = 0; t < 20; t++) if (ids[t] < 0) expect(Array.from(yv.subarray(t * 6, t * 6 + 6))).toEqual(Array.from(b2));
    for (const u of [y, saved.pre, saved.hs]) u.dispose();
    m.dispose();
  });
});

describe('determinism and ISA paths', () => {
  test('two runs bit-identical; 1 and 2 threads bit-identical; every ISA close to ref', async () => {
    const p: Problem = { T: 512, D: 64, E: 8, k: 2, G: 64, act: 'relu', bias: true, route: { k: 2 }, kind: 'skewed' };
    const { m, out } = runBoth(p);
    const a = out('cpu');
    const b = out('cpu');
    for (const key of Object.keys(a)) expectBitIdentical(a[key], b[key], key);
    const one = await withThreads(1, () => out('cpu'));
    const two = await withThreads(2, () => out('cpu'));
    for (const key of Object.keys(a)) expectBitIdentical(one[key], two[key], `${key} 1 vs 2 threads`);
    const ref = out('ref');
    for (const isa of await cpuIsas()) {
      const c = await withIsa(isa, () => out('cpu'));
      for (const key of Object.keys(a)) expectClose(c[key], ref[key], { atol: 1e-4, rtol: 1e-3 }, `${key} ${isa}`);
    }
    m.dispose();
  });
});

describe('bad input', () => {
  test('shapes, dtypes, routing mismatch, disposed tensors', () => {
    const m = make({ T: 6, D: 4, E: 3, k: 2, G: 5, act: 'relu', bias: true, route: { k: 2 } });
    const { w1, w2 } = m.params;
    const wrongE = Tensor.zeros([2, 4, 5]);
    expect(() => moeExperts(m.x, m.r, { w1: wrongE, w2 })).toThrow(/moeExperts: w1 must have shape \[3, 4, 5\], got \[2, 4, 5\]/);
    const w2i = Tensor.zeros([3, 5, 4], { dtype: 'i32' });
    expect(() => moeExperts(m.x, m.r, { w1, w2: w2i })).toThrow(DTypeError);
    const x7 = Tensor.zeros([7, 4]);
    expect(() => moeExperts(x7, m.r, { w1, w2 })).toThrow(/x has T=7 rows but the routing has T=6/);
    const b1 = Tensor.zeros([3, 4]);
    expect(() => moeExperts(m.x, m.r, { w1, w2, b1 })).toThrow(ShapeError);
    expect(() => moeExperts(m.x, m.r, { w1, w2 }, { act: 'tanh' as never })).toThrow(/act must be one of relu, gelu, silu/);
    const f = moeExperts(m.x, m.r, { w1, w2 });
    const dyBad = Tensor.zeros([6, 5]);
    expect(() => moeExpertsBackward(dyBad, m.x, m.r, { w1, w2 }, f.saved)).toThrow(/dy must have shape \[6, 4\]/);
    f.saved.pre.dispose();
    expect(() => moeExpertsBackward(m.dy, m.x, m.r, { w1, w2 }, f.saved)).toThrow(/disposed/);
    for (const u of [wrongE, w2i, x7, b1, f.y, f.saved.hs, dyBad]) u.dispose();
    m.dispose();
  });

  test('native guards: out-of-range slots, inconsistent ranks, bad offsets', () => {
    const n = native();
    const T = 3;
    const D = 2;
    const E = 2;
    const k = 1;
    const G = 2;
    const gates = new Float32Array(3).fill(1);
    const x = new Float32Array(T * D);
    const w1 = new Float32Array(E * D * G);
    const w2 = new Float32Array(E * G * D);
    const call = (offsets: bigint[], sorted: number[], rank: number[]) =>
      n.moeExperts(T, D, E, k, G, 'relu', false, gates, BigInt64Array.from(offsets), Int32Array.from(sorted), Int32Array.from(rank),
        x, w1, null, w2, null, new Float32Array(sorted.length * G), new Float32Array(sorted.length * G), new Float32Array(T * D));
    expect(() => call([0n, 2n, 3n], [0, 1, 2], [0, 1, 2])).not.toThrow();
    expect(() => call([0n, 2n, 3n], [0, 1, 5], [0, 1, 2])).toThrow(/sortedSlots\[2\] must be in \[0, T·k=3\), got 5/);
    expect(() => call([0n, 2n, 3n], [0, 0, 2], [0, 1, 2])).toThrow(/slotRank\[sortedSlots\[1\]\] must be 1, got 0/);
    expect(() => call([0n, 2n, 1n], [0], [0, -1, -1])).toThrow(/offsets must be non-decreasing/);
    expect(() => call([0n, 2n, 4n], [0, 1, 2, 0], [0, 1, 2])).toThrow(/offsets\[E\] must be <= T·k=3, got 4/);
    expect(() =>
      n.moeExperts(T, D, E, k, G, 'relu', false, gates, BigInt64Array.from([0n, 2n, 3n]), Int32Array.from([0, 1, 2]), Int32Array.from([0, 1, 2]),
        new Float64Array(6) as never, w1, null, w2, null, new Float32Array(6), new Float32Array(6), new Float32Array(6)),
    ).toThrow(DTypeError);
  });
});
