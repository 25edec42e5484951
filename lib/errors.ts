/**
 * Typed errors. Every failure names the op and argument, the expected and the actual value, e.g.
 * `moeRoute: k must be in [1, E=16], got 20`. Native code throws the same classes (they are handed to the
 * addon when it loads), so callers can branch with `instanceof` whichever layer caught the problem.
 */

/** A shape, length or dimension is wrong. */
export class ShapeError extends RangeError {
  override name = 'ShapeError';
}

/** A dtype or typed-array kind is wrong (a Float64Array where f32 is expected, ...). */
export class DTypeError extends TypeError {
  override name = 'DTypeError';
}

/** Tensors live on different devices, or the op does not run on this device. */
export class DeviceError extends Error {
  override name = 'DeviceError';
}

/** A tensor or buffer was used after dispose(). */
export class DisposedError extends Error {
  override name = 'DisposedError';
}

/** One attempt the loader made, and why it failed. */
export interface LoadAttempt {
  path: string;
  error: string;
}

/** The requested backend (or any backend) cannot be loaded on this machine. */
export class BackendUnavailableError extends Error {
  override name = 'BackendUnavailableError';
  readonly attempts: LoadAttempt[];
  constructor(message: string, attempts: LoadAttempt[] = []) {
    super(message);
    this.attempts = attempts;
  }
}

/**
 * A value as error messages show it: numbers as they print (`-4`, `2.5`, `NaN`), strings quoted (`string '4'`),
 * everything else by kind (`null`, `undefined`, `an array of length 3`, `a Float64Array`, `an object`).
 */
export function showValue(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return `string '${v.length > 40 ? `${v.slice(0, 40)}…` : v}'`;
  if (typeof v === 'boolean' || typeof v === 'bigint') return `${typeof v} ${String(v)}`;
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'symbol') return v.toString();
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  const ctor = (v as { constructor?: { name?: string } }).constructor?.name;
  return ctor && ctor !== 'Object' ? `a ${ctor}` : 'an object';
}

/**
 * `v` if it is a (safe) integer ≥ `lo`, else an error of class `Err` (RangeError by default) whose message names
 * `what`, the expected and the actual value: `Batcher.batch: step must be an integer ≥ 0, got -1`.
 */
export function checkInt(v: unknown, what: string, lo = -Infinity, Err: new (message: string) => Error = RangeError): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo) throw new Err(`${what} must be an integer${lo > -Infinity ? ` ≥ ${lo}` : ''}, got ${showValue(v)}`);
  return v;
}

/** Whether `v` can be an options object: a non-null object that is not an array. */
export function isObject(v: unknown): v is object {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Whether `v` is an array-like (an array, a typed array, ...): an object with a length that is an integer ≥ 0. */
export function isArrayLike(v: unknown): v is ArrayLike<unknown> {
  if (v === null || typeof v !== 'object') return false;
  const n = (v as { length?: unknown }).length;
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/** Shorthand used by the TS-side validators. */
export function fail(kind: 'shape' | 'dtype' | 'device' | 'type' | 'range', message: string): never {
  switch (kind) {
    case 'shape':
      throw new ShapeError(message);
    case 'dtype':
      throw new DTypeError(message);
    case 'device':
      throw new DeviceError(message);
    case 'type':
      throw new TypeError(message);
    default:
      throw new RangeError(message);
  }
}
