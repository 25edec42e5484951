/**
 * CUDA GEMM (cudaGemmF32 / cudaGemmBf16) against a float64 reference: C = alpha·op(A)·op(B) + beta·C over
 * every transpose pair, ragged shapes (tiles masked at every edge), padded leading dimensions (the bf16
 * kernel's 16-byte cp.async path and its unaligned fallback), strided batches, K = 0, determinism, and bad
 * input. bf16 operands are compared with a reference computed from the same bf16-rounded values, so the
 * tolerance only covers f32 accumulation. Skipped with the probe's reason where no GPU is present.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { DeviceError, DisposedError, DTypeError, ShapeError, Tensor, gemm, memory } from '../../lib/index.js';
import type { NativeDeviceBuffer } from '../../lib/native/binding.js';
import { native } from '../../lib/native/loader.js';
import { bf16ToF32, f32ToBf16 } from '../../lib/tensor.js';
import { expectBitIdentical, expectClose, randn } from '../helpers.js';
import { announce, deviceMemory, gpuStatus, toDevice } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/gemm', st);

interface Problem {
  ta: boolean;
  tb: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  lda: number;
  ldb: number;
  ldc: number;
  batch: number;
  sa: number;
  sb: number;
  sc: number;
}

/** Elements spanned by `batch` rows×cols row-major matrices with row stride ld and batch stride s. */
const span = (batch: number, s: number, rows: number, cols: number, ld: number) =>
  batch === 0 || rows === 0 || cols === 0 ? 0 : (batch - 1) * s + (rows - 1) * ld + cols;

function problem(
  ta: boolean,
  tb: boolean,
  M: number,
  N: number,
  K: number,
  opts: { pad?: number | 'align8'; batch?: number; alpha?: number; beta?: number; gap?: number } = {},
): Problem {
  // pad 'align8': leading dims and batch strides rounded up to multiples of 8 (16-byte bf16 rows: the cp.async
  // path of the bf16 kernel); a numeric pad is added as is (odd values force its unaligned fallback).
  const pad = opts.pad ?? 0;
  const ld = (cols: number) => (pad === 'align8' ? Math.ceil(cols / 8) * 8 : cols + pad);
  const gap = opts.gap ?? 0;
  const stride = (n: number) => (pad === 'align8' ? Math.ceil((n + gap) / 8) * 8 : n + gap);
  const batch = opts.batch ?? 1;
  const lda = ld(ta ? M : K);
  const ldb = ld(tb ? K : N);
  const ldc = ld(N);
  return {
    ta,
    tb,
    M,
    N,
    K,
    alpha: opts.alpha ?? 1,
    beta: opts.beta ?? 0,
    lda,
    ldb,
    ldc,
    batch,
    sa: stride(span(1, 0, ta ? K : M, ta ? M : K, lda)),
    sb: stride(span(1, 0, tb ? N : K, tb ? K : N, ldb)),
    sc: stride(span(1, 0, M, N, ldc)),
  };
}

/** float64 reference; returns the expected C (elements outside the matrices keep their C0 values). */
function reference(p: Problem, A: ArrayLike<number>, B: ArrayLike<number>, C0: Float32Array): Float64Array {
  const C = Float64Array.from(C0);
  for (let b = 0; b < p.batch; b++)
    for (let i = 0; i < p.M; i++)
      for (let j = 0; j < p.N; j++) {
        let s = 0;
        for (let k = 0; k < p.K; k++) {
          const a = p.ta ? A[b * p.sa + k * p.lda + i] : A[b * p.sa + i * p.lda + k];
          const w = p.tb ? B[b * p.sb + j * p.ldb + k] : B[b * p.sb + k * p.ldb + j];
          s += a * w;
        }
        const c = b * p.sc + i * p.ldc + j;
        C[c] = p.alpha * s + (p.beta === 0 ? 0 : p.beta * C0[c]);
      }
  return C;
}

function run(p: Problem, dtype: 'f32' | 'bf16', seed: number): { got: Float32Array; want: Float64Array } {
  const nA = Math.max(1, span(p.batch, p.sa, p.ta ? p.K : p.M, p.ta ? p.M : p.K, p.lda));
  const nB = Math.max(1, span(p.batch, p.sb, p.tb ? p.N : p.K, p.tb ? p.K : p.N, p.ldb));
  const nC = Math.max(1, span(p.batch, p.sc, p.M, p.N, p.ldc));
  const A32 = randn(nA, seed);
  const B32 = randn(nB, seed + 1);
  const C0 = randn(nC, seed + 2);
  let dA: NativeDeviceBuffer, dB: NativeDeviceBuffer;
  let Aref: ArrayLike<number>, Bref: ArrayLike<number>;
  if (dtype === 'bf16') {
    const Ab = Uint16Array.from(A32, f32ToBf16);
    const Bb = Uint16Array.from(B32, f32ToBf16);
    dA = toDevice(Ab, 'bf16');
    dB = toDevice(Bb, 'bf16');
    Aref = Float64Array.from(Ab, bf16ToF32);
    Bref = Float64Array.from(Bb, bf16ToF32);
  } else {
    dA = toDevice(A32, 'f32');
    dB = toDevice(B32, 'f32');
    Aref = A32;
    Bref = B32;
  }
  const dC = toDevice(C0, 'f32');
  const fn = dtype === 'bf16' ? native().cudaGemmBf16! : native().cudaGemmF32!;
  try {
    fn(p.ta, p.tb, p.M, p.N, p.K, p.alpha, dA, p.lda, dB, p.ldb, p.beta, dC, p.ldc, p.batch, p.sa, p.sb, p.sc);
    const got = new Float32Array(nC);
    native().copyToHost!(got, dC);
    return { got, want: reference(p, Aref, Bref, C0) };
  } finally {
    dA.dispose();
    dB.dispose();
    dC.dispose();
  }
}

// f32: exact products, f32 sums of K terms of size ~1. bf16: exact bf16 products, tensor-core f32 accumulation.
const tol = (dtype: 'f32' | 'bf16', K: number) =>
  dtype === 'f32' ? { atol: 2e-5 * Math.sqrt(K + 1), rtol: 1e-4 } : { atol: 1e-4 * Math.sqrt(K + 1), rtol: 1e-3 };

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [17, 33, 9],
  [128, 128, 32],
  [130, 67, 129],
  [64, 200, 300],
  [257, 129, 65],
];
const TRANS: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

describe.skipIf(!st.gpu)('CUDA GEMM', () => {
  let before = { allocatedBytes: 0, liveBuffers: 0 };
  beforeEach(() => {
    before = deviceMemory();
  });
  afterEach(() => {
    expect(deviceMemory(), 'deviceMemory() after the test').toEqual(before);
  });

  for (const dtype of ['f32', 'bf16'] as const) {
    for (const [ta, tb] of TRANS) {
      it(`${dtype} trans=(${ta}, ${tb}) matches float64 over ragged shapes`, () => {
        let seed = 10;
        for (const pad of [0, 'align8'] as const)
          for (const [M, N, K] of SHAPES) {
            const p = problem(ta, tb, M, N, K, { alpha: 1.5, pad });
            const { got, want } = run(p, dtype, seed++);
            expectClose(got, want, tol(dtype, K), `${dtype} ${M}x${N}x${K} ta=${ta} tb=${tb} pad=${pad}`);
          }
      });

      it(`${dtype} trans=(${ta}, ${tb}) with beta, padded leading dims and strided batches`, () => {
        // 'align8' keeps bf16 rows 16-byte aligned (cp.async path); pad 3 forces the unaligned fallback.
        for (const [pad, gap] of [
          ['align8', 8],
          [3, 5],
        ] as const) {
          const p = problem(ta, tb, 70, 45, 83, { pad, batch: 3, gap, alpha: -0.75, beta: 0.5 });
          const { got, want } = run(p, dtype, 100 + gap);
          expectClose(got, want, tol(dtype, 83), `${dtype} pad=${pad} gap=${gap}`);
        }
      });
    }

    it(`${dtype} K = 0 scales C by beta, and beta = 0 ignores NaN in C`, () => {
      const C0 = Float32Array.from([1, 2, Number.NaN, 4, 5, 6]);
      const dA = native().deviceAlloc!(1, dtype);
      const dB = native().deviceAlloc!(1, dtype);
      const dC = toDevice(C0, 'f32');
      const fn = dtype === 'bf16' ? native().cudaGemmBf16! : native().cudaGemmF32!;
      fn(false, false, 2, 3, 0, 1, dA, 1, dB, 3, 0, dC, 3);
      const got = new Float32Array(6);
      native().copyToHost!(got, dC);
      expect(Array.from(got)).toEqual([0, 0, 0, 0, 0, 0]);
      native().copyToDevice!(dC, Float32Array.from([1, 2, 3, 4, 5, 6]));
      fn(false, false, 2, 3, 0, 1, dA, 1, dB, 3, 2, dC, 3);
      native().copyToHost!(got, dC);
      expect(Array.from(got)).toEqual([2, 4, 6, 8, 10, 12]);
      for (const b of [dA, dB, dC]) b.dispose();
    });

    it(`${dtype} is deterministic (bit-identical runs)`, () => {
      const p = problem(false, true, 300, 200, 517);
      const a = run(p, dtype, 7).got;
      const b = run(p, dtype, 7).got;
      expectBitIdentical(a, b, `${dtype} 300x200x517`);
    });
  }

  it('a large bf16 problem (many K-tiles through the pipeline, several waves of blocks) matches float64', () => {
    const p = problem(false, false, 1024, 768, 1536);
    const r = run(p, 'bf16', 3);
    expectClose(r.got, r.want, tol('bf16', 1536), 'bf16 1024x768x1536');
  });

  it('rejects host arrays, mixed devices, disposed buffers, wrong dtypes and short or overlapping outputs', () => {
    const gemm = native().cudaGemmF32!;
    const A = native().deviceAlloc!(6, 'f32');
    const B = native().deviceAlloc!(6, 'f32');
    const C = native().deviceAlloc!(4, 'f32');
    const I = native().deviceAlloc!(6, 'i32');
    const host = new Float32Array(6);
    try {
      expect(() => gemm(false, false, 2, 2, 3, 1, host as never, 3, host as never, 2, 0, new Float32Array(4) as never, 2)).toThrow(DeviceError);
      expect(() => gemm(false, false, 2, 2, 3, 1, A, 3, host as never, 2, 0, C, 2)).toThrow(/cudaGemmF32: B is on cpu but A is on cuda/);
      expect(() => gemm(false, false, 2, 2, 3, 1, I, 3, B, 2, 0, C, 2)).toThrow(DTypeError);
      expect(() => native().cudaGemmBf16!(false, false, 2, 2, 3, 1, A, 3, B, 2, 0, C, 2)).toThrow(/cudaGemmBf16: A must be a bf16 device buffer, got f32/);
      expect(() => gemm(false, false, 2, 2, 3, 1, A, 3, B, 2, 0, C, 1)).toThrow(/cudaGemmF32: ldc must be >= 2/);
      expect(() => gemm(false, false, 2, 3, 3, 1, A, 3, B, 3, 0, C, 3)).toThrow(ShapeError);
      expect(() => gemm(false, false, 1, 2, 3, 1, A, 3, B, 2, 0, C, 2, 2, 3, 0, 1)).toThrow(/strideC must be >= 2/);
      const D = native().deviceAlloc!(4, 'f32');
      D.dispose();
      expect(() => gemm(false, false, 2, 2, 3, 1, A, 3, B, 2, 0, D, 2)).toThrow(DisposedError);
    } finally {
      for (const b of [A, B, C, I]) b.dispose();
    }
  });

  it('gemm() over cuda tensors matches gemm() on the CPU (f32 and bf16, batched with a shared operand, out/beta)', () => {
    const m0 = memory();
    for (const dtype of ['f32', 'bf16'] as const) {
      const mk = (shape: number[], seed: number) => {
        const n = shape.reduce((x, y) => x * y, 1);
        const v = randn(n, seed);
        return dtype === 'bf16'
          ? Tensor.from(Uint16Array.from(v, f32ToBf16), { shape, dtype: 'bf16' })
          : Tensor.from(v, { shape });
      };
      for (const [ta, tb] of TRANS) {
        const a = mk(ta ? [3, 77, 45] : [3, 45, 77], 1);
        const b = mk(tb ? [61, 77] : [77, 61], 2);
        const c0 = Tensor.from(randn(3 * 45 * 61, 3), { shape: [3, 45, 61] });
        const cpu = gemm(a, b, { transA: ta, transB: tb, alpha: 0.5, beta: -1, out: c0.clone() });
        const ga = a.to('cuda');
        const gb = b.to('cuda');
        const gc = c0.to('cuda');
        const gpu = gemm(ga, gb, { transA: ta, transB: tb, alpha: 0.5, beta: -1, out: gc });
        expect(gpu).toBe(gc);
        expect(gpu.device).toBe('cuda');
        expectClose(gpu.data() as Float32Array, cpu.data() as Float32Array, tol(dtype, 77), `${dtype} ta=${ta} tb=${tb}`);
        const fresh = gemm(ga, gb, { transA: ta, transB: tb });
        expect(fresh.device).toBe('cuda');
        expect(fresh.shape).toEqual([3, 45, 61]);
        for (const t of [a, b, c0, cpu, ga, gb, gc, fresh]) t.dispose();
      }
    }
    expect(memory()).toEqual(m0);
  });

  it('gemm() rejects mixed devices and disposed cuda tensors; gemmRef stays on the CPU', () => {
    const a = Tensor.zeros([2, 3], { device: 'cuda' });
    const b = Tensor.zeros([3, 2]);
    expect(() => gemm(a, b)).toThrow(DeviceError);
    expect(() => gemm(a, b)).toThrow(/gemm: b is on cpu but a is on cuda/);
    const gb = b.to('cuda');
    gb.dispose();
    expect(() => gemm(a, gb)).toThrow(DisposedError);
    const A = native().deviceAlloc!(6, 'f32');
    const C = native().deviceAlloc!(4, 'f32');
    expect(() => native().gemmRef(false, false, 2, 2, 3, 1, A, 3, A, 2, 0, C, 2, 1, 0, 0, 0)).toThrow(/gemmRef: runs on the CPU only/);
    A.dispose();
    C.dispose();
    a.dispose();
    b.dispose();
  });
});
