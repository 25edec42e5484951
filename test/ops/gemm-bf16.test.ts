/**
 * gemm over bf16 tensors on the CPU (native gemmBf16, host path: operands widened exactly to f32, then the f32
 * GEMM): against a float64 reference of the same bf16 values, every transpose, batches with a shared operand,
 * accumulation into out, and dtype errors. The CUDA path of the same entry is checked in test/gpu/gemm.test.ts.
 */
import { describe, expect, it } from 'vitest';

import { DTypeError, Tensor, gemm } from '../../lib/index.js';
import { bf16ToF32, f32ToBf16 } from '../../lib/tensor.js';
import { expectClose, guardLeaks, randn } from '../helpers.js';

function bf16Tensor(n: number, shape: number[], seed: number): Tensor {
  return Tensor.from(Uint16Array.from(randn(n, seed), f32ToBf16), { shape, dtype: 'bf16' });
}

/** float64 op(a)·op(b) for [.., r, c] tensors (a batch of 1 or a 2-D operand is shared). */
function reference(a: Tensor, b: Tensor, ta: boolean, tb: boolean, alpha: number): Float64Array {
  const av = Array.from(a.data() as Uint16Array, bf16ToF32);
  const bv = Array.from(b.data() as Uint16Array, bf16ToF32);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const M = ta ? ac : ar;
  const K = ta ? ar : ac;
  const N = tb ? br : bc;
  const batch = Math.max(a.rank === 3 ? a.shape[0] : 1, b.rank === 3 ? b.shape[0] : 1);
  const sa = a.rank === 3 && a.shape[0] > 1 ? M * K : 0;
  const sb = b.rank === 3 && b.shape[0] > 1 ? K * N : 0;
  const out = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++)
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++)
          s += av[z * sa + (ta ? k * M + i : i * K + k)] * bv[z * sb + (tb ? j * K + k : k * N + j)];
        out[z * M * N + i * N + j] = alpha * s;
      }
  return out;
}

describe('gemm over bf16 tensors (CPU)', () => {
  guardLeaks();

  it('matches float64 on the same bf16 values for every transpose', () => {
    const [M, N, K] = [13, 21, 37];
    for (const ta of [false, true])
      for (const tb of [false, true]) {
        using a = bf16Tensor(M * K, ta ? [K, M] : [M, K], 1);
        using b = bf16Tensor(K * N, tb ? [N, K] : [K, N], 2);
        using y = gemm(a, b, { transA: ta, transB: tb, alpha: 0.5 });
        expect(y.dtype).toBe('f32');
        expect(y.shape).toEqual([M, N]);
        expectClose(y.data() as Float32Array, reference(a, b, ta, tb, 0.5), { atol: 1e-5, rtol: 1e-5 }, `ta=${ta} tb=${tb}`);
      }
  });

  it('batches with a shared operand and accumulates into out', () => {
    using a = bf16Tensor(3 * 5 * 7, [3, 5, 7], 3);
    using b = bf16Tensor(7 * 4, [7, 4], 4);
    using out = Tensor.full([3, 5, 4], 1);
    gemm(a, b, { out, beta: 2 });
    const want = reference(a, b, false, false, 1).map((v) => v + 2);
    expectClose(out.data() as Float32Array, want, { atol: 1e-5, rtol: 1e-5 });
  });

  it('needs both operands bf16 (or both f32) and an f32 out', () => {
    using a = bf16Tensor(4, [2, 2], 5);
    using f = Tensor.zeros([2, 2]);
    using i = Tensor.zeros([2, 2], { dtype: 'i32' });
    expect(() => gemm(a, f)).toThrow(/gemm: b must be bf16, got f32/);
    expect(() => gemm(i, f)).toThrow(DTypeError);
    expect(() => gemm(i, f)).toThrow(/gemm: a must be f32 or bf16, got i32/);
    using o16 = bf16Tensor(4, [2, 2], 6);
    expect(() => gemm(a, a, { out: o16 })).toThrow(/gemm: out must be f32, got bf16/);
  });
});
