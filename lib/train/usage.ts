/**
 * Expert-usage statistics (methods.md §2.4, §3.4): per sparse layer, counts of how often each expert (MoE)
 * or memory slot (PKM, PEER) was selected. usage = fraction of experts selected at least once;
 * KL to uniform ("unevenness") = log N + Σ_i z_i log z_i with z the normalised counts (0 for perfectly
 * balanced use, log N when one expert takes everything). The PEER paper accumulates router scores
 * instead of counts; counts are what a deterministic test can pin, so we use them.
 */
import { ShapeError, isArrayLike, showValue } from '../errors.js';

export class UsageCounter {
  readonly size: number;
  readonly counts: Float64Array;
  constructor(size: number) {
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
      throw new RangeError(`UsageCounter: size must be an integer ≥ 0 (experts or memory slots), got ${showValue(size)}`);
    this.size = size;
    this.counts = new Float64Array(size);
  }
  /** Adds one selection for every non-negative id. */
  addIds(ids: ArrayLike<number>): void {
    if (!isArrayLike(ids)) throw new TypeError(`UsageCounter.addIds: ids must be an array or typed array of ids, got ${showValue(ids)}`);
    for (let i = 0; i < ids.length; i++) {
      const e = ids[i];
      if (e >= 0 && e < this.size) this.counts[e]++;
    }
  }
  /** Adds per-expert counts. */
  addCounts(c: ArrayLike<number>): void {
    if (!isArrayLike(c)) throw new TypeError(`UsageCounter.addCounts: c must be an array or typed array of counts, got ${showValue(c)}`);
    if (c.length !== this.size) throw new ShapeError(`UsageCounter.addCounts: c must have size=${this.size} entries, got ${c.length}`);
    for (let i = 0; i < this.size; i++) this.counts[i] += c[i];
  }
  reset(): void {
    this.counts.fill(0);
  }
  stats(): UsageStats {
    return usageStats(this.counts);
  }
}

export interface UsageStats {
  /** Number of experts / slots N. */
  n: number;
  /** Fraction selected at least once. */
  used: number;
  /** KL(z ‖ uniform) in nats. */
  klUniform: number;
  /** Selections counted. */
  total: number;
}

export function usageStats(counts: ArrayLike<number>): UsageStats {
  if (!isArrayLike(counts)) throw new TypeError(`usageStats: counts must be an array or typed array of counts, got ${showValue(counts)}`);
  const n = counts.length;
  let total = 0;
  let used = 0;
  for (let i = 0; i < n; i++) {
    total += counts[i];
    if (counts[i] > 0) used++;
  }
  let kl = Math.log(n);
  if (total > 0) for (let i = 0; i < n; i++) if (counts[i] > 0) kl += (counts[i] / total) * Math.log(counts[i] / total);
  return { n, used: n ? used / n : 0, klUniform: total > 0 ? kl : 0, total };
}
