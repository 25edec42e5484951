/**
 * moeRoute and moeRouteBackward on the GPU (native/kernels/cuda/moe_route.cu) against the CPU op on the same
 * logits: every gate kind, exact ties (top-K toward the lower index), E below and above the warp width, T·k over
 * several 256-slot chunks; integer outputs identical, gates / aux losses / dz within float tolerance; two runs
 * bit-identical; variable slot counts (expert dropout, adaptive and threshold selection, Switch capacity) with
 * the device's worst-case-sized buffers; impl 'ref' and mixed devices rejected with a DeviceError. Skipped with the probe's reason where no GPU is present
 * (test/gpu/moe-emulated.test.ts checks the same kernels under host emulation).
 */
import { describe, expect, it } from 'vitest';

import { DeviceError, Tensor, memory, moeRoute, moeRouteBackward } from '../../lib/index.js';
import type { MoeGate, MoeRouteOptions, MoeRouting } from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/moe-route', st);

const INT_KEYS = ['choices', 'ids', 'counts', 'offsets', 'sortedSlots', 'slotRank', 'dropped', 'tokenCounts'] as const;

// The device routing reserves T·k slots: sortedSlots [T·k] holds the CPU's [S] list, then -1.
function expectSameRouting(g: MoeRouting, c: MoeRouting): void {
  expect(g.numSlots).toBe(g.T * g.k);
  expect(g.numDropped).toBe(c.numDropped);
  for (const key of INT_KEYS) {
    expect(g[key].device, key).toBe('cuda');
    const want = Array.from(c[key].data() as ArrayLike<number | bigint>);
    if (key === 'sortedSlots') while (want.length < g.T * g.k) want.push(-1);
    expect(Array.from(g[key].data() as ArrayLike<number | bigint>), key).toEqual(want);
  }
  expectClose(g.gates.data() as Float32Array, c.gates.data() as Float32Array, { atol: 1e-6, rtol: 1e-5 }, 'gates');
  for (const key of ['entropy', 'balance', 'zLoss'] as const)
    expect(Math.abs(g.aux[key] - c.aux[key]), key).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(c.aux[key])));
}

describe.skipIf(!st.gpu)('CUDA moeRoute and moeRouteBackward', () => {
  const gates: MoeGate[] = ['sigmoid', 'softmax', 'softmax-renorm'];
  const shapes = [
    [37, 5, 2, false],
    [300, 40, 4, true], // ties everywhere, E > 32
    [700, 70, 7, false], // T·k = 4900: many slot chunks
  ] as const;
  for (const gate of gates) {
    for (const [T, E, k, ties] of shapes) {
      it(`matches the CPU (gate=${gate}, T=${T}, E=${E}, k=${k}, ties=${ties})`, () => {
        const m0 = memory();
        const zv = randn(T * E, T + E);
        if (ties) for (let i = 0; i < zv.length; i++) zv[i] = Math.round(zv[i] * 2) / 2;
        const z = Tensor.from(zv, { shape: [T, E] });
        const zd = z.to('cuda');
        const c = moeRoute(z, { k, gate });
        const g = moeRoute(zd, { k, gate });
        const g2 = moeRoute(zd, { k, gate });
        expectSameRouting(g, c);
        for (const key of INT_KEYS)
          expect(Array.from(g2[key].data() as ArrayLike<number | bigint>), `${key} (determinism)`).toEqual(
            Array.from(g[key].data() as ArrayLike<number | bigint>),
          );
        expectBitIdentical(g2.gates.data() as Float32Array, g.gates.data() as Float32Array, 'gates (determinism)');
        expect(g2.aux).toEqual(g.aux);

        const dgv = randn(T * k, 9);
        const dg = Tensor.from(dgv, { shape: [T, k] });
        const dgd = dg.to('cuda');
        const w = { entropy: 0.7, balance: -0.4, zLoss: 0.3 };
        const dzc = moeRouteBackward(z, c, dg, w);
        const dzg = moeRouteBackward(zd, g, dgd, w);
        const dzg2 = moeRouteBackward(zd, g, dgd, w);
        const dzn = moeRouteBackward(zd, g, null, w); // regularisers only
        const dzcn = moeRouteBackward(z, c, null, w);
        expect(dzg.device).toBe('cuda');
        expectClose(dzg.data() as Float32Array, dzc.data() as Float32Array, { atol: 1e-6, rtol: 1e-4 }, 'dz');
        expectClose(dzn.data() as Float32Array, dzcn.data() as Float32Array, { atol: 1e-6, rtol: 1e-4 }, 'dz (null dgates)');
        expectBitIdentical(dzg.data() as Float32Array, dzg2.data() as Float32Array, 'dz (determinism)');
        for (const t of [z, zd, dg, dgd, dzc, dzg, dzg2, dzn, dzcn]) t.dispose();
        for (const r of [c, g, g2]) r.dispose();
        expect(memory()).toEqual(m0);
      });
    }
  }

  it('handles T = 0 and k = E', () => {
    const m0 = memory();
    const z0 = Tensor.zeros([0, 4], { device: 'cuda' });
    const r0 = moeRoute(z0, { k: 2 });
    expect(r0.numSlots).toBe(0);
    expect(r0.aux).toEqual({ entropy: 0, balance: 0, zLoss: 0 });
    expect(Array.from(r0.offsets.data() as BigInt64Array)).toEqual([0n, 0n, 0n, 0n, 0n]);
    const z = Tensor.from(randn(6 * 5, 3), { shape: [6, 5] });
    const zd = z.to('cuda');
    const c = moeRoute(z, { k: 5, gate: 'softmax-renorm' });
    const g = moeRoute(zd, { k: 5, gate: 'softmax-renorm' });
    expectSameRouting(g, c);
    for (const t of [z0, z, zd]) t.dispose();
    for (const r of [r0, c, g]) r.dispose();
    expect(memory()).toEqual(m0);
  });

  const variable: [string, MoeRouteOptions][] = [
    ['expert dropout', { k: 4, gate: 'sigmoid', dropout: 0.4, seed: 7 }],
    ['adaptive with dropout', { k: 2, gate: 'softmax', select: 'adaptive', threshold: 0.05, dropout: 0.1, seed: 3 }],
    ['threshold', { k: 5, gate: 'softmax-renorm', select: 'threshold', threshold: 0.5 }],
    ['Switch capacity', { k: 1, gate: 'softmax', capacityFactor: 0.8 }],
    ['top-3, dropout and capacity', { k: 3, gate: 'softmax-renorm', dropout: 0.2, seed: 11, capacity: 60 }],
  ];
  for (const [what, opts] of variable) {
    it(`matches the CPU with variable slots: ${what}`, () => {
      const m0 = memory();
      const [T, E] = [500, 12];
      const z = Tensor.from(randn(T * E, 21, 2), { shape: [T, E] });
      const zd = z.to('cuda');
      const c = moeRoute(z, opts);
      const g = moeRoute(zd, opts);
      expect(c.numSlots).toBeLessThan(T * opts.k); // the case does vary the slots
      expectSameRouting(g, c);
      const dg = Tensor.from(randn(T * opts.k, 22), { shape: [T, opts.k] });
      const dgd = dg.to('cuda');
      const w = { entropy: 0.1, balance: 0.2, zLoss: 0.01 };
      const dzc = moeRouteBackward(z, c, dg, w);
      const dzg = moeRouteBackward(zd, g, dgd, w);
      expectClose(dzg.data() as Float32Array, dzc.data() as Float32Array, { atol: 1e-6, rtol: 1e-4 }, 'dz');
      for (const t of [z, zd, dg, dgd, dzc, dzg]) t.dispose();
      c.dispose();
      g.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  it('rejects the reference impl, mixed devices, and bad arguments with typed errors', () => {
    const m0 = memory();
    const zd = Tensor.from(randn(8 * 4, 5), { shape: [8, 4] }).to('cuda');
    expect(() => moeRoute(zd, { k: 2, impl: 'ref' })).toThrow(DeviceError);
    expect(() => moeRoute(zd, { k: 5 })).toThrow(/k must be in \[1, E=4\], got 5/);
    const g = moeRoute(zd, { k: 2 });
    const zc = zd.to('cpu');
    expect(() => moeRouteBackward(zc, g, null)).toThrow(DeviceError); // z on the cpu, routing on cuda
    expect(() => moeRouteBackward(zd, g, null, { impl: 'ref' })).toThrow(DeviceError);
    g.dispose();
    for (const t of [zd, zc]) t.dispose();
    expect(memory()).toEqual(m0);
  });
});
