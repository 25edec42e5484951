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
// Tile sizes (measured on the 2-core AVX-512 dev box, bench/moe.ts). Wide N blocks matter most: every
// gemm_f32_rows call packs its (gathered) A rows once per call, so narrow column blocks re-pack them.
constexpr int64_t kRowBlock = 256;   // rows of one expert per tile (the M block of up, dhs and the owners)
constexpr int64_t kColBlock = 512;   // output columns per tile (N block; also the M block of the dW tiles)
constexpr int64_t kRedBlock = 1024;  // rows per step of the dW reductions (accumulated in fixed order)

// Column block of the token-row outputs (y, dx): as wide as possible while every thread gets one, in units of
// 64. Each element's FMA chain does not depend on the block it falls in (gemm.h), so results stay bit-identical
// for any thread count.
int64_t owner_cols(int64_t N) {
  const int64_t nt = num_threads();
  const int64_t w = ((N + nt - 1) / nt + 63) / 64 * 64;
  return std::min(std::max<int64_t>(w, 64), N);
}

struct Tile {
  int64_t e, m0, m1, n0, n1;
};

// Row-pointer tables of one thread: A rows, B rows, C rows.
struct Tables {
  const float** a;
  const float** b;
  float** c;
};

// Work items. A pass is a fixed-order list of items, each with a cost (≈ multiply-adds) and a body; run_items
// splits the list across threads by a static walk over the cumulative cost, so the split depends only on
// (shapes, routing, thread count), and no item's arithmetic depends on which thread runs it. Several passes
// whose outputs are disjoint can share one list (one barrier instead of several).

// The tiles of a grouped problem: visit(cost, tile).
//   rows_mode: tile rows are the expert's slots (M = m_e); otherwise M = Mfix for every expert and the cost
//   scales with m_e (the dW reductions). with_empty: experts with m_e = 0 still get tiles (to zero their dW).
template <class Visit>
void enum_tiles(const int64_t* off, int64_t E, bool rows_mode, int64_t Mfix, int64_t MB, int64_t N, int64_t NB,
                int64_t kdim, bool with_empty, Visit&& visit) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t m_e = off[e + 1] - off[e];
    const int64_t M = rows_mode ? m_e : Mfix;
    if (M == 0 || (m_e == 0 && !with_empty)) continue;
    for (int64_t m0 = 0; m0 < M; m0 += MB)
      for (int64_t n0 = 0; n0 < N; n0 += NB) {
        const int64_t m1 = std::min(M, m0 + MB), n1 = std::min(N, n0 + NB);
        const double cost = (double)(m1 - m0) * (double)(n1 - n0) * (double)(rows_mode ? kdim : std::max<int64_t>(m_e, 1));
        visit(cost + 1e3, Tile{e, m0, m1, n0, n1});
      }
  }
}

// Column-owner items for products that land in token rows (y, dx): an item owns a whole column block of the
// [T, N] output and walks all experts in ascending order for it, accumulating into the token rows (beta = 1).
// No two threads touch the same element, and each element sees the same fixed sequence (init, then the experts
// of its token in id order) whatever the thread count: deterministic without a per-slot buffer and a K-sum.
template <class Visit>
void enum_owner_blocks(int64_t N, int64_t NB, double cost_per_column, Visit&& visit) {
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t n1 = std::min(N, n0 + NB);
    visit(cost_per_column * (double)(n1 - n0) + 1e3, n0, n1);
  }
}

// Runs the items that `enumerate(emit)` lists, where emit(cost, body) and body(const Tables&).
template <class Enumerate>
void run_items(Enumerate&& enumerate, size_t table_ptrs) {
  double total = 0;
  enumerate([&](double cost, auto&&) { total += cost; });
  if (total == 0) return;
  auto run = [&](int tid, int nt) {
    char* mem = static_cast<char*>(scratch(tid, kScratchSlot, table_ptrs * 3 * sizeof(void*)));
    const Tables tables{reinterpret_cast<const float**>(mem), reinterpret_cast<const float**>(mem) + table_ptrs,
                        reinterpret_cast<float**>(mem + 2 * table_ptrs * sizeof(void*))};
    const double lo = total * tid / nt, hi = total * (tid + 1) / nt;
    double acc = 0;
    enumerate([&](double cost, auto&& body) {
      const double mid = acc + 0.5 * cost;
      acc += cost;
      if (mid >= lo && mid < hi) body(tables);
    });
  };
  // Little work: one thread avoids the wake-up cost.
  if (total < 2e6 || num_threads() == 1) run(0, 1);
  else parallel_run(run);
}

// One grouped pass of tiles: body(tile, tables).
template <class Body>
void for_tiles(const int64_t* off, int64_t E, bool rows_mode, int64_t Mfix, int64_t MB, int64_t N, int64_t NB,
               int64_t kdim, bool with_empty, size_t table_ptrs, Body body) {
  run_items(
      [&](auto&& emit) {
        enum_tiles(off, E, rows_mode, Mfix, MB, N, NB, kdim, with_empty, [&](double c, const Tile& t) {
          emit(c, [&](const Tables& tab) { body(t, tab); });
        });
      },
      table_ptrs);
}

inline int64_t token_of(const MoeRoutingView& r, int64_t rank, int64_t K) { return r.sorted_slots[rank] / K; }

// Column owners of the token-row output out [T, N]: out[t, n0:n1] = init, then for every expert in id order
// out[token(r), n0:n1] += A_e rows · B_e (B given by b_row(e, j or k)); tables hold the row pointers.
//   a_rows(rank) -> A row; b_trans as in gemm_f32_rows; bfill(e, n0, n1, tables.b) fills the B pointers.
template <class ARow, class BFill>
void owner_block(const MoeRoutingView& r, int64_t E, int64_t K, int64_t T, int64_t N, int64_t kdim, bool b_trans,
                 const float* init, float* out, int64_t n0, int64_t n1, const Tables& tab, ARow a_row, BFill bfill) {
  const int64_t n = n1 - n0;
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * N + n0;
    if (init)
      for (int64_t j = 0; j < n; ++j) o[j] = init[n0 + j];
    else
      std::fill(o, o + n, 0.0f);
  }
  for (int64_t e = 0; e < E; ++e) {
    if (r.offsets[e + 1] == r.offsets[e]) continue;
    bfill(e, n0, n1, tab.b);
    for (int64_t m0 = r.offsets[e]; m0 < r.offsets[e + 1]; m0 += kRowBlock) {
      const int64_t m = std::min(kRowBlock, r.offsets[e + 1] - m0);
      for (int64_t i = 0; i < m; ++i) {
        tab.a[i] = a_row(m0 + i);
        tab.c[i] = out + token_of(r, m0 + i, K) * N + n0;  // the scatter-add into the token row
      }
      gemm_f32_rows(false, b_trans, m, n, kdim, 1.0f, tab.a, tab.b, 1.0f, tab.c);
    }
  }
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
  const int64_t D = s.D, G = s.G;
  const size_t cap = (size_t)std::max<int64_t>({kRowBlock, D, G});
  run_items(
      [&](auto&& emit) {
        enum_owner_blocks(D, owner_cols(D), (double)r.offsets[s.E] * (double)G, [&](double c, int64_t n0, int64_t n1) {
          emit(c, [&, n0, n1](const Tables& tab) {
            owner_block(
                r, s.E, s.K, s.T, D, G, false, b2, y, n0, n1, tab, [&](int64_t rk) { return hs + rk * G; },
                [&](int64_t e, int64_t c0, int64_t, const float** b) {
                  for (int64_t k = 0; k < G; ++k) b[k] = w2 + e * G * D + k * D + c0;
                });
          });
        });
      },
      cap);
}

void moe_experts_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y) {
  moe_expert_up_forward(s, r, x, w1, b1, pre, hs);
  down_combine(s, r, hs, w2, b2, y);
}

void moe_experts_backward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                          const float* w2, const float* pre, const float* hs, const float* dy, float* dx, float* dw1,
                          float* db1, float* dw2, float* db2, float* dgates, float* dpre, bool dw_zeroed) {
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

  // 2–4 in one list (disjoint outputs, one barrier):
  //   dW2[e] [G, D] = Σ_r hs[r]ᵀ dy[token(r)], one owner per (e, G block, D block), reduced in rank order;
  //   dW1[e] [D, G] = Σ_r x[token(r)]ᵀ dpre[r], likewise;
  //   dx[t] = Σ_e dpre(rows of t at e)·W1[e]ᵀ by column owners in expert order.
  // The dW reductions run over the expert's rows in chunks of kRedBlock accumulated in order (beta = 1).
  auto dw_tile = [&](const Tile& tl, const Tables& tab, const float* A, int64_t lda, bool a_is_x, const float* B,
                     int64_t ldb, bool b_is_dy, float* C, int64_t ldc) {
    const int64_t base = off[tl.e], m_e = off[tl.e + 1] - base, mi = tl.m1 - tl.m0, n = tl.n1 - tl.n0;
    for (int64_t i = 0; i < mi; ++i) tab.c[i] = C + (tl.m0 + i) * ldc + tl.n0;
    if (m_e == 0) {
      for (int64_t i = 0; i < mi; ++i) std::fill(tab.c[i], tab.c[i] + n, 0.0f);
      return;
    }
    for (int64_t k0 = 0; k0 < m_e; k0 += kRedBlock) {
      const int64_t kn = std::min(kRedBlock, m_e - k0);
      for (int64_t k = 0; k < kn; ++k) {
        const int64_t rk = base + k0 + k, t = token_of(r, rk, K);
        tab.a[k] = A + (a_is_x ? t : rk) * lda + tl.m0;
        tab.b[k] = B + (b_is_dy ? t : rk) * ldb + tl.n0;
      }
      gemm_f32_rows(true, false, mi, n, kn, 1.0f, tab.a, tab.b, k0 == 0 ? 0.0f : 1.0f, tab.c);
    }
  };
  run_items(
      [&](auto&& emit) {
        enum_tiles(off, E, false, G, kColBlock, D, kColBlock, 0, !dw_zeroed, [&](double c, const Tile& tl) {
          emit(c, [&, tl](const Tables& tab) { dw_tile(tl, tab, hs, G, false, dy, D, true, dw2 + tl.e * G * D, D); });
        });
        enum_tiles(off, E, false, D, kColBlock, G, kColBlock, 0, !dw_zeroed, [&](double c, const Tile& tl) {
          emit(c, [&, tl](const Tables& tab) { dw_tile(tl, tab, x, D, true, dpre, G, false, dw1 + tl.e * D * G, G); });
        });
        enum_owner_blocks(D, owner_cols(D), (double)off[E] * (double)G, [&](double c, int64_t n0, int64_t n1) {
          emit(c, [&, n0, n1](const Tables& tab) {
            owner_block(
                r, E, K, T, D, G, true, nullptr, dx, n0, n1, tab, [&](int64_t rk) { return dpre + rk * G; },
                [&](int64_t e, int64_t c0, int64_t c1, const float** b) {
                  for (int64_t j = 0; j < c1 - c0; ++j) b[j] = w1 + e * D * G + (c0 + j) * G;  // B = W1[e]ᵀ
                });
          });
        });
      },
      cap);

  if (db1)
    parallel_for(
        E,
        [&](int64_t e0, int64_t e1, int) {
          for (int64_t e = e0; e < e1; ++e) {
            float* b = db1 + e * G;
            if (dw_zeroed && off[e + 1] == off[e]) continue;
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
