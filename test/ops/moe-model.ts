/**
 * Float64 models of the MoE ops, written from methods.md (§1.3–1.6, §4, §6, §7) independently of the native
 * code: the tests compare every native path with them, and check their gradients by finite differences.
 */
import { rng } from '../helpers.js';

export type Gate = 'sigmoid' | 'softmax' | 'softmax-renorm';
export type Select = 'topk' | 'adaptive' | 'threshold';
export type Act = 'relu' | 'gelu' | 'silu';

export interface RouteCfg {
  T: number;
  E: number;
  k: number;
  gate: Gate;
  select: Select;
  threshold: number;
  /** Dropped (t, e) pairs, from the native mask (the hash is an implementation detail). */
  dropped?: (t: number, e: number) => boolean;
  capacity: number; // -1 dropless
}

export function softmax(z: ArrayLike<number>, off: number, E: number): { p: Float64Array; lse: number } {
  let m = -Infinity;
  for (let e = 0; e < E; e++) m = Math.max(m, z[off + e]);
  let s = 0;
  for (let e = 0; e < E; e++) s += Math.exp(z[off + e] - m);
  const lse = m + Math.log(s);
  const p = new Float64Array(E);
  for (let e = 0; e < E; e++) p[e] = Math.exp(z[off + e] - lse);
  return { p, lse };
}

/** Selection (rank order, -1 padded), before capacity. */
export function selectModel(z: ArrayLike<number>, c: RouteCfg): Int32Array {
  const { T, E, k } = c;
  const out = new Int32Array(T * k).fill(-1);
  for (let t = 0; t < T; t++) {
    const { p } = softmax(z, t * E, E);
    const cand: number[] = [];
    for (let e = 0; e < E; e++) if (!c.dropped?.(t, e)) cand.push(e);
    cand.sort((a, b) => z[t * E + b] - z[t * E + a] || a - b);
    let n = 0;
    if (c.select === 'topk') n = Math.min(k, cand.length);
    else if (c.select === 'adaptive') {
      n = Math.min(1, cand.length);
      if (cand.length >= 2 && p[cand[0]] - p[cand[1]] <= c.threshold) n = 2;
    } else {
      let cum = 0;
      while (n < k && n < cand.length && (n === 0 || cum < c.threshold)) cum += p[cand[n++]];
    }
    for (let j = 0; j < n; j++) out[t * k + j] = cand[j];
  }
  return out;
}

/** Capacity (rank-major priority, token order) -> ids with -1 for dropped. */
export function capacityModel(choices: Int32Array, c: RouteCfg): Int32Array {
  const ids = Int32Array.from(choices);
  if (c.capacity < 0) return ids;
  const fill = new Array(c.E).fill(0);
  for (let j = 0; j < c.k; j++)
    for (let t = 0; t < c.T; t++) {
      const s = t * c.k + j;
      const e = choices[s];
      if (e < 0) continue;
      if (fill[e] >= c.capacity) ids[s] = -1;
      else fill[e]++;
    }
  return ids;
}

/** Gates [T, k] as a function of z for a fixed choice (0 where ids = -1). */
export function gatesModel(z: ArrayLike<number>, choices: Int32Array, ids: Int32Array, c: RouteCfg): Float64Array {
  const { T, E, k } = c;
  const g = new Float64Array(T * k);
  for (let t = 0; t < T; t++) {
    const { p } = softmax(z, t * E, E);
    let den = 0;
    for (let j = 0; j < k; j++) if (choices[t * k + j] >= 0) den += Math.exp(z[t * E + choices[t * k + j]]);
    for (let j = 0; j < k; j++) {
      const s = t * k + j;
      if (ids[s] < 0) continue;
      const zv = z[t * E + ids[s]];
      g[s] = c.gate === 'sigmoid' ? 1 / (1 + Math.exp(-zv)) : c.gate === 'softmax' ? p[ids[s]] : Math.exp(zv) / den;
    }
  }
  return g;
}

/** Auxiliary losses for a fixed first choice (f is a constant of the routing). */
export function auxModel(z: ArrayLike<number>, choices: Int32Array, c: RouteCfg) {
  const { T, E, k } = c;
  const pbar = new Float64Array(E);
  const f = new Float64Array(E);
  let zl = 0;
  for (let t = 0; t < T; t++) {
    const { p, lse } = softmax(z, t * E, E);
    for (let e = 0; e < E; e++) pbar[e] += p[e] / T;
    zl += (lse * lse) / T;
    if (choices[t * k] >= 0) f[choices[t * k]] += 1 / T;
  }
  let entropy = 0;
  let balance = 0;
  for (let e = 0; e < E; e++) {
    if (pbar[e] > 0) entropy += pbar[e] * Math.log(pbar[e]);
    balance += E * f[e] * pbar[e];
  }
  return { entropy, balance, zLoss: zl };
}

/** Stable counting sort of the kept slots. */
export function sortModel(ids: Int32Array, E: number) {
  const counts = new Array(E).fill(0);
  for (const e of ids) if (e >= 0) counts[e]++;
  const offsets = [0];
  for (let e = 0; e < E; e++) offsets.push(offsets[e] + counts[e]);
  const cur = offsets.slice(0, E);
  const sorted = new Array(offsets[E]).fill(-1);
  const rank = new Array(ids.length).fill(-1);
  ids.forEach((e, s) => {
    if (e < 0) return;
    rank[s] = cur[e]++;
    sorted[rank[s]] = s;
  });
  return { counts, offsets, sorted, rank };
}

// ---- experts -----------------------------------------------------------------------------------------------

export function actF(a: Act, x: number): number {
  if (a === 'relu') return x > 0 ? x : 0;
  if (a === 'silu') return x / (1 + Math.exp(-x));
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/** erf to ~1e-15 (series / continued fraction), enough for float64 finite differences. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    // Maclaurin series.
    let sum = 0;
    let term = ax;
    for (let n = 0; n < 200; n++) {
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
      term *= (-ax * ax) / (n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Continued fraction for erfc.
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return Math.sign(x) * (1 - erfc);
}

export interface ExpertsIn {
  T: number;
  D: number;
  E: number;
  k: number;
  G: number;
  act: Act;
  x: ArrayLike<number>;
  w1: ArrayLike<number>;
  w2: ArrayLike<number>;
  b1?: ArrayLike<number>;
  b2?: ArrayLike<number>;
  ids: ArrayLike<number>; // [T, k], -1 = not computed
  gates: ArrayLike<number>; // [T, k]
}

/** y [T, D] = Σ_j g·act(x·W1[e] + b1[e])·W2[e] + b2, straight from the definition. */
export function expertsModel(m: ExpertsIn): Float64Array {
  const { T, D, k, G } = m;
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < D; d++) y[t * D + d] = m.b2 ? m.b2[d] : 0;
    for (let j = 0; j < k; j++) {
      const e = m.ids[t * k + j];
      if (e < 0) continue;
      const g = m.gates[t * k + j];
      for (let c = 0; c < G; c++) {
        let a = m.b1 ? m.b1[e * G + c] : 0;
        for (let d = 0; d < D; d++) a += m.x[t * D + d] * m.w1[(e * D + d) * G + c];
        const h = g * actF(m.act, a);
        for (let d = 0; d < D; d++) y[t * D + d] += h * m.w2[(e * G + c) * D + d];
      }
    }
  }
  return y;
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export function toF64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a as ArrayLike<number>);
}

/** Random logits with a chosen routing shape: uniform, skewed (Zipf-like bias) or one expert takes all. */
export function logits(T: number, E: number, seed: number, kind: 'random' | 'skewed' | 'one' = 'random'): Float32Array {
  const r = rng(seed);
  const z = new Float32Array(T * E);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      let v = 2 * r() - 1;
      if (kind === 'skewed') v += 2 / (e + 1);
      if (kind === 'one') v += e === E - 1 ? 10 : 0;
      z[t * E + e] = v;
    }
  return z;
}
