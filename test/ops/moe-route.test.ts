// moeRoute / moeRouteBackward against the float64 model (test/ops/moe-model.ts), with finite differences on the
// model; both native paths (cpu, ref); every ISA; determinism; edge routings; bad input.
import { describe, expect, test } from 'vitest';

import { DTypeError, ShapeError, Tensor, moeRoute, moeRouteBackward, type MoeRouting } from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import { cpuIsas, expectBitIdentical, expectClose, finiteDiff, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';
import {
  auxModel,
  capacityModel,
  gatesModel,
  logits,
  selectModel,
  sortModel,
  toF64,
  type Gate,
  type RouteCfg,
  type Select,
} from './moe-model.js';

guardLeaks();

const GATES: Gate[] = ['sigmoid', 'softmax', 'softmax-renorm'];
const SELECTS: Select[] = ['topk', 'adaptive', 'threshold'];

interface Case {
  T: number;
  E: number;
  k: number;
  gate: Gate;
  select: Select;
  threshold?: number;
  dropout?: number;
  capacity?: number;
}

function cfgOf(c: Case, r: MoeRouting): RouteCfg {
  // The dropout mask is read back from the native result: a dropped expert is never chosen, and the model
  // checks that every survivor ranked above the cut is chosen. For the mask itself we use the native hash via
  // a routing with k = E (which chooses every survivor).
  let dropped: ((t: number, e: number) => boolean) | undefined;
  if (c.dropout) {
    const z0 = Tensor.zeros([c.T, c.E]);
    const all = moeRoute(z0, { k: c.E, dropout: c.dropout, seed: r.seed });
    const ch = all.choices.data() as Int32Array;
    const set = new Set<number>();
    for (let t = 0; t < c.T; t++) for (let j = 0; j < c.E; j++) if (ch[t * c.E + j] >= 0) set.add(t * c.E + ch[t * c.E + j]);
    all.dispose();
    z0.dispose();
    dropped = (t, e) => !set.has(t * c.E + e);
  }
  return {
    T: c.T, E: c.E, k: c.k, gate: c.gate, select: c.select, threshold: r.threshold, dropped, capacity: r.capacity,
  };
}

function checkForward(c: Case, z: Float32Array, impl: 'cpu' | 'ref', seed = 7): void {
  const zt = Tensor.from(z, { shape: [c.T, c.E] });
  const r = moeRoute(zt, {
    k: c.k, gate: c.gate, select: c.select, threshold: c.threshold, dropout: c.dropout, seed, capacity: c.capacity, impl,
  });
  const cfg = cfgOf(c, r);
  const choices = selectModel(z, cfg);
  const ids = capacityModel(choices, cfg);
  expect(Array.from(r.choices.data() as Int32Array), 'choices').toEqual(Array.from(choices));
  expect(Array.from(r.ids.data() as Int32Array), 'ids').toEqual(Array.from(ids));
  expectClose(r.gates.data() as Float32Array, gatesModel(z, choices, ids, cfg), { atol: 1e-6, rtol: 1e-5 }, 'gates');
  const s = sortModel(ids, c.E);
  expect(Array.from(r.counts.data() as Int32Array), 'counts').toEqual(s.counts);
  expect(Array.from(r.offsets.data() as BigInt64Array, Number), 'offsets').toEqual(s.offsets);
  expect(Array.from(r.sortedSlots.data() as Int32Array), 'sortedSlots').toEqual(s.sorted);
  expect(Array.from(r.slotRank.data() as Int32Array), 'slotRank').toEqual(s.rank);
  expect(r.numSlots).toBe(s.offsets[c.E]);
  const perToken = Array.from({ length: c.T }, (_, t) => Array.from(ids.subarray(t * c.k, (t + 1) * c.k)).filter((e) => e >= 0).length);
  expect(Array.from(r.tokenCounts.data() as Int32Array), 'tokenCounts').toEqual(perToken);
  const kept = (choices as Int32Array).filter((e) => e >= 0).length;
  expect(r.numDropped, 'dropped').toBe(kept - r.numSlots);
  const aux = auxModel(z, choices, cfg);
  expectClose([r.aux.entropy, r.aux.balance, r.aux.zLoss], [aux.entropy, aux.balance, aux.zLoss], { atol: 1e-6, rtol: 1e-5 }, 'aux');
  r.dispose();
  zt.dispose();
}

/** dz from the native backward vs finite differences of the float64 model with the routing held fixed. */
function checkBackward(c: Case, z: Float32Array, impl: 'cpu' | 'ref', w = { entropy: 0.7, balance: 0.3, zLoss: 0.2 }) {
  const zt = Tensor.from(z, { shape: [c.T, c.E] });
  const r = moeRoute(zt, { k: c.k, gate: c.gate, select: c.select, threshold: c.threshold, dropout: c.dropout, seed: 3, capacity: c.capacity });
  const cfg = cfgOf(c, r);
  const choices = r.choices.data() as Int32Array;
  const ids = r.ids.data() as Int32Array;
  const dg = randn(c.T * c.k, 11);
  const dgt = Tensor.from(dg, { shape: [c.T, c.k] });
  const dz = moeRouteBackward(zt, r, dgt, { ...w, impl });
  const loss = (zz: Float64Array) => {
    const g = gatesModel(zz, choices, ids, cfg);
    const a = auxModel(zz, choices, cfg);
    let l = w.entropy * a.entropy + w.balance * a.balance + w.zLoss * a.zLoss;
    for (let i = 0; i < g.length; i++) l += dg[i] * g[i];
    return l;
  };
  const fd = finiteDiff(loss, toF64(z));
  expectClose(dz.data() as Float32Array, fd, { atol: 2e-5, rtol: 1e-4 }, `dz ${c.gate}/${c.select}`);
  for (const t of [zt, dgt, dz]) t.dispose();
  r.dispose();
}

describe('moeRoute forward matches the float64 model', () => {
  for (const impl of ['cpu', 'ref'] as const)
    for (const gate of GATES)
      for (const select of SELECTS)
        test(`${impl} ${gate} ${select}`, () => {
          const k = select === 'adaptive' ? 2 : 3;
          const base = { T: 37, E: 8, k, gate, select, threshold: select === 'threshold' ? 0.6 : 0.15 };
          checkForward(base, logits(37, 8, 1), impl);
          checkForward({ ...base, dropout: 0.3 }, logits(37, 8, 2), impl);
          checkForward({ ...base, capacity: 6 }, logits(37, 8, 3, 'skewed'), impl);
          checkForward({ ...base, dropout: 0.2, capacity: 3 }, logits(37, 8, 4, 'skewed'), impl);
        });
});

describe('moeRouteBackward matches finite differences of the model', () => {
  for (const impl of ['cpu', 'ref'] as const)
    for (const gate of GATES)
      for (const select of SELECTS)
        test(`${impl} ${gate} ${select}`, () => {
          const k = select === 'adaptive' ? 2 : 3;
          const base = { T: 9, E: 6, k, gate, select, threshold: select === 'threshold' ? 0.6 : 0.15 };
          checkBackward(base, logits(9, 6, 5), impl);
          checkBackward({ ...base, dropout: 0.3, capacity: 2 }, logits(9, 6, 6, 'skewed'), impl);
        });
});

describe('moeRoute semantics', () => {
  test('top-1 softmax is Switch without capacity: argmax and its probability', () => {
    const T = 50;
    const E = 7;
    const z = logits(T, E, 9);
    const zt = Tensor.from(z, { shape: [T, E] });
    const r = moeRoute(zt, { k: 1, gate: 'softmax' });
    const ids = r.ids.data() as Int32Array;
    const g = r.gates.data() as Float32Array;
    for (let t = 0; t < T; t++) {
      const row = Array.from(z.subarray(t * E, t * E + E));
      const am = row.indexOf(Math.max(...row));
      expect(ids[t]).toBe(am);
      const p = Math.exp(row[am]) / row.reduce((s, v) => s + Math.exp(v), 0);
      expect(g[t]).toBeCloseTo(p, 6);
    }
    r.dispose();
    zt.dispose();
  });

  test('ties are broken toward the lower index', () => {
    const zt = Tensor.from([[1, 3, 3, 1, 3], [0, 0, 0, 0, 0]]);
    const r = moeRoute(zt, { k: 2, gate: 'softmax' });
    expect(r.ids.toArray()).toEqual([[1, 2], [0, 1]]);
    r.dispose();
    zt.dispose();
  });

  test('softmax-renorm gates sum to one over the chosen experts', () => {
    const zt = Tensor.from(logits(20, 9, 4), { shape: [20, 9] });
    const r = moeRoute(zt, { k: 3, gate: 'softmax-renorm' });
    const g = r.gates.data() as Float32Array;
    for (let t = 0; t < 20; t++) expect(g[3 * t] + g[3 * t + 1] + g[3 * t + 2]).toBeCloseTo(1, 6);
    r.dispose();
    zt.dispose();
  });

  test('expert dropout: deterministic by seed, survivors always win, no NaN with fewer than k survivors', () => {
    const T = 64;
    const E = 8;
    const zt = Tensor.from(logits(T, E, 12), { shape: [T, E] });
    const a = moeRoute(zt, { k: 4, dropout: 0.9, seed: 5 });
    const b = moeRoute(zt, { k: 4, dropout: 0.9, seed: 5 });
    const c = moeRoute(zt, { k: 4, dropout: 0.9, seed: 6 });
    expect(a.ids.toArray()).toEqual(b.ids.toArray());
    expect(a.ids.toArray()).not.toEqual(c.ids.toArray());
    const g = a.gates.data() as Float32Array;
    expect(g.every((v) => Number.isFinite(v))).toBe(true);
    const ids = a.ids.data() as Int32Array;
    let short = 0;
    for (let t = 0; t < T; t++) {
      const n = Array.from(ids.subarray(4 * t, 4 * t + 4)).filter((e) => e >= 0).length;
      if (n < 4) short++;
      // Unused slots come last.
      for (let j = 1; j < 4; j++) if (ids[4 * t + j - 1] < 0) expect(ids[4 * t + j]).toBe(-1);
    }
    expect(short).toBeGreaterThan(0);
    const dg = Tensor.full([T, 4], 1);
    const dz = moeRouteBackward(zt, a, dg, { entropy: 1 });
    expect((dz.data() as Float32Array).every((v) => Number.isFinite(v))).toBe(true);
    for (const t of [a, b, c]) t.dispose();
    for (const t of [zt, dg, dz]) t.dispose();
  });

  test('capacity drops overflow slots, reports them, and zeroes their gates', () => {
    const T = 40;
    const E = 4;
    const zt = Tensor.from(logits(T, E, 13, 'one'), { shape: [T, E] });
    const r = moeRoute(zt, { k: 1, gate: 'softmax', capacityFactor: 1 });
    expect(r.capacity).toBe(10);
    const counts = Array.from(r.counts.data() as Int32Array);
    expect(counts[E - 1]).toBe(10);
    expect(r.numDropped).toBe(30);
    expect(Array.from(r.dropped.data() as Int32Array)).toEqual([0, 0, 0, 30]);
    // The first 10 tokens (token order) keep their slot.
    const ids = r.ids.data() as Int32Array;
    const g = r.gates.data() as Float32Array;
    for (let t = 0; t < T; t++) {
      expect(ids[t]).toBe(t < 10 ? E - 1 : -1);
      if (t >= 10) expect(g[t]).toBe(0);
    }
    r.dispose();
    zt.dispose();
  });

  test('adaptive gating takes 2 experts exactly when the probability gap is small', () => {
    const zt = Tensor.from([[2, 1.99, 0, 0], [5, 0, 0, 0]]);
    const r = moeRoute(zt, { k: 2, gate: 'softmax', select: 'adaptive', threshold: 0.1 });
    expect(r.ids.toArray()).toEqual([[0, 1], [0, -1]]);
    r.dispose();
    zt.dispose();
  });

  test('XMoE threshold keeps the shortest prefix reaching the mass, at most k', () => {
    // p ≈ [0.665, 0.245, 0.090, 0.0000...] for z = [3, 2, 1, -10]
    const zt = Tensor.from([[3, 2, 1, -10], [3, 2, 1, -10]]);
    const r = moeRoute(zt, { k: 3, gate: 'softmax', select: 'threshold', threshold: 0.8 });
    expect(r.ids.toArray()).toEqual([[0, 1, -1], [0, 1, -1]]);
    const r2 = moeRoute(zt, { k: 2, gate: 'softmax', select: 'threshold', threshold: 0.99 });
    expect(r2.ids.toArray()).toEqual([[0, 1], [0, 1]]);
    r.dispose();
    r2.dispose();
    zt.dispose();
  });

  test('many experts: k > 16 (partial sort path), ties and dropout', () => {
    for (const gate of GATES) {
      checkForward({ T: 12, E: 40, k: 20, gate, select: 'topk' }, logits(12, 40, 50), 'cpu');
      checkForward({ T: 12, E: 40, k: 20, gate, select: 'threshold', threshold: 0.7, dropout: 0.2 }, logits(12, 40, 51), 'cpu');
    }
    const tied = new Float32Array(3 * 40).fill(0.5);
    checkForward({ T: 3, E: 40, k: 18, gate: 'softmax', select: 'topk' }, tied, 'cpu');
    checkBackward({ T: 4, E: 24, k: 18, gate: 'softmax-renorm', select: 'topk' }, logits(4, 24, 52), 'cpu');
  });

  test('edge routings: T=1, k=E, E=1, T=0, every token to one expert', () => {
    for (const [T, E, k] of [[1, 5, 2], [6, 4, 4], [5, 1, 1], [0, 3, 2]]) {
      for (const gate of GATES) checkForward({ T, E, k, gate, select: 'topk' }, logits(T, E, 20 + T), 'cpu');
    }
    checkForward({ T: 30, E: 6, k: 1, gate: 'softmax', select: 'topk' }, logits(30, 6, 21, 'one'), 'cpu');
    checkBackward({ T: 6, E: 4, k: 4, gate: 'softmax-renorm', select: 'topk' }, logits(6, 4, 22), 'cpu');
    checkBackward({ T: 5, E: 1, k: 1, gate: 'sigmoid', select: 'topk' }, logits(5, 1, 23), 'cpu');
  });

  test('the entropy gradient reaches every logit, selected or not', () => {
    const zt = Tensor.from(logits(16, 8, 30), { shape: [16, 8] });
    const r = moeRoute(zt, { k: 1 });
    const dz = moeRouteBackward(zt, r, null, { entropy: 1 });
    expect((dz.data() as Float32Array).every((v) => v !== 0)).toBe(true);
    r.dispose();
    zt.dispose();
    dz.dispose();
  });
});

describe('moeRoute determinism and ISA paths', () => {
  test('two runs bit-identical; 1 and 2 threads bit-identical; every ISA equal', async () => {
    const T = 300;
    const E = 16;
    const z = Tensor.from(logits(T, E, 40), { shape: [T, E] });
    const dg = Tensor.from(randn(T * 4, 41), { shape: [T, 4] });
    const run = () => {
      const r = moeRoute(z, { k: 4, gate: 'softmax', dropout: 0.1, seed: 9, capacityFactor: 1.1 });
      const dz = moeRouteBackward(z, r, dg, { entropy: 0.01, balance: 0.01, zLoss: 0.001 });
      const out = { gates: (r.gates.data() as Float32Array).slice(), ids: Array.from(r.ids.data() as Int32Array), dz: (dz.data() as Float32Array).slice() };
      r.dispose();
      dz.dispose();
      return out;
    };
    const a = run();
    const b = run();
    expectBitIdentical(a.gates, b.gates, 'gates');
    expectBitIdentical(a.dz, b.dz, 'dz');
    const one = await withThreads(1, run);
    const two = await withThreads(2, run);
    expectBitIdentical(one.gates, two.gates, 'gates 1 vs 2 threads');
    expectBitIdentical(one.dz, two.dz, 'dz 1 vs 2 threads');
    expect(one.ids).toEqual(two.ids);
    for (const isa of await cpuIsas()) {
      const c = await withIsa(isa, run);
      expect(c.ids, isa).toEqual(a.ids);
      expectClose(c.dz, a.dz, { atol: 1e-6, rtol: 1e-5 }, `dz ${isa}`);
    }
    z.dispose();
    dg.dispose();
  });
});

describe('moeRoute ISA row kernels (vector softmax, rank-counting selection, block partial sums)', () => {
  // Every row width the kernels treat differently: one partial chunk, exact chunks of 16, one past them, the
  // widest vector selection (64) and the softmax-only vector path with scalar selection (100).
  const WIDTHS = [1, 3, 16, 17, 32, 33, 64, 100];
  const ks = (E: number) => [...new Set([1, 2, Math.min(4, E), Math.ceil(E / 2), E])].filter((k) => k <= E);

  test('every ISA, every width, k from 1 to E, every gate and selection, dropout and capacity: the model', async () => {
    for (const isa of await cpuIsas())
      await withIsa(isa, () => {
        let variant = 0;
        for (const E of WIDTHS)
          for (const k of ks(E))
            for (const gate of GATES)
              for (const select of SELECTS) {
                if (select === 'adaptive' && k !== 2) continue;
                const T = 29;
                const v = variant++ % 4;
                const c: Case = {
                  T, E, k, gate, select, threshold: select === 'threshold' ? 0.5 : 0.1,
                  dropout: v & 1 ? 0.3 : undefined, capacity: v & 2 ? Math.max(1, Math.floor((T * k) / E / 2)) : undefined,
                };
                checkForward(c, logits(T, E, 100 + E * 7 + k, v === 3 ? 'skewed' : 'random'), 'cpu', 5 + v);
              }
      });
  });

  test('ties (quantised logits, constant rows) on every ISA: the model', async () => {
    for (const isa of await cpuIsas())
      await withIsa(isa, () => {
        for (const E of WIDTHS) {
          const T = 24;
          const z = logits(T, E, 300 + E);
          // Three levels, so most rows tie inside and across the top k; the last rows are constant.
          for (let i = 0; i < z.length; i++) z[i] = Math.round(z[i] * 1.5) / 2;
          z.fill(0.25, (T - 2) * E);
          for (const k of ks(E)) {
            checkForward({ T, E, k, gate: 'softmax', select: 'topk' }, z, 'cpu');
            checkForward({ T, E, k, gate: 'sigmoid', select: 'topk', dropout: 0.25 }, z, 'cpu');
          }
        }
      });
  });

  test('backward on every ISA and width: finite differences of the model', async () => {
    for (const isa of await cpuIsas())
      await withIsa(isa, () => {
        for (const E of [3, 17, 33, 100])
          for (const gate of GATES) checkBackward({ T: 7, E, k: Math.min(4, E), gate, select: 'topk' }, logits(7, E, 400 + E), 'cpu');
      });
  });

  test('all ISAs agree bit for bit in the forward (NaN and infinite rows too); dz within f32 rounding', async () => {
    const isas = await cpuIsas();
    for (const E of WIDTHS) {
      // 600 tokens: three partial-sum blocks of 256 tokens.
      const T = 600;
      const z = logits(T, E, 500 + E);
      z[3 * E] = NaN;
      z[5 * E + (E >> 1)] = Infinity;
      z[7 * E] = -Infinity;
      z.fill(-Infinity, 9 * E, 10 * E);
      for (let i = 20 * E; i < 40 * E; i++) z[i] = Math.round(z[i]);
      const zt = Tensor.from(z, { shape: [T, E] });
      const k = Math.min(4, E);
      const dg = Tensor.from(randn(T * k, 501), { shape: [T, k] });
      for (const gate of GATES)
        for (const [select, dropout, capacityFactor] of [['topk', 0, undefined], ['threshold', 0.2, 1.1]] as const) {
          const run = () => {
            const r = moeRoute(zt, { k, gate, select, threshold: 0.5, dropout, seed: 4, capacityFactor });
            // No regularisers here: a NaN row would make p̄, and so every row's gradient, NaN.
            const dz = moeRouteBackward(zt, r, dg, { zLoss: 0.1 });
            const out = {
              choices: Array.from(r.choices.data() as Int32Array),
              ids: Array.from(r.ids.data() as Int32Array),
              sorted: Array.from(r.sortedSlots.data() as Int32Array),
              tokenCounts: Array.from(r.tokenCounts.data() as Int32Array),
              gates: (r.gates.data() as Float32Array).slice(),
              dz: (dz.data() as Float32Array).slice(),
            };
            r.dispose();
            dz.dispose();
            return out;
          };
          const base = await withIsa('scalar', run);
          for (const isa of isas) {
            const o = await withIsa(isa, run);
            const what = `E=${E} ${gate} ${select} ${isa}`;
            expect(o.choices, `choices ${what}`).toEqual(base.choices);
            expect(o.ids, `ids ${what}`).toEqual(base.ids);
            expect(o.sorted, `sortedSlots ${what}`).toEqual(base.sorted);
            expect(o.tokenCounts, `tokenCounts ${what}`).toEqual(base.tokenCounts);
            expectBitIdentical(o.gates, base.gates, `gates ${what}`);
            for (let i = 0; i < o.dz.length; i++) {
              const a = o.dz[i];
              const b = base.dz[i];
              if (Number.isNaN(a) || Number.isNaN(b)) expect(Number.isNaN(a) && Number.isNaN(b), `dz[${i}] ${what}`).toBe(true);
              else if (Math.abs(a - b) > 1e-6 + 1e-5 * Math.abs(b)) expect.fail(`dz ${what}: differs at [${i}]: ${a} vs ${b}`);
            }
          }
        }
      zt.dispose();
      dg.dispose();
    }
  });

  test('many blocks: 1 and 2 threads bit-identical, aux included', async () => {
    const T = 1100;
    const E = 32;
    const z = Tensor.from(logits(T, E, 600, 'skewed'), { shape: [T, E] });
    const dg = Tensor.from(randn(T * 4, 601), { shape: [T, 4] });
    const run = () => {
      const r = moeRoute(z, { k: 4, gate: 'sigmoid', dropout: 0.1, seed: 2 });
      const dz = moeRouteBackward(z, r, dg, { entropy: 0.01, balance: 0.02, zLoss: 0.003 });
      const out = { aux: r.aux, sorted: Array.from(r.sortedSlots.data() as Int32Array), dz: (dz.data() as Float32Array).slice() };
      r.dispose();
      dz.dispose();
      return out;
    };
    for (const isa of await cpuIsas()) {
      const one = await withIsa(isa, () => withThreads(1, run));
      const two = await withIsa(isa, () => withThreads(2, run));
      expect(two.aux, isa).toEqual(one.aux);
      expect(two.sorted, isa).toEqual(one.sorted);
      expectBitIdentical(two.dz, one.dz, `dz 1 vs 2 threads ${isa}`);
    }
    z.dispose();
    dg.dispose();
  });
});

describe('moeRoute bad input', () => {
  const z = () => Tensor.from(logits(4, 3, 1), { shape: [4, 3] });
  test('k out of range, bad enums and numbers', () => {
    const t = z();
    expect(() => moeRoute(t, { k: 4 })).toThrow(/moeRoute: k must be in \[1, E=3\], got 4/);
    expect(() => moeRoute(t, { k: 0 })).toThrow(RangeError);
    expect(() => moeRoute(t, { k: 1.5 })).toThrow(TypeError);
    expect(() => moeRoute(t, { k: 1, gate: 'relu' as never })).toThrow(/gate must be one of/);
    expect(() => moeRoute(t, { k: 1, select: 'top' as never })).toThrow(/select must be one of/);
    expect(() => moeRoute(t, { k: 1, select: 'adaptive' })).toThrow(/adaptive selection uses k = 2/);
    expect(() => moeRoute(t, { k: 1, dropout: 1 })).toThrow(/dropout must be in \[0, 1\)/);
    expect(() => moeRoute(t, { k: 1, capacity: -2 })).toThrow(RangeError);
    t.dispose();
  });
  test('wrong shapes, dtypes, disposed tensors', () => {
    const t = z();
    const flat = Tensor.zeros([12]);
    expect(() => moeRoute(flat, { k: 1 })).toThrow(ShapeError);
    const i = Tensor.zeros([4, 3], { dtype: 'i32' });
    expect(() => moeRoute(i, { k: 1 })).toThrow(DTypeError);
    const r = moeRoute(t, { k: 2 });
    const bad = Tensor.zeros([4, 3]);
    expect(() => moeRouteBackward(t, r, bad)).toThrow(/dgates must have shape \[4, 2\], got \[4, 3\]/);
    const z2 = Tensor.zeros([5, 3]);
    expect(() => moeRouteBackward(z2, r, null)).toThrow(ShapeError);
    r.dispose();
    expect(() => moeRouteBackward(t, r, null)).toThrow(/disposed/);
    t.dispose();
    expect(() => moeRoute(t, { k: 1 })).toThrow(/disposed/);
    for (const x of [flat, i, bad, z2]) x.dispose();
  });
  test('native guards: typed-array kinds, lengths, out-of-range expert ids', () => {
    const n = native();
    const zz = new Float32Array(12);
    const i32 = (n: number) => new Int32Array(n);
    expect(() =>
      n.moeRoute(4, 3, 2, 'sigmoid', 'topk', 0, 0, 0, -1, false, new Float64Array(12) as never, i32(8), i32(8), new Float32Array(8), i32(3), new BigInt64Array(4), i32(8), i32(8), i32(3)),
    ).toThrow(DTypeError);
    expect(() =>
      n.moeRoute(4, 3, 2, 'sigmoid', 'topk', 0, 0, 0, -1, false, zz, i32(7), i32(8), new Float32Array(8), i32(3), new BigInt64Array(4), i32(8), i32(8), i32(3)),
    ).toThrow(/choices must have 8 elements, got 7/);
    expect(() =>
      n.moeRoute(4, 3, 4, 'sigmoid', 'topk', 0, 0, 0, -1, false, zz, i32(16), i32(16), new Float32Array(16), i32(3), new BigInt64Array(4), i32(16), i32(16), i32(3)),
    ).toThrow(/moeRoute: k must be in \[1, E=3\], got 4/);
    const badChoices = Int32Array.from([0, 1, 2, 3, 0, 1, 0, 1]);
    expect(() =>
      n.moeRouteBackward(4, 3, 2, 'sigmoid', 'topk', 0, 0, 0, -1, false, zz, badChoices, Int32Array.from(badChoices), new Float32Array(8), 0, 0, 0, new Float32Array(12)),
    ).toThrow(/choices\[3\] must be in \[-1, E=3\), got 3/);
  });
});
