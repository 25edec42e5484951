// MoE expert block on the CPU as grouped GEMMs over the sorted slot list (kernels.md §1, §5; methods.md §1.3–1.4,
// §1.9). Every matrix product is sffn::gemm_f32_rows over row-pointer tables:
//   up:    A rows = x[token(r)] gathered through sorted_slots (no permuted copy of X), B = W1[e] [D, G],
//          epilogue pre += b1[e]; hs = gate · act(pre) on the tile while it is hot;
//   down:  A rows = hs[r] (already in rank order), B = W2[e] [G, D], C rows = yr[r];
//   combine: y[t] = b2 + the token's expert outputs; the fused layer accumulates them straight into y in expert
//          order by column owners (no [S, D] buffer); the primitives write yr [S, D] and sum it in slot order.
// Backward: dhs = dy[token]·W2[e]ᵀ with the gate gradient (row dot) and act' in the epilogue; dW2[e] = hsᵀ·dy
// and dW1[e] = xᵀ·dpre as variable-length reductions (A transposed, its K dimension gathered) where each
// output tile has one owner walking the expert's rows in rank order; dx = Σ dpre·W1[e]ᵀ by column owners.
//
// Work items are (expert, row block, column block) tiles, split across threads by a static cost-balanced walk;
// a tile's arithmetic does not depend on which thread runs it, so results are bit-identical for any thread
// count. x [T, D], w1 [E, D, G], b1 [E, G], w2 [E, G, D], b2 [D], pre/hs/dpre [S, G], yr [S, D] (primitive only).
// Spec: kernels/ref/moe_experts.cpp. Test: test/ops/moe-experts.test.ts. Benchmark: npm run bench -- moe.
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/moe.h"
#include "act.h"

namespace sffn {

// ---- activations (scalar entry points; the kernels use the row helpers of act.h) ---------------------------
float act_forward(Act act, float a) {
  switch (act) {
    case Act::Relu: return act_detail::relu(a);
    case Act::Gelu: return act_detail::gelu(a);
    case Act::Silu: return act_detail::silu(a);
    default: return a;
  }
}

float act_backward(Act act, float a) {
  switch (act) {
    case Act::Relu: return act_detail::relu_grad(a);
    case Act::Gelu: return act_detail::gelu_grad(a);
    case Act::Silu: return act_detail::silu_grad(a);
    default: return 1.0f;
  }
}

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
    case Act::Gelu:
      return 0.5 * (1.0 + std::erf(a / std::sqrt(2.0))) + a * std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI);
    case Act::Silu: {
      double s = 1.0 / (1.0 + std::exp(-a));
      return s * (1.0 + a * (1.0 - s));
    }
    default: return 1.0;
  }
}

namespace {

constexpr int kScratchSlot = 7;  // per-thread pointer tables (slot 7 is reserved for MoE kernels)
constexpr int64_t kRowBlock = 256;   // rows of one expert per tile (the M block)
constexpr int64_t kColBlock = 128;   // output columns per tile (the N block)
constexpr int64_t kRedBlock = 1024;  // rows per step of the dW reductions (accumulated in fixed order)
constexpr int64_t kOwnerColBlock = 64;  // column blocks of the token-row outputs (y, dx), one owner each

struct Tile {
  int64_t e, m0, m1, n0, n1;
};

// Row-pointer tables of one thread: A rows, B rows, C rows.
struct Tables {
  const float** a;
  const float** b;
  float** c;
};

// Walks every tile of a grouped problem and runs body(tile, tid, tables) on exactly one thread.
//   rows_mode: the tile rows are the expert's slots (M = m_e); otherwise M = Mfix for every expert and the
//   cost scales with m_e (the dW reductions). with_empty: experts with m_e = 0 still get their tiles
//   (to zero their dW).
// The split is a static walk over the cumulative cost, so it depends only on (shapes, routing, thread count),
// and each tile's arithmetic is independent of the owner.
template <class Body>
void for_tiles(const int64_t* off, int64_t E, bool rows_mode, int64_t Mfix, int64_t MB, int64_t N, int64_t NB,
               int64_t kdim, bool with_empty, size_t table_ptrs, Body body) {
  auto tile_cost = [&](int64_t m_e, int64_t dm, int64_t dn) -> double {
    return (double)dm * (double)dn * (double)(rows_mode ? kdim : std::max<int64_t>(m_e, 1)) + 1e3;
  };
  double total = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t m_e = off[e + 1] - off[e];
    int64_t M = rows_mode ? m_e : Mfix;
    if (M == 0 || (m_e == 0 && !with_empty)) continue;
    for (int64_t m0 = 0; m0 < M; m0 += MB)
      for (int64_t n0 = 0; n0 < N; n0 += NB) total += tile_cost(m_e, std::min(MB, M - m0), std::min(NB, N - n0));
  }
  if (total == 0) return;
  auto run = [&](int tid, int nt) {
    char* mem = static_cast<char*>(scratch(tid, kScratchSlot, table_ptrs * 3 * sizeof(void*)));
    Tables tables{reinterpret_cast<const float**>(mem), reinterpret_cast<const float**>(mem) + table_ptrs,
                  reinterpret_cast<float**>(mem + 2 * table_ptrs * sizeof(void*))};
    double lo = total * tid / nt, hi = total * (tid + 1) / nt, acc = 0;
    for (int64_t e = 0; e < E; ++e) {
      int64_t m_e = off[e + 1] - off[e];
      int64_t M = rows_mode ? m_e : Mfix;
      if (M == 0 || (m_e == 0 && !with_empty)) continue;
      for (int64_t m0 = 0; m0 < M; m0 += MB)
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
          int64_t m1 = std::min(M, m0 + MB), n1 = std::min(N, n0 + NB);
          double c = tile_cost(m_e, m1 - m0, n1 - n0);
          double mid = acc + 0.5 * c;
          acc += c;
          if (mid >= lo && mid < hi) body(Tile{e, m0, m1, n0, n1}, tables);
        }
    }
  };
  // Few, small tiles: one thread avoids the wake-up cost.
  if (total < 2e6 || num_threads() == 1) run(0, 1);
  else parallel_run(run);
}

inline int64_t token_of(const MoeRoutingView& r, int64_t rank, int64_t K) { return r.sorted_slots[rank] / K; }

// Column-owner pass for products that land in token rows (y, dx): every thread owns whole column blocks of the
// [T, N] output and walks all experts in ascending order for them, accumulating into the token rows (beta = 1).
// No two threads touch the same element, and each element sees the same fixed sequence (init, then the experts
// of its token in id order) whatever the thread count: deterministic without a per-slot buffer and a K-sum.
template <class Body>
void for_column_owners(int64_t N, int64_t NB, double flops, size_t table_ptrs, Body body) {
  const int64_t nblk = (N + NB - 1) / NB;
  auto run = [&](int tid, int nt) {
    char* mem = static_cast<char*>(scratch(tid, kScratchSlot, table_ptrs * 3 * sizeof(void*)));
    Tables tables{reinterpret_cast<const float**>(mem), reinterpret_cast<const float**>(mem) + table_ptrs,
                  reinterpret_cast<float**>(mem + 2 * table_ptrs * sizeof(void*))};
    for (int64_t b = nblk * tid / nt; b < nblk * (tid + 1) / nt; ++b) body(b * NB, std::min(N, (b + 1) * NB), tables);
  };
  if (flops < 2e6 || num_threads() == 1 || nblk == 1) run(0, 1);
  else parallel_run(run);
}

}  // namespace

void moe_expert_up_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                           const float* b1, float* pre, float* hs) {
  const int64_t D = s.D, G = s.G, K = s.K;
  const size_t cap = (size_t)std::max<int64_t>({kRowBlock, D, G});
  for_tiles(r.offsets, s.E, true, 0, kRowBlock, G, kColBlock, D, false, cap, [&](const Tile& tl, const Tables& tab) {
    const float** arows = tab.a;
    const float** brows = tab.b;
    float** crows = tab.c;
    const int64_t base = r.offsets[tl.e], m = tl.m1 - tl.m0, n = tl.n1 - tl.n0;
    for (int64_t i = 0; i < m; ++i) {
      int64_t rk = base + tl.m0 + i;
      arows[i] = x + token_of(r, rk, K) * D;  // the fused gather
      crows[i] = pre + rk * G + tl.n0;
    }
    const float* we = w1 + tl.e * D * G + tl.n0;
    for (int64_t k = 0; k < D; ++k) brows[k] = we + k * G;
    gemm_f32_rows(false, false, m, n, D, 1.0f, arows, brows, 0.0f, crows);
    // Epilogue on the hot tile: bias, activation, gate scale.
    const float* be = b1 ? b1 + tl.e * G + tl.n0 : nullptr;
    for (int64_t i = 0; i < m; ++i) {
      int64_t rk = base + tl.m0 + i;
      float* p = crows[i];
      if (be)
        for (int64_t j = 0; j < n; ++j) p[j] += be[j];
      if (hs) act_rows(s.act, p, hs + rk * G + tl.n0, n, r.gates[r.sorted_slots[rk]]);
    }
  });
}

void moe_expert_down_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* hs, const float* w2,
                             float* yr) {
  const int64_t D = s.D, G = s.G;
  const size_t cap = (size_t)std::max<int64_t>({kRowBlock, D, G});
  for_tiles(r.offsets, s.E, true, 0, kRowBlock, D, kColBlock, G, false, cap, [&](const Tile& tl, const Tables& tab) {
    const float** arows = tab.a;
    const float** brows = tab.b;
    float** crows = tab.c;
    const int64_t base = r.offsets[tl.e], m = tl.m1 - tl.m0;
    for (int64_t i = 0; i < m; ++i) {
      int64_t rk = base + tl.m0 + i;
      arows[i] = hs + rk * G;
      crows[i] = yr + rk * D + tl.n0;
    }
    const float* we = w2 + tl.e * G * D + tl.n0;
    for (int64_t k = 0; k < G; ++k) brows[k] = we + k * D;
    gemm_f32_rows(false, false, m, tl.n1 - tl.n0, G, 1.0f, arows, brows, 0.0f, crows);
  });
}

void moe_combine_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* yr, const float* b2,
                         float* y) {
  const int64_t D = s.D, K = s.K;
  parallel_for(
      s.T,
      [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) {
          float* out = y + t * D;
          if (b2)
            for (int64_t d = 0; d < D; ++d) out[d] = b2[d];
          else
            for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
          for (int64_t j = 0; j < K; ++j) {
            int64_t rk = r.slot_rank[t * K + j];
            if (rk < 0) continue;
            const float* src = yr + rk * D;
            for (int64_t d = 0; d < D; ++d) out[d] += src[d];
          }
        }
      },
      16);
}

// Down-projection fused with the combine: y[t] = b2 + Σ_e (hs rows of t at e)·W2[e], experts in id order.
static void down_combine(const MoeExpertsShape& s, const MoeRoutingView& r, const float* hs, const float* w2,
                         const float* b2, float* y) {
  const int64_t T = s.T, D = s.D, E = s.E, G = s.G, K = s.K;
  const size_t cap = (size_t)std::max<int64_t>({kRowBlock, D, G});
  const double flops = 2.0 * (double)r.offsets[E] * (double)G * (double)D;
  for_column_owners(D, kOwnerColBlock, flops, cap, [&](int64_t n0, int64_t n1, const Tables& tab) {
    const int64_t n = n1 - n0;
    for (int64_t t = 0; t < T; ++t) {
      float* o = y + t * D + n0;
      if (b2)
        for (int64_t j = 0; j < n; ++j) o[j] = b2[n0 + j];
      else
        std::fill(o, o + n, 0.0f);
    }
    for (int64_t e = 0; e < E; ++e) {
      const float* we = w2 + e * G * D + n0;
      for (int64_t k = 0; k < G; ++k) tab.b[k] = we + k * D;
      for (int64_t m0 = r.offsets[e]; m0 < r.offsets[e + 1]; m0 += kRowBlock) {
        const int64_t m = std::min(kRowBlock, r.offsets[e + 1] - m0);
        for (int64_t i = 0; i < m; ++i) {
          tab.a[i] = hs + (m0 + i) * G;
          tab.c[i] = y + token_of(r, m0 + i, K) * D + n0;  // the scatter-add into the token row
        }
        gemm_f32_rows(false, false, m, n, G, 1.0f, tab.a, tab.b, 1.0f, tab.c);
      }
    }
  });
}

void moe_experts_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y) {
  moe_expert_up_forward(s, r, x, w1, b1, pre, hs);
  down_combine(s, r, hs, w2, b2, y);
}

void moe_experts_backward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                          const float* w2, const float* pre, const float* hs, const float* dy, float* dx, float* dw1,
                          float* db1, float* dw2, float* db2, float* dgates, float* dpre) {
  const int64_t T = s.T, D = s.D, E = s.E, K = s.K, G = s.G;
  const int64_t* off = r.offsets;
  const size_t cap = (size_t)std::max<int64_t>({kRowBlock, kRedBlock, D, G});

  // Slots that were not kept get no gate gradient.
  for (int64_t i = 0; i < T * K; ++i)
    if (r.slot_rank[i] < 0) dgates[i] = 0.0f;

  // 1. dhs = dy[token]·W2[e]ᵀ, whole G rows per tile so the epilogue can take the gate gradient (a row dot)
  //    and turn dhs into dpre = gate·dhs·act'(pre) in place.
  for_tiles(off, E, true, 0, kRowBlock, G, G, D, false, cap, [&](const Tile& tl, const Tables& tab) {
    const float** arows = tab.a;
    const float** brows = tab.b;
    float** crows = tab.c;
    const int64_t base = off[tl.e], m = tl.m1 - tl.m0;
    for (int64_t i = 0; i < m; ++i) {
      int64_t rk = base + tl.m0 + i;
      arows[i] = dy + token_of(r, rk, K) * D;
      crows[i] = dpre + rk * G;
    }
    const float* we = w2 + tl.e * G * D;
    for (int64_t j = 0; j < G; ++j) brows[j] = we + j * D;  // B = W2[e]ᵀ: b_rows[j][k] = W2[e][j][k]
    gemm_f32_rows(false, true, m, G, D, 1.0f, arows, brows, 0.0f, crows);
    for (int64_t i = 0; i < m; ++i) {
      int64_t rk = base + tl.m0 + i;
      int64_t slot = r.sorted_slots[rk];
      float g = r.gates[slot];
      const float* a = pre + rk * G;
      dgates[slot] = act_dot(s.act, a, crows[i], G);  // before crows[i] turns into dpre
      act_grad_rows(s.act, a, crows[i], G, g);
    }
  });

  // 2. dW2[e] [G, D] = Σ_r hs[r]ᵀ dy[token(r)], one owner per (e, G block, D block), reduced in rank order.
  for_tiles(off, E, false, G, kColBlock, D, kColBlock, 0, true, cap, [&](const Tile& tl, const Tables& tab) {
    const float** arows = tab.a;
    const float** brows = tab.b;
    float** crows = tab.c;
    const int64_t base = off[tl.e], m_e = off[tl.e + 1] - base, mi = tl.m1 - tl.m0, n = tl.n1 - tl.n0;
    for (int64_t i = 0; i < mi; ++i) crows[i] = dw2 + tl.e * G * D + (tl.m0 + i) * D + tl.n0;
    if (m_e == 0) {
      for (int64_t i = 0; i < mi; ++i) std::fill(crows[i], crows[i] + n, 0.0f);
      return;
    }
    for (int64_t k0 = 0; k0 < m_e; k0 += kRedBlock) {
      int64_t kn = std::min(kRedBlock, m_e - k0);
      for (int64_t k = 0; k < kn; ++k) {
        int64_t rk = base + k0 + k;
        arows[k] = hs + rk * G + tl.m0;
        brows[k] = dy + token_of(r, rk, K) * D + tl.n0;
      }
      gemm_f32_rows(true, false, mi, n, kn, 1.0f, arows, brows, k0 == 0 ? 0.0f : 1.0f, crows);
    }
  });

  // 3. dW1[e] [D, G] = Σ_r x[token(r)]ᵀ dpre[r].
  for_tiles(off, E, false, D, kColBlock, G, kColBlock, 0, true, cap, [&](const Tile& tl, const Tables& tab) {
    const float** arows = tab.a;
    const float** brows = tab.b;
    float** crows = tab.c;
    const int64_t base = off[tl.e], m_e = off[tl.e + 1] - base, mi = tl.m1 - tl.m0, n = tl.n1 - tl.n0;
    for (int64_t i = 0; i < mi; ++i) crows[i] = dw1 + tl.e * D * G + (tl.m0 + i) * G + tl.n0;
    if (m_e == 0) {
      for (int64_t i = 0; i < mi; ++i) std::fill(crows[i], crows[i] + n, 0.0f);
      return;
    }
    for (int64_t k0 = 0; k0 < m_e; k0 += kRedBlock) {
      int64_t kn = std::min(kRedBlock, m_e - k0);
      for (int64_t k = 0; k < kn; ++k) {
        int64_t rk = base + k0 + k;
        arows[k] = x + token_of(r, rk, K) * D + tl.m0;
        brows[k] = dpre + rk * G + tl.n0;
      }
      gemm_f32_rows(true, false, mi, n, kn, 1.0f, arows, brows, k0 == 0 ? 0.0f : 1.0f, crows);
    }
  });

  // 4. dx[t] = Σ_e dpre(rows of t at e)·W1[e]ᵀ, column owners accumulating in expert order.
  const double flops = 2.0 * (double)off[E] * (double)G * (double)D;
  for_column_owners(D, kOwnerColBlock, flops, cap, [&](int64_t n0, int64_t n1, const Tables& tab) {
    const int64_t n = n1 - n0;
    for (int64_t t = 0; t < T; ++t) std::fill(dx + t * D + n0, dx + t * D + n1, 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      const float* we = w1 + e * D * G;
      for (int64_t j = 0; j < n; ++j) tab.b[j] = we + (n0 + j) * G;  // B = W1[e]ᵀ
      for (int64_t m0 = off[e]; m0 < off[e + 1]; m0 += kRowBlock) {
        const int64_t m = std::min(kRowBlock, off[e + 1] - m0);
        for (int64_t i = 0; i < m; ++i) {
          tab.a[i] = dpre + (m0 + i) * G;
          tab.c[i] = dx + token_of(r, m0 + i, K) * D + n0;
        }
        gemm_f32_rows(false, true, m, n, G, 1.0f, tab.a, tab.b, 1.0f, tab.c);
      }
    }
  });

  if (db1)
    parallel_for(
        E,
        [&](int64_t e0, int64_t e1, int) {
          for (int64_t e = e0; e < e1; ++e) {
            float* b = db1 + e * G;
            std::fill(b, b + G, 0.0f);
            for (int64_t rk = off[e]; rk < off[e + 1]; ++rk)
              for (int64_t j = 0; j < G; ++j) b[j] += dpre[rk * G + j];
          }
        },
        1);
  if (db2) {
    std::fill(db2, db2 + D, 0.0f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) db2[d] += dy[t * D + d];
  }
}

}  // namespace sffn
