// Reference causal self-attention with rotary positions (the spec), double accumulation, single thread.
//   per sequence b, head h, positions i, j ≤ i:
//     q_i, k_i rotated pairwise: (u, w) at pair m ↦ (u·cos − w·sin, u·sin + w·cos), angle = i·10000^(−2m/dh)
//     s_ij = q_i·k_j / √dh;  P_i = softmax_j≤i(s_i);  out_i = Σ_j P_ij v_j
//   backward: dv_j = Σ_i P_ij dout_i;  dP_ij = dout_i·v_j;  ds_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)
//             dq_i = Σ_j ds_ij k_j / √dh;  dk_j = Σ_i ds_ij q_i / √dh;  then the inverse rotation (angle → −angle).
// qkv [B·S, 3D] holds q | k | v; head h of each uses columns h·dh .. h·dh + dh − 1. Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cmath>
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
                           float* kr, float* p) {
  const int64_t D = H * dh;
  const double scale = 1.0 / std::sqrt((double)dh);
  std::vector<double> s((size_t)S);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      float* Q = qr + (b * H + h) * S * dh;
      float* Kr = kr + (b * H + h) * S * dh;
      float* P = p + (b * H + h) * S * S;
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
        for (int64_t j = 0; j < S; j++) P[i * S + j] = j <= i ? (float)(std::exp(s[(size_t)j] - mx) / z) : 0.0f;
        for (int64_t e = 0; e < dh; e++) {
          double o = 0;
          for (int64_t j = 0; j <= i; j++) o += (double)P[i * S + j] * qkv[(b * S + j) * 3 * D + 2 * D + h * dh + e];
          out[(b * S + i) * D + h * dh + e] = (float)o;
        }
      }
    }
}

void attention_backward_ref(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* qr,
                            const float* kr, const float* p, const float* dout, float* dqkv) {
  const int64_t D = H * dh;
  const double scale = 1.0 / std::sqrt((double)dh);
  std::vector<double> dp((size_t)S), ds((size_t)(S * S));
  std::vector<float> dq((size_t)dh), dk((size_t)dh);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      const float* Q = qr + (b * H + h) * S * dh;
      const float* Kr = kr + (b * H + h) * S * dh;
      const float* P = p + (b * H + h) * S * S;
      auto V = [&](int64_t j, int64_t e) { return (double)qkv[(b * S + j) * 3 * D + 2 * D + h * dh + e]; };
      auto dO = [&](int64_t i, int64_t e) { return (double)dout[(b * S + i) * D + h * dh + e]; };
      for (int64_t i = 0; i < S; i++) {
        double dot = 0;
        for (int64_t j = 0; j <= i; j++) {
          double d = 0;
          for (int64_t e = 0; e < dh; e++) d += dO(i, e) * V(j, e);
          dp[(size_t)j] = d;
          dot += (double)P[i * S + j] * d;
        }
        for (int64_t j = 0; j < S; j++) ds[(size_t)(i * S + j)] = j <= i ? (double)P[i * S + j] * (dp[(size_t)j] - dot) : 0.0;
      }
      for (int64_t i = 0; i < S; i++) {
        // dv_i = Σ_{r ≥ i} P_ri dout_r
        for (int64_t e = 0; e < dh; e++) {
          double v = 0;
          for (int64_t r = i; r < S; r++) v += (double)P[r * S + i] * dO(r, e);
          dqkv[(b * S + i) * 3 * D + 2 * D + h * dh + e] = (float)v;
        }
        for (int64_t e = 0; e < dh; e++) {
          double a = 0, c = 0;
          for (int64_t j = 0; j <= i; j++) a += ds[(size_t)(i * S + j)] * Kr[j * dh + e];
          for (int64_t r = i; r < S; r++) c += ds[(size_t)(r * S + i)] * Q[r * dh + e];
          dq[(size_t)e] = (float)(a * scale);
          dk[(size_t)e] = (float)(c * scale);
        }
        rope_ref(dh, i, dq.data(), dqkv + (b * S + i) * 3 * D + h * dh, -1.0);
        rope_ref(dh, i, dk.data(), dqkv + (b * S + i) * 3 * D + D + h * dh, -1.0);
      }
    }
}

}  // namespace sffn
