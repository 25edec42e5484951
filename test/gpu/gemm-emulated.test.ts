/**
 * The CUDA GEMM kernels (native/kernels/cuda/gemm_kernels.cuh) run through a host emulator
 * (test/gpu/emulate/gemm_emu.cpp: one std::thread per CUDA thread, barriers for __syncthreads, synchronous
 * cp.async with zero-fill, whole-tile WMMA stand-ins, AddressSanitizer) against a float64 reference. This runs
 * everywhere g++ does, so the kernels' indexing, masking, transposes, aligned/unaligned staging, pipeline stage
 * reuse and batch loop are checked even on machines without a GPU; test/gpu/gemm.test.ts checks the real thing.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { packageRoot } from '../../lib/native/loader.js';

const root = packageRoot();
const src = path.join(root, 'test', 'gpu', 'emulate', 'gemm_emu.cpp');
const kernels = path.join(root, 'native', 'kernels', 'cuda', 'gemm_kernels.cuh');
const hasGxx = spawnSync('g++', ['--version']).status === 0;
if (!hasGxx) console.log('[test/gpu/gemm-emulated] skipped: g++ not found');

describe.skipIf(!hasGxx)('CUDA GEMM kernels under host emulation', () => {
  it('match float64 for every transpose, ragged shapes, both staging paths and strided batches', () => {
    // The binary is cached by the hash of its sources (compiling with AddressSanitizer takes a while).
    const hash = createHash('sha256').update(readFileSync(src)).update(readFileSync(kernels)).digest('hex').slice(0, 16);
    const bin = path.join(os.tmpdir(), `sffn-gemm-emu-${hash}`);
    if (!existsSync(bin)) {
      const cc = spawnSync(
        'g++',
        ['-std=c++20', '-O1', '-g', '-fsanitize=address', '-pthread', '-Wno-unknown-pragmas',
         `-I${path.join(root, 'native', 'include')}`, `-I${path.join(root, 'native', 'kernels', 'cuda')}`,
         src, '-o', bin],
        { encoding: 'utf8' },
      );
      expect(cc.status, `g++ failed:\n${cc.stderr}`).toBe(0);
    }
    const r = spawnSync(bin, [], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' } });
    expect(r.status, `emulated GEMM failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout.trim().split('\n').pop()).toBe('ok');
    expect(r.stdout).toMatch(/bf16 cp\.async/);
    expect(r.stdout).toMatch(/bf16 unaligned/);
  });
});
