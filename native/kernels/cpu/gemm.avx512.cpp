// AVX-512 GEMM pieces: packing into MR×kc / kc×NR slivers and the 6×64 register-blocked micro-kernel.
//
// Tile: 6 rows × 64 columns of C = 24 zmm accumulators; per k step 4 zmm loads of packed B, 6 broadcasts of
// packed A and 24 FMAs (10 loads per 24 FMAs keeps the load ports below the two FMA pipes of a Zen 5 core).
// Each C element is one FMA chain over k ascending, so the result depends on the kc blocking only, never on
// where a tile sits or which thread runs it. See gemm_kernels.h for the data layout; driver in gemm.cpp.
// Test: test/ops/gemm.test.ts (forced with setIsa('avx512')). Benchmark: npm run bench -- gemm.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "gemm_kernels.h"

namespace sffn {
namespace avx512 {
namespace {

constexpr int MR = kGemmMR, NR = kGemmNR, NV = NR / 16;

// In-register transpose of 8 rows × 8 floats: r[i][j] -> r[j][i].
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {
    __m256* x = t + 4 * h;
    u[4 * h + 0] = _mm256_shuffle_ps(x[0], x[2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(x[0], x[2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(x[1], x[3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(x[1], x[3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

// In-register transpose of 16 rows × 16 floats.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    __m512* x = t + 4 * i;
    r[4 * i + 0] = _mm512_shuffle_ps(x[0], x[2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(x[0], x[2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(x[1], x[3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(x[1], x[3], 0xEE);
  }
  // Now 128-bit lane L of r[4i+c] holds rows 4i..4i+3 at column 4L+c; gather the four lanes of each column.
  for (int c = 0; c < 4; ++c) {
    __m512 p = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), q = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    __m512 s = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44), w = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    t[c] = _mm512_shuffle_f32x4(p, s, 0x88);       // column c
    t[4 + c] = _mm512_shuffle_f32x4(p, s, 0xDD);   // column 4 + c
    t[8 + c] = _mm512_shuffle_f32x4(q, w, 0x88);   // column 8 + c
    t[12 + c] = _mm512_shuffle_f32x4(q, w, 0xDD);  // column 12 + c
  }
  for (int j = 0; j < 16; ++j) r[j] = t[j];
}

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

}  // namespace

void gemm_pack_a(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t s = 0; s < mc; s += MR, dst += MR * kc) {
    int mr = mc - s < MR ? (int)(mc - s) : MR;
    if (trans) {
      // A(i,k) = row(k)[i]: MR contiguous floats per k.
      __mmask8 m = (__mmask8)((1u << mr) - 1);
      for (int64_t k = 0; k < kc; ++k) {
        __m256 v = _mm256_maskz_loadu_ps(m, gemm_src_row(a, k0 + k) + i0 + s);
        _mm256_mask_storeu_ps(dst + k * MR, 0x3F, v);
      }
      continue;
    }
    // A(i,k) = row(i)[k]: transpose 8 k at a time (rows 6, 7 of the 8×8 block are dummies, never stored).
    const float* p[8];
    for (int r = 0; r < 8; ++r) p[r] = gemm_src_row(a, i0 + s + (r < mr ? r : mr - 1)) + k0;
    int64_t k = 0;
    if (mr == MR) {
      for (; k + 8 <= kc; k += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_loadu_ps(p[r] + k);
        transpose8(v);
        for (int j = 0; j < 8; ++j) _mm256_mask_storeu_ps(dst + (k + j) * MR, 0x3F, v[j]);
      }
    }
    for (; k < kc; ++k)
      for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < mr ? p[r][k] : 0.0f;
  }
}

void gemm_pack_b(const GemmSrc* b, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t s = 0; s < nc; s += NR, dst += NR * kc) {
    int64_t nr = nc - s < NR ? nc - s : NR;
    if (!trans) {
      // B(k,j) = row(k)[j]: NR contiguous floats per k, zero-filled past nr.
      __mmask16 m[NV];
      for (int v = 0; v < NV; ++v) m[v] = nr > 16 * v ? tail_mask(nr - 16 * v) : (__mmask16)0;
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = gemm_src_row(b, k0 + k) + j0 + s;
        for (int v = 0; v < NV; ++v) _mm512_store_ps(dst + k * NR + 16 * v, _mm512_maskz_loadu_ps(m[v], src + 16 * v));
      }
      continue;
    }
    // B(k,j) = row(j)[k]: 16×16 transposes for full groups of 16 columns, element by element elsewhere.
    for (int g = 0; g < NV; ++g) {
      int64_t cols = nr - 16 * g;  // valid columns in this group (may be <= 0)
      float* d = dst + 16 * g;
      int64_t k = 0;
      if (cols >= 16) {
        const float* p[16];
        for (int r = 0; r < 16; ++r) p[r] = gemm_src_row(b, j0 + s + 16 * g + r) + k0;
        for (; k + 16 <= kc; k += 16) {
          __m512 v[16];
          for (int r = 0; r < 16; ++r) v[r] = _mm512_loadu_ps(p[r] + k);
          transpose16(v);
          for (int j = 0; j < 16; ++j) _mm512_store_ps(d + (k + j) * NR, v[j]);
        }
        for (; k < kc; ++k)
          for (int r = 0; r < 16; ++r) d[k * NR + r] = p[r][k];
        continue;
      }
      for (int64_t kk = 0; kk < kc; ++kk) _mm512_store_ps(d + kk * NR, _mm512_setzero_ps());
      for (int64_t r = 0; r < cols; ++r) {
        const float* p = gemm_src_row(b, j0 + s + 16 * g + r) + k0;
        for (int64_t kk = 0; kk < kc; ++kk) d[kk * NR + r] = p[kk];
      }
    }
  }
}

void gemm_kernel(int64_t kc, const float* a, const float* b, float* const* cp, float alpha, float beta, int mr, int nr) {
  // Local copies of the row pointers: the compiler need not reload them after every store to C.
  float* c[MR];
  for (int r = 0; r < MR; ++r) c[r] = r < mr ? cp[r] : cp[0];
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int r = 0; r < mr; ++r)
    for (int v = 0; v < NV; ++v) _mm_prefetch((const char*)(c[r] + 16 * v), _MM_HINT_T0);

  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m512 av = _mm512_set1_ps(a[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
    a += MR;
    b += NR;
  }

  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  if (mr == MR && nr == NR) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* p = c[r] + 16 * v;
        __m512 x = beta == 0.0f ? _mm512_mul_ps(va, acc[r][v])
                                : _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_loadu_ps(p)));
        _mm512_storeu_ps(p, x);
      }
    return;
  }
  __mmask16 m[NV];
  for (int v = 0; v < NV; ++v) m[v] = nr > 16 * v ? tail_mask(nr - 16 * v) : (__mmask16)0;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (r >= mr) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = c[r] + 16 * v;
      __m512 x = beta == 0.0f ? _mm512_mul_ps(va, acc[r][v])
                              : _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m[v], p)));
      _mm512_mask_storeu_ps(p, m[v], x);
    }
  }
}

// ---- few rows (M <= MR): no packing --------------------------------------------------------------------
// With at most MR rows of C every element of B is used by one register tile only, so packing B would cost
// more than the product (GEMV-like calls: generation, small expert tiles). B is read in place.
namespace {

// C[0:MROWS, 0:n] with B(k,j) = row(k)[j0 + j]. K runs outermost in groups of KG rows of B, each swept
// left to right (long sequential streams, no page-hopping down a column of B); between groups the running
// sums wait in `work` (MROWS·n floats, exact f32 values), so every element is still one FMA chain over k.
template <int MROWS>
void small_nn(int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0, float* const* c, float alpha,
              float beta, float* work) {
  constexpr int KG = 8;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int64_t k0 = 0; k0 < K; k0 += KG) {
    const int kg = K - k0 < KG ? (int)(K - k0) : KG;
    const bool first = k0 == 0, last = k0 + kg == K;
    const float* bk[KG];
    for (int q = 0; q < kg; ++q) bk[q] = gemm_src_row(b, k0 + q) + j0;
    for (int64_t j = 0; j < n; j += NR) {
      const int64_t nr = n - j < NR ? n - j : NR;
      __mmask16 m[NV];
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) m[v] = nr > 16 * v ? tail_mask(nr - 16 * v) : (__mmask16)0;
      __m512 acc[MROWS][NV];
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r)
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
          acc[r][v] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m[v], work + r * n + j + 16 * v);
#pragma GCC unroll 8
      for (int q = 0; q < kg; ++q) {
        __m512 bv[NV];
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(m[v], bk[q] + j + 16 * v);
        #pragma GCC unroll 8
        for (int r = 0; r < MROWS; ++r) {
          __m512 av = _mm512_set1_ps(a[r][k0 + q]);
          #pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
      }
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r)
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          if (!last) {
            _mm512_mask_storeu_ps(work + r * n + j + 16 * v, m[v], acc[r][v]);
            continue;
          }
          float* p = c[r] + j + 16 * v;
          __m512 x = beta == 0.0f ? _mm512_mul_ps(va, acc[r][v])
                                  : _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m[v], p)));
          _mm512_mask_storeu_ps(p, m[v], x);
        }
    }
  }
}

// C[0:MROWS, 0:n] with B(k,j) = row(j0 + j)[k]: dot products of contiguous rows, 16 lanes of k per FMA, four
// columns at a time; each element is reduced across lanes in one fixed order.
template <int MROWS>
void small_nt(int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0, float* const* c, float alpha,
              float beta, float*) {
  constexpr int NJ = 4;
  const __mmask16 mt = tail_mask(K % 16);
  const int64_t kfull = K - K % 16;
  for (int64_t j = 0; j < n; j += NJ) {
    const int nj = n - j < NJ ? (int)(n - j) : NJ;
    const float* bp[NJ];
    #pragma GCC unroll 8
    for (int q = 0; q < NJ; ++q) bp[q] = gemm_src_row(b, j0 + j + (q < nj ? q : 0));
    __m512 acc[MROWS][NJ];
    #pragma GCC unroll 8
    for (int r = 0; r < MROWS; ++r)
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) acc[r][q] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kfull; k += 16) {
      __m512 bv[NJ];
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) bv[q] = _mm512_loadu_ps(bp[q] + k);
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r) {
        __m512 av = _mm512_loadu_ps(a[r] + k);
        #pragma GCC unroll 8
        for (int q = 0; q < NJ; ++q) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
      }
    }
    if (kfull < K) {
      __m512 bv[NJ];
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) bv[q] = _mm512_maskz_loadu_ps(mt, bp[q] + kfull);
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r) {
        __m512 av = _mm512_maskz_loadu_ps(mt, a[r] + kfull);
        #pragma GCC unroll 8
        for (int q = 0; q < NJ; ++q) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
      }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MROWS; ++r)
      for (int q = 0; q < nj; ++q) {
        float s = _mm512_reduce_add_ps(acc[r][q]);
        float* p = c[r] + j + q;
        *p = beta == 0.0f ? alpha * s : alpha * s + beta * *p;
      }
  }
}

}  // namespace

void gemm_small(bool b_trans, int m, int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0,
                float* const* c, float alpha, float beta, float* work) {
  switch (m) {
#define SFFN_SMALL_CASE(R) \
  case R: return b_trans ? small_nt<R>(n, K, a, b, j0, c, alpha, beta, work) \
                 : small_nn<R>(n, K, a, b, j0, c, alpha, beta, work);
    SFFN_SMALL_CASE(1)
    SFFN_SMALL_CASE(2)
    SFFN_SMALL_CASE(3)
    SFFN_SMALL_CASE(4)
    SFFN_SMALL_CASE(5)
    SFFN_SMALL_CASE(6)
#undef SFFN_SMALL_CASE
    default: return;
  }
}

float gemm_fma_loop(int64_t iters) {
  // 24 independent chains: enough to cover FMA latency × both pipes on current cores.
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(0.001f * (float)i);
  __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.0001f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    __asm__ volatile("" : "+v"(x));  // keeps the loop from being folded or hoisted
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace avx512
}  // namespace sffn
