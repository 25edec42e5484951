// Embedding lookup on the CPU: y[t] = W[ids[t]]. Backward dW[v] = Σ_{t: ids[t] = v} dy[t]: each thread owns a
// column block of dW and walks the tokens in order (one owner per element, no atomics, thread-count independent).
// Spec: kernels/ref/embedding.cpp. Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cstring>

#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {

void embedding_forward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y) {
  (void)V;
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) std::memcpy(y + t * D, w + (int64_t)ids[t] * D, (size_t)D * sizeof(float));
  }, 64);
}

void embedding_backward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw) {
  parallel_for(D, [&](int64_t d0, int64_t d1, int) {
    for (int64_t v = 0; v < V; v++)
      for (int64_t d = d0; d < d1; d++) dw[v * D + d] = 0.0f;
    for (int64_t t = 0; t < T; t++) {
      float* row = dw + (int64_t)ids[t] * D;
      const float* g = dy + t * D;
      for (int64_t d = d0; d < d1; d++) row[d] += g[d];
    }
  }, 16);
}

}  // namespace sffn
