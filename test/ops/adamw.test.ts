// adamwStep / sparseAdamwStep: against a float64 TS AdamW (torch.optim.AdamW semantics) and the native reference;
// sparse equals dense bit for bit on rows touched every step; lazy moments leave untouched rows alone and keep
// per-row step counters; determinism; bad input.
import { describe, expect, it } from 'vitest';

import { DTypeError, ShapeError, Tensor, adamwStep, sparseAdamwStep, type AdamwOptions } from '../../lib/index.js';
import { cpuIsas, expectBitIdentical, expectClose, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';

// Float64 AdamW as torch.optim.AdamW: decay first, then the bias-corrected Adam step.
function adamwF64(p: Float64Array, g: ArrayLike<number>, m: Float64Array, v: Float64Array, step: number, o: Required<Omit<AdamwOptions, 'impl'>>) {
  const bc1 = 1 - o.beta1 ** step;
  const bc2 = 1 - o.beta2 ** step;
  for (let i = 0; i < p.length; i++) {
    p[i] *= 1 - o.lr * o.weightDecay;
    m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
    v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
    p[i] -= (o.lr / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + o.eps));
  }
}

const HP = { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1 };

describe('adamw', () => {
  guardLeaks();

  it('dense step matches float64 AdamW and the reference over several steps, on every ISA', async () => {
    for (const isa of await cpuIsas()) await withIsa(isa, () => denseCase());
  });

  function denseCase() {
    const n = 1000;
    const p0 = randn(n, 1);
    using p = Tensor.from(p0.slice());
    using m = Tensor.zeros([n]);
    using v = Tensor.zeros([n]);
    using pr = Tensor.from(p0.slice());
    using mr = Tensor.zeros([n]);
    using vr = Tensor.zeros([n]);
    const P = Float64Array.from(p0);
    const M = new Float64Array(n);
    const Vv = new Float64Array(n);
    for (let step = 1; step <= 5; step++) {
      using g = Tensor.from(randn(n, 10 + step));
      adamwStep(p, g, m, v, step, HP);
      adamwStep(pr, g, mr, vr, step, { ...HP, impl: 'ref' });
      adamwF64(P, g.data() as Float32Array, M, Vv, step, HP);
    }
    expectClose(p.data() as Float32Array, P, { atol: 1e-6, rtol: 1e-5 }, 'p');
    expectClose(m.data() as Float32Array, M, { atol: 1e-6, rtol: 1e-5 }, 'm');
    expectClose(v.data() as Float32Array, Vv, { atol: 1e-7, rtol: 1e-5 }, 'v');
    expectClose(pr.data() as Float32Array, P, { atol: 1e-6, rtol: 1e-5 }, 'ref p');
  }

  it('sparse step equals the dense step bit for bit on rows touched every step; others untouched (every ISA)', async () => {
    for (const isa of await cpuIsas()) await withIsa(isa, () => sparseEqualsDense());
  });

  function sparseEqualsDense() {
    const N = 50;
    const D = 9;
    const p0 = randn(N * D, 2);
    using pd = Tensor.from(p0.slice(), { shape: [N, D] });
    using md = Tensor.zeros([N, D]);
    using vd = Tensor.zeros([N, D]);
    using ps = Tensor.from(p0.slice(), { shape: [N, D] });
    using ms = Tensor.zeros([N, D]);
    using vs = Tensor.zeros([N, D]);
    using steps = Tensor.zeros([N], { dtype: 'i32' });
    const always = [3, 17, 49];
    for (let step = 1; step <= 4; step++) {
      // Rows touched at this step: the `always` rows plus one that changes.
      const rows = [...new Set([...always, step * 5])].sort((a, b) => a - b);
      const gsp = randn(rows.length * D, 100 + step);
      const gdense = new Float32Array(N * D);
      rows.forEach((r, u) => gdense.set(gsp.subarray(u * D, (u + 1) * D), r * D));
      using gd = Tensor.from(gdense, { shape: [N, D] });
      adamwStep(pd, gd, md, vd, step, HP);
      using rt = Tensor.from(Int32Array.from(rows));
      using vt = Tensor.from(gsp, { shape: [rows.length, D] });
      sparseAdamwStep(ps, ms, vs, steps, { rows: rt, values: vt, numRows: N }, HP);
    }
    const row = (t: Tensor, r: number) => (t.data() as Float32Array).slice(r * D, (r + 1) * D);
    for (const r of always) {
      expectBitIdentical(row(ps, r), row(pd, r), `p row ${r}`);
      expectBitIdentical(row(ms, r), row(md, r), `m row ${r}`);
      expectBitIdentical(row(vs, r), row(vd, r), `v row ${r}`);
    }
    const st = steps.data() as Int32Array;
    expect([st[3], st[5], st[10], st[0], st[1]]).toEqual([4, 1, 1, 0, 0]);
    // Never-touched rows keep their values and zero moments (no weight decay on untouched rows).
    expectBitIdentical(row(ps, 0), p0.slice(0, D), 'untouched row 0');
    expect(Array.from(row(ms, 0))).toEqual(new Array(D).fill(0));
  }

  it('a row touched once gets one bias-corrected step (per-row counter), matching the float64 reference', () => {
    const N = 6;
    const D = 4;
    const p0 = randn(N * D, 3);
    using p = Tensor.from(p0.slice(), { shape: [N, D] });
    using m = Tensor.zeros([N, D]);
    using v = Tensor.zeros([N, D]);
    using steps = Tensor.zeros([N], { dtype: 'i32' });
    const P = Float64Array.from(p0);
    const M = new Float64Array(N * D);
    const Vv = new Float64Array(N * D);
    const rowSteps = new Array(N).fill(0);
    const schedule = [[0, 2], [2], [1, 2, 5], [2, 5]];
    schedule.forEach((rows, s) => {
      const gv = randn(rows.length * D, 50 + s);
      using rt = Tensor.from(Int32Array.from(rows));
      using vt = Tensor.from(gv, { shape: [rows.length, D] });
      sparseAdamwStep(p, m, v, steps, { rows: rt, values: vt, numRows: N }, HP);
      rows.forEach((r, u) => {
        rowSteps[r]++;
        const sl = (a: Float64Array) => a.subarray(r * D, (r + 1) * D);
        adamwF64(sl(P), gv.subarray(u * D, (u + 1) * D), sl(M), sl(Vv), rowSteps[r], HP);
      });
    });
    expect(Array.from(steps.data() as Int32Array)).toEqual(rowSteps);
    expectClose(p.data() as Float32Array, P, { atol: 1e-6, rtol: 1e-5 });
    expectClose(m.data() as Float32Array, M, { atol: 1e-6, rtol: 1e-5 });
  });

  it('is deterministic for 1 vs 2 threads', async () => {
    const run = () => {
      using p = Tensor.from(randn(100_000, 1));
      using g = Tensor.from(randn(100_000, 2));
      using m = Tensor.zeros([100_000]);
      using v = Tensor.zeros([100_000]);
      adamwStep(p, g, m, v, 1, HP);
      adamwStep(p, g, m, v, 2, HP);
      return (p.data() as Float32Array).slice();
    };
    expectBitIdentical(await withThreads(1, run), await withThreads(2, run));
  });

  // The sparse step hands out blocks of touched rows dynamically (core.h parallel_for_dynamic): the rows each thread
  // updates change from run to run, the result must not. Rows touched at different steps exercise the per-row
  // counters and the bias-correction cache.
  it('sparse step is bit-identical for 1 to 4 threads, run to run', async () => {
    const N = 5000;
    const D = 24;
    const run = () => {
      using p = Tensor.from(randn(N * D, 7), { shape: [N, D] });
      using m = Tensor.zeros([N, D]);
      using v = Tensor.zeros([N, D]);
      using steps = Tensor.zeros([N], { dtype: 'i32' });
      for (let s = 0; s < 3; s++) {
        const rows = Int32Array.from({ length: N }, (_, i) => i).filter((i) => (i * 7 + s * 3) % 5 < 3);
        using rt = Tensor.from(rows);
        using vt = Tensor.from(randn(rows.length * D, 60 + s), { shape: [rows.length, D] });
        sparseAdamwStep(p, m, v, steps, { rows: rt, values: vt, numRows: N }, HP);
      }
      return { p: (p.data() as Float32Array).slice(), m: (m.data() as Float32Array).slice(), v: (v.data() as Float32Array).slice(), steps: Array.from(steps.data() as Int32Array) };
    };
    const one = await withThreads(1, run);
    for (const n of [2, 2, 3, 4]) {
      const got = await withThreads(n, run);
      for (const key of ['p', 'm', 'v'] as const) expectBitIdentical(got[key], one[key], `${key} 1 vs ${n} threads`);
      expect(got.steps).toEqual(one.steps);
    }
  });

  it('rejects bad input with typed errors', () => {
    using p = Tensor.zeros([4, 3]);
    using m = Tensor.zeros([4, 3]);
    using v = Tensor.zeros([4, 3]);
    using steps = Tensor.zeros([4], { dtype: 'i32' });
    using g = Tensor.zeros([2, 3]);
    using dup = Tensor.from(Int32Array.from([1, 1]));
    expect(() => sparseAdamwStep(p, m, v, steps, { rows: dup, values: g, numRows: 4 }, HP)).toThrow(/strictly ascending/);
    using oob = Tensor.from(Int32Array.from([1, 4]));
    expect(() => sparseAdamwStep(p, m, v, steps, { rows: oob, values: g, numRows: 4 }, HP)).toThrow(/rows\[1\] must be in \[0, N=4\), got 4/);
    using ok = Tensor.from(Int32Array.from([0, 3]));
    using gBad = Tensor.zeros([3, 3]);
    expect(() => sparseAdamwStep(p, m, v, steps, { rows: ok, values: gBad, numRows: 4 }, HP)).toThrow(ShapeError);
    using stepsF = Tensor.zeros([4]);
    expect(() => sparseAdamwStep(p, m, v, stepsF, { rows: ok, values: g, numRows: 4 }, HP)).toThrow(DTypeError);
    expect(() => sparseAdamwStep(p, m, v, steps, { rows: ok, values: g, numRows: 4 }, { ...HP, beta1: 1 })).toThrow(/beta1 must be in \[0, 1\)/);
    using gd = Tensor.zeros([4, 3]);
    expect(() => adamwStep(p, gd, m, v, 0, HP)).toThrow(/step must be an integer >= 1/);
    using small = Tensor.zeros([3]);
    expect(() => adamwStep(p, small, m, v, 1, HP)).toThrow(ShapeError);
    expect(() => adamwStep(p, gd, m, v, 1, { ...HP, lr: -1 })).toThrow(/lr must be >= 0/);
    expect(Array.from(steps.data() as Int32Array)).toEqual([0, 0, 0, 0]);
  });
});
