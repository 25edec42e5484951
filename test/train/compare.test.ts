import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { runCompare } from '../../lib/train/compare.js';
import { modelParams } from '../../lib/nn/config.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sffn-compare-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('compare', () => {
  it('trains dense, sigma-moe, switch, pkm and peer at equal parameters and writes a table, an SVG and JSON', () => {
    const text = Buffer.from('a rose is a rose is a rose; '.repeat(400));
    const corpus = { name: 'roses', train: new Uint8Array(text.subarray(0, 9000)), valid: new Uint8Array(text.subarray(9000, 10000)), test: new Uint8Array(0), vocabSize: 256 };
    const lines: string[] = [];
    const res = runCompare({
      preset: 'quick',
      base: { dModel: 32, nLayers: 2, nHeads: 2, context: 16, ffn: { kind: 'dense', dFF: 128 } },
      train: { steps: 4, batch: 2, evalEvery: 2, evalBytes: 256 },
      corpus,
      quiet: true,
      outDir: dir,
      log: (l) => lines.push(l),
    });
    expect(res.rows.map((r) => r.name)).toEqual(['dense', 'sigma-moe', 'switch', 'pkm', 'peer']);
    const dense = res.rows[0].params;
    for (const r of res.rows) {
      expect(Math.abs(r.params - dense) / dense, r.name).toBeLessThan(0.03);
      expect(r.params).toBe(modelParams(r.config));
      expect(Number.isFinite(r.validBpb)).toBe(true);
      expect(r.valid.map((v) => v.step)).toEqual([2, 4]);
    }
    expect(res.rows[1].ffnFlopsVsDense).toBeLessThan(0.35);
    expect(res.rows[1].usage).toHaveLength(2);
    expect(res.table).toMatch(/\| sigma-moe \|/);
    expect(readFileSync(res.svg!, 'utf8')).toContain('sigma-moe: expert usage');
    expect(JSON.parse(readFileSync(res.json!, 'utf8')).rows).toHaveLength(5);
    expect(existsSync(res.svg!)).toBe(true);
    expect(() => runCompare({ preset: 'huge', quiet: true, log: () => {} })).toThrow(/unknown preset 'huge'/);
  });
});
