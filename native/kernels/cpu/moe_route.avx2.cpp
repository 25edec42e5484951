// AVX2 row kernels of the MoE routing (contract and canonical arithmetic: moe_route_isa.h). The same design
// as moe_route.avx512.cpp in 8-lane halves: vector softmax with the 16-lane canonical sum held in two
// registers, and top-`want` selection by rank counting (E <= 64) with compare results as lane masks.
// Test: test/ops/moe-route.test.ts (every ISA). Benchmark: npm run bench -- moe.
#if defined(__GNUC__) && !defined(__clang__)
// The canonical arithmetic is mul then add; a fused multiply-add would round differently from the scalar path.
#pragma GCC optimize("fp-contract=off")
#endif
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "moe_route_isa.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace sffn {
namespace avx2 {
namespace {

// act.h fast_exp, lane-wise, same operations in the same order.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 shifter = _mm256_set1_ps(12582912.0f);
  const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), shifter), shifter);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693145751953125f))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(1.428606765330187045e-06f)));
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0.5f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// All-ones in the lanes of 8-lane chunk c that lie below n.
inline __m256i lanes(int64_t n, int64_t c) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t left = n - 8 * c;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(left > 8 ? 8 : left)), iota);
}

inline float hmax8(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
  return _mm_cvtss_f32(a);
}

// The canonical 16-lane sum: lo holds lanes 0..7, hi lanes 8..15; halves added 8, 4, 2, 1.
inline float sum16(__m256 lo, __m256 hi) {
  const __m256 a = _mm256_add_ps(lo, hi);
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
  return _mm_cvtss_f32(b);
}

inline double hsum4d(__m256d v) {
  __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

// Rows of any E, softmax only (E > kMoeRowMaxE): chunk loops through memory.
void rows_any(const float* z, int64_t n, int64_t E, float* p, float* m_out, float* sum_out, uint8_t* ok,
              double* pacc) {
  const int64_t nc = (E + 7) / 8;
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * E;
    float* pi = p + i * E;
    __m256 mx = ninf;
    int bad = 0;
    for (int64_t c = 0; c < nc; ++c) {
      const __m256i k = lanes(E, c);
      const __m256 v = _mm256_maskload_ps(zi + 8 * c, k);
      bad |= _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_NEQ_UQ),
                                              _mm256_castsi256_ps(k)));
      mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(k)));
    }
    ok[i] = bad == 0;
    if (bad) continue;
    const float m = hmax8(mx);
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t c = 0; c < nc; ++c) {
      const __m256i k = lanes(E, c);
      const __m256 x = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(zi + 8 * c, k), mv)), _mm256_castsi256_ps(k));
      acc[c & 1] = _mm256_add_ps(acc[c & 1], x);
      _mm256_maskstore_ps(pi + 8 * c, k, x);
    }
    const float sum = sum16(acc[0], acc[1]);
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int64_t c = 0; c < nc; ++c) {
      const __m256i k = lanes(E, c);
      const __m256 pv = _mm256_mul_ps(_mm256_maskload_ps(pi + 8 * c, k), inv);
      _mm256_maskstore_ps(pi + 8 * c, k, pv);
      if (pacc) {
        double* a = pacc + 8 * c;
        const __m256i klo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k));
        const __m256i khi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1));
        _mm256_maskstore_pd(a, klo, _mm256_add_pd(_mm256_maskload_pd(a, klo), _mm256_cvtps_pd(_mm256_castps256_ps128(pv))));
        _mm256_maskstore_pd(a + 4, khi,
                            _mm256_add_pd(_mm256_maskload_pd(a + 4, khi), _mm256_cvtps_pd(_mm256_extractf128_ps(pv, 1))));
      }
    }
    m_out[i] = m;
    sum_out[i] = sum;
  }
}

// Rows with E <= 8·NC (NC = 1..8): each row lives in NC registers; p̄ accumulates in memory (pacc, 8 doubles
// per chunk: too many registers to hold beside the row).
template <int NC>
void rows(const float* z, int64_t n, int64_t E, const uint64_t* keeps, int64_t want, int64_t cs, float* p,
          float* m_out, float* sum_out, uint8_t* ok, int32_t* cand, float* sig, double* pacc) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i bitv = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const uint64_t all = E == 64 ? ~0ULL : (1ULL << E) - 1;
  // p̄ of the run: E <= 64 doubles on the stack, added to pacc once at the end (the same per-expert order).
  alignas(32) double pa[8 * NC];
  for (int64_t e = 0; e < 8 * NC; ++e) pa[e] = e < E && pacc ? pacc[e] : 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * E;
    __m256 zc[NC];
    __m256 mx = ninf;
    int bad = 0;
    for (int c = 0; c < NC; ++c) {
      const __m256i k = lanes(E, c);
      zc[c] = _mm256_maskload_ps(zi + 8 * c, k);
      // x - x is 0 for finite x and NaN otherwise.
      bad |= _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(zc[c], zc[c]), _mm256_setzero_ps(), _CMP_NEQ_UQ),
                                              _mm256_castsi256_ps(k)));
      mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, zc[c], _mm256_castsi256_ps(k)));
    }
    ok[i] = bad == 0;
    if (bad) continue;
    const float m = hmax8(mx);
    const __m256 mv = _mm256_set1_ps(m);
    __m256 x[NC];
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int c = 0; c < NC; ++c) {
      x[c] = _mm256_and_ps(exp8(_mm256_sub_ps(zc[c], mv)), _mm256_castsi256_ps(lanes(E, c)));
      acc[c & 1] = _mm256_add_ps(acc[c & 1], x[c]);
    }
    const float sum = sum16(acc[0], acc[1]);
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int c = 0; c < NC; ++c) {
      const __m256 pv = _mm256_mul_ps(x[c], inv);
      _mm256_maskstore_ps(p + i * E + 8 * c, lanes(E, c), pv);
      _mm256_store_pd(pa + 8 * c, _mm256_add_pd(_mm256_load_pd(pa + 8 * c), _mm256_cvtps_pd(_mm256_castps256_ps128(pv))));
      _mm256_store_pd(pa + 8 * c + 4,
                      _mm256_add_pd(_mm256_load_pd(pa + 8 * c + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(pv, 1))));
    }
    m_out[i] = m;
    sum_out[i] = sum;
    if (want <= 0) continue;

    // Rank counting as in moe_route.avx512.cpp: dropped experts and padding lanes at -inf; a GT-only pass,
    // and the exact tie-breaking pass (GE on the lanes above j, GT below) only when some rank r < w is not
    // held by exactly one lane.
    const uint64_t keep = keeps ? keeps[i] : all;
    const int64_t nk = __builtin_popcountll(keep);
    const int64_t w = want < nk ? want : nk;
    int32_t* ci = cand + i * cs;
    alignas(32) float zs[8 * NC];
    for (int c = 0; c < NC; ++c) {
      const __m256i bits = _mm256_and_si256(_mm256_set1_epi32((int32_t)((keep >> (8 * c)) & 0xFF)), bitv);
      const __m256 kept = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, bitv));
      _mm256_store_ps(zs + 8 * c, _mm256_blendv_ps(ninf, zc[c], kept));
    }
    __m256 zk[NC];
    __m256i rank[NC];
    for (int c = 0; c < NC; ++c) {
      zk[c] = _mm256_load_ps(zs + 8 * c);
      rank[c] = _mm256_setzero_si256();
    }
    for (int j = 0; j < 8 * NC; ++j) {
      const __m256 bj = _mm256_broadcast_ss(zs + j);
      for (int c = 0; c < NC; ++c)
        rank[c] = _mm256_sub_epi32(rank[c], _mm256_castps_si256(_mm256_cmp_ps(bj, zk[c], _CMP_GT_OQ)));
    }
    auto extract = [&]() {
      for (int64_t r = 0; r < w; ++r) {
        const __m256i rv = _mm256_set1_epi32((int32_t)r);
        uint64_t hit = 0;
        for (int c = 0; c < NC; ++c)
          hit |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(rank[c], rv))) << (8 * c);
        if (__builtin_popcountll(hit) != 1) return false;
        ci[r] = __builtin_ctzll(hit);
      }
      return true;
    };
    if (!extract()) {
      for (int c = 0; c < NC; ++c) rank[c] = _mm256_setzero_si256();
      for (int j = 0; j < 8 * NC; ++j) {
        const __m256 bj = _mm256_broadcast_ss(zs + j);
        for (int c = 0; c < NC; ++c) {
          const __m256i idx = _mm256_add_epi32(iota, _mm256_set1_epi32(8 * c)), jv = _mm256_set1_epi32(j);
          const __m256 above = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, jv));
          const __m256 below = _mm256_castsi256_ps(_mm256_cmpgt_epi32(jv, idx));
          const __m256 beats = _mm256_or_ps(_mm256_and_ps(_mm256_cmp_ps(bj, zk[c], _CMP_GE_OQ), above),
                                            _mm256_and_ps(_mm256_cmp_ps(bj, zk[c], _CMP_GT_OQ), below));
          rank[c] = _mm256_sub_epi32(rank[c], _mm256_castps_si256(beats));
        }
      }
      extract();  // every lane now has a distinct rank
    }
    if (sig) {
      alignas(32) float sr[8 * NC];
      const __m256 one = _mm256_set1_ps(1.0f);
      for (int c = 0; c < NC; ++c)
        _mm256_store_ps(sr + 8 * c, _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), zc[c])))));
      for (int64_t r = 0; r < w; ++r) sig[i * cs + r] = sr[ci[r]];
    }
  }
  if (pacc)
    for (int64_t e = 0; e < E; ++e) pacc[e] = pa[e];
}

}  // namespace

void moe_route_rows(const float* z, int64_t n, int64_t E, const uint64_t* keep, int64_t want, int64_t cs, float* p,
                    float* m, float* sum, uint8_t* ok, int32_t* cand, float* sig, double* pacc) {
  if (E > kMoeRowMaxE) return rows_any(z, n, E, p, m, sum, ok, pacc);
  switch ((E + 7) / 8) {
    case 1: return rows<1>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 2: return rows<2>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 3: return rows<3>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 4: return rows<4>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 5: return rows<5>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 6: return rows<6>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 7: return rows<7>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    default: return rows<8>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
  }
}

void moe_route_bwd_row(const float* p, int64_t E, float lse, bool reg, const float* logpb, const float* fe, float ce,
                       float cb, float cz, float a, float* dz) {
  const int64_t nc = (E + 7) / 8;
  float se = 0, sf = 0;
  if (reg) {
    // Σ p·logpb and Σ p·fe in double, 4 lanes each half.
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), f0 = _mm256_setzero_pd(), f1 = _mm256_setzero_pd();
    for (int64_t c = 0; c < nc; ++c) {
      const __m256i k = lanes(E, c);
      const __m256 pv = _mm256_maskload_ps(p + 8 * c, k);
      const __m256 lv = _mm256_maskload_ps(logpb + 8 * c, k);
      const __m256 fv = _mm256_maskload_ps(fe + 8 * c, k);
      const __m256d plo = _mm256_cvtps_pd(_mm256_castps256_ps128(pv)), phi = _mm256_cvtps_pd(_mm256_extractf128_ps(pv, 1));
      s0 = _mm256_add_pd(s0, _mm256_mul_pd(plo, _mm256_cvtps_pd(_mm256_castps256_ps128(lv))));
      s1 = _mm256_add_pd(s1, _mm256_mul_pd(phi, _mm256_cvtps_pd(_mm256_extractf128_ps(lv, 1))));
      f0 = _mm256_add_pd(f0, _mm256_mul_pd(plo, _mm256_cvtps_pd(_mm256_castps256_ps128(fv))));
      f1 = _mm256_add_pd(f1, _mm256_mul_pd(phi, _mm256_cvtps_pd(_mm256_extractf128_ps(fv, 1))));
    }
    se = (float)hsum4d(_mm256_add_pd(s0, s1));
    sf = (float)hsum4d(_mm256_add_pd(f0, f1));
  }
  const __m256 czl = _mm256_set1_ps(cz * lse), cev = _mm256_set1_ps(ce), cbv = _mm256_set1_ps(cb);
  const __m256 sev = _mm256_set1_ps(se), sfv = _mm256_set1_ps(sf), av = _mm256_set1_ps(a);
  for (int64_t c = 0; c < nc; ++c) {
    const __m256i k = lanes(E, c);
    const __m256 pv = _mm256_maskload_ps(p + 8 * c, k);
    __m256 v = _mm256_mul_ps(czl, pv);
    if (reg) {
      const __m256 lv = _mm256_maskload_ps(logpb + 8 * c, k);
      const __m256 fv = _mm256_maskload_ps(fe + 8 * c, k);
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(cev, pv), _mm256_sub_ps(lv, sev)),
                                     _mm256_mul_ps(_mm256_mul_ps(cbv, pv), _mm256_sub_ps(fv, sfv)));
      v = _mm256_add_ps(v, t);
    }
    _mm256_maskstore_ps(dz + 8 * c, k, _mm256_sub_ps(v, _mm256_mul_ps(pv, av)));
  }
}

}  // namespace avx2
}  // namespace sffn
