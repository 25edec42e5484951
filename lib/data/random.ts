/**
 * Seeded, stateless randomness: every draw is a pure function of (seed, stream, counter), so a batcher or
 * an initialiser resumed at step n produces exactly what an uninterrupted run would (bit-identical resume).
 */

import { checkInt, showValue } from '../errors.js';

/** 32-bit mix of up to four integers (a murmur3-style finaliser over a running hash). */
export function hash32(a: number, b = 0, c = 0, d = 0): number {
  let h = 0x9e3779b9 ^ (a >>> 0);
  for (const v of [b, c, d]) {
    h = Math.imul(h ^ (v >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  return (h ^ (h >>> 15)) >>> 0;
}

// mulberry32's state moves by this constant before each draw (native/kernels/cpu/init_fill.cpp relies on it).
const MULBERRY_STEP = 0x6d2b79f5;

/** A small sequential PRNG (mulberry32) for initialisation and sampling. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    checkInt(seed, 'Rng: seed');
    this.#s = hash32(seed) >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.#s = (this.#s + MULBERRY_STEP) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Advances the generator past `draws` uniform draws (what that many next() calls would do) in O(1). */
  skip(draws: number): void {
    checkInt(draws, 'Rng.skip: draws', 0);
    // The state moves by a constant per draw; reduce the count mod 2^32 before multiplying (imul wraps).
    this.#s = (this.#s + Math.imul(draws % 4294967296, MULBERRY_STEP)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    checkInt(n, 'Rng.int: n', 1);
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = Math.max(this.next(), 1e-300);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Normal truncated to ±2 standard deviations (resampled), the initialiser the paper's code uses. */
  truncNormal(): number {
    for (;;) {
      const z = this.normal();
      if (z >= -2 && z <= 2) return z;
    }
  }
  get state(): number {
    return this.#s;
  }
  set state(s: number) {
    if (typeof s !== 'number' || !Number.isInteger(s)) throw new RangeError(`Rng: state must be an integer, got ${showValue(s)}`);
    this.#s = s >>> 0;
  }
}
