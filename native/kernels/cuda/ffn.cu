// CUDA dense FFN (the dense baseline and the Top-K activation FFN), forward and backward: contract in sffn/cuda.h;
// row kernels in ffn_kernels.cuh, the products through gemm_f32, bias rows and ordered column sums from
// nn_kernels.cuh. Deterministic (fixed reduction orders, no float atomics).
// Test: test/gpu/ffn-dense.test.ts (GPU), test/gpu/nn-emulated.test.ts (ffn_emu.cpp: host emulation).
#include <algorithm>

#include "common.cuh"
#include "ffn_kernels.cuh"
#include "nn_kernels.cuh"

namespace sffn {
namespace cuda {

namespace {
unsigned row_grid(int64_t T) { return (unsigned)std::max<int64_t>(1, std::min<int64_t>(T, 65535 * 8)); }

// out [C] = Σ_t a[t, c] in chunk order (the nn.cu scheme), with a workspace of nc·C doubles.
Status column_sums(int64_t T, int64_t C, const float* a, float* out) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  DeviceScratch w;
  Status s = device_malloc((void**)&w.p, (size_t)(nc * C) * 8);
  if (!s.ok()) return s;
  double* part = (double*)w.p;
  if (nc > 0) {
    dim3 grid((unsigned)((C + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 65535));
    column_sum_partial_kernel<<<grid, NN_CHUNK>>>(T, C, a, part);
    s = launch_status("column_sum_partial_kernel");
  }
  if (s.ok()) {
    column_sum_final_kernel<<<(unsigned)std::max<int64_t>(1, std::min<int64_t>((C + 255) / 256, 65535)), 256>>>(
        nc, C, part, out);
    s = launch_status("column_sum_final_kernel");
  }
  return s;
}

Status bias_then(int64_t T, int64_t N, const float* b, float* y) {
  if (!b || T == 0) return Status{};
  bias_rows_kernel<<<grid_for(T * N, 256), 256>>>(T, N, b, y);
  return launch_status("bias_rows_kernel");
}
}  // namespace

Status ffn_dense_forward(int64_t T, int64_t D, int64_t F, int act, int64_t topk, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, float* pre, float* h, float* y) {
  if (T == 0) return Status{};
  Status s = bias_then(T, F, b1, pre);
  if (s.ok()) s = gemm_f32(false, false, T, F, D, 1.f, x, D, w1, F, b1 ? 1.f : 0.f, pre, F);
  if (s.ok()) {
    ffn_act_kernel<<<row_grid(T), FFN_THREADS>>>(T, F, act, topk, pre, h);
    s = launch_status("ffn_act_kernel");
  }
  if (s.ok()) s = bias_then(T, D, b2, y);
  if (s.ok()) s = gemm_f32(false, false, T, D, F, 1.f, h, F, w2, D, b2 ? 1.f : 0.f, y, D);
  return s;
}

Status ffn_dense_backward(int64_t T, int64_t D, int64_t F, int act, int64_t topk, const float* x, const float* w1,
                          const float* w2, const float* pre, const float* h, const float* dy, float* dx, float* dw1,
                          float* db1, float* dw2, float* db2) {
  Status s;
  if (T == 0) {  // nothing flows back: zero weight and bias gradients (dx is empty)
    s = status_of(cudaMemset(dw1, 0, (size_t)(D * F) * 4), "cudaMemset (dw1)");
    if (s.ok()) s = status_of(cudaMemset(dw2, 0, (size_t)(F * D) * 4), "cudaMemset (dw2)");
    if (s.ok() && db1) s = status_of(cudaMemset(db1, 0, (size_t)F * 4), "cudaMemset (db1)");
    if (s.ok() && db2) s = status_of(cudaMemset(db2, 0, (size_t)D * 4), "cudaMemset (db2)");
    return s;
  }
  // Workspace: dpre [T, F] | the mask's activations [T, F] (top-k only).
  const bool masked = topk > 0 && topk < F;
  DeviceScratch w;
  s = device_malloc((void**)&w.p, (size_t)(T * F) * 4 * (masked ? 2 : 1));
  if (!s.ok()) return s;
  float* dpre = (float*)w.p;
  float* tmp = masked ? dpre + T * F : nullptr;
  // dpre = (dy · W2ᵀ) ⊙ act'(pre) ⊙ mask.
  s = gemm_f32(false, true, T, F, D, 1.f, dy, D, w2, D, 0.f, dpre, F);
  if (s.ok()) {
    ffn_act_grad_kernel<<<row_grid(T), FFN_THREADS>>>(T, F, act, topk, pre, dpre, tmp);
    s = launch_status("ffn_act_grad_kernel");
  }
  if (s.ok()) s = gemm_f32(true, false, F, D, T, 1.f, h, F, dy, D, 0.f, dw2, D);      // dw2 = hᵀ · dy
  if (s.ok()) s = gemm_f32(true, false, D, F, T, 1.f, x, D, dpre, F, 0.f, dw1, F);    // dw1 = xᵀ · dpre
  if (s.ok()) s = gemm_f32(false, true, T, D, F, 1.f, dpre, F, w1, F, 0.f, dx, D);    // dx = dpre · W1ᵀ
  if (s.ok() && db1) s = column_sums(T, F, dpre, db1);
  if (s.ok() && db2) s = column_sums(T, D, dy, db2);
  return s;
}

}  // namespace cuda
}  // namespace sffn
