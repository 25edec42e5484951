/**
 * Product-Key Memory and PEER ops (Lample et al. 2019; Csordás et al. 2023 §3.2; He 2024), forward and backward.
 * These are the building blocks of the `ProductKeyMemory` and `PEER` layers:
 *
 * - {@link pkmTopk}: exact top-k over N = n² product keys per (token, head), with score activation.
 * - {@link embeddingBag}: `out[t] = Σ_j w[t,j] · V[idx[t,j]]`  (the PKM value read).
 * - {@link peerExperts}: `out[t] = Σ_j g[t,j] · act(U[i]·x[t]) · V[i]` (PEER singleton experts, fused).
 *
 * - {@link batchNorm}: the optional query BatchNorm of Lample's PKM and PEER (the query projection is a plain
 *   matmul).
 *
 * Table gradients come back sparse ({@link SparseRows}: unique rows ascending plus one [U, D] block), built
 * deterministically, so a 1024² × D table never gets an N×D gradient; {@link sparseAdamwStep} consumes them.
 *
 * Shape letters: T tokens, H heads, D width, N = n² slots, k slots per head, J = H·k slots per token.
 * All ops run on the CPU (multithreaded, AVX2/AVX-512 where available) and are bit-identical for any thread count.
 * pkmTopk, embeddingBag, peerExperts and their backwards also run on `cuda` tensors (native/kernels/cuda/pkm.cu;
 * deterministic; the top-k selects exactly what the CPU selects): indices on the device are not checked by the
 * host (out of range they give NaN rows and are left out of the table gradients), and the sparse table gradients
 * come back on the device sized for the worst case, min(T·J, N) rows, the rows past the touched ones being −1 with
 * zero values (sparseAdamwStep skips them), so nothing waits for the device. batchNorm and its backward are
 * CPU-only (DeviceError on cuda).
 *
 * @example A Lample PKM read (4 heads, per-head sub-keys, softmax), and its backward:
 * ```ts
 * const q = Tensor.from(randn(T * 4 * 256), { shape: [T, 4, 256] });      // queries [T, H, Dk]
 * const keys = Tensor.from(randn(4 * 2 * 512 * 128), { shape: [4, 2, 512, 128] }); // [H, 2, n, Dk/2]
 * const sel = pkmTopk(q, keys, 32);                                     // indices/weights [T, 4, 32]
 * const out = embeddingBag(values, sel.indices, sel.weights);           // values [512², D] → out [T, D]
 * const { dWeights, dV } = embeddingBagBackward(dOut, values, sel.indices, sel.weights);
 * const { dq, dkeys } = pkmTopkBackward(dWeights, q, keys, sel);
 * ```
 */
import { DeviceError, ShapeError } from '../errors.js';
import type { HostArray, NativeSparsePair, NativeSparseRows } from '../native/binding.js';
import { native } from '../native/loader.js';
import { allocHost, expectTensor, sameDevice, shapeStr, Tensor } from '../tensor.js';
import type { Device } from '../tensor.js';

/** Activation of the selected scores: softmax per head (Lample, PEER), softmax over all H·k slots of a token
 * (Csordás' code), ReLU (non-competitive, Csordás), sigmoid, or none. */
export type PkmScoreAct = 'softmax' | 'softmax-all' | 'relu' | 'sigmoid' | 'none';

/** Expert activation of PEER's singleton experts: σ in `σ(u·x)·v`. `gelu` is the erf form (torch.nn.GELU()). */
export type PeerAct = 'relu' | 'gelu' | 'silu' | 'identity';

/** `impl: 'ref'` runs the scalar float64 reference kernels instead of the fast ones (for tests). */
export interface ImplOption {
  impl?: 'cpu' | 'ref';
}

const PKM_ACTS: Record<PkmScoreAct, number> = { none: 0, softmax: 1, 'softmax-all': 2, relu: 3, sigmoid: 4 };
const PEER_ACTS: Record<PeerAct, number> = { relu: 0, gelu: 1, silu: 2, identity: 3 };

function pkmAct(act: unknown, op: string): number {
  const a = PKM_ACTS[act as PkmScoreAct];
  if (a === undefined)
    throw new RangeError(`${op}: act must be one of ${Object.keys(PKM_ACTS).join(', ')}, got ${String(act)}`);
  return a;
}

function peerAct(act: unknown, op: string): number {
  const a = PEER_ACTS[act as PeerAct];
  if (a === undefined)
    throw new RangeError(`${op}: act must be one of ${Object.keys(PEER_ACTS).join(', ')}, got ${String(act)}`);
  return a;
}

function isRef(opts: ImplOption | undefined, op: string): boolean {
  const impl = opts?.impl ?? 'cpu';
  if (impl !== 'cpu' && impl !== 'ref') throw new RangeError(`${op}: impl must be 'cpu' or 'ref', got ${String(impl)}`);
  return impl === 'ref';
}

function cpuOnly(op: string, tensors: Record<string, Tensor | undefined>): void {
  const dev = sameDevice(op, tensors);
  if (dev !== 'cpu') throw new DeviceError(`${op}: runs on the CPU only, got ${dev} tensors`);
}

/** The device of an op with a CUDA kernel: all tensors on one device; 'ref' only on the cpu. */
function deviceOf(op: string, tensors: Record<string, Tensor>, ref: boolean): Device {
  const dev = sameDevice(op, tensors);
  if (dev === 'cuda' && ref) throw new DeviceError(`${op}: impl 'ref' runs on the cpu; got cuda tensors`);
  return dev;
}

/**
 * Number of sub-keys per half for a memory of N slots: n = √N. Throws unless N is a perfect square.
 *
 * @example
 * ```ts
 * subKeyCount(1024 * 1024); // 1024
 * subKeyCount(1000);        // ShapeError: pkm: N must be a perfect square (n² slots), got 1000
 * ```
 */
export function subKeyCount(N: number, op = 'pkm'): number {
  if (!Number.isInteger(N) || N < 1) throw new ShapeError(`${op}: N must be a positive integer, got ${String(N)}`);
  const n = Math.round(Math.sqrt(N));
  if (n * n !== N) throw new ShapeError(`${op}: N must be a perfect square (n² slots), got ${N}`);
  return n;
}

// ---- product-key top-k -----------------------------------------------------------------------------------------

export interface PkmTopkOptions extends ImplOption {
  /** Score activation producing `weights` (default 'softmax'). */
  act?: PkmScoreAct;
  /** Number of heads H; only needed when both q and keys have a single head (default max(Hq, Hk)). */
  heads?: number;
}

/** What {@link pkmTopk} returns; pass it back to {@link pkmTopkBackward}. */
export interface PkmTopkResult {
  /** Selected slots `a·n + b` (a: first-half sub-key, b: second-half), i32 [T, H, k], best first. */
  indices: Tensor;
  /** Raw selected scores `q1·c_a + q2·c'_b`, f32 [T, H, k]. */
  scores: Tensor;
  /** `act(scores)`, f32 [T, H, k]: the weights of the value read. */
  weights: Tensor;
  /** The activation used (the backward needs it). */
  act: PkmScoreAct;
}


interface PkmDimsTs {
  T: number;
  H: number;
  Hq: number;
  Hk: number;
  Dk: number;
  n: number;
}

function pkmDims(q: Tensor, keys: Tensor, op: string, heads?: number): PkmDimsTs {
  expectTensor(q, op, 'q', 'f32');
  expectTensor(keys, op, 'keys', 'f32');
  if (q.rank !== 3) throw new ShapeError(`${op}: q must be [T, H, Dk] (or [T, 1, Dk] shared by heads), got ${shapeStr(q.shape)}`);
  if (keys.rank !== 4 || keys.shape[1] !== 2)
    throw new ShapeError(`${op}: keys must be [Hk, 2, n, Dk/2] (Hk = H per-head or 1 shared), got ${shapeStr(keys.shape)}`);
  const [T, Hq, Dk] = q.shape;
  const [Hk, , n, half] = keys.shape;
  if (Dk % 2 !== 0) throw new ShapeError(`${op}: q width Dk must be even (two halves), got ${Dk}`);
  if (half * 2 !== Dk) throw new ShapeError(`${op}: keys width must be Dk/2=${Dk / 2} for q ${shapeStr(q.shape)}, got ${half}`);
  if (heads !== undefined && (!Number.isInteger(heads) || heads < 1))
    throw new RangeError(`${op}: heads must be a positive integer, got ${String(heads)}`);
  const H = heads ?? Math.max(Hq, Hk);
  if ((Hq !== 1 && Hq !== H) || (Hk !== 1 && Hk !== H))
    throw new ShapeError(`${op}: query heads (${Hq}) and key tables (${Hk}) must each be 1 or the same H`);
  if (n < 1) throw new ShapeError(`${op}: keys must have at least one sub-key, got n=0`);
  return { T, H, Hq, Hk, Dk, n };
}

/**
 * Exact product-key top-k: for every token t and head h, splits `q[t, h]` into halves q1, q2, scores them
 * against the head's sub-key tables C (`keys[h, 0]`) and C' (`keys[h, 1]`), and returns the k best slots of
 * the N = n² sums `q1·C[a] + q2·C'[b]` (ties: lower slot first), identical to exhaustive search over all N keys
 * `[C[a]; C'[b]]`. Sub-key scores run as GEMMs; only the candidates (i, j) with (i+1)(j+1) ≤ k of the two
 * sorted top-k lists are ever scored.
 *
 * - PKM (Lample): q [T, H, Dk], keys [H, 2, n, Dk/2] (per-head sub-keys).
 * - PEER (He): q [T, H, Dk], keys [1, 2, n, Dk/2] (sub-keys shared by all heads).
 * - Csordás PKM: q [T, 1, Dk] (the input itself, read by every head), keys [H, 2, n, Dk/2], act 'relu'.
 *
 * @param k slots per head, 1 ≤ k ≤ n.
 * @example
 * ```ts
 * const { indices, weights } = pkmTopk(q, keys, 16, { act: 'softmax' }); // PEER: keys [1, 2, 1024, 128]
 * ```
 */
export function pkmTopk(q: Tensor, keys: Tensor, k: number, opts: PkmTopkOptions = {}): PkmTopkResult {
  const op = 'pkmTopk';
  const d = pkmDims(q, keys, op, opts.heads);
  if (!Number.isInteger(k) || k < 1 || k > d.n)
    throw new RangeError(`${op}: k must be an integer in [1, n=${d.n}] (n = √N sub-keys per half), got ${String(k)}`);
  const act = opts.act ?? 'softmax';
  const a = pkmAct(act, op);
  const ref = isRef(opts, op);
  const device = deviceOf(op, { q, keys }, ref);
  const shape = [d.T, d.H, k];
  const indices = Tensor.zeros(shape, { dtype: 'i32', device });
  const scores = Tensor.zeros(shape, { device });
  const weights = Tensor.zeros(shape, { device });
  try {
    native().pkmTopk(
      q.nativeArg(op, 'q'), keys.nativeArg(op, 'keys'), indices.nativeArg(op, 'indices'), scores.nativeArg(op, 'scores'),
      weights.nativeArg(op, 'weights'), d.T, d.H, d.Hq, d.Hk, d.Dk, d.n, k, a, ref,
    );
  } catch (e) {
    indices.dispose();
    scores.dispose();
    weights.dispose();
    throw e;
  }
  return { indices, scores, weights, act };
}

/**
 * Backward of {@link pkmTopk}: the selection is piecewise constant, so the gradient of the weights flows
 * through the activation into the selected scores, then into the queries and the selected sub-key rows:
 * `dq1 += ds·C[a]`, `dq2 += ds·C'[b]`, `dC[a] += ds·q1`, `dC'[b] += ds·q2` (summed over heads sharing a query or
 * a table, in a fixed order).
 *
 * @param dWeights gradient of `sel.weights`, f32 [T, H, k].
 * @returns dq shaped like q, dkeys shaped like keys (dense: the sub-key tables are small).
 * @example
 * ```ts
 * const { dq, dkeys } = pkmTopkBackward(dWeights, q, keys, sel);
 * ```
 */
export function pkmTopkBackward(
  dWeights: Tensor,
  q: Tensor,
  keys: Tensor,
  sel: PkmTopkResult,
  opts: ImplOption = {},
): { dq: Tensor; dkeys: Tensor } {
  const op = 'pkmTopkBackward';
  if (!sel || typeof sel !== 'object') throw new TypeError(`${op}: sel must be the result of pkmTopk, got ${String(sel)}`);
  expectTensor(sel.indices, op, 'sel.indices', 'i32');
  if (sel.indices.rank !== 3) throw new ShapeError(`${op}: sel.indices must be [T, H, k], got ${shapeStr(sel.indices.shape)}`);
  const d = pkmDims(q, keys, op, sel.indices.shape[1]);
  const k = sel.indices.shape[2];
  const shape = [d.T, d.H, k];
  expectTensor(sel.indices, op, 'sel.indices', 'i32', shape);
  expectTensor(sel.scores, op, 'sel.scores', 'f32', shape);
  expectTensor(sel.weights, op, 'sel.weights', 'f32', shape);
  expectTensor(dWeights, op, 'dWeights', 'f32', shape);
  if (!(k >= 1 && k <= d.n)) throw new RangeError(`${op}: k must be in [1, n=${d.n}], got ${k}`);
  const a = pkmAct(sel.act ?? 'softmax', op);
  const ref = isRef(opts, op);
  const device = deviceOf(
    op, { q, keys, indices: sel.indices, scores: sel.scores, weights: sel.weights, dWeights }, ref,
  );
  const dq = Tensor.zeros(q.shape, { device });
  const dkeys = Tensor.zeros(keys.shape, { device });
  try {
    native().pkmTopkBackward(
      q.nativeArg(op, 'q'), keys.nativeArg(op, 'keys'), sel.indices.nativeArg(op, 'sel.indices'),
      sel.scores.nativeArg(op, 'sel.scores'), sel.weights.nativeArg(op, 'sel.weights'),
      dWeights.nativeArg(op, 'dWeights'), dq.nativeArg(op, 'dq'), dkeys.nativeArg(op, 'dkeys'),
      d.T, d.H, d.Hq, d.Hk, d.Dk, d.n, k, a, ref,
    );
  } catch (e) {
    dq.dispose();
    dkeys.dispose();
    throw e;
  }
  return { dq, dkeys };
}

// ---- sparse row gradients --------------------------------------------------------------------------------------

/**
 * A row-sparse gradient of a table [numRows, D]: `rows` (i32 [U], distinct, ascending) and `values`
 * (f32 [U, D], row u is the gradient of table row rows[u]); every other row's gradient is zero.
 * From a backward on cuda tensors both live on the device, sized for the worst case min(T·J, numRows): the
 * touched rows ascending, then rows −1 whose values are zero (padding, skipped by sparseAdamwStep and
 * sparseRowsToDense).
 */
export interface SparseRows {
  rows: Tensor;
  values: Tensor;
  numRows: number;
}

/**
 * Reusable storage for the sparse gradients of {@link embeddingBagBackward} and {@link peerExpertsBackward}.
 *
 * At 1024² rows a training step touches ~400k rows, so each backward returns hundreds of MB of gradient rows;
 * fresh arrays of that size cost more in page faults than the kernel itself. With a workspace the op writes
 * into buffers kept here and the returned tensors are views into them: valid until the next call with the same
 * workspace. Dispose them as usual; the memory stays with the workspace until it is dropped. The buffers are
 * sized once for the most rows a call can touch, min(T·J, N), and only replaced when a call could touch more
 * (a larger T·J): memory pages are committed as gradient rows are written, so the unused tail costs address
 * space, not memory, and a training loop never holds two generations of buffers.
 *
 * @example
 * ```ts
 * const ws = new SparseGradWorkspace();
 * for (const batch of batches) {
 *   const g = peerExpertsBackward(dOut, x, U, V, idx, gates, h, { workspace: ws });
 *   sparseAdamwStep(U, mU, vU, stepsU, g.dU, { lr });   // consume before the next backward
 *   sparseAdamwStep(V, mV, vV, stepsV, g.dV, { lr });
 * }
 * ```
 */
export class SparseGradWorkspace {
  /** @internal */ rows: Int32Array | null = null;
  /** @internal */ a: Float32Array | null = null;
  /** @internal */ b: Float32Array | null = null;
  /** @internal */ D = 0;

  /** Bytes reserved (memory is committed only for the gradient rows written so far). */
  get bytes(): number {
    return (this.rows?.byteLength ?? 0) + (this.a?.byteLength ?? 0) + (this.b?.byteLength ?? 0);
  }

  /** Drops the buffers (views handed out earlier stay valid; they keep their memory alive until collected). */
  release(): void {
    this.rows = this.a = this.b = null;
  }

  /**
   * @internal Buffers for a call on a table of width D that can touch up to `capacity` rows, with `nvals` value
   * blocks: the kept ones when they fit, else new ones of exactly that capacity.
   */
  out(D: number, nvals: 1 | 2, capacity: number): [Int32Array, Float32Array, Float32Array | null] {
    const fits = this.D === D && this.rows !== null && this.rows.length >= capacity && this.a !== null;
    if (!fits || (nvals === 2 && !this.b)) {
      this.D = D;
      this.rows = allocHost('i32', capacity) as Int32Array;
      this.a = allocHost('f32', capacity * D) as Float32Array;
      this.b = nvals === 2 ? (allocHost('f32', capacity * D) as Float32Array) : null;
    }
    return [this.rows!, this.a!, nvals === 2 ? this.b : null];
  }
}

function sparseResult(count: number, rows: Int32Array, values: Float32Array, D: number, N: number, copyRows: boolean): SparseRows {
  const r = rows.subarray(0, count);
  return {
    rows: Tensor.fromHost(copyRows ? r.slice() : r, [count]),
    values: Tensor.fromHost(values.subarray(0, count * D), [count, D]),
    numRows: N,
  };
}

/** The dense [numRows, D] form of a {@link SparseRows} (for small tables and tests), on the host. Rows −1 (the
 * padding of a gradient computed on cuda) are skipped. */
export function sparseRowsToDense(sp: SparseRows): Tensor {
  const op = 'sparseRowsToDense';
  expectTensor(sp?.rows, op, 'rows', 'i32');
  expectTensor(sp.values, op, 'values', 'f32');
  const U = sp.rows.size;
  if (sp.values.rank !== 2 || sp.values.shape[0] !== U)
    throw new ShapeError(`${op}: values must be [U=${U}, D], got ${shapeStr(sp.values.shape)}`);
  const D = sp.values.shape[1];
  const out = Tensor.zeros([sp.numRows, D]);
  const o = out.data() as Float32Array;
  const r = sp.rows.data() as Int32Array;
  const v = sp.values.data() as Float32Array;
  for (let u = 0; u < U; u++) {
    if (r[u] === -1) continue;
    if (r[u] < 0 || r[u] >= sp.numRows) {
      out.dispose();
      throw new RangeError(`${op}: rows[${u}] must be in [0, ${sp.numRows}), got ${r[u]}`);
    }
    o.set(v.subarray(u * D, (u + 1) * D), r[u] * D);
  }
  return out;
}

// ---- embedding bag ---------------------------------------------------------------------------------------------

/** [T, J] view of an index/weight tensor [T, ...] (J = product of the trailing dims). */
function bagDims(indices: Tensor, op: string): { T: number; J: number } {
  if (indices.rank < 1) throw new ShapeError(`${op}: indices must be [T, ...], got a scalar`);
  const T = indices.shape[0];
  return { T, J: T === 0 ? indices.shape.slice(1).reduce((a, b) => a * b, 1) : indices.size / T };
}

function tableDims(V: Tensor, op: string, name: string): { N: number; D: number } {
  expectTensor(V, op, name, 'f32');
  if (V.rank !== 2) throw new ShapeError(`${op}: ${name} must be [N, D], got ${shapeStr(V.shape)}`);
  if (V.shape[0] < 1 || V.shape[1] < 1) throw new ShapeError(`${op}: ${name} must be non-empty, got ${shapeStr(V.shape)}`);
  return { N: V.shape[0], D: V.shape[1] };
}

/**
 * Weighted row gather (EmbeddingBag, sum mode): `out[t] = Σ_j weights[t, j] · V[indices[t, j]]`.
 *
 * @param V value table f32 [N, D] (N up to 2³¹ − 1, e.g. 1024² slots).
 * @param indices i32 [T, ...] (e.g. [T, H, k] from pkmTopk), every entry in [0, N).
 * @param weights f32, same shape as indices.
 * @returns f32 [T, D].
 * @example
 * ```ts
 * const out = embeddingBag(values, sel.indices, sel.weights);
 * ```
 */
export function embeddingBag(V: Tensor, indices: Tensor, weights: Tensor, opts: ImplOption = {}): Tensor {
  const op = 'embeddingBag';
  const { N, D } = tableDims(V, op, 'V');
  expectTensor(indices, op, 'indices', 'i32');
  expectTensor(weights, op, 'weights', 'f32', indices.shape);
  const { T, J } = bagDims(indices, op);
  const ref = isRef(opts, op);
  const device = deviceOf(op, { V, indices, weights }, ref);
  const out = Tensor.zeros([T, D], { device });
  try {
    native().embeddingBag(
      indices.nativeArg(op, 'indices'), weights.nativeArg(op, 'weights'), V.nativeArg(op, 'V'), out.nativeArg(op, 'out'),
      T, J, N, D, ref,
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/**
 * Backward of {@link embeddingBag}: `dWeights[t, j] = ⟨dOut[t], V[indices[t, j]]⟩` and the row-sparse
 * `dV[r] = Σ_{indices[t, j] = r} weights[t, j] · dOut[t]`, built with a deterministic reverse index (one owner
 * per row, positions summed in ascending order). Never allocates an [N, D] buffer.
 *
 * @example
 * ```ts
 * const { dWeights, dV } = embeddingBagBackward(dOut, values, sel.indices, sel.weights);
 * sparseAdamwStep(values, m, v, steps, dV, { lr: 1e-3 });
 * ```
 */
export function embeddingBagBackward(
  dOut: Tensor,
  V: Tensor,
  indices: Tensor,
  weights: Tensor,
  opts: BackwardOptions = {},
): { dWeights: Tensor; dV: SparseRows } {
  const op = 'embeddingBagBackward';
  const { N, D } = tableDims(V, op, 'V');
  expectTensor(indices, op, 'indices', 'i32');
  expectTensor(weights, op, 'weights', 'f32', indices.shape);
  const { T, J } = bagDims(indices, op);
  expectTensor(dOut, op, 'dOut', 'f32', [T, D]);
  const ref = isRef(opts, op);
  const ws = workspaceOf(opts, op);
  if (deviceOf(op, { V, indices, weights, dOut }, ref) === 'cuda') {
    // Device outputs sized for the worst case (rows past the touched ones −1); the workspace (host) is unused.
    const cap = Math.min(T * J, N);
    const dWeights = Tensor.zeros(indices.shape, { device: 'cuda' });
    const rows = Tensor.zeros([cap], { device: 'cuda', dtype: 'i32' });
    const values = Tensor.zeros([cap, D], { device: 'cuda' });
    try {
      native().embeddingBagBackward(
        indices.nativeArg(op, 'indices'), weights.nativeArg(op, 'weights'), V.nativeArg(op, 'V'),
        dOut.nativeArg(op, 'dOut'), dWeights.nativeArg(op, 'dWeights'), T, J, N, D, false,
        rows.nativeArg(op, 'rows'), values.nativeArg(op, 'values'),
      );
    } catch (e) {
      for (const t of [dWeights, rows, values]) t.dispose();
      throw e;
    }
    return { dWeights, dV: { rows, values, numRows: N } };
  }
  const [oRows, oVals] = ws ? ws.out(D, 1, Math.min(T * J, N)) : [null, null];
  const dWeights = Tensor.zeros(indices.shape);
  let res: NativeSparseRows;
  try {
    res = native().embeddingBagBackward(
      indices.nativeArg(op, 'indices'), weights.nativeArg(op, 'weights'), V.nativeArg(op, 'V'),
      dOut.nativeArg(op, 'dOut'), dWeights.nativeArg(op, 'dWeights'), T, J, N, D, ref, oRows, oVals,
    ) as NativeSparseRows;
  } catch (e) {
    dWeights.dispose();
    throw e;
  }
  return { dWeights, dV: sparseResult(res.count, res.rows, res.values, D, N, false) };
}

// ---- PEER experts ----------------------------------------------------------------------------------------------

export interface PeerOptions extends ImplOption {
  /** Expert activation σ (default 'relu'; the PEER paper allows ReLU or GELU). */
  act?: PeerAct;
}

/** Options of the backward ops returning sparse gradients. */
export interface BackwardOptions extends ImplOption {
  /** Write the sparse gradients into this workspace's buffers (see {@link SparseGradWorkspace}); host buffers, so
   * unused for cuda tensors (whose gradients are fresh device tensors). */
  workspace?: SparseGradWorkspace;
}

function workspaceOf(opts: BackwardOptions, op: string): SparseGradWorkspace | undefined {
  const ws = opts.workspace;
  if (ws !== undefined && !(ws instanceof SparseGradWorkspace))
    throw new TypeError(`${op}: workspace must be a SparseGradWorkspace, got ${String(ws)}`);
  return ws;
}

function peerCheck(x: Tensor, U: Tensor, V: Tensor, indices: Tensor, gates: Tensor, op: string) {
  const { N, D } = tableDims(U, op, 'U');
  expectTensor(V, op, 'V', 'f32', [N, D]);
  expectTensor(indices, op, 'indices', 'i32');
  expectTensor(gates, op, 'gates', 'f32', indices.shape);
  const { T, J } = bagDims(indices, op);
  expectTensor(x, op, 'x', 'f32', [T, D]);
  return { T, J, N, D };
}

/**
 * PEER's singleton experts, token-centric and fused (He 2024 §2): for each token t and selected expert i,
 * `out[t] += g · act(U[i] · x[t]) · V[i]`, reading each of the J = H·k rows of U and V once.
 *
 * @param x layer input f32 [T, D].
 * @param U down-projection table f32 [N, D] (u_i), V up-projection table f32 [N, D] (v_i).
 * @param indices i32 [T, ...] selected experts (from pkmTopk with shared keys), gates f32 same shape.
 * @returns out f32 [T, D] and h = U[i]·x (f32, shaped like indices), which the backward needs.
 * @example
 * ```ts
 * const sel = pkmTopk(q, keys, 16);                       // q [T, 8, Dk], keys [1, 2, 1024, Dk/2]
 * const { out, h } = peerExperts(x, U, V, sel.indices, sel.weights, { act: 'gelu' });
 * ```
 */
export function peerExperts(
  x: Tensor,
  U: Tensor,
  V: Tensor,
  indices: Tensor,
  gates: Tensor,
  opts: PeerOptions = {},
): { out: Tensor; h: Tensor } {
  const op = 'peerExperts';
  const { T, J, N, D } = peerCheck(x, U, V, indices, gates, op);
  const a = peerAct(opts.act ?? 'relu', op);
  const ref = isRef(opts, op);
  const device = deviceOf(op, { x, U, V, indices, gates }, ref);
  const out = Tensor.zeros([T, D], { device });
  const h = Tensor.zeros(indices.shape, { device });
  try {
    native().peerExperts(
      x.nativeArg(op, 'x'), indices.nativeArg(op, 'indices'), gates.nativeArg(op, 'gates'), U.nativeArg(op, 'U'),
      V.nativeArg(op, 'V'), out.nativeArg(op, 'out'), h.nativeArg(op, 'h'), T, J, N, D, a, ref,
    );
  } catch (e) {
    out.dispose();
    h.dispose();
    throw e;
  }
  return { out, h };
}

/**
 * Backward of {@link peerExperts}. With c = ⟨V[i], dOut[t]⟩: `dGates = act(h)·c`, `dx[t] = Σ g·c·act'(h)·U[i]`,
 * and row-sparse `dU[i] = Σ g·c·act'(h)·x[t]`, `dV[i] = Σ g·act(h)·dOut[t]` over the rows the batch touched
 * (same rows for both; deterministic reverse index, no [N, D] buffers).
 *
 * @example
 * ```ts
 * const { dx, dGates, dU, dV } = peerExpertsBackward(dOut, x, U, V, sel.indices, sel.weights, h, { act: 'gelu' });
 * ```
 */
export function peerExpertsBackward(
  dOut: Tensor,
  x: Tensor,
  U: Tensor,
  V: Tensor,
  indices: Tensor,
  gates: Tensor,
  h: Tensor,
  opts: PeerOptions & BackwardOptions = {},
): { dx: Tensor; dGates: Tensor; dU: SparseRows; dV: SparseRows } {
  const op = 'peerExpertsBackward';
  const { T, J, N, D } = peerCheck(x, U, V, indices, gates, op);
  expectTensor(h, op, 'h', 'f32', indices.shape);
  expectTensor(dOut, op, 'dOut', 'f32', [T, D]);
  const a = peerAct(opts.act ?? 'relu', op);
  const ref = isRef(opts, op);
  const ws = workspaceOf(opts, op);
  if (deviceOf(op, { x, U, V, indices, gates, h, dOut }, ref) === 'cuda') {
    // Device outputs sized for the worst case (rows past the touched ones −1); the workspace (host) is unused.
    const cap = Math.min(T * J, N);
    const dev = (shape: readonly number[], dtype: 'f32' | 'i32' = 'f32') => Tensor.zeros(shape, { device: 'cuda', dtype });
    const dx = dev([T, D]);
    const dGates = dev(indices.shape);
    const rows = dev([cap], 'i32');
    const dU = dev([cap, D]);
    const dV = dev([cap, D]);
    try {
      native().peerExpertsBackward(
        x.nativeArg(op, 'x'), indices.nativeArg(op, 'indices'), gates.nativeArg(op, 'gates'), U.nativeArg(op, 'U'),
        V.nativeArg(op, 'V'), h.nativeArg(op, 'h'), dOut.nativeArg(op, 'dOut'), dx.nativeArg(op, 'dx'),
        dGates.nativeArg(op, 'dGates'), T, J, N, D, a, false, rows.nativeArg(op, 'rows'), dU.nativeArg(op, 'dU'),
        dV.nativeArg(op, 'dV'),
      );
    } catch (e) {
      for (const t of [dx, dGates, rows, dU, dV]) t.dispose();
      throw e;
    }
    // dV gets its own copy of the row list so the two gradients can be disposed independently.
    return { dx, dGates, dU: { rows, values: dU, numRows: N }, dV: { rows: rows.clone(), values: dV, numRows: N } };
  }
  const [oRows, oU, oV] = ws ? ws.out(D, 2, Math.min(T * J, N)) : [null, null, null];
  const dx = Tensor.zeros([T, D]);
  const dGates = Tensor.zeros(indices.shape);
  let res: NativeSparsePair;
  try {
    res = native().peerExpertsBackward(
      x.nativeArg(op, 'x'), indices.nativeArg(op, 'indices'), gates.nativeArg(op, 'gates'), U.nativeArg(op, 'U'),
      V.nativeArg(op, 'V'), h.nativeArg(op, 'h'), dOut.nativeArg(op, 'dOut'), dx.nativeArg(op, 'dx'),
      dGates.nativeArg(op, 'dGates'), T, J, N, D, a, ref, oRows, oU, oV,
    ) as NativeSparsePair;
  } catch (e) {
    dx.dispose();
    dGates.dispose();
    throw e;
  }
  return {
    dx,
    dGates,
    dU: sparseResult(res.count, res.rows, res.dU, D, N, false),
    // dV gets its own copy of the (small) row list so the two gradients can be disposed independently.
    dV: sparseResult(res.count, res.rows, res.dV, D, N, true),
  };
}

// ---- query BatchNorm -------------------------------------------------------------------------------------------

export interface BatchNormOptions extends ImplOption {
  /** Batch statistics (and running-statistics update) when true, running statistics when false. */
  training: boolean;
  /** Running-statistics update rate (default 0.1, as torch.nn.BatchNorm1d). */
  momentum?: number;
  /** Default 1e-5. */
  eps?: number;
}

/** Statistics a {@link batchNorm} call used, f32 [F]; pass them to {@link batchNormBackward}. */
export interface BatchNormSaved {
  mean: Tensor;
  invStd: Tensor;
}

function bnDims(x: Tensor, op: string): { T: number; F: number } {
  if (x.rank < 2) throw new ShapeError(`${op}: x must be [T, ...features], got ${shapeStr(x.shape)}`);
  const T = x.shape[0];
  const F = x.shape.slice(1).reduce((a, b) => a * b, 1);
  if (F < 1) throw new ShapeError(`${op}: x must have at least one feature, got ${shapeStr(x.shape)}`);
  return { T, F };
}

/**
 * BatchNorm over the features of `x` [T, ...] (all trailing dims flattened to F features, statistics over the T
 * rows), as torch.nn.BatchNorm1d: the optional query BatchNorm of Lample's PKM (over the H·Dk query features)
 * and PEER. In training mode it uses the batch statistics (biased variance) and, when `running` is given,
 * updates it in place (unbiased variance, `momentum`); in eval mode it uses `running`. Note that in a causal LM
 * batch statistics mix time positions (methods.md §2.3); Csordás' PKM drops the BatchNorm.
 *
 * @param gamma, beta optional affine parameters f32 [F] (default 1 and 0).
 * @returns y shaped like x, and the statistics used (for the backward).
 * @example
 * ```ts
 * const running = { mean: Tensor.zeros([H * Dk]), var: Tensor.full([H * Dk], 1) };
 * const { y: qn, saved } = batchNorm(q, gamma, beta, running, { training: true });
 * const { dx, dGamma, dBeta } = batchNormBackward(dqn, q, gamma, saved, { training: true });
 * ```
 */
export function batchNorm(
  x: Tensor,
  gamma: Tensor | null | undefined,
  beta: Tensor | null | undefined,
  running: { mean: Tensor; var: Tensor } | null | undefined,
  opts: BatchNormOptions,
): { y: Tensor; saved: BatchNormSaved } {
  const op = 'batchNorm';
  expectTensor(x, op, 'x', 'f32');
  const { T, F } = bnDims(x, op);
  if (gamma) expectTensor(gamma, op, 'gamma', 'f32', [F]);
  if (beta) expectTensor(beta, op, 'beta', 'f32', [F]);
  if (running) {
    expectTensor(running.mean, op, 'running.mean', 'f32', [F]);
    expectTensor(running.var, op, 'running.var', 'f32', [F]);
  }
  if (!opts || typeof opts.training !== 'boolean')
    throw new TypeError(`${op}: opts.training must be a boolean, got ${String(opts?.training)}`);
  if (!opts.training && !running) throw new RangeError(`${op}: eval mode (training: false) needs running statistics`);
  cpuOnly(op, { x, gamma: gamma ?? undefined, beta: beta ?? undefined, mean: running?.mean, var: running?.var });
  const ref = isRef(opts, op);
  const y = Tensor.zeros(x.shape);
  const mean = Tensor.zeros([F]);
  const invStd = Tensor.zeros([F]);
  try {
    native().batchNorm(
      x.nativeArg(op, 'x'), gamma ? gamma.nativeArg(op, 'gamma') : null, beta ? beta.nativeArg(op, 'beta') : null,
      running ? running.mean.nativeArg(op, 'running.mean') : null, running ? running.var.nativeArg(op, 'running.var') : null,
      y.nativeArg(op, 'y'), mean.nativeArg(op, 'mean'), invStd.nativeArg(op, 'invStd'), T, F, opts.training,
      opts.momentum ?? 0.1, opts.eps ?? 1e-5, ref,
    );
  } catch (e) {
    for (const t of [y, mean, invStd]) t.dispose();
    throw e;
  }
  return { y, saved: { mean, invStd } };
}

/**
 * Backward of {@link batchNorm} (with the same `training` flag): dx shaped like x; dGamma/dBeta f32 [F] when
 * gamma was used (`gamma` given), else null.
 *
 * @example
 * ```ts
 * const { dx, dGamma, dBeta } = batchNormBackward(dy, x, gamma, saved, { training: true });
 * ```
 */
export function batchNormBackward(
  dy: Tensor,
  x: Tensor,
  gamma: Tensor | null | undefined,
  saved: BatchNormSaved,
  opts: Omit<BatchNormOptions, 'momentum' | 'eps'>,
): { dx: Tensor; dGamma: Tensor | null; dBeta: Tensor | null } {
  const op = 'batchNormBackward';
  expectTensor(x, op, 'x', 'f32');
  const { T, F } = bnDims(x, op);
  expectTensor(dy, op, 'dy', 'f32', x.shape);
  if (gamma) expectTensor(gamma, op, 'gamma', 'f32', [F]);
  expectTensor(saved?.mean, op, 'saved.mean', 'f32', [F]);
  expectTensor(saved.invStd, op, 'saved.invStd', 'f32', [F]);
  if (!opts || typeof opts.training !== 'boolean')
    throw new TypeError(`${op}: opts.training must be a boolean, got ${String(opts?.training)}`);
  cpuOnly(op, { dy, x, gamma: gamma ?? undefined, mean: saved.mean, invStd: saved.invStd });
  const ref = isRef(opts, op);
  const dx = Tensor.zeros(x.shape);
  const dGamma = gamma ? Tensor.zeros([F]) : null;
  const dBeta = gamma ? Tensor.zeros([F]) : null;
  try {
    native().batchNormBackward(
      dy.nativeArg(op, 'dy'), x.nativeArg(op, 'x'), gamma ? gamma.nativeArg(op, 'gamma') : null,
      saved.mean.nativeArg(op, 'saved.mean'), saved.invStd.nativeArg(op, 'saved.invStd'), dx.nativeArg(op, 'dx'),
      dGamma ? dGamma.nativeArg(op, 'dGamma') : null, dBeta ? dBeta.nativeArg(op, 'dBeta') : null, T, F,
      opts.training, ref,
    );
  } catch (e) {
    for (const t of [dx, dGamma, dBeta]) t?.dispose();
    throw e;
  }
  return { dx, dGamma, dBeta };
}

/**
 * Asks the OS to back a large table with transparent huge pages (Linux madvise MADV_HUGEPAGE; a no-op
 * returning false elsewhere). Random row reads over a 1 GiB table miss the TLB on nearly every row with
 * 4 KiB pages; with 2 MiB pages they do not. Only pages touched afterwards are affected, so call it right after
 * creating the table and before filling it. Host arrays of 32 MiB or more that the library allocates (Tensor.zeros,
 * layer weights, optimiser moments) get this advice already (unless SPARSE_FFN_HUGE_PAGES=0): use it for smaller
 * tables, or for arrays made elsewhere and adopted with Tensor.fromHost before they are written.
 *
 * @example
 * ```ts
 * const values = Tensor.fromHost(new Float32Array(256 * 1024 * 256), [256 * 1024, 256]);  // not yet written
 * adviseHugePages(values);
 * values.data().set(init);
 * ```
 */
export function adviseHugePages(t: Tensor): boolean {
  const op = 'adviseHugePages';
  expectTensor(t, op, 't');
  if (t.device !== 'cpu') return false;
  return native().adviseHugePages(t.nativeArg(op, 't') as HostArray);
}

/**
 * Measures this machine's memory bandwidth with a STREAM-like copy, triad and read over three buffers of `bytes`
 * each (default 256 MiB) on `threads` threads (default: the pool size), best of `reps` repetitions (default 5),
 * the read being a plain sum, and `rows`: 1 KiB rows of one buffer read in a scattered order, with the vector
 * width of the active ISA (see setIsa), as the PKM/PEER gathers read them. GB/s = 10⁹ bytes moved per second (copy
 * counts reads and writes).
 *
 * @example
 * ```ts
 * const { copy } = memBandwidth();          // e.g. 25 GB/s on a 2-core dev box
 * const floorMs = bytesMoved / (copy * 1e9) * 1e3;
 * ```
 */
export function memBandwidth(bytes = 256 * 2 ** 20, threads?: number, reps = 5): { copy: number; triad: number; read: number; rows: number } {
  return native().memBandwidth(bytes, threads ?? native().getNumThreads(), reps);
}
