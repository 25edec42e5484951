/**
 * Sampling the next byte from logits [V]: temperature, then nucleus (top-p) truncation, then one draw.
 * temperature 0 is greedy (argmax, ties to the lowest id). A pure function of (logits, options, u).
 */
export interface SampleOptions {
  /** Softmax temperature; 0 = greedy. Default 1. */
  temperature?: number;
  /** Keep the smallest set of tokens whose probability reaches topP (1 = all). Default 1. */
  topP?: number;
}

export function sampleLogits(logits: ArrayLike<number>, opts: SampleOptions, u: number): number {
  const V = logits.length;
  const temp = opts.temperature ?? 1;
  const topP = opts.topP ?? 1;
  if (!(temp >= 0)) throw new RangeError(`sample: temperature must be ≥ 0, got ${temp}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`sample: topP must be in (0, 1], got ${topP}`);
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
