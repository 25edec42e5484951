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
// Problems with M <= 2·MR (GEMV-like: generation, tiny expert tiles) skip packing and read B in place; that
// choice depends on the whole problem's M only, so it too is the same for every thread count.
//
// Micro-kernels and packing: gemm.avx512.cpp (6×64), gemm.avx2.cpp (6×16), scalar_* below (6×8, plain
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
constexpr int kScalarMR = 6, kScalarNR = 8;

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
  // 6×8 tile in twelve 4-lane vectors (GCC vector extensions: SSE2 on baseline x86-64, NEON on arm64);
  // multiply then add (the baseline ISA has no FMA), one chain over k per element.
  typedef float v4 __attribute__((vector_size(16)));
  static_assert(kScalarMR == 6 && kScalarNR == 8, "tile shape");
  v4 acc[6][2] = {};
  for (int64_t k = 0; k < kc; ++k, a += 6, b += 8) {
    v4 b0, b1;
    __builtin_memcpy(&b0, b, 16);
    __builtin_memcpy(&b1, b + 4, 16);
    for (int r = 0; r < 6; ++r) {
      const v4 av = {a[r], a[r], a[r], a[r]};
      acc[r][0] += av * b0;
      acc[r][1] += av * b1;
    }
  }
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < nr; ++j) {
      const float x = acc[r][j / 4][j % 4];
      c[r][j] = beta == 0.0f ? alpha * x : alpha * x + beta * c[r][j];
    }
}

float scalar_fma_loop(int64_t iters) {
  // The baseline build has no FMA: 12 independent 4-lane multiply + add chains (GCC vector extensions: SSE on
  // x86-64, NEON on arm64), enough to cover the mul+add latency on two multiply and two add pipes.
  typedef float v4 __attribute__((vector_size(16)));
  v4 a0 = {0.f, 1.f, 2.f, 3.f}, a1 = a0 + 4, a2 = a0 + 8, a3 = a0 + 12, a4 = a0 + 16, a5 = a0 + 20, a6 = a0 + 24,
     a7 = a0 + 28, a8 = a0 + 32, a9 = a0 + 36, a10 = a0 + 40, a11 = a0 + 44;
  float xs = 0.999f;
  const v4 y = {0.0001f, 0.0001f, 0.0001f, 0.0001f};
  for (int64_t it = 0; it < iters; ++it) {
    __asm__ volatile("" : "+m"(xs));  // an opaque multiplier: the loop cannot be folded
    const v4 x = {xs, xs, xs, xs};
    a0 = a0 * x + y, a1 = a1 * x + y, a2 = a2 * x + y, a3 = a3 * x + y, a4 = a4 * x + y, a5 = a5 * x + y;
    a6 = a6 * x + y, a7 = a7 * x + y, a8 = a8 * x + y, a9 = a9 * x + y, a10 = a10 * x + y, a11 = a11 * x + y;
  }
  v4 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
  return s[0] + s[1] + s[2] + s[3];
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

// Cache blocks per ISA: the packed A sliver (MR·KC floats) stays in L1 while it sweeps a B panel; the packed
// B panel (KC·NC floats) stays in L2; the packed A block (MC·KC) lives in L2/L3. Measured on Zen 5 (48 KiB L1,
// 1 MiB L2): KC in 384–512 and NC in 256–512 are within noise of each other.
constexpr int64_t kKc512 = 512, kMc512 = 1536, kNc512 = 256;
constexpr int64_t kKc256 = 256, kMc256 = 1536, kNc256 = 512;
constexpr int64_t kKcScalar = 256, kMcScalar = 516, kNcScalar = 512;
#ifdef SFFN_GEMM_X86
static_assert(kMc512 % avx512::kGemmMR == 0 && kNc512 % avx512::kGemmNR == 0, "blocks must be whole tiles");
static_assert(kMc256 % avx2::kGemmMR == 0 && kNc256 % avx2::kGemmNR == 0, "blocks must be whole tiles");
#endif
static_assert(kMcScalar % kScalarMR == 0 && kNcScalar % kScalarNR == 0, "blocks must be whole tiles");

Plan plan_for(Isa isa) {
#ifdef SFFN_GEMM_X86
  if (isa == Isa::Avx512)
    return {avx512::kGemmMR, avx512::kGemmNR, kKc512, kMc512, kNc512, avx512::gemm_pack_a, avx512::gemm_pack_b,
            avx512::gemm_kernel, avx512::gemm_small};
  if (isa == Isa::Avx2)
    return {avx2::kGemmMR, avx2::kGemmNR, kKc256, kMc256, kNc256, avx2::gemm_pack_a, avx2::gemm_pack_b,
            avx2::gemm_kernel, avx2::gemm_small};
#endif
  (void)isa;
  return {kScalarMR, kScalarNR, kKcScalar, kMcScalar, kNcScalar, scalar_pack_a, scalar_pack_b, scalar_kernel, nullptr};
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

// The unpacked few-rows path serves problems with at most kSmallGroups register tiles of rows: B is read in
// place once per group of MR rows, which beats packing it while the groups are few (measured: 1.3x at M = 7,
// even at M = 12, packing wins from M = 16). Decided from the whole problem's M, never from a thread's share,
// so the arithmetic of an element does not depend on the thread count.
constexpr int64_t kSmallGroups = 2;
inline bool use_small(const Plan& p, int64_t M) { return p.small && M <= kSmallGroups * p.mr; }

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
    const int64_t m = m1 - m0;
    float* ap = nullptr;
    if (ta) {
      // A(i,k) = row(k)[i]: gather the few columns into contiguous rows first (m·K floats).
      ap = t_pack_a.get((size_t)(m * K));
      for (int64_t k = 0; k < K; ++k) {
        const float* src = gemm_src_row(&A, k) + m0;
        for (int64_t r = 0; r < m; ++r) ap[r * K + k] = src[r];
      }
    }
    float* work = t_pack_b.get((size_t)(std::min<int64_t>(p.mr, m) * (n1 - n0)));
    const float* arow[8];
    float* crow[8];
    for (int64_t g = 0; g < m; g += p.mr) {
      const int mg = (int)std::min<int64_t>(p.mr, m - g);
      for (int r = 0; r < mg; ++r) {
        arow[r] = ta ? ap + (g + r) * K : gemm_src_row(&A, m0 + g + r);
        crow[r] = dst_row(C, m0 + g + r) + n0;
      }
      p.small(tb, mg, n1 - n0, K, arow, &B, n0, crow, alpha, beta, work);
    }
    return;
  }
  const int64_t nkb = (K + p.kc - 1) / p.kc;
  const int64_t kc_max = (K + nkb - 1) / nkb;
  float* ap = t_pack_a.get((size_t)(round_up(std::min(p.mc, m1 - m0), p.mr) * kc_max));
  float* bp = t_pack_b.get((size_t)(round_up(std::min(p.nc, n1 - n0), p.nr) * kc_max));
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
  double flops_per_iter = 96;  // 48 chains of multiply + add
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
