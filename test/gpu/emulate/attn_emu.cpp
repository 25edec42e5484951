// Host emulation of the CUDA attention kernels (native/kernels/cuda/attn_kernels.cuh), launched as attn.cu does but
// with small grids, against the reference (native/kernels/ref/attention.cpp, compiled in): head widths below, at
// and above the warp width (ragged lanes), sequences across the 32-key steps, several batches and heads, forward
// (out, qr, kr, lse) and backward (dqkv). AddressSanitizer catches out-of-bounds accesses. Run by
// test/gpu/nn-emulated.test.ts; prints "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"
#include "attn_kernels.cuh"
#include "../../../native/kernels/ref/attention.cpp"

using namespace sffn::cuda;

static uint32_t g_rng = 31337;
static std::vector<float> rnd(int64_t n) {
  std::vector<float> v(n);
  for (float& f : v) f = (float)(((g_rng = g_rng * 1664525u + 1013904223u) >> 8) & 0xffff) / 32768.f - 1.f;
  return v;
}

static bool near(const char* what, const float* a, const float* b, int64_t n, double tol) {
  for (int64_t i = 0; i < n; ++i)
    if (!(std::fabs((double)a[i] - b[i]) <= tol * (1 + std::fabs((double)b[i])))) {
      std::printf("  %s[%lld]: emulated %.9g, reference %.9g\n", what, (long long)i, a[i], b[i]);
      return false;
    }
  return true;
}

static bool run(int64_t B, int64_t S, int64_t H, int64_t dh) {
  const int64_t D = H * dh, T = B * S, rows = B * H * S;
  auto qkv = rnd(T * 3 * D), dout = rnd(T * D);
  std::vector<float> rout(T * D), rqr(rows * dh), rkr(rows * dh), rlse(rows), rdq(T * 3 * D);
  sffn::attention_forward_ref(B, S, H, dh, qkv.data(), rout.data(), rqr.data(), rkr.data(), rlse.data());
  sffn::attention_backward_ref(B, S, H, dh, qkv.data(), rout.data(), rqr.data(), rkr.data(), rlse.data(), dout.data(),
                               rdq.data());
  std::vector<float> out(T * D, -9.f), qr(rows * dh, -9.f), kr(rows * dh, -9.f), lse(rows, -9.f), dqkv(T * 3 * D, -9.f),
      dq(rows * dh), dk(rows * dh), dots(rows);
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  launch(dim3{2, 1, 1}, 64, [&] { attn_rope_kernel(B, S, H, dh, qkv.data(), qr.data(), 3 * D, 0, 1.0, true); });
  launch(dim3{2, 1, 1}, 64, [&] { attn_rope_kernel(B, S, H, dh, qkv.data(), kr.data(), 3 * D, D, 1.0, true); });
  launch(dim3{2, 1, 1}, 64, [&] {
    attn_fwd_kernel(B, S, H, dh, scale, qkv.data(), qr.data(), kr.data(), out.data(), lse.data());
  });
  launch(dim3{2, 1, 1}, 64, [&] {
    attn_bwd_dq_kernel(B, S, H, dh, scale, qkv.data(), out.data(), qr.data(), kr.data(), lse.data(), dout.data(),
                       dots.data(), dq.data());
  });
  launch(dim3{2, 1, 1}, 64, [&] {
    attn_bwd_dkv_kernel(B, S, H, dh, scale, qkv.data(), qr.data(), kr.data(), lse.data(), dout.data(), dots.data(),
                        dk.data(), dqkv.data());
  });
  launch(dim3{2, 1, 1}, 64, [&] { attn_rope_kernel(B, S, H, dh, dq.data(), dqkv.data(), 3 * D, 0, -1.0, false); });
  launch(dim3{2, 1, 1}, 64, [&] { attn_rope_kernel(B, S, H, dh, dk.data(), dqkv.data(), 3 * D, D, -1.0, false); });
  const bool ok = near("qr", qr.data(), rqr.data(), rows * dh, 1e-6) && near("kr", kr.data(), rkr.data(), rows * dh, 1e-6) &&
                  near("lse", lse.data(), rlse.data(), rows, 1e-5) && near("out", out.data(), rout.data(), T * D, 1e-5) &&
                  near("dqkv", dqkv.data(), rdq.data(), T * 3 * D, 1e-4);
  std::printf("attention B=%lld S=%-3lld H=%lld dh=%-3lld  %s\n", (long long)B, (long long)S, (long long)H,
              (long long)dh, ok ? "ok" : "MISMATCH");
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return ok && g_error.empty();
}

int main() {
  bool ok = true;
  ok &= run(1, 1, 1, 8);
  ok &= run(2, 45, 2, 8);    // lanes past dh idle; 45 keys: two 32-key steps
  ok &= run(1, 70, 3, 40);   // dh across the warp width (ragged second column set)
  ok &= run(2, 33, 1, 64);
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
