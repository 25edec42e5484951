// CUDA causal self-attention with rotary positions, forward and backward (contract in sffn/cuda.h; kernels and
// their reduction orders in attn_kernels.cuh). The backward's unrotated dq, dk and the row terms live in a pooled
// workspace freed stream-ordered. Test: test/gpu/attention.test.ts (GPU), test/gpu/nn-emulated.test.ts
// (attn_emu.cpp: host emulation).
#include <algorithm>
#include <cmath>

#include "attn_kernels.cuh"
#include "common.cuh"

namespace sffn {
namespace cuda {

namespace {
Status dh_check(const char* op, int64_t dh) {
  if (dh <= 32 * AT_MAX_NE && dh % 2 == 0) return Status{};
  Status s;
  s.code = (int)cudaErrorInvalidValue;
  s.message = std::string(op) + ": the head width must be even and at most 256 on cuda, got " + std::to_string(dh);
  return s;
}
}  // namespace

Status attention_forward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr, float* kr,
                         float* lse) {
  Status s = dh_check("attention", dh);
  if (!s.ok() || B * S == 0) return s;
  const int64_t D = H * dh, rows = B * H * S;
  attn_rope_kernel<<<grid_for(rows * dh / 2, 256), 256>>>(B, S, H, dh, qkv, qr, 3 * D, 0, 1.0, true);
  s = launch_status("attn_rope_kernel (q)");
  if (s.ok()) {
    attn_rope_kernel<<<grid_for(rows * dh / 2, 256), 256>>>(B, S, H, dh, qkv, kr, 3 * D, D, 1.0, true);
    s = launch_status("attn_rope_kernel (k)");
  }
  if (s.ok()) {
    attn_fwd_kernel<<<grid_for(rows * 32, 256), 256>>>(B, S, H, dh, (float)(1.0 / std::sqrt((double)dh)), qkv, qr, kr,
                                                       out, lse);
    s = launch_status("attn_fwd_kernel");
  }
  return s;
}

Status attention_backward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                          const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv) {
  Status s = dh_check("attentionBackward", dh);
  if (!s.ok() || B * S == 0) return s;
  const int64_t D = H * dh, rows = B * H * S;
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  // Workspace: dq, dk [B, H, S, dh] (unrotated) | dots [B, H, S].
  char* ws = nullptr;
  s = device_malloc((void**)&ws, (size_t)(2 * rows * dh + rows) * 4);
  if (!s.ok()) return s;
  float* dq = (float*)ws;
  float* dk = dq + rows * dh;
  float* dots = dk + rows * dh;
  attn_bwd_dq_kernel<<<grid_for(rows * 32, 256), 256>>>(B, S, H, dh, scale, qkv, out, qr, kr, lse, dout, dots, dq);
  s = launch_status("attn_bwd_dq_kernel");
  if (s.ok()) {
    attn_bwd_dkv_kernel<<<grid_for(rows * 32, 256), 256>>>(B, S, H, dh, scale, qkv, qr, kr, lse, dout, dots, dk, dqkv);
    s = launch_status("attn_bwd_dkv_kernel");
  }
  if (s.ok()) {
    attn_rope_kernel<<<grid_for(rows * dh / 2, 256), 256>>>(B, S, H, dh, dq, dqkv, 3 * D, 0, -1.0, false);
    s = launch_status("attn_rope_kernel (dq)");
  }
  if (s.ok()) {
    attn_rope_kernel<<<grid_for(rows * dh / 2, 256), 256>>>(B, S, H, dh, dk, dqkv, 3 * D, D, -1.0, false);
    s = launch_status("attn_rope_kernel (dk)");
  }
  Status f = device_free(ws);  // stream-ordered: after the kernels above
  return s.ok() ? f : s;
}

}  // namespace cuda
}  // namespace sffn
