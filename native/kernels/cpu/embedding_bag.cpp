// Weighted row gather (EmbeddingBag, sum mode) on the CPU. Spec: kernels/ref/embedding_bag.cpp.
//   out[t] = Σ_j w[t, j] · V[idx[t, j]];   dw[t, j] = ⟨dout[t], V[idx[t, j]]⟩;   dV sparse over the touched rows.
// Forward: one owner per token. Backward: one owner per unique row over the reverse index (row_index.cpp) reads the
// row once, writes dw of every position that selected it and sums dV in position order. Threads claim blocks of
// tokens / rows dynamically; deterministic for any thread count and schedule, no N×D buffer.
// Bandwidth-bound (each token reads J rows of D floats); the row loops live in pkm_rows.h, compiled per ISA.
// Shapes: idx, w, dw [T, J]; V [N, D]; out, dout [T, D]; dV_rows [U, D].
#include "pkm_isa.h"
#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {

void embedding_bag_forward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                           const float* V, float* out) {
  (void)N;
  const PkmRowKernels& kern = pkm_row_kernels();
  parallel_for_dynamic(T, [&](int64_t b, int64_t e, int) { kern.eb_forward(b, e, J, D, idx, w, V, out); }, 4);
}

void embedding_bag_backward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                            const float* V, const float* dout, float* dw, int64_t U, const int32_t* rows,
                            const int64_t* offsets, const int64_t* pos, float* dV_rows) {
  (void)T, (void)N, (void)idx;  // the reverse index (rows, offsets, pos) carries the positions
  const PkmRowKernels& kern = pkm_row_kernels();
  // Row-centric: each touched row of V is read once for all its hits (dw and dV in one pass).
  parallel_for_dynamic(
      U,
      [&](int64_t b, int64_t e, int) { kern.eb_backward_rows(b, e, J, D, rows, offsets, pos, w, V, dout, dw, dV_rows); },
      16);
}

}  // namespace sffn
