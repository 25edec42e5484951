import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { Tensor } from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import { Module } from '../../lib/nn/module.js';
import { Batcher, DataError, enwik8Split, evalBatches, loadCorpus, splitBytes } from '../../lib/data/corpus.js';
import { decodeSafetensors, encodeSafetensors, loadSafetensors, saveSafetensors } from '../../lib/train/safetensors.js';
import { JsonlLog, Progress, formatDuration } from '../../lib/train/log.js';
import { cosineLr } from '../../lib/optim/schedule.js';
import { guardLeaks } from '../helpers.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sffn-io-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

class Inner extends Module {
  w = this.param('w', Tensor.from([[1, 2], [3, 4]]));
}
class Outer extends Module {
  a = this.child('a', new Inner());
  b = this.param('b', Tensor.from([5, 6]), { noDecay: true });
  shared: Inner;
  constructor(shared?: Inner) {
    super();
    this.shared = this.child('s', shared ?? this.a);
  }
}

describe('Module', () => {
  guardLeaks();
  it('names parameters depth-first, counts shared ones once, toggles train/eval, round-trips a state dict', () => {
    const m = new Outer();
    expect(m.namedParameters().map(([n]) => n)).toEqual(['b', 'a.w']);
    expect(m.numParameters()).toBe(6);
    m.eval();
    expect(m.a.training).toBe(false);
    m.train();
    expect(m.a.training).toBe(true);
    const m2 = new Outer();
    (m2.a.w.data.data() as Float32Array).fill(0);
    m2.loadStateDict(m.stateDict());
    expect(m2.a.w.data.toArray()).toEqual([[1, 2], [3, 4]]);
    const bad = new Map([['b', Tensor.zeros([3])], ['a.w', Tensor.zeros([2, 2])]]);
    expect(() => m2.loadStateDict(bad)).toThrow(/b must be f32 \[2\], got f32 \[3\]/);
    const missing = new Map([['b', bad.get('b')!]]);
    expect(() => m2.loadStateDict(missing)).toThrow(/missing: a.w/);
    for (const t of bad.values()) t.dispose();
    m.dispose();
    m2.dispose();
  });
});

describe('safetensors', () => {
  guardLeaks();
  it('round-trips f32/i32/i64/bf16 tensors and metadata, byte-identically', () => {
    const ts = new Map<string, Tensor>([
      ['w', Tensor.from([[1.5, -2], [3, 4]])],
      ['idx', Tensor.from([1, 2, 3], { dtype: 'i32' })],
      ['big', Tensor.from([1, 2], { dtype: 'i64' })],
      ['h', Tensor.from([0.5, 2], { dtype: 'bf16' })],
      ['empty', Tensor.zeros([0, 3])],
    ]);
    const file = path.join(dir, 'x.safetensors');
    saveSafetensors(file, ts, { step: '7' });
    expect(readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
    const buf = readFileSync(file);
    // header length, then JSON; data 8-byte aligned
    const n = Number(buf.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const hdr = JSON.parse(buf.subarray(8, 8 + n).toString());
    expect(hdr.w).toEqual({ dtype: 'F32', shape: [2, 2], data_offsets: expect.any(Array) });
    const back = loadSafetensors(file);
    expect(back.metadata).toEqual({ step: '7' });
    for (const [k, t] of ts) {
      const u = back.tensors.get(k)!;
      expect(u.dtype).toBe(t.dtype);
      expect(u.shape).toEqual(t.shape);
      expect(u.toArray()).toEqual(t.toArray());
    }
    expect(encodeSafetensors(back.tensors, back.metadata).equals(buf)).toBe(true);
    for (const t of [...ts.values(), ...back.tensors.values()]) t.dispose();
  });
  it('loads tables into page-aligned tensors like any other host tensor of 1 MiB or more', () => {
    const init = Float32Array.from({ length: 1024 * 256 }, (_, i) => (i % 97) - 48);
    const ts = new Map<string, Tensor>([['table', Tensor.from(init, { shape: [1024, 256] })]]);
    const back = decodeSafetensors(encodeSafetensors(ts));
    const d = back.tensors.get('table')!.data() as Float32Array;
    expect(d.byteOffset).toBe(native().alignOffset(d.buffer as ArrayBuffer, 4096));
    expect(Array.from(d.subarray(0, 4))).toEqual([-48, -47, -46, -45]);
    expect(d).toEqual(init);
    for (const t of [...ts.values(), ...back.tensors.values()]) t.dispose();
  });
  it('rejects truncated or corrupt files with a clear error', () => {
    const t = new Map([['w', Tensor.from([1, 2, 3])]]);
    const buf = encodeSafetensors(t);
    expect(() => decodeSafetensors(buf.subarray(0, 4))).toThrow(/too short/);
    expect(() => decodeSafetensors(buf.subarray(0, buf.length - 4))).toThrow(/bad byte range/);
    const junk = Buffer.from(buf);
    junk.write('}', 8);
    expect(() => decodeSafetensors(junk)).toThrow(/not valid JSON/);
    t.get('w')!.dispose();
  });
});

describe('data', () => {
  it('loads the bundled Moby-Dick corpus with a 90/5/5 split', () => {
    const c = loadCorpus('moby-dick');
    const n = c.train.length + c.valid.length + c.test.length;
    expect(n).toBeGreaterThan(1_100_000);
    expect(c.valid.length).toBe(Math.floor(n * 0.05));
    expect(c.vocabSize).toBe(256);
    expect(Buffer.from(c.train.subarray(0, 20)).toString()).toContain('CONTENTS');
  });
  it('splits local files and enwik8, and fails clearly on missing or wrong files', () => {
    const f = path.join(dir, 'tiny.txt');
    writeFileSync(f, 'x'.repeat(1000));
    const c = loadCorpus(f);
    expect([c.train.length, c.valid.length, c.test.length]).toEqual([900, 50, 50]);
    expect(() => loadCorpus(path.join(dir, 'nope.txt'))).toThrow(DataError);
    expect(() => loadCorpus(path.join(dir, 'nope.txt'))).toThrow(/file not found/);
    expect(() => loadCorpus(`enwik8:${f}`)).toThrow(/must have 100000000 bytes, got 1000/);
    const fake = new Uint8Array(100_000_000);
    const s = enwik8Split(fake);
    expect([s.train.length, s.valid.length, s.test.length]).toEqual([90e6, 5e6, 5e6]);
    expect(splitBytes(new Uint8Array(100)).train.length).toBe(90);
    expect(() => loadCorpus(f, { minBytes: 100 })).toThrow(/valid split has 50 bytes/);
  });
  it('batches are a pure function of (seed, step), targets are inputs shifted by one', () => {
    const data = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) % 251);
    const b1 = new Batcher(data, { batch: 4, context: 16, seed: 3 });
    const b2 = new Batcher(data, { batch: 4, context: 16, seed: 3 });
    expect(b1.batch(5)).toEqual(b2.batch(5));
    expect(b1.batch(5).x).not.toEqual(b1.batch(6).x);
    const { x, y } = b1.batch(0);
    for (let b = 0; b < 4; b++) for (let s = 0; s < 15; s++) expect(y[b * 16 + s]).toBe(x[b * 16 + s + 1]);
    expect(() => new Batcher(new Uint8Array(10), { batch: 1, context: 16, seed: 0 })).toThrow(/at least context \+ 1/);
    const ev = [...evalBatches(data, 3, 100)];
    expect(ev.reduce((a, b) => a + b.batch, 0)).toBe(49);
    expect(ev[0].x[100]).toBe(data[100]);
  });
});

describe('schedule and logs', () => {
  it('cosine with warm-up', () => {
    const o = { lr: 1, total: 110, warmup: 10 };
    expect(cosineLr(0, o)).toBeCloseTo(0.1);
    expect(cosineLr(9, o)).toBeCloseTo(1);
    expect(cosineLr(10, o)).toBeCloseTo(1);
    expect(cosineLr(60, o)).toBeCloseTo(0.5);
    expect(cosineLr(110, o)).toBeCloseTo(0);
  });
  it('JSONL log appends one object per line; progress prints plain lines off a terminal', () => {
    const f = path.join(dir, 'log.jsonl');
    const log = new JsonlLog(f);
    log.write({ step: 1, loss: 2.5 });
    log.write({ step: 2, loss: 2.25 });
    const lines = readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.loss)).toEqual([2.5, 2.25]);
    let out = '';
    const p = new Progress(4, { stream: { isTTY: false, write: (s: string) => (out += s) }, every: 2 });
    for (let i = 1; i <= 4; i++) p.update(i, { loss: 1, tokens: i * 100 });
    expect(out.trim().split('\n')).toHaveLength(2);
    expect(out).toContain('step 4/4');
    expect(out).not.toContain('\r');
    let tty = '';
    const q = new Progress(2, { stream: { isTTY: true, columns: 120, write: (s: string) => (tty += s) } });
    q.update(2, { loss: 1 });
    q.done();
    expect(tty).toContain('\r');
    expect(formatDuration(3725)).toBe('1:02:05');
  });
});
