/**
 * Builds (cached by a hash of its sources) and runs one host emulator of CUDA kernels from test/gpu/emulate/
 * (see cuda_emu.h): g++ with AddressSanitizer. Returns the run's status and output.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { packageRoot } from '../../../lib/native/loader.js';

export const hasGxx = spawnSync('g++', ['--version']).status === 0;

/** `name`: the emulator source (e.g. 'gemm_emu.cpp'); `kernels`: the kernel headers it includes. */
export function runEmulator(name: string, kernels: string[]): { status: number | null; stdout: string; stderr: string } {
  const root = packageRoot();
  const dir = path.join(root, 'test', 'gpu', 'emulate');
  const kdir = path.join(root, 'native', 'kernels', 'cuda');
  const shared = ['cuda_emu.h', 'emu_check.h'].map((f) => path.join(dir, f));
  const sources = [path.join(dir, name), ...shared, ...kernels.map((k) => path.join(kdir, k))];
  const hash = createHash('sha256');
  for (const f of sources) hash.update(readFileSync(f));
  const bin = path.join(os.tmpdir(), `sffn-${name.replace(/\W/g, '_')}-${hash.digest('hex').slice(0, 16)}`);
  if (!existsSync(bin)) {
    const cc = spawnSync(
      'g++',
      ['-std=c++20', '-O1', '-g', '-fsanitize=address', '-pthread', '-Wno-unknown-pragmas',
       `-I${path.join(root, 'native', 'include')}`, `-I${kdir}`, path.join(dir, name), '-o', bin],
      { encoding: 'utf8' },
    );
    if (cc.status !== 0) return { status: cc.status, stdout: '', stderr: `g++ failed:\n${cc.stderr}` };
  }
  const r = spawnSync(bin, [], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
