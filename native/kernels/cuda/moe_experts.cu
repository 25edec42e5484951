// CUDA σ-MoE expert block forward (contract in sffn/cuda.h; kernels in moe_kernels.cuh). Routing comes from the
// host (already validated by the N-API layer): the launcher uploads it with the row-tile map into one pooled
// device workspace, runs up (gathered grouped GEMM + bias + gated activation), down (grouped GEMM into the
// per-slot yr [S, D]) and the fixed-order combine, and frees the workspace stream-ordered.
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
    moe_grouped_gemm_kernel<true><<<up, MG_THREADS>>>(d_tiles, d_off, d_sorted, d_gates, K, x, D, w1, D, G, b1, act,
                                                      pre, hs);
    s = launch_status("moe_grouped_gemm_kernel<up>");
    if (s.ok()) {
      dim3 down((unsigned)ntiles, (unsigned)((D + MG_BN - 1) / MG_BN));
      moe_grouped_gemm_kernel<false><<<down, MG_THREADS>>>(d_tiles, d_off, d_sorted, d_gates, K, hs, G, w2, G, D,
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

}  // namespace cuda
}  // namespace sffn
