// CUDA MoE routing, forward and backward (contract in sffn/cuda.h; kernels in moe_route_kernels.cuh). Every array
// lives on the device and every buffer is sized for the worst case (T·K slots), so no launch waits for the host and
// the host never waits for counts. Workspaces come from the stream-ordered pool and are freed stream-ordered.
//   forward:  selection + gates (warp per token), aux partials per 256 tokens and their ordered final sum; with a
//             capacity, the counting scan over the choices in priority order and the drop; then histogram per 256
//             slots, per-expert scan over chunks, offsets (and dropped), stable placement, per-token counts.
//   backward: lse per token, the same aux sums (p̄, f, log p̄), then dz warp per token.
// Test: test/gpu/moe-route.test.ts (GPU), test/gpu/moe-emulated.test.ts (route_emu.cpp: host emulation).
#include <algorithm>

#include "common.cuh"
#include "moe_route_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {

// Workspace of the aux sums: lse [T] f32 | part_p [nc·E] f64 | part_f [nc·E] i32 | part_z [nc] f64 |
// pbar, f, logpb [E] f64 each | hist [ns·E] i32.
struct RouteWork {
  char* ws = nullptr;
  float* lse = nullptr;
  double* part_p = nullptr;
  int32_t* part_f = nullptr;
  double* part_z = nullptr;
  double *pbar = nullptr, *f = nullptr, *logpb = nullptr;
  int32_t* hist = nullptr;
  ~RouteWork() {
    if (ws) device_free(ws);
  }
  Status alloc(int64_t T, int64_t E, int64_t nc, int64_t ns) {
    const size_t b_lse = pad256((size_t)T * 4), b_pp = pad256((size_t)(nc * E) * 8), b_pf = pad256((size_t)(nc * E) * 4),
                 b_pz = pad256((size_t)nc * 8), b_e = pad256((size_t)E * 8), b_h = pad256((size_t)(ns * E) * 4);
    Status s = device_malloc((void**)&ws, b_lse + b_pp + b_pf + b_pz + 3 * b_e + b_h);
    if (!s.ok()) return s;
    char* p = ws;
    lse = (float*)p, p += b_lse;
    part_p = (double*)p, p += b_pp;
    part_f = (int32_t*)p, p += b_pf;
    part_z = (double*)p, p += b_pz;
    pbar = (double*)p, p += b_e;
    f = (double*)p, p += b_e;
    logpb = (double*)p, p += b_e;
    hist = (int32_t*)p;
    return s;
  }
};

// The aux sums from lse and choices: part sums per 256 tokens, then one ordered final block.
Status aux_sums(int64_t T, int64_t E, int64_t K, const float* z, const int32_t* choices, RouteWork& w, int64_t nc,
                bool stats, double* aux) {
  if (nc > 0) {
    moe_route_aux_partial_kernel<<<(unsigned)nc, RT_CHUNK>>>(T, E, K, z, w.lse, choices, w.part_p, w.part_f, w.part_z);
    Status s = launch_status("moe_route_aux_partial_kernel");
    if (!s.ok()) return s;
  }
  moe_route_aux_final_kernel<<<1, RT_CHUNK>>>(T, E, nc, w.part_p, w.part_f, w.part_z, stats ? w.pbar : nullptr,
                                              stats ? w.f : nullptr, stats ? w.logpb : nullptr, aux);
  return launch_status("moe_route_aux_final_kernel");
}
}  // namespace

Status moe_route_forward(int64_t T, int64_t E, int64_t K, int gate, int select, float threshold, float dropout,
                         uint64_t seed, int64_t capacity, const float* z, int32_t* choices, int32_t* ids, float* gates,
                         int32_t* counts, int64_t* offsets, int32_t* sorted_slots, int32_t* slot_rank,
                         int32_t* dropped, int32_t* token_counts, double* aux) {
  const int64_t TK = T * K;
  const int64_t nc = (T + RT_CHUNK - 1) / RT_CHUNK, ns = (TK + RT_CHUNK - 1) / RT_CHUNK;
  if (nc > 0x7fffffff || ns > 0x7fffffff) {
    Status s;
    s.code = (int)cudaErrorInvalidValue;
    s.message = "moe_route_forward: T·K too large for the grid";
    return s;
  }
  RouteWork w;
  Status s = w.alloc(T, E, nc, ns);
  if (!s.ok()) return s;
  int32_t* chosen = (int32_t*)w.pbar;  // [E] choices per expert before capacity (the forward has no use for pbar)
  const RouteSel sel{gate, select, threshold, dropout, seed};
  if (T > 0) {
    moe_route_topk_kernel<<<warp_grid(T), 256>>>(T, E, K, sel, z, w.lse, choices, ids, gates);
    s = launch_status("moe_route_topk_kernel");
  }
  if (s.ok()) s = aux_sums(T, E, K, z, choices, w, nc, false, aux);
  // Capacity: rank each choice among its expert's choices in priority order; drop those at or past C.
  const size_t hist_bytes = (size_t)(ns * E) * 4;
  if (s.ok() && capacity >= 0 && ns > 0) {
    s = status_of(cudaMemset(w.hist, 0, hist_bytes), "cudaMemset (capacity histogram)");
    if (s.ok()) moe_route_hist_kernel<<<(unsigned)ns, RT_CHUNK>>>(TK, E, T, K, true, choices, w.hist);
    if (s.ok()) s = launch_status("moe_route_hist_kernel (capacity)");
    if (s.ok()) {
      moe_route_scan_kernel<<<(unsigned)((E + 255) / 256), 256>>>(ns, E, w.hist, chosen);
      s = launch_status("moe_route_scan_kernel (capacity)");
    }
    if (s.ok()) {
      moe_route_capacity_kernel<<<(unsigned)ns, RT_CHUNK>>>(T, K, E, capacity, choices, w.hist, ids, gates);
      s = launch_status("moe_route_capacity_kernel");
    }
  }
  if (s.ok() && TK > 0) s = status_of(cudaMemset(sorted_slots, 0xff, (size_t)TK * 4), "cudaMemset (sortedSlots)");
  if (s.ok() && ns > 0) {
    s = status_of(cudaMemset(w.hist, 0, hist_bytes), "cudaMemset (histogram)");
    if (s.ok()) {
      moe_route_hist_kernel<<<(unsigned)ns, RT_CHUNK>>>(TK, E, T, K, false, ids, w.hist);
      s = launch_status("moe_route_hist_kernel");
    }
  }
  if (s.ok()) {
    moe_route_scan_kernel<<<(unsigned)((E + 255) / 256), 256>>>(ns, E, w.hist, counts);
    s = launch_status("moe_route_scan_kernel");
  }
  if (s.ok()) {
    moe_route_offsets_kernel<<<1, 1>>>(E, counts, capacity >= 0 && ns > 0 ? chosen : nullptr, capacity, offsets,
                                       dropped);
    s = launch_status("moe_route_offsets_kernel");
  }
  if (s.ok() && ns > 0) {
    moe_route_place_kernel<<<(unsigned)ns, RT_CHUNK>>>(TK, E, ids, w.hist, offsets, sorted_slots, slot_rank);
    s = launch_status("moe_route_place_kernel");
  }
  if (s.ok() && T > 0) {
    moe_route_token_counts_kernel<<<(unsigned)std::min<int64_t>((T + 255) / 256, 65535 * 8), 256>>>(T, K, ids,
                                                                                                  token_counts);
    s = launch_status("moe_route_token_counts_kernel");
  }
  return s;
}

Status moe_route_backward(int64_t T, int64_t E, int64_t K, int gate, const float* z, const int32_t* choices,
                          const int32_t* ids, const float* dgates, float w_entropy, float w_balance, float w_z,
                          float* dz) {
  if (T == 0) return Status{};
  const int64_t nc = (T + RT_CHUNK - 1) / RT_CHUNK;
  RouteWork w;
  Status s = w.alloc(T, E, nc, 0);
  if (!s.ok()) return s;
  const RouteSel sel{gate, 0, 0.f, 0.f, 0};
  moe_route_topk_kernel<<<warp_grid(T), 256>>>(T, E, K, sel, z, w.lse, nullptr, nullptr, nullptr);
  s = launch_status("moe_route_topk_kernel (lse)");
  if (s.ok()) s = aux_sums(T, E, K, z, choices, w, nc, true, nullptr);
  if (s.ok()) {
    moe_route_backward_kernel<<<warp_grid(T), 256>>>(T, E, K, gate, z, choices, ids, dgates, w.f, w.logpb, w_entropy,
                                                    w_balance, w_z, dz);
    s = launch_status("moe_route_backward_kernel");
  }
  return s;
}

}  // namespace cuda
}  // namespace sffn
