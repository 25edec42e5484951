// Causal self-attention with rotary positions on the CPU, FlashAttention-2 style (Dao 2023, Alg. 1 and 2).
//   Forward:  qr, kr = rope(q, k);  out_i = Σ_{j≤i} softmax_j(qr_i·kr_j/√dh) v_j;  L_i = log Σ_{j≤i} e^{s_ij}
//   Backward: P_ij = e^{s_ij − L_i} (recomputed);  Δ_i = dout_i·out_i;  dv_j = Σ_i P_ij dout_i;
//             dS_ij = P_ij (dout_i·v_j − Δ_i);  dq = rope⁻¹(dS·kr/√dh);  dk = rope⁻¹(dSᵀ·qr/√dh).
// Shapes: qkv [B·S, 3D], out [B·S, D], qr/kr [B, H, S, dh], L [B, H, S]; dh = D/H.
//
// No S×S matrix exists anywhere: scores and probabilities live only as one kBr×kBcFwd (backward: kBr×kBcBwd) block
// in the calling thread's scratch, and the forward saves O(S) per head (L) next to the rotated q and k. Memory per
// step is O(B·S·D), not O(B·H·S²) as with a saved probability matrix.
//
// Forward: for each query block i (kBr rows) the key blocks j at or below the diagonal are visited in increasing
// order with an online softmax: running row max m and sum l, the output rows (written in place in `out`) rescaled
// by e^{m_old − m_new} whenever the max grows; out_i /= l at the end. Key block 0 is visible to every row, so m is
// finite after the first block and later fully masked rows simply add nothing.
// Backward: each key block j owns its dk_j (a kBcBwd×dh scratch block) and dv_j (written in place in dqkv), and loops
// over the query blocks i that can see it; dq (S×dh scratch per item) is accumulated over j in increasing order.
//
// One work item per (sequence, head), split over the pool; every product is gemm_f32_rows on the calling thread
// (row-pointer tables, so q, k, v, out and dout are read in place from their strided buffers). The softmax rows use
// the helpers of attention_isa.h: a vector e^x on AVX2 / AVX-512 (with libm's expf per score the forward at S = 1024,
// D = 512, H = 8 took about 2× as long). Each item has one owner for all its outputs and a fixed order of every sum:
// deterministic and independent of the thread count.
// Spec: kernels/ref/attention.cpp. Test: test/ops/nn.test.ts. Benchmark: npm run bench -- attention.
#include <cmath>
#include <cstddef>

#include "attention_isa.h"
#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/nn.h"

namespace sffn {
namespace {

// Block sizes: kBr query rows × kBcFwd / kBcBwd keys. Multiples of every GEMM register tile width (NR = 64 / 16 / 8
// on AVX-512 / AVX2 / scalar), so the products with N = keys have no ragged tile column. Larger blocks repack less
// per flop but compute more above the diagonal; with dh = 64 a forward step's working set ((2·kBr + 2·kBcFwd)·dh +
// kBr·kBcFwd floats ≈ 130 KB) stays in L2. In the backward kBcBwd = kBr, so the first query block that sees key
// block j starts exactly at its first key (no rows above it are recomputed). Measured (bench shapes D = 512, H = 8,
// S = 128, 512, 1024 and D = 128, H = 4, S = 128; AVX-512, 1 thread, the candidates interleaved call by call, min
// times): forward 64×128 was best or within 2% of the best of {32, 48, 64, 96, 128} × {64, 128}; backward 64×64
// beat 96×128 by 2% at S = 1024 and by 13-18% at S = 128, and beat 66×64 / 72×64 (unaligned) by 4-20%.
constexpr int64_t kBr = 64;
constexpr int64_t kBcFwd = 128;
constexpr int64_t kBcBwd = kBr;

// cos/sin table [S, dh/2] in scratch slot 7 of the calling thread (its θ_m in slot 6), filled before the kernel's
// parallel region, whose threads use slots 0..1 only. Angles in double as in the ref (i·θ_m, θ_m = 10000^(−2m/dh));
// the rows are filled in parallel (S·dh/2 sincos calls on one thread were a few % of a whole forward).
float* rope_table(int64_t S, int64_t dh) {
  const int64_t half = dh / 2;
  float* tab = static_cast<float*>(scratch(0, 7, (size_t)(2 * S * half) * sizeof(float)));
  double* theta = static_cast<double*>(scratch(0, 6, (size_t)half * sizeof(double)));
  for (int64_t m = 0; m < half; m++) theta[m] = std::pow(10000.0, -2.0 * (double)m / (double)dh);
  parallel_for(
      S,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++)
          for (int64_t m = 0; m < half; m++) {
            const double a = (double)i * theta[m];
            tab[2 * (i * half + m)] = (float)std::cos(a);
            tab[2 * (i * half + m) + 1] = (float)std::sin(a);
          }
      },
      64);
  return tab;
}

// Rotates the interleaved pairs of one row by the row's angles (sign = −1: the inverse rotation, for gradients).
inline void rope_row(int64_t dh, const float* cs, const float* in, float* out, float sign) {
  for (int64_t m = 0; m < dh / 2; m++) {
    const float c = cs[2 * m], s = sign * cs[2 * m + 1];
    const float u = in[2 * m], w = in[2 * m + 1];
    out[2 * m] = u * c - w * s;
    out[2 * m + 1] = u * s + w * c;
  }
}

// Baseline softmax row helpers (attention_isa.h); the AVX2 / AVX-512 ones replace the libm exp by a vector one.
float row_max_scalar(const float* x, int64_t n, float init) {
  for (int64_t c = 0; c < n; c++) init = x[c] > init ? x[c] : init;
  return init;
}

float exp_sum_scalar(float* x, int64_t n, float shift) {
  float sum = 0.0f;
  for (int64_t c = 0; c < n; c++) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

AttnRowOps row_ops() {
#if defined(__x86_64__)
  // The ISA libraries exist only on x64 (binding.gyp); elsewhere active_isa() is always Scalar.
  switch (active_isa()) {
    case Isa::Avx512: return avx512::attn_row_ops();
    case Isa::Avx2: return avx2::attn_row_ops();
    default: break;
  }
#endif
  return AttnRowOps{row_max_scalar, exp_sum_scalar};
}

// Δ_i = dout_i·out_i = Σ_j P_ij dP_ij, the softmax backward's row term without an S-long row. Eight partial sums in
// a fixed order (the compiler keeps them in vector registers; one serial chain in double was ~7% of the backward).
inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    for (int u = 0; u < 8; u++) acc[u] += a[e + u] * b[e + u];
  for (int u = 0; e < n; e++, u++) acc[u] += a[e] * b[e];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Keys of block [j0, j0 + bj) visible to query q (causal: key ≤ query), clamped to [0, bj].
inline int64_t visible(int64_t q, int64_t j0, int64_t bj) {
  const int64_t n = q - j0 + 1;
  return n < 0 ? 0 : n > bj ? bj : n;
}

}  // namespace

void attention_forward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr, float* kr,
                       float* lse) {
  if (B == 0 || S == 0 || H == 0) return;
  const int64_t D = H * dh;
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  const float* tab = rope_table(S, dh);
  const AttnRowOps ops = row_ops();
  parallel_for(B * H, [&](int64_t w0, int64_t w1, int tid) {
    // Row-pointer tables: q, k, v and out rows of the item (S each), the score block's rows (kBr).
    float** ptr = static_cast<float**>(scratch(tid, 0, (size_t)(4 * S + kBr) * sizeof(float*)));
    const float** qrows = const_cast<const float**>(ptr);
    const float** krows = qrows + S;
    const float** vrows = qrows + 2 * S;
    float** orows = ptr + 3 * S;
    float** srows = ptr + 4 * S;
    // Score / probability block, then the running max and sum of each query row of the block.
    float* sblk = static_cast<float*>(scratch(tid, 1, (size_t)(kBr * kBcFwd + 2 * kBr) * sizeof(float)));
    float* mrow = sblk + kBr * kBcFwd;
    float* lrow = mrow + kBr;
    for (int64_t r = 0; r < kBr; r++) srows[r] = sblk + r * kBcFwd;
    for (int64_t wi = w0; wi < w1; wi++) {
      const int64_t b = wi / H, h = wi % H;
      float* Q = qr + wi * S * dh;
      float* K = kr + wi * S * dh;
      float* L = lse + wi * S;
      for (int64_t i = 0; i < S; i++) {
        const float* row = qkv + (b * S + i) * 3 * D;
        rope_row(dh, tab + i * dh, row + h * dh, Q + i * dh, 1.0f);
        rope_row(dh, tab + i * dh, row + D + h * dh, K + i * dh, 1.0f);
        qrows[i] = Q + i * dh;
        krows[i] = K + i * dh;
        vrows[i] = row + 2 * D + h * dh;
        orows[i] = out + (b * S + i) * D + h * dh;
      }
      for (int64_t i0 = 0; i0 < S; i0 += kBr) {
        const int64_t bi = S - i0 < kBr ? S - i0 : kBr;
        const int64_t nkeys = i0 + bi;  // keys 0 .. i0+bi−1 are visible to some row of the block
        for (int64_t r = 0; r < bi; r++) mrow[r] = -INFINITY, lrow[r] = 0.0f;
        for (int64_t j0 = 0; j0 < nkeys; j0 += kBcFwd) {
          const int64_t bj = nkeys - j0 < kBcFwd ? nkeys - j0 : kBcFwd;
          gemm_f32_rows(false, true, bi, bj, dh, scale, qrows + i0, krows + j0, 0.0f, srows);
          for (int64_t r = 0; r < bi; r++) {
            float* s = sblk + r * kBcFwd;
            const int64_t nv = visible(i0 + r, j0, bj);
            const float mx = ops.row_max(s, nv, mrow[r]);
            // e^{m_old − m_new}: 0 on the first block (m_old = −∞), 1 when the max did not grow.
            const float alpha = std::exp(mrow[r] - mx);
            const float sum = ops.exp_sum(s, nv, mx);
            for (int64_t c = nv; c < bj; c++) s[c] = 0.0f;
            lrow[r] = lrow[r] * alpha + sum;
            mrow[r] = mx;
            // The first block overwrites the output rows (beta = 0 below), so there is nothing to rescale yet.
            if (j0 > 0 && alpha != 1.0f)
              for (int64_t e = 0; e < dh; e++) orows[i0 + r][e] *= alpha;
          }
          gemm_f32_rows(false, false, bi, dh, bj, 1.0f, srows, vrows + j0, j0 == 0 ? 0.0f : 1.0f,
                        orows + i0);
        }
        for (int64_t r = 0; r < bi; r++) {
          const float inv = 1.0f / lrow[r];
          for (int64_t e = 0; e < dh; e++) orows[i0 + r][e] *= inv;
          L[i0 + r] = mrow[r] + std::log(lrow[r]);
        }
      }
    }
  });
}

void attention_backward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                        const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv) {
  if (B == 0 || S == 0 || H == 0) return;
  const int64_t D = H * dh;
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  const float* tab = rope_table(S, dh);
  const AttnRowOps ops = row_ops();
  parallel_for(B * H, [&](int64_t w0, int64_t w1, int tid) {
    // Row-pointer tables: qr, kr, v, dout rows (S each, read), dv rows in dqkv and dq rows in scratch (S each,
    // written), the P and dS block rows (kBr each), the dk block rows (kBcBwd).
    float** ptr = static_cast<float**>(scratch(tid, 0, (size_t)(6 * S + 2 * kBr + kBcBwd) * sizeof(float*)));
    const float** qrows = const_cast<const float**>(ptr);
    const float** krows = qrows + S;
    const float** vrows = qrows + 2 * S;
    const float** dorows = qrows + 3 * S;
    float** dvrows = ptr + 4 * S;
    float** dqrows = ptr + 5 * S;
    float** prows = ptr + 6 * S;
    float** dsrows = prows + kBr;
    float** dkrows = dsrows + kBr;
    // P and dS blocks, the dk block, then Δ [S] and dq [S, dh] of the item.
    const int64_t nwork = 2 * kBr * kBcBwd + kBcBwd * dh + S + S * dh;
    float* work = static_cast<float*>(scratch(tid, 1, (size_t)nwork * sizeof(float)));
    float* pblk = work;
    float* dsblk = pblk + kBr * kBcBwd;
    float* dK = dsblk + kBr * kBcBwd;
    float* delta = dK + kBcBwd * dh;
    float* dQ = delta + S;
    for (int64_t r = 0; r < kBr; r++) prows[r] = pblk + r * kBcBwd, dsrows[r] = dsblk + r * kBcBwd;
    for (int64_t c = 0; c < kBcBwd; c++) dkrows[c] = dK + c * dh;
    for (int64_t wi = w0; wi < w1; wi++) {
      const int64_t b = wi / H, h = wi % H;
      const float* Q = qr + wi * S * dh;
      const float* K = kr + wi * S * dh;
      const float* L = lse + wi * S;
      for (int64_t i = 0; i < S; i++) {
        const float* dor = dout + (b * S + i) * D + h * dh;
        const float* o = out + (b * S + i) * D + h * dh;
        qrows[i] = Q + i * dh;
        krows[i] = K + i * dh;
        vrows[i] = qkv + (b * S + i) * 3 * D + 2 * D + h * dh;
        dorows[i] = dor;
        dvrows[i] = dqkv + (b * S + i) * 3 * D + 2 * D + h * dh;
        dqrows[i] = dQ + i * dh;
        delta[i] = dot_f32(dor, o, dh);
      }
      for (int64_t j0 = 0; j0 < S; j0 += kBcBwd) {
        const int64_t bj = S - j0 < kBcBwd ? S - j0 : kBcBwd;
        // Query blocks with a row ≥ j0: the first one contains row j0.
        const int64_t ifirst = j0 / kBr * kBr;
        for (int64_t i0 = ifirst; i0 < S; i0 += kBr) {
          const int64_t bi = S - i0 < kBr ? S - i0 : kBr;
          const float first = i0 == ifirst ? 0.0f : 1.0f;  // beta: the first query block overwrites dv_j, dk_j
          gemm_f32_rows(false, true, bi, bj, dh, scale, qrows + i0, krows + j0, 0.0f, prows);
          for (int64_t r = 0; r < bi; r++) {
            float* p = pblk + r * kBcBwd;
            const int64_t nv = visible(i0 + r, j0, bj);
            const float l = L[i0 + r];
            ops.exp_sum(p, nv, l);
            for (int64_t c = nv; c < bj; c++) p[c] = 0.0f;
          }
          // dv_j (+)= Pᵀ·dout_i
          gemm_f32_rows(true, false, bj, dh, bi, 1.0f, prows, dorows + i0, first, dvrows + j0);
          // dP = dout_i·v_jᵀ, then dS = P ⊙ (dP − Δ) in place (masked entries have P = 0).
          gemm_f32_rows(false, true, bi, bj, dh, 1.0f, dorows + i0, vrows + j0, 0.0f, dsrows);
          for (int64_t r = 0; r < bi; r++) {
            const float* p = pblk + r * kBcBwd;
            float* ds = dsblk + r * kBcBwd;
            const float dl = delta[i0 + r];
            for (int64_t c = 0; c < bj; c++) ds[c] = p[c] * (ds[c] - dl);
          }
          // dk_j (+)= dSᵀ·qr_i/√dh;  dq_i (+)= dS·kr_j/√dh (key block 0 is the first to reach every dq_i).
          gemm_f32_rows(true, false, bj, dh, bi, scale, dsrows, qrows + i0, first, dkrows);
          gemm_f32_rows(false, false, bi, dh, bj, scale, dsrows, krows + j0,
                        j0 == 0 ? 0.0f : 1.0f, dqrows + i0);
        }
        for (int64_t c = 0; c < bj; c++)
          rope_row(dh, tab + (j0 + c) * dh, dK + c * dh, dqkv + (b * S + j0 + c) * 3 * D + D + h * dh, -1.0f);
      }
      for (int64_t i = 0; i < S; i++)
        rope_row(dh, tab + i * dh, dQ + i * dh, dqkv + (b * S + i) * 3 * D + h * dh, -1.0f);
    }
  });
}

}  // namespace sffn
