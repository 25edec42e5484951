// CPU GEMM driver: C = alpha · op(A) · op(B) + beta · C, f32, row-major (see sffn/gemm.h), BLIS-style.
//
//   for each K block [k0, k0+kc)            (balanced split of K into ceil(K/KC) blocks: fixed by K alone)
//     for each M block of MC rows:           pack op(A) block into MR-row slivers         (L3 / L2)
//       for each N block of NC columns:      pack op(B) panel into NR-column slivers      (L2)
//         for each MR sliver of A:           (stays in L1 while it sweeps the B panel)
//           for each NR sliver of B:         micro-kernel: MR×NR tile of C in registers
//
// The first K block writes C = alpha·acc + beta·C (beta == 0: C is never read, so NaN in C does not leak),
// later blocks add alpha·acc. Every C element is the same chain of FMAs whatever tile, block or thread
// computes it, so results are bit-identical run to run and for any thread count. Threads split M (or N, when
// N is the larger side) in whole MR/NR units, or whole matrices of a batch; K is never split.
//
// Micro-kernels and packing: gemm.avx512.cpp (6×64), gemm.avx2.cpp (6×16), scalar_* below (4×16, plain
// C++ for CPUs without AVX2 and for other architectures). Packing buffers are thread_local and grow-only:
// gemm_f32_rows runs on whatever thread calls it (often a pool worker inside someone else's parallel_run),
// where no scratch(tid, slot) pair is known to be free.
// Test: test/ops/gemm.test.ts. Benchmark: npm run bench -- gemm.
#include "sffn/gemm.h"

#include <algorithm>
#include <chrono>
#include <cstddef>

#include "gemm_kernels.h"
#include "sffn/core.h"

#if defined(__x86_64__) || defined(_M_X64)
#define SFFN_GEMM_X86 1
#endif

namespace sffn {
namespace {

// ---- scalar path ----------------------------------------------------------------------------------------
constexpr int kScalarMR = 4, kScalarNR = 16;

void scalar_pack_a(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  const int MR = kScalarMR;
  for (int64_t s = 0; s < mc; s += MR, dst += MR * kc) {
    int64_t mr = std::min<int64_t>(MR, mc - s);
    for (int64_t k = 0; k < kc; ++k)
      for (int r = 0; r < MR; ++r)
        dst[k * MR + r] = r >= mr ? 0.0f : trans ? gemm_src_row(a, k0 + k)[i0 + s + r] : gemm_src_row(a, i0 + s + r)[k0 + k];
  }
}

void scalar_pack_b(const GemmSrc* b, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  const int NR = kScalarNR;
  for (int64_t s = 0; s < nc; s += NR, dst += NR * kc) {
    int64_t nr = std::min<int64_t>(NR, nc - s);
    if (!trans) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = gemm_src_row(b, k0 + k) + j0 + s;
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < nr ? src[j] : 0.0f;
      }
    } else {
      for (int j = 0; j < NR; ++j) {
        if (j >= nr) {
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.0f;
          continue;
        }
        const float* src = gemm_src_row(b, j0 + s + j) + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
      }
    }
  }
}

void scalar_kernel(int64_t kc, const float* a, const float* b, float* const* c, float alpha, float beta, int mr, int nr) {
  const int MR = kScalarMR, NR = kScalarNR;
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < nr; ++j) c[r][j] = beta == 0.0f ? alpha * acc[r][j] : alpha * acc[r][j] + beta * c[r][j];
}

float scalar_fma_loop(int64_t iters) {
  float acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = 0.001f * (float)i;
  float x = 0.999f, y = 0.0001f;
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) acc[i] = acc[i] * x + y;
    __asm__ volatile("" : "+m"(x));
  }
  float s = 0;
  for (int i = 0; i < 16; ++i) s += acc[i];
  return s;
}

// ---- plans ----------------------------------------------------------------------------------------------
struct Plan {
  int mr, nr;
  int64_t kc, mc, nc;  // mc % mr == 0, nc % nr == 0
  GemmPackA pack_a;
  GemmPackB pack_b;
  GemmKernel kernel;
  GemmSmall small;  // M <= mr without packing; null: use the packed path
};

Plan plan_for(Isa isa) {
#ifdef SFFN_GEMM_X86
  // KC: A sliver (MR·KC floats) stays in L1 across a B panel; KC·NC floats of packed B stay in L2.
  if (isa == Isa::Avx512)
    return {avx512::kGemmMR, avx512::kGemmNR, 512, 1536, 256, avx512::gemm_pack_a, avx512::gemm_pack_b,
            avx512::gemm_kernel, avx512::gemm_small};
  if (isa == Isa::Avx2)
    return {avx2::kGemmMR, avx2::kGemmNR, 256, 1536, 512, avx2::gemm_pack_a, avx2::gemm_pack_b, avx2::gemm_kernel,
            avx2::gemm_small};
#endif
  (void)isa;
  return {kScalarMR, kScalarNR, 256, 512, 512, scalar_pack_a, scalar_pack_b, scalar_kernel, nullptr};
}

// Grow-only, 64-byte aligned packing buffer owned by the calling thread.
struct PackBuf {
  float* p = nullptr;
  size_t n = 0;
  ~PackBuf() { aligned_free64(p); }
  float* get(size_t floats) {
    if (n < floats) {
      aligned_free64(p);
      p = nullptr;
      n = 0;
      p = static_cast<float*>(aligned_alloc64(floats * sizeof(float)));
      n = floats;
    }
    return p;
  }
};
thread_local PackBuf t_pack_a, t_pack_b;

struct GemmDst {
  float* base;
  int64_t ld;
  float* const* rows;
};
inline float* dst_row(const GemmDst& c, int64_t r) { return c.rows ? c.rows[r] : c.base + r * c.ld; }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The unpacked few-rows path serves problems whose whole M fits one register tile. Decided from the whole
// problem, never from a thread's share, so the arithmetic of an element does not depend on the thread count.
inline bool use_small(const Plan& p, int64_t M) { return p.small && M <= p.mr; }

// C[m0:m1, n0:n1] = alpha · op(A)[m0:m1, :] · op(B)[:, n0:n1] + beta · C[m0:m1, n0:n1], on this thread.
void gemm_block(const Plan& p, bool small, bool ta, bool tb, int64_t K, float alpha, const GemmSrc& A,
                const GemmSrc& B, float beta, const GemmDst& C, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (m0 >= m1 || n0 >= n1) return;
  if (K == 0 || alpha == 0.0f) {
    // Nothing to accumulate (BLAS: A and B are not read when alpha == 0).
    for (int64_t i = m0; i < m1; ++i) {
      float* c = dst_row(C, i);
      for (int64_t j = n0; j < n1; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    }
    return;
  }
  if (small) {
    const int m = (int)(m1 - m0);
    const float* arow[8];
    float* crow[8];
    if (!ta) {
      for (int r = 0; r < m; ++r) arow[r] = gemm_src_row(&A, m0 + r);
    } else {
      // A(i,k) = row(k)[i]: gather the few columns into contiguous rows first (m·K floats).
      float* ap = t_pack_a.get((size_t)(m * K));
      for (int64_t k = 0; k < K; ++k) {
        const float* src = gemm_src_row(&A, k) + m0;
        for (int r = 0; r < m; ++r) ap[r * K + k] = src[r];
      }
      for (int r = 0; r < m; ++r) arow[r] = ap + r * K;
    }
    for (int r = 0; r < m; ++r) crow[r] = dst_row(C, m0 + r) + n0;
    float* work = t_pack_b.get((size_t)(m * (n1 - n0)));
    p.small(tb, m, n1 - n0, K, arow, &B, n0, crow, alpha, beta, work);
    return;
  }
  const int64_t nkb = (K + p.kc - 1) / p.kc;
  const int64_t kc_max = (K + nkb - 1) / nkb;
  float* ap = t_pack_a.get((size_t)(std::min(p.mc, round_up(m1 - m0, p.mr)) * kc_max));
  float* bp = t_pack_b.get((size_t)(std::min(p.nc, round_up(n1 - n0, p.nr)) * kc_max));
  float* crow[8];
  float* ctile[8];
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = K * kb / nkb, kc = K * (kb + 1) / nkb - k0;
    const float bk = kb == 0 ? beta : 1.0f;
    for (int64_t ic = m0; ic < m1; ic += p.mc) {
      const int64_t mc = std::min(p.mc, m1 - ic);
      p.pack_a(&A, ta, ic, mc, k0, kc, ap);
      for (int64_t jc = n0; jc < n1; jc += p.nc) {
        const int64_t nc = std::min(p.nc, n1 - jc);
        p.pack_b(&B, tb, k0, kc, jc, nc, bp);
        for (int64_t ir = 0; ir < mc; ir += p.mr) {
          const int mr = (int)std::min<int64_t>(p.mr, mc - ir);
          for (int r = 0; r < mr; ++r) crow[r] = dst_row(C, ic + ir + r) + jc;
          const float* a = ap + ir * kc;
          for (int64_t jr = 0; jr < nc; jr += p.nr) {
            const int nr = (int)std::min<int64_t>(p.nr, nc - jr);
            for (int r = 0; r < mr; ++r) ctile[r] = crow[r] + jr;
            p.kernel(kc, a, bp + jr * kc, ctile, alpha, bk, mr, nr);
          }
        }
      }
    }
  }
}

// Splits [0, n) into `parts` ranges of whole `unit`s; part t gets [*b, *e).
inline void split_units(int64_t n, int64_t unit, int parts, int t, int64_t* b, int64_t* e) {
  int64_t units = (n + unit - 1) / unit;
  *b = std::min(n, units * t / parts * unit);
  *e = std::min(n, units * (t + 1) / parts * unit);
}

// Below this many flops per call the pool hand-off costs more than it saves.
constexpr double kMinParallelFlops = 2.0e6;

}  // namespace

GemmBlocking gemm_blocking() {
  Plan p = plan_for(active_isa());
  return {p.mr, p.nr, p.kc, p.mc, p.nc};
}

void gemm_f32_rows(bool a_trans, bool b_trans, int64_t M, int64_t N, int64_t K, float alpha, const float* const* a_rows,
                   const float* const* b_rows, float beta, float* const* c_rows) {
  if (M <= 0 || N <= 0) return;
  const Plan p = plan_for(active_isa());
  GemmSrc A{nullptr, 0, a_rows}, B{nullptr, 0, b_rows};
  GemmDst C{nullptr, 0, c_rows};
  gemm_block(p, use_small(p, M), a_trans, b_trans, K, alpha, A, B, beta, C, 0, M, 0, N);
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t stride_a,
              int64_t stride_b, int64_t stride_c) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  const Plan p = plan_for(active_isa());
  const bool small = use_small(p, M);
  auto one = [&](int64_t b, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    GemmSrc a{A + b * stride_a, lda, nullptr}, bm{B + b * stride_b, ldb, nullptr};
    GemmDst c{C + b * stride_c, ldc, nullptr};
    gemm_block(p, small, trans_a, trans_b, K, alpha, a, bm, beta, c, m0, m1, n0, n1);
  };
  int nt = num_threads();
  const double flops = 2.0 * (double)M * (double)N * (double)(K > 0 ? K : 1) * (double)batch;
  if (nt <= 1 || flops < kMinParallelFlops) {
    for (int64_t b = 0; b < batch; ++b) one(b, 0, M, 0, N);
    return;
  }
  // Whole matrices per thread when the batch is big enough and the C matrices do not overlap (with
  // stride_c == 0 every matrix updates the same C, which must then happen in batch order).
  const int64_t c_extent = (M - 1) * ldc + N;
  const int64_t sc = stride_c < 0 ? -stride_c : stride_c;
  if (batch >= nt && sc >= c_extent && (batch % nt == 0 || batch >= 4 * nt)) {
    parallel_run([&](int tid, int nthreads) {
      for (int64_t b = batch * tid / nthreads; b < batch * (tid + 1) / nthreads; ++b) one(b, 0, M, 0, N);
    });
    return;
  }
  // Split the larger side of C, so the operand every thread must pack in full is the smaller one.
  const bool split_m = !small && (M >= N ? M >= 2 * p.mr : !(N >= 2 * p.nr));
  parallel_run([&](int tid, int nthreads) {
    for (int64_t b = 0; b < batch; ++b) {
      int64_t lo, hi;
      if (split_m) {
        split_units(M, p.mr, nthreads, tid, &lo, &hi);
        one(b, lo, hi, 0, N);
      } else {
        split_units(N, p.nr, nthreads, tid, &lo, &hi);
        one(b, 0, M, lo, hi);
      }
    }
  });
}

double gemm_fma_peak(Isa isa, int threads, int64_t iterations) {
  float (*loop)(int64_t) = scalar_fma_loop;
  double flops_per_iter = 32;  // 16 chains of multiply + add
#ifdef SFFN_GEMM_X86
  if (isa == Isa::Avx512) loop = avx512::gemm_fma_loop, flops_per_iter = 768;
  if (isa == Isa::Avx2) loop = avx2::gemm_fma_loop, flops_per_iter = 192;
#endif
  if (threads < 1) threads = 1;
  if (threads > num_threads()) threads = num_threads();
  volatile float sink = 0;
  auto run = [&](int64_t iters) {
    parallel_run([&](int tid, int) {
      if (tid < threads) {
        float r = loop(iters);
        if (tid == 0) sink = r;
      }
    });
  };
  run(iterations / 8 + 1);  // wake the workers and let the clock settle
  auto t0 = std::chrono::steady_clock::now();
  run(iterations);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  (void)sink;
  return flops_per_iter * (double)iterations * threads / s / 1e9;
}

}  // namespace sffn
