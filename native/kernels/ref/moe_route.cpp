// Reference MoE routing: the specification of moe_route_forward/backward in plain serial loops, double
// precision throughout. methods.md §1.3–1.6 (σ-MoE gates, entropy regulariser, expert dropout), §4 (Switch
// capacity, load-balancing loss, z-loss), §6 (adaptive top-1/top-2), §7 (XMoE threshold).
//
// z [T, E] logits -> choices/ids/gates [T, K], counts/dropped [E], offsets [E+1], sorted_slots/slot_rank [T·K].
// Test: test/ops/moe-route.test.ts (against a float64 TS model with finite differences, and the CPU kernel).
#include <algorithm>
#include <cmath>
#include <vector>

#include "sffn/moe.h"

namespace sffn {

namespace {

// Softmax of one row in double: p [E] and its log-sum-exp.
double softmax_row(const float* z, int64_t E, double* p) {
  double m = -INFINITY;
  for (int64_t e = 0; e < E; ++e) m = std::max(m, (double)z[e]);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += std::exp((double)z[e] - m);
  double lse = m + std::log(sum);
  for (int64_t e = 0; e < E; ++e) p[e] = std::exp((double)z[e] - lse);
  return lse;
}

// The chosen experts of token t in rank order (length <= K); writes choices[t, :].
void select_row(const float* z, const double* p, int64_t t, const MoeRouteParams& P, int32_t* choices) {
  const int64_t E = P.E, K = P.K;
  std::vector<int32_t> cand;
  for (int64_t e = 0; e < E; ++e)
    if (!moe_expert_dropped(P.seed, t, e, E, P.dropout)) cand.push_back((int32_t)e);
  // Larger logit first; equal logits: lower index first. Softmax and sigmoid are monotone in z.
  std::stable_sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
  int64_t n = 0;
  if (P.select == MoeSelect::TopK) {
    n = std::min<int64_t>(K, (int64_t)cand.size());
  } else if (P.select == MoeSelect::Adaptive) {
    n = std::min<int64_t>(1, (int64_t)cand.size());
    if (cand.size() >= 2 && p[cand[0]] - p[cand[1]] <= (double)P.threshold) n = 2;
  } else {
    double cum = 0;
    while (n < K && n < (int64_t)cand.size() && (n == 0 || cum < (double)P.threshold)) cum += p[cand[n++]];
  }
  for (int64_t j = 0; j < K; ++j) choices[t * K + j] = j < n ? cand[j] : -1;
}

// Gate values of token t's chosen experts (before capacity).
void gates_row(const float* z, const double* p, int64_t t, const MoeRouteParams& P, const int32_t* choices,
               double* g) {
  const int64_t K = P.K;
  const int32_t* c = choices + t * K;
  double m = -INFINITY, sum = 0;
  if (P.gate == MoeGate::SoftmaxRenorm) {
    for (int64_t j = 0; j < K; ++j)
      if (c[j] >= 0) m = std::max(m, (double)z[c[j]]);
    for (int64_t j = 0; j < K; ++j)
      if (c[j] >= 0) sum += std::exp((double)z[c[j]] - m);
  }
  for (int64_t j = 0; j < K; ++j) {
    if (c[j] < 0) {
      g[j] = 0;
      continue;
    }
    double zv = z[c[j]];
    if (P.gate == MoeGate::Sigmoid) g[j] = 1.0 / (1.0 + std::exp(-zv));
    else if (P.gate == MoeGate::Softmax) g[j] = p[c[j]];
    else g[j] = std::exp(zv - m) / sum;
  }
}

}  // namespace

void moe_route_forward_ref(const float* zall, const MoeRouteParams& P, MoeRouteOut& out) {
  const int64_t T = P.T, E = P.E, K = P.K;
  std::vector<double> p(E), g(K), pbar(E, 0.0), f(E, 0.0);
  double zl = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* z = zall + t * E;
    double lse = softmax_row(z, E, p.data());
    zl += lse * lse;
    for (int64_t e = 0; e < E; ++e) pbar[e] += p[e];
    select_row(z, p.data(), t, P, out.choices);
    gates_row(z, p.data(), t, P, out.choices, g.data());
    for (int64_t j = 0; j < K; ++j) out.gates[t * K + j] = (float)g[j];
    if (out.choices[t * K] >= 0) f[out.choices[t * K]] += 1;
  }
  // Capacity: rank-major priority (every token's first choice before any second choice), token order within.
  std::vector<int64_t> fill(E, 0);
  for (int64_t e = 0; e < E; ++e) out.dropped[e] = 0;
  for (int64_t j = 0; j < K; ++j)
    for (int64_t t = 0; t < T; ++t) {
      int64_t s = t * K + j;
      int32_t e = out.choices[s];
      out.ids[s] = e;
      if (e < 0) continue;
      if (P.capacity >= 0 && fill[e] >= P.capacity) {
        out.ids[s] = -1;
        out.gates[s] = 0;
        out.dropped[e]++;
      } else {
        fill[e]++;
      }
    }
  // Stable counting sort of the kept slots by expert.
  out.offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    out.counts[e] = (int32_t)fill[e];
    out.offsets[e + 1] = out.offsets[e] + fill[e];
  }
  std::vector<int64_t> cur(out.offsets, out.offsets + E);
  for (int64_t s = 0; s < T * K; ++s) {
    out.slot_rank[s] = -1;
    out.sorted_slots[s] = -1;
  }
  for (int64_t s = 0; s < T * K; ++s)
    if (out.ids[s] >= 0) {
      int64_t r = cur[out.ids[s]]++;
      out.sorted_slots[r] = (int32_t)s;
      out.slot_rank[s] = (int32_t)r;
    }
  // Auxiliary losses.
  double ent = 0, bal = 0;
  for (int64_t e = 0; e < E; ++e) {
    double pb = pbar[e] / (double)T;
    if (pb > 0) ent += pb * std::log(pb);
    bal += (f[e] / (double)T) * pb;
  }
  out.aux.entropy = T > 0 ? ent : 0;
  out.aux.balance = T > 0 ? (double)E * bal : 0;
  out.aux.zloss = T > 0 ? zl / (double)T : 0;
}

void moe_route_backward_ref(const float* zall, const MoeRouteParams& P, const int32_t* choices, const int32_t* ids,
                            const float* dgates, float w_entropy, float w_balance, float w_z, float* dz) {
  const int64_t T = P.T, E = P.E, K = P.K;
  std::vector<double> p((size_t)(T * E)), lse(T), pbar(E, 0.0), f(E, 0.0), g(K), row(E);
  for (int64_t t = 0; t < T; ++t) {
    lse[t] = softmax_row(zall + t * E, E, &p[t * E]);
    for (int64_t e = 0; e < E; ++e) pbar[e] += p[t * E + e];
    if (choices[t * K] >= 0) f[choices[t * K]] += 1;
  }
  // log p̄ is clamped so that an expert no token can reach (p̄ = 0) gives 0, not 0·(-inf).
  std::vector<double> logpb(E);
  for (int64_t e = 0; e < E; ++e) {
    pbar[e] /= (double)T;
    f[e] /= (double)T;
    logpb[e] = std::log(std::max(pbar[e], 1e-300));
  }
  for (int64_t t = 0; t < T; ++t) {
    const float* z = zall + t * E;
    const double* pt = &p[t * E];
    for (int64_t e = 0; e < E; ++e) row[e] = 0;
    // Gate path: only kept slots carry gradient.
    gates_row(z, pt, t, P, choices, g.data());
    const int32_t* c = choices + t * K;
    if (P.gate == MoeGate::Sigmoid) {
      for (int64_t j = 0; j < K; ++j)
        if (ids[t * K + j] >= 0) row[c[j]] += (double)dgates[t * K + j] * g[j] * (1 - g[j]);
    } else if (P.gate == MoeGate::Softmax) {
      double a = 0;
      for (int64_t j = 0; j < K; ++j)
        if (ids[t * K + j] >= 0) a += (double)dgates[t * K + j] * g[j];
      for (int64_t e = 0; e < E; ++e) row[e] -= pt[e] * a;
      for (int64_t j = 0; j < K; ++j)
        if (ids[t * K + j] >= 0) row[c[j]] += (double)dgates[t * K + j] * g[j];
    } else {
      double a = 0;
      for (int64_t j = 0; j < K; ++j)
        if (ids[t * K + j] >= 0) a += (double)dgates[t * K + j] * g[j];
      for (int64_t j = 0; j < K; ++j)
        if (c[j] >= 0) row[c[j]] += g[j] * ((ids[t * K + j] >= 0 ? (double)dgates[t * K + j] : 0.0) - a);
    }
    // Regularisers (methods.md §1.5 exact gradient; Switch loss; z-loss).
    double se = 0, sf = 0;
    for (int64_t e = 0; e < E; ++e) {
      se += pt[e] * logpb[e];
      sf += pt[e] * f[e];
    }
    for (int64_t e = 0; e < E; ++e) {
      row[e] += (double)w_entropy / (double)T * pt[e] * (logpb[e] - se);
      row[e] += (double)w_balance * (double)E / (double)T * pt[e] * (f[e] - sf);
      row[e] += (double)w_z * 2.0 / (double)T * lse[t] * pt[e];
      dz[t * E + e] = (float)row[e];
    }
  }
}

}  // namespace sffn
