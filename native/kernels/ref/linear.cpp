// Reference linear map (the spec): y [T, N] = x [T, K] · Wᵀ + b; backward dx = dy·W, dW = dyᵀ·x, db = Σ_t dy.
// Plain loops with double accumulation, single thread. Test: test/ops/nn.test.ts.
#include "sffn/nn.h"

namespace sffn {

void linear_forward_ref(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  for (int64_t t = 0; t < T; t++)
    for (int64_t n = 0; n < N; n++) {
      double s = b ? b[n] : 0.0;
      for (int64_t k = 0; k < K; k++) s += (double)x[t * K + k] * w[n * K + k];
      y[t * N + n] = (float)s;
    }
}

void linear_backward_ref(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                         float* dw, float* db) {
  if (dx)
    for (int64_t t = 0; t < T; t++)
      for (int64_t k = 0; k < K; k++) {
        double s = 0;
        for (int64_t n = 0; n < N; n++) s += (double)dy[t * N + n] * w[n * K + k];
        dx[t * K + k] = (float)s;
      }
  if (dw)
    for (int64_t n = 0; n < N; n++)
      for (int64_t k = 0; k < K; k++) {
        double s = 0;
        for (int64_t t = 0; t < T; t++) s += (double)dy[t * N + n] * x[t * K + k];
        dw[n * K + k] = (float)s;
      }
  if (db)
    for (int64_t n = 0; n < N; n++) {
      double s = 0;
      for (int64_t t = 0; t < T; t++) s += dy[t * N + n];
      db[n] = (float)s;
    }
}

}  // namespace sffn
