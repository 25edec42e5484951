// AVX2+FMA GEMM pieces: packing into MR×kc / kc×NR slivers and the 6×16 register-blocked micro-kernel.
//
// Tile: 6 rows × 16 columns of C = 12 ymm accumulators (of 16 registers); per k step 2 ymm loads of packed B,
// 6 broadcasts of packed A and 12 FMAs. Each C element is one FMA chain over k ascending (deterministic,
// independent of tile position and thread). Layout: gemm_kernels.h; driver: gemm.cpp.
// Test: test/ops/gemm.test.ts (forced with setIsa('avx2')). Benchmark: npm run bench -- gemm.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "gemm_kernels.h"

namespace sffn {
namespace avx2 {
namespace {

constexpr int MR = kGemmMR, NR = kGemmNR, NV = NR / 8;

// In-register transpose of 8 rows × 8 floats: r[i][j] -> r[j][i].
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // 128-bit lane L of u[4h+c] holds rows 4h..4h+3 at column 4L+c.
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

// Lanes [0, n) set (n clamped to [0, 8]), for maskload/maskstore.
inline __m256i lane_mask(int64_t n) {
  n = n < 0 ? 0 : n > 8 ? 8 : n;
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}

}  // namespace

void gemm_pack_a(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  const __m256i m6 = lane_mask(MR);
  for (int64_t s = 0; s < mc; s += MR, dst += MR * kc) {
    int mr = mc - s < MR ? (int)(mc - s) : MR;
    if (trans) {
      // A(i,k) = row(k)[i]: MR contiguous floats per k.
      const __m256i m = lane_mask(mr);
      for (int64_t k = 0; k < kc; ++k) {
        __m256 v = _mm256_maskload_ps(gemm_src_row(a, k0 + k) + i0 + s, m);
        _mm256_maskstore_ps(dst + k * MR, m6, v);
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
        for (int j = 0; j < 8; ++j) _mm256_maskstore_ps(dst + (k + j) * MR, m6, v[j]);
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
      __m256i m[NV];
      for (int v = 0; v < NV; ++v) m[v] = lane_mask(nr - 8 * v);
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = gemm_src_row(b, k0 + k) + j0 + s;
        if (nr == NR) {
          for (int v = 0; v < NV; ++v) _mm256_store_ps(dst + k * NR + 8 * v, _mm256_loadu_ps(src + 8 * v));
        } else {
          for (int v = 0; v < NV; ++v) _mm256_store_ps(dst + k * NR + 8 * v, _mm256_maskload_ps(src + 8 * v, m[v]));
        }
      }
      continue;
    }
    // B(k,j) = row(j)[k]: 8×8 transposes for full groups of 8 columns, element by element elsewhere.
    for (int g = 0; g < NV; ++g) {
      int64_t cols = nr - 8 * g;
      float* d = dst + 8 * g;
      if (cols >= 8) {
        const float* p[8];
        for (int r = 0; r < 8; ++r) p[r] = gemm_src_row(b, j0 + s + 8 * g + r) + k0;
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
          __m256 v[8];
          for (int r = 0; r < 8; ++r) v[r] = _mm256_loadu_ps(p[r] + k);
          transpose8(v);
          for (int j = 0; j < 8; ++j) _mm256_store_ps(d + (k + j) * NR, v[j]);
        }
        for (; k < kc; ++k)
          for (int r = 0; r < 8; ++r) d[k * NR + r] = p[r][k];
        continue;
      }
      for (int64_t kk = 0; kk < kc; ++kk) _mm256_store_ps(d + kk * NR, _mm256_setzero_ps());
      for (int64_t r = 0; r < cols; ++r) {
        const float* p = gemm_src_row(b, j0 + s + 8 * g + r) + k0;
        for (int64_t kk = 0; kk < kc; ++kk) d[kk * NR + r] = p[kk];
      }
    }
  }
}

void gemm_kernel(int64_t kc, const float* a, const float* b, float* const* cp, float alpha, float beta, int mr, int nr) {
  // Local copies of the row pointers: the compiler need not reload them after every store to C.
  float* c[MR];
  for (int r = 0; r < MR; ++r) c[r] = r < mr ? cp[r] : cp[0];
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int r = 0; r < mr; ++r) _mm_prefetch((const char*)c[r], _MM_HINT_T0);

  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m256 av = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
    a += MR;
    b += NR;
  }

  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  if (mr == MR && nr == NR) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        float* p = c[r] + 8 * v;
        __m256 x = beta == 0.0f ? _mm256_mul_ps(va, acc[r][v])
                                : _mm256_fmadd_ps(va, acc[r][v], _mm256_mul_ps(vb, _mm256_loadu_ps(p)));
        _mm256_storeu_ps(p, x);
      }
    return;
  }
  __m256i m[NV];
  for (int v = 0; v < NV; ++v) m[v] = lane_mask(nr - 8 * v);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (r >= mr) break;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      float* p = c[r] + 8 * v;
      __m256 x = beta == 0.0f ? _mm256_mul_ps(va, acc[r][v])
                              : _mm256_fmadd_ps(va, acc[r][v], _mm256_mul_ps(vb, _mm256_maskload_ps(p, m[v])));
      _mm256_maskstore_ps(p, m[v], x);
    }
  }
}

// ---- few rows (M <= MR): no packing --------------------------------------------------------------------
// With at most MR rows of C every element of B is used by one register tile only, so packing B would cost
// more than the product (GEMV-like calls: generation, small expert tiles). B is read in place.
namespace {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// C[0:MROWS, 0:n] with B(k,j) = row(k)[j0 + j]. K runs outermost in groups of KG rows of B, each swept
// left to right (long sequential streams, no page-hopping down a column of B); between groups the running
// sums wait in `work` (MROWS·n floats, exact f32 values), so every element is still one FMA chain over k.
template <int MROWS>
void small_nn(int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0, float* const* c, float alpha,
              float beta, float* work) {
  constexpr int KG = 8;
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  for (int64_t k0 = 0; k0 < K; k0 += KG) {
    const int kg = K - k0 < KG ? (int)(K - k0) : KG;
    const bool first = k0 == 0, last = k0 + kg == K;
    const float* bk[KG];
    for (int q = 0; q < kg; ++q) bk[q] = gemm_src_row(b, k0 + q) + j0;
    for (int64_t j = 0; j < n; j += NR) {
      const int64_t nr = n - j < NR ? n - j : NR;
      __m256i m[NV];
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) m[v] = lane_mask(nr - 8 * v);
      __m256 acc[MROWS][NV];
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r)
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
          acc[r][v] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(work + r * n + j + 8 * v, m[v]);
#pragma GCC unroll 8
      for (int q = 0; q < kg; ++q) {
        __m256 bv[NV];
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v] = _mm256_maskload_ps(bk[q] + j + 8 * v, m[v]);
        #pragma GCC unroll 8
        for (int r = 0; r < MROWS; ++r) {
          __m256 av = _mm256_broadcast_ss(a[r] + k0 + q);
          #pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
        }
      }
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r)
        #pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          if (!last) {
            _mm256_maskstore_ps(work + r * n + j + 8 * v, m[v], acc[r][v]);
            continue;
          }
          float* p = c[r] + j + 8 * v;
          __m256 x = beta == 0.0f ? _mm256_mul_ps(va, acc[r][v])
                                  : _mm256_fmadd_ps(va, acc[r][v], _mm256_mul_ps(vb, _mm256_maskload_ps(p, m[v])));
          _mm256_maskstore_ps(p, m[v], x);
        }
    }
  }
}

// C[0:MROWS, 0:n] with B(k,j) = row(j0 + j)[k]: dot products of contiguous rows, 8 lanes of k per FMA, four
// columns at a time; each element is reduced across lanes in one fixed order.
template <int MROWS>
void small_nt(int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0, float* const* c, float alpha,
              float beta, float*) {
  constexpr int NJ = 4;
  const __m256i mt = lane_mask(K % 8);
  const int64_t kfull = K - K % 8;
  for (int64_t j = 0; j < n; j += NJ) {
    const int nj = n - j < NJ ? (int)(n - j) : NJ;
    const float* bp[NJ];
    #pragma GCC unroll 8
    for (int q = 0; q < NJ; ++q) bp[q] = gemm_src_row(b, j0 + j + (q < nj ? q : 0));
    __m256 acc[MROWS][NJ];
    #pragma GCC unroll 8
    for (int r = 0; r < MROWS; ++r)
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) acc[r][q] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kfull; k += 8) {
      __m256 bv[NJ];
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) bv[q] = _mm256_loadu_ps(bp[q] + k);
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r) {
        __m256 av = _mm256_loadu_ps(a[r] + k);
        #pragma GCC unroll 8
        for (int q = 0; q < NJ; ++q) acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
      }
    }
    if (kfull < K) {
      __m256 bv[NJ];
      #pragma GCC unroll 8
      for (int q = 0; q < NJ; ++q) bv[q] = _mm256_maskload_ps(bp[q] + kfull, mt);
      #pragma GCC unroll 8
      for (int r = 0; r < MROWS; ++r) {
        __m256 av = _mm256_maskload_ps(a[r] + kfull, mt);
        #pragma GCC unroll 8
        for (int q = 0; q < NJ; ++q) acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
      }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MROWS; ++r)
      for (int q = 0; q < nj; ++q) {
        float s = hsum8(acc[r][q]);
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
  // 12 independent chains: two FMA pipes × a 4-cycle latency need 8; 12 leaves slack.
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(0.001f * (float)i);
  __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.0001f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    __asm__ volatile("" : "+x"(x));
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

}  // namespace avx2
}  // namespace sffn
