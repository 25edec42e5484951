// Host emulation of the CUDA σ-MoE expert forward and backward kernels (native/kernels/cuda/moe_kernels.cuh) against a float64
// reference of moe.h's contract: random routings (K distinct experts per token, slots dropped, empty experts, an
// expert with several 128-row tiles, no kept slot at all), every activation, with and without biases. Launches
// exactly as moe_experts.cu does (row tiles from moe_row_tiles, grid y over column tiles). AddressSanitizer
// catches any out-of-bounds access. Run by test/gpu/moe-emulated.test.ts; prints "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_emu.h"
#include "moe_kernels.cuh"

using namespace sffn::cuda;

static uint32_t g_rng = 777;
static uint32_t urand() { return g_rng = g_rng * 1664525u + 1013904223u; }
static float frand() { return (float)((urand() >> 8) & 0xffff) / 32768.f - 1.f; }

static double act_grad_d(int act, double a) {
  switch (act) {
    case 0: return a > 0 ? 1 : 0;
    case 1: return 0.5 * (1 + std::erf(a / std::sqrt(2.0))) + a * std::exp(-0.5 * a * a) / std::sqrt(2 * M_PI);
    case 2: {
      const double s = 1 / (1 + std::exp(-a));
      return s * (1 + a * (1 - s));
    }
    default: return 1;
  }
}

static double act_d(int act, double a) {
  switch (act) {
    case 0: return a > 0 ? a : 0;
    case 1: return 0.5 * a * (1 + std::erf(a / std::sqrt(2.0)));
    case 2: return a / (1 + std::exp(-a));
    default: return a;
  }
}

struct Case {
  int64_t T, D, E, K, G;
  int act;
  bool bias;
  int skew;       // 0: uniform experts; 1: expert 0 takes every first choice
  int drop_pct;   // share of slots dropped (capacity-style)
};

// The device-routing path of moe_experts.cu (moe_experts_forward_dev / _backward_dev): the routing arrays are
// sanitised on the device, the tile map has the worst-case size (S + 127·E) / 128 with unused entries, sorted has
// Sc entries (Sc = T·K for a device routing). Returns every output, forward and backward.
struct DevOut {
  std::vector<float> pre, hs, y, dx, dw1, dw2, db1, db2, dg;
};
static DevOut device_path(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                          const int64_t* offsets, const int32_t* sorted, const int32_t* rank, int64_t Sc,
                          const float* x, const float* w1, const float* b1, const float* w2, const float* b2,
                          const float* dy) {
  const int64_t TK = T * K, max_tiles = (Sc + (MG_BM - 1) * E) / MG_BM;
  std::vector<int32_t> s2(std::max<int64_t>(Sc, 1)), r2(std::max<int64_t>(TK, 1)), tiles(2 * std::max<int64_t>(max_tiles, 1));
  std::vector<int64_t> off2(E + 1);
  launch(dim3{2, 1, 1}, 64, [&] { moe_sanitize_routing_kernel(TK, Sc, sorted, rank, s2.data(), r2.data()); });
  launch(dim3{1, 1, 1}, 1, [&] { moe_device_tiles_kernel(E, Sc, offsets, off2.data(), tiles.data(), max_tiles); });
  DevOut o;
  const size_t SG = std::max<int64_t>(Sc * G, 1), SD = std::max<int64_t>(Sc * D, 1);
  o.pre.assign(SG, 0.f), o.hs.assign(SG, 0.f), o.y.assign(T * D, -7.f);
  std::vector<float> yr(SD, -7.f), dhs(SG, -7.f), dpre(SG, -7.f), dxr(SD, -7.f);
  const unsigned nt = (unsigned)max_tiles;
  if (nt > 0) {
    launch(dim3{nt, (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<true, false, true>(tiles.data(), off2.data(), s2.data(), gates, K, x, D, w1, D, G, b1, act,
                                                 o.pre.data(), o.hs.data());
    });
    launch(dim3{nt, (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<false, false, false>(tiles.data(), off2.data(), s2.data(), gates, K, o.hs.data(), G, w2, G,
                                                   D, nullptr, act, yr.data(), nullptr);
    });
  }
  launch(dim3{3, 1, 1}, 64, [&] { moe_combine_kernel(T, D, K, r2.data(), yr.data(), b2, o.y.data()); });
  o.dx.assign(T * D, -7.f), o.dw1.assign(E * D * G, -7.f), o.dw2.assign(E * G * D, -7.f), o.db1.assign(E * G, -7.f);
  o.db2.assign(D, -7.f), o.dg.assign(std::max<int64_t>(TK, 1), 0.f);
  if (nt > 0) {
    launch(dim3{nt, (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<true, true, false>(tiles.data(), off2.data(), s2.data(), gates, K, dy, D, w2, D, G, nullptr,
                                                 act, dhs.data(), nullptr);
    });
    launch(dim3{2, 1, 1}, 64, [&] {
      moe_gate_grad_kernel(Sc, G, &off2[E], s2.data(), gates, o.pre.data(), dhs.data(), act, dpre.data(), o.dg.data());
    });
    launch(dim3{nt, (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<false, true, false>(tiles.data(), off2.data(), s2.data(), gates, K, dpre.data(), G, w1, G, D,
                                                  nullptr, act, dxr.data(), nullptr);
    });
  }
  launch(dim3{3, 1, 1}, 64, [&] { moe_combine_kernel(T, D, K, r2.data(), dxr.data(), nullptr, o.dx.data()); });
  launch(dim3{(unsigned)(E * ((G + MG_BM - 1) / MG_BM)), (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
    moe_wgrad_kernel<false, true>(G, D, off2.data(), s2.data(), K, o.hs.data(), G, dy, D, o.dw2.data());
  });
  launch(dim3{(unsigned)(E * ((D + MG_BM - 1) / MG_BM)), (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
    moe_wgrad_kernel<true, false>(D, G, off2.data(), s2.data(), K, x, D, dpre.data(), G, o.dw1.data());
  });
  launch(dim3{2, 1, 1}, 64, [&] { moe_bias_grad_kernel(E, G, off2.data(), dpre.data(), o.db1.data()); });
  launch(dim3{1, 1, 1}, 32, [&] { moe_col_sum_kernel(T, D, dy, o.db2.data()); });
  return o;
}

static bool bits_equal(const char* what, const float* a, const float* b, int64_t n) {
  if (n > 0 && std::memcmp(a, b, (size_t)n * sizeof(float)) != 0) {
    std::printf("  device routing: %s differs from the host-routing result\n", what);
    return false;
  }
  return true;
}

// Garbage device routing (slots, ranks and offsets out of range, offsets decreasing): only AddressSanitizer judges.
static bool garbage() {
  const int64_t T = 30, D = 9, E = 4, K = 2, G = 11, TK = T * K;
  std::vector<float> gates(TK, 0.5f), x(T * D, 1.f), w1(E * D * G, 0.1f), w2(E * G * D, 0.1f), dy(T * D, 1.f);
  std::vector<int32_t> sorted(TK), rank(TK);
  std::vector<int64_t> offsets(E + 1);
  for (auto& v : sorted) v = (int32_t)(urand() % (TK + 40)) - 20;
  for (auto& v : rank) v = (int32_t)(urand() % (TK + 40)) - 20;
  for (auto& v : offsets) v = (int64_t)(urand() % (TK + 100)) - 30;
  device_path(T, D, E, K, G, 0, gates.data(), offsets.data(), sorted.data(), rank.data(), TK, x.data(), w1.data(),
              nullptr, w2.data(), nullptr, dy.data());
  std::printf("garbage device routing: no out-of-bounds access\n");
  return g_error.empty();
}

static bool run(const Case& c) {
  const int64_t T = c.T, D = c.D, E = c.E, K = c.K, G = c.G, TK = T * K;
  // Routing: K distinct experts per token; some slots dropped (ids = -1).
  std::vector<int32_t> ids(TK, -1);
  std::vector<float> gates(TK, 0.f);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pick;
    while ((int64_t)pick.size() < K) {
      int32_t e = (c.skew && pick.empty()) ? 0 : (int32_t)(urand() % E);
      if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
    }
    for (int64_t j = 0; j < K; ++j)
      if ((int)(urand() % 100) >= c.drop_pct) {
        ids[t * K + j] = pick[j];
        gates[t * K + j] = 0.25f + 0.5f * (float)((urand() >> 8) & 0xff) / 255.f;
      }
  }
  std::vector<int64_t> offsets(E + 1, 0);
  for (int64_t s = 0; s < TK; ++s)
    if (ids[s] >= 0) ++offsets[ids[s] + 1];
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  const int64_t S = offsets[E];
  std::vector<int32_t> sorted(std::max<int64_t>(S, 1), -1), rank(TK, -1);
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  for (int64_t s = 0; s < TK; ++s)
    if (ids[s] >= 0) {
      const int64_t r = cursor[ids[s]]++;
      sorted[r] = (int32_t)s;
      rank[s] = (int32_t)r;
    }

  std::vector<float> x(T * D), w1(E * D * G), b1(E * G), w2(E * G * D), b2(D);
  for (auto* v : {&x, &w1, &b1, &w2, &b2})
    for (float& f : *v) f = frand();
  const int64_t SG = std::max<int64_t>(S * G, 1);
  std::vector<float> pre(SG, -7.f), hs(SG, -7.f), y(T * D, -7.f), yr(std::max<int64_t>(S * D, 1), -7.f);

  // Reference.
  std::vector<double> pre_r(S * G), hs_r(S * G), y_r(T * D, 0.0);
  for (int64_t r = 0; r < S; ++r) {
    const int64_t slot = sorted[r], t = slot / K, e = ids[slot];
    for (int64_t g = 0; g < G; ++g) {
      double a = c.bias ? b1[e * G + g] : 0.0;
      for (int64_t d = 0; d < D; ++d) a += (double)x[t * D + d] * w1[(e * D + d) * G + g];
      pre_r[r * G + g] = a;
      hs_r[r * G + g] = gates[slot] * act_d(c.act, a);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      double s = 0;
      for (int64_t j = 0; j < K; ++j) {
        const int32_t r = rank[t * K + j];
        if (r < 0) continue;
        const int64_t e = ids[t * K + j];
        for (int64_t g = 0; g < G; ++g) s += hs_r[r * G + g] * w2[(e * G + g) * D + d];
      }
      y_r[t * D + d] = s + (c.bias ? b2[d] : 0.0);
    }

  // Emulated launches, as moe_experts.cu.
  const std::vector<int32_t> tiles = moe_row_tiles(E, offsets.data());
  const unsigned ntiles = (unsigned)(tiles.size() / 2);
  const float* pb1 = c.bias ? b1.data() : nullptr;
  const float* pb2 = c.bias ? b2.data() : nullptr;
  if (ntiles > 0) {
    launch(dim3{ntiles, (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<true, false, true>(tiles.data(), offsets.data(), sorted.data(), gates.data(), K, x.data(), D,
                                    w1.data(), D, G, pb1, c.act, pre.data(), hs.data());
    });
    launch(dim3{ntiles, (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<false, false, false>(tiles.data(), offsets.data(), sorted.data(), gates.data(), K, hs.data(), G,
                                     w2.data(), G, D, nullptr, c.act, yr.data(), nullptr);
    });
  }
  launch(dim3{3, 1, 1}, 64, [&] { moe_combine_kernel(T, D, K, rank.data(), yr.data(), pb2, y.data()); });

  auto check = [&](const char* what, const float* got, const std::vector<double>& want, double scale) {
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double err = std::fabs(got[i] - want[i]);
      worst = std::max(worst, err);
      if (!(err <= 2e-5 * scale + 1e-4 * std::fabs(want[i]))) {
        std::printf("  %s mismatch at %zu: got %.7g expected %.7g\n", what, i, got[i], want[i]);
        return false;
      }
    }
    return true;
  };
  bool ok = check("pre", pre.data(), pre_r, std::sqrt((double)D)) && check("hs", hs.data(), hs_r, std::sqrt((double)D)) &&
            check("y", y.data(), y_r, std::sqrt((double)D * G * K));

  // ---- backward, from the emulated pre/hs, launched as moe_experts_backward in moe_experts.cu ----
  std::vector<float> dy(T * D);
  for (float& f : dy) f = frand();
  std::vector<double> dhs_r(S * G), dpre_r(S * G), dg_r(TK, 0.0), dx_r(T * D, 0.0), dw1_r(E * D * G, 0.0),
      dw2_r(E * G * D, 0.0), db1_r(E * G, 0.0), db2_r(D, 0.0);
  for (int64_t r = 0; r < S; ++r) {
    const int64_t slot = sorted[r], t = slot / K, e = ids[slot];
    double dgs = 0;
    for (int64_t g = 0; g < G; ++g) {
      double a = 0;
      for (int64_t d = 0; d < D; ++d) a += (double)dy[t * D + d] * w2[(e * G + g) * D + d];
      dhs_r[r * G + g] = a;
      dgs += a * act_d(c.act, pre[r * G + g]);
      dpre_r[r * G + g] = gates[slot] * a * act_grad_d(c.act, pre[r * G + g]);
    }
    dg_r[slot] = dgs;
  }
  for (int64_t r = 0; r < S; ++r) {
    const int64_t slot = sorted[r], t = slot / K, e = ids[slot];
    for (int64_t g = 0; g < G; ++g) {
      db1_r[e * G + g] += dpre_r[r * G + g];
      for (int64_t d = 0; d < D; ++d) {
        dw2_r[(e * G + g) * D + d] += (double)hs[r * G + g] * dy[t * D + d];
        dw1_r[(e * D + d) * G + g] += (double)x[t * D + d] * dpre_r[r * G + g];
        dx_r[t * D + d] += dpre_r[r * G + g] * w1[(e * D + d) * G + g];
      }
    }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) db2_r[d] += dy[t * D + d];

  auto p64 = [](int64_t n) { return (size_t)((n + 63) / 64 * 64); };
  std::vector<float> ws(2 * p64(S * G) + p64(S * D) + p64(TK), -9.f);
  float* dhs = ws.data();
  float* dpre = dhs + p64(S * G);
  float* dxr = dpre + p64(S * G);
  float* dg = dxr + p64(S * D);
  std::fill(dg, dg + TK, 0.f);
  std::vector<float> dx(T * D, -9.f), dw1(E * D * G, -9.f), dw2(E * G * D, -9.f), db1(E * G, -9.f), db2(D, -9.f);
  if (ntiles > 0) {
    launch(dim3{ntiles, (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<true, true, false>(tiles.data(), offsets.data(), sorted.data(), gates.data(), K, dy.data(),
                                                 D, w2.data(), D, G, nullptr, c.act, dhs, nullptr);
    });
    launch(dim3{2, 1, 1}, 64, [&] {  // 4 warps walking S rows
      moe_gate_grad_kernel(S, G, &offsets[E], sorted.data(), gates.data(), pre.data(), dhs, c.act, dpre, dg);
    });
    launch(dim3{ntiles, (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
      moe_grouped_gemm_kernel<false, true, false>(tiles.data(), offsets.data(), sorted.data(), gates.data(), K, dpre, G,
                                                  w1.data(), G, D, nullptr, c.act, dxr, nullptr);
    });
  }
  launch(dim3{3, 1, 1}, 64, [&] { moe_combine_kernel(T, D, K, rank.data(), dxr, nullptr, dx.data()); });
  launch(dim3{(unsigned)(E * ((G + MG_BM - 1) / MG_BM)), (unsigned)((D + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
    moe_wgrad_kernel<false, true>(G, D, offsets.data(), sorted.data(), K, hs.data(), G, dy.data(), D, dw2.data());
  });
  launch(dim3{(unsigned)(E * ((D + MG_BM - 1) / MG_BM)), (unsigned)((G + MG_BN - 1) / MG_BN), 1}, MG_THREADS, [&] {
    moe_wgrad_kernel<true, false>(D, G, offsets.data(), sorted.data(), K, x.data(), D, dpre, G, dw1.data());
  });
  launch(dim3{2, 1, 1}, 64, [&] { moe_bias_grad_kernel(E, G, offsets.data(), dpre, db1.data()); });
  launch(dim3{1, 1, 1}, 32, [&] { moe_col_sum_kernel(T, D, dy.data(), db2.data()); });
  const double sd = std::sqrt((double)D), sg = std::sqrt((double)G * K), sr = std::sqrt((double)T * K + 1);
  ok = ok && check("dgates", dg, dg_r, sd * std::sqrt((double)G)) && check("dx", dx.data(), dx_r, sd * sg) &&
       check("dw1", dw1.data(), dw1_r, sr * sd) && check("dw2", dw2.data(), dw2_r, sr * sd) &&
       check("db1", db1.data(), db1_r, sr * sd) && check("db2", db2.data(), db2_r, sr);
  {
    // The same routing handed over as a device routing would be: sorted sized T·K with -1 past S.
    std::vector<int32_t> sorted_c(std::max<int64_t>(TK, 1), -1);
    std::copy(sorted.begin(), sorted.begin() + S, sorted_c.begin());
    const DevOut o = device_path(T, D, E, K, G, c.act, gates.data(), offsets.data(), sorted_c.data(), rank.data(), TK,
                                 x.data(), w1.data(), pb1, w2.data(), pb2, dy.data());
    ok = ok && bits_equal("pre", o.pre.data(), pre.data(), S * G) && bits_equal("hs", o.hs.data(), hs.data(), S * G) &&
         bits_equal("y", o.y.data(), y.data(), T * D) && bits_equal("dx", o.dx.data(), dx.data(), T * D) &&
         bits_equal("dw1", o.dw1.data(), dw1.data(), E * D * G) && bits_equal("dw2", o.dw2.data(), dw2.data(), E * G * D) &&
         bits_equal("db1", o.db1.data(), db1.data(), E * G) && bits_equal("db2", o.db2.data(), db2.data(), D) &&
         bits_equal("dgates", o.dg.data(), dg, TK);
  }
  std::printf("T=%-4lld D=%-3lld E=%-2lld K=%lld G=%-3lld act=%d bias=%d skew=%d drop=%d%% S=%-4lld tiles=%u  %s\n",
              (long long)T, (long long)D, (long long)E, (long long)K, (long long)G, c.act, c.bias, c.skew, c.drop_pct,
              (long long)S, ntiles, ok ? "ok" : "MISMATCH");
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return ok && g_error.empty();
}

int main() {
  bool ok = true;
  for (int act = 0; act < 4; ++act) ok &= run({37, 20, 5, 2, 33, act, act % 2 == 0, 0, 10});
  ok &= run({150, 17, 3, 1, 130, 0, true, 1, 0});    // expert 0: 150 rows -> two row tiles; G spans two column tiles
  ok &= run({40, 140, 8, 3, 9, 2, false, 0, 30});    // D spans two column tiles (down), most experts small or empty
  ok &= run({6, 5, 4, 2, 7, 0, true, 0, 100});       // nothing kept: y = b2
  ok &= garbage();
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
