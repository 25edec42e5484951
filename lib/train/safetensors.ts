/**
 * safetensors read/write (the Hugging Face format): an 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__: {string: string}}`, then the raw
 * little-endian tensor bytes. Writes are atomic: a temp file in the same directory, fsync, then rename, so
 * an interrupted save never leaves a truncated checkpoint under the final name.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';

import { DTypeError, DisposedError, ShapeError, isObject, showValue } from '../errors.js';
import { DataError } from '../data/corpus.js';
import { Tensor, checkShape, dtypeBytes, type DType } from '../tensor.js';

const TO_ST: Record<DType, string> = { f32: 'F32', i32: 'I32', i64: 'I64', bf16: 'BF16' };
const FROM_ST: Record<string, DType> = { F32: 'f32', I32: 'i32', I64: 'i64', BF16: 'bf16' };

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

/** Checks what encodeSafetensors / saveSafetensors write: a Map of live Tensors by name, and string metadata. */
function checkContents(tensors: unknown, metadata: unknown, op: string): void {
  if (!(tensors instanceof Map)) throw new TypeError(`${op}: tensors must be a Map<string, Tensor>, got ${showValue(tensors)}`);
  for (const [name, t] of tensors) {
    if (typeof name !== 'string' || name.length === 0 || name === '__metadata__')
      throw new TypeError(`${op}: tensor names must be non-empty strings other than '__metadata__', got ${showValue(name)}`);
    if (!(t instanceof Tensor)) throw new TypeError(`${op}: tensors.get('${name}') must be a Tensor, got ${showValue(t)}`);
    if (t.isDisposed) throw new DisposedError(`${op}: tensor ${name} is disposed`);
  }
  checkMetadata(metadata, op, 'metadata');
}

function checkMetadata(metadata: unknown, op: string, what: string): asserts metadata is Record<string, string> {
  if (!isObject(metadata)) throw new TypeError(`${op}: ${what} must be an object of strings, got ${showValue(metadata)}`);
  for (const [k, v] of Object.entries(metadata as object))
    if (typeof v !== 'string') throw new TypeError(`${op}: ${what}.${k} must be a string, got ${showValue(v)}`);
}

/** Serialises tensors (host copies are taken for device tensors) and string metadata into one buffer. */
export function encodeSafetensors(tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Buffer {
  checkContents(tensors, metadata, 'encodeSafetensors');
  return encode(tensors, metadata);
}

function encode(tensors: Map<string, Tensor>, metadata: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let off = 0;
  // Sorted names: the same state gives the same bytes, whatever order it was built in.
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    const h = t.data();
    const bytes = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    header[name] = { dtype: TO_ST[t.dtype], shape: [...t.shape], data_offsets: [off, off + bytes.length] };
    blobs.push(bytes);
    off += bytes.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (allowed by the format).
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + head.length + off);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let p = 8 + head.length;
  for (const b of blobs) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}

/** Parses a safetensors buffer into CPU tensors (copies, so the buffer may be dropped). */
export function decodeSafetensors(buf: Uint8Array, what = 'safetensors'): SafetensorsFile {
  if (!(buf instanceof Uint8Array)) throw new TypeError(`decodeSafetensors: buf must be a Uint8Array (the file's bytes), got ${showValue(buf)}`);
  if (typeof what !== 'string') throw new TypeError(`decodeSafetensors: what must be a string (the name errors show), got ${showValue(what)}`);
  if (buf.length < 8) throw new ShapeError(`${what}: file too short (${buf.length} bytes)`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (n > buf.length - 8) throw new ShapeError(`${what}: header length ${n} exceeds the file (${buf.length} bytes)`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(Buffer.from(buf.subarray(8, 8 + n)).toString('utf8'));
  } catch (e) {
    throw new ShapeError(`${what}: header is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(header)) throw new ShapeError(`${what}: header must be a JSON object, got ${showValue(header)}`);
  const base = 8 + n;
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  try {
    for (const [name, e] of Object.entries(header)) {
      if (name === '__metadata__') {
        checkMetadata(e, what, '__metadata__');
        metadata = e;
        continue;
      }
      if (!isObject(e)) throw new ShapeError(`${what}: tensor ${name} must be an object { dtype, shape, data_offsets }, got ${showValue(e)}`);
      const { dtype: st, shape, data_offsets } = e as { dtype: string; shape: number[]; data_offsets: [number, number] };
      const dtype = Object.hasOwn(FROM_ST, st) ? FROM_ST[st] : undefined;
      if (!dtype) throw new DTypeError(`${what}: tensor ${name} has unsupported dtype ${showValue(st)}`);
      const count = checkShape(shape, what, `tensor ${name} shape`);
      if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every((o) => Number.isSafeInteger(o)))
        throw new ShapeError(`${what}: tensor ${name} data_offsets must be [begin, end] (integers), got ${showValue(data_offsets)}`);
      const [b, eo] = data_offsets;
      if (eo - b !== count * dtypeBytes(dtype) || base + eo > buf.length || b < 0)
        throw new ShapeError(`${what}: tensor ${name} [${shape.join(', ')}] ${st} has a bad byte range [${b}, ${eo})`);
      // A copy into a fresh tensor, so that it gets the alignment of any other host tensor (a page for tables of 1 MiB
      // or more: a 1 KiB row never straddles a 1 KiB boundary; see tensor.ts).
      const t = Tensor.zeros(shape, { dtype });
      const d = t.data();
      new Uint8Array(d.buffer, d.byteOffset, d.byteLength).set(buf.subarray(base + b, base + eo));
      tensors.set(name, t);
    }
  } catch (err) {
    // A bad entry after good ones: free what was decoded so far.
    for (const t of tensors.values()) t.dispose();
    throw err;
  }
  return { tensors, metadata };
}

/** Writes a file atomically: temp file in the same directory, fsync, rename. */
export function writeFileAtomic(file: string, data: Uint8Array): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
  const fd = openSync(tmp, 'w');
  try {
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off, data.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, file);
}

/** Saves tensors and metadata as a safetensors file (atomic). */
export function saveSafetensors(file: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): void {
  checkFile(file, 'saveSafetensors');
  checkContents(tensors, metadata, 'saveSafetensors');
  const dir = path.dirname(path.resolve(file));
  if (!existsSync(dir)) throw new DataError(`saveSafetensors: directory does not exist: ${dir}`);
  writeFileAtomic(file, encode(tensors, metadata));
}

function checkFile(file: unknown, op: string): asserts file is string {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError(`${op}: file must be a non-empty string (a path), got ${showValue(file)}`);
}

/** Loads a safetensors file into CPU tensors. */
export function loadSafetensors(file: string): SafetensorsFile {
  checkFile(file, 'loadSafetensors');
  if (!existsSync(file)) throw new DataError(`loadSafetensors: file not found: ${path.resolve(file)}`);
  if (!statSync(file).isFile()) throw new DataError(`loadSafetensors: not a file: ${path.resolve(file)}`);
  return decodeSafetensors(readFileSync(file), file);
}
