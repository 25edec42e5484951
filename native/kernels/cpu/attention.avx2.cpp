// AVX2 softmax row helpers of the blocked attention kernel (see attention_isa.h): a vector e^x instead of one libm
// call per score. e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln 2 (two-part ln 2), e^r by its degree-6 Taylor
// polynomial on |r| ≤ ln2/2 (about 1 ulp), 2^n built in the exponent field; x < −87.3 (below the smallest normal)
// gives 0. Test: test/ops/nn.test.ts (every ISA vs the ref).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "attention_isa.h"

namespace sffn {
namespace avx2 {
namespace {

inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // false for NaN: NaN stays NaN
  // max/min with x as the second operand return x when it is NaN.
  x = _mm256_min_ps(_mm256_set1_ps(88.37f), _mm256_max_ps(lo, x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // n ∈ [−126, 127] after the clamp: 2^n is a normal float, built in the exponent field.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

inline __m256i tail_mask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float row_max(const float* x, int64_t n, float init) {
  __m256 m = _mm256_set1_ps(init);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + c));
  float r = hmax(m);
  for (; c < n; c++) r = x[c] > r ? x[c] : r;
  return r;
}

float exp_sum(float* x, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + c), s));
    _mm256_storeu_ps(x + c, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (c < n) {
    const __m256i k = tail_mask(n - c);
    // Lanes past n load 0 and are masked out of the store and the sum.
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(k), exp8(_mm256_sub_ps(_mm256_maskload_ps(x + c, k), s)));
    _mm256_maskstore_ps(x + c, k, e);
    acc = _mm256_add_ps(acc, e);
  }
  return hsum(acc);
}

}  // namespace

AttnRowOps attn_row_ops() { return AttnRowOps{row_max, exp_sum}; }

}  // namespace avx2
}  // namespace sffn
