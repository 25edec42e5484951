/**
 * tools/gpu-check.sh and tools/gpu-pack.sh parse (bash -n; shellcheck too where it is installed), and gpu-check's
 * skeleton runs where no GPU is present: with every heavy step left out (GPU_CHECK_SKIP) it still writes its
 * summary, reports the load check's failure and exits 1, leaving at most 7 files in the output folder (the device
 * tool returns 8). The steps themselves need a GPU (see BENCHMARKS.md, "How to verify on a GPU").
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend, packageRoot } from '../../lib/native/loader.js';

const root = packageRoot();
const scripts = ['tools/gpu-check.sh', 'tools/gpu-pack.sh'];
const hasShellcheck = spawnSync('shellcheck', ['--version']).status === 0;

describe('GPU check scripts', () => {
  for (const s of scripts)
    it(`${s} parses (bash -n)`, () => {
      const r = spawnSync('bash', ['-n', s], { cwd: root, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    });

  it.skipIf(!hasShellcheck)('shellcheck finds nothing', () => {
    const r = spawnSync('shellcheck', scripts, { cwd: root, encoding: 'utf8' });
    expect(r.stdout).toBe('');
    expect(r.status).toBe(0);
  });

  it.skipIf(backend().backend === 'cuda')('gpu-check without a GPU: summary, load failure, exit 1, at most 7 files', () => {
    const out = mkdtempSync(path.join(os.tmpdir(), 'gpu-check-'));
    try {
      const r = spawnSync('bash', ['tools/gpu-check.sh', out], {
        cwd: root,
        encoding: 'utf8',
        env: { ...process.env, GPU_CHECK_SKIP: 'build,tests,memcheck,racecheck,bench' },
        timeout: 60_000,
      });
      expect(r.status, r.stdout + r.stderr).toBe(1);
      const summary = readFileSync(path.join(out, 'summary.txt'), 'utf8');
      for (const step of ['build', 'tests', 'memcheck', 'racecheck', 'bench']) expect(summary).toMatch(new RegExp(`^${step} +SKIP `, 'm'));
      expect(summary).toMatch(/^load +FAIL +the CUDA flavor does not load/m);
      expect(summary).toMatch(/SOME STEPS FAILED/);
      expect(readdirSync(out).length).toBeLessThanOrEqual(7);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
