// BatchNorm1d over [T, F] on the CPU (math and semantics: kernels/ref/batch_norm.cpp, sffn/pkm.h). Threads own
// blocks of features; within a block the T rows are streamed in order (contiguous reads of the block's columns)
// and per-feature sums are kept in double, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {
namespace {
constexpr int64_t kFeatBlock = 64;
}

void batch_norm_forward(int64_t T, int64_t F, const float* x, const float* gamma, const float* beta,
                        float* running_mean, float* running_var, bool training, float momentum, float eps, float* y,
                        float* mean, float* invstd) {
  const int64_t nb = (F + kFeatBlock - 1) / kFeatBlock;
  parallel_for(nb, [&](int64_t b0, int64_t b1, int) {
    double s[kFeatBlock], s2[kFeatBlock];
    float sc[kFeatBlock], sh[kFeatBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t f0 = b * kFeatBlock, w = std::min(kFeatBlock, F - f0);
      if (training) {
        for (int64_t i = 0; i < w; ++i) s[i] = s2[i] = 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t i = 0; i < w; ++i) s[i] += x[t * F + f0 + i];
        for (int64_t i = 0; i < w; ++i) s[i] = T ? s[i] / T : 0;
        for (int64_t t = 0; t < T; ++t)
          for (int64_t i = 0; i < w; ++i) {
            const double d = x[t * F + f0 + i] - s[i];
            s2[i] += d * d;
          }
        for (int64_t i = 0; i < w; ++i) {
          const int64_t f = f0 + i;
          if (running_mean) running_mean[f] = (float)((1 - momentum) * running_mean[f] + momentum * s[i]);
          if (running_var && T > 1)
            running_var[f] = (float)((1 - momentum) * running_var[f] + momentum * s2[i] / (T - 1));
          s2[i] = T ? s2[i] / T : 0;
        }
      } else {
        for (int64_t i = 0; i < w; ++i) {
          s[i] = running_mean ? running_mean[f0 + i] : 0;
          s2[i] = running_var ? running_var[f0 + i] : 1;
        }
      }
      for (int64_t i = 0; i < w; ++i) {
        const int64_t f = f0 + i;
        const double is = 1 / std::sqrt(s2[i] + eps);
        mean[f] = (float)s[i];
        invstd[f] = (float)is;
        sc[i] = (float)(is * (gamma ? gamma[f] : 1.0f));
        sh[i] = (float)((beta ? beta[f] : 0.0f) - s[i] * is * (gamma ? gamma[f] : 1.0f));
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < w; ++i) y[t * F + f0 + i] = x[t * F + f0 + i] * sc[i] + sh[i];
    }
  });
}

void batch_norm_backward(int64_t T, int64_t F, const float* dy, const float* x, const float* gamma, const float* mean,
                         const float* invstd, bool training, float* dx, float* dgamma, float* dbeta) {
  const int64_t nb = (F + kFeatBlock - 1) / kFeatBlock;
  parallel_for(nb, [&](int64_t b0, int64_t b1, int) {
    double sdy[kFeatBlock], sdyx[kFeatBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t f0 = b * kFeatBlock, w = std::min(kFeatBlock, F - f0);
      for (int64_t i = 0; i < w; ++i) sdy[i] = sdyx[i] = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < w; ++i) {
          const int64_t o = t * F + f0 + i;
          const double g = dy[o];
          sdy[i] += g;
          sdyx[i] += g * (((double)x[o] - mean[f0 + i]) * invstd[f0 + i]);
        }
      for (int64_t i = 0; i < w; ++i) {
        const int64_t f = f0 + i;
        if (dgamma) dgamma[f] = (float)sdyx[i];
        if (dbeta) dbeta[f] = (float)sdy[i];
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < w; ++i) {
          const int64_t f = f0 + i, o = t * F + f;
          const double g = gamma ? gamma[f] : 1.0;
          if (training) {
            const double xh = ((double)x[o] - mean[f]) * invstd[f];
            dx[o] = (float)(g * invstd[f] / T * (T * (double)dy[o] - sdy[i] - xh * sdyx[i]));
          } else {
            dx[o] = (float)(g * invstd[f] * dy[o]);
          }
        }
    }
  });
}

}  // namespace sffn
