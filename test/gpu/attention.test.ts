/**
 * attention / attentionBackward on the GPU (native/kernels/cuda/attn.cu) against the CPU op: several batches,
 * heads and head widths (below, at and above the warp width), sequences across the 32-key steps; outputs stay on
 * the device; two runs bit-identical; head widths over 256 and the reference impl rejected. Skipped with the probe's
 * reason where no GPU is present (test/gpu/nn-emulated.test.ts checks the same kernels under host emulation).
 */
import { describe, expect, it } from 'vitest';

import { DeviceError, Tensor, attention, attentionBackward, memory } from '../../lib/index.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, gpuStatus } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/attention', st);

const f32 = (t: Tensor) => t.data() as Float32Array;

describe.skipIf(!st.gpu)('CUDA attention', () => {
  for (const [B, S, H, dh] of [[2, 45, 2, 8], [1, 130, 3, 40], [2, 257, 4, 64], [1, 64, 1, 128]] as const) {
    it(`matches the CPU (B=${B}, S=${S}, H=${H}, dh=${dh})`, () => {
      const m0 = memory();
      const D = H * dh;
      const qkv = Tensor.from(randn(B * S * 3 * D, 1), { shape: [B * S, 3 * D] });
      const dout = Tensor.from(randn(B * S * D, 2), { shape: [B * S, D] });
      const [qd, dd] = [qkv.to('cuda'), dout.to('cuda')];
      const c = attention(qkv, { B, S, H });
      const g = attention(qd, { B, S, H });
      expect(g.out.device).toBe('cuda');
      expectClose(f32(g.out), f32(c.out), { atol: 1e-5, rtol: 1e-4 }, 'out');
      expectClose(f32(g.saved.lse), f32(c.saved.lse), { atol: 1e-5, rtol: 1e-5 }, 'lse');
      const dc = attentionBackward(dout, qkv, { B, S, H }, c.saved);
      const dg = attentionBackward(dd, qd, { B, S, H }, g.saved);
      const dg2 = attentionBackward(dd, qd, { B, S, H }, g.saved);
      expectClose(f32(dg), f32(dc), { atol: 1e-4, rtol: 1e-3 }, 'dqkv');
      expectBitIdentical(f32(dg), f32(dg2), 'dqkv (determinism)');
      for (const t of [qkv, dout, qd, dd, c.out, c.saved.qr, c.saved.kr, c.saved.lse, g.out, g.saved.qr, g.saved.kr,
        g.saved.lse, dc, dg, dg2])
        t.dispose();
      expect(memory()).toEqual(m0);
    });
  }

  it('rejects head widths over 256 and the reference impl on cuda tensors', () => {
    const m0 = memory();
    const q = Tensor.zeros([4, 3 * 520], { device: 'cuda' });
    expect(() => attention(q, { B: 1, S: 4, H: 1 })).toThrow(DeviceError);
    const q2 = Tensor.zeros([4, 3 * 16], { device: 'cuda' });
    expect(() => attention(q2, { B: 1, S: 4, H: 2 }, { impl: 'ref' })).toThrow(DeviceError);
    q.dispose();
    q2.dispose();
    expect(memory()).toEqual(m0);
  });
});
