// CUDA PKM / PEER ops: embedding bag (weighted row gather) and PEER singleton experts, forward and backward with
// row-sparse table gradients, and the product-key top-k with its backward. Contract in sffn/cuda.h; kernels, the
// reverse index (stable radix sort of the positions by row) and the reduction orders in pkm_kernels.cuh and
// pkm_topk_kernels.cuh. Workspaces come from the stream-ordered pool and
// are freed stream-ordered; nothing is copied back (the sparse outputs are sized for the worst case).
// The top-k forward keeps every (token, head)'s sub-key scores in one workspace ([T·H·2, n] f32) and selects by rank
// counting (O(n²) per (token, head, half)): a first, correct version, not tuned.
// Test: test/gpu/pkm-ops.test.ts (GPU), test/gpu/pkm-emulated.test.ts (pkm_emu.cpp: host emulation).
#include <algorithm>

#include "common.cuh"
#include "pkm_kernels.cuh"
#include "pkm_topk_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {

// The reverse index of idx [M] over N rows, built on the device into a workspace (plus `extra` bytes for the
// caller): rows go straight to the caller's output (capacity cap = min(M, N)); pos [M] holds the positions sorted
// by row (ascending within a row), starts [cap + 1] each row's slice, nU the row count U.
struct DevRowIndex {
  DeviceScratch w;
  const int32_t* pos = nullptr;
  const int64_t* starts = nullptr;
  const int64_t* nU = nullptr;
  void* extra = nullptr;

  Status build(int64_t M, int64_t N, int64_t cap, const int32_t* idx, int32_t* rows, size_t extra_bytes) {
    const int64_t nc = (M + PK_CHUNK - 1) / PK_CHUNK;
    if (nc > 0x7fffffff) return status_of(cudaErrorInvalidValue, "pkm reverse index: T·J too large");
    // keys, vals and their ping-pong copies [M] i32 | hist [nc, 256] i32 | cnt [nc] i32 | coff [nc] i64 |
    // starts [cap + 1] i64 | nU i64 | extra.
    const size_t bm = pad256((size_t)std::max<int64_t>(M, 1) * 4), bh = pad256((size_t)(nc * PK_RADIX) * 4 + 4),
                 bc = pad256((size_t)nc * 4 + 4), bo = pad256((size_t)nc * 8 + 8), bs = pad256((size_t)(cap + 1) * 8),
                 bu = 256;
    Status s = device_malloc((void**)&w.p, 4 * bm + bh + bc + bo + bs + bu + extra_bytes);
    if (!s.ok()) return s;
    char* q = w.p;
    int32_t* keys[2] = {(int32_t*)q, (int32_t*)(q + bm)};
    int32_t* vals[2] = {(int32_t*)(q + 2 * bm), (int32_t*)(q + 3 * bm)};
    q += 4 * bm;
    int32_t* hist = (int32_t*)q;
    int32_t* cnt = (int32_t*)(q + bh);
    int64_t* coff = (int64_t*)(q + bh + bc);
    int64_t* st = (int64_t*)(q + bh + bc + bo);
    int64_t* u = (int64_t*)(q + bh + bc + bo + bs);
    extra = q + bh + bc + bo + bs + bu;
    starts = st;
    nU = u;
    int cur = 0;
    if (M > 0) {
      pk_keys_init_kernel<<<grid_for(M, 256), 256>>>(M, N, idx, keys[0], vals[0]);
      s = launch_status("pk_keys_init_kernel");
      // Keys are in [0, N]: enough 8-bit digits for N.
      for (int shift = 0; s.ok() && shift < 31 && (N >> shift) > 0; shift += 8) {
        pk_digit_hist_kernel<<<(unsigned)nc, PK_CHUNK>>>(M, shift, keys[cur], hist);
        s = launch_status("pk_digit_hist_kernel");
        if (s.ok()) {
          pk_digit_scan_kernel<<<1, PK_RADIX>>>(nc, hist);
          s = launch_status("pk_digit_scan_kernel");
        }
        if (s.ok()) {
          pk_digit_place_kernel<<<(unsigned)nc, PK_CHUNK>>>(M, shift, keys[cur], vals[cur], hist, keys[1 - cur],
                                                            vals[1 - cur]);
          s = launch_status("pk_digit_place_kernel");
          cur = 1 - cur;
        }
      }
      if (s.ok()) {
        pk_unique_count_kernel<<<(unsigned)nc, PK_CHUNK>>>(M, N, keys[cur], cnt);
        s = launch_status("pk_unique_count_kernel");
      }
    }
    if (s.ok()) {
      pk_chunk_offsets_kernel<<<1, PK_CHUNK>>>(nc, cnt, coff, u, st);
      s = launch_status("pk_chunk_offsets_kernel");
    }
    if (s.ok() && M > 0) {
      pk_rows_kernel<<<(unsigned)nc, PK_CHUNK>>>(M, N, keys[cur], coff, u, rows, st);
      s = launch_status("pk_rows_kernel");
    }
    pos = vals[cur];
    return s;
  }
};
}  // namespace

Status embedding_bag_forward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                             const float* V, float* out) {
  if (T == 0) return Status{};
  pk_weighted_rows_kernel<<<grid_for(T * D, 256), 256>>>(T, J, N, D, idx, w, V, out);
  return launch_status("pk_weighted_rows_kernel (out)");
}

Status embedding_bag_backward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                              const float* V, const float* dout, float* dw, int64_t cap, int32_t* rows,
                              float* values) {
  const int64_t M = T * J;
  Status s;
  if (M > 0) {
    pk_row_dot_kernel<<<warp_grid(M), 256>>>(T, J, N, D, idx, V, dout, dw);
    s = launch_status("pk_row_dot_kernel (dw)");
  }
  if (!s.ok() || cap == 0) return s;
  DevRowIndex ri;
  s = ri.build(M, N, cap, idx, rows, 0);
  if (s.ok()) {
    eb_dv_kernel<<<grid_for(cap * D, 256), 256>>>(J, D, cap, ri.nU, ri.starts, ri.pos, w, dout, rows, values);
    s = launch_status("eb_dv_kernel");
  }
  return s;
}

Status peer_forward(int64_t T, int64_t J, int64_t N, int64_t D, int act, const float* x, const int32_t* idx,
                    const float* g, const float* U, const float* V, float* out, float* h) {
  Status s;
  if (T * J > 0) {
    pk_row_dot_kernel<<<warp_grid(T * J), 256>>>(T, J, N, D, idx, U, x, h);
    s = launch_status("pk_row_dot_kernel (h)");
  }
  if (s.ok() && T > 0) {
    peer_fwd_kernel<<<grid_for(T * D, 256), 256>>>(T, J, N, D, act, idx, g, h, V, out);
    s = launch_status("peer_fwd_kernel");
  }
  return s;
}

Status peer_backward(int64_t T, int64_t J, int64_t N, int64_t D, int act, const float* x, const int32_t* idx,
                     const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                     float* dg, int64_t cap, int32_t* rows, float* dU, float* dV) {
  const int64_t M = T * J;
  // dh and gv [M] (double) live after the reverse index in one workspace.
  const size_t bd = pad256((size_t)std::max<int64_t>(M, 1) * 8);
  DevRowIndex ri;
  Status s = ri.build(cap > 0 ? M : 0, N, cap, idx, rows, 2 * bd);
  if (!s.ok()) return s;
  double* dh = (double*)ri.extra;
  double* gv = (double*)((char*)ri.extra + bd);
  if (M > 0) {
    peer_bwd_pos_kernel<<<warp_grid(M), 256>>>(T, J, N, D, act, idx, g, V, h, dout, dg, dh, gv);
    s = launch_status("peer_bwd_pos_kernel");
  }
  if (s.ok() && T > 0) {
    pk_weighted_rows_kernel<<<grid_for(T * D, 256), 256>>>(T, J, N, D, idx, dh, U, dx);
    s = launch_status("pk_weighted_rows_kernel (dx)");
  }
  if (s.ok() && cap > 0) {
    peer_duv_kernel<<<grid_for(cap * D, 256), 256>>>(J, D, cap, ri.nU, ri.starts, ri.pos, dh, gv, x, dout, rows, dU, dV);
    s = launch_status("peer_duv_kernel");
  }
  return s;
}

Status pkm_topk_forward(int64_t T, int64_t H, int64_t Hq, int64_t Hk, int64_t Dk, int64_t n, int64_t k, int act,
                        const float* q, const float* keys, int32_t* idx, float* scores, float* weights) {
  const PkmDims d{T, H, Hq, Hk, Dk, n, k};
  if (T == 0) return Status{};
  const int64_t rows = T * H * 2, C = pkt_num_candidates(k);
  // sub [rows, n] f32 | tv [rows, k] f32 | ti [rows, k] i32 | cv [T·H, C] f32 | cs [T·H, C] i32.
  const size_t bs = pad256((size_t)(rows * n) * 4), bt = pad256((size_t)(rows * k) * 4),
               bc = pad256((size_t)(T * H * C) * 4);
  DeviceScratch w;
  Status s = device_malloc((void**)&w.p, bs + 2 * bt + 2 * bc);
  if (!s.ok()) return s;
  float* sub = (float*)w.p;
  float* tv = (float*)(w.p + bs);
  int32_t* ti = (int32_t*)(w.p + bs + bt);
  float* cv = (float*)(w.p + bs + 2 * bt);
  int32_t* cs = (int32_t*)(w.p + bs + 2 * bt + bc);
  pkt_subscore_kernel<<<grid_for(rows * n, 256), 256>>>(d, q, keys, sub);
  s = launch_status("pkt_subscore_kernel");
  if (s.ok()) {
    pkt_half_topk_kernel<<<(unsigned)std::min<int64_t>(rows, 65535 * 8), 256>>>(rows, n, k, sub, tv, ti);
    s = launch_status("pkt_half_topk_kernel");
  }
  if (s.ok()) {
    pkt_select_kernel<<<(unsigned)std::min<int64_t>(T * H, 65535 * 8), 256>>>(d, C, tv, ti, cv, cs, idx, scores);
    s = launch_status("pkt_select_kernel");
  }
  if (s.ok()) {
    pkt_act_kernel<<<grid_for(T, 128), 128>>>(T, H, k, act, scores, weights);
    s = launch_status("pkt_act_kernel");
  }
  return s;
}

Status pkm_topk_backward(int64_t T, int64_t H, int64_t Hq, int64_t Hk, int64_t Dk, int64_t n, int64_t k, int act,
                         const float* q, const float* keys, const int32_t* idx, const float* scores,
                         const float* weights, const float* dweights, float* dq, float* dkeys) {
  const PkmDims d{T, H, Hq, Hk, Dk, n, k};
  const int64_t R = Hk * 2 * n, half = Dk / 2, M = T * H * 2 * k, cap = std::min(M, R);
  Status s = status_of(cudaMemset(dkeys, 0, (size_t)(R * half) * 4), "cudaMemset (dkeys)");
  if (!s.ok() || T == 0) return s;
  // ds [T·H·k] f64 | ent [M] i32 | rows [cap] i32; the reverse index has its own workspace.
  const size_t bd = pad256((size_t)(T * H * k) * 8), be = pad256((size_t)M * 4);
  DeviceScratch w;
  s = device_malloc((void**)&w.p, bd + be + pad256((size_t)cap * 4));
  if (!s.ok()) return s;
  double* ds = (double*)w.p;
  int32_t* ent = (int32_t*)(w.p + bd);
  int32_t* rows = (int32_t*)(w.p + bd + be);
  pkt_ds_kernel<<<grid_for(T, 128), 128>>>(T, H, k, act, scores, weights, dweights, ds);
  s = launch_status("pkt_ds_kernel");
  if (s.ok()) {
    pkt_entries_kernel<<<grid_for(M, 256), 256>>>(d, idx, ent);
    s = launch_status("pkt_entries_kernel");
  }
  if (s.ok()) {
    pkt_dq_kernel<<<grid_for(T * Hq * Dk, 256), 256>>>(d, keys, idx, ds, dq);
    s = launch_status("pkt_dq_kernel");
  }
  DevRowIndex ri;
  if (s.ok()) s = ri.build(M, R, cap, ent, rows, 0);
  if (s.ok()) {
    pkt_dkeys_kernel<<<grid_for(cap * half, 256), 256>>>(d, cap, ri.nU, rows, ri.starts, ri.pos, q, ds, dkeys);
    s = launch_status("pkt_dkeys_kernel");
  }
  return s;
}

}  // namespace cuda
}  // namespace sffn
