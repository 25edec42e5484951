// Reference cross-entropy (the spec): lse_t = log Σ_v exp(logits[t, v]); loss = (1/T) Σ_t (lse_t − logits[t, y_t]);
// dlogits[t, v] = dloss/T · (exp(logits[t, v] − lse_t) − [v = y_t]). Double precision. Test: test/ops/nn.test.ts.
#include <cmath>

#include "sffn/nn.h"

namespace sffn {

double cross_entropy_forward_ref(int64_t T, int64_t V, const float* logits, const int32_t* y, float* lse) {
  double total = 0;
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * V;
    double mx = l[0];
    for (int64_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += std::exp((double)l[v] - mx);
    double z = mx + std::log(s);
    lse[t] = (float)z;
    total += z - l[y[t]];
  }
  return T ? total / (double)T : 0.0;
}

void cross_entropy_backward_ref(int64_t T, int64_t V, const float* logits, const int32_t* y, const float* lse,
                                float dloss, float* dlogits) {
  (void)lse;
  double scale = T ? (double)dloss / (double)T : 0.0;
  for (int64_t t = 0; t < T; t++) {
    const float* l = logits + t * V;
    double mx = l[0];
    for (int64_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += std::exp((double)l[v] - mx);
    for (int64_t v = 0; v < V; v++)
      dlogits[t * V + v] = (float)(scale * (std::exp((double)l[v] - mx) / s - (v == y[t] ? 1.0 : 0.0)));
  }
}

}  // namespace sffn
