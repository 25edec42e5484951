// CUDA σ-MoE expert block, forward and backward (contract in sffn/cuda.h; kernels in moe_kernels.cuh). Routing
// comes from the host (already validated by the N-API layer): each launcher uploads it with the row-tile map into
// one pooled device workspace, runs its kernels and frees the workspace stream-ordered.
//   forward:  up (gathered grouped GEMM + bias + gated activation), down (grouped GEMM into the per-slot
//             yr [S, D]), fixed-order combine.
//   backward: dhs = dy[t]·W2[e]ᵀ (gathered), gate gradient and dpre (warp per row), dxr = dpre·W1[e]ᵀ and the
//             combine into dx, dW2 / dW1 as per-expert row reductions, db1 / db2 as ordered column sums;
//             dgates is copied back to the host.
// Test: test/gpu/moe-experts.test.ts (GPU), test/gpu/moe-emulated.test.ts (host emulation of the kernels).
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "moe_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {
// Bytes rounded up to 256 so every array in the workspace starts aligned.
size_t pad256(size_t b) { return (b + 255) / 256 * 256; }
}  // namespace

Status moe_experts_forward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                           const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                           const float* x, const float* w1, const float* b1, const float* w2, const float* b2,
                           float* pre, float* hs, float* y) {
  if (T == 0 || D == 0) return Status{};
  const int64_t S = offsets[E];
  const int64_t TK = T * K;
  const std::vector<int32_t> tiles = moe_row_tiles(E, offsets);
  const int64_t ntiles = (int64_t)tiles.size() / 2;
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) {
    Status s;
    s.code = (int)cudaErrorInvalidValue;
    s.message = "moe_experts_forward: G and D must be below 65535·128";
    return s;
  }

  // Workspace: offsets [E+1] i64 | gates [T·K] f32 | sorted [S] i32 | rank [T·K] i32 | tiles i32 | yr [S, D] f32
  const size_t b_off = pad256((size_t)(E + 1) * 8), b_gates = pad256((size_t)TK * 4), b_sorted = pad256((size_t)S * 4),
               b_rank = pad256((size_t)TK * 4), b_tiles = pad256(tiles.size() * 4), b_yr = pad256((size_t)(S * D) * 4);
  char* ws = nullptr;
  Status s = device_malloc((void**)&ws, b_off + b_gates + b_sorted + b_rank + b_tiles + b_yr);
  if (!s.ok()) return s;
  int64_t* d_off = (int64_t*)ws;
  float* d_gates = (float*)(ws + b_off);
  int32_t* d_sorted = (int32_t*)(ws + b_off + b_gates);
  int32_t* d_rank = (int32_t*)(ws + b_off + b_gates + b_sorted);
  int32_t* d_tiles = (int32_t*)(ws + b_off + b_gates + b_sorted + b_rank);
  float* d_yr = (float*)(ws + b_off + b_gates + b_sorted + b_rank + b_tiles);

  s = copy_to_device(d_off, offsets, (size_t)(E + 1) * 8);
  if (s.ok()) s = copy_to_device(d_gates, gates, (size_t)TK * 4);
  if (s.ok()) s = copy_to_device(d_sorted, sorted_slots, (size_t)S * 4);
  if (s.ok()) s = copy_to_device(d_rank, slot_rank, (size_t)TK * 4);
  if (s.ok()) s = copy_to_device(d_tiles, tiles.data(), tiles.size() * 4);
  if (s.ok() && ntiles > 0) {
    dim3 up((unsigned)ntiles, (unsigned)((G + MG_BN - 1) / MG_BN));
    moe_grouped_gemm_kernel<true, false, true><<<up, MG_THREADS>>>(d_tiles, d_off, d_sorted, d_gates, K, x, D, w1, D, G, b1, act,
                                                      pre, hs);
    s = launch_status("moe_grouped_gemm_kernel<up>");
    if (s.ok()) {
      dim3 down((unsigned)ntiles, (unsigned)((D + MG_BN - 1) / MG_BN));
      moe_grouped_gemm_kernel<false, false, false><<<down, MG_THREADS>>>(d_tiles, d_off, d_sorted, d_gates, K, hs, G, w2, G, D,
                                                           nullptr, act, d_yr, nullptr);
      s = launch_status("moe_grouped_gemm_kernel<down>");
    }
  }
  if (s.ok()) {
    const int64_t blocks = std::min<int64_t>((T * D + 255) / 256, 65535 * 8);
    moe_combine_kernel<<<(unsigned)blocks, 256>>>(T, D, K, d_rank, d_yr, b2, y);
    s = launch_status("moe_combine_kernel");
  }
  Status f = device_free(ws);  // stream-ordered: runs after the kernels above
  return s.ok() ? f : s;
}

namespace {
// The routing arrays on the device, in one workspace with room for `extra_floats` more.
struct RoutingUpload {
  char* ws = nullptr;
  int64_t* off = nullptr;
  float* gates = nullptr;
  int32_t* sorted = nullptr;
  int32_t* rank = nullptr;
  int32_t* tiles = nullptr;
  float* extra = nullptr;
  ~RoutingUpload() {
    if (ws) device_free(ws);  // stream-ordered: after every kernel queued before
  }
  Status upload(int64_t T, int64_t E, int64_t K, const float* g, const int64_t* o, const int32_t* ss,
                const int32_t* rk, const std::vector<int32_t>& tl, size_t extra_floats) {
    const int64_t S = o[E], TK = T * K;
    const size_t b_off = pad256((size_t)(E + 1) * 8), b_gates = pad256((size_t)TK * 4), b_sorted = pad256((size_t)S * 4),
                 b_rank = pad256((size_t)TK * 4), b_tiles = pad256(tl.size() * 4);
    Status s = device_malloc((void**)&ws, b_off + b_gates + b_sorted + b_rank + b_tiles + extra_floats * 4);
    if (!s.ok()) return s;
    off = (int64_t*)ws;
    gates = (float*)(ws + b_off);
    sorted = (int32_t*)(ws + b_off + b_gates);
    rank = (int32_t*)(ws + b_off + b_gates + b_sorted);
    tiles = (int32_t*)(ws + b_off + b_gates + b_sorted + b_rank);
    extra = (float*)(ws + b_off + b_gates + b_sorted + b_rank + b_tiles);
    s = copy_to_device(off, o, (size_t)(E + 1) * 8);
    if (s.ok()) s = copy_to_device(gates, g, (size_t)TK * 4);
    if (s.ok()) s = copy_to_device(sorted, ss, (size_t)S * 4);
    if (s.ok()) s = copy_to_device(rank, rk, (size_t)TK * 4);
    if (s.ok()) s = copy_to_device(tiles, tl.data(), tl.size() * 4);
    return s;
  }
};

unsigned grid1d(int64_t n, int threads) { return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535 * 8)); }
}  // namespace

Status moe_experts_backward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                            const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                            const float* x, const float* w1, const float* w2, const float* pre, const float* hs,
                            const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2,
                            float* dgates) {
  const int64_t S = offsets[E], TK = T * K;
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) {
    Status s;
    s.code = (int)cudaErrorInvalidValue;
    s.message = "moe_experts_backward: G and D must be below 65535·128";
    return s;
  }
  const std::vector<int32_t> tiles = moe_row_tiles(E, offsets);
  const int64_t ntiles = (int64_t)tiles.size() / 2;
  // Extra workspace: dhs [S, G] | dpre [S, G] | dxr [S, D] | dgates [T·K], each padded to 64 floats.
  auto p64 = [](int64_t n) { return (size_t)((n + 63) / 64 * 64); };
  RoutingUpload u;
  Status s = u.upload(T, E, K, gates, offsets, sorted_slots, slot_rank, tiles, 2 * p64(S * G) + p64(S * D) + p64(TK));
  if (!s.ok()) return s;
  float* dhs = u.extra;
  float* dpre = dhs + p64(S * G);
  float* dxr = dpre + p64(S * G);
  float* dg = dxr + p64(S * D);
  if (TK > 0) s = status_of(cudaMemset(dg, 0, (size_t)TK * 4), "cudaMemset (dgates)");

  if (s.ok() && ntiles > 0) {
    moe_grouped_gemm_kernel<true, true, false><<<dim3((unsigned)ntiles, (unsigned)((G + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        u.tiles, u.off, u.sorted, u.gates, K, dy, D, w2, D, G, nullptr, act, dhs, nullptr);
    s = launch_status("moe_grouped_gemm_kernel<dhs>");
    if (s.ok()) {
      moe_gate_grad_kernel<<<grid1d(S * 32, 256), 256>>>(S, G, u.sorted, u.gates, pre, dhs, act, dpre, dg);
      s = launch_status("moe_gate_grad_kernel");
    }
    if (s.ok()) {
      moe_grouped_gemm_kernel<false, true, false><<<dim3((unsigned)ntiles, (unsigned)((D + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
          u.tiles, u.off, u.sorted, u.gates, K, dpre, G, w1, G, D, nullptr, act, dxr, nullptr);
      s = launch_status("moe_grouped_gemm_kernel<dx>");
    }
  }
  if (s.ok() && T * D > 0) {
    moe_combine_kernel<<<grid1d(T * D, 256), 256>>>(T, D, K, u.rank, dxr, nullptr, dx);
    s = launch_status("moe_combine_kernel (dx)");
  }
  // Weight gradients run for every expert (experts without rows get zeros).
  if (s.ok()) {
    moe_wgrad_kernel<false, true><<<dim3((unsigned)(E * ((G + MG_BM - 1) / MG_BM)), (unsigned)((D + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        G, D, u.off, u.sorted, K, hs, G, dy, D, dw2);
    s = launch_status("moe_wgrad_kernel (dw2)");
  }
  if (s.ok()) {
    moe_wgrad_kernel<true, false><<<dim3((unsigned)(E * ((D + MG_BM - 1) / MG_BM)), (unsigned)((G + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        D, G, u.off, u.sorted, K, x, D, dpre, G, dw1);
    s = launch_status("moe_wgrad_kernel (dw1)");
  }
  if (s.ok() && db1) {
    moe_bias_grad_kernel<<<grid1d(E * G, 256), 256>>>(E, G, u.off, dpre, db1);
    s = launch_status("moe_bias_grad_kernel");
  }
  if (s.ok() && db2) {
    moe_col_sum_kernel<<<grid1d(D, 256), 256>>>(T, D, dy, db2);
    s = launch_status("moe_col_sum_kernel");
  }
  if (s.ok() && TK > 0) s = copy_to_host(dgates, dg, (size_t)TK * 4);
  return s;
}

}  // namespace cuda
}  // namespace sffn
