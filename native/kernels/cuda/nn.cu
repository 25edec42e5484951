// CUDA training row ops: layer norm, embedding, cross-entropy, linear (forward and backward), AdamW (dense,
// sparse rows), dropout, and the gradient-norm reductions (sum of squares, scale). Contract in sffn/cuda.h; kernels and their reduction orders in nn_kernels.cuh. Workspaces come from the
// stream-ordered pool and are freed stream-ordered. Only the scalars (crossEntropy's loss, sumSquares) are copied back
// to the host.
// Test: test/gpu/nn.test.ts (GPU), test/gpu/nn-emulated.test.ts (nn_emu.cpp: host emulation).
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "nn_kernels.cuh"

namespace sffn {
namespace cuda {


Status layer_norm_forward(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                          float* mean, float* rstd) {
  if (T == 0) return Status{};
  layer_norm_fwd_kernel<<<warp_grid(T), 256>>>(T, D, eps, x, g, b, y, mean, rstd);
  return launch_status("layer_norm_fwd_kernel");
}

Status layer_norm_backward(int64_t T, int64_t D, const float* x, const float* g, const float* mean, const float* rstd,
                           const float* dy, float* dx, float* dg, float* db) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  DeviceScratch w;
  const size_t bp = pad256((size_t)(nc * D) * 8);
  Status s = device_malloc((void**)&w.p, 2 * bp);
  if (!s.ok()) return s;
  double* pg = (double*)w.p;
  double* pb = (double*)(w.p + bp);
  if (T > 0) {
    layer_norm_bwd_dx_kernel<<<warp_grid(T), 256>>>(T, D, x, g, mean, rstd, dy, dx);
    s = launch_status("layer_norm_bwd_dx_kernel");
    if (s.ok()) {
      dim3 grid((unsigned)((D + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 65535));
      layer_norm_bwd_partial_kernel<<<grid, NN_CHUNK>>>(T, D, x, mean, rstd, dy, pg, pb);
      s = launch_status("layer_norm_bwd_partial_kernel");
    }
  }
  if (s.ok()) {
    nn_column_final_kernel<<<grid_for(D, 256), 256>>>(nc, D, pg, pb, dg, db);
    s = launch_status("nn_column_final_kernel");
  }
  return s;
}

Status embedding_forward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y) {
  if (T == 0) return Status{};
  embedding_fwd_kernel<<<grid_for(T * D, 256), 256>>>(T, V, D, ids, w, y);
  return launch_status("embedding_fwd_kernel");
}

Status embedding_backward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  if (nc > 0x7fffffff) return status_of(cudaErrorInvalidValue, "embedding_backward: T too large");
  // Workspace: hist [nc, V] i32 | counts [V] i32 | offsets [V + 1] i64 | list [T] i32.
  DeviceScratch w;
  const size_t bh = pad256((size_t)(nc * V) * 4), bc = pad256((size_t)V * 4), bo = pad256((size_t)(V + 1) * 8),
               bl = pad256((size_t)T * 4);
  Status s = device_malloc((void**)&w.p, bh + bc + bo + bl);
  if (!s.ok()) return s;
  int32_t* hist = (int32_t*)w.p;
  int32_t* counts = (int32_t*)(w.p + bh);
  int64_t* offsets = (int64_t*)(w.p + bh + bc);
  int32_t* list = (int32_t*)(w.p + bh + bc + bo);
  if (nc > 0) {
    s = status_of(cudaMemset(hist, 0, (size_t)(nc * V) * 4), "cudaMemset (embedding histogram)");
    if (s.ok()) {
      embedding_hist_kernel<<<(unsigned)nc, NN_CHUNK>>>(T, V, ids, hist);
      s = launch_status("embedding_hist_kernel");
    }
  }
  if (s.ok()) {
    embedding_scan_kernel<<<grid_for(V, 256), 256>>>(nc, V, hist, counts);
    s = launch_status("embedding_scan_kernel");
  }
  if (s.ok()) {
    nn_offsets_kernel<<<1, NN_CHUNK>>>(V, counts, offsets);
    s = launch_status("nn_offsets_kernel");
  }
  if (s.ok() && nc > 0) {
    embedding_place_kernel<<<(unsigned)nc, NN_CHUNK>>>(T, V, ids, hist, offsets, list);
    s = launch_status("embedding_place_kernel");
  }
  if (s.ok()) {
    embedding_reduce_kernel<<<grid_for(V * D, 256), 256>>>(V, D, offsets, list, dy, dw);
    s = launch_status("embedding_reduce_kernel");
  }
  return s;
}

Status cross_entropy_forward(int64_t T, int64_t V, const float* logits, const int32_t* targets, float* lse,
                             double* loss) {
  *loss = 0;
  DeviceScratch w;
  const size_t bt = pad256((size_t)T * 8);
  Status s = device_malloc((void**)&w.p, bt + 8);
  if (!s.ok()) return s;
  double* term = (double*)w.p;
  double* dloss = (double*)(w.p + bt);
  if (T > 0) {
    cross_entropy_fwd_kernel<<<(unsigned)std::min<int64_t>(T, 65535 * 8), NN_CHUNK>>>(T, V, logits, targets, lse, term);
    s = launch_status("cross_entropy_fwd_kernel");
  }
  if (s.ok()) {
    cross_entropy_loss_kernel<<<1, NN_CHUNK>>>(T, term, dloss);
    s = launch_status("cross_entropy_loss_kernel");
  }
  if (s.ok()) s = copy_to_host(loss, dloss, 8);
  return s;
}

Status cross_entropy_backward(int64_t T, int64_t V, const float* logits, const int32_t* targets, const float* lse,
                              float dloss, float* dlogits) {
  if (T == 0) return Status{};
  cross_entropy_bwd_kernel<<<grid_for(T * V, 256), 256>>>(T, V, logits, targets, lse, (double)dloss / (double)T, dlogits);
  return launch_status("cross_entropy_bwd_kernel");
}

Status adamw_step(int64_t n, float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t step) {
  if (n == 0) return Status{};
  const double bc1 = 1 - std::pow((double)beta1, (double)step), bc2 = 1 - std::pow((double)beta2, (double)step);
  AdamwCoef c{{(float)(1 - (double)lr * weight_decay), beta1, (float)(1 - (double)beta1), beta2,
               (float)(1 - (double)beta2), (float)(lr / bc1), (float)(1 / std::sqrt(bc2)), eps}};
  adamw_kernel<<<grid_for(n, 256), 256>>>(n, p, g, m, v, c);
  return launch_status("adamw_kernel");
}

Status sparse_adamw_step(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                         const int32_t* rows, const float* g, float lr, float beta1, float beta2, float eps,
                         float weight_decay) {
  if (U == 0) return Status{};
  const int threads = D >= 256 ? 256 : (int)((D + 31) / 32 * 32);
  sparse_adamw_kernel<<<(unsigned)std::min<int64_t>(U, 65535 * 8), threads>>>(N, D, p, m, v, steps, U, rows, g, lr,
                                                                             beta1, beta2, eps, weight_decay);
  return launch_status("sparse_adamw_kernel");
}

Status linear_forward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  if (T == 0) return Status{};
  if (b) {
    bias_rows_kernel<<<grid_for(T * N, 256), 256>>>(T, N, b, y);
    Status s = launch_status("bias_rows_kernel");
    if (!s.ok()) return s;
  }
  // y [T, N] = x [T, K] · (w [N, K])ᵀ (+ y holding the bias rows).
  return gemm_f32(false, true, T, N, K, 1.f, x, K, w, K, b ? 1.f : 0.f, y, N);
}

Status linear_backward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                       float* dw, float* db) {
  Status s;
  if (T == 0) {  // nothing flows back: zero weight gradients (dx is empty)
    if (dw) s = status_of(cudaMemset(dw, 0, (size_t)(N * K) * 4), "cudaMemset (dw)");
    if (s.ok() && db) s = status_of(cudaMemset(db, 0, (size_t)N * 4), "cudaMemset (db)");
    return s;
  }
  // dx [T, K] = dy [T, N] · w [N, K];  dw [N, K] = (dy [T, N])ᵀ · x [T, K].
  if (dx) s = gemm_f32(false, false, T, K, N, 1.f, dy, N, w, K, 0.f, dx, K);
  if (s.ok() && dw) s = gemm_f32(true, false, N, K, T, 1.f, dy, N, x, K, 0.f, dw, K);
  if (s.ok() && db) {
    const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
    DeviceScratch w2;
    s = device_malloc((void**)&w2.p, (size_t)(nc * N) * 8);
    if (!s.ok()) return s;
    double* part = (double*)w2.p;
    dim3 grid((unsigned)((N + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 65535));
    column_sum_partial_kernel<<<grid, NN_CHUNK>>>(T, N, dy, part);
    s = launch_status("column_sum_partial_kernel");
    if (s.ok()) {
      column_sum_final_kernel<<<grid_for(N, 256), 256>>>(nc, N, part, db);
      s = launch_status("column_sum_final_kernel");
    }
  }
  return s;
}

Status dropout_apply(int64_t n, float p, uint64_t seed, const float* x, float* y) {
  if (n == 0) return Status{};
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  dropout_kernel<<<grid_for(n, 256), 256>>>(n, p, seed, scale, x, y);
  return launch_status("dropout_kernel");
}

Status sum_squares(int64_t n, const float* x, double* out) {
  *out = 0;
  const int64_t nb = (n + NN_SQ_BLOCK - 1) / NN_SQ_BLOCK;
  DeviceScratch w;
  Status s = device_malloc((void**)&w.p, pad256((size_t)nb * 8) + 8);
  if (!s.ok()) return s;
  double* part = (double*)w.p;
  double* dsum = (double*)(w.p + pad256((size_t)nb * 8));
  if (nb > 0) {
    sum_squares_partial_kernel<<<(unsigned)std::min<int64_t>(nb, 65535 * 8), NN_CHUNK>>>(n, x, part);
    s = launch_status("sum_squares_partial_kernel");
  }
  if (s.ok()) {
    sum_final_kernel<<<1, NN_CHUNK>>>(nb, part, dsum);
    s = launch_status("sum_final_kernel");
  }
  if (s.ok()) s = copy_to_host(out, dsum, 8);
  return s;
}

Status scale_inplace(int64_t n, float sc, float* x) {
  if (n == 0) return Status{};
  scale_kernel<<<grid_for(n, 256), 256>>>(n, sc, x);
  return launch_status("scale_kernel");
}

}  // namespace cuda
}  // namespace sffn
