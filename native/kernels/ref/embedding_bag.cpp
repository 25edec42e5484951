// Reference weighted row gather (EmbeddingBag, mode 'sum', per-sample weights; Lample 2019 §3.3):
//   out[t] = Σ_j w[t, j] · V[idx[t, j]]
// Backward: dw[t, j] = ⟨dout[t], V[idx[t, j]]⟩,  dV[r] = Σ_{(t, j): idx[t, j] = r} w[t, j] · dout[t].
// Double accumulation, single thread; dV is produced for a given list of rows by scanning every position.
// Shapes: idx, w [T, J]; V [N, D]; out, dout [T, D]. Test: test/ops/embedding-bag.test.ts.
#include <vector>

#include "sffn/pkm.h"

namespace sffn {

void embedding_bag_forward_ref(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                               const float* V, float* out) {
  (void)N;
  std::vector<double> acc(D);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < D; ++i) acc[i] = 0;
    for (int64_t j = 0; j < J; ++j) {
      const float* v = V + (int64_t)idx[t * J + j] * D;
      for (int64_t i = 0; i < D; ++i) acc[i] += (double)w[t * J + j] * v[i];
    }
    for (int64_t i = 0; i < D; ++i) out[t * D + i] = (float)acc[i];
  }
}

void embedding_bag_backward_ref(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                                const float* V, const float* dout, float* dw, int64_t U, const int32_t* rows,
                                float* dV_rows) {
  (void)N;
  for (int64_t p = 0; p < T * J; ++p) {
    const float* v = V + (int64_t)idx[p] * D;
    const float* g = dout + (p / J) * D;
    double s = 0;
    for (int64_t i = 0; i < D; ++i) s += (double)g[i] * v[i];
    dw[p] = (float)s;
  }
  std::vector<double> acc(D);
  for (int64_t u = 0; u < U; ++u) {
    for (int64_t i = 0; i < D; ++i) acc[i] = 0;
    for (int64_t p = 0; p < T * J; ++p) {
      if (idx[p] != rows[u]) continue;
      const float* g = dout + (p / J) * D;
      for (int64_t i = 0; i < D; ++i) acc[i] += (double)w[p] * g[i];
    }
    for (int64_t i = 0; i < D; ++i) dV_rows[u * D + i] = (float)acc[i];
  }
}

}  // namespace sffn
