// Host emulation of the CUDA training row-op kernels (native/kernels/cuda/nn_kernels.cuh) against the reference
// ops of the CPU (native/kernels/ref/{layer_norm,embedding,cross_entropy,adamw}.cpp, compiled in): layer norm
// forward/backward (T across the 256-row chunks, D below and above the warp width), embedding forward/backward
// (repeated ids, a row with no token, an id out of range: NaN row, skipped by the backward), cross-entropy
// forward/backward (a target out of range: NaN loss and row), dense AdamW over three steps, sparse AdamW on rows
// with their own step counters (a row out of range skipped), linear forward/backward (with the GEMM kernel, composed
// as nn.cu does), dropout (the CPU's mask), sum of squares, scale. Launched as nn.cu does, with small grids so the
// loops stride. AddressSanitizer catches out-of-bounds accesses. Run by test/gpu/nn-emulated.test.ts; prints
// "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"
#include "gemm_kernels.cuh"
#include "nn_kernels.cuh"
#include "../../../native/kernels/ref/adamw.cpp"
#include "../../../native/kernels/ref/cross_entropy.cpp"
#include "../../../native/kernels/ref/embedding.cpp"
#include "../../../native/kernels/ref/layer_norm.cpp"
#include "../../../native/kernels/ref/linear.cpp"

using namespace sffn::cuda;

#define EMU_SEED 99u
#include "emu_check.h"

static bool layer_norm(int64_t T, int64_t D) {
  const float eps = 1e-5f;
  auto x = rnd(T * D, 2.f), g = rnd(D), b = rnd(D), dy = rnd(T * D);
  for (int64_t i = 0; i < T * D; i += 3) x[i] += 1.5f;  // a mean away from zero
  std::vector<float> y(T * D), mean(T), rstd(T), ry(T * D), rmean(T), rrstd(T);
  sffn::layer_norm_forward_ref(T, D, eps, x.data(), g.data(), b.data(), ry.data(), rmean.data(), rrstd.data());
  if (T > 0)
    launch(dim3{1, 1, 1}, 64, [&] {
      layer_norm_fwd_kernel(T, D, eps, x.data(), g.data(), b.data(), y.data(), mean.data(), rstd.data());
    });
  std::vector<float> dx(T * D), dg(D, -9.f), db(D, -9.f), rdx(T * D), rdg(D), rdb(D);
  sffn::layer_norm_backward_ref(T, D, x.data(), g.data(), rmean.data(), rrstd.data(), dy.data(), rdx.data(), rdg.data(),
                                rdb.data());
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  std::vector<double> pg(std::max<int64_t>(nc * D, 1)), pb(std::max<int64_t>(nc * D, 1));
  if (T > 0) {
    launch(dim3{1, 1, 1}, 96, [&] {
      layer_norm_bwd_dx_kernel(T, D, x.data(), g.data(), mean.data(), rstd.data(), dy.data(), dx.data());
    });
    launch(dim3{(unsigned)((D + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 2), 1}, NN_CHUNK, [&] {
      layer_norm_bwd_partial_kernel(T, D, x.data(), mean.data(), rstd.data(), dy.data(), pg.data(), pb.data());
    });
  }
  launch(dim3{1, 1, 1}, 64, [&] { nn_column_final_kernel(nc, D, pg.data(), pb.data(), dg.data(), db.data()); });
  char what[80];
  std::snprintf(what, sizeof what, "layerNorm T=%lld D=%lld", (long long)T, (long long)D);
  return report(what, near("y", y.data(), ry.data(), T * D, 1e-5) && near("mean", mean.data(), rmean.data(), T, 1e-6) &&
                          near("rstd", rstd.data(), rrstd.data(), T, 1e-6) && near("dx", dx.data(), rdx.data(), T * D, 1e-4) &&
                          near("dg", dg.data(), rdg.data(), D, 1e-5) && near("db", db.data(), rdb.data(), D, 1e-5));
}

static bool embedding(int64_t T, int64_t V, int64_t D, bool bad_id) {
  std::vector<int32_t> ids(T);
  for (auto& i : ids) i = (int32_t)(urand() % (V > 1 ? V - 1 : 1));  // row V-1 never used (when V > 1)
  if (bad_id && T > 3) ids[3] = (int32_t)V + 5;
  auto w = rnd(V * D), dy = rnd(T * D);
  std::vector<float> y(T * D, -9.f), ry(T * D);
  std::vector<int32_t> ok_ids(ids);
  for (auto& i : ok_ids) i = i >= 0 && i < V ? i : 0;
  sffn::embedding_forward_ref(T, V, D, ok_ids.data(), w.data(), ry.data());
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= V)
      for (int64_t d = 0; d < D; ++d) ry[t * D + d] = NAN;
  if (T > 0) launch(dim3{2, 1, 1}, 64, [&] { embedding_fwd_kernel(T, V, D, ids.data(), w.data(), y.data()); });
  // Backward reference: the tokens with a bad id contribute nothing.
  std::vector<float> dyr(dy);
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= V)
      for (int64_t d = 0; d < D; ++d) dyr[t * D + d] = 0.f;
  std::vector<float> rdw(V * D), dw(V * D, -9.f);
  sffn::embedding_backward_ref(T, V, D, ok_ids.data(), dyr.data(), rdw.data());
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  std::vector<int32_t> hist(std::max<int64_t>(nc * V, 1), 0), counts(V), list(std::max<int64_t>(T, 1), -1);
  std::vector<int64_t> offsets(V + 1);
  if (nc > 0) launch(dim3{(unsigned)nc, 1, 1}, NN_CHUNK, [&] { embedding_hist_kernel(T, V, ids.data(), hist.data()); });
  launch(dim3{1, 1, 1}, 32, [&] { embedding_scan_kernel(nc, V, hist.data(), counts.data()); });
  launch(dim3{1, 1, 1}, NN_CHUNK, [&] { nn_offsets_kernel(V, counts.data(), offsets.data()); });
  if (nc > 0)
    launch(dim3{(unsigned)nc, 1, 1}, NN_CHUNK, [&] {
      embedding_place_kernel(T, V, ids.data(), hist.data(), offsets.data(), list.data());
    });
  launch(dim3{2, 1, 1}, 64, [&] { embedding_reduce_kernel(V, D, offsets.data(), list.data(), dy.data(), dw.data()); });
  // The token lists must be in token order (what makes the sum order fixed).
  bool sorted_ok = true;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = offsets[v]; k + 1 < offsets[v + 1]; ++k) sorted_ok &= list[k] < list[k + 1] && ids[list[k]] == v;
  char what[80];
  std::snprintf(what, sizeof what, "embedding T=%lld V=%lld D=%lld bad_id=%d", (long long)T, (long long)V, (long long)D,
                bad_id);
  return report(what, near("y", y.data(), ry.data(), T * D, 0) && near("dw", dw.data(), rdw.data(), V * D, 1e-6) && sorted_ok);
}

static bool cross_entropy(int64_t T, int64_t V, bool bad_target) {
  auto logits = rnd(T * V, 4.f);
  std::vector<int32_t> tg(T);
  for (auto& t : tg) t = (int32_t)(urand() % V);
  std::vector<float> rlse(T), lse(T), rd(T * V), d(T * V);
  const double rloss = sffn::cross_entropy_forward_ref(T, V, logits.data(), tg.data(), rlse.data());
  sffn::cross_entropy_backward_ref(T, V, logits.data(), tg.data(), rlse.data(), 0.7f, rd.data());
  if (bad_target && T > 1) tg[1] = -1;
  std::vector<double> term(std::max<int64_t>(T, 1));
  double loss = -1;
  if (T > 0)
    launch(dim3{2, 1, 1}, NN_CHUNK, [&] {
      cross_entropy_fwd_kernel(T, V, logits.data(), tg.data(), lse.data(), term.data());
    });
  launch(dim3{1, 1, 1}, NN_CHUNK, [&] { cross_entropy_loss_kernel(T, term.data(), &loss); });
  if (T > 0)
    launch(dim3{2, 1, 1}, 64, [&] {
      cross_entropy_bwd_kernel(T, V, logits.data(), tg.data(), lse.data(), 0.7 / (double)T, d.data());
    });
  bool ok = near("lse", lse.data(), rlse.data(), T, 1e-6);
  if (bad_target && T > 1) {
    ok = ok && std::isnan(loss) && std::isnan(d[1 * V]);
    for (int64_t v = 0; v < V; ++v) d[1 * V + v] = rd[1 * V + v];  // the rest must still match
  } else {
    ok = ok && std::fabs(loss - rloss) <= 1e-9 * (1 + std::fabs(rloss));
  }
  ok = ok && near("dlogits", d.data(), rd.data(), T * V, 1e-5);
  char what[80];
  std::snprintf(what, sizeof what, "crossEntropy T=%lld V=%lld bad_target=%d", (long long)T, (long long)V, bad_target);
  return report(what, ok);
}

static bool adamw(int64_t n) {
  const sffn::AdamwHyper hp{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f};
  auto p = rnd(n), m = std::vector<float>(n, 0.f), v = std::vector<float>(n, 0.f);
  auto rp = p, rm = m, rv = v;
  bool ok = true;
  for (int64_t step = 1; step <= 3; ++step) {
    auto g = rnd(n);
    sffn::adamw_step_ref(n, rp.data(), g.data(), rm.data(), rv.data(), hp, step);
    const double bc1 = 1 - std::pow((double)hp.beta1, (double)step), bc2 = 1 - std::pow((double)hp.beta2, (double)step);
    AdamwCoef c{{(float)(1 - (double)hp.lr * hp.weight_decay), hp.beta1, (float)(1 - (double)hp.beta1), hp.beta2,
                 (float)(1 - (double)hp.beta2), (float)(hp.lr / bc1), (float)(1 / std::sqrt(bc2)), hp.eps}};
    launch(dim3{2, 1, 1}, 64, [&] { adamw_kernel(n, p.data(), g.data(), m.data(), v.data(), c); });
    ok = ok && near("p", p.data(), rp.data(), n, 1e-6) && near("m", m.data(), rm.data(), n, 1e-6) &&
         near("v", v.data(), rv.data(), n, 1e-6);
  }
  char what[80];
  std::snprintf(what, sizeof what, "adamw n=%lld, 3 steps", (long long)n);
  return report(what, ok);
}

static bool sparse_adamw(int64_t N, int64_t D) {
  const sffn::AdamwHyper hp{1e-2f, 0.9f, 0.99f, 1e-8f, 0.05f};
  auto p = rnd(N * D), m = rnd(N * D, 0.1f), v = rnd(N * D, 0.1f);
  for (float& f : v) f = std::fabs(f);
  std::vector<int32_t> steps(N);
  for (auto& s : steps) s = (int32_t)(urand() % 5);
  std::vector<int32_t> rows;
  for (int64_t r = 0; r < N; ++r)
    if (urand() % 3 == 0) rows.push_back((int32_t)r);
  const int64_t U = (int64_t)rows.size();
  auto g = rnd(U * D);
  auto rp = p, rm = m, rv = v;
  auto rsteps = steps;
  sffn::sparse_adamw_step_ref(N, D, rp.data(), rm.data(), rv.data(), rsteps.data(), U, rows.data(), g.data(), hp);
  std::vector<int32_t> rows_bad(rows);
  rows_bad.push_back((int32_t)N + 3);  // out of range: skipped
  std::vector<float> g_bad(g);
  g_bad.resize((U + 1) * D, 1.f);
  launch(dim3{3, 1, 1}, 32, [&] {
    sparse_adamw_kernel(N, D, p.data(), m.data(), v.data(), steps.data(), U + 1, rows_bad.data(), g_bad.data(), hp.lr,
                        hp.beta1, hp.beta2, hp.eps, hp.weight_decay);
  });
  bool ok = near("p", p.data(), rp.data(), N * D, 1e-6) && near("m", m.data(), rm.data(), N * D, 1e-6) &&
            near("v", v.data(), rv.data(), N * D, 1e-6) && steps == rsteps;
  char what[80];
  std::snprintf(what, sizeof what, "sparseAdamw N=%lld D=%lld U=%lld", (long long)N, (long long)D, (long long)U);
  return report(what, ok);
}

// gemm_f32 as kernels/cuda/gemm.cu launches it (grid over 128×128 tiles), for the linear compositions of nn.cu.
static void emu_gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                         const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const dim3 grid{(unsigned)((M + F_BM - 1) / F_BM), (unsigned)((N + F_BN - 1) / F_BN), 1};
  if (!ta && !tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
  if (!ta && tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<false, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
  if (ta && !tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<true, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
  if (ta && tb) launch(grid, F_THREADS, [&] { gemm_f32_kernel<true, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, 0, 0, 0); });
}

// linear forward and backward composed exactly as nn.cu's linear_forward / linear_backward.
static bool linear(int64_t T, int64_t K, int64_t N, bool bias) {
  auto x = rnd(T * K), w = rnd(N * K), b = rnd(N), dy = rnd(T * N);
  std::vector<float> y(T * N, -9.f), ry(T * N), dx(T * K, -9.f), dw(N * K, -9.f), db(N, -9.f), rdx(T * K), rdw(N * K),
      rdb(N);
  sffn::linear_forward_ref(T, K, N, x.data(), w.data(), bias ? b.data() : nullptr, ry.data());
  sffn::linear_backward_ref(T, K, N, x.data(), w.data(), dy.data(), rdx.data(), rdw.data(), rdb.data());
  if (bias) launch(dim3{2, 1, 1}, 64, [&] { bias_rows_kernel(T, N, b.data(), y.data()); });
  emu_gemm_f32(false, true, T, N, K, 1.f, x.data(), K, w.data(), K, bias ? 1.f : 0.f, y.data(), N);
  emu_gemm_f32(false, false, T, K, N, 1.f, dy.data(), N, w.data(), K, 0.f, dx.data(), K);
  emu_gemm_f32(true, false, N, K, T, 1.f, dy.data(), N, x.data(), K, 0.f, dw.data(), K);
  const int64_t nc = (T + NN_CHUNK - 1) / NN_CHUNK;
  std::vector<double> part(nc * N);
  launch(dim3{(unsigned)((N + NN_CHUNK - 1) / NN_CHUNK), (unsigned)std::min<int64_t>(nc, 2), 1}, NN_CHUNK,
         [&] { column_sum_partial_kernel(T, N, dy.data(), part.data()); });
  launch(dim3{1, 1, 1}, 64, [&] { column_sum_final_kernel(nc, N, part.data(), db.data()); });
  char what[80];
  std::snprintf(what, sizeof what, "linear T=%lld K=%lld N=%lld bias=%d", (long long)T, (long long)K, (long long)N, bias);
  return report(what, near("y", y.data(), ry.data(), T * N, 1e-5) && near("dx", dx.data(), rdx.data(), T * K, 1e-5) &&
                          near("dw", dw.data(), rdw.data(), N * K, 1e-4) && near("db", db.data(), rdb.data(), N, 1e-5));
}

// An independent copy of the CPU's dropout_keep (kernels/cpu/dropout.cpp), so the kernel's mask is checked against it.
static bool cpu_keep(uint64_t seed, int64_t i, float p) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 32) / 4294967296.0 >= (double)p;
}

static bool dropout_norm(int64_t n) {
  auto x = rnd(n);
  std::vector<float> y(n, -9.f), ry(n);
  const float p = 0.3f;
  const uint64_t seed = 77;
  const float scale = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < n; ++i) ry[i] = cpu_keep(seed, i, p) ? x[i] * scale : 0.0f;
  launch(dim3{3, 1, 1}, 64, [&] { dropout_kernel(n, p, seed, scale, x.data(), y.data()); });
  const int64_t nb = (n + NN_SQ_BLOCK - 1) / NN_SQ_BLOCK;
  std::vector<double> part(std::max<int64_t>(nb, 1));
  double sq = -1, rsq = 0;
  for (float v : x) rsq += (double)v * v;
  if (nb > 0) launch(dim3{2, 1, 1}, NN_CHUNK, [&] { sum_squares_partial_kernel(n, x.data(), part.data()); });
  launch(dim3{1, 1, 1}, NN_CHUNK, [&] { sum_final_kernel(nb, part.data(), &sq); });
  std::vector<float> xs(x), rxs(x);
  for (float& v : rxs) v *= 0.25f;
  launch(dim3{2, 1, 1}, 64, [&] { scale_kernel(n, 0.25f, xs.data()); });
  char what[80];
  std::snprintf(what, sizeof what, "dropout, sumSquares, scaleInPlace n=%lld", (long long)n);
  return report(what, near("dropout", y.data(), ry.data(), n, 0) && std::fabs(sq - rsq) <= 1e-12 * (1 + rsq) &&
                          near("scale", xs.data(), rxs.data(), n, 0));
}

int main() {
  bool ok = true;
  ok &= layer_norm(37, 50);
  ok &= layer_norm(300, 33);   // T crosses a 256-row chunk
  ok &= layer_norm(5, 300);    // D spans two column blocks
  ok &= layer_norm(0, 8);
  ok &= embedding(600, 50, 7, false);
  ok &= embedding(40, 3, 33, true);
  ok &= embedding(0, 4, 2, false);
  ok &= cross_entropy(300, 77, false);
  ok &= cross_entropy(3, 1000, true);
  ok &= cross_entropy(0, 5, false);
  ok &= adamw(1000);
  ok &= sparse_adamw(50, 13);
  ok &= sparse_adamw(7, 300);
  ok &= linear(37, 20, 9, true);
  ok &= linear(140, 130, 33, false);  // K and N across 128-wide tiles
  ok &= linear(300, 8, 5, true);      // T across the 256-row chunks of the bias gradient
  ok &= dropout_norm(20000);          // three 8192-element partials
  ok &= dropout_norm(0);
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
