/**
 * README.md examples as tests, so the documentation cannot rot: every ```ts block is extracted, its
 * `from 'sparse-ffn'` imports are pointed at lib/index.ts, the blocks are type-checked together with the
 * project's compiler options (a misspelt option or a changed signature fails here, with the README line), and
 * each block runs as its own module and must reach its last line without throwing.
 *
 * A block whose first line is `// readme-test: skip (reason)` is type-checked but not run (for GPU-only or
 * long-running examples; say why in the reason). Blocks that would train for minutes are shrunk by SHRINK
 * below: every rewrite listed there must match its block, so editing the README example fails this test
 * instead of silently running the long version.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const readmePath = path.join(root, 'README.md');

interface Block {
  /** 1-based README line of the block's first code line. */
  line: number;
  code: string;
  skip: string | null;
}

/** The ```ts blocks of a markdown text with their line numbers. */
function extractBlocks(md: string): Block[] {
  const lines = md.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '```ts') continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && lines[end].trim() !== '```') end++;
    if (end === lines.length) throw new Error(`README.md:${i + 1}: unterminated \`\`\`ts block`);
    const code = lines.slice(start, end).join('\n');
    const m = /^\s*\/\/\s*readme-test:\s*skip\s*\((.+)\)\s*$/.exec(lines[start] ?? '');
    blocks.push({ line: start + 1, code, skip: m ? m[1] : null });
    i = end;
  }
  return blocks;
}

/**
 * Rewrites applied to the blocks that contain `where` (the README shows realistic run lengths; the test trains
 * for a couple of steps on a few bytes). Each [pattern, replacement] must match at least once.
 */
const SHRINK: { where: string; rewrites: [RegExp, string][] }[] = [
  {
    where: 'new Trainer(',
    rewrites: [
      [/steps: 500, batch: 16/g, 'steps: 2, batch: 2, evalBytes: 2048'],
      [/evalEvery: 100/g, 'evalEvery: 1'],
      [/t\.generate\('Call me ', 200,/g, "t.generate('Call me ', 8,"],
    ],
  },
];

const blocks = extractBlocks(readFileSync(readmePath, 'utf8'));
let dir = '';
const files: string[] = [];

describe('README.md examples', () => {
  beforeAll(() => {
    mkdirSync(path.join(root, '.vitest'), { recursive: true });
    dir = mkdtempSync(path.join(root, '.vitest', 'readme-'));
    const lib = path.relative(dir, path.join(root, 'lib', 'index.js')).split(path.sep).join('/');
    blocks.forEach((b, i) => {
      let code = b.code.replace(/from\s+'sparse-ffn'/g, `from '${lib}'`);
      for (const s of SHRINK.filter((s) => code.includes(s.where)))
        for (const [re, to] of s.rewrites) {
          if (!code.match(re)) throw new Error(`README.md:${b.line}: the test's shrink rewrite ${re} no longer matches this block`);
          code = code.replace(re, to);
        }
      // The marker is assigned by the module's last statement: seeing it proves the block ran to its end.
      code += `\nexport const readmeBlockDone = ${i};\n`;
      const file = path.join(dir, `block-${String(i).padStart(2, '0')}-line-${b.line}.ts`);
      writeFileSync(file, code);
      files.push(file);
    });
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('has the examples of every section', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(10);
    const all = blocks.map((b) => b.code).join('\n');
    for (const api of ['moeRoute', 'moeExperts', 'pkmTopk', 'embeddingBag', 'peerExperts', 'sparseAdamwStep', 'gemm', 'Trainer'])
      expect(all, `README examples use ${api}`).toContain(api);
    for (const b of blocks) if (b.skip !== null) expect(b.skip.trim().length, `README.md:${b.line}: skip needs a reason`).toBeGreaterThan(3);
  });

  test('type-check', () => {
    const cfg = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.json'), {}, {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
      },
    });
    const program = ts.createProgram(files, { ...cfg!.options, noEmit: true, sourceMap: false, declaration: false });
    const ours = new Set(files.map((f) => path.resolve(f)));
    const errors = ts
      .getPreEmitDiagnostics(program)
      .filter((d) => d.file && ours.has(path.resolve(d.file.fileName)))
      .map((d) => {
        const i = files.indexOf(path.resolve(d.file!.fileName));
        const { line } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
        return `README.md:${blocks[i].line + line}: TS${d.code} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
      });
    expect(errors, errors.join('\n')).toEqual([]);
  });

  blocks.forEach((b, i) => {
    const name = `README.md:${b.line} runs to the end`;
    if (b.skip !== null) {
      test.skip(`${name} (skipped: ${b.skip})`, () => {});
      return;
    }
    test(name, async () => {
      // Examples print their results; keep the test output readable.
      const log = vi.spyOn(console, 'log').mockImplementation(() => {});
      try {
        const mod = (await import(files[i])) as { readmeBlockDone?: number };
        expect(mod.readmeBlockDone).toBe(i);
      } finally {
        log.mockRestore();
      }
    });
  });
});
