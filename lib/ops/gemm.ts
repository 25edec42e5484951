/**
 * Matrix products over Tensors: `gemm` (C = alpha·op(A)·op(B) + beta·C, with transposes, batches and an
 * optional output to accumulate into) and `matmul`. Both call the native GEMM (native/kernels/cpu/gemm.cpp):
 * packed, register-blocked AVX-512 / AVX2 / scalar kernels, threaded over the pool, bit-identical results for
 * any thread count.
 *
 * Shapes: a is [M, K] (or [K, M] with transA), b is [K, N] (or [N, K] with transB). Either may carry a
 * leading batch dimension [B, ·, ·]; a 2-D operand (or a batch of 1) is shared by every matrix of the batch.
 *
 * Dtypes: a and b both f32, or both bf16 (f32 accumulation, f32 result). CUDA tensors run the CUDA kernels
 * (native/kernels/cuda/gemm.cu: bf16 on tensor cores); bf16 on the CPU widens the operands to f32 exactly.
 */
import { DTypeError, ShapeError } from '../errors.js';
import { expectTensor, sameDevice, shapeStr, Tensor } from '../tensor.js';
import { native } from '../native/loader.js';

export interface GemmOptions {
  /** a holds op(A)ᵀ: shape [K, M] (or [B, K, M]). Default false. */
  transA?: boolean;
  /** b holds op(B)ᵀ: shape [N, K] (or [B, N, K]). Default false. */
  transB?: boolean;
  /** Scale of the product. Default 1. */
  alpha?: number;
  /** Scale of `out`'s previous contents (needs `out`; 0 means out is only written). Default 0. */
  beta?: number;
  /** Output tensor [M, N] (or [B, M, N]) written in place and returned. Must not share storage with a or b. */
  out?: Tensor;
}

function checkFlag(v: unknown, op: string, name: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new TypeError(`${op}: ${name} must be a boolean, got ${typeof v}`);
  return v;
}

function checkScalar(v: unknown, dflt: number, op: string, name: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new TypeError(`${op}: ${name} must be a finite number, got ${String(v)}`);
  return v;
}

/**
 * General matrix product: returns alpha·op(a)·op(b) + beta·out.
 *
 * @example
 * ```ts
 * const x = Tensor.from([[1, 2], [3, 4]]);   // [M=2, K=2]
 * const w = Tensor.from([[1, 0], [0, 1], [1, 1]]); // [N=3, K=2]
 * const y = gemm(x, w, { transB: true });    // x·wᵀ: [[1, 2, 3], [3, 4, 7]]
 * gemm(x, w, { transB: true, beta: 1, out: y }); // y += x·wᵀ
 * ```
 */
export function gemm(a: Tensor, b: Tensor, opts: GemmOptions = {}): Tensor {
  const op = 'gemm';
  expectTensor(a, op, 'a');
  expectTensor(b, op, 'b');
  if (a.dtype !== 'f32' && a.dtype !== 'bf16') throw new DTypeError(`${op}: a must be f32 or bf16, got ${a.dtype}`);
  if (b.dtype !== a.dtype) throw new DTypeError(`${op}: b must be ${a.dtype}, got ${b.dtype}`);
  if (opts === null || typeof opts !== 'object') throw new TypeError(`${op}: options must be an object`);
  const transA = checkFlag(opts.transA, op, 'transA');
  const transB = checkFlag(opts.transB, op, 'transB');
  const alpha = checkScalar(opts.alpha, 1, op, 'alpha');
  const beta = checkScalar(opts.beta, 0, op, 'beta');
  if (a.rank !== 2 && a.rank !== 3)
    throw new ShapeError(`${op}: a must be 2-D ${transA ? '[K, M]' : '[M, K]'} or 3-D [B, ·, ·], got ${shapeStr(a.shape)}`);
  if (b.rank !== 2 && b.rank !== 3)
    throw new ShapeError(`${op}: b must be 2-D ${transB ? '[N, K]' : '[K, N]'} or 3-D [B, ·, ·], got ${shapeStr(b.shape)}`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const M = transA ? ac : ar;
  const K = transA ? ar : ac;
  const Kb = transB ? bc : br;
  const N = transB ? br : bc;
  if (K !== Kb)
    throw new ShapeError(
      `${op}: inner dimensions differ: op(a) is [M=${M}, K=${K}] (a ${shapeStr(a.shape)}${transA ? ', transA' : ''}), ` +
        `op(b) is [K=${Kb}, N=${N}] (b ${shapeStr(b.shape)}${transB ? ', transB' : ''})`,
    );
  const batchA = a.rank === 3 ? a.shape[0] : 1;
  const batchB = b.rank === 3 ? b.shape[0] : 1;
  if (batchA !== batchB && batchA !== 1 && batchB !== 1)
    throw new ShapeError(`${op}: batch sizes differ: a has ${batchA}, b has ${batchB}`);
  const batched = a.rank === 3 || b.rank === 3;
  const batch = Math.max(batchA, batchB);
  const outShape = batched ? [batch, M, N] : [M, N];

  const device = sameDevice(op, { a, b, out: opts.out });
  let out: Tensor;
  if (opts.out !== undefined) {
    expectTensor(opts.out, op, 'out', 'f32', outShape);
    out = opts.out;
  } else {
    if (beta !== 0) throw new TypeError(`${op}: beta = ${beta} needs out (the tensor to scale and add to)`);
    out = Tensor.zeros(outShape, { device });
  }
  (a.dtype === 'bf16' ? native().gemmBf16 : native().gemm)(
    transA,
    transB,
    M,
    N,
    K,
    alpha,
    a.nativeArg(op, 'a'),
    transA ? M : K,
    b.nativeArg(op, 'b'),
    transB ? K : N,
    beta,
    out.nativeArg(op, 'out'),
    N,
    batch,
    batchA > 1 ? M * K : 0,
    batchB > 1 ? K * N : 0,
    M * N,
  );
  return out;
}

/**
 * Matrix product a·b: [M, K]·[K, N] → [M, N], batched when either operand is 3-D ([B, M, K]·[K, N],
 * [B, M, K]·[B, K, N], ...).
 *
 * @example
 * ```ts
 * const y = matmul(Tensor.from([[1, 2]]), Tensor.from([[3], [4]])); // [[11]]
 * ```
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return gemm(a, b);
}
