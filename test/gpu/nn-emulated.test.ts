/**
 * The CUDA training row-op kernels (native/kernels/cuda/nn_kernels.cuh: layer norm, embedding with the
 * counting-scan backward, cross-entropy, dense and sparse AdamW, linear through the GEMM kernel, dropout, the
 * gradient-norm reductions; the dense / Top-K FFN of ffn_kernels.cuh in ffn_emu.cpp; attention of attn_kernels.cuh
 * in attn_emu.cpp) under the host emulator (test/gpu/emulate/nn_emu.cpp,
 * AddressSanitizer) against the reference ops of the CPU (native/kernels/ref/*.cpp, compiled in): chunk and warp
 * boundaries, repeated and out-of-range ids, out-of-range targets, per-row step counters. Runs without a GPU;
 * test/gpu/nn-ops.test.ts checks the real device.
 */
import { describe, expect, it } from 'vitest';

import { hasGxx, runEmulator } from './emulate/emu.js';

if (!hasGxx) console.log('[test/gpu/nn-emulated] skipped: g++ not found');

describe.skipIf(!hasGxx)('CUDA training row-op kernels under host emulation', () => {
  it('layerNorm, embedding, crossEntropy, linear (forward and backward), AdamW, dropout, sumSquares and scaleInPlace match the CPU ops', () => {
    const r = runEmulator('nn_emu.cpp', [
      'nn_kernels.cuh', 'scan.cuh', 'gemm_kernels.cuh', '../ref/adamw.cpp', '../ref/cross_entropy.cpp', '../ref/embedding.cpp',
      '../ref/layer_norm.cpp', '../ref/linear.cpp',
    ]);
    expect(r.status, `emulated row ops failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });

  it('attention forward and backward (rotary positions, causal) match the reference', () => {
    const r = runEmulator('attn_emu.cpp', ['attn_kernels.cuh', '../ref/attention.cpp']);
    expect(r.status, `emulated attention failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });

  it('ffnDense forward and backward (dense and Top-K activation) match the reference', () => {
    const r = runEmulator('ffn_emu.cpp', [
      'ffn_kernels.cuh', 'moe_kernels.cuh', 'nn_kernels.cuh', 'scan.cuh', 'gemm_kernels.cuh', '../ref/ffn_dense.cpp',
    ]);
    expect(r.status, `emulated ffnDense failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });
});
