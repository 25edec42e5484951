// Cross-entropy on the CPU: tokens in parallel, per-token losses summed in token order in double (thread-count
// independent). Spec: kernels/ref/cross_entropy.cpp. Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cmath>

#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {

double cross_entropy_forward(int64_t T, int64_t V, const float* logits, const int32_t* y, float* lse) {
  if (T == 0) return 0.0;
  double* per = static_cast<double*>(scratch(0, 0, (size_t)T * sizeof(double)));
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const float* l = logits + t * V;
      float mx = l[0];
      for (int64_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
      double s = 0;
      for (int64_t v = 0; v < V; v++) s += std::exp((double)(l[v] - mx));
      const double z = (double)mx + std::log(s);
      lse[t] = (float)z;
      per[t] = z - (double)l[y[t]];
    }
  }, 16);
  double total = 0;
  for (int64_t t = 0; t < T; t++) total += per[t];
  return total / (double)T;
}

void cross_entropy_backward(int64_t T, int64_t V, const float* logits, const int32_t* y, const float* lse, float dloss,
                            float* dlogits) {
  if (T == 0) return;
  const float scale = dloss / (float)T;
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const float* l = logits + t * V;
      float* g = dlogits + t * V;
      const float z = lse[t];
      for (int64_t v = 0; v < V; v++) g[v] = scale * std::exp(l[v] - z);
      g[y[t]] -= scale;
    }
  }, 16);
}

}  // namespace sffn
