// Reference causal self-attention with rotary positions (the spec), double accumulation, single thread.
//   per sequence b, head h, positions i, j ≤ i:
//     q_i, k_i rotated pairwise: (u, w) at pair m ↦ (u·cos − w·sin, u·sin + w·cos), angle = i·10000^(−2m/dh)
//     s_ij = q_i·k_j / √dh;  L_i = log Σ_{j≤i} e^{s_ij} (saved);  P_ij = e^{s_ij − L_i};  out_i = Σ_j P_ij v_j
//   backward (P recomputed from the saved qr, kr, L): dv_j = Σ_i P_ij dout_i;  dP_ij = dout_i·v_j;
//             ds_ij = P_ij (dP_ij − Σ_k P_ik dP_ik);  dq_i = Σ_j ds_ij k_j / √dh;  dk_j = Σ_i ds_ij q_i / √dh;
//             then the inverse rotation (angle → −angle).
// The backward takes `out` for the same interface as the fast kernel (which gets Σ_k P_ik dP_ik as dout_i·out_i);
// the spec computes that row term from its definition and does not read `out`.
// qkv [B·S, 3D] holds q | k | v; head h of each uses columns h·dh .. h·dh + dh − 1. Memory: O(S·dh) per head.
// Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cmath>
#include <algorithm>
#include <vector>

#include "sffn/nn.h"

namespace sffn {
namespace {

void rope_ref(int64_t dh, int64_t pos, const float* in, float* out, double sign) {
  for (int64_t m = 0; m < dh / 2; m++) {
    double theta = std::pow(10000.0, -2.0 * (double)m / (double)dh);
    double a = sign * (double)pos * theta;
    double c = std::cos(a), s = std::sin(a);
    double u = in[2 * m], w = in[2 * m + 1];
    out[2 * m] = (float)(u * c - w * s);
    out[2 * m + 1] = (float)(u * s + w * c);
  }
}

}  // namespace

void attention_forward_ref(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr,
                           float* kr, float* lse) {
  const int64_t D = H * dh;
  const double scale = 1.0 / std::sqrt((double)dh);
  std::vector<double> s((size_t)S);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      float* Q = qr + (b * H + h) * S * dh;
      float* Kr = kr + (b * H + h) * S * dh;
      float* L = lse + (b * H + h) * S;
      for (int64_t i = 0; i < S; i++) {
        const float* row = qkv + (b * S + i) * 3 * D;
        rope_ref(dh, i, row + h * dh, Q + i * dh, 1.0);
        rope_ref(dh, i, row + D + h * dh, Kr + i * dh, 1.0);
      }
      for (int64_t i = 0; i < S; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; j++) {
          double d = 0;
          for (int64_t e = 0; e < dh; e++) d += (double)Q[i * dh + e] * Kr[j * dh + e];
          s[(size_t)j] = d * scale;
          mx = s[(size_t)j] > mx ? s[(size_t)j] : mx;
        }
        double z = 0;
        for (int64_t j = 0; j <= i; j++) z += std::exp(s[(size_t)j] - mx);
        L[i] = (float)(mx + std::log(z));
        for (int64_t j = 0; j <= i; j++) s[(size_t)j] = std::exp(s[(size_t)j] - mx) / z;  // P_ij
        for (int64_t e = 0; e < dh; e++) {
          double o = 0;
          for (int64_t j = 0; j <= i; j++) o += s[(size_t)j] * qkv[(b * S + j) * 3 * D + 2 * D + h * dh + e];
          out[(b * S + i) * D + h * dh + e] = (float)o;
        }
      }
    }
}

void attention_backward_ref(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                            const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv) {
  (void)out;  // see the header: the spec computes the row term from its definition
  const int64_t D = H * dh;
  const double scale = 1.0 / std::sqrt((double)dh);
  std::vector<double> p((size_t)S), ds((size_t)S), dk((size_t)(S * dh)), dv((size_t)(S * dh));
  std::vector<float> dq1((size_t)dh), dk1((size_t)dh);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      const float* Q = qr + (b * H + h) * S * dh;
      const float* Kr = kr + (b * H + h) * S * dh;
      const float* L = lse + (b * H + h) * S;
      auto V = [&](int64_t j, int64_t e) { return (double)qkv[(b * S + j) * 3 * D + 2 * D + h * dh + e]; };
      auto dO = [&](int64_t i, int64_t e) { return (double)dout[(b * S + i) * D + h * dh + e]; };
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (int64_t i = 0; i < S; i++) {
        // Row i: P_i· recomputed from the saved log-sum-exp, dP_i·, the row term, dS_i·.
        double dot = 0;
        for (int64_t j = 0; j <= i; j++) {
          double sc = 0, dp = 0;
          for (int64_t e = 0; e < dh; e++) {
            sc += (double)Q[i * dh + e] * Kr[j * dh + e];
            dp += dO(i, e) * V(j, e);
          }
          p[(size_t)j] = std::exp(sc * scale - (double)L[i]);
          ds[(size_t)j] = dp;
          dot += p[(size_t)j] * dp;
        }
        for (int64_t j = 0; j <= i; j++) ds[(size_t)j] = p[(size_t)j] * (ds[(size_t)j] - dot);
        for (int64_t e = 0; e < dh; e++) {
          double a = 0;
          for (int64_t j = 0; j <= i; j++) a += ds[(size_t)j] * Kr[j * dh + e];
          dq1[(size_t)e] = (float)(a * scale);
        }
        rope_ref(dh, i, dq1.data(), dqkv + (b * S + i) * 3 * D + h * dh, -1.0);
        for (int64_t j = 0; j <= i; j++)
          for (int64_t e = 0; e < dh; e++) {
            dk[(size_t)(j * dh + e)] += ds[(size_t)j] * Q[i * dh + e];
            dv[(size_t)(j * dh + e)] += p[(size_t)j] * dO(i, e);
          }
      }
      for (int64_t j = 0; j < S; j++) {
        for (int64_t e = 0; e < dh; e++) {
          dk1[(size_t)e] = (float)(dk[(size_t)(j * dh + e)] * scale);
          dqkv[(b * S + j) * 3 * D + 2 * D + h * dh + e] = (float)dv[(size_t)(j * dh + e)];
        }
        rope_ref(dh, j, dk1.data(), dqkv + (b * S + j) * 3 * D + D + h * dh, -1.0);
      }
    }
}

}  // namespace sffn
