// Reference GEMM: the specification of sffn::gemm_f32 in plain loops with double accumulation.
#include "sffn/gemm.h"

namespace sffn {

void gemm_f32_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch,
                  int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* a = A + b * stride_a;
    const float* bm = B + b * stride_b;
    float* c = C + b * stride_c;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          double av = trans_a ? a[k * lda + i] : a[i * lda + k];
          double bv = trans_b ? bm[j * ldb + k] : bm[k * ldb + j];
          acc += av * bv;
        }
        float& out = c[i * ldc + j];
        out = beta == 0.0f ? (float)(alpha * acc) : (float)(alpha * acc + (double)beta * out);
      }
    }
  }
}

}  // namespace sffn
