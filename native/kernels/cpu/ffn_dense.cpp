// Dense FFN on the CPU (the baseline every sparse layer is measured against) and Top-K activation
// (methods.md §1.1–1.2):  pre = x·W1 (+ b1);  h = act(pre), optionally keeping only the topk largest entries of
// each row (entries >= the topk-th largest; the mask is a constant in backward);  y = h·W2 (+ b2).
// x [T, D], w1 [D, F], b1 [F], w2 [F, D], b2 [D], pre/h/dpre [T, F], y [T, D]. Built on sffn::gemm_f32.
// Spec: kernels/ref/ffn_dense.cpp. Test: test/ops/ffn-dense.test.ts. Benchmark: npm run bench -- moe.
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/moe.h"
#include "act.h"

namespace sffn {

namespace {
constexpr int kScratchSlot = 7;

// The topk-th largest value of row v [F] (a copy in tmp is partially sorted).
float kth_largest(const float* v, int64_t F, int64_t k, float* tmp) {
  std::copy(v, v + F, tmp);
  std::nth_element(tmp, tmp + (k - 1), tmp + F, [](float a, float b) { return a > b; });
  return tmp[k - 1];
}

// out[c] = Σ_t a[t, c] over T rows of width C, in token order per column (deterministic), columns in parallel.
void column_sums(const float* a, int64_t T, int64_t C, float* out) {
  parallel_for(
      (C + 63) / 64,
      [&](int64_t b0, int64_t b1, int) {
        int64_t c0 = b0 * 64, c1 = std::min(C, b1 * 64);
        std::fill(out + c0, out + c1, 0.0f);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = c0; c < c1; ++c) out[c] += a[t * C + c];
      },
      1);
}
}  // namespace

void ffn_dense_forward(const FfnShape& s, const float* x, const float* w1, const float* b1, const float* w2,
                       const float* b2, float* pre, float* h, float* y) {
  const int64_t T = s.T, D = s.D, F = s.F;
  gemm_f32(false, false, T, F, D, 1.0f, x, D, w1, F, 0.0f, pre, F);
  parallel_for(
      T,
      [&](int64_t t0, int64_t t1, int tid) {
        float* tmp = s.topk > 0 ? static_cast<float*>(scratch(tid, kScratchSlot, (size_t)F * sizeof(float))) : nullptr;
        for (int64_t t = t0; t < t1; ++t) {
          float* p = pre + t * F;
          float* hr = h + t * F;
          if (b1)
            for (int64_t f = 0; f < F; ++f) p[f] += b1[f];
          act_rows(s.act, p, hr, F, 1.0f);
          if (s.topk > 0 && s.topk < F) {
            float th = kth_largest(hr, F, s.topk, tmp);
            for (int64_t f = 0; f < F; ++f)
              if (!(hr[f] >= th)) hr[f] = 0.0f;
          }
        }
      },
      8);
  gemm_f32(false, false, T, D, F, 1.0f, h, F, w2, D, 0.0f, y, D);
  if (b2)
    parallel_for(
        T,
        [&](int64_t t0, int64_t t1, int) {
          for (int64_t t = t0; t < t1; ++t)
            for (int64_t d = 0; d < D; ++d) y[t * D + d] += b2[d];
        },
        16);
}

void ffn_dense_backward(const FfnShape& s, const float* x, const float* w1, const float* w2, const float* pre,
                        const float* h, const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2,
                        float* dpre) {
  const int64_t T = s.T, D = s.D, F = s.F;
  // dh = dy·W2ᵀ, then dpre = dh ⊙ act'(pre) ⊙ mask (the top-k mask recomputed from pre, exactly as forward).
  gemm_f32(false, true, T, F, D, 1.0f, dy, D, w2, D, 0.0f, dpre, F);
  parallel_for(
      T,
      [&](int64_t t0, int64_t t1, int tid) {
        float* tmp = s.topk > 0 ? static_cast<float*>(scratch(tid, kScratchSlot, (size_t)F * 2 * sizeof(float))) : nullptr;
        for (int64_t t = t0; t < t1; ++t) {
          const float* p = pre + t * F;
          float* d = dpre + t * F;
          if (s.topk > 0 && s.topk < F) {
            float* a = tmp + F;
            act_rows(s.act, p, a, F, 1.0f);
            float th = kth_largest(a, F, s.topk, tmp);
            act_grad_rows(s.act, p, d, F, 1.0f);
            for (int64_t f = 0; f < F; ++f)
              if (!(a[f] >= th)) d[f] = 0.0f;
          } else {
            act_grad_rows(s.act, p, d, F, 1.0f);
          }
        }
      },
      8);
  gemm_f32(true, false, F, D, T, 1.0f, h, F, dy, D, 0.0f, dw2, D);
  gemm_f32(true, false, D, F, T, 1.0f, x, D, dpre, F, 0.0f, dw1, F);
  gemm_f32(false, true, T, D, F, 1.0f, dpre, F, w1, F, 0.0f, dx, D);
  if (db1) column_sums(dpre, T, F, db1);
  if (db2) column_sums(dy, T, D, db2);
}

}  // namespace sffn
