// MoE routing on the CPU: gates (sigmoid / softmax / softmax over the chosen), selection (top-K, adaptive
// top-1/top-2, XMoE threshold) with seeded expert dropout, Switch capacity, a stable counting sort of the kept
// slots by expert, and the auxiliary losses (σ-MoE entropy, Switch balance, z-loss) with their gradients.
// The contract and the readable spec: kernels/ref/moe_route.cpp and sffn/moe.h.
//
// z [T, E] -> choices/ids/gates [T, K], counts/dropped [E], offsets [E+1], sorted_slots/slot_rank [T·K].
// Tokens are cut into fixed blocks of kBlock tokens, independent of the thread count. Pass 1 (parallel over
// blocks): per token the softmax, selection and gates (the ISA row kernels of moe_route_isa.h: vector softmax,
// branch-free rank-counting top-K), and per block the partial sums of p̄, f, z-loss and the per-expert slot
// counts. The partials are reduced in block order, so every result is independent of the thread count. Pass 2
// (dropless, parallel over blocks): the stable counting sort, each block starting from its own cursors. With a
// capacity, the rank-major drop decision and the sort stay one serial pass in slot order.
// Test: test/ops/moe-route.test.ts. Benchmark: npm run bench -- moe (the route share column).
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/moe.h"
#include "act.h"
#include "moe_route_isa.h"

namespace sffn {

namespace {

constexpr int kScratchSlot = 7;  // per-thread row buffers (slot 7 is reserved for MoE kernels)
constexpr int64_t kBlock = 256;  // tokens per partial-sum block: fixed, so sums do not depend on the threads

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct RowKernels {
  MoeRouteRowsFn rows = nullptr;  // null: the scalar path below
  MoeRouteBwdRowFn bwd_row = nullptr;
};

RowKernels row_kernels() {
#if defined(__x86_64__)
  // The ISA libraries exist only on x64 (binding.gyp); elsewhere active_isa() is always Scalar.
  switch (active_isa()) {
    case Isa::Avx512: return {avx512::moe_route_rows, avx512::moe_route_bwd_row};
    case Isa::Avx2: return {avx2::moe_route_rows, avx2::moe_route_bwd_row};
    default: break;
  }
#endif
  return {};
}

// Row softmax in the canonical order of moe_route_isa.h: p [E], the max and the sum of exponentials.
void softmax_row(const float* z, int64_t E, float* p, float* m_out, float* sum_out) {
  float m = -INFINITY;
  for (int64_t e = 0; e < E; ++e) m = std::max(m, z[e]);
  float lane[16] = {0};
  for (int64_t e = 0; e < E; ++e) {
    p[e] = act_detail::fast_exp(z[e] - m);
    lane[e & 15] += p[e];
  }
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) lane[l] += lane[l + h];
  const float inv = 1.0f / lane[0];
  for (int64_t i = 0; i < E; ++i) p[i] *= inv;
  *m_out = m;
  *sum_out = lane[0];
}

// How many ranked candidates a selection needs: K for top-K and threshold, 2 for adaptive.
int64_t want_of(const MoeRouteParams& P) { return P.select == MoeSelect::Adaptive ? 2 : P.K; }

// Scalar selection: cand[0..return) = the best candidates (not dropped) in rank order.
int64_t select_scalar(const float* z, int64_t t, const MoeRouteParams& P, int32_t* cand) {
  const int64_t E = P.E;
  int64_t nc = 0;
  if (P.dropout > 0) {
    for (int64_t e = 0; e < E; ++e)
      if (!moe_expert_dropped(P.seed, t, e, E, P.dropout)) cand[nc++] = (int32_t)e;
  } else {
    for (int64_t e = 0; e < E; ++e) cand[nc++] = (int32_t)e;
  }
  // Larger logit first, ties toward the lower index (a strict total order, so the result is unique).
  auto before = [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  const int64_t want = std::min(want_of(P), nc);
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
  return want;
}

// Expert-dropout survivors of token t as a bit mask (E <= 64).
uint64_t keep_mask(int64_t t, const MoeRouteParams& P) {
  const int64_t E = P.E;
  uint64_t keep = E == 64 ? ~0ULL : (1ULL << E) - 1;
  if (P.dropout > 0)
    for (int64_t e = 0; e < E; ++e)
      if (moe_expert_dropped(P.seed, t, e, E, P.dropout)) keep &= ~(1ULL << e);
  return keep;
}

// From the ranked candidates cand[0..want), writes choices[t, :] (-1 padded) and returns how many were chosen.
int64_t choose(const float* p, int64_t t, const MoeRouteParams& P, const int32_t* cand, int64_t want,
               int32_t* choices) {
  const int64_t K = P.K;
  int64_t n = 0;
  if (P.select == MoeSelect::TopK) {
    n = want;
  } else if (P.select == MoeSelect::Adaptive) {
    n = std::min<int64_t>(1, want);
    if (want >= 2 && (double)p[cand[0]] - (double)p[cand[1]] <= (double)P.threshold) n = 2;
  } else {
    double cum = 0;
    while (n < want && (n == 0 || cum < (double)P.threshold)) cum += p[cand[n++]];
  }
  for (int64_t j = 0; j < K; ++j) choices[t * K + j] = j < n ? cand[j] : -1;
  return n;
}

// Gate values of the chosen experts of one token (before capacity); g [K]. sig: σ of the chosen logits in rank
// order, when the row kernel computed them.
void gates_row(const float* z, const float* p, const int32_t* c, const MoeRouteParams& P, const float* sig, float* g) {
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
    else if (P.gate == MoeGate::Sigmoid) g[j] = sig ? sig[j] : 1.0f / (1.0f + act_detail::fast_exp(-z[c[j]]));
    else if (P.gate == MoeGate::Softmax) g[j] = p[c[j]];
    else g[j] = (float)(std::exp((double)(z[c[j]] - m)) / sum);
  }
}

// The scalar backward row (the contract of MoeRouteBwdRowFn).
void bwd_row_scalar(const float* p, int64_t E, float lse, bool reg, const float* logpb, const float* fe, float ce,
                    float cb, float cz, float a, float* dz) {
  double se = 0, sf = 0;
  if (reg)
    for (int64_t e = 0; e < E; ++e) {
      se += (double)p[e] * logpb[e];
      sf += (double)p[e] * fe[e];
    }
  for (int64_t e = 0; e < E; ++e) {
    float v = cz * lse * p[e];
    if (reg) v += ce * p[e] * (logpb[e] - (float)se) + cb * p[e] * (fe[e] - (float)sf);
    dz[e] = v - p[e] * a;
  }
}

// Work layout in 8-byte words: per block b, pbar [E] f64, f [E] i64, cnt [E] i64, zl f64 (3E+1 words), then
// the totals pbar [E] f64, f [E] f64 and logpb/fe [E] f32 each (3E words).
int64_t num_blocks(int64_t T) { return (T + kBlock - 1) / kBlock; }
int64_t block_words(int64_t E) { return 3 * E + 1; }

struct Block {
  double* pbar;
  int64_t* f;
  int64_t* cnt;
  double* zl;
};
Block block_at(uint64_t* w, int64_t b, int64_t E) {
  uint64_t* q = w + b * block_words(E);
  return {reinterpret_cast<double*>(q), reinterpret_cast<int64_t*>(q + E), reinterpret_cast<int64_t*>(q + 2 * E),
          reinterpret_cast<double*>(q + 3 * E)};
}

// Per-thread buffers for one block of n <= kBlock tokens: p [n, E], cand [n, E], sig [n, E], m, sum [n],
// keep [n] (dropout survivor masks), ok [n].
struct BlockBufs {
  float* p;
  int32_t* cand;
  float* sig;
  float* m;
  float* sum;
  uint64_t* keep;
  uint8_t* ok;
};
BlockBufs block_bufs(int tid, int64_t E) {
  const size_t rows = (size_t)(kBlock * E) * 4;
  char* b = static_cast<char*>(scratch(tid, kScratchSlot, 3 * rows + kBlock * (4 + 4 + 8 + 1)));
  return {reinterpret_cast<float*>(b), reinterpret_cast<int32_t*>(b + rows), reinterpret_cast<float*>(b + 2 * rows),
          reinterpret_cast<float*>(b + 3 * rows), reinterpret_cast<float*>(b + 3 * rows) + kBlock,
          reinterpret_cast<uint64_t*>(b + 3 * rows + kBlock * 8), reinterpret_cast<uint8_t*>(b + 3 * rows + kBlock * 16)};
}

// Softmax (and, with sel, the ranked candidates) of tokens [t0, t0 + n): the ISA kernel where it can, the
// scalar code for the rest. want[i] = how many ranked candidates token t0+i has in its cand row; sig (sigmoid
// gates of the ranked candidates) is set where the ISA kernel wrote them, else null.
void route_block(const RowKernels& k, const float* z, int64_t t0, int64_t n, const MoeRouteParams& P, bool sel,
                 const BlockBufs& bb, int32_t* want, const float** sig, double* pacc) {
  const int64_t E = P.E;
  const bool vsel = sel && E <= kMoeRowMaxE;
  *sig = nullptr;
  if (k.rows) {
    const uint64_t* keep = nullptr;
    if (vsel && P.dropout > 0) {
      for (int64_t i = 0; i < n; ++i) bb.keep[i] = keep_mask(t0 + i, P);
      keep = bb.keep;
    }
    const bool vsig = vsel && P.gate == MoeGate::Sigmoid;
    k.rows(z + t0 * E, n, E, keep, vsel ? want_of(P) : 0, E, bb.p, bb.m, bb.sum, bb.ok, bb.cand,
           vsig ? bb.sig : nullptr, pacc);
    if (vsig) *sig = bb.sig;
    for (int64_t i = 0; i < n; ++i) {
      if (!bb.ok[i]) continue;
      if (!sel) want[i] = 0;
      else if (vsel) want[i] = (int32_t)std::min<int64_t>(want_of(P), keep ? __builtin_popcountll(keep[i]) : E);
      else want[i] = (int32_t)select_scalar(z + (t0 + i) * E, t0 + i, P, bb.cand + i * E);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) bb.ok[i] = 0;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (bb.ok[i]) continue;
    const int64_t t = t0 + i;
    float* pi = bb.p + i * E;
    softmax_row(z + t * E, E, pi, bb.m + i, bb.sum + i);
    if (pacc)
      for (int64_t e = 0; e < E; ++e) pacc[e] += pi[e];
    want[i] = sel ? (int32_t)select_scalar(z + t * E, t, P, bb.cand + i * E) : 0;
  }
}

}  // namespace

bool moe_expert_dropped(uint64_t seed, int64_t t, int64_t e, int64_t E, float dropout) {
  if (!(dropout > 0)) return false;
  uint64_t h = splitmix64(seed ^ splitmix64((uint64_t)(t * E + e)));
  double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);  // 53 random bits in [0, 1)
  return u < (double)dropout;
}

size_t moe_route_work_floats(const MoeRouteParams& p) {
  return (size_t)(2 * (num_blocks(p.T) * block_words(p.E) + 3 * p.E + 2));
}

void moe_route_forward(const float* z, const MoeRouteParams& P, MoeRouteOut& out, float* work) {
  const int64_t T = P.T, E = P.E, K = P.K, NB = num_blocks(T);
  const bool dropless = P.capacity < 0;
  const RowKernels rk = row_kernels();
  uint64_t* w = reinterpret_cast<uint64_t*>(work);

  // Pass 1: per token softmax, selection, gates; per block the partial sums.
  parallel_for(
      NB,
      [&](int64_t b0, int64_t b1, int tid) {
        const BlockBufs bb = block_bufs(tid, E);
        int32_t want[kBlock];
        for (int64_t b = b0; b < b1; ++b) {
          Block bl = block_at(w, b, E);
          for (int64_t e = 0; e < E; ++e) {
            bl.pbar[e] = 0;
            bl.f[e] = bl.cnt[e] = 0;
          }
          double zl = 0;
          const int64_t tb = b * kBlock, n = std::min(T, tb + kBlock) - tb;
          const float* sig;
          route_block(rk, z, tb, n, P, true, bb, want, &sig, bl.pbar);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t t = tb + i;
            const float* pi = bb.p + i * E;
            const float lse = bb.m[i] + std::log(bb.sum[i]);
            zl += (double)lse * lse;
            choose(pi, t, P, bb.cand + i * E, want[i], out.choices);
            const int32_t* c = out.choices + t * K;
            gates_row(z + t * E, pi, c, P, sig && bb.ok[i] ? sig + i * E : nullptr, out.gates + t * K);
            if (c[0] >= 0) bl.f[c[0]]++;
            if (dropless)
              for (int64_t j = 0; j < K; ++j) {
                out.ids[t * K + j] = c[j];
                if (c[j] >= 0) bl.cnt[c[j]]++;
              }
          }
          *bl.zl = zl;
        }
      },
      1);

  // Block partials, reduced in block order.
  double* pbar = reinterpret_cast<double*>(w + NB * block_words(E));
  double* f = pbar + E;
  double zl = 0;
  for (int64_t e = 0; e < E; ++e) pbar[e] = f[e] = 0;
  for (int64_t b = 0; b < NB; ++b) {
    const Block bl = block_at(w, b, E);
    for (int64_t e = 0; e < E; ++e) {
      pbar[e] += bl.pbar[e];
      f[e] += (double)bl.f[e];
    }
    zl += *bl.zl;
  }

  for (int64_t e = 0; e < E; ++e) out.dropped[e] = 0;
  if (dropless) {
    // Counts and offsets from the block counts; each block's cursors start after the earlier blocks' slots.
    out.offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) {
      int64_t run = out.offsets[e];
      for (int64_t b = 0; b < NB; ++b) {
        int64_t* cnt = block_at(w, b, E).cnt;
        const int64_t n = cnt[e];
        cnt[e] = run;
        run += n;
      }
      out.counts[e] = (int32_t)(run - out.offsets[e]);
      out.offsets[e + 1] = run;
    }
    parallel_for(
        NB,
        [&](int64_t b0, int64_t b1, int) {
          for (int64_t b = b0; b < b1; ++b) {
            int64_t* cur = block_at(w, b, E).cnt;
            const int64_t t1 = std::min(T, (b + 1) * kBlock);
            for (int64_t t = b * kBlock; t < t1; ++t) {
              int32_t kept = 0;
              for (int64_t j = 0; j < K; ++j) {
                const int64_t s = t * K + j;
                const int32_t e = out.ids[s];
                if (e < 0) {
                  out.slot_rank[s] = -1;
                  continue;
                }
                const int64_t r = cur[e]++;
                out.sorted_slots[r] = (int32_t)s;
                out.slot_rank[s] = (int32_t)r;
                ++kept;
              }
              if (out.token_counts) out.token_counts[t] = kept;
            }
          }
        },
        1);
  } else {
    // Capacity, rank-major priority: all first choices (in token order) before any second choice.
    for (int64_t e = 0; e < E; ++e) out.counts[e] = 0;
    for (int64_t j = 0; j < K; ++j)
      for (int64_t t = 0; t < T; ++t) {
        int64_t s = t * K + j;
        int32_t e = out.choices[s];
        out.ids[s] = e;
        if (e < 0) continue;
        if (out.counts[e] >= P.capacity) {
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
    int64_t* cur = reinterpret_cast<int64_t*>(f + E);  // the logpb/fe area, unused by the forward
    for (int64_t e = 0; e < E; ++e) cur[e] = out.offsets[e];
    for (int64_t t = 0; t < T; ++t) {
      int32_t kept = 0;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t s = t * K + j;
        const int32_t e = out.ids[s];
        if (e < 0) {
          out.slot_rank[s] = -1;
          continue;
        }
        const int64_t r = cur[e]++;
        out.sorted_slots[r] = (int32_t)s;
        out.slot_rank[s] = (int32_t)r;
        ++kept;
      }
      if (out.token_counts) out.token_counts[t] = kept;
    }
  }
  for (int64_t s = out.offsets[E]; s < T * K; ++s) out.sorted_slots[s] = -1;

  // Auxiliary losses from the double partial sums.
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
  const int64_t T = P.T, E = P.E, K = P.K, NB = num_blocks(T);
  const RowKernels rk = row_kernels();
  uint64_t* w = reinterpret_cast<uint64_t*>(work);
  const bool reg = w_entropy != 0 || w_balance != 0;
  double* pbar = reinterpret_cast<double*>(w + NB * block_words(E));
  double* f = pbar + E;
  float* logpb = reinterpret_cast<float*>(f + E);  // [E]
  float* fe = logpb + E;                           // [E]
  if (reg) {
    // p̄ and f from block partials (the softmax is recomputed in the second pass rather than stored).
    parallel_for(
        NB,
        [&](int64_t b0, int64_t b1, int tid) {
          const BlockBufs bb = block_bufs(tid, E);
          int32_t want[kBlock];
          for (int64_t b = b0; b < b1; ++b) {
            Block bl = block_at(w, b, E);
            for (int64_t e = 0; e < E; ++e) {
              bl.pbar[e] = 0;
              bl.f[e] = 0;
            }
            const int64_t tb = b * kBlock, n = std::min(T, tb + kBlock) - tb;
            const float* sig;
            route_block(rk, z, tb, n, P, false, bb, want, &sig, bl.pbar);
            for (int64_t t = tb; t < tb + n; ++t)
              if (choices[t * K] >= 0) bl.f[choices[t * K]]++;
          }
        },
        1);
    for (int64_t e = 0; e < E; ++e) pbar[e] = f[e] = 0;
    for (int64_t b = 0; b < NB; ++b) {
      const Block bl = block_at(w, b, E);
      for (int64_t e = 0; e < E; ++e) {
        pbar[e] += bl.pbar[e];
        f[e] += (double)bl.f[e];
      }
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
  const MoeRouteBwdRowFn bwd_row = rk.bwd_row ? rk.bwd_row : bwd_row_scalar;
  parallel_for(
      NB,
      [&](int64_t b0, int64_t b1, int tid) {
        const BlockBufs bb = block_bufs(tid, E);
        int32_t want[kBlock];
        float* gp = bb.sig;  // [K] gate values of one token (unused by the softmax-only rows)
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t tb = b * kBlock, n = std::min(T, tb + kBlock) - tb;
          const float* sig;
          route_block(rk, z, tb, n, P, false, bb, want, &sig, nullptr);
          for (int64_t i = 0; i < n; ++i) {
            const int64_t t = tb + i;
            const float* zt = z + t * E;
            const float* pt = bb.p + i * E;
            float* row = dz + t * E;
            const int32_t* c = choices + t * K;
            const int32_t* id = ids + t * K;
            const float* dg = dgates + t * K;
            const float lse = bb.m[i] + std::log(bb.sum[i]);
            gates_row(zt, pt, c, P, nullptr, gp);
            double a = 0;
            if (P.gate != MoeGate::Sigmoid)
              for (int64_t j = 0; j < K; ++j)
                if (id[j] >= 0) a += (double)dg[j] * gp[j];
            bwd_row(pt, E, lse, reg, logpb, fe, ce, cb, cz, P.gate == MoeGate::Softmax ? (float)a : 0.0f, row);
            if (P.gate == MoeGate::Sigmoid) {
              for (int64_t j = 0; j < K; ++j)
                if (id[j] >= 0) row[c[j]] += dg[j] * gp[j] * (1 - gp[j]);
            } else if (P.gate == MoeGate::Softmax) {
              for (int64_t j = 0; j < K; ++j)
                if (id[j] >= 0) row[c[j]] += dg[j] * gp[j];
            } else {
              for (int64_t j = 0; j < K; ++j)
                if (c[j] >= 0) row[c[j]] += gp[j] * ((id[j] >= 0 ? dg[j] : 0.0f) - (float)a);
            }
          }
        }
      },
      1);
}

}  // namespace sffn
