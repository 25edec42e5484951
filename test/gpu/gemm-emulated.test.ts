/**
 * The CUDA GEMM kernels (native/kernels/cuda/gemm_kernels.cuh) run through a host emulator
 * (test/gpu/emulate/gemm_emu.cpp: one std::thread per CUDA thread, barriers for __syncthreads, synchronous
 * cp.async with zero-fill, whole-tile WMMA stand-ins, AddressSanitizer) against a float64 reference. This runs
 * everywhere g++ does, so the kernels' indexing, masking, transposes, aligned/unaligned staging, pipeline stage
 * reuse and batch loop are checked even on machines without a GPU; test/gpu/gemm.test.ts checks the real thing.
 */
import { describe, expect, it } from 'vitest';

import { hasGxx, runEmulator } from './emulate/emu.js';

if (!hasGxx) console.log('[test/gpu/gemm-emulated] skipped: g++ not found');

describe.skipIf(!hasGxx)('CUDA GEMM kernels under host emulation', () => {
  it('match float64 for every transpose, ragged shapes, both staging paths and strided batches', () => {
    const r = runEmulator('gemm_emu.cpp', ['gemm_kernels.cuh']);
    expect(r.status, `emulated GEMM failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
    expect(r.stdout).toMatch(/bf16 cp\.async/);
    expect(r.stdout).toMatch(/bf16 unaligned/);
  });
});
