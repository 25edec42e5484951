// GEMM: C = alpha·op(A)·op(B) + beta·C against a float64 reference on awkward shapes, every transpose
// combination, alpha/beta, padding (ld > row width), strided batches, block-boundary shapes, every CPU ISA
// path; determinism (run to run, 1 vs 2 threads); the gathered row-pointer GEMM; the Tensor API; bad input.
import { describe, expect, it } from 'vitest';

import {
  BackendUnavailableError,
  DisposedError,
  DTypeError,
  ShapeError,
  Tensor,
  gemm,
  getNumThreads,
  info,
  matmul,
} from '../../lib/index.js';
import { native } from '../../lib/native/loader.js';
import { cpuIsas, expectBitIdentical, guardLeaks, randn, withIsa, withThreads } from '../helpers.js';

const EPS = 2 ** -23;

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
  A: Float32Array;
  B: Float32Array;
  C: Float32Array; // initial C
}

function makeProblem(
  ta: boolean,
  tb: boolean,
  M: number,
  N: number,
  K: number,
  seed: number,
  opts: { alpha?: number; beta?: number; pad?: number } = {},
): Problem {
  const pad = opts.pad ?? 0;
  const lda = (ta ? M : K) + pad;
  const ldb = (tb ? K : N) + pad;
  const ldc = N + pad;
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
    A: randn(Math.max(1, (ta ? K : M) * lda), seed),
    B: randn(Math.max(1, (tb ? N : K) * ldb), seed + 1),
    C: randn(Math.max(1, M * ldc), seed + 2),
  };
}

function runGemm(p: Problem, fn: 'gemm' | 'gemmRef' = 'gemm'): Float32Array {
  const C = p.C.slice();
  native()[fn](p.ta, p.tb, p.M, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, C, p.ldc, 1, 0, 0, 0);
  return C;
}

/**
 * Checks rows `rows` (default all) of C against a float64 reference. Tolerance per element: a few f32
 * roundings of the largest partial sums, |alpha|·(K/8 + 4)·eps·Σ_k|a_ik·b_kj| + 2·eps·|beta·c_ij|: loose
 * enough for any summation order, tight enough that one wrong, missing or doubled term fails.
 */
function checkAgainstF64(p: Problem, C: Float32Array, what: string, rows?: number[]): void {
  const { ta, tb, M, N, K, alpha, beta, lda, ldb, ldc, A, B } = p;
  for (const i of rows ?? Array.from({ length: M }, (_, r) => r)) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      let mag = 0;
      for (let k = 0; k < K; k++) {
        const av = ta ? A[k * lda + i] : A[i * lda + k];
        const bv = tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += av * bv;
        mag += Math.abs(av * bv);
      }
      const c0 = p.C[i * ldc + j];
      const want = beta === 0 ? alpha * acc : alpha * acc + beta * c0;
      const tol = Math.abs(alpha) * (K / 8 + 4) * EPS * mag + (beta === 0 ? 0 : 2 * EPS * Math.abs(beta * c0)) + 1e-30;
      const got = C[i * ldc + j];
      if (!(Math.abs(got - want) <= tol))
        expect.fail(`${what}: C[${i}, ${j}] = ${got}, expected ${want} (tolerance ${tol})`);
    }
    // Padding columns between N and ldc are never written.
    for (let j = N; j < ldc && i < M; j++)
      if (!Object.is(C[i * ldc + j], p.C[i * ldc + j])) expect.fail(`${what}: padding C[${i}, ${j}] was written`);
  }
}

const TRANSPOSES: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

// 1, 3, 17, 129 and 1000 in every position, not every combination (M, N, K).
const AWKWARD: [number, number, number][] = [
  [1, 1, 1],
  [1, 17, 1000],
  [3, 1000, 17],
  [1000, 3, 17],
  [17, 129, 1000],
  [129, 1, 129],
  [129, 1000, 3],
  [1000, 17, 129],
  [17, 3, 1],
  [9, 129, 17], // two row groups on the unpacked few-rows path
];

describe('gemm (native)', () => {
  guardLeaks();

  it('matches a float64 reference on awkward shapes, all transposes, alpha/beta and padding, on every ISA', async () => {
    const isas = await cpuIsas();
    expect(isas).toContain('scalar');
    let seed = 100;
    for (const isa of isas) {
      await withIsa(isa, () => {
        for (const [M, N, K] of AWKWARD) {
          for (const [ta, tb] of TRANSPOSES) {
            seed += 3;
            const p = makeProblem(ta, tb, M, N, K, seed, {
              alpha: seed % 2 ? 1 : -0.75,
              beta: seed % 3 === 0 ? 0 : seed % 3 === 1 ? 1 : 0.5,
              pad: seed % 4 === 0 ? 0 : 5,
            });
            checkAgainstF64(p, runGemm(p), `${isa} ${ta ? 'T' : 'N'}${tb ? 'T' : 'N'} ${M}x${N}x${K}`);
          }
        }
      });
    }
  });

  it('the native reference (gemmRef) matches the float64 check too', () => {
    for (const [ta, tb] of TRANSPOSES) {
      const p = makeProblem(ta, tb, 17, 33, 129, 7, { alpha: 0.5, beta: 2, pad: 3 });
      checkAgainstF64(p, runGemm(p, 'gemmRef'), `gemmRef ${ta}${tb}`);
    }
  });

  it('is correct across every cache-block boundary (MC, NC, KC) of every ISA', async () => {
    for (const isa of await cpuIsas()) {
      await withIsa(isa, () => {
        const blk = native().gemmBlocking();
        expect(blk.isa).toBe(isa);
        // One more row than a whole MC block plus a partial register tile, columns past NC, K over 2 KC blocks.
        const M = blk.mc + blk.mr + 1;
        const N = blk.nc + blk.nr + 3;
        const K = 2 * blk.kc + 5;
        const rows = [0, blk.mr - 1, blk.mr, blk.mc - 1, blk.mc, blk.mc + blk.mr - 1, M - 1];
        for (const [ta, tb] of [TRANSPOSES[0], TRANSPOSES[3]]) {
          const p = makeProblem(ta, tb, M, N, K, 40 + blk.mr, { alpha: 1.25, beta: 0.5, pad: 2 });
          checkAgainstF64(p, runGemm(p), `${isa} blocks ${ta}${tb} ${M}x${N}x${K}`, rows);
        }
      });
    }
  });

  it('beta = 0 never reads C (NaN and Inf in C do not propagate); alpha = 0 never reads A and B', () => {
    const p = makeProblem(false, false, 9, 70, 20, 11);
    p.C.fill(NaN);
    p.C[3] = Infinity;
    const C = runGemm(p);
    expect(C.every(Number.isFinite)).toBe(true);
    checkAgainstF64(p, C, 'beta=0 with NaN in C');

    const q = makeProblem(true, true, 9, 70, 20, 12, { alpha: 0, beta: 2 });
    q.A.fill(NaN);
    q.B.fill(Infinity);
    const C2 = runGemm(q);
    for (let i = 0; i < q.C.length; i++) expect(C2[i]).toBe(Math.fround(2 * q.C[i]));
  });

  it('handles M, N or K = 0 (K = 0 gives beta·C)', () => {
    const p = makeProblem(false, false, 5, 7, 0, 13, { beta: 0.5 });
    const C = runGemm(p);
    for (let i = 0; i < C.length; i++) expect(C[i]).toBe(Math.fround(0.5 * p.C[i]));
    const q = makeProblem(false, false, 5, 7, 0, 14, { beta: 0 });
    expect(Array.from(runGemm(q))).toEqual(new Array(35).fill(0));
    for (const [M, N] of [
      [0, 7],
      [5, 0],
    ]) {
      const r = makeProblem(false, false, M, N, 3, 15, { beta: 0 });
      expectBitIdentical(runGemm(r), r.C, 'untouched');
    }
  });

  it('runs strided batches, including gaps between matrices and a shared (stride 0) operand', async () => {
    const M = 37,
      N = 70,
      K = 45,
      batch = 5;
    for (const [ta, tb] of TRANSPOSES) {
      const lda = (ta ? M : K) + 1,
        ldb = (tb ? K : N) + 2,
        ldc = N + 3;
      const sa = (ta ? K : M) * lda + 11,
        sc = M * ldc + 5;
      const A = randn(sa * batch, 21),
        B = randn((tb ? N : K) * ldb, 22),
        C0 = randn(sc * batch, 23);
      for (const threads of [1, 2]) {
        const C = C0.slice();
        await withThreads(threads, () =>
          native().gemm(ta, tb, M, N, K, 0.5, A, lda, B, ldb, 1.5, C, ldc, batch, sa, 0, sc),
        );
        for (let b = 0; b < batch; b++) {
          const p: Problem = {
            ta, tb, M, N, K, alpha: 0.5, beta: 1.5, lda, ldb, ldc,
            A: A.subarray(b * sa), B, C: C0.subarray(b * sc),
          };
          checkAgainstF64(p, C.subarray(b * sc), `batch ${b} ${ta}${tb} threads ${threads}`);
        }
        // The gaps between the C matrices are untouched.
        for (let b = 0; b < batch; b++)
          for (let g = M * ldc; g < sc; g++) expect(Object.is(C[b * sc + g], C0[b * sc + g])).toBe(true);
      }
    }
  });

  it('a batch with strideC = 0 accumulates into one C in batch order, like the reference', () => {
    const M = 20, N = 40, K = 30, batch = 4;
    const A = randn(M * K * batch, 31), B = randn(K * N * batch, 32), C0 = randn(M * N, 33);
    const C = C0.slice(), R = C0.slice();
    native().gemm(false, false, M, N, K, 1, A, K, B, N, 1, C, N, batch, M * K, K * N, 0);
    native().gemmRef(false, false, M, N, K, 1, A, K, B, N, 1, R, N, batch, M * K, K * N, 0);
    for (let i = 0; i < C.length; i++) expect(Math.abs(C[i] - R[i])).toBeLessThan(1e-4 * (1 + Math.abs(R[i])));
  });

  it('is deterministic: two runs and 1 vs 2 threads give bit-identical results on every ISA', async () => {
    for (const isa of await cpuIsas()) {
      await withIsa(isa, async () => {
        for (const [M, N, K, batch] of [
          [301, 517, 777, 1], // split over M
          [13, 1100, 500, 1], // split over N
          [40, 50, 60, 6], // whole matrices per thread
          [3, 2100, 400, 1], // few rows: unpacked path, split over N
          [9, 1500, 300, 1], // two row groups of the unpacked path
        ]) {
          for (const [ta, tb] of [TRANSPOSES[0], TRANSPOSES[3]]) {
            const A = randn(M * K * batch, 51), B = randn(K * N * batch, 52), C0 = randn(M * N * batch, 53);
            const run = () => {
              const C = C0.slice();
              native().gemm(ta, tb, M, N, K, 1.5, A, ta ? M : K, B, tb ? K : N, 0.25, C, N, batch, M * K, K * N, M * N);
              return C;
            };
            const two = await withThreads(2, () => [run(), run()]);
            const one = await withThreads(1, run);
            expectBitIdentical(two[0], two[1], `${isa} ${M}x${N}x${K} run to run`);
            expectBitIdentical(one, two[0], `${isa} ${M}x${N}x${K} 1 vs 2 threads`);
          }
        }
      });
    }
  });

  it('gemmRows (gathered rows, scattered C) is bit-identical to gemm on the gathered copies, every ISA', async () => {
    const N = 75, K = 130;
    for (const isa of await cpuIsas()) {
      await withIsa(isa, () => {
        // M = 23 takes the packed path, M = 4 the few-rows path.
        for (const [M, ta, tb] of [...TRANSPOSES.map(([a, b]) => [23, a, b] as const), [4, true, false] as const, [4, false, true] as const]) {
          const aRowsN = ta ? K : M, aWidth = ta ? M : K;
          const bRowsN = tb ? N : K, bWidth = tb ? K : N;
          // Sources hold more rows than needed, with padding; rows are picked in a scrambled order.
          const aStride = aWidth + 3, bStride = bWidth + 1, cStride = N + 2;
          const Asrc = randn((aRowsN + 10) * aStride, 61), Bsrc = randn((bRowsN + 7) * bStride, 62);
          const perm = (n: number, total: number, seed: number) =>
            Int32Array.from({ length: n }, (_, r) => ((r * 7 + seed) % total));
          const aPick = perm(aRowsN, aRowsN + 10, 3), bPick = perm(bRowsN, bRowsN + 7, 5), cPick = perm(M, M + 4, 1);
          const aRows = aPick.map((r) => r * aStride), bRows = bPick.map((r) => r * bStride);
          const cRows = cPick.map((r) => r * cStride);
          const C0 = randn((M + 4) * cStride, 63);
          const C = C0.slice();
          native().gemmRows(ta, tb, M, N, K, 0.75, Asrc, aRows, Bsrc, bRows, 0.5, C, cRows);
          // The same problem, materialised contiguously.
          const A = new Float32Array(aRowsN * aWidth), B = new Float32Array(bRowsN * bWidth);
          aPick.forEach((r, i) => A.set(Asrc.subarray(r * aStride, r * aStride + aWidth), i * aWidth));
          bPick.forEach((r, i) => B.set(Bsrc.subarray(r * bStride, r * bStride + bWidth), i * bWidth));
          const Cc = new Float32Array(M * N);
          cPick.forEach((r, i) => Cc.set(C0.subarray(r * cStride, r * cStride + N), i * N));
          const p: Problem = { ta, tb, M, N, K, alpha: 0.75, beta: 0.5, lda: aWidth, ldb: bWidth, ldc: N, A, B, C: Cc };
          const want = runGemm(p);
          checkAgainstF64(p, want, `${isa} gemm on the gathered copy`);
          const got = new Float32Array(M * N);
          cPick.forEach((r, i) => got.set(C.subarray(r * cStride, r * cStride + N), i * N));
          expectBitIdentical(got, want, `${isa} gemmRows ${ta}${tb}`);
          // Rows of C not in cRows are untouched.
          const touched = new Set(Array.from(cPick));
          for (let r = 0; r < M + 4; r++)
            if (!touched.has(r))
              expectBitIdentical(C.subarray(r * cStride, (r + 1) * cStride), C0.subarray(r * cStride, (r + 1) * cStride));
        }
      });
    }
  });

  it('measures an FMA peak for every ISA', async () => {
    for (const isa of await cpuIsas()) {
      const g = native().fmaPeak(isa, 1, 20000);
      expect(Number.isFinite(g) && g > 0).toBe(true);
    }
  });

  it('rejects bad input with typed errors naming the argument (and the process survives)', () => {
    const n = native();
    const A = new Float32Array(12), B = new Float32Array(20), C = new Float32Array(15);
    const ok: Parameters<typeof n.gemm> = [false, false, 3, 5, 4, 1, A, 4, B, 5, 0, C, 5, 1, 0, 0, 0];
    n.gemm(...ok);
    const bad = (i: number, v: unknown) => {
      const args = [...ok] as unknown[];
      args[i] = v;
      return () => (n.gemm as (...a: unknown[]) => void)(...args);
    };
    expect(bad(6, new Float64Array(12))).toThrow(DTypeError);
    expect(bad(6, new Float64Array(12))).toThrow(/gemm: A must be a Float32Array \(f32\), got Float64Array/);
    expect(bad(8, new Int32Array(20))).toThrow(/gemm: B must be a Float32Array/);
    expect(bad(11, [1, 2, 3])).toThrow(/gemm: C must be a Float32Array, got Array/);
    expect(bad(6, new Float32Array(11))).toThrow(ShapeError);
    expect(bad(6, new Float32Array(11))).toThrow(/gemm: A has 11 elements but .* reach element 11/);
    expect(bad(11, new Float32Array(14))).toThrow(/gemm: C has 14 elements/);
    expect(bad(7, 3)).toThrow(/gemm: lda must be >= K=4, got 3/);
    expect(bad(9, 4)).toThrow(/gemm: ldb must be >= N=5, got 4/);
    expect(bad(12, 4)).toThrow(/gemm: ldc must be >= N=5, got 4/);
    expect(bad(2, -1)).toThrow(RangeError);
    expect(bad(2, -1)).toThrow(/gemm: M must be in \[0, /);
    expect(bad(4, 1.5)).toThrow(/gemm: K must be an integer, got 1.5/);
    const batched = [...ok] as unknown[];
    batched[13] = 2;
    batched[14] = 12; // a second A matrix 12 elements further on does not fit
    expect(() => (n.gemm as (...a: unknown[]) => void)(...batched)).toThrow(/gemm: A has 12 elements but M, K, lda, batch and strideA reach element 23/);
    expect(bad(5, NaN)).toThrow(/gemm: alpha must be finite/);
    expect(bad(0, 1)).toThrow(/gemm: transA must be a boolean/);
    expect(() => (n.gemm as (...a: unknown[]) => void)(false)).toThrow(/gemm: expected 17 arguments/);
    // C overlapping A (same array) would give wrong results: refused.
    const S = new Float32Array(100);
    expect(() => n.gemm(false, false, 3, 3, 3, 1, S, 3, B, 5, 0, S, 3, 1, 0, 0, 0)).toThrow(/gemm: C must not overlap A/);
    // Disjoint parts of one array are fine.
    n.gemm(false, false, 3, 3, 3, 1, S.subarray(0, 9), 3, B, 5, 0, S.subarray(50, 59), 3, 1, 0, 0, 0);

    // gemmRows: offsets are checked against the arrays.
    const rows = (xs: number[]) => Int32Array.from(xs);
    expect(() =>
      n.gemmRows(false, false, 2, 5, 4, 1, A, rows([0, 9]), B, rows([0, 5, 10, 15]), 0, C, rows([0, 5])),
    ).toThrow(/gemmRows: aRows\[1\] = 9 puts a row of 4 elements outside an array of 12/);
    expect(() =>
      n.gemmRows(false, false, 2, 5, 4, 1, A, rows([0, 4]), B, rows([0, 5, 10]), 0, C, rows([0, 5])),
    ).toThrow(/gemmRows: bRows must have 4 elements, got 3/);
    expect(() =>
      n.gemmRows(false, false, 2, 5, 4, 1, A, rows([0, 4]), B, rows([0, 5, 10, 15]), 0, C, rows([0, -1])),
    ).toThrow(/gemmRows: cRows\[1\] = -1/);
    expect(() => n.fmaPeak('sse' as 'avx2', 1, 10)).toThrow(/fmaPeak: isa must be one of scalar, avx2, avx512/);
    expect(() => n.fmaPeak('scalar', getNumThreads() + 1, 10)).toThrow(/fmaPeak: threads must be in \[1, /);
    // Still alive and correct afterwards.
    n.gemm(...ok);
  });
});

describe('gemm / matmul (Tensor API)', () => {
  guardLeaks();

  const t = (rows: number[][]) => Tensor.from(rows);

  it('multiplies 2-D tensors with every transpose combination', () => {
    using x = t([
      [1, 2],
      [3, 4],
    ]);
    using w = t([
      [1, 0],
      [0, 1],
      [1, 1],
    ]);
    using y = gemm(x, w, { transB: true });
    expect(y.shape).toEqual([2, 3]);
    expect(y.toArray()).toEqual([
      [1, 2, 3],
      [3, 4, 7],
    ]);
    using wt = t([
      [1, 0, 1],
      [0, 1, 1],
    ]);
    using y2 = matmul(x, wt);
    expect(y2.toArray()).toEqual(y.toArray());
    using xt = t([
      [1, 3],
      [2, 4],
    ]);
    using y3 = gemm(xt, w, { transA: true, transB: true, alpha: 2 });
    expect(y3.toArray()).toEqual([
      [2, 4, 6],
      [6, 8, 14],
    ]);
    using y4 = gemm(xt, wt, { transA: true });
    expect(y4.toArray()).toEqual(y.toArray());
  });

  it('accumulates into out with beta, and returns out', () => {
    using x = t([[1, 2]]);
    using w = t([[3], [4]]);
    using out = t([[10]]);
    const r = gemm(x, w, { out, beta: 0.5, alpha: 2 });
    expect(r).toBe(out);
    expect(out.toArray()).toEqual([[27]]);
  });

  it('batches 3-D tensors and broadcasts a 2-D operand across the batch', () => {
    const B = 3, M = 4, K = 5, N = 6;
    using a = Tensor.from(randn(B * M * K, 71), { shape: [B, M, K] });
    using w = Tensor.from(randn(K * N, 72), { shape: [K, N] });
    using y = matmul(a, w);
    expect(y.shape).toEqual([B, M, N]);
    const ad = a.data() as Float32Array, wd = w.data() as Float32Array, yd = y.data() as Float32Array;
    for (let b = 0; b < B; b++) {
      using ab = Tensor.from(ad.slice(b * M * K, (b + 1) * M * K), { shape: [M, K] });
      using yb = matmul(ab, w);
      expectBitIdentical(yd.subarray(b * M * N, (b + 1) * M * N), yb.data() as Float32Array, `batch ${b}`);
    }
    using wb = Tensor.from(randn(B * K * N, 73), { shape: [B, K, N] });
    using y2 = matmul(a, wb);
    using one = Tensor.from(ad.slice(0, M * K), { shape: [1, M, K] });
    using y3 = matmul(one, wb); // batch of 1 broadcast
    expect(y3.shape).toEqual([B, M, N]);
    expect(y2.shape).toEqual([B, M, N]);
    void wd;
  });

  it('rejects bad tensors with typed errors naming the op and argument', () => {
    using x = t([
      [1, 2],
      [3, 4],
    ]);
    using w3 = t([
      [1, 2, 3],
      [4, 5, 6],
      [7, 8, 9],
    ]);
    expect(() => matmul(x, w3)).toThrow(ShapeError);
    expect(() => matmul(x, w3)).toThrow(/gemm: inner dimensions differ: op\(a\) is \[M=2, K=2\]/);
    using i = Tensor.from([1, 2, 3, 4], { dtype: 'i32', shape: [2, 2] });
    expect(() => matmul(x, i)).toThrow(DTypeError);
    expect(() => matmul(x, i)).toThrow(/gemm: b must be f32, got i32/);
    using v = Tensor.from([1, 2]);
    expect(() => matmul(v, x)).toThrow(/gemm: a must be 2-D \[M, K\] or 3-D/);
    using outBad = Tensor.zeros([3, 2]);
    expect(() => gemm(x, x, { out: outBad })).toThrow(/gemm: out must have shape \[2, 2\], got \[3, 2\]/);
    expect(() => gemm(x, x, { beta: 1 })).toThrow(/gemm: beta = 1 needs out/);
    expect(() => gemm(x, x, { alpha: NaN })).toThrow(/gemm: alpha must be a finite number/);
    expect(() => gemm(x, x, { transA: 1 as unknown as boolean })).toThrow(/gemm: transA must be a boolean/);
    expect(() => gemm(x, x, { out: x })).toThrow(/gemm: C must not overlap A/);
    using a3 = Tensor.zeros([2, 2, 2]);
    using b3 = Tensor.zeros([3, 2, 2]);
    expect(() => matmul(a3, b3)).toThrow(/gemm: batch sizes differ: a has 2, b has 3/);
    const d = t([[1]]);
    d.dispose();
    expect(() => matmul(d, x)).toThrow(DisposedError);
    expect(() => matmul(x, d)).toThrow(/gemm: b is disposed/);
    expect(() => matmul(x, [[1]] as unknown as Tensor)).toThrow(/gemm: b must be a Tensor/);
  });

  it('refuses tensors on different devices', () => {
    if (info().backend === 'cuda') {
      using x = t([[1]]);
      using y = Tensor.zeros([1, 1], { device: 'cuda' });
      expect(() => matmul(x, y)).toThrow(/gemm: b is on cuda but a is on cpu/);
    } else {
      // The CPU flavor cannot hold device tensors, so operands can never be on mixed devices.
      expect(() => Tensor.zeros([1, 1], { device: 'cuda' })).toThrow(BackendUnavailableError);
    }
  });
});
