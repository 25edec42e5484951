// Product-key top-k on the CPU (Lample 2019 §3.2; PEER §2.2; Csordás 2023 §3.2). Spec: kernels/ref/pkm_topk.cpp.
//
// Forward, per chunk of tokens:
//   1. sub-key scores S1 = Q1 · C_hᵀ, S2 = Q2 · C'_hᵀ as dense GEMMs (gemm_f32), [rows, n] each;
//   2. per (token, head): sorted top-k of each half (insertion into a k-list, blocks of 16 scores skipped with one
//      vector compare against the current k-th best; ~k·ln(n/k) insertions; pkm_rows.h, compiled per ISA);
//   3. exact top-k of the candidate sums v1[i] + v2[j] without the k² grid: with both lists sorted descending,
//      (i, j) can only be in the top-k when (i+1)(j+1) <= k (the (i+1)(j+1) pairs (i' <= i, j' <= j) are all at
//      least as large, and float addition is monotone), so only Σ_m ⌊k/m⌋ candidates are scored (119 for k=32);
//   4. weights = act(scores).
// Backward, one owner per token then one owner per sub-key row (no atomics; bit-identical for any thread count):
//   dscore through act; per (token, head) the gradients of equal sub-key rows are merged (a row a appears in up to
//   k selected slots), dq accumulates over heads in fixed order, and dkeys rows are summed over a reverse index.
// Shapes: q [T, Hq, Dk], keys [Hk, 2, n, Dk/2], idx/scores/weights [T, H, k].
#include <algorithm>
#include <cmath>
#include <cstring>

#include "pkm_isa.h"
#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/pkm.h"

namespace sffn {
namespace {

// Rows of sub-key scores computed per GEMM call: bounds the workspace (2 · rows · n floats) while keeping the
// GEMMs tall enough to run at speed.
constexpr int64_t kChunkRows = 1024;

int64_t chunk_tokens(const PkmDims& d) { return std::max<int64_t>(1, std::min<int64_t>(d.T, kChunkRows / d.H)); }

// Higher score first, then lower slot index: a strict total order, so selections are unique.
inline bool better(float x, int64_t sx, float y, int64_t sy) { return x > y || (x == y && sx < sy); }

void act_forward(const PkmDims& d, PkmAct act, const float* s, float* w) {
  const int64_t HK = d.H * d.k;
  auto softmax = [](const float* x, float* y, int64_t m) {
    float mx = x[0];
    for (int64_t i = 1; i < m; ++i) mx = std::max(mx, x[i]);
    float z = 0;
    for (int64_t i = 0; i < m; ++i) z += (y[i] = std::exp(x[i] - mx));
    float inv = 1.0f / z;
    for (int64_t i = 0; i < m; ++i) y[i] *= inv;
  };
  switch (act) {
    case PkmAct::None: std::memcpy(w, s, HK * sizeof(float)); break;
    case PkmAct::Relu: for (int64_t i = 0; i < HK; ++i) w[i] = s[i] > 0 ? s[i] : 0.0f; break;
    case PkmAct::Sigmoid: for (int64_t i = 0; i < HK; ++i) w[i] = 1.0f / (1.0f + std::exp(-s[i])); break;
    case PkmAct::Softmax: for (int64_t h = 0; h < d.H; ++h) softmax(s + h * d.k, w + h * d.k, d.k); break;
    case PkmAct::SoftmaxAll: softmax(s, w, HK); break;
  }
}

// Per-thread scratch of the selection step, carved from the workspace tail.
struct SelectScratch {
  float* v1;
  float* v2;
  int32_t* i1;
  int32_t* i2;
  float* cv;     // best k candidate scores
  int64_t* cs;   // their slots
  float* sbuf;   // one token's [H, k] scores
};

size_t select_scratch_bytes(const PkmDims& d) { return (size_t)(d.k * 16 + d.k * 8 + d.H * d.k * 4 + 256); }

SelectScratch carve(const PkmDims& d, char* p) {
  SelectScratch s;
  s.v1 = (float*)p; p += d.k * 4;
  s.v2 = (float*)p; p += d.k * 4;
  s.i1 = (int32_t*)p; p += d.k * 4;
  s.i2 = (int32_t*)p; p += d.k * 4;
  s.cs = (int64_t*)p; p += d.k * 8;
  s.cv = (float*)p; p += d.k * 4;
  s.sbuf = (float*)p;
  return s;
}

// Layout of the score workspace for one chunk of Tc tokens: token-major rows (t·H + h) when one GEMM serves
// all heads (shared keys, per-head queries), else head-major (h·Tc + t) for the batched per-head GEMMs.
bool token_major(const PkmDims& d) { return d.Hk == 1 && (d.Hq == d.H || d.H == 1); }

}  // namespace

size_t pkm_topk_work_bytes(const PkmDims& d) {
  int64_t Tc = chunk_tokens(d);
  size_t scores = (size_t)(2 * Tc * d.H * d.n) * sizeof(float);
  return scores + (size_t)num_threads() * select_scratch_bytes(d) + 64;
}

void pkm_topk_forward(const PkmDims& d, PkmAct act, const float* q, const float* keys, int32_t* idx, float* scores,
                      float* weights, void* work) {
  const int64_t n = d.n, k = d.k, H = d.H, half = d.Dk / 2, HK = H * k;
  const int64_t Tc = chunk_tokens(d);
  const bool tmaj = token_major(d);
  float* S = static_cast<float*>(work);
  char* sel_base = reinterpret_cast<char*>(S + 2 * Tc * H * n);
  const size_t sel_bytes = select_scratch_bytes(d);
  const PkmRowKernels& kern = pkm_row_kernels();
  for (int64_t t0 = 0; t0 < d.T; t0 += Tc) {
    const int64_t tc = std::min(Tc, d.T - t0);
    for (int hf = 0; hf < 2; ++hf) {
      const float* A = q + t0 * d.Hq * d.Dk + hf * half;
      const float* B = keys + hf * n * half;
      float* C = S + hf * Tc * H * n;
      if (tmaj) {
        // Shared keys: one GEMM over all (token, head) rows.
        gemm_f32(false, true, tc * H, n, half, 1.0f, A, d.Dk, B, half, 0.0f, C, n);
      } else {
        gemm_f32(false, true, tc, n, half, 1.0f, A, d.Hq * d.Dk, B, half, 0.0f, C, n, H,
                 d.Hq == 1 ? 0 : d.Dk, d.Hk == 1 ? 0 : 2 * n * half, Tc * n);
      }
    }
    parallel_for_dynamic(
        tc,
        [&](int64_t b, int64_t e, int tid) {
          SelectScratch s = carve(d, sel_base + (size_t)tid * sel_bytes);
          for (int64_t tt = b; tt < e; ++tt) {
            const int64_t t = t0 + tt;
            for (int64_t h = 0; h < H; ++h) {
              const int64_t row = tmaj ? tt * H + h : h * Tc + tt;
              kern.topk_half(S + row * n, n, k, s.v1, s.i1);
              kern.topk_half(S + Tc * H * n + row * n, n, k, s.v2, s.i2);
              // Pruned candidate scan: only (i, j) with (i+1)(j+1) <= k can make the top-k.
              int64_t cnt = 0;
              for (int64_t i = 0; i < k; ++i) {
                const int64_t jn = k / (i + 1);
                const int64_t base = (int64_t)s.i1[i] * n;
                for (int64_t j = 0; j < jn; ++j) {
                  const float x = s.v1[i] + s.v2[j];
                  const int64_t sx = base + s.i2[j];
                  // v2 is sorted (ties by ascending index), so later j are no better either.
                  if (cnt == k && !better(x, sx, s.cv[k - 1], s.cs[k - 1])) break;
                  int64_t p = cnt < k ? cnt : k - 1;
                  while (p > 0 && better(x, sx, s.cv[p - 1], s.cs[p - 1])) {
                    s.cv[p] = s.cv[p - 1];
                    s.cs[p] = s.cs[p - 1];
                    --p;
                  }
                  s.cv[p] = x;
                  s.cs[p] = sx;
                  if (cnt < k) ++cnt;
                }
              }
              int32_t* it = idx + (t * H + h) * k;
              for (int64_t j = 0; j < k; ++j) {
                it[j] = (int32_t)s.cs[j];
                s.sbuf[h * k + j] = s.cv[j];
              }
            }
            std::memcpy(scores + t * HK, s.sbuf, HK * sizeof(float));
            act_forward(d, act, s.sbuf, weights + t * HK);
          }
        },
        4);
  }
}

size_t pkm_topk_backward_work_bytes(const PkmDims& d) {
  const int64_t M = 2 * d.T * d.H * d.k, R = d.Hk * 2 * d.n, U = std::min(M, R);
  size_t b = 0;
  b += (size_t)M * 4;            // entry rows
  b += (size_t)M * 4;            // entry gradients
  b += (size_t)row_index_counts_size(M, R) * 8;  // counts
  b += (size_t)(U + 1) * 4;      // unique rows
  b += (size_t)(U + 1) * 8;      // offsets
  b += (size_t)M * 8;            // positions
  b += (size_t)num_threads() * (size_t)d.H * d.k * 4 + 512;  // per-thread dscore of one token
  return b;
}

void pkm_topk_backward(const PkmDims& d, PkmAct act, const float* q, const float* keys, const int32_t* idx,
                       const float* scores, const float* weights, const float* dweights, float* dq, float* dkeys,
                       void* work) {
  const int64_t n = d.n, k = d.k, H = d.H, half = d.Dk / 2, HK = H * k;
  const int64_t M = 2 * d.T * H * k, R = d.Hk * 2 * n, U = std::min(M, R);
  char* p = static_cast<char*>(work);
  auto take = [&](size_t bytes) {
    char* r = p;
    p += (bytes + 63) / 64 * 64;
    return r;
  };
  // Entries: for position ((t·H + h)·2 + half)·k + m, the m-th distinct sub-key row of that (token, head, half)
  // and its merged gradient; unused positions hold row -1.
  int32_t* ent_row = (int32_t*)take((size_t)M * 4);
  float* ent_g = (float*)take((size_t)M * 4);
  int64_t* counts = (int64_t*)take((size_t)row_index_counts_size(M, R) * 8);
  int32_t* urows = (int32_t*)take((size_t)(U + 1) * 4);
  int64_t* offsets = (int64_t*)take((size_t)(U + 1) * 8);
  int64_t* pos = (int64_t*)take((size_t)M * 8);
  float* ds_all = (float*)take((size_t)num_threads() * HK * 4);

  const PkmRowKernels& kern = pkm_row_kernels();
  // Pass 1, one owner per token: dscore, merged sub-key entries, dq.
  parallel_for_dynamic(
      d.T,
      [&](int64_t b, int64_t e, int tid) {
        kern.pkm_bwd_tokens(b, e, d, (int)act, keys, idx, scores, weights, dweights, dq, ent_row, ent_g,
                            ds_all + (int64_t)tid * HK);
      },
      4);

  // Pass 2, one owner per sub-key row: dkeys[row] = Σ (in position order) g · q half.
  const int64_t nu = row_index_build(ent_row, M, R, counts, urows, offsets, pos);
  std::memset(dkeys, 0, (size_t)R * half * sizeof(float));
  parallel_for_dynamic(
      nu, [&](int64_t b, int64_t e, int) { kern.pkm_bwd_rows(b, e, d, q, urows, offsets, pos, ent_g, dkeys); }, 4);
}

}  // namespace sffn
