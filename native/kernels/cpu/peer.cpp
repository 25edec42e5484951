// PEER singleton experts on the CPU, token-centric and fused (He 2024 §2; kernels.md §7). Spec: kernels/ref/peer.cpp.
//   forward:  per token, h_j = U[i_j] · x, out = Σ_j g_j · act(h_j) · V[i_j]  (J = H·k rows of U and of V read)
//   backward: per unique row i (reverse index, one owner, V[i] read once for all its hits): c = ⟨V[i], dout[t]⟩,
//             dg = act(h) c, dh = g c act'(h), dU[i] = Σ dh · x[t], dV[i] = Σ g act(h) · dout[t]; then per token
//             dx = Σ_j dh_j U[i_j].
// Token-centric is the right order at N = 1024² where a row is hit ~T·J/N < 1 times per batch: there is no reuse
// to win by sorting by expert. Deterministic for any thread count and schedule: each token (forward, dx) and each
// touched row (backward) is computed by one thread in a fixed order; threads claim blocks of them dynamically.
// Shapes: x, out, dout, dx [T, D]; idx, g, h, dg [T, J]; U, V [N, D]; dU_rows, dV_rows [nrows, D].
#include <algorithm>

#include "pkm_isa.h"
#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {

void peer_forward(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                  const float* g, const float* U, const float* V, float* out, float* h) {
  (void)N;
  const PkmRowKernels& kern = pkm_row_kernels();
  parallel_for_dynamic(
      T, [&](int64_t b, int64_t e, int) { kern.peer_forward(b, e, J, D, (int)act, x, idx, g, U, V, out, h); }, 2);
}

size_t peer_backward_work_bytes(int64_t T, int64_t J) { return (size_t)(3 * T * J) * sizeof(float) + 256; }

void peer_backward(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                   const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                   float* dg, int64_t nrows, const int32_t* rows, const int64_t* offsets, const int64_t* pos,
                   float* dU_rows, float* dV_rows, void* work) {
  (void)N;
  const PkmRowKernels& kern = pkm_row_kernels();
  // act(h) and act'(h) in token order (vectorised), then the row-centric pass (V read once per touched row: dg,
  // dh, dU, dV), then dx per token from U and dh.
  float* dh = static_cast<float*>(work);
  float* av = dh + T * J;
  float* ag = av + T * J;
  // Split in whole blocks of 64 values: peer_act_rows runs a vector loop plus a scalar tail, and the two can
  // round differently in the last bit, so where a split falls must not depend on the thread count (it did:
  // dx and dU at T = 512, N = 1024² with 3 threads differed from 1, 2 and 4 threads).
  constexpr int64_t kActBlock = 64;
  const int64_t n = T * J;
  parallel_for((n + kActBlock - 1) / kActBlock,
               [&](int64_t b, int64_t e, int) {
                 const int64_t i0 = b * kActBlock, i1 = std::min(e * kActBlock, n);
                 kern.peer_act_rows((int)act, h + i0, av + i0, ag + i0, i1 - i0);
               },
               64);
  parallel_for_dynamic(
      nrows,
      [&](int64_t b, int64_t e, int) {
        kern.peer_backward_rows(b, e, J, D, rows, offsets, pos, g, av, ag, V, x, dout, dg, dh, dU_rows, dV_rows);
      },
      16);
  parallel_for_dynamic(T, [&](int64_t b, int64_t e, int) { kern.peer_backward_dx(b, e, J, D, idx, U, dh, dx); }, 2);
}

}  // namespace sffn
