import { defineConfig } from 'vitest/config';

// forks, not threads: the addon keeps per-process state (thread pool, CUDA context).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
