// The Transformer ops (lib/ops/nn.ts): linear, embedding, layerNorm, attention (causal, rotary), crossEntropy,
// dropout, clipGradNorm. Each: cpu against the float64-accumulating ref (forward and backward), the ref's backward
// against finite differences of the ref's forward (directional derivatives, float64 objective), determinism (two runs
// and 1 vs 2 threads bit-identical), bad input (a typed error, the process survives), no leaks.
import { describe, expect, test } from 'vitest';

import { DTypeError, DisposedError, ShapeError, Tensor, memory } from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import * as nn from '../../lib/ops/nn.js';
import { cpuIsas, expectBitIdentical, expectClose, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';

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
      return { y: r.out, extra: [r.saved.qr, r.saved.kr, r.saved.lse] };
    },
    backward: (x, dy, impl) => {
      const r = nn.attention(x.qkv, { B: 2, S: 5, H: 2 }, { impl });
      const d = nn.attentionBackward(dy, x.qkv, { B: 2, S: 5, H: 2 }, r.saved, { impl });
      for (const t of [r.out, r.saved.qr, r.saved.kr, r.saved.lse]) t.dispose();
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

// ---- attention: the blocked (FlashAttention-2 style) CPU kernel ------------------------------------------------

interface AttnShape {
  B: number;
  S: number;
  H: number;
  dh: number;
  /** Input scale: large values make the softmax peaky (exercises the online max rescaling). */
  scale?: number;
}

/** Independent float64 spec of the forward in TS: out [B·S, D] and lse [B, H, S]. */
function attentionF64(qkv: Float32Array, { B, S, H, dh }: AttnShape): { out: Float64Array; lse: Float64Array } {
  const D = H * dh;
  const out = new Float64Array(B * S * D);
  const lse = new Float64Array(B * H * S);
  const rot = (row: number, col: number, pos: number): Float64Array => {
    const r = new Float64Array(dh);
    for (let m = 0; m < dh / 2; m++) {
      const a = pos * Math.pow(10000, (-2 * m) / dh);
      const u = qkv[row * 3 * D + col + 2 * m];
      const w = qkv[row * 3 * D + col + 2 * m + 1];
      r[2 * m] = u * Math.cos(a) - w * Math.sin(a);
      r[2 * m + 1] = u * Math.sin(a) + w * Math.cos(a);
    }
    return r;
  };
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const q = Array.from({ length: S }, (_, i) => rot(b * S + i, h * dh, i));
      const k = Array.from({ length: S }, (_, i) => rot(b * S + i, D + h * dh, i));
      for (let i = 0; i < S; i++) {
        const s = new Float64Array(i + 1);
        for (let j = 0; j <= i; j++) {
          for (let e = 0; e < dh; e++) s[j] += q[i][e] * k[j][e];
          s[j] /= Math.sqrt(dh);
        }
        const mx = Math.max(...s);
        let z = 0;
        for (let j = 0; j <= i; j++) z += Math.exp(s[j] - mx);
        lse[(b * H + h) * S + i] = mx + Math.log(z);
        for (let j = 0; j <= i; j++) {
          const p = Math.exp(s[j] - mx) / z;
          for (let e = 0; e < dh; e++) out[(b * S + i) * D + h * dh + e] += p * qkv[(b * S + j) * 3 * D + 2 * D + h * dh + e];
        }
      }
    }
  return { out, lse };
}

function attnInputs(sh: AttnShape, seed: number): { qkv: Tensor; dout: Tensor } {
  const T = sh.B * sh.S;
  const D = sh.H * sh.dh;
  return {
    qkv: Tensor.from(randn(T * 3 * D, seed, sh.scale ?? 1), { shape: [T, 3 * D] }),
    dout: Tensor.from(randn(T * D, seed + 1), { shape: [T, D] }),
  };
}

/** Forward and backward with one impl; returns host copies and disposes every tensor it made. */
function attnRun(sh: AttnShape, x: { qkv: Tensor; dout: Tensor }, impl: Impl): Record<'out' | 'qr' | 'kr' | 'lse' | 'dqkv', Float32Array> {
  const dims = { B: sh.B, S: sh.S, H: sh.H };
  const r = nn.attention(x.qkv, dims, { impl });
  const d = nn.attentionBackward(x.dout, x.qkv, dims, r.saved, { impl });
  const res = { out: f32(r.out).slice(), qr: f32(r.saved.qr).slice(), kr: f32(r.saved.kr).slice(), lse: f32(r.saved.lse).slice(), dqkv: f32(d).slice() };
  for (const t of [r.out, r.saved.qr, r.saved.kr, r.saved.lse, d]) t.dispose();
  return res;
}

describe('attention: blocked causal kernel (no S×S tensors)', () => {
  // S around and across the block sizes (64 query rows × 128 keys forward, × 64 keys backward): 1, 3, 64, 65, 70, 97, 130, 200, 257, 384 (a
  // multiple of both); dh 2..64, odd multiples of 2 (6, 10) for the vector tails.
  const shapes: AttnShape[] = [
    { B: 1, S: 1, H: 1, dh: 4 },
    { B: 2, S: 3, H: 2, dh: 8 },
    { B: 1, S: 64, H: 1, dh: 2 },
    { B: 1, S: 65, H: 2, dh: 6 },
    { B: 1, S: 70, H: 3, dh: 16, scale: 3 },
    { B: 3, S: 97, H: 1, dh: 10 },
    { B: 2, S: 130, H: 2, dh: 32 },
    { B: 1, S: 257, H: 4, dh: 64 },
    { B: 1, S: 200, H: 1, dh: 4, scale: 4 },
    { B: 1, S: 384, H: 1, dh: 8 },
  ];

  test('the float64 ref equals an independent float64 spec (forward: out, lse)', () => {
    for (const sh of [shapes[1], shapes[4], { B: 2, S: 9, H: 2, dh: 6, scale: 2 }]) {
      const x = attnInputs(sh, 5);
      const r = nn.attention(x.qkv, sh, { impl: 'ref' });
      const e = attentionF64(f32(x.qkv), sh);
      expectClose(f32(r.out), e.out, { atol: 1e-6, rtol: 1e-5 }, `ref out ${JSON.stringify(sh)}`);
      expectClose(f32(r.saved.lse), e.lse, { atol: 1e-6, rtol: 1e-5 }, `ref lse ${JSON.stringify(sh)}`);
      for (const t of [x.qkv, x.dout, r.out, r.saved.qr, r.saved.kr, r.saved.lse]) t.dispose();
    }
  });

  test('ref backward = finite differences of the ref forward (across several rows, peaky softmax)', () => {
    const sh = { B: 2, S: 9, H: 2, dh: 6, scale: 2 };
    const x = attnInputs(sh, 17);
    const g = attnRun(sh, x, 'ref').dqkv;
    const xs = f32(x.qkv);
    const orig = xs.slice();
    const d = f32(x.dout);
    for (const seed of [1, 2, 3]) {
      const u = randn(xs.length, 300 + seed);
      const obj = (s: number): number => {
        for (let i = 0; i < xs.length; i++) xs[i] = orig[i] + s * u[i];
        const e = attentionF64(xs, sh).out;
        let v = 0;
        for (let i = 0; i < e.length; i++) v += e[i] * d[i];
        return v;
      };
      // The objective is float64 in TS on float32 inputs; a moderate step keeps the rounding of xs small.
      const eps = 1e-3;
      const numeric = (obj(eps) - obj(-eps)) / (2 * eps);
      xs.set(orig);
      let analytic = 0;
      for (let i = 0; i < g.length; i++) analytic += g[i] * u[i];
      expect(Math.abs(numeric - analytic), `direction ${seed}: analytic ${analytic} vs numeric ${numeric}`).toBeLessThan(1e-3 * (1 + Math.abs(analytic)));
    }
    x.qkv.dispose();
    x.dout.dispose();
  });

  test('cpu = ref (out, qr, kr, lse, dqkv) at every shape on every ISA path', async () => {
    const isas = await cpuIsas();
    for (const sh of shapes) {
      const x = attnInputs(sh, 40 + sh.S);
      const ref = attnRun(sh, x, 'ref');
      // dS = P ⊙ (dP − Δ) cancels in float32, so the gradient's absolute error scales with its largest entries
      // (large inputs, peaky softmax): the absolute tolerance is relative to max |ref dqkv|.
      const gmax = ref.dqkv.reduce((m, v) => Math.max(m, Math.abs(v)), 1);
      for (const isa of isas) {
        const got = await withIsa(isa, () => attnRun(sh, x, 'cpu'));
        const what = `${isa} ${JSON.stringify(sh)}`;
        expectClose(got.out, ref.out, { atol: 2e-5, rtol: 1e-4 }, `${what} out`);
        expectClose(got.qr, ref.qr, { atol: 1e-6, rtol: 1e-5 }, `${what} qr`);
        expectClose(got.kr, ref.kr, { atol: 1e-6, rtol: 1e-5 }, `${what} kr`);
        expectClose(got.lse, ref.lse, { atol: 2e-5, rtol: 1e-5 }, `${what} lse`);
        expectClose(got.dqkv, ref.dqkv, { atol: 2e-5 * gmax, rtol: 2e-4 }, `${what} dqkv (max |ref| ${gmax.toFixed(2)})`);
      }
      x.qkv.dispose();
      x.dout.dispose();
    }
  });

  test('deterministic: two runs and 1 vs 2 threads bit-identical (one owner per (sequence, head))', async () => {
    for (const sh of [shapes[6], shapes[7], { B: 3, S: 33, H: 1, dh: 8 }]) {
      const x = attnInputs(sh, 77);
      const a = attnRun(sh, x, 'cpu');
      const b = attnRun(sh, x, 'cpu');
      const t1 = await withThreads(1, () => attnRun(sh, x, 'cpu'));
      const t2 = await withThreads(2, () => attnRun(sh, x, 'cpu'));
      for (const k of Object.keys(a) as (keyof typeof a)[]) {
        expectBitIdentical(b[k], a[k], `${k} second run`);
        expectBitIdentical(t1[k], a[k], `${k} 1 thread`);
        expectBitIdentical(t2[k], a[k], `${k} 2 threads`);
      }
      x.qkv.dispose();
      x.dout.dispose();
    }
  });

  test('memory is O(S): S = 4096 runs, saves qr, kr [S, dh] and lse [S] only, and matches the ref', () => {
    const sh = { B: 1, S: 4096, H: 1, dh: 16 };
    const x = attnInputs(sh, 9);
    const before = memory().hostBytes;
    const r = nn.attention(x.qkv, sh);
    // out, qr, kr: S·dh floats each; lse: S floats. A probability matrix would be S² = 16.7 M floats (64 MiB).
    expect(memory().hostBytes - before).toBe(4 * (3 * sh.S * sh.dh + sh.S));
    expect(r.saved.qr.shape).toEqual([1, 1, sh.S, sh.dh]);
    expect(r.saved.kr.shape).toEqual([1, 1, sh.S, sh.dh]);
    expect(r.saved.lse.shape).toEqual([1, 1, sh.S]);
    expect(r.saved.out).toBe(r.out);
    const d = nn.attentionBackward(x.dout, x.qkv, sh, r.saved);
    const ref = attnRun(sh, x, 'ref');
    expectClose(f32(r.out), ref.out, { atol: 2e-5, rtol: 1e-4 }, 'out');
    expectClose(f32(r.saved.lse), ref.lse, { atol: 5e-5, rtol: 1e-5 }, 'lse');
    expectClose(f32(d), ref.dqkv, { atol: 5e-5, rtol: 2e-4 }, 'dqkv');
    for (const t of [x.qkv, x.dout, r.out, r.saved.qr, r.saved.kr, r.saved.lse, d]) t.dispose();
  });

  test('bad input: typed errors naming the op and argument, the process survives', () => {
    const dims = { B: 1, S: 4, H: 2 };
    const x = attnInputs({ B: 1, S: 4, H: 2, dh: 4 }, 3);
    const r = nn.attention(x.qkv, dims);
    // D not divisible by H, odd head width.
    const q15 = Tensor.zeros([4, 15]);
    expect(() => nn.attention(q15, { B: 1, S: 4, H: 2 })).toThrow(/attention: D=5 must be divisible by H=2/);
    expect(() => nn.attention(q15, { B: 1, S: 4, H: 1 })).toThrow(/attention: the head width D\/H must be even for rotary positions, got 5/);
    expect(() => nn.attention(x.qkv, { B: 1, S: 4, H: 0 })).toThrow(RangeError);
    // Wrong saved shapes and dtypes.
    const wrongLse = Tensor.zeros([1, 2, 4, 4]);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, { ...r.saved, lse: wrongLse })).toThrow(ShapeError);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, { ...r.saved, lse: wrongLse })).toThrow(/attentionBackward: saved.lse must have shape \[1, 2, 4\], got \[1, 2, 4, 4\]/);
    const wrongQr = Tensor.zeros([1, 2, 3, 4]);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, { ...r.saved, qr: wrongQr })).toThrow(/saved.qr must have shape \[1, 2, 4, 4\]/);
    const intLse = Tensor.from(new Int32Array(8), { shape: [1, 2, 4] });
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, { ...r.saved, lse: intLse })).toThrow(DTypeError);
    const wrongOut = Tensor.zeros([4, 4]);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, { ...r.saved, out: wrongOut })).toThrow(/saved.out must have shape \[4, 8\]/);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, undefined as unknown as nn.AttentionSaved)).toThrow(/saved must be \{ qr, kr, lse, out \}/);
    expect(() => nn.attentionBackward(wrongOut, x.qkv, dims, r.saved)).toThrow(/dout must have shape \[4, 8\]/);
    // The native guards check exact lengths too (a wrong-length lse would be read out of bounds).
    const n = (len: number) => new Float32Array(len);
    expect(() => native().attentionBackward(n(96), n(32), n(32), n(32), n(7), n(32), n(96), 1, 4, 2, 4)).toThrow(ShapeError);
    expect(() => native().attention(n(96), n(32), n(32), n(32), n(9), 1, 4, 2, 4)).toThrow(/attention: lse/);
    expect(() => native().attention(n(96), n(32), n(32), n(32), n(8), 1, 4, 2, 3)).toThrow(/dh must be even/);
    // Disposed tensors.
    r.saved.lse.dispose();
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, r.saved)).toThrow(DisposedError);
    expect(() => nn.attentionBackward(x.dout, x.qkv, dims, r.saved)).toThrow(/attentionBackward: saved.lse is disposed/);
    r.out.dispose();
    x.qkv.dispose();
    expect(() => nn.attention(x.qkv, dims)).toThrow(/attention: qkv is disposed/);
    // The process survives and the op still works.
    const y = attnInputs({ B: 1, S: 2, H: 1, dh: 2 }, 4);
    const ok = attnRun({ B: 1, S: 2, H: 1, dh: 2 }, y, 'cpu');
    expect(ok.out.length).toBe(4);
    for (const t of [x.dout, q15, wrongLse, wrongQr, intLse, wrongOut, r.saved.qr, r.saved.kr, y.qkv, y.dout]) t.dispose();
  });
});
