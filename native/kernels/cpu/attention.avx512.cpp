// AVX-512 softmax row helpers of the blocked attention kernel (see attention_isa.h): a vector e^x with
// scalef (2^n·p(r) in one instruction, underflow to 0 handled by the hardware) instead of one libm call per score.
// e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln 2 (two-part ln 2), e^r by its degree-6 Taylor polynomial on
// |r| ≤ ln2/2 (truncation ≤ 1.2e-7 relative, about 1 ulp). Test: test/ops/nn.test.ts (every ISA vs the ref).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "attention_isa.h"

namespace sffn {
namespace avx512 {
namespace {

inline __m512 exp16(__m512 x) {
  // Clamp: below −104 the result is 0 after scalef anyway, above 88.7 it overflows to +inf. max/min with x as the
  // second operand return x when it is NaN, so NaN scores stay NaN.
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2 high part (exact in n·hi)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);  // ln 2 low part
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }

float row_max(const float* x, int64_t n, float init) {
  __m512 m = _mm512_set1_ps(init);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + c));
  if (c < n) m = _mm512_mask_max_ps(m, tail_mask(n - c), m, _mm512_maskz_loadu_ps(tail_mask(n - c), x + c));
  return _mm512_reduce_max_ps(m);
}

float exp_sum(float* x, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + c), s));
    _mm512_storeu_ps(x + c, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (c < n) {
    const __mmask16 k = tail_mask(n - c);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), s));
    _mm512_mask_storeu_ps(x + c, k, e);
    acc = _mm512_mask_add_ps(acc, k, acc, e);
  }
  // Fixed-order reduction: the 16 lanes in a tree.
  return _mm512_reduce_add_ps(acc);
}

}  // namespace

AttnRowOps attn_row_ops() { return AttnRowOps{row_max, exp_sum}; }

}  // namespace avx512
}  // namespace sffn
