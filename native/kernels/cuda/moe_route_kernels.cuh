// Device code of the CUDA MoE routing, forward and backward (launcher: moe_route.cu; contract: sffn/cuda.h, which
// follows sffn::moe_route_forward/backward in sffn/moe.h: every gate, top-K / adaptive / threshold selection, expert
// dropout, Switch capacity). Kept apart so
// test/gpu/emulate/route_emu.cpp runs these exact kernels on the CPU against the reference routing.
//
//   topk:      warp per token: lse_t = logsumexp(z_t); the K largest surviving logits in rank order (ties toward
//              the lower index: round j takes the best entry strictly after round j-1's in the order (z desc,
//              index asc)), cut by the adaptive / threshold rule; gates σ(z), softmax(z)_e, or softmax over the
//              chosen logits.
//   capacity:  the same counting scan over the choices in rank-major priority order (every first choice before any
//              second choice, token order within): a choice keeps its slot while fewer than C came before it.
//   aux:       per 256-token chunk partial sums (p̄ in double, first-choice counts, Σ lse²), then one block sums
//              the chunks in order: p̄, f, log p̄ and the losses (entropy Σ p̄ log p̄, balance E·Σ f p̄, z-loss).
//   placement: a deterministic counting scan (integer atomics for the histogram counts only, whose values do not
//              depend on the order): per 256-slot chunk expert histograms, a per-expert
//              exclusive scan over the chunks (column order), offsets as the scan over experts, and each slot's
//              rank = offsets[e] + chunk base + earlier same-expert slots in its chunk. Stable: slot order within
//              an expert, as the CPU's counting sort.
//   backward:  warp per token: dz from dgates through the kept gates plus the regularisers' exact gradients.
// Shapes: z [T, E], choices/ids/gates/sorted/rank [T·K], counts [E], offsets [E+1]. All index math is 64-bit.
#pragma once
#include <cstdint>

namespace sffn {
namespace cuda {
namespace {

constexpr int RT_CHUNK = 256;  // tokens per aux block, slots per placement block; the block size of both

__device__ __forceinline__ float rt_warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Butterfly sums: every lane ends with the same bits (each step adds the same two values on both lanes).
__device__ __forceinline__ double rt_warp_sum(double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Row max and Σ exp(z - max) of one row, by a full warp (every lane gets both).
__device__ __forceinline__ void rt_row_stats(const float* zr, int64_t E, int lane, float* m_out, double* s_out) {
  float m = -INFINITY;
  for (int64_t e = lane; e < E; e += 32) m = fmaxf(m, zr[e]);
  m = rt_warp_max(m);
  double s = 0;
  for (int64_t e = lane; e < E; e += 32) s += exp((double)zr[e] - (double)m);
  *m_out = m;
  *s_out = rt_warp_sum(s);
}

// Selection parameters (sffn::MoeRouteParams): gate 0 sigmoid, 1 softmax, 2 softmax over the chosen
// (sffn::MoeGate); select 0 top-K, 1 adaptive top-1/top-2, 2 threshold (sffn::MoeSelect).
struct RouteSel {
  int gate;
  int select;
  float threshold;
  float dropout;
  uint64_t seed;
};

// Expert dropout mask, bit for bit the CPU's moe_expert_dropped (kernels/cpu/moe_route.cpp): 53 bits of
// splitmix64(seed ^ splitmix64(t·E + e)) as a double in [0, 1), dropped when below the dropout probability.
__device__ __forceinline__ uint64_t rt_splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
__device__ __forceinline__ bool rt_dropped(uint64_t seed, int64_t t, int64_t e, int64_t E, float dropout) {
  if (!(dropout > 0)) return false;
  const uint64_t h = rt_splitmix64(seed ^ rt_splitmix64((uint64_t)(t * E + e)));
  return (double)(h >> 11) * (1.0 / 9007199254740992.0) < (double)dropout;
}

// Warp per token t. Writes lse[t]; with choices != null also the choices (rank order, -1 padded), ids = choices
// (capacity comes later) and the gates of the chosen. Candidates are the experts that survive dropout; round j
// takes the best candidate strictly after round j-1's in the order (z desc, index asc), for up to K rounds (2 for
// adaptive). Then adaptive keeps the second only when p1 - p2 <= threshold, and threshold keeps the shortest
// prefix whose mass reaches it (p = softmax(z) in double, as the reference). NaN logits are never chosen.
__global__ void moe_route_topk_kernel(int64_t T, int64_t E, int64_t K, RouteSel sel, const float* __restrict__ z,
                                      float* __restrict__ lse, int32_t* __restrict__ choices, int32_t* __restrict__ ids,
                                      float* __restrict__ gates) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  const int64_t want = sel.select == 1 ? (K < 2 ? K : 2) : K;
  for (int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; t < T; t += nwarps) {
    const float* zr = z + t * E;
    float m;
    double s;
    rt_row_stats(zr, E, lane, &m, &s);
    const double lse_d = (double)m + log(s);
    if (lane == 0) lse[t] = (float)lse_d;
    if (!choices) continue;
    float pz = INFINITY;  // the previous round's choice: everything strictly after (pz, pe) is a candidate
    int64_t pe = -1;
    int64_t found = 0;
    for (int64_t j = 0; j < want; ++j) {
      float bz = -INFINITY;
      int64_t be = -1;
      for (int64_t e = lane; e < E; e += 32) {
        const float v = zr[e];
        const bool after = v < pz || (v == pz && e > pe);  // NaN is never after anything: never chosen
        if (after && (be < 0 || v > bz) && !rt_dropped(sel.seed, t, e, E, sel.dropout)) {
          bz = v;  // ascending e per lane: a tie keeps the lower index
          be = e;
        }
      }
      for (int o = 16; o > 0; o /= 2) {
        const float oz = __shfl_xor_sync(0xffffffffu, bz, o);
        const int64_t oe = __shfl_xor_sync(0xffffffffu, be, o);
        if (oe >= 0 && (be < 0 || oz > bz || (oz == bz && oe < be))) {
          bz = oz;
          be = oe;
        }
      }
      if (be < 0) break;  // uniform across the warp (every lane holds the same result)
      if (lane == 0) choices[t * K + j] = (int32_t)be;
      pz = bz;
      pe = be;
      found = j + 1;
    }
    if (lane == 0) {
      int32_t* c = choices + t * K;
      auto prob = [&](int64_t j) { return exp((double)zr[c[j]] - lse_d); };
      int64_t n = found;
      if (sel.select == 1) {
        n = found < 1 ? found : 1;
        if (found >= 2 && prob(0) - prob(1) <= (double)sel.threshold) n = 2;
      } else if (sel.select == 2) {
        double cum = 0;
        n = 0;
        while (n < found && (n == 0 || cum < (double)sel.threshold)) cum += prob(n++);
      }
      for (int64_t j = n; j < K; ++j) c[j] = -1;
      for (int64_t j = 0; j < K; ++j) ids[t * K + j] = c[j];
      // Softmax over the chosen: the first choice holds the largest chosen logit.
      const float mc = n > 0 ? zr[c[0]] : 0.f;
      double sc = 0;
      if (sel.gate == 2)
        for (int64_t j = 0; j < n; ++j) sc += exp((double)(zr[c[j]] - mc));
      for (int64_t j = 0; j < K; ++j) {
        float g = 0.f;
        if (j < n) {
          const float v = zr[c[j]];
          if (sel.gate == 0) g = 1.0f / (1.0f + expf(-v));
          else if (sel.gate == 1) g = expf(v - m) * (float)(1.0 / s);
          else g = (float)(exp((double)(v - mc)) / sc);
        }
        gates[t * K + j] = g;
      }
    }
  }
}

// Thread per token: token_counts[t] = kept slots (ids >= 0) after capacity.
__global__ void moe_route_token_counts_kernel(int64_t T, int64_t K, const int32_t* __restrict__ ids,
                                              int32_t* __restrict__ token_counts) {
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (int64_t)gridDim.x * blockDim.x) {
    int32_t n = 0;
    for (int64_t j = 0; j < K; ++j) n += ids[t * K + j] >= 0;
    token_counts[t] = n;
  }
}

// Element i of the placement order: slot i (slot order), or for capacity the rank-major priority order
// (every token's first choice before any second choice, token order within): i = j·T + t -> slot t·K + j.
__device__ __forceinline__ int64_t rt_slot(int64_t i, int64_t T, int64_t K, bool jmajor) {
  return jmajor ? (i % T) * K + i / T : i;
}

// Block c sums tokens [256c, 256c + 256) in order: part_p[c, e] = Σ p[t, e] (double), part_f[c, e] = tokens whose
// first choice is e, part_z[c] = Σ lse². p = exp(z - lse).
__global__ void moe_route_aux_partial_kernel(int64_t T, int64_t E, int64_t K, const float* __restrict__ z,
                                             const float* __restrict__ lse, const int32_t* __restrict__ choices,
                                             double* __restrict__ part_p, int32_t* __restrict__ part_f,
                                             double* __restrict__ part_z) {
  const int64_t c = blockIdx.x;
  const int64_t t0 = c * RT_CHUNK, t1 = t0 + RT_CHUNK < T ? t0 + RT_CHUNK : T;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    double a = 0;
    int32_t n = 0;
    for (int64_t t = t0; t < t1; ++t) {
      a += (double)expf(z[t * E + e] - lse[t]);
      n += choices[t * K] == e;
    }
    part_p[c * E + e] = a;
    part_f[c * E + e] = n;
  }
  if (threadIdx.x == 0) {
    double q = 0;
    for (int64_t t = t0; t < t1; ++t) q += (double)lse[t] * lse[t];
    part_z[c] = q;
  }
}

// One block of RT_CHUNK threads: sums the chunk partials in chunk order. Writes (when non-null) pbar, f and
// logpb = log(max(p̄, 1e-300)) [E], and aux [3] = {entropy, balance, z-loss} (the sums over experts reduced by a
// fixed tree). T = 0 gives zeros.
__global__ void moe_route_aux_final_kernel(int64_t T, int64_t E, int64_t nchunks, const double* __restrict__ part_p,
                                           const int32_t* __restrict__ part_f, const double* __restrict__ part_z,
                                           double* __restrict__ pbar, double* __restrict__ f,
                                           double* __restrict__ logpb, double* __restrict__ aux) {
  __shared__ double red_e[RT_CHUNK], red_b[RT_CHUNK];
  const int tid = threadIdx.x;
  double ent = 0, bal = 0;
  for (int64_t e = tid; e < E; e += RT_CHUNK) {
    double a = 0;
    int64_t n = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      a += part_p[c * E + e];
      n += part_f[c * E + e];
    }
    const double pb = T > 0 ? a / (double)T : 0.0, fe = T > 0 ? (double)n / (double)T : 0.0;
    if (pbar) {
      pbar[e] = pb;
      f[e] = fe;
      logpb[e] = log(pb > 1e-300 ? pb : 1e-300);
    }
    if (pb > 0) ent += pb * log(pb);
    bal += fe * pb;
  }
  red_e[tid] = ent;
  red_b[tid] = bal;
  __syncthreads();
  for (int w = RT_CHUNK / 2; w > 0; w /= 2) {
    if (tid < w) {
      red_e[tid] += red_e[tid + w];
      red_b[tid] += red_b[tid + w];
    }
    __syncthreads();
  }
  if (tid == 0 && aux) {
    double zl = 0;
    for (int64_t c = 0; c < nchunks; ++c) zl += part_z[c];
    aux[0] = T > 0 ? red_e[0] : 0.0;
    aux[1] = T > 0 ? (double)E * red_b[0] : 0.0;
    aux[2] = T > 0 ? zl / (double)T : 0.0;
  }
}

// Block c: hist[c, e] += entries of expert e among elements [256c, 256c + 256) of the placement order (rt_slot).
// Integer atomics: the counts do not depend on the order (O(T·K) work, where a scan per expert would be O(T·K·E)).
// hist is zeroed by the caller; entries outside [0, E) are not counted.
__global__ void moe_route_hist_kernel(int64_t TK, int64_t E, int64_t T, int64_t K, bool jmajor,
                                      const int32_t* __restrict__ ids, int32_t* __restrict__ hist) {
  const int64_t c = blockIdx.x, i = c * RT_CHUNK + threadIdx.x;
  if (i >= TK) return;
  const int64_t e = ids[rt_slot(i, T, K, jmajor)];
  if (e >= 0 && e < E) atomicAdd(&hist[c * E + e], 1);
}

// Capacity C (Switch token dropping): block c walks elements [256c, 256c + 256) of the priority order; a choice of
// expert e keeps its slot when fewer than C choices of e come before it in that order (hist holds the exclusive
// per-chunk prefix of the choices). Dropped slots get id -1 and gate 0.
__global__ void moe_route_capacity_kernel(int64_t T, int64_t K, int64_t E, int64_t C, const int32_t* __restrict__ choices,
                                          const int32_t* __restrict__ hist, int32_t* __restrict__ ids,
                                          float* __restrict__ gates) {
  __shared__ int32_t s_ids[RT_CHUNK];
  const int64_t TK = T * K, c = blockIdx.x, s0 = c * RT_CHUNK;
  const int64_t n = TK - s0 < RT_CHUNK ? TK - s0 : RT_CHUNK;
  const int i = threadIdx.x;
  s_ids[i] = i < n ? choices[rt_slot(s0 + i, T, K, true)] : -1;
  __syncthreads();
  if (i >= n) return;
  const int32_t e = s_ids[i];
  if (e < 0) return;
  int64_t before = hist[c * E + e];
  for (int q = 0; q < i; ++q) before += s_ids[q] == e;
  if (before >= C) {
    const int64_t slot = rt_slot(s0 + i, T, K, true);
    ids[slot] = -1;
    gates[slot] = 0.f;
  }
}

// Thread per expert: hist[:, e] becomes its exclusive prefix over the chunks (in chunk order), counts[e] the total.
__global__ void moe_route_scan_kernel(int64_t nchunks, int64_t E, int32_t* __restrict__ hist, int32_t* __restrict__ counts) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < E; e += (int64_t)gridDim.x * blockDim.x) {
    int32_t run = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int32_t h = hist[c * E + e];
      hist[c * E + e] = run;
      run += h;
    }
    counts[e] = run;
  }
}

// One thread: offsets = exclusive scan of counts (offsets[E] = S); dropped[e] = choices of e beyond the capacity C
// (chosen [E] = choices per expert before capacity; null when dropless: zeros).
__global__ void moe_route_offsets_kernel(int64_t E, const int32_t* __restrict__ counts, const int32_t* __restrict__ chosen,
                                         int64_t C, int64_t* __restrict__ offsets, int32_t* __restrict__ dropped) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t run = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    run += counts[e];
    offsets[e + 1] = run;
    dropped[e] = chosen && chosen[e] > C ? (int32_t)(chosen[e] - C) : 0;
  }
}

// Block c, thread i: slot s = 256c + i of expert e gets rank offsets[e] + hist[c, e] + #{i' < i in the chunk with
// expert e}; sorted[rank] = s. Slots without an expert get rank -1 (sorted is pre-filled with -1 by the caller).
__global__ void moe_route_place_kernel(int64_t TK, int64_t E, const int32_t* __restrict__ ids,
                                       const int32_t* __restrict__ hist, const int64_t* __restrict__ offsets,
                                       int32_t* __restrict__ sorted, int32_t* __restrict__ rank) {
  __shared__ int32_t s_ids[RT_CHUNK];
  const int64_t c = blockIdx.x, s0 = c * RT_CHUNK;
  const int64_t n = TK - s0 < RT_CHUNK ? TK - s0 : RT_CHUNK;
  const int i = threadIdx.x;
  s_ids[i] = i < n ? ids[s0 + i] : -1;
  __syncthreads();
  if (i >= n) return;
  const int32_t e = s_ids[i];
  if (e < 0) {
    rank[s0 + i] = -1;
    return;
  }
  int64_t local = 0;
  for (int q = 0; q < i; ++q) local += s_ids[q] == e;
  const int64_t r = offsets[e] + hist[c * E + e] + local;
  sorted[r] = (int32_t)(s0 + i);
  rank[s0 + i] = (int32_t)r;
}

// Warp per token: dz[t, :] (see moe_route_backward_ref): the gate path through the kept slots (ids[s] = choices[s]
// >= 0) plus w_e/T·p(log p̄ - Σ p log p̄) + w_b·E/T·p(f - Σ p f) + w_z·2/T·lse·p, in double like the reference.
// Entries of choices outside [0, E) count as unused slots. dgates may be null (zeros).
__global__ void moe_route_backward_kernel(int64_t T, int64_t E, int64_t K, int gate, const float* __restrict__ z,
                                          const int32_t* __restrict__ choices, const int32_t* __restrict__ ids,
                                          const float* __restrict__ dgates, const double* __restrict__ f,
                                          const double* __restrict__ logpb, double we, double wb, double wz,
                                          float* __restrict__ dz) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; t < T; t += nwarps) {
    const float* zr = z + t * E;
    const int32_t* c = choices + t * K;
    const int32_t* id = ids + t * K;
    float mf;
    double s;
    rt_row_stats(zr, E, lane, &mf, &s);
    const double lse = (double)mf + log(s);
    double se = 0, sf = 0;
    for (int64_t e = lane; e < E; e += 32) {
      const double p = exp((double)zr[e] - lse);
      se += p * logpb[e];
      sf += p * f[e];
    }
    se = rt_warp_sum(se);
    sf = rt_warp_sum(sf);
    // Gate of slot j (0 for unused): as gates_row of the reference, in double.
    double mc = -INFINITY, sc = 0;
    if (gate == 2) {
      for (int64_t j = 0; j < K; ++j)
        if (c[j] >= 0 && c[j] < E) mc = fmax(mc, (double)zr[c[j]]);
      for (int64_t j = 0; j < K; ++j)
        if (c[j] >= 0 && c[j] < E) sc += exp((double)zr[c[j]] - mc);
    }
    auto gate_of = [&](int64_t j) -> double {
      const double v = zr[c[j]];
      if (gate == 0) return 1.0 / (1.0 + exp(-v));
      if (gate == 1) return exp(v - lse);
      return exp(v - mc) / sc;
    };
    auto kept = [&](int64_t j) { return c[j] >= 0 && c[j] < E && id[j] == c[j]; };
    double a = 0;
    if (gate != 0)
      for (int64_t j = 0; j < K; ++j)
        if (kept(j)) a += (double)(dgates ? dgates[t * K + j] : 0.f) * gate_of(j);
    for (int64_t e = lane; e < E; e += 32) {
      const double p = exp((double)zr[e] - lse);
      double row = gate == 1 ? -p * a : 0.0;
      for (int64_t j = 0; j < K; ++j) {
        if (c[j] != e) continue;
        const double g = gate_of(j), dg = kept(j) && dgates ? (double)dgates[t * K + j] : 0.0;
        if (gate == 0) row += kept(j) ? dg * g * (1 - g) : 0.0;
        else if (gate == 1) row += kept(j) ? dg * g : 0.0;
        else row += g * (dg - a);
      }
      row += we / (double)T * p * (logpb[e] - se);
      row += wb * (double)E / (double)T * p * (f[e] - sf);
      row += wz * 2.0 / (double)T * lse * p;
      dz[t * E + e] = (float)row;
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
