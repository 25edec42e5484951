/**
 * Differentiable functions over Variables. Each is one tape node: the forward calls a native op (lib/ops)
 * and the backward closure calls its native backward. The few glue ops here that have no kernel (residual
 * add, scaling a loss, reshape) are single passes over memory.
 */
import { ShapeError, isObject, showValue } from '../errors.js';
import { Tensor, expectTensor, shapeStr } from '../tensor.js';
import { Variable, record1 } from '../autograd.js';

/** Checks that each named argument of F.op is a Variable (null / undefined allowed for the names in `optional`). */
function vars(op: string, args: Record<string, unknown>, optional: readonly string[] = []): void {
  for (const [name, v] of Object.entries(args)) {
    if ((v === null || v === undefined) && optional.includes(name)) continue;
    if (!(v instanceof Variable))
      throw new TypeError(`F.${op}: ${name} must be a Variable${optional.includes(name) ? ' or null' : ''}, got ${showValue(v)}`);
  }
}

function options(op: string, name: string, o: unknown): void {
  if (!isObject(o)) throw new TypeError(`F.${op}: ${name} must be an object, got ${showValue(o)}`);
}

function sameShape(op: string, a: Variable, b: Variable): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i]))
    throw new ShapeError(`${op}: shapes differ: ${shapeStr(a.shape)} vs ${shapeStr(b.shape)}`);
}

function host(t: Tensor, op: string): Float32Array {
  if (t.device !== 'cpu' || t.dtype !== 'f32') throw new Error(`${op}: glue op runs on CPU f32 tensors only, got ${t.dtype} on ${t.device}`);
  return t.data() as Float32Array;
}

/** y = a + b (same shapes): the residual connection. */
export function add(a: Variable, b: Variable): Variable {
  vars('add', { a, b });
  sameShape('add', a, b);
  const x = host(a.data, 'add');
  const z = host(b.data, 'add');
  const y = new Float32Array(x.length);
  for (let i = 0; i < y.length; i++) y[i] = x[i] + z[i];
  return record1('add', [a, b], Tensor.fromHost(y, a.shape), (g) => [g.clone(), g.clone()]);
}

/** y = Σ_i alpha_i · v_i for scalar (one-element) variables: combines losses (CE + γ·regulariser). */
export function weightedSum(vs: Variable[], alphas: number[]): Variable {
  if (!Array.isArray(vs)) throw new TypeError(`F.weightedSum: vs must be an array of Variables, got ${showValue(vs)}`);
  vs.forEach((v, i) => vars('weightedSum', { [`vs[${i}]`]: v }));
  if (!Array.isArray(alphas) || !alphas.every((a) => typeof a === 'number'))
    throw new TypeError(`F.weightedSum: alphas must be an array of numbers, got ${showValue(alphas)}`);
  if (vs.length !== alphas.length) throw new ShapeError(`weightedSum: ${vs.length} values but ${alphas.length} weights`);
  let s = 0;
  vs.forEach((v, i) => {
    if (v.data.size !== 1) throw new ShapeError(`weightedSum: value ${i} must have one element, got ${shapeStr(v.shape)}`);
    s += alphas[i] * v.data.item();
  });
  return record1('weightedSum', vs, Tensor.fromHost(Float32Array.of(s), []), (g) => {
    const gv = g.item();
    return vs.map((v, i) => Tensor.full(v.shape, alphas[i] * gv));
  });
}

/** y = alpha · x. */
export function scale(x: Variable, alpha: number): Variable {
  vars('scale', { x });
  if (typeof alpha !== 'number') throw new TypeError(`F.scale: alpha must be a number, got ${showValue(alpha)}`);
  const xs = host(x.data, 'scale');
  const y = Float32Array.from(xs, (v) => v * alpha);
  return record1('scale', [x], Tensor.fromHost(y, x.shape), (g) => {
    const gs = host(g, 'scale');
    return [Tensor.fromHost(Float32Array.from(gs, (v) => v * alpha), x.shape)];
  });
}

/** A view with another shape (the gradient is reshaped back). */
export function reshape(x: Variable, shape: readonly number[]): Variable {
  vars('reshape', { x });
  const y = x.data.reshape(shape);
  return record1('reshape', [x], y, (g) => [g.reshape(x.shape)]);
}

// ---- Transformer ops ---------------------------------------------------------------------------------------

import * as nnops from '../ops/nn.js';

/** y [T, N] = x [T, K]·Wᵀ + b with W [N, K]. */
export function linear(x: Variable, w: Variable, b: Variable | null): Variable {
  vars('linear', { x, w, b }, ['b']);
  const y = nnops.linear(x.data, w.data, b?.data);
  return record1('linear', [x, w, b], y, (dy) => {
    const needX = x.requiresGrad || x.node !== null;
    const g = nnops.linearBackward(dy, x.data, w.data, { bias: Boolean(b), needX });
    return [g.dx, g.dw, g.db];
  });
}

/** Rows of W [V, D] for ids [T] (a constant i32 tensor; it stays the caller's: the node keeps a copy). */
export function embedding(w: Variable, ids: Tensor): Variable {
  vars('embedding', { w });
  expectTensor(ids, 'F.embedding', 'ids');
  const y = nnops.embedding(w.data, ids);
  const kept = ids.clone();
  return record1('embedding', [w], y, (dy) => [nnops.embeddingBackward(dy, kept, w.shape[0])], [kept]);
}

/** Layer norm over the last dim of x [T, D]. */
export function layerNorm(x: Variable, g: Variable, b: Variable, eps = 1e-5): Variable {
  vars('layerNorm', { x, g, b });
  const { y, saved } = nnops.layerNorm(x.data, g.data, b.data, eps);
  return record1(
    'layerNorm',
    [x, g, b],
    y,
    (dy) => {
      const r = nnops.layerNormBackward(dy, x.data, g.data, saved);
      return [r.dx, r.dg, r.db];
    },
    [saved.mean, saved.rstd],
  );
}

/** Causal multi-head self-attention with rotary positions: qkv [B·S, 3D] → [B·S, D]. */
export function causalAttention(qkv: Variable, dims: nnops.AttentionDims): Variable {
  vars('causalAttention', { qkv });
  const { out, saved } = nnops.attention(qkv.data, dims);
  // saved.out is `out` itself: the tape keeps a node's output alive until its backward ran, so it is not listed
  // among the tensors the node frees.
  return record1('attention', [qkv], out, (dout) => [nnops.attentionBackward(dout, qkv.data, dims, saved)], [saved.qr, saved.kr, saved.lse]);
}

/** Inverted dropout with a stateless mask seeded by `seed` (p = 0 returns x itself). */
export function dropout(x: Variable, p: number, seed: number): Variable {
  vars('dropout', { x });
  if (p === 0) return x;
  const y = nnops.dropout(x.data, p, seed);
  return record1('dropout', [x], y, (dy) => [nnops.dropout(dy, p, seed)]);
}

/**
 * Mean cross-entropy (nats) of logits [T, V] against targets [T] (a constant i32 tensor; it stays the caller's: the
 * node keeps a copy): a scalar Variable.
 */
export function crossEntropy(logits: Variable, targets: Tensor): Variable {
  vars('crossEntropy', { logits });
  expectTensor(targets, 'F.crossEntropy', 'targets');
  const { loss, lse } = nnops.crossEntropy(logits.data, targets);
  const kept = targets.clone();
  return record1(
    'crossEntropy',
    [logits],
    Tensor.fromHost(Float32Array.of(loss), []),
    (g) => [nnops.crossEntropyBackward(g.item(), logits.data, kept, lse)],
    [lse, kept],
  );
}

// ---- sparse FFN ops ---------------------------------------------------------------------------------------

import { Parameter } from './module.js';
import { ffnDense, ffnDenseBackward } from '../ops/ffn.js';
import { moeExperts, moeExpertsBackward, moeRoute, moeRouteBackward, type MoeGate, type MoeSelect } from '../ops/moe.js';
import { embeddingBag, embeddingBagBackward, peerExperts, peerExpertsBackward, pkmTopk, pkmTopkBackward, type PkmScoreAct } from '../ops/pkm.js';
import { record } from '../autograd.js';

/**
 * Dense FFN (or Top-K activation FFN when topk > 0): y = act(x·W1 + b1)·W2 + b2, x [T, D], W1 [D, F],
 * W2 [F, D]. One tape node over the native ffnDense / ffnDenseBackward.
 */
export function ffn(x: Variable, w1: Variable, b1: Variable | null, w2: Variable, b2: Variable | null, opts: { topk?: number } = {}): Variable {
  vars('ffn', { x, w1, b1, w2, b2 }, ['b1', 'b2']);
  options('ffn', 'opts', opts);
  const p = { w1: w1.data, w2: w2.data, b1: b1?.data, b2: b2?.data };
  const o = { act: 'relu' as const, topk: opts.topk ?? 0 };
  const { y, saved } = ffnDense(x.data, p, o);
  return record1(
    'ffn',
    [x, w1, b1, w2, b2],
    y,
    (dy) => {
      const g = ffnDenseBackward(dy, x.data, { w1: w1.data, w2: w2.data, b1: b1?.data, b2: b2?.data }, saved, o);
      return [g.dx, g.dw1, g.db1, g.dw2, g.db2];
    },
    [saved.pre, saved.h],
  );
}

export interface RouteOptions {
  E: number;
  k: number;
  gate: MoeGate;
  select: MoeSelect;
  threshold?: number;
  dropout?: number;
  seed?: number;
  /** Capacity per expert (−1 or absent: dropless). */
  capacity?: number;
}

/** The result of moe(): output, loss terms and routing statistics. */
export interface MoeResult {
  y: Variable;
  /** Σ_e p̄_e log p̄_e (the entropy regulariser, §1.5), a scalar Variable. */
  entropy: Variable;
  /** Switch load-balancing loss E·Σ_e f_e P_e, a scalar Variable. */
  balance: Variable;
  /** Kept slots per expert. */
  counts: Int32Array;
  /** Slots dropped by capacity. */
  dropped: number;
}

/**
 * A whole MoE expert block as one tape node: routing of the logits z [T, E] (gates, top-K, expert dropout,
 * capacity, sorted slot list) and the grouped-GEMM experts W1 [E, D, G], W2 [E, G, D] over x [T, D].
 * Outputs y [T, D] and the two auxiliary losses; backward runs the experts' backward (dx, dW1, dW2, dgates)
 * then the routing backward, which adds the auxiliary losses' exact gradients (weighted by their incoming
 * gradients) to dz.
 */
export function moe(x: Variable, z: Variable, w1: Variable, w2: Variable, opts: RouteOptions): MoeResult {
  vars('moe', { x, z, w1, w2 });
  options('moe', 'opts (RouteOptions)', opts);
  const r = moeRoute(z.data, {
    k: opts.k,
    gate: opts.gate,
    select: opts.select,
    threshold: opts.threshold,
    dropout: opts.dropout ?? 0,
    seed: opts.seed ?? 0,
    capacity: opts.capacity !== undefined && opts.capacity >= 0 ? opts.capacity : undefined,
  });
  const counts = (r.counts.data() as Int32Array).slice();
  const { y, saved } = moeExperts(x.data, r, { w1: w1.data, w2: w2.data }, { act: 'relu' });
  const ent = Tensor.fromHost(Float32Array.of(r.aux.entropy), []);
  const bal = Tensor.fromHost(Float32Array.of(r.aux.balance), []);
  // Every tensor the routing owns (whatever fields moeRoute returns) is saved for backward and freed with the graph.
  const routeTensors = Object.values(r).filter((v): v is Tensor => v instanceof Tensor);
  const [yv, ev, bv] = record(
    'moe',
    [x, z, w1, w2],
    [y, ent, bal],
    ([dy, dEnt, dBal]) => {
      let dx: Tensor | null = null;
      let dw1: Tensor | null = null;
      let dw2: Tensor | null = null;
      let dgates: Tensor | null = null;
      if (dy) {
        const g = moeExpertsBackward(dy, x.data, r, { w1: w1.data, w2: w2.data }, saved, { act: 'relu' });
        ({ dx, dw1, dw2, dgates } = g);
      }
      const dz = moeRouteBackward(z.data, r, dgates, { entropy: dEnt ? dEnt.item() : 0, balance: dBal ? dBal.item() : 0 });
      dgates?.dispose();
      return [dx, dz, dw1, dw2];
    },
    [saved.pre, saved.hs, ...routeTensors],
  );
  // Without a graph the routing is not needed any more.
  if (!yv.node) for (const t of routeTensors) t.dispose();
  return { y: yv, entropy: ev, balance: bv, counts, dropped: r.numDropped };
}

/** Product-key selection: indices (a constant) and differentiable weights [T, H, k]. */
export interface PkmSelection {
  idx: Tensor;
  weights: Variable;
}

/**
 * Exact product-key top-k of q [T, Hq·Dk] against sub-keys [Hk, 2, n, Dk/2] per (token, head); weights =
 * act(scores) (relu for Csordás PKM, softmax per head for Lample PKM and PEER). One tape node: gradients
 * flow into q and the selected sub-key rows.
 */
export function pkmTopkSelect(
  q: Variable,
  keys: Variable,
  o: { H: number; Hq: number; Dk: number; k: number; act: PkmScoreAct },
): PkmSelection {
  vars('pkmTopkSelect', { q, keys });
  options('pkmTopkSelect', 'o ({ H, Hq, Dk, k, act })', o);
  const T = q.shape[0];
  const q3 = q.data.reshape([T, o.Hq, o.Dk]);
  const sel = pkmTopk(q3, keys.data, o.k, { act: o.act });
  q3.dispose();
  const idx = sel.indices;
  const w = record1(
    'pkmTopk',
    [q, keys],
    sel.weights,
    (dw) => {
      const qv = q.data.reshape([T, o.Hq, o.Dk]);
      const g = pkmTopkBackward(dw, qv, keys.data, sel);
      qv.dispose();
      const dq = g.dq.reshape([T, o.Hq * o.Dk]);
      g.dq.dispose();
      return [dq, g.dkeys];
    },
    [sel.scores],
  );
  return { idx, weights: w };
}

/** Adds a row-sparse gradient to a sparse Parameter (its dense-gradient input gets null). */
function giveSparse(p: Variable, rows: Tensor, values: Tensor): void {
  if (!(p instanceof Parameter) || !p.sparse) throw new Error(`autograd: ${p.describe()} is not a sparse parameter`);
  p.accumulateSparse(rows, values);
}

/**
 * Weighted sum of table rows: out[t] = Σ_j w[t, j]·V[idx[t, j]], idx and w [T, J] (or [T, H, k]), V [N, D] a
 * sparse Parameter: its gradient is the touched rows only.
 */
export function embeddingBagSum(idx: Tensor, w: Variable, V: Parameter): Variable {
  expectTensor(idx, 'F.embeddingBagSum', 'idx');
  vars('embeddingBagSum', { w, V });
  const T = idx.shape[0];
  const J = idx.size / Math.max(T, 1);
  const idx2 = idx.reshape([T, J]);
  const w2 = w.data.reshape([T, J]);
  const out = embeddingBag(V.data, idx2, w2);
  w2.dispose();
  return record1(
    'embeddingBag',
    [w, V],
    out,
    (dout) => {
      const wv = w.data.reshape([T, J]);
      const g = embeddingBagBackward(dout, V.data, idx2, wv, { workspace: V.reusableSparseWorkspace() });
      wv.dispose();
      giveSparse(V, g.dV.rows, g.dV.values);
      const dw = g.dWeights.reshape(w.shape);
      g.dWeights.dispose();
      return [dw, null];
    },
    [idx2, idx],
  );
}

/**
 * PEER singleton experts: out[t] = Σ_j g[t, j]·ReLU(U[i]·x[t])·V[i] with i = idx[t, j]; U, V [N, D] sparse
 * Parameters.
 */
export function peer(x: Variable, idx: Tensor, g: Variable, U: Parameter, V: Parameter): Variable {
  vars('peer', { x });
  expectTensor(idx, 'F.peer', 'idx');
  vars('peer', { g, U, V });
  const T = idx.shape[0];
  const J = idx.size / Math.max(T, 1);
  const idx2 = idx.reshape([T, J]);
  const g2 = g.data.reshape([T, J]);
  const { out, h } = peerExperts(x.data, U.data, V.data, idx2, g2, { act: 'relu' });
  g2.dispose();
  return record1(
    'peer',
    [x, g, U, V],
    out,
    (dout) => {
      const gv = g.data.reshape([T, J]);
      const r = peerExpertsBackward(dout, x.data, U.data, V.data, idx2, gv, h, { act: 'relu', workspace: U.reusableSparseWorkspace(V) });
      gv.dispose();
      giveSparse(U, r.dU.rows, r.dU.values);
      giveSparse(V, r.dV.rows, r.dV.values);
      const dg = r.dGates.reshape(g.shape);
      r.dGates.dispose();
      return [r.dx, dg, null, null];
    },
    [idx2, idx, h],
  );
}
