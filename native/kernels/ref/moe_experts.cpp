// Reference MoE expert block: the specification of moe_experts_forward/backward, straight from the slot list
// in plain loops with double accumulation, single thread. methods.md §1.3 (forward), §1.4 (backward).
//   pre[r] = x[t]·W1[e] (+ b1[e]);  hs[r] = g·act(pre[r]);  y[t] = Σ_j hs[rank(t,j)]·W2[e] (+ b2)
// x [T, D], w1 [E, D, G], b1 [E, G], w2 [E, G, D], b2 [D], pre/hs [S, G] (S = offsets[E]), y [T, D].
// Test: test/ops/moe-experts.test.ts.
#include <vector>

#include "sffn/moe.h"

namespace sffn {

void moe_experts_forward_ref(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                             const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y) {
  const int64_t T = s.T, D = s.D, E = s.E, K = s.K, G = s.G;
  std::vector<double> acc((size_t)(T * D), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) acc[t * D + d] = b2 ? b2[d] : 0.0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t rk = r.offsets[e]; rk < r.offsets[e + 1]; ++rk) {
      int64_t slot = r.sorted_slots[rk], t = slot / K;
      double g = r.gates[slot];
      for (int64_t j = 0; j < G; ++j) {
        double a = b1 ? b1[e * G + j] : 0.0;
        for (int64_t d = 0; d < D; ++d) a += (double)x[t * D + d] * w1[(e * D + d) * G + j];
        pre[rk * G + j] = (float)a;
        hs[rk * G + j] = (float)(g * act_forward_d(s.act, a));
      }
    }
  // Down-projection and K-sum from the (double) hidden values, token by token in slot order.
  std::vector<double> h(G);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      int64_t rk = r.slot_rank[t * K + k];
      if (rk < 0) continue;
      int64_t slot = t * K + k;
      int64_t e = 0;
      while (r.offsets[e + 1] <= rk) ++e;
      double g = r.gates[slot];
      for (int64_t j = 0; j < G; ++j) {
        double a = b1 ? b1[e * G + j] : 0.0;
        for (int64_t d = 0; d < D; ++d) a += (double)x[t * D + d] * w1[(e * D + d) * G + j];
        h[j] = g * act_forward_d(s.act, a);
      }
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < G; ++j) o += h[j] * w2[(e * G + j) * D + d];
        acc[t * D + d] += o;
      }
    }
  for (int64_t i = 0; i < T * D; ++i) y[i] = (float)acc[i];
}

void moe_experts_backward_ref(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                              const float* w2, const float* pre, const float* hs, const float* dy, float* dx,
                              float* dw1, float* db1, float* dw2, float* db2, float* dgates) {
  const int64_t T = s.T, D = s.D, E = s.E, K = s.K, G = s.G;
  std::vector<double> gx((size_t)(T * D), 0.0), gw1((size_t)(E * D * G), 0.0), gw2((size_t)(E * G * D), 0.0),
      gb1((size_t)(E * G), 0.0), dh(G);
  for (int64_t i = 0; i < T * K; ++i) dgates[i] = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t rk = r.offsets[e]; rk < r.offsets[e + 1]; ++rk) {
      int64_t slot = r.sorted_slots[rk], t = slot / K;
      double g = r.gates[slot], dgate = 0;
      for (int64_t j = 0; j < G; ++j) {
        double a = pre[rk * G + j], d = 0;
        for (int64_t c = 0; c < D; ++c) d += (double)dy[t * D + c] * w2[(e * G + j) * D + c];
        dgate += d * act_forward_d(s.act, a);
        dh[j] = g * d * act_backward_d(s.act, a);  // ∂L/∂pre
        for (int64_t c = 0; c < D; ++c) gw2[(e * G + j) * D + c] += (double)hs[rk * G + j] * dy[t * D + c];
        gb1[e * G + j] += dh[j];
      }
      dgates[slot] = (float)dgate;
      for (int64_t d = 0; d < D; ++d) {
        double v = 0;
        for (int64_t j = 0; j < G; ++j) {
          v += dh[j] * w1[(e * D + d) * G + j];
          gw1[(e * D + d) * G + j] += (double)x[t * D + d] * dh[j];
        }
        gx[t * D + d] += v;
      }
    }
  for (int64_t i = 0; i < T * D; ++i) dx[i] = (float)gx[i];
  for (int64_t i = 0; i < E * D * G; ++i) dw1[i] = (float)gw1[i];
  for (int64_t i = 0; i < E * G * D; ++i) dw2[i] = (float)gw2[i];
  if (db1)
    for (int64_t i = 0; i < E * G; ++i) db1[i] = (float)gb1[i];
  if (db2)
    for (int64_t d = 0; d < D; ++d) {
      double v = 0;
      for (int64_t t = 0; t < T; ++t) v += dy[t * D + d];
      db2[d] = (float)v;
    }
}

}  // namespace sffn
