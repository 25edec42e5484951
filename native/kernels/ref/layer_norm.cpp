// Reference layer norm (the spec), double precision:
//   μ = mean(x_t), σ² = mean((x_t − μ)²), r = 1/√(σ² + eps), x̂ = (x − μ)·r, y = x̂·g + b
//   backward: dĝ = dy·g; dx = r·(dĝ − mean(dĝ) − x̂·mean(dĝ·x̂)); dg = Σ_t dy·x̂; db = Σ_t dy.
// Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cmath>
#include <vector>

#include "sffn/nn.h"

namespace sffn {

void layer_norm_forward_ref(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                            float* mean, float* rstd) {
  for (int64_t t = 0; t < T; t++) {
    const float* xt = x + t * D;
    double m = 0;
    for (int64_t d = 0; d < D; d++) m += xt[d];
    m /= (double)D;
    double v = 0;
    for (int64_t d = 0; d < D; d++) v += (xt[d] - m) * (xt[d] - m);
    v /= (double)D;
    double r = 1.0 / std::sqrt(v + (double)eps);
    for (int64_t d = 0; d < D; d++) y[t * D + d] = (float)((xt[d] - m) * r * g[d] + b[d]);
    mean[t] = (float)m;
    rstd[t] = (float)r;
  }
}

void layer_norm_backward_ref(int64_t T, int64_t D, const float* x, const float* g, const float* mean,
                             const float* rstd, const float* dy, float* dx, float* dg, float* db) {
  std::vector<double> ag((size_t)D, 0.0), ab((size_t)D, 0.0);
  for (int64_t t = 0; t < T; t++) {
    const float* xt = x + t * D;
    const float* dyt = dy + t * D;
    double s1 = 0, s2 = 0;
    for (int64_t d = 0; d < D; d++) {
      double xh = ((double)xt[d] - mean[t]) * rstd[t];
      double dxh = (double)dyt[d] * g[d];
      s1 += dxh;
      s2 += dxh * xh;
      ag[(size_t)d] += (double)dyt[d] * xh;
      ab[(size_t)d] += dyt[d];
    }
    s1 /= (double)D;
    s2 /= (double)D;
    for (int64_t d = 0; d < D; d++) {
      double xh = ((double)xt[d] - mean[t]) * rstd[t];
      double dxh = (double)dyt[d] * g[d];
      dx[t * D + d] = (float)(rstd[t] * (dxh - s1 - xh * s2));
    }
  }
  for (int64_t d = 0; d < D; d++) {
    dg[d] = (float)ag[(size_t)d];
    db[d] = (float)ab[(size_t)d];
  }
}

}  // namespace sffn
