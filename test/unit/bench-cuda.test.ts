/**
 * The CUDA benchmark suites where the CUDA flavor is not in use (no GPU, no driver or no build-cuda/): each prints
 * why it skipped and returns normally (exit status 0), writing no results. On a machine with the CUDA flavor loaded
 * these are skipped; tools/gpu-check.sh runs the suites there.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';

import { runBench } from '../../bench/index.js';
import { backend } from '../../lib/native/loader.js';

const onGpu = backend().backend === 'cuda';

describe.skipIf(onGpu)('CUDA bench suites without the CUDA flavor', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  const cases: [string[], string][] = [
    [['moe', '--device', 'cuda'], 'moe-cuda'],
    [['pkm', '--device', 'cuda'], 'pkm-cuda'],
    [['gemm', '--device', 'cuda'], 'gemm-cuda'],
    [['moe-cuda'], 'moe-cuda'],
    [['pkm-cuda'], 'pkm-cuda'],
  ];
  for (const [argv, name] of cases) {
    it(`${argv.join(' ')} prints why it skipped and returns 0`, async () => {
      const lines: string[] = [];
      vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
        lines.push(a.join(' '));
      });
      expect(await runBench(argv)).toBe(0);
      expect(lines.length).toBe(1);
      expect(lines[0]).toMatch(new RegExp(`^${name}: skipped, the CUDA flavor is not in use \\(.+\\)$`));
      expect(lines[0]).not.toMatch(/wrote /);
    });
  }
});
