// Activations for the CPU FFN / MoE kernels: ReLU, GELU (erf form, as PyTorch's default) and SiLU, forward and
// derivative, written branch-free over plain float arithmetic so that the row loops below auto-vectorise at the
// baseline ISA (no libm calls inside the loops).
//   exp: Cody–Waite reduction x = n·ln2 + r, degree-6 Taylor polynomial on |r| <= ln2/2, 2^n from the exponent
//        bits (relative error ~2e-7 over the f32 range);
//   erf: Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
// The float64 references (kernels/ref) use std::erf / std::exp; tests compare within f32 tolerances.
#pragma once
#include <cstdint>
#include <cstring>

#include "sffn/moe.h"

namespace sffn {
namespace act_detail {

inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round x·log2(e) to the nearest integer with the 1.5·2^23 trick (vectorises as an add and a subtract).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float fast_erf(float x) {
  const float ax = x < 0 ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * fast_exp(-ax * ax);
  return x < 0 ? -y : y;
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float relu(float a) { return a > 0 ? a : 0.0f; }
inline float gelu(float a) { return 0.5f * a * (1.0f + fast_erf(a * kInvSqrt2)); }
inline float silu(float a) { return a / (1.0f + fast_exp(-a)); }
inline float relu_grad(float a) { return a > 0 ? 1.0f : 0.0f; }
inline float gelu_grad(float a) {
  return 0.5f * (1.0f + fast_erf(a * kInvSqrt2)) + a * kInvSqrt2Pi * fast_exp(-0.5f * a * a);
}
inline float silu_grad(float a) {
  const float s = 1.0f / (1.0f + fast_exp(-a));
  return s * (1.0f + a * (1.0f - s));
}

}  // namespace act_detail

// h[i] = scale · act(pre[i]).
inline void act_rows(Act act, const float* pre, float* h, int64_t n, float scale) {
  using namespace act_detail;
  switch (act) {
    case Act::Relu:
      for (int64_t i = 0; i < n; ++i) h[i] = scale * relu(pre[i]);
      break;
    case Act::Gelu:
      for (int64_t i = 0; i < n; ++i) h[i] = scale * gelu(pre[i]);
      break;
    case Act::Silu:
      for (int64_t i = 0; i < n; ++i) h[i] = scale * silu(pre[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) h[i] = scale * pre[i];
  }
}

// d[i] = scale · d[i] · act'(pre[i]) (in place).
inline void act_grad_rows(Act act, const float* pre, float* d, int64_t n, float scale) {
  using namespace act_detail;
  switch (act) {
    case Act::Relu:
      for (int64_t i = 0; i < n; ++i) d[i] = pre[i] > 0 ? scale * d[i] : 0.0f;
      break;
    case Act::Gelu:
      for (int64_t i = 0; i < n; ++i) d[i] = scale * d[i] * gelu_grad(pre[i]);
      break;
    case Act::Silu:
      for (int64_t i = 0; i < n; ++i) d[i] = scale * d[i] * silu_grad(pre[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) d[i] = scale * d[i];
  }
}

namespace act_detail {
template <class F>
inline float dot_with(F f, const float* pre, const float* d, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += d[i + l] * f(pre[i + l]);
  float s = 0;
  for (; i < n; ++i) s += d[i] * f(pre[i]);
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}
}  // namespace act_detail

// Σ_i d[i] · act(pre[i]) with 16 interleaved partial sums (a fixed order, so it vectorises deterministically).
inline float act_dot(Act act, const float* pre, const float* d, int64_t n) {
  using namespace act_detail;
  switch (act) {
    case Act::Relu: return dot_with(relu, pre, d, n);
    case Act::Gelu: return dot_with(gelu, pre, d, n);
    case Act::Silu: return dot_with(silu, pre, d, n);
    default: return dot_with([](float a) { return a; }, pre, d, n);
  }
}

}  // namespace sffn
