// AdamW on the CPU, dense and sparse-row (math and lazy-moment semantics in sffn/optim.h; spec kernels/ref/adamw.cpp).
// Both share one element update (pkm_rows.h, compiled per ISA), so a sparse step equals the dense step bit for bit on rows touched every step.
// Dense: threads split the tensor; sparse: threads claim blocks of touched rows, so the cost is proportional to the
// rows touched (U·D), never to N. Bandwidth-bound (p, m, v read and written, g read: 28 bytes per element).
#include <cmath>

#include "pkm_isa.h"
#include "sffn/core.h"
#include "sffn/optim.h"

namespace sffn {
namespace {

// (1 − lr·wd, β1, 1 − β1, β2, 1 − β2, lr / (1 − β1^t), 1 / √(1 − β2^t), ε): see pkm_rows.h adamw_update_range.
struct Coef {
  float c[8];
};

Coef coef(const AdamwHyper& hp, int64_t step) {
  const double bc1 = 1 - std::pow((double)hp.beta1, (double)step);
  const double bc2 = 1 - std::pow((double)hp.beta2, (double)step);
  return Coef{{(float)(1 - (double)hp.lr * hp.weight_decay), hp.beta1, (float)(1 - (double)hp.beta1), hp.beta2,
               (float)(1 - (double)hp.beta2), (float)(hp.lr / bc1), (float)(1 / std::sqrt(bc2)), hp.eps}};
}

}  // namespace

void adamw_step(int64_t n, float* p, const float* g, float* m, float* v, const AdamwHyper& hp, int64_t step) {
  const Coef c = coef(hp, step);
  const PkmRowKernels& kern = pkm_row_kernels();
  parallel_for(n, [&](int64_t b, int64_t e, int) { kern.adamw_update(e - b, p + b, g + b, m + b, v + b, c.c); },
               1 << 14);
}

void sparse_adamw_step(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                       const int32_t* rows, const float* g, const AdamwHyper& hp) {
  (void)N;
  const PkmRowKernels& kern = pkm_row_kernels();
  parallel_for_dynamic(
      U,
      [&](int64_t b, int64_t e, int) {
        Coef cache[64];
        int64_t cached[64];
        for (int64_t& x : cached) x = -1;
        for (int64_t u = b; u < e; ++u) {
          const int64_t r = rows[u];
          const int64_t t = ++steps[r];
          // Bias corrections cost two pow() calls; rows share few distinct step counts, so cache them.
          Coef& c = cache[t & 63];
          if (cached[t & 63] != t) {
            c = coef(hp, t);
            cached[t & 63] = t;
          }
          kern.adamw_update(D, p + r * D, g + u * D, m + r * D, v + r * D, c.c);
        }
      },
      64);
}

}  // namespace sffn
