// Row kernels of the embedding bag and PEER, written once and compiled three times: by embedding_bag.cpp /
// peer.cpp for baseline x86-64 and by the *.avx2.cpp / *.avx512.cpp files with their ISA flags, so the compiler
// vectorises the same fixed-order loops for each ISA. Everything here is `static` (internal linkage): the linker
// can never merge an AVX-512 copy into the baseline build. Include only from those kernel files.
//
// Every loop reads whole rows of D floats (1 KiB at D = 256) chosen by an index list, so the kernels are bound
// by memory traffic; rows are prefetched kPrefetch positions ahead since all indices are known up front.
// Shapes: x, dout, out [T, D]; idx, w, g, h [T, J]; V, U [N, D]; row blocks [U, D]; pos/offsets from row_index.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace sffn {
namespace {

constexpr int64_t kPrefetch = 4;  // rows ahead

// Fixed-order dot product: 16 lane partial sums (one AVX-512 vector, two AVX2 or four SSE vectors), reduced
// pairwise. The order depends only on D, so results are deterministic for an ISA.
static inline float row_dot(const float* __restrict a, const float* __restrict b, int64_t D) {
  float acc[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 16 <= D; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i + l < D; ++l) acc[l] += a[i + l] * b[i + l];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// y += a · x
static inline void row_axpy(float* __restrict y, float a, const float* __restrict x, int64_t D) {
  for (int64_t i = 0; i < D; ++i) y[i] += a * x[i];
}

static inline void row_zero(float* y, int64_t D) {
  for (int64_t i = 0; i < D; ++i) y[i] = 0.0f;
}

static inline void prefetch_row(const float* r, int64_t D) {
  for (int64_t i = 0; i < D; i += 16) __builtin_prefetch(r + i, 0, 0);
}

// PEER activations (pkm.h PeerAct): 0 relu, 1 gelu (erf), 2 silu, 3 identity.
static inline float peer_act(int act, float h) {
  switch (act) {
    case 0: return h > 0 ? h : 0.0f;
    case 1: return 0.5f * h * (1.0f + ::erff(h * 0.70710678118654752f));
    case 2: return h / (1.0f + ::expf(-h));
    default: return h;
  }
}

static inline float peer_act_grad(int act, float h) {
  switch (act) {
    case 0: return h > 0 ? 1.0f : 0.0f;
    case 1: {
      const float cdf = 0.5f * (1.0f + ::erff(h * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * ::expf(-0.5f * h * h);
      return cdf + h * pdf;
    }
    case 2: {
      const float s = 1.0f / (1.0f + ::expf(-h));
      return s * (1.0f + h * (1.0f - s));
    }
    default: return 1.0f;
  }
}

// out[t] = Σ_j w[t, j] · V[idx[t, j]] for t in [t0, t1).
static inline void eb_forward_range(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* w,
                             const float* V, float* out) {
  const int64_t end = t1 * J;
  for (int64_t t = t0; t < t1; ++t) {
    float* o = out + t * D;
    row_zero(o, D);
    for (int64_t p = t * J; p < (t + 1) * J; ++p) {
      if (p + kPrefetch < end) prefetch_row(V + (int64_t)idx[p + kPrefetch] * D, D);
      row_axpy(o, w[p], V + (int64_t)idx[p] * D, D);
    }
  }
}

// dw[t, j] = ⟨dout[t], V[idx[t, j]]⟩ for t in [t0, t1).
static inline void eb_backward_dw_range(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* V,
                                 const float* dout, float* dw) {
  const int64_t end = t1 * J;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t p = t * J; p < (t + 1) * J; ++p) {
      if (p + kPrefetch < end) prefetch_row(V + (int64_t)idx[p + kPrefetch] * D, D);
      dw[p] = row_dot(dout + t * D, V + (int64_t)idx[p] * D, D);
    }
}

// out[u] = Σ_{o in [offsets[u], offsets[u+1])} coef[pos[o]] · src[pos[o] / J] for u in [u0, u1), summed in
// position order; optionally a second (coef2, src2) → out2 over the same index (PEER's dU and dV in one pass).
static inline void rows_accumulate_range(int64_t u0, int64_t u1, int64_t J, int64_t D, const int64_t* offsets,
                                  const int64_t* pos, const float* coef, const float* src, float* out,
                                  const float* coef2, const float* src2, float* out2) {
  const int64_t oend = offsets[u1];
  for (int64_t u = u0; u < u1; ++u) {
    float* o = out + u * D;
    row_zero(o, D);
    float* o2 = out2 ? out2 + u * D : nullptr;
    if (o2) row_zero(o2, D);
    for (int64_t q = offsets[u]; q < offsets[u + 1]; ++q) {
      if (q + kPrefetch < oend) {
        const int64_t pf = pos[q + kPrefetch] / J;
        prefetch_row(src + pf * D, D);
        if (o2) prefetch_row(src2 + pf * D, D);
      }
      const int64_t p = pos[q], t = p / J;
      row_axpy(o, coef[p], src + t * D, D);
      if (o2) row_axpy(o2, coef2[p], src2 + t * D, D);
    }
  }
}

// PEER forward for tokens [t0, t1): h[t, j] = U[i] · x[t]; out[t] = Σ_j g · act(h) · V[i].
static inline void peer_forward_range(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const float* x,
                               const int32_t* idx, const float* g, const float* U, const float* V, float* out,
                               float* h) {
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t* it = idx + t * J;
    const float* xt = x + t * D;
    float* ht = h + t * J;
    for (int64_t j = 0; j < J; ++j) {
      if (j + kPrefetch < J) prefetch_row(U + (int64_t)it[j + kPrefetch] * D, D);
      else if (j + kPrefetch - J < J) prefetch_row(V + (int64_t)it[j + kPrefetch - J] * D, D);
      ht[j] = row_dot(U + (int64_t)it[j] * D, xt, D);
    }
    float* o = out + t * D;
    row_zero(o, D);
    for (int64_t j = 0; j < J; ++j) {
      if (j + kPrefetch < J) prefetch_row(V + (int64_t)it[j + kPrefetch] * D, D);
      else if (t + 1 < t1 && j + kPrefetch - J < J) prefetch_row(U + (int64_t)it[J + j + kPrefetch - J] * D, D);
      row_axpy(o, g[t * J + j] * peer_act(act, ht[j]), V + (int64_t)it[j] * D, D);
    }
  }
}

// PEER backward, token part, for tokens [t0, t1): c = ⟨V[i], dout[t]⟩, dg = act(h) · c, dh = g · c · act'(h),
// dx[t] = Σ_j dh · U[i]; keeps dh and g · act(h) per position for the row part.
static inline void peer_backward_tokens_range(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const int32_t* idx,
                                       const float* g, const float* U, const float* V, const float* h,
                                       const float* dout, float* dx, float* dg, float* dh, float* gv) {
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t* it = idx + t * J;
    const float* dot = dout + t * D;
    for (int64_t j = 0; j < J; ++j) {
      if (j + kPrefetch < J) prefetch_row(V + (int64_t)it[j + kPrefetch] * D, D);
      else if (j + kPrefetch - J < J) prefetch_row(U + (int64_t)it[j + kPrefetch - J] * D, D);
      const int64_t p = t * J + j;
      const float c = row_dot(V + (int64_t)it[j] * D, dot, D);
      const float a = peer_act(act, h[p]);
      dg[p] = a * c;
      dh[p] = g[p] * c * peer_act_grad(act, h[p]);
      gv[p] = g[p] * a;
    }
    float* dxt = dx + t * D;
    row_zero(dxt, D);
    for (int64_t j = 0; j < J; ++j) {
      if (j + kPrefetch < J) prefetch_row(U + (int64_t)it[j + kPrefetch] * D, D);
      else if (t + 1 < t1 && j + kPrefetch - J < J) prefetch_row(V + (int64_t)it[J + j + kPrefetch - J] * D, D);
      row_axpy(dxt, dh[t * J + j], U + (int64_t)it[j] * D, D);
    }
  }
}

}  // namespace
}  // namespace sffn
