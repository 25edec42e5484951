// CUDA σ-MoE expert block, forward and backward (contract in sffn/cuda.h; kernels in moe_kernels.cuh).
//   forward:  up (gathered grouped GEMM + bias + gated activation), down (grouped GEMM into the per-slot
//             yr [S, D]), fixed-order combine.
//   backward: dhs = dy[t]·W2[e]ᵀ (gathered), gate gradient and dpre (warp per row), dxr = dpre·W1[e]ᵀ and the
//             combine into dx, dW2 / dW1 as per-expert row reductions, db1 / db2 as ordered column sums.
// Routing from the host (already validated by the N-API layer) is uploaded with its exact row-tile map into one
// pooled workspace; routing on the device (moeRoute on cuda) is sanitised on the device and gets a tile map of
// worst-case size whose unused entries exit at once, so nothing waits for the host. Workspaces are freed
// stream-ordered.
// Test: test/gpu/moe-experts.test.ts (GPU), test/gpu/moe-emulated.test.ts (host emulation of the kernels).
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "moe_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {

Status too_wide(const char* op) {
  Status s;
  s.code = (int)cudaErrorInvalidValue;
  s.message = std::string(op) + ": G and D must be below 65535·128";
  return s;
}

// The routing as the kernels read it, on the device. ntiles: grid size over row tiles (exact for host routing,
// the worst case for device routing); S: rows of the per-slot buffers.
struct DevRouting {
  const int64_t* off = nullptr;
  const float* gates = nullptr;
  const int32_t* sorted = nullptr;
  const int32_t* rank = nullptr;
  const int32_t* tiles = nullptr;
  int64_t ntiles = 0, S = 0;
};

// One pooled workspace: the routing (uploaded from the host, or sanitised from the device) and `extra_floats`
// floats after it. Freed stream-ordered when it goes out of scope (after every kernel queued before).
struct Workspace {
  char* ws = nullptr;
  DevRouting r;
  float* extra = nullptr;
  ~Workspace() {
    if (ws) device_free(ws);
  }
  Status alloc(int64_t E, int64_t TK, int64_t S, int64_t ntiles, bool with_gates, size_t extra_floats,
               char** parts) {
    const size_t b_off = pad256((size_t)(E + 1) * 8), b_gates = with_gates ? pad256((size_t)TK * 4) : 0,
                 b_sorted = pad256((size_t)S * 4), b_rank = pad256((size_t)TK * 4),
                 b_tiles = pad256((size_t)ntiles * 8);
    Status s = device_malloc((void**)&ws, b_off + b_gates + b_sorted + b_rank + b_tiles + extra_floats * 4);
    if (!s.ok()) return s;
    parts[0] = ws;
    parts[1] = parts[0] + b_off;
    parts[2] = parts[1] + b_gates;
    parts[3] = parts[2] + b_sorted;
    parts[4] = parts[3] + b_rank;
    extra = (float*)(parts[4] + b_tiles);
    r.ntiles = ntiles;
    r.S = S;
    return s;
  }
  // Host routing: copies it and its exact tile map.
  Status upload(int64_t T, int64_t E, int64_t K, const float* g, const int64_t* o, const int32_t* ss,
                const int32_t* rk, size_t extra_floats) {
    const int64_t S = o[E], TK = T * K;
    const std::vector<int32_t> tl = moe_row_tiles(E, o);
    char* p[5];
    Status s = alloc(E, TK, S, (int64_t)tl.size() / 2, true, extra_floats, p);
    if (!s.ok()) return s;
    r.off = (int64_t*)p[0];
    r.gates = (float*)p[1];
    r.sorted = (int32_t*)p[2];
    r.rank = (int32_t*)p[3];
    r.tiles = (int32_t*)p[4];
    s = copy_to_device((void*)r.off, o, (size_t)(E + 1) * 8);
    if (s.ok()) s = copy_to_device((void*)r.gates, g, (size_t)TK * 4);
    if (s.ok()) s = copy_to_device((void*)r.sorted, ss, (size_t)S * 4);
    if (s.ok()) s = copy_to_device((void*)r.rank, rk, (size_t)TK * 4);
    if (s.ok()) s = copy_to_device((void*)r.tiles, tl.data(), tl.size() * 4);
    return s;
  }
  // Device routing with S = sorted_slots' length: sanitised copies and the worst-case tile map, on the device.
  Status derive(int64_t T, int64_t E, int64_t K, int64_t S, const float* g, const int64_t* o, const int32_t* ss,
                const int32_t* rk, size_t extra_floats) {
    const int64_t TK = T * K, max_tiles = (S + (MG_BM - 1) * E) / MG_BM;
    char* p[5];
    Status s = alloc(E, TK, S, max_tiles, false, extra_floats, p);
    if (!s.ok()) return s;
    int64_t* off = (int64_t*)p[0];
    int32_t* sorted = (int32_t*)p[2];
    int32_t* rank = (int32_t*)p[3];
    int32_t* tiles = (int32_t*)p[4];
    r.off = off;
    r.gates = g;
    r.sorted = sorted;
    r.rank = rank;
    r.tiles = tiles;
    if (std::max(TK, S) > 0) {
      moe_sanitize_routing_kernel<<<grid_for(std::max(TK, S), 256), 256>>>(TK, S, ss, rk, sorted, rank);
      s = launch_status("moe_sanitize_routing_kernel");
    }
    if (s.ok()) {
      moe_device_tiles_kernel<<<1, 1>>>(E, S, o, off, tiles, max_tiles);
      s = launch_status("moe_device_tiles_kernel");
    }
    return s;
  }
};

Status forward_core(int64_t T, int64_t D, int64_t K, int64_t G, int act, const DevRouting& r, const float* x,
                    const float* w1, const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y,
                    float* yr) {
  Status s;
  if (r.ntiles > 0) {
    dim3 up((unsigned)r.ntiles, (unsigned)((G + MG_BN - 1) / MG_BN));
    moe_grouped_gemm_kernel<true, false, true><<<up, MG_THREADS>>>(r.tiles, r.off, r.sorted, r.gates, K, x, D, w1, D, G,
                                                                   b1, act, pre, hs);
    s = launch_status("moe_grouped_gemm_kernel<up>");
    if (s.ok()) {
      dim3 down((unsigned)r.ntiles, (unsigned)((D + MG_BN - 1) / MG_BN));
      moe_grouped_gemm_kernel<false, false, false><<<down, MG_THREADS>>>(r.tiles, r.off, r.sorted, r.gates, K, hs, G, w2,
                                                                         G, D, nullptr, act, yr, nullptr);
      s = launch_status("moe_grouped_gemm_kernel<down>");
    }
  }
  if (s.ok() && T * D > 0) {
    moe_combine_kernel<<<grid_for(T * D, 256), 256>>>(T, D, K, r.rank, yr, b2, y);
    s = launch_status("moe_combine_kernel");
  }
  return s;
}

// dgates_dev [T·K] is written (0 for slots that are not kept).
Status backward_core(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const DevRouting& r,
                     const float* x, const float* w1, const float* w2, const float* pre, const float* hs,
                     const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dgates_dev,
                     float* dhs, float* dpre, float* dxr) {
  const int64_t S = r.S, TK = T * K;
  Status s;
  if (TK > 0) s = status_of(cudaMemset(dgates_dev, 0, (size_t)TK * 4), "cudaMemset (dgates)");
  if (s.ok() && r.ntiles > 0) {
    moe_grouped_gemm_kernel<true, true, false><<<dim3((unsigned)r.ntiles, (unsigned)((G + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        r.tiles, r.off, r.sorted, r.gates, K, dy, D, w2, D, G, nullptr, act, dhs, nullptr);
    s = launch_status("moe_grouped_gemm_kernel<dhs>");
    if (s.ok()) {
      // Rows past offsets[E] (a device routing that kept fewer than S slots) are never written by the GEMM:
      // the gate kernel walks only the kept rows.
      moe_gate_grad_kernel<<<grid_for(S * 32, 256), 256>>>(S, G, r.off + E, r.sorted, r.gates, pre, dhs, act, dpre,
                                                         dgates_dev);
      s = launch_status("moe_gate_grad_kernel");
    }
    if (s.ok()) {
      moe_grouped_gemm_kernel<false, true, false><<<dim3((unsigned)r.ntiles, (unsigned)((D + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
          r.tiles, r.off, r.sorted, r.gates, K, dpre, G, w1, G, D, nullptr, act, dxr, nullptr);
      s = launch_status("moe_grouped_gemm_kernel<dx>");
    }
  }
  if (s.ok() && T * D > 0) {
    moe_combine_kernel<<<grid_for(T * D, 256), 256>>>(T, D, K, r.rank, dxr, nullptr, dx);
    s = launch_status("moe_combine_kernel (dx)");
  }
  // Weight gradients run for every expert (experts without rows get zeros).
  if (s.ok()) {
    moe_wgrad_kernel<false, true><<<dim3((unsigned)(E * ((G + MG_BM - 1) / MG_BM)), (unsigned)((D + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        G, D, r.off, r.sorted, K, hs, G, dy, D, dw2);
    s = launch_status("moe_wgrad_kernel (dw2)");
  }
  if (s.ok()) {
    moe_wgrad_kernel<true, false><<<dim3((unsigned)(E * ((D + MG_BM - 1) / MG_BM)), (unsigned)((G + MG_BN - 1) / MG_BN)), MG_THREADS>>>(
        D, G, r.off, r.sorted, K, x, D, dpre, G, dw1);
    s = launch_status("moe_wgrad_kernel (dw1)");
  }
  if (s.ok() && db1) {
    moe_bias_grad_kernel<<<grid_for(E * G, 256), 256>>>(E, G, r.off, dpre, db1);
    s = launch_status("moe_bias_grad_kernel");
  }
  if (s.ok() && db2) {
    moe_col_sum_kernel<<<grid_for(D, 256), 256>>>(T, D, dy, db2);
    s = launch_status("moe_col_sum_kernel");
  }
  return s;
}

// Extra floats of the backward: dhs [S, G] | dpre [S, G] | dxr [S, D] | (host routing) dgates [T·K].
size_t p64(int64_t n) { return (size_t)((n + 63) / 64 * 64); }
}  // namespace

Status moe_experts_forward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                           const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                           const float* x, const float* w1, const float* b1, const float* w2, const float* b2,
                           float* pre, float* hs, float* y) {
  if (T == 0) return Status{};
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_experts_forward");
  Workspace w;
  Status s = w.upload(T, E, K, gates, offsets, sorted_slots, slot_rank, p64(offsets[E] * D));
  if (!s.ok()) return s;
  return forward_core(T, D, K, G, act, w.r, x, w1, b1, w2, b2, pre, hs, y, w.extra);
}

Status moe_experts_forward_dev(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                               const float* gates, const int64_t* offsets, const int32_t* sorted_slots,
                               const int32_t* slot_rank, const float* x, const float* w1, const float* b1,
                               const float* w2, const float* b2, float* pre, float* hs, float* y) {
  if (T == 0) return Status{};
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_experts_forward");
  Workspace w;
  Status s = w.derive(T, E, K, S, gates, offsets, sorted_slots, slot_rank, p64(S * D));
  if (!s.ok()) return s;
  return forward_core(T, D, K, G, act, w.r, x, w1, b1, w2, b2, pre, hs, y, w.extra);
}

Status moe_experts_backward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                            const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                            const float* x, const float* w1, const float* w2, const float* pre, const float* hs,
                            const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2,
                            float* dgates) {
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_experts_backward");
  const int64_t S = offsets[E], TK = T * K;
  Workspace w;
  Status s = w.upload(T, E, K, gates, offsets, sorted_slots, slot_rank, 2 * p64(S * G) + p64(S * D) + p64(TK));
  if (!s.ok()) return s;
  float* dhs = w.extra;
  float* dpre = dhs + p64(S * G);
  float* dxr = dpre + p64(S * G);
  float* dg = dxr + p64(S * D);
  s = backward_core(T, D, E, K, G, act, w.r, x, w1, w2, pre, hs, dy, dx, dw1, db1, dw2, db2, dg, dhs, dpre, dxr);
  if (s.ok() && TK > 0) s = copy_to_host(dgates, dg, (size_t)TK * 4);
  return s;
}

Status moe_experts_backward_dev(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                                const float* gates, const int64_t* offsets, const int32_t* sorted_slots,
                                const int32_t* slot_rank, const float* x, const float* w1, const float* w2,
                                const float* pre, const float* hs, const float* dy, float* dx, float* dw1, float* db1,
                                float* dw2, float* db2, float* dgates) {
  if ((G + MG_BN - 1) / MG_BN > 65535 || (D + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_experts_backward");
  Workspace w;
  Status s = w.derive(T, E, K, S, gates, offsets, sorted_slots, slot_rank, 2 * p64(S * G) + p64(S * D));
  if (!s.ok()) return s;
  float* dhs = w.extra;
  float* dpre = dhs + p64(S * G);
  float* dxr = dpre + p64(S * G);
  return backward_core(T, D, E, K, G, act, w.r, x, w1, w2, pre, hs, dy, dx, dw1, db1, dw2, db2, dgates, dhs, dpre, dxr);
}

// ---- the pieces of the forward (moeExpertUp / moeExpertDown / moeCombine) -------------------------------------
namespace {
// The routing of a primitive call on the device: uploaded (host routing, S = offsets[E]) or derived (device).
Status routing_for(Workspace& w, bool on_device, int64_t T, int64_t E, int64_t K, int64_t S, const float* gates,
                   const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank) {
  return on_device ? w.derive(T, E, K, S, gates, offsets, sorted_slots, slot_rank, 0)
                   : w.upload(T, E, K, gates, offsets, sorted_slots, slot_rank, 0);
}
}  // namespace

Status moe_expert_up(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                     const float* gates, const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                     const float* x, const float* w1, const float* b1, float* pre, float* hs) {
  if (T == 0) return Status{};
  if ((G + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_expert_up");
  Workspace w;
  Status s = routing_for(w, routing_on_device, T, E, K, S, gates, offsets, sorted_slots, slot_rank);
  if (!s.ok() || w.r.ntiles == 0) return s;
  dim3 up((unsigned)w.r.ntiles, (unsigned)((G + MG_BN - 1) / MG_BN));
  moe_grouped_gemm_kernel<true, false, true><<<up, MG_THREADS>>>(w.r.tiles, w.r.off, w.r.sorted, w.r.gates, K, x, D, w1,
                                                                 D, G, b1, act, pre, hs);
  return launch_status("moe_grouped_gemm_kernel<up>");
}

Status moe_expert_down(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S,
                       const float* gates, const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                       const float* hs, const float* w2, float* yr) {
  if (T == 0) return Status{};
  if ((D + MG_BN - 1) / MG_BN > 65535) return too_wide("moe_expert_down");
  Workspace w;
  Status s = routing_for(w, routing_on_device, T, E, K, S, gates, offsets, sorted_slots, slot_rank);
  if (!s.ok() || w.r.ntiles == 0) return s;
  dim3 down((unsigned)w.r.ntiles, (unsigned)((D + MG_BN - 1) / MG_BN));
  moe_grouped_gemm_kernel<false, false, false><<<down, MG_THREADS>>>(w.r.tiles, w.r.off, w.r.sorted, w.r.gates, K, hs,
                                                                     G, w2, G, D, nullptr, 0, yr, nullptr);
  return launch_status("moe_grouped_gemm_kernel<down>");
}

Status moe_combine(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t S, const float* gates,
                   const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank, const float* yr,
                   const float* b2, float* y) {
  if (T == 0) return Status{};
  Workspace w;
  Status s = routing_for(w, routing_on_device, T, E, K, S, gates, offsets, sorted_slots, slot_rank);
  if (!s.ok()) return s;
  moe_combine_kernel<<<grid_for(T * D, 256), 256>>>(T, D, K, w.r.rank, yr, b2, y);
  return launch_status("moe_combine_kernel");
}

}  // namespace cuda
}  // namespace sffn
