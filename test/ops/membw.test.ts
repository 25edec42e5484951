// memBandwidth: the STREAM-like probe the PKM/PEER benchmarks divide by (copy, triad, read, scattered 1 KiB rows).
import { describe, expect, it } from 'vitest';

import { memBandwidth } from '../../lib/index.js';
import { cpuIsas, withIsa } from '../helpers.js';

describe('memBandwidth', () => {
  it('measures copy, triad, read and scattered-row bandwidth in GB/s on every ISA', async () => {
    for (const isa of await cpuIsas()) {
      const bw = await withIsa(isa, () => memBandwidth(4 * 2 ** 20, 2, 2));
      for (const k of ['copy', 'triad', 'read', 'rows'] as const) {
        expect(Number.isFinite(bw[k]), `${isa} ${k}`).toBe(true);
        expect(bw[k], `${isa} ${k}`).toBeGreaterThan(0.1);
        expect(bw[k], `${isa} ${k}`).toBeLessThan(1e5);
      }
    }
  });

  it('rejects bad arguments with the argument named', () => {
    expect(() => memBandwidth(1024)).toThrow(/memBandwidth: bytes/);
    expect(() => memBandwidth(2 ** 20, 0)).toThrow(/memBandwidth: threads/);
    expect(() => memBandwidth(2 ** 20, 1, 0)).toThrow(/memBandwidth: reps/);
  });
});
