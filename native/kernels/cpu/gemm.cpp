// CPU GEMM (placeholder implementation: correct, simple, threaded over rows of C).
// To be replaced by packing + register-blocked AVX-512/AVX2 micro-kernels (see the gemm issue).
#include <vector>

#include "sffn/core.h"
#include "sffn/gemm.h"

namespace sffn {

void gemm_f32_rows(bool a_trans, bool b_trans, int64_t M, int64_t N, int64_t K, float alpha, const float* const* a_rows,
                   const float* const* b_rows, float beta, float* const* c_rows) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = c_rows[i];
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        float av = a_trans ? a_rows[k][i] : a_rows[i][k];
        float bv = b_trans ? b_rows[j][k] : b_rows[k][j];
        acc += av * bv;
      }
      c[j] = beta == 0.0f ? alpha * acc : alpha * acc + beta * c[j];
    }
  }
}

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t stride_a,
              int64_t stride_b, int64_t stride_c) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* a = A + b * stride_a;
    const float* bm = B + b * stride_b;
    float* c = C + b * stride_c;
    std::vector<const float*> arows(trans_a ? K : M), brows(trans_b ? N : K);
    for (size_t r = 0; r < arows.size(); ++r) arows[r] = a + (int64_t)r * lda;
    for (size_t r = 0; r < brows.size(); ++r) brows[r] = bm + (int64_t)r * ldb;
    parallel_for(
        M,
        [&](int64_t i0, int64_t i1, int) {
          std::vector<float*> crows(i1 - i0);
          for (int64_t i = i0; i < i1; ++i) crows[i - i0] = c + i * ldc;
          if (trans_a) {
            // Column slice of A^T: shift each k-row pointer by i0.
            std::vector<const float*> ar(K);
            for (int64_t k = 0; k < K; ++k) ar[k] = arows[k] + i0;
            gemm_f32_rows(true, trans_b, i1 - i0, N, K, alpha, ar.data(), brows.data(), beta, crows.data());
          } else {
            gemm_f32_rows(false, trans_b, i1 - i0, N, K, alpha, arows.data() + i0, brows.data(), beta, crows.data());
          }
        },
        8);
  }
}

}  // namespace sffn
