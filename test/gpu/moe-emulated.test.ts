/**
 * The CUDA σ-MoE expert kernels (native/kernels/cuda/moe_kernels.cuh: gathered grouped GEMMs with bias and gated
 * activation, fixed-order combine; backward gate gradient, transposed grouped GEMMs, per-expert weight-gradient
 * reductions, bias sums) under the host emulator
 * (test/gpu/emulate/moe_emu.cpp, AddressSanitizer) against float64: random routings with dropped slots, empty
 * experts, multi-tile experts, nothing kept, every activation. Runs without a GPU; test/gpu/moe-experts.test.ts
 * checks the real device. The routing kernels (moe_route_kernels.cuh) run under route_emu.cpp against the reference
 * routing (native/kernels/ref/moe_route.cpp); test/gpu/moe-route.test.ts checks them on the device.
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

describe.skipIf(!hasGxx)('CUDA MoE routing kernels under host emulation', () => {
  it('top-K routing, placement, aux losses and dz match the reference routing of the CPU op', () => {
    // route_emu.cpp compiles native/kernels/ref/moe_route.cpp in: integer outputs must match it exactly.
    const r = runEmulator('route_emu.cpp', ['moe_route_kernels.cuh', '../ref/moe_route.cpp']);
    expect(r.status, `emulated routing failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });
});
