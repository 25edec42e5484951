// Reductions for gradient clipping: Σ x² over fixed 8192-element blocks (double partials, summed in block order, so
// the result does not depend on the thread count) and an in-place scale. Test: test/ops/nn.test.ts.
#include <cstddef>
#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {

double sum_squares(int64_t n, const float* x) {
  constexpr int64_t kBlock = 8192;
  const int64_t nb = (n + kBlock - 1) / kBlock;
  if (nb == 0) return 0.0;
  double* part = static_cast<double*>(scratch(0, 0, (size_t)nb * sizeof(double)));
  parallel_for(nb, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t e = (b + 1) * kBlock < n ? (b + 1) * kBlock : n;
      double s = 0;
      for (int64_t i = b * kBlock; i < e; i++) s += (double)x[i] * x[i];
      part[b] = s;
    }
  });
  double s = 0;
  for (int64_t b = 0; b < nb; b++) s += part[b];
  return s;
}

void scale_inplace(int64_t n, float s, float* x) {
  parallel_for(n, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; i++) x[i] *= s;
  }, 4096);
}

}  // namespace sffn
