// CUDA training row ops: layer norm, embedding, cross-entropy (forward and backward) and AdamW (dense, sparse
// rows). Contract in sffn/cuda.h; kernels and their reduction orders in nn_kernels.cuh. Workspaces come from the
// stream-ordered pool and are freed stream-ordered. Only crossEntropy's scalar loss is copied back to the host.
// Test: test/gpu/nn.test.ts (GPU), test/gpu/nn-emulated.test.ts (nn_emu.cpp: host emulation).
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "nn_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {
unsigned grid_n(int64_t n, int threads) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535 * 8));
}
unsigned warp_rows(int64_t rows) { return grid_n(rows * 32, 256); }
size_t pad(size_t b) { return (b + 255) / 256 * 256; }

// A pooled device workspace freed stream-ordered at scope exit.
struct Scratch {
  char* p = nullptr;
  ~Scratch() {
    if (p) device_free(p);
  }
};
}  // namespace

Status layer_norm_forward(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                          float* mean, float* rstd) {
  if (T == 0) return Status{};
  layer_norm_fwd_kernel<<<warp_rows(T), 256>>>(T, D, eps, x, g, b, y, mean, rstd);
  return launch_status("layer_norm_fwd_kernel");
}

Status layer_norm_backward(int64_t T, int64_t D, const float* x, const float* g, const float* mean, const float* rstd,
                           const float* dy, float* dx, float* dg, float* db) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  Scratch w;
  const size_t bp = pad((size_t)(nc * D) * 8);
  Status s = device_malloc((void**)&w.p, 2 * bp);
  if (!s.ok()) return s;
  double* pg = (double*)w.p;
  double* pb = (double*)(w.p + bp);
  if (T > 0) {
    layer_norm_bwd_dx_kernel<<<warp_rows(T), 256>>>(T, D, x, g, mean, rstd, dy, dx);
    s = launch_status("layer_norm_bwd_dx_kernel");
    if (s.ok()) {
      dim3 grid((unsigned)((D + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 65535));
      layer_norm_bwd_partial_kernel<<<grid, NN_CHUNK>>>(T, D, x, mean, rstd, dy, pg, pb);
      s = launch_status("layer_norm_bwd_partial_kernel");
    }
  }
  if (s.ok()) {
    nn_column_final_kernel<<<grid_n(D, 256), 256>>>(nc, D, pg, pb, dg, db);
    s = launch_status("nn_column_final_kernel");
  }
  return s;
}

Status embedding_forward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y) {
  if (T == 0) return Status{};
  embedding_fwd_kernel<<<grid_n(T * D, 256), 256>>>(T, V, D, ids, w, y);
  return launch_status("embedding_fwd_kernel");
}

Status embedding_backward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  if (nc > 0x7fffffff) return status_of(cudaErrorInvalidValue, "embedding_backward: T too large");
  // Workspace: hist [nc, V] i32 | counts [V] i32 | offsets [V + 1] i64 | list [T] i32.
  Scratch w;
  const size_t bh = pad((size_t)(nc * V) * 4), bc = pad((size_t)V * 4), bo = pad((size_t)(V + 1) * 8),
               bl = pad((size_t)T * 4);
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
    embedding_scan_kernel<<<grid_n(V, 256), 256>>>(nc, V, hist, counts);
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
    embedding_reduce_kernel<<<grid_n(V * D, 256), 256>>>(V, D, offsets, list, dy, dw);
    s = launch_status("embedding_reduce_kernel");
  }
  return s;
}

Status cross_entropy_forward(int64_t T, int64_t V, const float* logits, const int32_t* targets, float* lse,
                             double* loss) {
  *loss = 0;
  Scratch w;
  const size_t bt = pad((size_t)T * 8);
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
  cross_entropy_bwd_kernel<<<grid_n(T * V, 256), 256>>>(T, V, logits, targets, lse, (double)dloss / (double)T, dlogits);
  return launch_status("cross_entropy_bwd_kernel");
}

Status adamw_step(int64_t n, float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t step) {
  if (n == 0) return Status{};
  const double bc1 = 1 - std::pow((double)beta1, (double)step), bc2 = 1 - std::pow((double)beta2, (double)step);
  AdamwCoef c{{(float)(1 - (double)lr * weight_decay), beta1, (float)(1 - (double)beta1), beta2,
               (float)(1 - (double)beta2), (float)(lr / bc1), (float)(1 / std::sqrt(bc2)), eps}};
  adamw_kernel<<<grid_n(n, 256), 256>>>(n, p, g, m, v, c);
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

}  // namespace cuda
}  // namespace sffn
