// Host emulation of the CUDA MoE routing kernels (native/kernels/cuda/moe_route_kernels.cuh) against the reference
// routing of the CPU op (native/kernels/ref/moe_route.cpp, compiled in): top-K with every gate kind, many exact
// ties (logits on a coarse grid), E below and above the warp width, T·K across several 256-slot chunks, T = 0,
// expert dropout, adaptive and threshold selection, Switch capacity (rank-major drops).
// Integer outputs (choices, ids, counts, offsets, sorted slots, ranks, token counts) must match exactly; gates,
// auxiliary losses and dz (with every regulariser weighted) within float tolerance. Launched as moe_route.cu does,
// but with small grids so the warp loops stride. AddressSanitizer catches out-of-bounds accesses. Run by
// test/gpu/moe-emulated.test.ts; prints "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"
#include "moe_route_kernels.cuh"
#include "../../../native/kernels/ref/moe_route.cpp"

// The dropout decision lives in the CPU kernel file (kernels/cpu/moe_route.cpp), which needs the thread pool; this is
// an independent copy of it, so the kernel's own mask (rt_dropped) is checked against the CPU formula.
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
bool sffn::moe_expert_dropped(uint64_t seed, int64_t t, int64_t e, int64_t E, float dropout) {
  if (!(dropout > 0)) return false;
  uint64_t h = mix64(seed ^ mix64((uint64_t)(t * E + e)));
  double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
  return u < (double)dropout;
}

using namespace sffn::cuda;

static uint32_t g_rng = 4242;
static uint32_t urand() { return g_rng = g_rng * 1664525u + 1013904223u; }
static float frand() { return (float)((urand() >> 8) & 0xffff) / 32768.f - 1.f; }

struct Case {
  int64_t T, E, K;
  int gate;
  bool ties;
  int select = 0;
  float threshold = 0;
  float dropout = 0;
  int64_t capacity = -1;
};

template <class A, class B>
static bool same(const char* what, const A* a, const B* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if ((int64_t)a[i] != (int64_t)b[i]) {
      std::printf("  %s[%lld]: emulated %lld, reference %lld\n", what, (long long)i, (long long)a[i], (long long)b[i]);
      return false;
    }
  return true;
}

template <class A>
static bool near(const char* what, const A* a, const double* b, int64_t n, double tol) {
  for (int64_t i = 0; i < n; ++i)
    if (!(std::fabs((double)a[i] - b[i]) <= tol * (1 + std::fabs((double)b[i])))) {
      std::printf("  %s[%lld]: emulated %.9g, reference %.9g\n", what, (long long)i, (double)a[i], b[i]);
      return false;
    }
  return true;
}

static bool run(const Case& c) {
  const int64_t T = c.T, E = c.E, K = c.K, TK = T * K;
  std::vector<float> z(T * E);
  for (float& v : z) v = c.ties ? std::round(frand() * 2.f) * 0.5f : 3.f * frand();

  sffn::MoeRouteParams P;
  P.T = T, P.E = E, P.K = K, P.gate = (sffn::MoeGate)c.gate, P.select = (sffn::MoeSelect)c.select;
  P.threshold = c.threshold, P.dropout = c.dropout, P.seed = 12345 + (uint64_t)T, P.capacity = c.capacity;
  std::vector<int32_t> rc(TK), rid(TK), rcnt(E), rsort(TK), rrank(TK), rdrop(E);
  std::vector<float> rg(TK);
  std::vector<int64_t> roff(E + 1);
  sffn::MoeRouteOut ro;
  ro.choices = rc.data(), ro.ids = rid.data(), ro.gates = rg.data(), ro.counts = rcnt.data(), ro.offsets = roff.data();
  ro.sorted_slots = rsort.data(), ro.slot_rank = rrank.data(), ro.dropped = rdrop.data();
  sffn::moe_route_forward_ref(z.data(), P, ro);

  // ---- forward, as moe_route_forward ----
  const int64_t nc = (T + RT_CHUNK - 1) / RT_CHUNK, ns = (TK + RT_CHUNK - 1) / RT_CHUNK;
  std::vector<float> lse(T), gates(TK, -9.f);
  std::vector<int32_t> ch(TK, -9), ids(TK, -9), cnt(E, -9), sorted(TK, -1), rank(TK, -9), drop(E, -9), tc(T, -9);
  std::vector<int64_t> off(E + 1, -9);
  std::vector<double> part_p(nc * E), part_z(nc), aux(3), pbar(E), fv(E), logpb(E);
  std::vector<int32_t> part_f(nc * E), hist(ns * E), chosen(E);
  const RouteSel sel{c.gate, c.select, c.threshold, c.dropout, P.seed};
  if (T > 0)
    launch(dim3{2, 1, 1}, 64, [&] {  // 4 warps striding over T tokens
      moe_route_topk_kernel(T, E, K, sel, z.data(), lse.data(), ch.data(), ids.data(), gates.data());
    });
  if (nc > 0)
    launch(dim3{(unsigned)nc, 1, 1}, RT_CHUNK, [&] {
      moe_route_aux_partial_kernel(T, E, K, z.data(), lse.data(), ch.data(), part_p.data(), part_f.data(), part_z.data());
    });
  launch(dim3{1, 1, 1}, RT_CHUNK, [&] {
    moe_route_aux_final_kernel(T, E, nc, part_p.data(), part_f.data(), part_z.data(), nullptr, nullptr, nullptr, aux.data());
  });
  const bool cap = c.capacity >= 0 && ns > 0;
  if (cap) {
    std::fill(hist.begin(), hist.end(), 0);
    launch(dim3{(unsigned)ns, 1, 1}, RT_CHUNK, [&] { moe_route_hist_kernel(TK, E, T, K, true, ch.data(), hist.data()); });
    launch(dim3{1, 1, 1}, 32, [&] { moe_route_scan_kernel(ns, E, hist.data(), chosen.data()); });
    launch(dim3{(unsigned)ns, 1, 1}, RT_CHUNK, [&] {
      moe_route_capacity_kernel(T, K, E, c.capacity, ch.data(), hist.data(), ids.data(), gates.data());
    });
  }
  std::fill(hist.begin(), hist.end(), 0);
  if (ns > 0)
    launch(dim3{(unsigned)ns, 1, 1}, RT_CHUNK, [&] { moe_route_hist_kernel(TK, E, T, K, false, ids.data(), hist.data()); });
  launch(dim3{1, 1, 1}, 32, [&] { moe_route_scan_kernel(ns, E, hist.data(), cnt.data()); });  // threads stride over E
  launch(dim3{1, 1, 1}, 1, [&] {
    moe_route_offsets_kernel(E, cnt.data(), cap ? chosen.data() : nullptr, c.capacity, off.data(), drop.data());
  });
  if (ns > 0)
    launch(dim3{(unsigned)ns, 1, 1}, RT_CHUNK, [&] {
      moe_route_place_kernel(TK, E, ids.data(), hist.data(), off.data(), sorted.data(), rank.data());
    });
  if (T > 0) launch(dim3{1, 1, 1}, 64, [&] { moe_route_token_counts_kernel(T, K, ids.data(), tc.data()); });

  std::vector<int32_t> rtc(T);
  for (int64_t t = 0; t < T; ++t) {
    rtc[t] = 0;
    for (int64_t j = 0; j < K; ++j) rtc[t] += rid[t * K + j] >= 0;
  }
  std::vector<double> rgd(rg.begin(), rg.end());
  const double ax[3] = {ro.aux.entropy, ro.aux.balance, ro.aux.zloss};
  bool ok = same("choices", ch.data(), rc.data(), TK) && same("ids", ids.data(), rid.data(), TK) &&
            same("counts", cnt.data(), rcnt.data(), E) && same("offsets", off.data(), roff.data(), E + 1) &&
            same("sortedSlots", sorted.data(), rsort.data(), TK) && same("slotRank", rank.data(), rrank.data(), TK) &&
            same("dropped", drop.data(), rdrop.data(), E) && same("tokenCounts", tc.data(), rtc.data(), T) &&
            near("gates", gates.data(), rgd.data(), TK, 2e-6);
  for (int i = 0; i < 3 && ok; ++i) {
    ok = near(i == 0 ? "entropy" : i == 1 ? "balance" : "zloss", &aux[i], &ax[i], 1, 2e-6);
  }

  // ---- backward, as moe_route_backward, from random dgates with every regulariser on ----
  std::vector<float> dg(TK), dz(T * E, -9.f), rdz(T * E);
  for (float& v : dg) v = frand();
  const float we = 0.7f, wb = -0.4f, wz = 0.3f;
  sffn::moe_route_backward_ref(z.data(), P, rc.data(), rid.data(), dg.data(), we, wb, wz, rdz.data());
  if (T > 0) {
    std::vector<float> lse2(T);
    launch(dim3{1, 1, 1}, 64, [&] {
      moe_route_topk_kernel(T, E, K, RouteSel{c.gate, 0, 0.f, 0.f, 0}, z.data(), lse2.data(), nullptr, nullptr, nullptr);
    });
    launch(dim3{(unsigned)nc, 1, 1}, RT_CHUNK, [&] {
      moe_route_aux_partial_kernel(T, E, K, z.data(), lse2.data(), ch.data(), part_p.data(), part_f.data(), part_z.data());
    });
    launch(dim3{1, 1, 1}, RT_CHUNK, [&] {
      moe_route_aux_final_kernel(T, E, nc, part_p.data(), part_f.data(), part_z.data(), pbar.data(), fv.data(),
                                 logpb.data(), nullptr);
    });
    launch(dim3{1, 1, 1}, 96, [&] {
      moe_route_backward_kernel(T, E, K, c.gate, z.data(), ch.data(), ids.data(), dg.data(), fv.data(), logpb.data(), we,
                                wb, wz, dz.data());
    });
    std::vector<double> rdzd(rdz.begin(), rdz.end());
    ok = ok && near("dz", dz.data(), rdzd.data(), T * E, 1e-5);
  }
  int64_t S = 0, nd = 0;
  for (int64_t e = 0; e < E; ++e) nd += rdrop[e];
  S = roff[E];
  std::printf("route T=%-4lld E=%-3lld K=%-2lld gate=%d select=%d thr=%.2f dropout=%.2f cap=%-4lld ties=%d S=%-5lld "
              "dropped=%-4lld %s\n",
              (long long)T, (long long)E, (long long)K, c.gate, c.select, c.threshold, c.dropout, (long long)c.capacity,
              c.ties, (long long)S, (long long)nd, ok ? "ok" : "MISMATCH");
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return ok && g_error.empty();
}

int main() {
  bool ok = true;
  for (int gate = 0; gate < 3; ++gate) {
    ok &= run({37, 5, 2, gate, false});
    ok &= run({300, 40, 4, gate, true});   // E > 32 lanes, T crosses the 256-token chunk, ties everywhere
    ok &= run({130, 70, 7, gate, false});  // T·K = 910: four slot chunks
  }
  ok &= run({20, 1, 1, 0, false});    // a single expert
  ok &= run({9, 6, 6, 2, true});      // k = E
  ok &= run({0, 8, 2, 1, false});     // no tokens
  ok &= run({600, 16, 1, 1, true});   // Switch-like top-1 over three token chunks
  // Variable K: expert dropout (tokens left with fewer than K survivors), adaptive, threshold; Switch capacity.
  ok &= run({300, 6, 4, 0, false, 0, 0, 0.5f});                // many tokens with fewer than 4 survivors
  ok &= run({400, 40, 2, 1, false, 1, 0.05f, 0.1f});           // adaptive top-1/top-2 with dropout
  ok &= run({300, 12, 5, 2, false, 2, 0.5f});                 // threshold (mass 0.5), softmax-renorm
  ok &= run({200, 12, 4, 1, true, 2, 0.3f});                  // threshold with ties
  ok &= run({500, 8, 1, 1, false, 0, 0, 0, 50});               // Switch top-1, capacity 50 < T/E: drops
  ok &= run({350, 10, 3, 2, true, 0, 0, 0.2f, 90});            // top-3 with dropout, capacity, ties: rank-major drops
  ok &= run({200, 5, 2, 0, false, 0, 0, 0, 0});                // capacity 0: everything dropped
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
