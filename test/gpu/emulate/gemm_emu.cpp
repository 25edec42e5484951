// Host emulation of the CUDA GEMM kernels, for machines without a GPU.
//
// Compiles the exact kernels of native/kernels/cuda/gemm_kernels.cuh as host C++ (SFFN_CUDA_EMULATION): every
// CUDA thread of a block is a std::thread, __syncthreads/__syncwarp are barriers, cp.async is a synchronous copy
// with the same zero-fill (and an alignment check), and WMMA fragments are whole 16×16 tiles held by every lane
// (loads check the 32-byte pointer alignment and ldm rules). Built with AddressSanitizer, so any out-of-bounds
// global or shared-memory access in the kernels' indexing aborts the run.
//
// It checks indexing, masking of ragged tiles, transposes, padded leading dims, the aligned (cp.async) and
// unaligned staging paths, the multi-stage pipeline's stage reuse and the batch grid-stride loop against a
// float64 reference. It cannot check timing-dependent behaviour (a missing cp.async wait would still pass here).
//
//   g++ -std=c++20 -O1 -g -fsanitize=address -pthread -Inative/include -Inative/kernels/cuda \
//       test/gpu/emulate/gemm_emu.cpp -o /tmp/gemm_emu && /tmp/gemm_emu
// Run by test/gpu/gemm-emulated.test.ts. Prints one line per problem and "ok" at the end; exit code 1 on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "gemm_kernels.cuh"

using namespace sffn::cuda;

// ---- driver -----------------------------------------------------------------------------------------------
struct Problem {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  int64_t pad, gap, batch;
};

static uint32_t g_rng = 12345;
static float frand() {
  g_rng = g_rng * 1664525u + 1013904223u;
  return (float)((g_rng >> 8) & 0xffff) / 32768.f - 1.f;
}
static uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static int64_t span(int64_t batch, int64_t s, int64_t rows, int64_t cols, int64_t ld) {
  return batch == 0 || rows == 0 || cols == 0 ? 0 : (batch - 1) * s + (rows - 1) * ld + cols;
}

static bool run(const Problem& p, bool bf16, int zcap) {
  // pad < 0: round leading dims and batch strides up to multiples of 8 (16-byte aligned bf16 rows).
  auto ld = [&](int64_t cols) { return p.pad < 0 ? (cols + 7) / 8 * 8 : cols + p.pad; };
  auto stride = [&](int64_t n) { return p.pad < 0 ? (n + p.gap + 7) / 8 * 8 : n + p.gap; };
  const int64_t lda = ld(p.ta ? p.M : p.K), ldb = ld(p.tb ? p.K : p.N), ldc = ld(p.N);
  const int64_t sa = stride(span(1, 0, p.ta ? p.K : p.M, p.ta ? p.M : p.K, lda));
  const int64_t sb = stride(span(1, 0, p.tb ? p.N : p.K, p.tb ? p.K : p.N, ldb));
  const int64_t sc = stride(span(1, 0, p.M, p.N, ldc));
  const int64_t nA = std::max<int64_t>(1, span(p.batch, sa, p.ta ? p.K : p.M, p.ta ? p.M : p.K, lda));
  const int64_t nB = std::max<int64_t>(1, span(p.batch, sb, p.tb ? p.N : p.K, p.tb ? p.K : p.N, ldb));
  const int64_t nC = std::max<int64_t>(1, span(p.batch, sc, p.M, p.N, ldc));
  // Exact-size heap buffers, so AddressSanitizer sees any read or write past them.
  std::vector<float> Af(nA), Bf(nB), C0(nC);
  std::vector<uint16_t> Ah(nA), Bh(nB);
  for (int64_t i = 0; i < nA; ++i) Ah[i] = to_bf16(Af[i] = frand());
  for (int64_t i = 0; i < nB; ++i) Bh[i] = to_bf16(Bf[i] = frand());
  for (int64_t i = 0; i < nC; ++i) C0[i] = frand();
  if (bf16) {
    for (int64_t i = 0; i < nA; ++i) Af[i] = from_bf16(Ah[i]);
    for (int64_t i = 0; i < nB; ++i) Bf[i] = from_bf16(Bh[i]);
  }
  std::vector<double> want(C0.begin(), C0.end());
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t i = 0; i < p.M; ++i)
      for (int64_t j = 0; j < p.N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < p.K; ++k)
          s += (double)(p.ta ? Af[b * sa + k * lda + i] : Af[b * sa + i * lda + k]) *
               (double)(p.tb ? Bf[b * sb + j * ldb + k] : Bf[b * sb + k * ldb + j]);
        const int64_t c = b * sc + i * ldc + j;
        want[c] = p.alpha * s + (p.beta == 0 ? 0.0 : p.beta * C0[c]);
      }

  std::vector<float> C(C0);
  float* Cp = C.data();
  const int64_t batch = p.batch;
  const float alpha = p.alpha, beta = p.beta;
  const int64_t M = p.M, N = p.N, K = p.K;
  std::string path;
  if (!bf16) {
    dim3 grid{(unsigned)((M + F_BM - 1) / F_BM), (unsigned)((N + F_BN - 1) / F_BN), (unsigned)std::min<int64_t>(batch, zcap)};
    const float *A = Af.data(), *B = Bf.data();
    path = "f32";
    if (!p.ta && !p.tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, false>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); });
    if (!p.ta && p.tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, true>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); });
    if (p.ta && !p.tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<true, false>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); });
    if (p.ta && p.tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<true, true>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); });
  } else {
    dim3 grid{(unsigned)((M + H_BM - 1) / H_BM), (unsigned)((N + H_BN - 1) / H_BN), (unsigned)std::min<int64_t>(batch, zcap)};
    const uint16_t *A = Ah.data(), *B = Bh.data();
    // The same rule as gemm_bf16() in gemm.cu (vector storage is 16-byte aligned here).
    const bool aligned = lda % 8 == 0 && ldb % 8 == 0 && (batch == 1 || (sa % 8 == 0 && sb % 8 == 0));
    path = aligned ? "bf16 cp.async" : "bf16 unaligned";
#define EMU_BF16(TA, TB)                                                                                          \
  if (p.ta == TA && p.tb == TB) {                                                                                 \
    if (aligned)                                                                                                  \
      launch(grid, H_THREADS, [&] { gemm_bf16_kernel<TA, TB, true>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); }); \
    else                                                                                                          \
      launch(grid, H_THREADS, [&] { gemm_bf16_kernel<TA, TB, false>(M, N, K, alpha, A, lda, B, ldb, beta, Cp, ldc, batch, sa, sb, sc); }); \
  }
    EMU_BF16(false, false)
    EMU_BF16(false, true)
    EMU_BF16(true, false)
    EMU_BF16(true, true)
  }

  double max_err = 0;
  int64_t bad = -1;
  for (int64_t i = 0; i < nC; ++i) {
    const double err = std::fabs((double)C[i] - want[i]);
    max_err = std::max(max_err, err);
    if (bad < 0 && !(err <= 1e-4 * std::sqrt((double)K + 1) + 1e-4 * std::fabs(want[i]))) bad = i;
  }
  std::printf("%-15s ta=%d tb=%d M=%-4lld N=%-4lld K=%-4lld pad=%lld gap=%lld batch=%lld zgrid=%d  max|err| %.3g%s\n",
              path.c_str(), p.ta, p.tb, (long long)M, (long long)N, (long long)K, (long long)p.pad, (long long)p.gap,
              (long long)batch, zcap, max_err, bad >= 0 ? "  MISMATCH" : "");
  if (bad >= 0) std::printf("  first mismatch at C[%lld]: got %.7g, expected %.7g\n", (long long)bad, C[bad], want[bad]);
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return bad < 0 && g_error.empty();
}

int main() {
  bool ok = true;
  for (int bf = 0; bf < 2; ++bf)
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 2, tb = t & 1;
      // Ragged edges in every dimension, K spanning several pipeline stages (K-tiles of 8 and 32).
      ok &= run({ta, tb, 130, 67, 129, 1.5f, 0.f, 0, 0, 1}, bf, 1);
      ok &= run({ta, tb, 3, 5, 7, 1.f, 0.f, 0, 0, 1}, bf, 1);
      // beta, padded leading dims and a batch walked by a z-grid smaller than the batch.
      ok &= run({ta, tb, 40, 136, 70, -0.75f, 0.5f, 8, 8, 3}, bf, 2);
      // Ragged shapes with 16-byte aligned rows: the cp.async path zero-fills partial chunks.
      ok &= run({ta, tb, 130, 67, 129, 1.f, 0.f, -1, 0, 1}, bf, 1);
      ok &= run({ta, tb, 9, 250, 77, 2.f, -1.f, -1, 3, 3}, bf, 2);
      // Unaligned rows (bf16 fallback path).
      ok &= run({ta, tb, 33, 20, 45, 1.f, 0.25f, 3, 5, 2}, bf, 2);
    }
  // K = 0: C = beta·C.
  ok &= run({false, false, 5, 9, 0, 1.f, 2.f, 0, 0, 1}, false, 1);
  ok &= run({false, false, 5, 9, 0, 1.f, 2.f, 0, 0, 1}, true, 1);
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
