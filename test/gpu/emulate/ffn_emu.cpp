// Host emulation of the CUDA dense FFN (native/kernels/cuda/ffn_kernels.cuh row kernels, composed with the GEMM kernel
// and the bias / column-sum kernels exactly as ffn.cu does) against the reference (native/kernels/ref/ffn_dense.cpp,
// compiled in): every activation, dense and Top-K (k across the row, ties from relu zeros), with and without biases,
// F and D across 128-wide GEMM tiles, T across the 256-row chunks. AddressSanitizer catches out-of-bounds accesses.
// Run by test/gpu/nn-emulated.test.ts; prints "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"
#include "gemm_kernels.cuh"
#include "ffn_kernels.cuh"
#include "nn_kernels.cuh"
#include "../../../native/kernels/ref/ffn_dense.cpp"

// The scalar activations live in kernels/cpu/moe_experts.cpp (which needs the thread pool): copies of their math.
namespace sffn {
double act_forward_d(Act act, double a) {
  switch (act) {
    case Act::Relu: return a > 0 ? a : 0.0;
    case Act::Gelu: return 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0)));
    case Act::Silu: return a / (1.0 + std::exp(-a));
    default: return a;
  }
}
double act_backward_d(Act act, double a) {
  switch (act) {
    case Act::Relu: return a > 0 ? 1.0 : 0.0;
    case Act::Gelu: return 0.5 * (1.0 + std::erf(a / std::sqrt(2.0))) + a * std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI);
    case Act::Silu: {
      const double s = 1.0 / (1.0 + std::exp(-a));
      return s * (1.0 + a * (1.0 - s));
    }
    default: return 1.0;
  }
}
float act_forward(Act act, float a) { return (float)act_forward_d(act, a); }
}  // namespace sffn

using namespace sffn::cuda;

static uint32_t g_rng = 4711;
static uint32_t urand() { return g_rng = g_rng * 1664525u + 1013904223u; }
static std::vector<float> rnd(int64_t n, float scale = 1.f) {
  std::vector<float> v(n);
  for (float& f : v) f = scale * ((float)((urand() >> 8) & 0xffff) / 32768.f - 1.f);
  return v;
}

static void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                 int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const dim3 grid{(unsigned)((M + F_BM - 1) / F_BM), (unsigned)((N + F_BN - 1) / F_BN), 1};
  if (!ta && !tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, false>(M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
  if (!ta && tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, true>(M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
  if (ta && !tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<true, false>(M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
}

static void colsum(int64_t T, int64_t C, const float* a, float* out) {
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  std::vector<double> part(std::max<int64_t>(nc * C, 1));
  if (nc > 0)
    launch(dim3{(unsigned)((C + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 2), 1}, NN_CHUNK,
           [&] { column_sum_partial_kernel(T, C, a, part.data()); });
  launch(dim3{1, 1, 1}, 64, [&] { column_sum_final_kernel(nc, C, part.data(), out); });
}

static bool near(const char* what, const float* a, const float* b, int64_t n, double tol) {
  for (int64_t i = 0; i < n; ++i)
    if (!(std::fabs((double)a[i] - b[i]) <= tol * (1 + std::fabs((double)b[i])))) {
      std::printf("  %s[%lld]: emulated %.9g, reference %.9g\n", what, (long long)i, a[i], b[i]);
      return false;
    }
  return true;
}

static bool run(int64_t T, int64_t D, int64_t F, int act, int64_t topk, bool bias) {
  auto x = rnd(T * D), w1 = rnd(D * F, 0.5f), b1 = rnd(F), w2 = rnd(F * D, 0.5f), b2 = rnd(D), dy = rnd(T * D);
  sffn::FfnShape s;
  s.T = T, s.D = D, s.F = F, s.act = (sffn::Act)act, s.topk = topk;
  const float* pb1 = bias ? b1.data() : nullptr;
  const float* pb2 = bias ? b2.data() : nullptr;
  std::vector<float> rpre(T * F), rh(T * F), ry(T * D), rdx(T * D), rdw1(D * F), rdw2(F * D), rdb1(F), rdb2(D);
  sffn::ffn_dense_forward_ref(s, x.data(), w1.data(), pb1, w2.data(), pb2, rpre.data(), rh.data(), ry.data());
  // Forward, as ffn_dense_forward.
  std::vector<float> pre(T * F, -9.f), h(T * F, -9.f), y(T * D, -9.f);
  if (bias) launch(dim3{2, 1, 1}, 64, [&] { bias_rows_kernel(T, F, pb1, pre.data()); });
  gemm(false, false, T, F, D, x.data(), D, w1.data(), F, bias ? 1.f : 0.f, pre.data(), F);
  launch(dim3{2, 1, 1}, 64, [&] { ffn_act_kernel(T, F, act, topk, pre.data(), h.data()); });
  if (bias) launch(dim3{2, 1, 1}, 64, [&] { bias_rows_kernel(T, D, pb2, y.data()); });
  gemm(false, false, T, D, F, h.data(), F, w2.data(), D, bias ? 1.f : 0.f, y.data(), D);
  // Backward from the emulated pre/h (the reference recomputes its mask from pre: give it the same pre).
  sffn::ffn_dense_backward_ref(s, x.data(), w1.data(), w2.data(), pre.data(), h.data(), dy.data(), rdx.data(),
                               rdw1.data(), rdb1.data(), rdw2.data(), rdb2.data());
  std::vector<float> dpre(T * F, -9.f), tmp(T * F, -9.f), dx(T * D, -9.f), dw1(D * F, -9.f), dw2(F * D, -9.f),
      db1(F, -9.f), db2(D, -9.f);
  gemm(false, true, T, F, D, dy.data(), D, w2.data(), D, 0.f, dpre.data(), F);
  launch(dim3{2, 1, 1}, 64, [&] { ffn_act_grad_kernel(T, F, act, topk, pre.data(), dpre.data(), tmp.data()); });
  gemm(true, false, F, D, T, h.data(), F, dy.data(), D, 0.f, dw2.data(), D);
  gemm(true, false, D, F, T, x.data(), D, dpre.data(), F, 0.f, dw1.data(), F);
  gemm(false, true, T, D, F, dpre.data(), F, w1.data(), F, 0.f, dx.data(), D);
  colsum(T, F, dpre.data(), db1.data());
  colsum(T, D, dy.data(), db2.data());
  const bool ok = near("pre", pre.data(), rpre.data(), T * F, 1e-5) && near("h", h.data(), rh.data(), T * F, 1e-5) &&
                  near("y", y.data(), ry.data(), T * D, 1e-4) && near("dx", dx.data(), rdx.data(), T * D, 1e-4) &&
                  near("dw1", dw1.data(), rdw1.data(), D * F, 1e-4) && near("dw2", dw2.data(), rdw2.data(), F * D, 1e-4) &&
                  (!bias || (near("db1", db1.data(), rdb1.data(), F, 1e-4) && near("db2", db2.data(), rdb2.data(), D, 1e-4)));
  std::printf("ffnDense T=%-4lld D=%-4lld F=%-4lld act=%d topk=%-3lld bias=%d  %s\n", (long long)T, (long long)D,
              (long long)F, act, (long long)topk, bias, ok ? "ok" : "MISMATCH");
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return ok && g_error.empty();
}

int main() {
  bool ok = true;
  for (int act = 0; act < 3; ++act) ok &= run(37, 20, 48, act, 0, act != 1);
  for (int act = 0; act < 3; ++act) ok &= run(29, 16, 70, act, 9, act == 1);  // Top-K activation
  ok &= run(300, 9, 140, 0, 32, true);   // T across 256-row chunks, F across two tiles, relu zeros tie at the cut
  ok &= run(12, 130, 33, 2, 1, false);   // D across two tiles, k = 1
  ok &= run(5, 7, 16, 1, 16, true);      // k = F: dense
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
