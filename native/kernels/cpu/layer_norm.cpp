// Layer norm on the CPU: rows in parallel for y and dx; dg, db by column blocks walking rows in order (one owner per
// element: deterministic for any thread count). Statistics in double. Spec: kernels/ref/layer_norm.cpp.
// Test: test/ops/nn.test.ts.
#include <cmath>

#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {

void layer_norm_forward(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                        float* mean, float* rstd) {
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xt = x + t * D;
      double m = 0;
      for (int64_t d = 0; d < D; d++) m += xt[d];
      m /= (double)D;
      double v = 0;
      for (int64_t d = 0; d < D; d++) v += (xt[d] - m) * (xt[d] - m);
      v /= (double)D;
      const float mf = (float)m;
      const float r = (float)(1.0 / std::sqrt(v + (double)eps));
      float* yt = y + t * D;
      for (int64_t d = 0; d < D; d++) yt[d] = (xt[d] - mf) * r * g[d] + b[d];
      mean[t] = mf;
      rstd[t] = r;
    }
  }, 16);
}

void layer_norm_backward(int64_t T, int64_t D, const float* x, const float* g, const float* mean, const float* rstd,
                         const float* dy, float* dx, float* dg, float* db) {
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xt = x + t * D;
      const float* dyt = dy + t * D;
      const float m = mean[t], r = rstd[t];
      double s1 = 0, s2 = 0;
      for (int64_t d = 0; d < D; d++) {
        const float xh = (xt[d] - m) * r;
        const float dxh = dyt[d] * g[d];
        s1 += dxh;
        s2 += (double)dxh * xh;
      }
      const float a = (float)(s1 / (double)D), c = (float)(s2 / (double)D);
      float* dxt = dx + t * D;
      for (int64_t d = 0; d < D; d++) {
        const float xh = (xt[d] - m) * r;
        dxt[d] = r * (dyt[d] * g[d] - a - xh * c);
      }
    }
  }, 16);
  parallel_for(D, [&](int64_t d0, int64_t d1, int) {
    for (int64_t d = d0; d < d1; d++) {
      dg[d] = 0.0f;
      db[d] = 0.0f;
    }
    for (int64_t t = 0; t < T; t++) {
      const float* xt = x + t * D;
      const float* dyt = dy + t * D;
      const float m = mean[t], r = rstd[t];
      for (int64_t d = d0; d < d1; d++) {
        dg[d] += dyt[d] * ((xt[d] - m) * r);
        db[d] += dyt[d];
      }
    }
  }, 16);
}

}  // namespace sffn
