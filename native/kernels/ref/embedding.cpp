// Reference embedding lookup (the spec): y[t] = W[ids[t]]; dW[v] = Σ_{t: ids[t] = v} dy[t] (double, in token order).
// Test: test/ops/nn.test.ts.
#include <cstddef>
#include <vector>

#include "sffn/nn.h"

namespace sffn {

void embedding_forward_ref(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y) {
  (void)V;
  for (int64_t t = 0; t < T; t++)
    for (int64_t d = 0; d < D; d++) y[t * D + d] = w[(int64_t)ids[t] * D + d];
}

void embedding_backward_ref(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw) {
  std::vector<double> acc((size_t)(V * D), 0.0);
  for (int64_t t = 0; t < T; t++)
    for (int64_t d = 0; d < D; d++) acc[(size_t)((int64_t)ids[t] * D + d)] += dy[t * D + d];
  for (int64_t i = 0; i < V * D; i++) dw[i] = (float)acc[(size_t)i];
}

}  // namespace sffn
