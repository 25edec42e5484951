import { spawnSync } from 'node:child_process';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { getNumThreads, info, setIsa, setNumThreads } from '../../lib/index.js';
import { packageRoot } from '../../lib/native/loader.js';

const root = packageRoot();
const runNode = (code: string, env: Record<string, string> = {}) =>
  spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });

describe('loader and info', () => {
  it('reports backend, reason, binary, CPU features and threads', () => {
    const i = info();
    expect(['cpu', 'cuda']).toContain(i.backend);
    expect(i.reason.length).toBeGreaterThan(0);
    expect(i.binaryPath).toMatch(/\.node$/);
    expect(i.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(i.cpu.physicalCores).toBeGreaterThanOrEqual(1);
    expect(['scalar', 'avx2', 'avx512']).toContain(i.cpu.isa);
    expect(i.napiVersion).toBe(8);
  });

  it('setNumThreads changes the pool size and validates its argument', () => {
    const n = getNumThreads();
    setNumThreads(1);
    expect(getNumThreads()).toBe(1);
    setNumThreads(n);
    expect(() => setNumThreads(0)).toThrow(/setNumThreads: n must be an integer in \[1, 256\], got 0/);
    expect(() => setNumThreads(1.5)).toThrow(RangeError);
  });

  it('setIsa accepts supported ISAs and rejects others with a clear error', () => {
    const best = info().cpu.bestIsa as 'scalar' | 'avx2' | 'avx512';
    setIsa('scalar');
    expect(info().cpu.isa).toBe('scalar');
    setIsa(best);
    expect(() => setIsa('sse' as never)).toThrow(/isa must be one of scalar, avx2, avx512, got 'sse'/);
  });

  it('SPARSE_FFN_ISA lowers the ISA at load', () => {
    const r = runNode("import('./dist/lib/index.js').then(m => console.log(m.info().cpu.isa))", {
      SPARSE_FFN_ISA: 'scalar',
    });
    expect(r.stdout.trim()).toBe('scalar');
  });

  it('a missing binary gives one error listing what was tried and the remedies', () => {
    const r = runNode("import('./dist/lib/index.js').then(m => m.info()).catch(e => { console.log(e.name); console.log(e.message); })", {
      SPARSE_FFN_BINARY: path.join(root, 'nope', 'missing.node'),
    });
    expect(r.stdout).toMatch(/BackendUnavailableError/);
    expect(r.stdout).toMatch(/missing\.node/);
    expect(r.stdout).toMatch(/Remedies/);
    expect(r.stdout).toMatch(/npm rebuild sparse-ffn/);
  });

  it('SPARSE_FFN_BACKEND=cuda without a usable CUDA flavor fails clearly', () => {
    const r = runNode("import('./dist/lib/index.js').then(m => console.log(m.info().backend)).catch(e => console.log(e.name + ': ' + e.message))", {
      SPARSE_FFN_BACKEND: 'cuda',
    });
    if (info().backend === 'cuda') expect(r.stdout.trim()).toBe('cuda');
    else expect(r.stdout).toMatch(/BackendUnavailableError: .*SPARSE_FFN_BACKEND=cuda/);
  });

  it('the CLI prints info', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'dist/lib/cli.js'), 'info'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/backend: +(cpu|cuda)/);
    expect(r.stdout).toMatch(/features:/);
  });
});
