// Reference AdamW, dense and sparse-row (math and semantics in sffn/optim.h): plain loops, bias corrections in
// double, the element update in double then rounded. Test: test/ops/adamw.test.ts.
#include <cmath>

#include "sffn/optim.h"

namespace sffn {
namespace {

void update(int64_t n, float* p, const float* g, float* m, float* v, const AdamwHyper& hp, int64_t step) {
  const double bc1 = 1 - std::pow((double)hp.beta1, (double)step);
  const double bc2 = 1 - std::pow((double)hp.beta2, (double)step);
  for (int64_t i = 0; i < n; ++i) {
    double pi = (double)p[i] * (1 - (double)hp.lr * hp.weight_decay);
    double mi = (double)hp.beta1 * m[i] + (1 - (double)hp.beta1) * g[i];
    double vi = (double)hp.beta2 * v[i] + (1 - (double)hp.beta2) * (double)g[i] * g[i];
    pi -= (hp.lr / bc1) * mi / (std::sqrt(vi) / std::sqrt(bc2) + hp.eps);
    p[i] = (float)pi;
    m[i] = (float)mi;
    v[i] = (float)vi;
  }
}

}  // namespace

void adamw_step_ref(int64_t n, float* p, const float* g, float* m, float* v, const AdamwHyper& hp, int64_t step) {
  update(n, p, g, m, v, hp, step);
}

void sparse_adamw_step_ref(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                           const int32_t* rows, const float* g, const AdamwHyper& hp) {
  (void)N;
  for (int64_t u = 0; u < U; ++u) {
    const int64_t r = rows[u];
    const int64_t t = ++steps[r];
    update(D, p + r * D, g + u * D, m + r * D, v + r * D, hp, t);
  }
}

}  // namespace sffn
