/**
 * Sampling the next byte from logits [V]: temperature, then nucleus (top-p) truncation, then one draw.
 * temperature 0 is greedy (argmax, ties to the lowest id). A pure function of (logits, options, u).
 */
import { isArrayLike, isObject, showValue } from '../errors.js';

export interface SampleOptions {
  /** Softmax temperature; 0 = greedy. Default 1. */
  temperature?: number;
  /** Keep the smallest set of tokens whose probability reaches topP (1 = all). Default 1. */
  topP?: number;
}

export function sampleLogits(logits: ArrayLike<number>, opts: SampleOptions, u: number): number {
  const op = 'sampleLogits';
  if (!isArrayLike(logits) || logits.length === 0)
    throw new TypeError(`${op}: logits must be a non-empty array or typed array of numbers, got ${showValue(logits)}`);
  if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object (SampleOptions), got ${showValue(opts)}`);
  if (typeof u !== 'number' || !(u >= 0 && u < 1)) throw new RangeError(`${op}: u must be a uniform draw in [0, 1), got ${showValue(u)}`);
  const V = logits.length;
  const temp = opts.temperature ?? 1;
  const topP = opts.topP ?? 1;
  if (typeof temp !== 'number' || !(temp >= 0)) throw new RangeError(`${op}: opts.temperature must be ≥ 0, got ${showValue(temp)}`);
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new RangeError(`${op}: opts.topP must be in (0, 1], got ${showValue(topP)}`);
  if (temp === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let mx = -Infinity;
  for (let i = 0; i < V; i++) mx = Math.max(mx, logits[i]);
  const p = new Float64Array(V);
  let s = 0;
  for (let i = 0; i < V; i++) s += p[i] = Math.exp((logits[i] - mx) / temp);
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
  // Nucleus: the prefix of the sorted distribution whose mass first reaches topP.
  let keep = 0;
  let mass = 0;
  while (keep < V && mass < topP * s) mass += p[order[keep++]];
  let r = u * mass;
  for (let j = 0; j < keep; j++) {
    r -= p[order[j]];
    if (r < 0) return order[j];
  }
  return order[keep - 1];
}
