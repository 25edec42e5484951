/**
 * Every public entry point has a test: each value lib/index.ts exports (functions, classes, constants) must be
 * named, as a whole word, in at least one other test file. A new export without a test fails here with its name.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import * as api from '../../lib/index.js';

const here = fileURLToPath(import.meta.url);
const testDir = path.resolve(path.dirname(here), '..');

function testFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    if (statSync(p).isDirectory()) return testFiles(p);
    return p.endsWith('.ts') && p !== here ? [p] : [];
  });
}

describe('public API', () => {
  it('every export of lib/index.ts is named in a test', () => {
    const source = testFiles(testDir)
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n');
    const names = Object.keys(api);
    expect(names.length).toBeGreaterThan(100);
    const untested = names.filter((n) => !new RegExp(`\\b${n}\\b`).test(source));
    expect(untested, 'exports no test names').toEqual([]);
  });
});
