/**
 * moeExperts and moeExpertsBackward on the GPU (native/kernels/cuda/moe_experts.cu) against the CPU for the same
 * routing (routing and dgates stay on the host): every activation, with and without biases, skewed routing with
 * multi-tile experts, capacity drops, determinism of the backward, the whole layer with the routing on the device
 * (moeRoute on a cuda z feeding the device experts, dgates on the device into moeRouteBackward), and bad input
 * (mixed devices, a cuda routing with cpu experts, the reference impl on cuda tensors).
 * Skipped with the probe's reason where no GPU is present (test/gpu/moe-emulated.test.ts still checks the kernels).
 */
import { describe, expect, it } from 'vitest';

import {
  DeviceError, Tensor, memory, moeCombine, moeExpertDown, moeExpertUp, moeExperts, moeExpertsBackward, moeRoute, moeRouteBackward,
} from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/moe-experts', st);

describe.skipIf(!st.gpu)('CUDA moeExperts and moeExpertsBackward', () => {
  const acts = ['relu', 'gelu', 'silu'] as const;
  for (const act of acts) {
    for (const bias of [false, true]) {
      it(`forward and backward match the CPU (act=${act}, bias=${bias})`, () => {
        const m0 = memory();
        const [T, D, E, k, G] = [150, 40, 6, 2, 70];
        const x = Tensor.from(randn(T * D, 1), { shape: [T, D] });
        // Skewed logits: expert 0 gets most tokens (several 128-row tiles); a capacity drops a few slots.
        const zv = randn(T * E, 2);
        for (let t = 0; t < T; t++) zv[t * E] += 3;
        const z = Tensor.from(zv, { shape: [T, E] });
        const r = moeRoute(z, { k, capacity: 140 });
        const w1 = Tensor.from(randn(E * D * G, 3, 0.2), { shape: [E, D, G] });
        const w2 = Tensor.from(randn(E * G * D, 4, 0.2), { shape: [E, G, D] });
        const b1 = bias ? Tensor.from(randn(E * G, 5), { shape: [E, G] }) : undefined;
        const b2 = bias ? Tensor.from(randn(D, 6), { shape: [D] }) : undefined;
        const cpu = moeExperts(x, r, { w1, w2, b1, b2 }, { act });
        const dev = [x, w1, w2, b1, b2].map((t) => t?.to('cuda'));
        const gpu = moeExperts(dev[0]!, r, { w1: dev[1]!, w2: dev[2]!, b1: dev[3], b2: dev[4] }, { act });
        expect(gpu.y.device).toBe('cuda');
        const tol = { atol: 1e-4, rtol: 1e-4 };
        expectClose(gpu.saved.pre.data() as Float32Array, cpu.saved.pre.data() as Float32Array, tol, 'pre');
        expectClose(gpu.saved.hs.data() as Float32Array, cpu.saved.hs.data() as Float32Array, tol, 'hs');
        expectClose(gpu.y.data() as Float32Array, cpu.y.data() as Float32Array, tol, 'y');

        const dyv = randn(T * D, 7);
        const dy = Tensor.from(dyv, { shape: [T, D] });
        const dyd = dy.to('cuda');
        const gc = moeExpertsBackward(dy, x, r, { w1, w2, b1, b2 }, cpu.saved, { act });
        const pd = { w1: dev[1]!, w2: dev[2]!, b1: dev[3], b2: dev[4] };
        const gg = moeExpertsBackward(dyd, dev[0]!, r, pd, gpu.saved, { act });
        const gg2 = moeExpertsBackward(dyd, dev[0]!, r, pd, gpu.saved, { act });
        expect(gg.dx.device).toBe('cuda');
        expect(gg.dgates.device).toBe('cpu');
        const gtol = { atol: 3e-4, rtol: 3e-4 };
        for (const key of ['dx', 'dw1', 'dw2', 'dgates', 'db1', 'db2'] as const) {
          expect(gg[key] === undefined, key).toBe(!bias && (key === 'db1' || key === 'db2'));
          if (!gg[key]) continue;
          expectClose(gg[key]!.data() as Float32Array, gc[key]!.data() as Float32Array, gtol, key);
          expectBitIdentical(gg[key]!.data() as Float32Array, gg2[key]!.data() as Float32Array, `${key} (determinism)`);
        }
        for (const g of [gc, gg, gg2]) for (const t of Object.values(g)) t?.dispose();
        for (const t of [x, z, w1, w2, b1, b2, dy, dyd, cpu.y, cpu.saved.pre, cpu.saved.hs, gpu.y, gpu.saved.pre, gpu.saved.hs, ...dev])
          t?.dispose();
        r.dispose();
        expect(memory()).toEqual(m0);
      });
    }
  }

  const layerCases = [
    ['sigmoid', {}],
    ['softmax', {}],
    ['sigmoid', { dropout: 0.3, seed: 5 }], // fewer kept slots than the T·k reserved rows
    ['softmax', { capacityFactor: 0.7 }], // capacity drops
  ] as const;
  for (const [gate, extra] of layerCases) {
    it(`runs the whole layer with the routing on the device (gate=${gate}, ${JSON.stringify(extra)})`, () => {
      const m0 = memory();
      const [T, D, E, k, G] = [300, 24, 8, 3, 40]; // T·k = 900: experts of ~112 rows, some over one 128-row tile
      const z = Tensor.from(randn(T * E, 11), { shape: [T, E] });
      const x = Tensor.from(randn(T * D, 12), { shape: [T, D] });
      const w1 = Tensor.from(randn(E * D * G, 13, 0.3), { shape: [E, D, G] });
      const w2 = Tensor.from(randn(E * G * D, 14, 0.3), { shape: [E, G, D] });
      const b1 = Tensor.from(randn(E * G, 15), { shape: [E, G] });
      const dy = Tensor.from(randn(T * D, 16), { shape: [T, D] });
      const [zd, xd, w1d, w2d, b1d, dyd] = [z, x, w1, w2, b1, dy].map((t) => t.to('cuda'));
      const rc = moeRoute(z, { k, gate, ...extra });
      const rg = moeRoute(zd!, { k, gate, ...extra });
      const fc = moeExperts(x, rc, { w1, w2, b1 }, { act: 'gelu' });
      const fg = moeExperts(xd!, rg, { w1: w1d!, w2: w2d!, b1: b1d }, { act: 'gelu' });
      const tol = { atol: 2e-4, rtol: 2e-4 };
      expect(fg.y.device).toBe('cuda');
      expectClose(fg.y.data() as Float32Array, fc.y.data() as Float32Array, tol, 'y');
      // hs rows: the kept ones match the CPU's [S, G]; the reserved rows past S stay zero.
      const S = rc.numSlots;
      const hsg = fg.saved.hs.data() as Float32Array;
      expectClose(hsg.subarray(0, S * G), fc.saved.hs.data() as Float32Array, tol, 'hs');
      expect(hsg.subarray(S * G).every((v) => v === 0)).toBe(true);
      const gc = moeExpertsBackward(dy, x, rc, { w1, w2, b1 }, fc.saved, { act: 'gelu' });
      const gg = moeExpertsBackward(dyd!, xd!, rg, { w1: w1d!, w2: w2d!, b1: b1d }, fg.saved, { act: 'gelu' });
      const gg2 = moeExpertsBackward(dyd!, xd!, rg, { w1: w1d!, w2: w2d!, b1: b1d }, fg.saved, { act: 'gelu' });
      expect(gg.dgates.device).toBe('cuda');
      for (const key of ['dx', 'dw1', 'dw2', 'db1', 'dgates'] as const) {
        expectClose(gg[key]!.data() as Float32Array, gc[key]!.data() as Float32Array, { atol: 3e-4, rtol: 3e-4 }, key);
        expectBitIdentical(gg[key]!.data() as Float32Array, gg2[key]!.data() as Float32Array, `${key} (determinism)`);
      }
      const w = { entropy: 0.01, balance: 0.02 };
      const dzc = moeRouteBackward(z, rc, gc.dgates, w);
      const dzg = moeRouteBackward(zd!, rg, gg.dgates, w);
      expectClose(dzg.data() as Float32Array, dzc.data() as Float32Array, { atol: 3e-4, rtol: 3e-4 }, 'dz');
      for (const g of [gc, gg, gg2]) for (const t of Object.values(g)) t?.dispose();
      for (const t of [z, x, w1, w2, b1, dy, zd, xd, w1d, w2d, b1d, dyd, fc.y, fc.saved.pre, fc.saved.hs, fg.y,
        fg.saved.pre, fg.saved.hs, dzc, dzg])
        t?.dispose();
      rc.dispose();
      rg.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  for (const routingOn of ['cpu', 'cuda'] as const) {
    it(`the primitives (up, down, combine) compose to moeExperts on the device (routing on ${routingOn})`, () => {
      const m0 = memory();
      const [T, D, E, k, G] = [200, 24, 6, 2, 40];
      const z = Tensor.from(randn(T * E, 31), { shape: [T, E] });
      const zr = routingOn === 'cuda' ? z.to('cuda') : z;
      const r = moeRoute(zr, { k, gate: 'softmax', capacityFactor: 0.8 });
      const x = Tensor.from(randn(T * D, 32), { shape: [T, D] }).to('cuda');
      const w1 = Tensor.from(randn(E * D * G, 33, 0.3), { shape: [E, D, G] }).to('cuda');
      const w2 = Tensor.from(randn(E * G * D, 34, 0.3), { shape: [E, G, D] }).to('cuda');
      const b2 = Tensor.from(randn(D, 35), { shape: [D] }).to('cuda');
      const full = moeExperts(x, r, { w1, w2, b2 }, { act: 'silu' });
      const up = moeExpertUp(x, w1, r, { act: 'silu' });
      const yr = moeExpertDown(up.hs, w2, r);
      const y = moeCombine(yr, r, { b2 });
      expect(y.device).toBe('cuda');
      expectBitIdentical(y.data() as Float32Array, full.y.data() as Float32Array, 'y');
      expectBitIdentical(up.hs.data() as Float32Array, full.saved.hs.data() as Float32Array, 'hs');
      for (const t of [x, w1, w2, b2, full.y, full.saved.pre, full.saved.hs, up.pre, up.hs, yr, y]) t.dispose();
      if (zr !== z) zr.dispose();
      z.dispose();
      r.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  it('rejects a cuda routing with experts on the cpu', () => {
    const [T, D, E, k, G] = [4, 3, 2, 1, 5];
    const zd = Tensor.from(randn(T * E, 1), { shape: [T, E] }).to('cuda');
    const r = moeRoute(zd, { k });
    const x = Tensor.from(randn(T * D, 2), { shape: [T, D] });
    const w1 = Tensor.zeros([E, D, G]);
    const w2 = Tensor.zeros([E, G, D]);
    expect(() => moeExperts(x, r, { w1, w2 })).toThrow(/routing is on cuda/);
    for (const t of [zd, x, w1, w2]) t.dispose();
    r.dispose();
  });

  it('rejects mixed devices and the reference impl on cuda tensors', () => {
    const [T, D, E, k, G] = [4, 3, 2, 1, 5];
    const z = Tensor.from(randn(T * E, 1), { shape: [T, E] });
    const r = moeRoute(z, { k });
    const x = Tensor.from(randn(T * D, 2), { shape: [T, D] }).to('cuda');
    const w1 = Tensor.zeros([E, D, G], { device: 'cuda' });
    const w2 = Tensor.zeros([E, G, D]);
    expect(() => moeExperts(x, r, { w1, w2 })).toThrow(DeviceError);
    const w2d = w2.to('cuda');
    expect(() => moeExperts(x, r, { w1, w2: w2d }, { impl: 'ref' })).toThrow(DeviceError);
    for (const t of [z, x, w1, w2, w2d]) t.dispose();
    r.dispose();
  });
});
