/**
 * Test helpers shared by every suite: seeded random data, float64 comparisons with tolerances by dtype,
 * finite differences, and a memory() leak guard.
 */
import { afterEach, beforeEach, expect } from 'vitest';

import { memory } from '../lib/index.js';

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n standard normal samples (Box-Muller) scaled by `scale`. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(r(), 1e-12);
    const v = r();
    const m = Math.sqrt(-2 * Math.log(u)) * scale;
    out[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Uniform samples in [lo, hi). */
export function randu(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

export interface CloseOptions {
  /** Absolute tolerance. */
  atol?: number;
  /** Relative tolerance (to |expected|). */
  rtol?: number;
}

/** Tolerances by dtype for results compared with a float64 reference. */
export const TOL = {
  f32: { atol: 1e-5, rtol: 1e-4 },
  bf16: { atol: 1e-2, rtol: 2e-2 },
} as const;

/**
 * Asserts |actual - expected| <= atol + rtol * |expected| elementwise; the failure message shows the
 * first offending index, both values and the max error.
 */
export function expectClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: CloseOptions = TOL.f32,
  what = 'value',
): void {
  const { atol = 1e-5, rtol = 1e-4 } = opts;
  expect(actual.length, `${what}: length`).toBe(expected.length);
  let worst = -1;
  let worstErr = 0;
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    const bound = atol + rtol * Math.abs(expected[i]);
    if (!(err <= bound) && (worst < 0 || err - bound > worstErr)) {
      worst = i;
      worstErr = err - bound;
    }
  }
  if (worst >= 0) {
    let maxErr = 0;
    for (let i = 0; i < actual.length; i++) maxErr = Math.max(maxErr, Math.abs(actual[i] - expected[i]));
    expect.fail(
      `${what}: mismatch at [${worst}]: got ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol}; max |err| ${maxErr})`,
    );
  }
}

/** Bitwise equality of two float arrays (determinism checks). */
export function expectBitIdentical(a: Float32Array, b: Float32Array, what = 'value'): void {
  expect(a.length, `${what}: length`).toBe(b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) expect.fail(`${what}: differs at [${i}]: ${a[i]} vs ${b[i]}`);
}

/**
 * Central finite difference of a scalar function f(x) (evaluated in float64) with respect to every element
 * of x. Used to check the float64 references' gradients.
 */
export function finiteDiff(f: (x: Float64Array) => number, x: Float64Array, eps = 1e-6): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const old = x[i];
    x[i] = old + eps;
    const fp = f(x);
    x[i] = old - eps;
    const fm = f(x);
    x[i] = old;
    g[i] = (fp - fm) / (2 * eps);
  }
  return g;
}

/** Registers beforeEach/afterEach hooks asserting memory() is unchanged by every test. */
export function guardLeaks(): void {
  let before = memory();
  beforeEach(() => {
    before = memory();
  });
  afterEach(() => {
    expect(memory(), 'memory() after the test').toEqual(before);
  });
}

/** Every CPU ISA path this machine can run (tests run each kernel on all of them). */
export async function cpuIsas(): Promise<('scalar' | 'avx2' | 'avx512')[]> {
  const { info } = await import('../lib/index.js');
  const order = ['scalar', 'avx2', 'avx512'] as const;
  return order.slice(0, order.indexOf(info().cpu.bestIsa as (typeof order)[number]) + 1);
}

/** Runs fn with the CPU kernels forced to `isa`, then restores the best ISA. */
export async function withIsa<T>(isa: 'scalar' | 'avx2' | 'avx512', fn: () => T): Promise<T> {
  const { info, setIsa } = await import('../lib/index.js');
  const best = info().cpu.bestIsa as 'scalar' | 'avx2' | 'avx512';
  setIsa(isa);
  try {
    return fn();
  } finally {
    setIsa(best);
  }
}

/** Runs fn with the thread pool at n threads, then restores the previous count. */
export async function withThreads<T>(n: number, fn: () => T): Promise<T> {
  const { getNumThreads, setNumThreads } = await import('../lib/index.js');
  const old = getNumThreads();
  setNumThreads(n);
  try {
    return fn();
  } finally {
    setNumThreads(old);
  }
}

/** fn typed to take any arguments: calls with arguments its types forbid (bad-input cases). */
export const loose = <T>(fn: T): ((...args: unknown[]) => unknown) => fn as unknown as (...args: unknown[]) => unknown;
