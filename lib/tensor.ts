/**
 * Tensors: a dtype, a shape, a device and storage.
 *
 * Host storage is a JS-owned typed array that native code borrows during a call, so garbage collection works
 * inside long synchronous loops. Device storage is a native DeviceBuffer that must be freed explicitly:
 * `dispose()`, `using t = ...` (Symbol.dispose) or a `tidy()` scope. `memory()` counts live tensors and
 * bytes; every test checks that it returns to where it started.
 *
 * @example
 * ```ts
 * const x = Tensor.from([[1, 2], [3, 4]]);          // f32 [2, 2] on the CPU
 * const y = tidy(() => matmul(x, x));              // intermediates disposed, y kept
 * console.log(y.toArray(), memory());
 * ```
 */
import { DeviceError, DisposedError, DTypeError, ShapeError, BackendUnavailableError, isObject, showValue } from './errors.js';
import type { HostArray, NativeDeviceBuffer } from './native/binding.js';
import { backend, native, nativeOrNull } from './native/loader.js';

export type DType = 'f32' | 'i32' | 'i64' | 'bf16';
export type Device = 'cpu' | 'cuda';
export type HostData = Float32Array | Int32Array | BigInt64Array | Uint16Array;

const BYTES: Record<DType, number> = { f32: 4, i32: 4, i64: 8, bf16: 2 };
const ARRAY_NAME: Record<DType, string> = {
  f32: 'Float32Array',
  i32: 'Int32Array',
  i64: 'BigInt64Array',
  bf16: 'Uint16Array',
};

export function dtypeBytes(dtype: DType): number {
  return BYTES[dtype];
}

// Host arrays of HOST_ALIGN_MIN_BYTES or more start on a 64-byte (cache-line) boundary. V8 puts a large
// ArrayBuffer 16 bytes past a page boundary, so a 1 KiB table row would span 17 cache lines and every 64-byte
// vector load would split across two: the PEER forward at D = 256 ran 15-25% slower on such tables. Arrays of
// HOST_PAGE_ALIGN_MIN_BYTES or more (tables) start on a page boundary, so that rows of up to 4 KiB whose size is
// a power of two never straddle a multiple of their size: with 1 KiB rows 64 bytes off that boundary the PEER
// forward ran 1.16× slower on one thread (C++ harness, N = 1024², same process; on two threads, in a period
// when the host's bandwidth was the limit, every offset ran at the same speed). The array is a view at the
// aligned offset of a buffer `align` bytes longer; its byteOffset is then non-zero.
const HOST_ALIGN = 64;
const HOST_ALIGN_MIN_BYTES = 4096;
const HOST_PAGE_ALIGN = 4096;
const HOST_PAGE_ALIGN_MIN_BYTES = 1 << 20;
// Host arrays of HOST_HUGE_MIN_BYTES or more are advised onto transparent huge pages (madvise MADV_HUGEPAGE on
// Linux, see adviseHugePages; nothing elsewhere) before anything touches them, so the first writes fault in
// 2 MiB pages. Random row reads over big tables (PKM values, PEER experts, their AdamW moments) then miss the
// TLB far less: same process, T = 4096, N = 1024², D = 256, tables filled after the advice or without it, PEER
// forward 1.07-1.66× and backward 1.03-1.17× faster on 2 MiB pages (3 runs of 11 alternated rounds). From
// 32 MiB up the allocator maps fresh zero pages (glibc's largest mmap threshold), so nothing has been touched yet.
// SPARSE_FFN_HUGE_PAGES=0 turns this off (read at the first such allocation).
const HOST_HUGE_MIN_BYTES = 32 << 20;
let hugePagesOn: boolean | undefined;

function hugePages(): boolean {
  if (hugePagesOn === undefined) {
    const v = process.env.SPARSE_FFN_HUGE_PAGES;
    if (v !== undefined && v !== '0' && v !== '1') throw new RangeError(`sparse-ffn: SPARSE_FFN_HUGE_PAGES must be 0 or 1, got '${v}'`);
    hugePagesOn = v !== '0';
  }
  return hugePagesOn;
}

interface HostNative {
  alignOffset(buffer: ArrayBuffer, align: number): number;
  adviseHugePages(array: HostData): boolean;
}
let hostNative: HostNative | null | undefined;

/** The addon's host-memory helpers, or null without a native build (plain arrays then; ops report the load error). */
function hostHelpers(): HostNative | null {
  if (hostNative === undefined) {
    const b = nativeOrNull();
    hostNative = b && typeof b.alignOffset === 'function' && typeof b.adviseHugePages === 'function' ? b : null;
  }
  return hostNative;
}

// The byte alignment allocHost gives an array of `bytes` bytes (1: a plain array).
function hostAlignment(bytes: number): number {
  if (bytes >= HOST_PAGE_ALIGN_MIN_BYTES) return HOST_PAGE_ALIGN;
  return bytes >= HOST_ALIGN_MIN_BYTES ? HOST_ALIGN : 1;
}

type HostArrayCtor = {
  new (n: number): HostData;
  new (buffer: ArrayBuffer, byteOffset: number, length: number): HostData;
};
const HOST_CTOR: Record<DType, HostArrayCtor> = {
  f32: Float32Array,
  i32: Int32Array,
  i64: BigInt64Array,
  bf16: Uint16Array,
};

// ---- reuse of disposed host buffers ----
// A host array of 1 MiB or more gets memory mapped for it alone. Fresh, it is zeroed page by page as it is first
// written (on this project's 2-core VMs ~1.3 ms per MiB: the 6 MiB of outputs of a PEER forward at T = 4096 cost
// ~8 ms of its ~25), and V8 gives it back only when it collects the array. So when the last tensor over an array
// the library allocated itself is disposed, and the array was never handed out (data() was not called: only native
// ops and the tensor's own methods have read it), its buffer is kept here and the next allocation of the same size
// gets it back, zeroed. Up to SPARSE_FFN_HOST_POOL_MB MiB are kept (default 256, oldest dropped first; 0: none);
// they are not counted by memory(), which counts live tensors.
const HOST_POOL_DEFAULT_MB = 256;
let hostPoolLimit: number | undefined;
const hostPool: ArrayBuffer[] = []; // oldest first
let hostPoolBytes = 0;

function hostPoolMax(): number {
  if (hostPoolLimit === undefined) {
    const v = process.env.SPARSE_FFN_HOST_POOL_MB;
    const mb = v === undefined ? HOST_POOL_DEFAULT_MB : Number(v);
    if (!/^\d+$/.test(v ?? '0') || !Number.isSafeInteger(mb))
      throw new RangeError(`sparse-ffn: SPARSE_FFN_HOST_POOL_MB must be an integer ≥ 0 (MiB), got '${v}'`);
    hostPoolLimit = mb * 2 ** 20;
  }
  return hostPoolLimit;
}

function hostPoolPut(host: HostData): void {
  const b = host.buffer as ArrayBuffer;
  if (host.byteLength < HOST_PAGE_ALIGN_MIN_BYTES || b.byteLength !== host.byteLength + HOST_PAGE_ALIGN) return;
  const max = hostPoolMax();
  if (b.byteLength > max) return;
  while (hostPoolBytes + b.byteLength > max) hostPoolBytes -= hostPool.shift()!.byteLength;
  hostPool.push(b);
  hostPoolBytes += b.byteLength;
}

// The most recently kept buffer of exactly `bufferBytes` bytes, zeroed (at most a few hundred are kept).
function hostPoolTake(bufferBytes: number): ArrayBuffer | undefined {
  let i = hostPool.length - 1;
  while (i >= 0 && hostPool[i].byteLength !== bufferBytes) i--;
  if (i < 0) return undefined;
  const [b] = hostPool.splice(i, 1);
  hostPoolBytes -= b.byteLength;
  new Uint8Array(b).fill(0);
  return b;
}

/** @internal Buffers and bytes held for reuse (tests). */
export function hostPoolStats(): { buffers: number; bytes: number } {
  return { buffers: hostPool.length, bytes: hostPoolBytes };
}

/** @internal A zeroed host array of n elements with the alignment and huge-page advice of tensor storage. */
export function allocHost(dtype: DType, n: number): HostData {
  const bytes = n * BYTES[dtype];
  const Ctor = HOST_CTOR[dtype];
  const align = hostAlignment(bytes);
  if (align === 1) return new Ctor(n);
  const reused = align === HOST_PAGE_ALIGN ? hostPoolTake(bytes + align) : undefined;
  const buffer = reused ?? new ArrayBuffer(bytes + align);
  const h = hostHelpers();
  let off = h ? h.alignOffset(buffer, align) : 0;
  if (off % BYTES[dtype] !== 0) off = 0; // never happens with a 16-byte-aligned allocator; stay correct if it does
  const a = new Ctor(buffer, off, n);
  // A reused buffer was advised (or not) when it was first allocated.
  if (!reused && h && bytes >= HOST_HUGE_MIN_BYTES && hugePages()) h.adviseHugePages(a);
  return a;
}

/** The dtype a typed array stores, or undefined for kinds we do not support (Float64Array, ...). */
export function dtypeOfArray(a: unknown): DType | undefined {
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Int32Array) return 'i32';
  if (a instanceof BigInt64Array) return 'i64';
  if (a instanceof Uint16Array) return 'bf16';
  return undefined;
}

function describeValue(a: unknown): string {
  if (a === null) return 'null';
  if (ArrayBuffer.isView(a)) return a.constructor.name;
  if (Array.isArray(a)) return 'Array';
  return typeof a;
}

/** Validates a shape: every dim a non-negative integer. Returns the element count. */
export function checkShape(shape: readonly number[], op: string, name = 'shape'): number {
  if (!Array.isArray(shape)) throw new ShapeError(`${op}: ${name} must be an array of dims, got ${describeValue(shape)}`);
  let n = 1;
  shape.forEach((d, i) => {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0)
      throw new ShapeError(`${op}: ${name}[${i}] must be a non-negative integer, got ${String(d)}`);
    n *= d;
  });
  if (!Number.isSafeInteger(n)) throw new ShapeError(`${op}: ${name} [${shape.join(', ')}] has too many elements`);
  return n;
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ---- memory accounting and scopes ------------------------------------------------------------------------

interface Storage {
  host?: HostData;
  dev?: NativeDeviceBuffer;
  bytes: number;
  refs: number;
  /** host was allocated by this module (not adopted from a caller). */
  owned?: boolean;
  /** host was handed out by data(): someone else may hold it. */
  exposed?: boolean;
}

const counters = { liveTensors: 0, hostBytes: 0, deviceBytes: 0 };
const scopes: Set<Tensor>[] = [];

export interface MemoryInfo {
  /** Tensors created and not yet disposed. */
  liveTensors: number;
  /** Bytes of host storage held by live tensors (not the disposed buffers kept for reuse, see SPARSE_FFN_HOST_POOL_MB). */
  hostBytes: number;
  /** Bytes of device storage held by live tensors. */
  deviceBytes: number;
}

/** Live tensors and the bytes they hold, on the host and on the device. */
export function memory(): MemoryInfo {
  return { ...counters };
}

type Tensors = Tensor | Tensors[] | { [k: string]: Tensors } | undefined | void | null | number | string | boolean;

function collect(v: unknown, out: Set<Tensor>): void {
  if (v instanceof Tensor) out.add(v);
  else if (Array.isArray(v)) for (const x of v) collect(x, out);
  else if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype)
    for (const x of Object.values(v)) collect(x, out);
}

/**
 * Runs `fn` and disposes every tensor created inside it, except the tensors it returns (directly, or in
 * arrays and plain objects) and those passed to keep(). Scopes nest. `fn` must be synchronous.
 */
export function tidy<T extends Tensors>(fn: () => T): T {
  if (typeof fn !== 'function') throw new TypeError(`tidy: fn must be a function, got ${showValue(fn)}`);
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  if (result && typeof (result as unknown as Promise<unknown>).then === 'function') {
    for (const t of scope) t.dispose();
    throw new TypeError('tidy: fn must be synchronous; it returned a Promise');
  }
  const keepSet = new Set<Tensor>();
  collect(result, keepSet);
  const parent = scopes[scopes.length - 1];
  for (const t of scope) {
    if (keepSet.has(t) || t.kept) parent?.add(t);
    else t.dispose();
  }
  return result;
}

/** Keeps a tensor alive past the enclosing tidy() scopes. */
export function keep<T extends Tensor>(t: T): T {
  if (!(t instanceof Tensor)) throw new TypeError(`keep: t must be a Tensor, got ${showValue(t)}`);
  t.kept = true;
  return t;
}

// ---- Tensor ----------------------------------------------------------------------------------------------

export interface TensorOptions {
  shape?: readonly number[];
  dtype?: DType;
  device?: Device;
}

type Nested = number | bigint | Nested[];

function inferShape(data: Nested, op: string): number[] {
  const shape: number[] = [];
  let cur: Nested = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0] as Nested;
    if (cur === undefined) break;
  }
  return shape;
}

function flatten(data: Nested, shape: number[], depth: number, out: (number | bigint)[], op: string): void {
  if (depth === shape.length) {
    if (typeof data !== 'number' && typeof data !== 'bigint')
      throw new DTypeError(`${op}: data must contain numbers, got ${describeValue(data)}`);
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[depth])
    throw new ShapeError(
      `${op}: data is ragged: expected ${shape[depth]} elements at depth ${depth}, got ${Array.isArray(data) ? data.length : describeValue(data)}`,
    );
  for (const x of data) flatten(x, shape, depth + 1, out, op);
}

// Only this module may call the Tensor constructor: it passes this token first.
const INTERNAL: unique symbol = Symbol('Tensor.internal');

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: Device;
  /** Number of elements. */
  readonly size: number;
  /** Set by keep(): survives tidy() scopes. */
  kept = false;
  #storage: Storage | null;

  private constructor(token: typeof INTERNAL, storage: Storage, dtype: DType, shape: readonly number[], device: Device) {
    if (token !== INTERNAL)
      throw new TypeError(
        `Tensor: the constructor is internal; create tensors with Tensor.from(data, opts), Tensor.fromHost(array, shape), ` +
          `Tensor.zeros(shape, opts) or Tensor.full(shape, value, opts), got new Tensor(${showValue(token)}, ...)`,
      );
    this.#storage = storage;
    storage.refs++;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
    this.size = shape.reduce((a, b) => a * b, 1);
    counters.liveTensors++;
    scopes[scopes.length - 1]?.add(this);
  }

  /** Wraps host storage (not copied). Internal: ops use this to return results. */
  static fromHost(data: HostData, shape: readonly number[], dtypeArg?: DType): Tensor {
    const op = 'Tensor.fromHost';
    const kind = dtypeOfArray(data);
    if (!kind)
      throw new DTypeError(`${op}: data must be a Float32Array, Int32Array, BigInt64Array or Uint16Array, got ${showValue(data)}`);
    const dtype = dtypeArg === undefined ? kind : dtypeArg;
    checkDType(dtype, op);
    if (kind !== dtype) throw new DTypeError(`${op}: dtype ${dtype} needs a ${ARRAY_NAME[dtype]}, got ${showValue(data)}`);
    const n = checkShape(shape, op);
    if (n !== data.length) throw new ShapeError(`${op}: shape ${shapeStr(shape)} needs ${n} elements, data has ${data.length}`);
    const storage: Storage = { host: data, bytes: data.byteLength, refs: 0 };
    counters.hostBytes += storage.bytes;
    return new Tensor(INTERNAL, storage, dtype, shape, 'cpu');
  }

  // A tensor over an array allocHost made for it (its buffer may be reused once the tensor is disposed).
  static #owned(host: HostData, shape: readonly number[], dtype: DType | undefined): Tensor {
    const t = Tensor.fromHost(host, shape, dtype);
    t.#storage!.owned = true;
    return t;
  }

  /** Wraps a native device buffer (ownership passes to the tensor). Internal. */
  static fromDevice(buf: NativeDeviceBuffer, shape: readonly number[], dtype: DType): Tensor {
    const op = 'Tensor.fromDevice';
    if (!isObject(buf) || typeof buf.byteLength !== 'number' || typeof buf.dispose !== 'function')
      throw new TypeError(`${op}: buf must be a native device buffer, got ${showValue(buf)}`);
    checkShape(shape, op);
    checkDType(dtype, op);
    const storage: Storage = { dev: buf, bytes: buf.byteLength, refs: 0 };
    counters.deviceBytes += storage.bytes;
    return new Tensor(INTERNAL, storage, dtype, shape, 'cuda');
  }

  /**
   * A tensor from nested arrays, a flat array with `shape`, or a typed array (adopted without a copy when
   * its kind matches the dtype: Float32Array for f32, Int32Array for i32, BigInt64Array for i64,
   * Uint16Array for bf16 bit patterns).
   */
  static from(data: Nested | HostData | readonly number[], opts: TensorOptions = {}): Tensor {
    const op = 'Tensor.from';
    checkOptions(opts, op);
    const device = opts.device ?? 'cpu';
    checkDevice(device, op);
    let host: HostData;
    let shape: number[];
    if (ArrayBuffer.isView(data)) {
      const kind = dtypeOfArray(data);
      if (opts.dtype !== undefined) checkDType(opts.dtype, op);
      const dtype = opts.dtype ?? kind;
      if (!kind || !dtype)
        throw new DTypeError(
          `${op}: data must be a Float32Array, Int32Array, BigInt64Array or Uint16Array, got ${describeValue(data)}`,
        );
      if (kind !== dtype)
        throw new DTypeError(`${op}: dtype ${dtype} needs a ${ARRAY_NAME[dtype]}, got ${describeValue(data)}`);
      host = data as HostData;
      checkShapeOption(opts.shape, op);
      shape = opts.shape ? [...opts.shape] : [host.length];
    } else if (Array.isArray(data) || typeof data === 'number' || typeof data === 'bigint') {
      if (opts.dtype !== undefined) checkDType(opts.dtype, op);
      const dtype = opts.dtype ?? 'f32';
      const inferred = inferShape(data as Nested, op);
      const flat: (number | bigint)[] = [];
      flatten(data as Nested, inferred, 0, flat, op);
      checkShapeOption(opts.shape, op);
      shape = opts.shape ? [...opts.shape] : inferred;
      host = allocHost(dtype, flat.length);
      if (dtype === 'i64') flat.forEach((v, i) => ((host as BigInt64Array)[i] = BigInt(v)));
      else if (dtype === 'bf16') flat.forEach((v, i) => ((host as Uint16Array)[i] = f32ToBf16(Number(v))));
      else flat.forEach((v, i) => ((host as Float32Array | Int32Array)[i] = Number(v)));
    } else {
      throw new DTypeError(`${op}: data must be an array, a number or a typed array, got ${describeValue(data)}`);
    }
    const n = checkShape(shape, op);
    if (n !== host.length)
      throw new ShapeError(`${op}: shape ${shapeStr(shape)} needs ${n} elements, data has ${host.length}`);
    const t = ArrayBuffer.isView(data) ? Tensor.fromHost(host, shape, opts.dtype) : Tensor.#owned(host, shape, opts.dtype);
    if (device === 'cpu') return t;
    const d = t.to(device);
    t.dispose();
    return d;
  }

  /** A tensor of zeros. */
  static zeros(shape: readonly number[], opts: Omit<TensorOptions, 'shape'> = {}): Tensor {
    const op = 'Tensor.zeros';
    const n = checkShape(shape, op);
    checkOptions(opts, op);
    const dtype = opts.dtype ?? 'f32';
    checkDType(dtype, op);
    const device = opts.device ?? 'cpu';
    checkDevice(device, op);
    if (device === 'cpu') return Tensor.#owned(allocHost(dtype, n), shape, dtype);
    const buf = deviceAlloc(n, dtype, op);
    native().deviceFill!(buf, 0);
    return Tensor.fromDevice(buf, shape, dtype);
  }

  /** A tensor filled with `value`. */
  static full(shape: readonly number[], value: number, opts: Omit<TensorOptions, 'shape'> = {}): Tensor {
    const op = 'Tensor.full';
    checkShape(shape, op);
    checkOptions(opts, op);
    if (typeof value !== 'number') throw new TypeError(`${op}: value must be a number, got ${showValue(value)}`);
    if (opts.dtype === 'i64' && !Number.isInteger(value))
      throw new RangeError(`${op}: value must be an integer for dtype i64, got ${showValue(value)}`);
    checkDevice(opts.device ?? 'cpu', op);
    const t = Tensor.zeros(shape, { ...opts, device: 'cpu' });
    const h = t.#live('Tensor.full').host!;
    if (h instanceof BigInt64Array) h.fill(BigInt(value));
    else if (h instanceof Uint16Array) h.fill(f32ToBf16(value));
    else h.fill(value);
    if ((opts.device ?? 'cpu') === 'cpu') return t;
    const d = t.to(opts.device!);
    t.dispose();
    return d;
  }

  get isDisposed(): boolean {
    return this.#storage === null;
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  #live(op: string): Storage {
    if (!this.#storage) throw new DisposedError(`${op}: tensor ${shapeStr(this.shape)} ${this.dtype} is disposed`);
    return this.#storage;
  }

  /**
   * The host typed array. On the CPU this is the live storage (writes are visible to the tensor); for a
   * CUDA tensor it is a fresh copy. Arrays of 4 KiB or more are cache-line aligned (1 MiB or more: page aligned)
   * views into a slightly longer buffer: read raw bytes with `byteOffset` and `byteLength`, not the whole `.buffer`.
   * The array stays valid after dispose() (its buffer is then never reused for another tensor).
   */
  data(): HostData {
    const s = this.#live('Tensor.data');
    if (s.host) {
      s.exposed = true;
      return s.host;
    }
    const out = allocHost(this.dtype, this.size);
    native().copyToHost!(out as HostArray, s.dev!);
    return out;
  }

  // The values for a method that only reads them here: the host storage (not marked as handed out), or a copy.
  #read(op: string): HostData {
    const s = this.#live(op);
    return s.host ?? this.data();
  }

  /** @internal What native ops receive: the host array or the device buffer. */
  nativeArg(op: string, name: string): HostArray | NativeDeviceBuffer {
    const s = this.#storage;
    if (!s) throw new DisposedError(`${op}: ${name} is disposed`);
    return (s.host ?? s.dev)!;
  }

  /** Values as nested JS arrays (numbers; i64 converted with Number(), bf16 widened to f32). */
  toArray(): Nested {
    const h = this.#read('Tensor.toArray');
    const flat: number[] =
      h instanceof BigInt64Array
        ? Array.from(h, Number)
        : h instanceof Uint16Array
          ? Array.from(h, bf16ToF32)
          : Array.from(h as Float32Array | Int32Array);
    if (this.shape.length === 0) return flat[0];
    const build = (dim: number, offset: number): Nested => {
      const n = this.shape[dim];
      const stride = this.shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      if (dim === this.shape.length - 1) return flat.slice(offset, offset + n);
      return Array.from({ length: n }, (_, i) => build(dim + 1, offset + i * stride));
    };
    return build(0, 0);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new ShapeError(`Tensor.item: tensor must have 1 element, got ${this.size}`);
    const h = this.#read('Tensor.item');
    return h instanceof BigInt64Array ? Number(h[0]) : h instanceof Uint16Array ? bf16ToF32(h[0]) : h[0];
  }

  /** A copy on `device` (a new tensor even when the device is the same). */
  to(device: Device): Tensor {
    const op = 'Tensor.to';
    checkDevice(device, op);
    const s = this.#live(op);
    if (device === 'cpu') {
      if (!s.host) return Tensor.fromHost(this.data(), this.shape, this.dtype);
      const copy = allocHost(this.dtype, this.size);
      (copy as Float32Array).set(s.host as Float32Array);
      return Tensor.#owned(copy, this.shape, this.dtype);
    }
    const buf = deviceAlloc(this.size, this.dtype, op);
    if (s.host) native().copyToDevice!(buf, s.host as HostArray);
    else native().copyDeviceToDevice!(buf, s.dev!);
    return Tensor.fromDevice(buf, this.shape, this.dtype);
  }

  /** A copy on the same device. */
  clone(): Tensor {
    return this.to(this.device);
  }

  /** A view with another shape over the same storage (one dim may be -1). */
  reshape(shape: readonly number[]): Tensor {
    const op = 'Tensor.reshape';
    const s = this.#live(op);
    if (!Array.isArray(shape)) throw new ShapeError(`${op}: shape must be an array of dims, got ${showValue(shape)}`);
    const free = shape.indexOf(-1);
    let dims = [...shape];
    if (free >= 0) {
      const rest = dims.filter((_, i) => i !== free);
      const known = checkShape(rest, op);
      if (known === 0 || this.size % known !== 0)
        throw new ShapeError(`${op}: cannot reshape ${shapeStr(this.shape)} into ${shapeStr(shape)}`);
      dims[free] = this.size / known;
    }
    const n = checkShape(dims, op);
    if (n !== this.size)
      throw new ShapeError(`${op}: cannot reshape ${shapeStr(this.shape)} (${this.size} elements) into ${shapeStr(shape)}`);
    return new Tensor(INTERNAL, s, this.dtype, dims, this.device);
  }

  /** Frees the storage (when no other view holds it). Idempotent. */
  dispose(): void {
    const s = this.#storage;
    if (!s) return;
    this.#storage = null;
    counters.liveTensors--;
    if (--s.refs === 0) {
      if (s.host) {
        counters.hostBytes -= s.bytes;
        if (s.owned && !s.exposed) hostPoolPut(s.host);
      }
      if (s.dev) {
        counters.deviceBytes -= s.bytes;
        s.dev.dispose();
      }
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, ${shapeStr(this.shape)}, ${this.device}${this.isDisposed ? ', disposed' : ''})`;
  }
}

// ---- helpers shared by ops -------------------------------------------------------------------------------

function checkShapeOption(shape: unknown, op: string): void {
  if (shape !== undefined && !Array.isArray(shape)) throw new ShapeError(`${op}: opts.shape must be an array of dims, got ${showValue(shape)}`);
}

function checkOptions(opts: unknown, op: string): void {
  if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object (TensorOptions), got ${showValue(opts)}`);
}

export function checkDType(dtype: unknown, op: string): asserts dtype is DType {
  if (dtype !== 'f32' && dtype !== 'i32' && dtype !== 'i64' && dtype !== 'bf16')
    throw new DTypeError(`${op}: dtype must be one of f32, i32, i64, bf16, got ${String(dtype)}`);
}

export function checkDevice(device: unknown, op: string): asserts device is Device {
  if (device !== 'cpu' && device !== 'cuda')
    throw new DeviceError(`${op}: device must be 'cpu' or 'cuda', got ${String(device)}`);
  if (device === 'cuda' && backend().backend !== 'cuda')
    throw new BackendUnavailableError(
      `${op}: device 'cuda' needs the CUDA flavor, but the ${backend().backend} backend is loaded (${backend().reason})`,
    );
}

function deviceAlloc(n: number, dtype: DType, op: string): NativeDeviceBuffer {
  const alloc = native().deviceAlloc;
  if (!alloc) throw new BackendUnavailableError(`${op}: this build has no device memory (CPU flavor)`);
  return alloc(n, dtype);
}

/**
 * Checks that `t` is a live Tensor with the given dtype and shape. `shape` entries may be -1 (any). Names
 * the op and argument in every error.
 */
export function expectTensor(
  t: unknown,
  op: string,
  name: string,
  dtype?: DType,
  shape?: readonly number[],
): asserts t is Tensor {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${name} must be a Tensor, got ${describeValue(t)}`);
  if (t.isDisposed) throw new DisposedError(`${op}: ${name} is disposed`);
  if (dtype && t.dtype !== dtype) throw new DTypeError(`${op}: ${name} must be ${dtype}, got ${t.dtype}`);
  if (shape) {
    const ok = shape.length === t.shape.length && shape.every((d, i) => d < 0 || d === t.shape[i]);
    if (!ok)
      throw new ShapeError(
        `${op}: ${name} must have shape ${shapeStr(shape.map((d) => (d < 0 ? '?' : d)) as unknown as number[])}, got ${shapeStr(t.shape)}`,
      );
  }
}

/** All tensors on one device; returns it. */
export function sameDevice(op: string, tensors: Record<string, Tensor | undefined>): Device {
  let first: [string, Device] | undefined;
  for (const [name, t] of Object.entries(tensors)) {
    if (!t) continue;
    if (!first) first = [name, t.device];
    else if (t.device !== first[1])
      throw new DeviceError(`${op}: ${name} is on ${t.device} but ${first[0]} is on ${first[1]}`);
  }
  return first?.[1] ?? 'cpu';
}

// bf16 <-> f32 with round-to-nearest-even (NaN kept quiet).
const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
export function f32ToBf16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
export function bf16ToF32(b: number): number {
  u32buf[0] = b << 16;
  return f32buf[0];
}
