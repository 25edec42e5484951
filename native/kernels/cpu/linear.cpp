// Linear map on the CPU: y [T, N] = x [T, K] · Wᵀ + b through the shared GEMM; backward dx = dy·W (GEMM),
// dW = dyᵀ·x (GEMM), db = column sums of dy (columns split over threads, rows summed in order: deterministic).
// Spec: kernels/ref/linear.cpp. Test: test/ops/nn.test.ts.
#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/nn.h"

namespace sffn {

void linear_forward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  if (T == 0 || N == 0) return;
  gemm_f32(false, true, T, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
  if (b)
    parallel_for(T, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; t++)
        for (int64_t n = 0; n < N; n++) y[t * N + n] += b[n];
    }, 64);
}

void linear_backward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db) {
  if (dx && T > 0 && K > 0) gemm_f32(false, false, T, K, N, 1.0f, dy, N, w, K, 0.0f, dx, K);
  if (dw && N > 0 && K > 0) gemm_f32(true, false, N, K, T, 1.0f, dy, N, x, K, 0.0f, dw, K);
  if (db)
    parallel_for(N, [&](int64_t n0, int64_t n1, int) {
      for (int64_t n = n0; n < n1; n++) db[n] = 0.0f;
      for (int64_t t = 0; t < T; t++)
        for (int64_t n = n0; n < n1; n++) db[n] += dy[t * N + n];
    }, 16);
}

}  // namespace sffn
