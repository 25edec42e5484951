// MoE routing on the CPU: gates (sigmoid / softmax / softmax over the chosen), selection (top-K, adaptive
// top-1/top-2, XMoE threshold) with seeded expert dropout, Switch capacity, a stable counting sort of the kept
// slots by expert, and the auxiliary losses (σ-MoE entropy, Switch balance, z-loss) with their gradients.
// The contract and the readable spec: kernels/ref/moe_route.cpp and sffn/moe.h.
//
// z [T, E] -> choices/ids/gates [T, K], counts/dropped [E], offsets [E+1], sorted_slots/slot_rank [T·K].
// Per-token work (softmax, selection, gates, gradients) runs in parallel over tokens; everything that reduces
// over tokens (capacity, sort, p̄, f) is a serial pass in token order, so results do not depend on the thread
// count. Test: test/ops/moe-route.test.ts. Benchmark: npm run bench -- moe (the route+sort column).
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/moe.h"
#include "act.h"

namespace sffn {

namespace {

constexpr int kScratchSlot = 7;  // per-thread candidate list (slot 7 is reserved for MoE kernels)

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Row softmax: p [E] and log-sum-exp. The exponentials use the vectorisable fast_exp of act.h (a few ulp);
// the sum runs in 8 interleaved float lanes (a fixed order).
float softmax_row(const float* z, int64_t E, float* p) {
  float m = -INFINITY;
  for (int64_t e = 0; e < E; ++e) m = std::max(m, z[e]);
  for (int64_t e = 0; e < E; ++e) p[e] = act_detail::fast_exp(z[e] - m);
  float lane[8] = {0};
  int64_t e = 0;
  for (; e + 8 <= E; e += 8)
    for (int l = 0; l < 8; ++l) lane[l] += p[e + l];
  float sum = 0;
  for (; e < E; ++e) sum += p[e];
  for (int l = 0; l < 8; ++l) sum += lane[l];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < E; ++i) p[i] *= inv;
  return m + std::log(sum);
}

// Writes choices[t, :] (rank order, -1 padded) and returns how many experts were chosen.
int64_t select_row(const float* z, const float* p, int64_t t, const MoeRouteParams& P, int32_t* cand,
                   int32_t* choices) {
  const int64_t E = P.E, K = P.K;
  int64_t nc = 0;
  if (P.dropout > 0) {
    for (int64_t e = 0; e < E; ++e)
      if (!moe_expert_dropped(P.seed, t, e, E, P.dropout)) cand[nc++] = (int32_t)e;
  } else {
    for (int64_t e = 0; e < E; ++e) cand[nc++] = (int32_t)e;
  }
  // Larger logit first, ties toward the lower index (a strict total order, so the result is unique).
  auto before = [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  int64_t want = P.select == MoeSelect::Adaptive ? 2 : K;
  want = std::min(want, nc);
  if (want <= 16) {
    // Insertion into a sorted prefix of `want` entries: candidates arrive in index order, so a strict '>'
    // keeps the lower index first on ties.
    int64_t n = 0;
    for (int64_t i = 0; i < nc; ++i) {
      const int32_t e = cand[i];
      if (n == want && !(z[e] > z[cand[n - 1]])) continue;
      int64_t pos = n < want ? n++ : want - 1;
      while (pos > 0 && z[e] > z[cand[pos - 1]]) {
        cand[pos] = cand[pos - 1];
        --pos;
      }
      cand[pos] = e;
    }
  } else {
    std::partial_sort(cand, cand + want, cand + nc, before);
  }
  int64_t n = 0;
  if (P.select == MoeSelect::TopK) {
    n = want;
  } else if (P.select == MoeSelect::Adaptive) {
    n = std::min<int64_t>(1, nc);
    if (nc >= 2 && (double)p[cand[0]] - (double)p[cand[1]] <= (double)P.threshold) n = 2;
  } else {
    double cum = 0;
    while (n < want && (n == 0 || cum < (double)P.threshold)) cum += p[cand[n++]];
  }
  for (int64_t j = 0; j < K; ++j) choices[t * K + j] = j < n ? cand[j] : -1;
  return n;
}

// Gate values of the chosen experts of one token (before capacity); g [K].
void gates_row(const float* z, const float* p, const int32_t* c, const MoeRouteParams& P, float* g) {
  const int64_t K = P.K;
  float m = -INFINITY;
  double sum = 0;
  if (P.gate == MoeGate::SoftmaxRenorm) {
    for (int64_t j = 0; j < K; ++j)
      if (c[j] >= 0) m = std::max(m, z[c[j]]);
    for (int64_t j = 0; j < K; ++j)
      if (c[j] >= 0) sum += std::exp((double)(z[c[j]] - m));
  }
  for (int64_t j = 0; j < K; ++j) {
    if (c[j] < 0) g[j] = 0;
    else if (P.gate == MoeGate::Sigmoid) g[j] = 1.0f / (1.0f + act_detail::fast_exp(-z[c[j]]));
    else if (P.gate == MoeGate::Softmax) g[j] = p[c[j]];
    else g[j] = (float)(std::exp((double)(z[c[j]] - m)) / sum);
  }
}

}  // namespace

bool moe_expert_dropped(uint64_t seed, int64_t t, int64_t e, int64_t E, float dropout) {
  if (!(dropout > 0)) return false;
  uint64_t h = splitmix64(seed ^ splitmix64((uint64_t)(t * E + e)));
  double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);  // 53 random bits in [0, 1)
  return u < (double)dropout;
}

// Work layout: prob [T, E] f32, lse [T] f32, padded to 8 bytes, then pbar [E] f64, f [E] f64, cursor [E] i64.
static int64_t dbl_base(const MoeRouteParams& p) { return (p.T * p.E + p.T + 1) / 2 * 2; }
size_t moe_route_work_floats(const MoeRouteParams& p) { return (size_t)(dbl_base(p) + 6 * p.E); }

void moe_route_forward(const float* z, const MoeRouteParams& P, MoeRouteOut& out, float* work) {
  const int64_t T = P.T, E = P.E, K = P.K;
  float* prob = work;          // [T, E] softmax(z)
  float* lse = work + T * E;   // [T]
  parallel_for(
      T,
      [&](int64_t t0, int64_t t1, int tid) {
        int32_t* cand = static_cast<int32_t*>(scratch(tid, kScratchSlot, (size_t)E * sizeof(int32_t)));
        for (int64_t t = t0; t < t1; ++t) {
          const float* zt = z + t * E;
          float* pt = prob + t * E;
          lse[t] = softmax_row(zt, E, pt);
          select_row(zt, pt, t, P, cand, out.choices);
          gates_row(zt, pt, out.choices + t * K, P, out.gates + t * K);
        }
      },
      64);

  // Capacity, rank-major priority: all first choices (in token order) before any second choice.
  for (int64_t e = 0; e < E; ++e) {
    out.counts[e] = 0;
    out.dropped[e] = 0;
  }
  for (int64_t j = 0; j < K; ++j)
    for (int64_t t = 0; t < T; ++t) {
      int64_t s = t * K + j;
      int32_t e = out.choices[s];
      out.ids[s] = e;
      if (e < 0) continue;
      if (P.capacity >= 0 && out.counts[e] >= P.capacity) {
        out.ids[s] = -1;
        out.gates[s] = 0;
        out.dropped[e]++;
      } else {
        out.counts[e]++;
      }
    }
  // Stable counting sort by expert: 64-bit offsets, slots placed in increasing slot order.
  out.offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) out.offsets[e + 1] = out.offsets[e] + out.counts[e];
  const int64_t S = out.offsets[E];
  for (int64_t s = S; s < T * K; ++s) out.sorted_slots[s] = -1;
  double* pbar = reinterpret_cast<double*>(work + dbl_base(P));
  double* f = pbar + E;
  {
    int64_t* cur = reinterpret_cast<int64_t*>(f + E);
    for (int64_t e = 0; e < E; ++e) cur[e] = out.offsets[e];
    for (int64_t s = 0; s < T * K; ++s) {
      int32_t e = out.ids[s];
      if (e < 0) {
        out.slot_rank[s] = -1;
        continue;
      }
      int64_t r = cur[e]++;
      out.sorted_slots[r] = (int32_t)s;
      out.slot_rank[s] = (int32_t)r;
    }
  }

  // Auxiliary losses: token-order sums in double.
  for (int64_t e = 0; e < E; ++e) pbar[e] = f[e] = 0;
  double zl = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* pt = prob + t * E;
    for (int64_t e = 0; e < E; ++e) pbar[e] += pt[e];
    zl += (double)lse[t] * lse[t];
    if (out.choices[t * K] >= 0) f[out.choices[t * K]] += 1;
  }
  double ent = 0, bal = 0;
  for (int64_t e = 0; e < E; ++e) {
    double pb = pbar[e] / (double)T;
    if (pb > 0) ent += pb * std::log(pb);
    bal += f[e] / (double)T * pb;
  }
  out.aux.entropy = T > 0 ? ent : 0;
  out.aux.balance = T > 0 ? (double)E * bal : 0;
  out.aux.zloss = T > 0 ? zl / (double)T : 0;
}

void moe_route_backward(const float* z, const MoeRouteParams& P, const int32_t* choices, const int32_t* ids,
                        const float* dgates, float w_entropy, float w_balance, float w_z, float* dz, float* work) {
  const int64_t T = P.T, E = P.E, K = P.K;
  float* prob = work;
  float* lse = work + T * E;
  parallel_for(
      T,
      [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) lse[t] = softmax_row(z + t * E, E, prob + t * E);
      },
      64);
  const bool reg = w_entropy != 0 || w_balance != 0;
  double* pbar = reinterpret_cast<double*>(work + dbl_base(P));
  double* f = pbar + E;
  float* logpb = reinterpret_cast<float*>(f + E);  // [E]
  float* fe = logpb + E;                           // [E]
  for (int64_t e = 0; e < E; ++e) pbar[e] = f[e] = 0;
  if (reg) {
    for (int64_t t = 0; t < T; ++t) {
      const float* pt = prob + t * E;
      for (int64_t e = 0; e < E; ++e) pbar[e] += pt[e];
      if (choices[t * K] >= 0) f[choices[t * K]] += 1;
    }
    // log p̄ is clamped so that an expert no token reaches (p̄ = 0) gives 0 gradient, not 0·(-inf).
    for (int64_t e = 0; e < E; ++e) {
      logpb[e] = (float)std::log(std::max(pbar[e] / (double)T, 1e-300));
      fe[e] = (float)(f[e] / (double)T);
    }
  }
  const float ce = T > 0 ? w_entropy / (float)T : 0.0f;
  const float cb = T > 0 ? w_balance * (float)E / (float)T : 0.0f;
  const float cz = T > 0 ? w_z * 2.0f / (float)T : 0.0f;
  parallel_for(
      T,
      [&](int64_t t0, int64_t t1, int tid) {
        float* gp = static_cast<float*>(scratch(tid, kScratchSlot, (size_t)K * sizeof(float)));
        for (int64_t t = t0; t < t1; ++t) {
          const float* zt = z + t * E;
          const float* pt = prob + t * E;
          float* row = dz + t * E;
          const int32_t* c = choices + t * K;
          const int32_t* id = ids + t * K;
          const float* dg = dgates + t * K;
          double se = 0, sf = 0;
          if (reg)
            for (int64_t e = 0; e < E; ++e) {
              se += (double)pt[e] * logpb[e];
              sf += (double)pt[e] * fe[e];
            }
          for (int64_t e = 0; e < E; ++e) {
            float v = cz * lse[t] * pt[e];
            if (reg) v += ce * pt[e] * (logpb[e] - (float)se) + cb * pt[e] * (fe[e] - (float)sf);
            row[e] = v;
          }
          gates_row(zt, pt, c, P, gp);
          if (P.gate == MoeGate::Sigmoid) {
            for (int64_t j = 0; j < K; ++j)
              if (id[j] >= 0) row[c[j]] += dg[j] * gp[j] * (1 - gp[j]);
          } else {
            double a = 0;
            for (int64_t j = 0; j < K; ++j)
              if (id[j] >= 0) a += (double)dg[j] * gp[j];
            if (P.gate == MoeGate::Softmax) {
              for (int64_t e = 0; e < E; ++e) row[e] -= pt[e] * (float)a;
              for (int64_t j = 0; j < K; ++j)
                if (id[j] >= 0) row[c[j]] += dg[j] * gp[j];
            } else {
              for (int64_t j = 0; j < K; ++j)
                if (c[j] >= 0) row[c[j]] += gp[j] * ((id[j] >= 0 ? dg[j] : 0.0f) - (float)a);
            }
          }
        }
      },
      64);
}

}  // namespace sffn
