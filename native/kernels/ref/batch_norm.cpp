// Reference BatchNorm1d over [T, F] (the optional PKM/PEER query BatchNorm; semantics of torch.nn.BatchNorm1d):
//   training: μ = mean_t x, σ² = mean_t (x − μ)², y = γ (x − μ) / √(σ² + ε) + β,
//             running ← (1 − momentum)·running + momentum·(μ, σ²·T/(T−1));   eval: μ, σ² = running statistics.
// Backward (training): x̂ = (x − μ)·invstd, dβ = Σ_t dy, dγ = Σ_t dy·x̂, dx = γ·invstd/T · (T·dy − dβ − x̂·dγ);
//          (eval): dx = γ·invstd·dy. Double accumulation, single thread. Test: test/ops/batch-norm.test.ts.
#include <cmath>

#include "sffn/pkm.h"

namespace sffn {

void batch_norm_forward_ref(int64_t T, int64_t F, const float* x, const float* gamma, const float* beta,
                            float* running_mean, float* running_var, bool training, float momentum, float eps,
                            float* y, float* mean, float* invstd) {
  for (int64_t f = 0; f < F; ++f) {
    double mu, var;
    if (training) {
      double s = 0;
      for (int64_t t = 0; t < T; ++t) s += x[t * F + f];
      mu = T ? s / T : 0;
      double s2 = 0;
      for (int64_t t = 0; t < T; ++t) s2 += (x[t * F + f] - mu) * (x[t * F + f] - mu);
      var = T ? s2 / T : 0;
      if (running_mean) running_mean[f] = (float)((1 - momentum) * running_mean[f] + momentum * mu);
      if (running_var && T > 1) running_var[f] = (float)((1 - momentum) * running_var[f] + momentum * s2 / (T - 1));
    } else {
      mu = running_mean ? running_mean[f] : 0;
      var = running_var ? running_var[f] : 1;
    }
    const double is = 1 / std::sqrt(var + eps);
    const double g = gamma ? gamma[f] : 1, b = beta ? beta[f] : 0;
    for (int64_t t = 0; t < T; ++t) y[t * F + f] = (float)((x[t * F + f] - mu) * is * g + b);
    mean[f] = (float)mu;
    invstd[f] = (float)is;
  }
}

void batch_norm_backward_ref(int64_t T, int64_t F, const float* dy, const float* x, const float* gamma,
                             const float* mean, const float* invstd, bool training, float* dx, float* dgamma,
                             float* dbeta) {
  for (int64_t f = 0; f < F; ++f) {
    double sdy = 0, sdyx = 0;
    for (int64_t t = 0; t < T; ++t) {
      const double xh = ((double)x[t * F + f] - mean[f]) * invstd[f];
      sdy += dy[t * F + f];
      sdyx += dy[t * F + f] * xh;
    }
    const double g = gamma ? gamma[f] : 1;
    for (int64_t t = 0; t < T; ++t) {
      if (training) {
        const double xh = ((double)x[t * F + f] - mean[f]) * invstd[f];
        dx[t * F + f] = (float)(g * invstd[f] / T * (T * (double)dy[t * F + f] - sdy - xh * sdyx));
      } else {
        dx[t * F + f] = (float)(g * invstd[f] * dy[t * F + f]);
      }
    }
    if (dgamma) dgamma[f] = (float)sdyx;
    if (dbeta) dbeta[f] = (float)sdy;
  }
}

}  // namespace sffn
