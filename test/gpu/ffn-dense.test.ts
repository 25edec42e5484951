/**
 * ffnDense / ffnDenseBackward on the GPU (native/kernels/cuda/ffn.cu) against the CPU op: every activation, dense
 * and Top-K activation (the per-row radix select), with and without biases; outputs and gradients stay on the
 * device; two runs bit-identical; the reference impl and mixed devices rejected. Skipped with the probe's reason
 * where no GPU is present (test/gpu/nn-emulated.test.ts checks the same kernels under host emulation).
 */
import { describe, expect, it } from 'vitest';

import { DeviceError, Tensor, ffnDense, ffnDenseBackward, memory } from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/ffn-dense', st);

const f32 = (t: Tensor) => t.data() as Float32Array;

describe.skipIf(!st.gpu)('CUDA ffnDense', () => {
  const cases = [
    ['relu', 0, true],
    ['gelu', 0, false],
    ['silu', 0, true],
    ['relu', 32, true],
    ['gelu', 7, false],
  ] as const;
  for (const [act, topk, bias] of cases) {
    it(`matches the CPU (act=${act}, topk=${topk}, bias=${bias})`, () => {
      const m0 = memory();
      const [T, D, F] = [300, 40, 160];
      const x = Tensor.from(randn(T * D, 1), { shape: [T, D] });
      const w1 = Tensor.from(randn(D * F, 2, 0.3), { shape: [D, F] });
      const w2 = Tensor.from(randn(F * D, 3, 0.3), { shape: [F, D] });
      const b1 = bias ? Tensor.from(randn(F, 4), { shape: [F] }) : undefined;
      const b2 = bias ? Tensor.from(randn(D, 5), { shape: [D] }) : undefined;
      const dy = Tensor.from(randn(T * D, 6), { shape: [T, D] });
      const dev = [x, w1, w2, dy].map((t) => t.to('cuda'));
      const [b1d, b2d] = [b1?.to('cuda'), b2?.to('cuda')];
      const pc = { w1, w2, b1, b2 };
      const pg = { w1: dev[1]!, w2: dev[2]!, b1: b1d, b2: b2d };
      const c = ffnDense(x, pc, { act, topk });
      const g = ffnDense(dev[0]!, pg, { act, topk });
      expect(g.y.device).toBe('cuda');
      expectClose(f32(g.y), f32(c.y), { atol: 2e-4, rtol: 2e-4 }, 'y');
      expectClose(f32(g.saved.h), f32(c.saved.h), { atol: 1e-5, rtol: 1e-4 }, 'h');
      const gc = ffnDenseBackward(dy, x, pc, c.saved, { act, topk });
      const gg = ffnDenseBackward(dev[3]!, dev[0]!, pg, g.saved, { act, topk });
      const gg2 = ffnDenseBackward(dev[3]!, dev[0]!, pg, g.saved, { act, topk });
      for (const k of ['dx', 'dw1', 'dw2', 'db1', 'db2'] as const) {
        expect(gg[k] === undefined, k).toBe(!bias && (k === 'db1' || k === 'db2'));
        if (!gg[k]) continue;
        expectClose(f32(gg[k]!), f32(gc[k]!), { atol: 1e-3, rtol: 1e-3 }, k);
        expectBitIdentical(f32(gg[k]!), f32(gg2[k]!), `${k} (determinism)`);
      }
      for (const t of [x, w1, w2, b1, b2, dy, ...dev, b1d, b2d, c.y, c.saved.pre, c.saved.h, g.y, g.saved.pre,
        g.saved.h, ...Object.values(gc), ...Object.values(gg), ...Object.values(gg2)])
        t?.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  it('rejects the reference impl on cuda tensors and mixed devices', () => {
    const x = Tensor.zeros([4, 3], { device: 'cuda' });
    const w1 = Tensor.zeros([3, 5], { device: 'cuda' });
    const w2 = Tensor.zeros([5, 3], { device: 'cuda' });
    const w2c = Tensor.zeros([5, 3]);
    expect(() => ffnDense(x, { w1, w2 }, { impl: 'ref' })).toThrow(DeviceError);
    expect(() => ffnDense(x, { w1, w2: w2c })).toThrow(DeviceError);
    for (const t of [x, w1, w2, w2c]) t.dispose();
  });
});
