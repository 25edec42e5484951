/**
 * The CUDA σ-MoE expert kernels (native/kernels/cuda/moe_kernels.cuh: gathered grouped GEMMs with bias and gated
 * activation, fixed-order combine; backward gate gradient, transposed grouped GEMMs, per-expert weight-gradient
 * reductions, bias sums) under the host emulator
 * (test/gpu/emulate/moe_emu.cpp, AddressSanitizer) against float64: random routings with dropped slots, empty
 * experts, multi-tile experts, nothing kept, every activation. Runs without a GPU; test/gpu/moe-experts.test.ts
 * checks the real device.
 */
import { describe, expect, it } from 'vitest';

import { hasGxx, runEmulator } from './emulate/emu.js';

if (!hasGxx) console.log('[test/gpu/moe-emulated] skipped: g++ not found');

describe.skipIf(!hasGxx)('CUDA MoE expert kernels under host emulation', () => {
  it('forward and backward match float64 for every activation and routing shape', () => {
    const r = runEmulator('moe_emu.cpp', ['moe_kernels.cuh']);
    expect(r.status, `emulated MoE failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });
});
