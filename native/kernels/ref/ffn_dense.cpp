// Reference dense FFN and Top-K activation (methods.md §1.1–1.2): plain loops, double accumulation.
//   pre = x·W1 (+ b1);  h = act(pre) ⊙ topk_mask(act(pre));  y = h·W2 (+ b2)
// x [T, D], w1 [D, F], b1 [F], w2 [F, D], b2 [D], pre/h [T, F], y [T, D]. Test: test/ops/ffn-dense.test.ts.
#include <algorithm>
#include <functional>
#include <vector>

#include "sffn/moe.h"

namespace sffn {

namespace {
// Mask of row a [F]: entries >= the k-th largest (all ones when k == 0 or k >= F).
std::vector<bool> topk_mask(const double* a, int64_t F, int64_t k) {
  std::vector<bool> m(F, true);
  if (k <= 0 || k >= F) return m;
  std::vector<double> v(a, a + F);
  std::sort(v.begin(), v.end(), std::greater<double>());
  for (int64_t f = 0; f < F; ++f) m[f] = a[f] >= v[k - 1];
  return m;
}
}  // namespace

void ffn_dense_forward_ref(const FfnShape& s, const float* x, const float* w1, const float* b1, const float* w2,
                           const float* b2, float* pre, float* h, float* y) {
  const int64_t T = s.T, D = s.D, F = s.F;
  std::vector<double> a(F), hv(F);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < F; ++f) {
      double v = b1 ? b1[f] : 0.0;
      for (int64_t d = 0; d < D; ++d) v += (double)x[t * D + d] * w1[d * F + f];
      a[f] = v;
      pre[t * F + f] = (float)v;
    }
    // The mask ranks the f32-rounded activations, as the fast kernel sees them.
    for (int64_t f = 0; f < F; ++f) hv[f] = act_forward(s.act, pre[t * F + f]);
    std::vector<bool> m = topk_mask(hv.data(), F, s.topk);
    for (int64_t f = 0; f < F; ++f) {
      hv[f] = m[f] ? act_forward_d(s.act, a[f]) : 0.0;
      h[t * F + f] = (float)hv[f];
    }
    for (int64_t d = 0; d < D; ++d) {
      double v = b2 ? b2[d] : 0.0;
      for (int64_t f = 0; f < F; ++f) v += hv[f] * w2[f * D + d];
      y[t * D + d] = (float)v;
    }
  }
}

void ffn_dense_backward_ref(const FfnShape& s, const float* x, const float* w1, const float* w2, const float* pre,
                            const float* h, const float* dy, float* dx, float* dw1, float* db1, float* dw2,
                            float* db2) {
  const int64_t T = s.T, D = s.D, F = s.F;
  std::vector<double> gw1((size_t)(D * F), 0.0), gw2((size_t)(F * D), 0.0), gb1(F, 0.0), gb2(D, 0.0), dp(F), hv(F);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < F; ++f) hv[f] = act_forward(s.act, pre[t * F + f]);
    std::vector<bool> m = topk_mask(hv.data(), F, s.topk);
    for (int64_t f = 0; f < F; ++f) {
      double dh = 0;
      for (int64_t d = 0; d < D; ++d) dh += (double)dy[t * D + d] * w2[f * D + d];
      dp[f] = m[f] ? dh * act_backward_d(s.act, pre[t * F + f]) : 0.0;
      gb1[f] += dp[f];
      for (int64_t d = 0; d < D; ++d) gw2[f * D + d] += (double)h[t * F + f] * dy[t * D + d];
    }
    for (int64_t d = 0; d < D; ++d) {
      double v = 0;
      for (int64_t f = 0; f < F; ++f) {
        v += dp[f] * w1[d * F + f];
        gw1[d * F + f] += (double)x[t * D + d] * dp[f];
      }
      dx[t * D + d] = (float)v;
      gb2[d] += dy[t * D + d];
    }
  }
  for (int64_t i = 0; i < D * F; ++i) dw1[i] = (float)gw1[i];
  for (int64_t i = 0; i < F * D; ++i) dw2[i] = (float)gw2[i];
  if (db1)
    for (int64_t f = 0; f < F; ++f) db1[f] = (float)gb1[f];
  if (db2)
    for (int64_t d = 0; d < D; ++d) db2[d] = (float)gb2[d];
}

}  // namespace sffn
