/**
 * The CUDA PKM / PEER kernels (native/kernels/cuda/pkm_kernels.cuh: the reverse index as a stable radix sort of the
 * positions by row, embeddingBag and peerExperts forward and backward with row-sparse table gradients sized for the
 * worst case; pkm_topk_kernels.cuh: the product-key top-k and its backward) under the host emulator
 * (test/gpu/emulate/pkm_emu.cpp, AddressSanitizer) against the reference ops of the CPU
 * (native/kernels/ref/{embedding_bag,peer,pkm_topk}.cpp, compiled in): one to three radix passes, repeated rows,
 * chunk boundaries, every PEER activation, out-of-range positions (NaN rows, left out of the sparse gradients),
 * empty batches; top-k indices equal to the exhaustive search for per-head, shared and single-query keys, every
 * score activation, k = 1 and k = n. Runs without a GPU; test/gpu/pkm-ops.test.ts checks the real device.
 */
import { describe, expect, it } from 'vitest';

import { hasGxx, runEmulator } from './emulate/emu.js';

if (!hasGxx) console.log('[test/gpu/pkm-emulated] skipped: g++ not found');

describe.skipIf(!hasGxx)('CUDA PKM / PEER kernels under host emulation', () => {
  it('embeddingBag, peerExperts and pkmTopk forward and backward (sparse table gradients) match the reference', () => {
    const r = runEmulator('pkm_emu.cpp', [
      'pkm_kernels.cuh', 'scan.cuh', 'pkm_topk_kernels.cuh', '../ref/embedding_bag.cpp', '../ref/peer.cpp', '../ref/pkm_topk.cpp',
    ]);
    expect(r.status, `emulated PKM / PEER ops failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
  });
});
