/**
 * Transformer ops over Tensors (forward and backward): linear, embedding, layerNorm, causal self-attention with
 * rotary positions, crossEntropy, dropout, and the reductions behind clipGradNorm. Kernels: native/kernels/cpu
 * (fast) and native/kernels/ref (the spec, `impl: 'ref'`), declared in native/include/sffn/nn.h. On CUDA tensors,
 * embedding, layerNorm, crossEntropy and their backwards run native/kernels/cuda/nn.cu (ids and targets on the
 * device are not checked by the host: out of range they give NaN rows, and a NaN loss), as do linear, dropout,
 * sumSquares / scaleInPlace (clipGradNorm) and attention (head width <= 256 on cuda).
 *
 * Shapes: x [T, K], W [N, K] (y = x·Wᵀ + b); ids [T] i32, table [V, D]; qkv [T = B·S, 3D] with q | k | v and
 * heads contiguous in each (head width dh = D/H, even); logits [T, V], targets [T] i32.
 *
 * @example
 * ```ts
 * const y = linear(x, w, b);                                  // [T, N]
 * const { out, saved } = attention(qkv, { B: 2, S: 128, H: 4 });
 * const { loss, saved: ce } = crossEntropy(logits, targets);  // mean nats
 * ```
 */
import { DeviceError, ShapeError, showValue } from '../errors.js';
import { native } from '../native/loader.js';
import { expectTensor, sameDevice, shapeStr, Tensor } from '../tensor.js';
import type { Device } from '../tensor.js';

export interface ImplOption {
  /** 'cpu' (default) or 'ref' (the scalar float64-accumulating reference, for tests). */
  impl?: 'cpu' | 'ref';
}

function isRef(opts: ImplOption | undefined, op: string): boolean {
  const impl = opts?.impl ?? 'cpu';
  if (impl !== 'cpu' && impl !== 'ref') throw new RangeError(`${op}: impl must be 'cpu' or 'ref', got ${String(impl)}`);
  return impl === 'ref';
}


/** The device of a call that has a CUDA kernel: all tensors on one device; 'ref' only on the cpu. */
function deviceOf(op: string, tensors: Record<string, Tensor | undefined | null>, opts: ImplOption | undefined): Device {
  const t: Record<string, Tensor | undefined> = {};
  for (const [k, v] of Object.entries(tensors)) if (v) t[k] = v;
  const dev = sameDevice(op, t);
  if (dev === 'cuda' && opts?.impl === 'ref') throw new DeviceError(`${op}: impl 'ref' runs on the cpu; got cuda tensors`);
  return dev;
}

function rank2(t: Tensor, op: string, name: string, what: string): [number, number] {
  if (t.rank !== 2) throw new ShapeError(`${op}: ${name} must be ${what}, got ${shapeStr(t.shape)}`);
  return [t.shape[0], t.shape[1]];
}

/** Runs a native call that writes `outs`; frees them if it throws (a bad id or target), so nothing leaks. */
function guarded<R>(outs: (Tensor | null)[], fn: () => R): R {
  try {
    return fn();
  } catch (e) {
    for (const t of outs) t?.dispose();
    throw e;
  }
}

const arg = (t: Tensor | undefined | null, op: string, name: string) => (t ? t.nativeArg(op, name) : null);

// ---- linear ---------------------------------------------------------------------------------------------------

/** y [T, N] = x [T, K]·Wᵀ + b, W [N, K], b [N] optional. */
export function linear(x: Tensor, w: Tensor, b?: Tensor | null, opts: ImplOption = {}): Tensor {
  const op = 'linear';
  expectTensor(x, op, 'x', 'f32');
  expectTensor(w, op, 'w', 'f32');
  const [T, K] = rank2(x, op, 'x', '[T, K]');
  const [N] = rank2(w, op, 'w', '[N, K]');
  expectTensor(w, op, 'w', 'f32', [N, K]);
  if (b) expectTensor(b, op, 'b', 'f32', [N]);
  const device = deviceOf(op, { x, w, b }, opts);
  const y = Tensor.zeros([T, N], { device });
  native().linear(x.nativeArg(op, 'x'), w.nativeArg(op, 'w'), arg(b, op, 'b'), y.nativeArg(op, 'y'), T, K, N, isRef(opts, op));
  return y;
}

/** Gradients of linear: dx [T, K], dw [N, K], db [N] (db only when `bias`). */
export function linearBackward(
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  opts: ImplOption & { bias?: boolean; needX?: boolean } = {},
): { dx: Tensor | null; dw: Tensor; db: Tensor | null } {
  const op = 'linearBackward';
  expectTensor(x, op, 'x', 'f32');
  expectTensor(w, op, 'w', 'f32');
  const [T, K] = rank2(x, op, 'x', '[T, K]');
  const [N] = rank2(w, op, 'w', '[N, K]');
  expectTensor(w, op, 'w', 'f32', [N, K]);
  expectTensor(dy, op, 'dy', 'f32', [T, N]);
  const device = deviceOf(op, { x, w, dy }, opts);
  const dx = opts.needX === false ? null : Tensor.zeros([T, K], { device });
  const dw = Tensor.zeros([N, K], { device });
  const db = opts.bias ? Tensor.zeros([N], { device }) : null;
  native().linearBackward(
    x.nativeArg(op, 'x'), w.nativeArg(op, 'w'), dy.nativeArg(op, 'dy'), arg(dx, op, 'dx'), dw.nativeArg(op, 'dw'),
    arg(db, op, 'db'), T, K, N, isRef(opts, op),
  );
  return { dx, dw, db };
}

// ---- embedding ------------------------------------------------------------------------------------------------

/** Rows of `table` [V, D] by `ids` [T] (i32, each in [0, V)) → [T, D]. */
export function embedding(table: Tensor, ids: Tensor, opts: ImplOption = {}): Tensor {
  const op = 'embedding';
  expectTensor(table, op, 'table', 'f32');
  expectTensor(ids, op, 'ids', 'i32');
  const [V, D] = rank2(table, op, 'table', '[V, D]');
  if (ids.rank !== 1) throw new ShapeError(`${op}: ids must be [T], got ${shapeStr(ids.shape)}`);
  const device = deviceOf(op, { table, ids }, opts);
  const T = ids.shape[0];
  const y = Tensor.zeros([T, D], { device });
  guarded([y], () => native().embedding(ids.nativeArg(op, 'ids'), table.nativeArg(op, 'table'), y.nativeArg(op, 'y'), T, V, D, isRef(opts, op)));
  return y;
}

/** Dense table gradient [V, D]: dW[v] = Σ_{t: ids[t] = v} dy[t]. */
export function embeddingBackward(dy: Tensor, ids: Tensor, V: number, opts: ImplOption = {}): Tensor {
  const op = 'embeddingBackward';
  expectTensor(ids, op, 'ids', 'i32');
  if (ids.rank !== 1) throw new ShapeError(`${op}: ids must be [T], got ${shapeStr(ids.shape)}`);
  expectTensor(dy, op, 'dy', 'f32');
  const [T, D] = rank2(dy, op, 'dy', '[T, D]');
  expectTensor(ids, op, 'ids', 'i32', [T]);
  const device = deviceOf(op, { dy, ids }, opts);
  const dw = Tensor.zeros([V, D], { device });
  guarded([dw], () => native().embeddingBackward(ids.nativeArg(op, 'ids'), dy.nativeArg(op, 'dy'), dw.nativeArg(op, 'dw'), T, V, D, isRef(opts, op)));
  return dw;
}

// ---- layer norm -----------------------------------------------------------------------------------------------

export interface LayerNormSaved {
  mean: Tensor;
  rstd: Tensor;
}

/** y = (x − μ)/√(σ² + eps)·g + b over the last dim of x [T, D]; returns the per-row statistics for backward. */
export function layerNorm(x: Tensor, g: Tensor, b: Tensor, eps = 1e-5, opts: ImplOption = {}): { y: Tensor; saved: LayerNormSaved } {
  const op = 'layerNorm';
  expectTensor(x, op, 'x', 'f32');
  const [T, D] = rank2(x, op, 'x', '[T, D]');
  expectTensor(g, op, 'g', 'f32', [D]);
  expectTensor(b, op, 'b', 'f32', [D]);
  const device = deviceOf(op, { x, g, b }, opts);
  const y = Tensor.zeros([T, D], { device });
  const mean = Tensor.zeros([T], { device });
  const rstd = Tensor.zeros([T], { device });
  native().layerNorm(
    x.nativeArg(op, 'x'), g.nativeArg(op, 'g'), b.nativeArg(op, 'b'), y.nativeArg(op, 'y'), mean.nativeArg(op, 'mean'),
    rstd.nativeArg(op, 'rstd'), T, D, eps, isRef(opts, op),
  );
  return { y, saved: { mean, rstd } };
}

export function layerNormBackward(
  dy: Tensor,
  x: Tensor,
  g: Tensor,
  saved: LayerNormSaved,
  opts: ImplOption = {},
): { dx: Tensor; dg: Tensor; db: Tensor } {
  const op = 'layerNormBackward';
  expectTensor(x, op, 'x', 'f32');
  const [T, D] = rank2(x, op, 'x', '[T, D]');
  expectTensor(g, op, 'g', 'f32', [D]);
  expectTensor(dy, op, 'dy', 'f32', [T, D]);
  expectTensor(saved?.mean, op, 'saved.mean', 'f32', [T]);
  expectTensor(saved.rstd, op, 'saved.rstd', 'f32', [T]);
  const device = deviceOf(op, { x, g, dy, mean: saved.mean, rstd: saved.rstd }, opts);
  const dx = Tensor.zeros([T, D], { device });
  const dg = Tensor.zeros([D], { device });
  const db = Tensor.zeros([D], { device });
  native().layerNormBackward(
    x.nativeArg(op, 'x'), g.nativeArg(op, 'g'), saved.mean.nativeArg(op, 'mean'), saved.rstd.nativeArg(op, 'rstd'),
    dy.nativeArg(op, 'dy'), dx.nativeArg(op, 'dx'), dg.nativeArg(op, 'dg'), db.nativeArg(op, 'db'), T, D, isRef(opts, op),
  );
  return { dx, dg, db };
}

// ---- attention ------------------------------------------------------------------------------------------------

export interface AttentionDims {
  /** Sequences in the batch. */
  B: number;
  /** Sequence length. */
  S: number;
  /** Heads; the head width D/H must be even. */
  H: number;
}

/**
 * What backward needs from the forward. Memory is O(B·S·D) per call: no [S, S] probability matrix is kept (backward
 * recomputes it block by block from qr, kr and lse, FlashAttention-2 style).
 */
export interface AttentionSaved {
  /** Rotated q and k, [B, H, S, dh]. */
  qr: Tensor;
  kr: Tensor;
  /** Log-sum-exp of every query row's causal scores, [B, H, S]. */
  lse: Tensor;
  /**
   * The forward's output [B·S, D] itself (the same Tensor as the returned `out`, not a copy): backward reads it for
   * the softmax row term dout_i·out_i, so keep it alive and unchanged until then.
   */
  out: Tensor;
}

function attnDims(qkv: Tensor, d: AttentionDims, op: string): { T: number; D: number; dh: number } {
  expectTensor(qkv, op, 'qkv', 'f32');
  if (!d || typeof d !== 'object') throw new TypeError(`${op}: dims must be { B, S, H }`);
  for (const k of ['B', 'S', 'H'] as const)
    if (!Number.isInteger(d[k]) || d[k] < (k === 'B' ? 0 : 1)) throw new RangeError(`${op}: ${k} must be a positive integer, got ${String(d[k])}`);
  const [T, D3] = rank2(qkv, op, 'qkv', '[B·S, 3D]');
  if (T !== d.B * d.S) throw new ShapeError(`${op}: qkv has ${T} rows, expected B·S = ${d.B}·${d.S} = ${d.B * d.S}`);
  if (D3 % 3 !== 0) throw new ShapeError(`${op}: qkv width must be 3D, got ${D3}`);
  const D = D3 / 3;
  if (D % d.H !== 0) throw new ShapeError(`${op}: D=${D} must be divisible by H=${d.H}`);
  const dh = D / d.H;
  if (dh % 2 !== 0) throw new ShapeError(`${op}: the head width D/H must be even for rotary positions, got ${dh}`);
  return { T, D, dh };
}

/**
 * Causal multi-head self-attention with rotary positions: qkv [B·S, 3D] → out [B·S, D]. Saves the rotated q, k and
 * the per-row log-sum-exp for backward (O(S) per head; no S×S matrix is materialised beyond one block per thread).
 *
 * @example
 * ```ts
 * const { out, saved } = attention(qkv, { B: 2, S: 128, H: 4 });
 * const dqkv = attentionBackward(dout, qkv, { B: 2, S: 128, H: 4 }, saved);
 * for (const t of [out, saved.qr, saved.kr, saved.lse]) t.dispose(); // saved.out is out
 * ```
 */
export function attention(qkv: Tensor, dims: AttentionDims, opts: ImplOption = {}): { out: Tensor; saved: AttentionSaved } {
  const op = 'attention';
  const { T, D, dh } = attnDims(qkv, dims, op);
  const device = deviceOf(op, { qkv }, opts);
  if (device === 'cuda' && dh > 256) throw new DeviceError(`${op}: the head width D/H must be at most 256 on cuda, got ${dh}`);
  const { B, S, H } = dims;
  const out = Tensor.zeros([T, D], { device });
  const qr = Tensor.zeros([B, H, S, dh], { device });
  const kr = Tensor.zeros([B, H, S, dh], { device });
  const lse = Tensor.zeros([B, H, S], { device });
  guarded([out, qr, kr, lse], () =>
    native().attention(
      qkv.nativeArg(op, 'qkv'), out.nativeArg(op, 'out'), qr.nativeArg(op, 'qr'), kr.nativeArg(op, 'kr'),
      lse.nativeArg(op, 'lse'), B, S, H, dh, isRef(opts, op),
    ),
  );
  return { out, saved: { qr, kr, lse, out } };
}

/** dqkv [B·S, 3D] from dout [B·S, D] and what {@link attention} saved. */
export function attentionBackward(dout: Tensor, qkv: Tensor, dims: AttentionDims, saved: AttentionSaved, opts: ImplOption = {}): Tensor {
  const op = 'attentionBackward';
  const { T, D, dh } = attnDims(qkv, dims, op);
  const { B, S, H } = dims;
  expectTensor(dout, op, 'dout', 'f32', [T, D]);
  if (!saved || typeof saved !== 'object') throw new TypeError(`${op}: saved must be { qr, kr, lse, out } from attention()`);
  expectTensor(saved.qr, op, 'saved.qr', 'f32', [B, H, S, dh]);
  expectTensor(saved.kr, op, 'saved.kr', 'f32', [B, H, S, dh]);
  expectTensor(saved.lse, op, 'saved.lse', 'f32', [B, H, S]);
  expectTensor(saved.out, op, 'saved.out', 'f32', [T, D]);
  const device = deviceOf(op, { qkv, dout, out: saved.out, qr: saved.qr, kr: saved.kr, lse: saved.lse }, opts);
  const dqkv = Tensor.zeros([T, 3 * D], { device });
  native().attentionBackward(
    qkv.nativeArg(op, 'qkv'), saved.out.nativeArg(op, 'out'), saved.qr.nativeArg(op, 'qr'), saved.kr.nativeArg(op, 'kr'),
    saved.lse.nativeArg(op, 'lse'), dout.nativeArg(op, 'dout'), dqkv.nativeArg(op, 'dqkv'), B, S, H, dh, isRef(opts, op),
  );
  return dqkv;
}

// ---- cross-entropy --------------------------------------------------------------------------------------------

/** Mean cross-entropy (nats) of logits [T, V] against targets [T] (i32 in [0, V)); saves the log-sum-exp. */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: ImplOption = {}): { loss: number; lse: Tensor } {
  const op = 'crossEntropy';
  expectTensor(logits, op, 'logits', 'f32');
  const [T, V] = rank2(logits, op, 'logits', '[T, V]');
  expectTensor(targets, op, 'targets', 'i32', [T]);
  const device = deviceOf(op, { logits, targets }, opts);
  const lse = Tensor.zeros([T], { device });
  const loss = guarded([lse], () =>
    native().crossEntropy(logits.nativeArg(op, 'logits'), targets.nativeArg(op, 'targets'), lse.nativeArg(op, 'lse'), T, V, isRef(opts, op)),
  );
  return { loss, lse };
}

/** dlogits [T, V] = dloss/T·(softmax − onehot). */
export function crossEntropyBackward(dloss: number, logits: Tensor, targets: Tensor, lse: Tensor, opts: ImplOption = {}): Tensor {
  const op = 'crossEntropyBackward';
  expectTensor(logits, op, 'logits', 'f32');
  const [T, V] = rank2(logits, op, 'logits', '[T, V]');
  expectTensor(targets, op, 'targets', 'i32', [T]);
  expectTensor(lse, op, 'lse', 'f32', [T]);
  if (!Number.isFinite(dloss)) throw new RangeError(`${op}: dloss must be finite, got ${dloss}`);
  const device = deviceOf(op, { logits, targets, lse }, opts);
  const d = Tensor.zeros([T, V], { device });
  guarded([d], () =>
    native().crossEntropyBackward(
      logits.nativeArg(op, 'logits'), targets.nativeArg(op, 'targets'), lse.nativeArg(op, 'lse'), d.nativeArg(op, 'dlogits'),
      T, V, dloss, isRef(opts, op),
    ),
  );
  return d;
}

// ---- dropout, gradient norm -------------------------------------------------------------------------------------

/**
 * Inverted dropout with a stateless mask: element i kept when hash(seed, i) ≥ p, scaled by 1/(1 − p). Calling it
 * again with the same (p, seed) on the upstream gradient is the backward.
 */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  const op = 'dropout';
  expectTensor(x, op, 'x', 'f32');
  if (!(p >= 0 && p < 1)) throw new RangeError(`${op}: p must be in [0, 1), got ${p}`);
  if (!Number.isInteger(seed) || seed < 0) throw new RangeError(`${op}: seed must be a non-negative integer, got ${seed}`);
  const y = Tensor.zeros(x.shape, { device: x.device });
  native().dropout(x.nativeArg(op, 'x'), y.nativeArg(op, 'y'), p, seed);
  return y;
}

/** Σ x² (float64, independent of the thread count). */
export function sumSquares(x: Tensor): number {
  const op = 'sumSquares';
  expectTensor(x, op, 'x', 'f32');
  return native().sumSquares(x.nativeArg(op, 'x'));
}

/** x ← s·x in place. */
export function scaleInPlace(x: Tensor, s: number): void {
  const op = 'scaleInPlace';
  expectTensor(x, op, 'x', 'f32');
  native().scaleInPlace(x.nativeArg(op, 'x'), s);
}

/** @internal maxNorm of the clipGradNorm functions: a number, not NaN (≤ 0 only measures). */
export function checkMaxNorm(maxNorm: unknown, op: string): void {
  if (typeof maxNorm !== 'number') throw new TypeError(`${op}: maxNorm must be a number (≤ 0: measure only), got ${showValue(maxNorm)}`);
  if (Number.isNaN(maxNorm)) throw new RangeError(`${op}: maxNorm must be a number (≤ 0: measure only), got NaN`);
}

/**
 * Clips the global L2 norm of a list of gradient tensors to maxNorm (in place; maxNorm ≤ 0 only measures).
 * Returns the norm before clipping.
 */
export function clipGradNorm(grads: Tensor[], maxNorm: number): number {
  const op = 'clipGradNormTensors'; // its name in the package's exports (clipGradNorm there takes Parameters)
  if (!Array.isArray(grads)) throw new TypeError(`${op}: grads must be an array of Tensors, got ${showValue(grads)}`);
  grads.forEach((g, i) => expectTensor(g, op, `grads[${i}]`, 'f32'));
  checkMaxNorm(maxNorm, op);
  let s = 0;
  for (const g of grads) s += sumSquares(g);
  const norm = Math.sqrt(s);
  if (maxNorm > 0 && norm > maxNorm) {
    const k = maxNorm / (norm + 1e-6);
    for (const g of grads) scaleInPlace(g, k);
  }
  return norm;
}
