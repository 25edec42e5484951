// AVX-512 row kernels of the MoE routing (contract and canonical arithmetic: moe_route_isa.h).
//
// Forward, per token: the row z [E] in 16-lane chunks: max, fast_exp, the 16-lane sum, p; then top-`want`
// selection by rank counting (E <= 64): every expert j is broadcast and compared with all lanes, and lane l
// counts the experts that beat it (z_j > z_l, or z_j == z_l with j < l); the winners are read off by rank. No
// data-dependent branches, so random logits cost what sorted ones do.
// Backward, per token: the regulariser and softmax-gate terms of dz [E], with the two dot products in double.
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
namespace avx512 {
namespace {

// act.h fast_exp, lane-wise, same operations in the same order.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 shifter = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), shifter), shifter);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693145751953125f))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(1.428606765330187045e-06f)));
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

inline __mmask16 lanes(int64_t E, int64_t c) {
  const int64_t n = E - 16 * c;
  return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

// The halves of a 16-lane sum added 8, 4, 2, 1 (the canonical order).
inline float sum16(__m512 v) {
  __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
  return _mm_cvtss_f32(b);
}

// Rows of any E, softmax only (E > kMoeRowMaxE): chunk loops through memory.
void rows_any(const float* z, int64_t n, int64_t E, float* p, float* m_out, float* sum_out, uint8_t* ok,
              double* pacc) {
  const int64_t nc = (E + 15) / 16;
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * E;
    float* pi = p + i * E;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int64_t c = 0; c < nc; ++c) {
      const __mmask16 k = lanes(E, c);
      const __m512 v = _mm512_maskz_loadu_ps(k, zi + 16 * c);
      bad |= _mm512_mask_cmp_ps_mask(k, _mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      mx = _mm512_mask_max_ps(mx, k, mx, v);
    }
    ok[i] = bad == 0;
    if (bad) continue;
    const float m = _mm512_reduce_max_ps(mx);
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < nc; ++c) {
      const __mmask16 k = lanes(E, c);
      const __m512 x = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, zi + 16 * c), mv)));
      acc = _mm512_add_ps(acc, x);
      _mm512_mask_storeu_ps(pi + 16 * c, k, x);
    }
    const float sum = sum16(acc);
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (int64_t c = 0; c < nc; ++c) {
      const __mmask16 k = lanes(E, c);
      const __m512 pv = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, pi + 16 * c), inv);
      _mm512_mask_storeu_ps(pi + 16 * c, k, pv);
      if (pacc) {
        double* a = pacc + 16 * c;
        const __mmask8 lo = (__mmask8)k, hi = (__mmask8)(k >> 8);
        _mm512_mask_storeu_pd(a, lo, _mm512_add_pd(_mm512_maskz_loadu_pd(lo, a), _mm512_cvtps_pd(_mm512_castps512_ps256(pv))));
        _mm512_mask_storeu_pd(a + 8, hi,
                              _mm512_add_pd(_mm512_maskz_loadu_pd(hi, a + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(pv, 1))));
      }
    }
    m_out[i] = m;
    sum_out[i] = sum;
  }
}

// Rows with E <= 16·NC (NC = 1..4): each row lives in NC registers, p̄ accumulates in 2·NC registers.
template <int NC>
void rows(const float* z, int64_t n, int64_t E, const uint64_t* keeps, int64_t want, int64_t cs, float* p,
          float* m_out, float* sum_out, uint8_t* ok, int32_t* cand, float* sig, double* pacc) {
  __mmask16 km[NC];
  for (int c = 0; c < NC; ++c) km[c] = lanes(E, c);
  __m512d acc_d[2 * NC];
  for (int c = 0; c < NC; ++c) {
    acc_d[2 * c] = pacc ? _mm512_maskz_loadu_pd((__mmask8)km[c], pacc + 16 * c) : _mm512_setzero_pd();
    acc_d[2 * c + 1] = pacc ? _mm512_maskz_loadu_pd((__mmask8)(km[c] >> 8), pacc + 16 * c + 8) : _mm512_setzero_pd();
  }
  const uint64_t all = E == 64 ? ~0ULL : (1ULL << E) - 1;
  const __m512i one = _mm512_set1_epi32(1);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * E;
    // Finite check and max in one sweep: x - x is 0 for finite x and NaN otherwise.
    __m512 zc[NC];
    __m512 mx = ninf;
    __mmask16 bad = 0;
    for (int c = 0; c < NC; ++c) {
      zc[c] = _mm512_maskz_loadu_ps(km[c], zi + 16 * c);
      bad |= _mm512_mask_cmp_ps_mask(km[c], _mm512_sub_ps(zc[c], zc[c]), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      mx = _mm512_mask_max_ps(mx, km[c], mx, zc[c]);
    }
    ok[i] = bad == 0;
    if (bad) continue;
    const float m = _mm512_reduce_max_ps(mx);
    const __m512 mv = _mm512_set1_ps(m);
    __m512 x[NC];
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < NC; ++c) {
      x[c] = _mm512_maskz_mov_ps(km[c], exp16(_mm512_sub_ps(zc[c], mv)));
      acc = _mm512_add_ps(acc, x[c]);
    }
    const float sum = sum16(acc);
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (int c = 0; c < NC; ++c) {
      const __m512 pv = _mm512_mul_ps(x[c], inv);
      _mm512_mask_storeu_ps(p + i * E + 16 * c, km[c], pv);
      acc_d[2 * c] = _mm512_add_pd(acc_d[2 * c], _mm512_cvtps_pd(_mm512_castps512_ps256(pv)));
      acc_d[2 * c + 1] = _mm512_add_pd(acc_d[2 * c + 1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(pv, 1)));
    }
    m_out[i] = m;
    sum_out[i] = sum;
    if (want <= 0) continue;

    // Rank counting. Dropped experts and padding lanes are set to -inf, so they never beat a kept (finite)
    // logit. First pass: rank[l] = #{j : z_j > z_l}, one compare per expert j; without ties among the winners
    // the ranks 0..w-1 each sit in exactly one lane, and that is the answer. Otherwise (some rank r < w held by
    // 0 or 2+ lanes) the exact pass breaks ties toward the lower index: expert j beats lane l when z_j > z_l,
    // or z_j == z_l and j < l (a GE compare on the lanes above j, a GT compare on those below).
    const uint64_t keep = keeps ? keeps[i] : all;
    const int64_t nk = __builtin_popcountll(keep);
    const int64_t w = want < nk ? want : nk;
    int32_t* ci = cand + i * cs;
    __m512 zk[NC];
    for (int c = 0; c < NC; ++c) zk[c] = _mm512_mask_mov_ps(ninf, (__mmask16)(keep >> (16 * c)), zc[c]);
    __m512i rank[NC];
    for (int c = 0; c < NC; ++c) rank[c] = _mm512_setzero_si512();
#pragma GCC unroll 64
    for (int j = 0; j < 16 * NC; ++j) {
      const __m512 bj = _mm512_permutexvar_ps(_mm512_set1_epi32(j & 15), zk[j >> 4]);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c)
        rank[c] = _mm512_mask_add_epi32(rank[c], _mm512_cmp_ps_mask(bj, zk[c], _CMP_GT_OQ), rank[c], one);
    }
    // σ of the whole row (one exp per chunk); the winners' values are pulled out by their one-lane masks.
    __m512 sg[NC];
    if (sig) {
      const __m512 one_f = _mm512_set1_ps(1.0f);
      for (int c = 0; c < NC; ++c)
        sg[c] = _mm512_div_ps(one_f, _mm512_add_ps(one_f, exp16(_mm512_sub_ps(_mm512_setzero_ps(), zc[c]))));
    }
    float* si = sig ? sig + i * cs : nullptr;
    // cand[r] = the lane of rank r (r < w); false if some rank r < w is not held by exactly one lane.
    auto extract = [&]() {
      for (int64_t r = 0; r < w; ++r) {
        const __m512i rv = _mm512_set1_epi32((int32_t)r);
        uint64_t hit = 0;
        __m512 g = _mm512_setzero_ps();
        for (int c = 0; c < NC; ++c) {
          const __mmask16 h = _mm512_cmpeq_epi32_mask(rank[c], rv);
          hit |= (uint64_t)h << (16 * c);
          if (si) g = _mm512_add_ps(g, _mm512_maskz_compress_ps(h, sg[c]));
        }
        if (__builtin_popcountll(hit) != 1) return false;
        ci[r] = __builtin_ctzll(hit);
        if (si) _mm_store_ss(si + r, _mm512_castps512_ps128(g));
      }
      return true;
    };
    if (!extract()) {
      for (int c = 0; c < NC; ++c) rank[c] = _mm512_setzero_si512();
      for (int j = 0; j < 16 * NC; ++j) {
        const __m512 bj = _mm512_permutexvar_ps(_mm512_set1_epi32(j & 15), zk[j >> 4]);
        const uint64_t above = j == 63 ? 0 : ~0ULL << (j + 1), below = (1ULL << j) - 1;
        for (int c = 0; c < NC; ++c) {
          const __mmask16 beats = _mm512_mask_cmp_ps_mask((__mmask16)(above >> (16 * c)), bj, zk[c], _CMP_GE_OQ) |
                                  _mm512_mask_cmp_ps_mask((__mmask16)(below >> (16 * c)), bj, zk[c], _CMP_GT_OQ);
          rank[c] = _mm512_mask_add_epi32(rank[c], beats, rank[c], one);
        }
      }
      extract();  // every lane now has a distinct rank
    }
  }
  if (pacc)
    for (int c = 0; c < NC; ++c) {
      _mm512_mask_storeu_pd(pacc + 16 * c, (__mmask8)km[c], acc_d[2 * c]);
      _mm512_mask_storeu_pd(pacc + 16 * c + 8, (__mmask8)(km[c] >> 8), acc_d[2 * c + 1]);
    }
}

}  // namespace

void moe_route_rows(const float* z, int64_t n, int64_t E, const uint64_t* keep, int64_t want, int64_t cs, float* p,
                    float* m, float* sum, uint8_t* ok, int32_t* cand, float* sig, double* pacc) {
  if (E > kMoeRowMaxE) return rows_any(z, n, E, p, m, sum, ok, pacc);
  switch ((E + 15) / 16) {
    case 1: return rows<1>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 2: return rows<2>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    case 3: return rows<3>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
    default: return rows<4>(z, n, E, keep, want, cs, p, m, sum, ok, cand, sig, pacc);
  }
}

void moe_route_bwd_row(const float* p, int64_t E, float lse, bool reg, const float* logpb, const float* fe, float ce,
                       float cb, float cz, float a, float* dz) {
  const int64_t nc = (E + 15) / 16;
  float se = 0, sf = 0;
  if (reg) {
    // Σ p·logpb and Σ p·fe in double, 8 lanes each half.
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), f0 = _mm512_setzero_pd(), f1 = _mm512_setzero_pd();
    for (int64_t c = 0; c < nc; ++c) {
      const __mmask16 k = lanes(E, c);
      const __m512 pv = _mm512_maskz_loadu_ps(k, p + 16 * c);
      const __m512 lv = _mm512_maskz_loadu_ps(k, logpb + 16 * c);
      const __m512 fv = _mm512_maskz_loadu_ps(k, fe + 16 * c);
      const __m512d plo = _mm512_cvtps_pd(_mm512_castps512_ps256(pv)), phi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(pv, 1));
      s0 = _mm512_add_pd(s0, _mm512_mul_pd(plo, _mm512_cvtps_pd(_mm512_castps512_ps256(lv))));
      s1 = _mm512_add_pd(s1, _mm512_mul_pd(phi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(lv, 1))));
      f0 = _mm512_add_pd(f0, _mm512_mul_pd(plo, _mm512_cvtps_pd(_mm512_castps512_ps256(fv))));
      f1 = _mm512_add_pd(f1, _mm512_mul_pd(phi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(fv, 1))));
    }
    se = (float)_mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    sf = (float)_mm512_reduce_add_pd(_mm512_add_pd(f0, f1));
  }
  const __m512 czl = _mm512_set1_ps(cz * lse), cev = _mm512_set1_ps(ce), cbv = _mm512_set1_ps(cb);
  const __m512 sev = _mm512_set1_ps(se), sfv = _mm512_set1_ps(sf), av = _mm512_set1_ps(a);
  for (int64_t c = 0; c < nc; ++c) {
    const __mmask16 k = lanes(E, c);
    const __m512 pv = _mm512_maskz_loadu_ps(k, p + 16 * c);
    __m512 v = _mm512_mul_ps(czl, pv);
    if (reg) {
      const __m512 lv = _mm512_maskz_loadu_ps(k, logpb + 16 * c);
      const __m512 fv = _mm512_maskz_loadu_ps(k, fe + 16 * c);
      const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(cev, pv), _mm512_sub_ps(lv, sev)),
                                     _mm512_mul_ps(_mm512_mul_ps(cbv, pv), _mm512_sub_ps(fv, sfv)));
      v = _mm512_add_ps(v, t);
    }
    _mm512_mask_storeu_ps(dz + 16 * c, k, _mm512_sub_ps(v, _mm512_mul_ps(pv, av)));
  }
}

}  // namespace avx512
}  // namespace sffn
