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
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "pkm_isa.h"
#include "sffn/pkm.h"

namespace sffn {
namespace {

// Rows ahead. Measured side by side (PEER D = 256, J = 128, N = 1024², T = 4096, 2 threads, AVX-512 EPYC VM,
// variants interleaved in one process, medians of 9-15 calls) the distance is not the limit: forward 4 / 8 / 16 /
// 32 rows within ±5% of each other with no order stable across runs (32 +4% in the longest run), prefetcht1 /
// prefetchnta within ±2%, prefetching only every 2nd or 4th line (leaving the rest to the hardware prefetchers)
// 13-15% slower; the backward dx pass is best at 8 (4: +25%, 16: +4%, 32: +20%), and the row pass's V row 1 / 4 /
// 8 / 12 / 16 rows ahead and its x / dout hints were all within ±2%. The kernels are bound per core by
// outstanding misses (measured before the constant-width kernels below): one thread takes 85 ms where two take
// 43 ms, ~13 GB/s per core for random 1 KiB rows over the 2 GiB of U and V.
constexpr int64_t kPrefetch = 8;

// Calls f with the row width as a compile-time constant (std::integral_constant) for the common widths and as a
// plain int64_t otherwise. With D known, the row loops (dot, axpy, prefetch, zero, stream) unroll fully and lose
// their trip-count and remainder logic; measured on the PEER forward (D = 256, J = 128, N = 1024², T = 4096,
// AVX-512 EPYC VM, same process, same buffers): 35 vs 50 ms on 2 threads, 43 vs 58-64 ms on 1 thread. The
// arithmetic and its order are the same either way, so results are bit-identical.
template <class F>
static inline void with_row_width(int64_t D, F&& f) {
  switch (D) {
    case 64: f(std::integral_constant<int64_t, 64>{}); return;
    case 128: f(std::integral_constant<int64_t, 128>{}); return;
    case 256: f(std::integral_constant<int64_t, 256>{}); return;
    case 512: f(std::integral_constant<int64_t, 512>{}); return;
    case 1024: f(std::integral_constant<int64_t, 1024>{}); return;
    default: f(D);
  }
}

// The sum of 16 lane sums in pairwise order: a[l] += a[l + w] for w = 8, 4, 2, 1, then a[0], done in vector
// registers (the same additions, so the same bits, as that loop). Written as the loop over a float[16], GCC 12
// kept the lanes on the stack and walked them with a dozen branches and reloads per call: once per table row in
// the PEER forward, once per hit in the row passes. Replacing it made the forward 1.04x and the backward's row pass
// 1.06x faster (C++ harness, 160 paired calls; 1.08x and 1.13x while the copy probe read 50-64 GB/s).
static inline float sum16_pairwise(const float (&a)[16]) {
#if defined(__AVX512F__)
  const __m512 v = _mm512_loadu_ps(a);
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
#elif defined(__AVX__)
  const __m256 s8 = _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(a + 8));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
#elif defined(__SSE2__)
  const __m128 s4 = _mm_add_ps(_mm_add_ps(_mm_loadu_ps(a), _mm_loadu_ps(a + 8)),
                               _mm_add_ps(_mm_loadu_ps(a + 4), _mm_loadu_ps(a + 12)));
#endif
#if defined(__SSE2__)
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));  // lanes 0, 1: a[0] + a[2], a[1] + a[3] (of s4)
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
#else
  float t[16];
  std::memcpy(t, a, sizeof t);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) t[l] += t[l + w];
  return t[0];
#endif
}

// Fixed-order dot product: 16 lane partial sums (one AVX-512 vector, two AVX2 or four SSE vectors), reduced
// pairwise. The order depends only on D, so results are deterministic for an ISA.
static inline float row_dot(const float* __restrict a, const float* __restrict b, int64_t D) {
  float acc[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 16 <= D; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i + l < D; ++l) acc[l] += a[i + l] * b[i + l];
  return sum16_pairwise(acc);
}

// y += a · x
static inline void row_axpy(float* __restrict y, float a, const float* __restrict x, int64_t D) {
  for (int64_t i = 0; i < D; ++i) y[i] += a * x[i];
}

static inline void row_zero(float* y, int64_t D) {
  for (int64_t i = 0; i < D; ++i) y[i] = 0.0f;
}

// Orders the non-temporal stores before the results are handed to other threads.
static inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Always inlined: GCC 12 finds a function whose only effect is __builtin_prefetch free of side effects and deletes
// the calls to it that it does not inline, prefetches and all (a helper that prefetched a row into L2 and another
// into L1 lost both that way; see also the lambdas below).
static inline __attribute__((always_inline)) void prefetch_row(const float* r, int64_t D) {
  for (int64_t i = 0; i < D; i += 16) __builtin_prefetch(r + i, 0, 3);
}

// t = p / J, the token of position p, by a multiply-high instead of a 64-bit division (~3 per hit in the row
// passes, ~10% of the PEER row pass when divided): with m = ⌈2^64 / J⌉, ⌊m·p / 2^64⌋ = ⌊p / J⌋ for every
// p < 2^32 and 2 <= J <= 2^32 (Lemire, Kaser & Kurz 2019, "Faster remainder by direct computation", Thm. 1).
// Larger positions and J = 1 take the division.
struct TokenOf {
  int64_t J;
  uint64_t m;  // 0: divide
  explicit TokenOf(int64_t J) : J(J), m(J > 1 ? ~uint64_t(0) / (uint64_t)J + 1 : 0) {}
  int64_t operator()(int64_t p) const {
    if (m == 0 || ((uint64_t)p >> 32) != 0) return p / J;
    return (int64_t)(((unsigned __int128)m * (uint64_t)p) >> 64);
  }
};

// One vector register of floats for the ISA this copy is compiled for (GCC vector extension: +, * and the scalar
// broadcast in `a * v` compile to the ISA's vector instructions).
#if defined(__AVX512F__)
constexpr int kVecW = 16;
#elif defined(__AVX__)
constexpr int kVecW = 8;
#else
constexpr int kVecW = 4;
#endif
typedef float vecf __attribute__((vector_size(kVecW * sizeof(float))));

static inline vecf vec_load(const float* p) {
  vecf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Non-temporal store of one vector where the ISA has one and p is aligned to the vector, a plain store otherwise:
// gradient rows are written once and not read again by these kernels, so skipping the read-for-ownership saves a
// third of the traffic of a row pass. Callers end with stream_fence().
static inline void vec_stream(float* p, vecf v) {
#if defined(__AVX512F__)
  if (((uintptr_t)p & 63) == 0) return _mm512_stream_ps(p, v);
#elif defined(__AVX__)
  if (((uintptr_t)p & 31) == 0) return _mm256_stream_ps(p, v);
#elif defined(__SSE2__)
  if (((uintptr_t)p & 15) == 0) return _mm_stream_ps(p, v);
#endif
  std::memcpy(p, &v, sizeof v);
}

// Token-centric row loops (PEER forward, embedding-bag forward, PEER dx) walk one token's J rows and either dot
// each with the token's row or sum them with a weight each. With D a compile-time width (a multiple of 16) the
// token's row lives in registers for the whole walk, in column blocks of kRegRowVecs vectors (half the vector
// register file): the dot products load x once, not once per row (one block only: D <= 256 with AVX-512, D <= 64
// with AVX2), and the weighted sum keeps its running sums in registers instead of loading and storing an L1 row
// per table row (any number of blocks: the first pass over the rows prefetches them and reads them from memory,
// the others from L2, so it is used while the walk's rows fit in kRegBlockBytes, a quarter of this L2). Same FMAs
// in the same order as row_dot / row_axpy, so bit-identical. Measured on the PEER forward (J = 128, N = 1024²,
// T = 4096, 2 threads, AVX-512 EPYC VM, C++ harness, variants interleaved): at D = 256 1.22× faster with both,
// 1.12-1.17× with the sums alone, an L1 row updated once per 4 or 8 rows 1.00-1.07×; at D = 512 (two blocks)
// 1.07-1.13×. At D = 1024 (512 KiB of rows per token) the blocks gained nothing measurable in Node.
#if defined(__AVX512F__)
constexpr int64_t kRegRowVecs = 16;
#else
constexpr int64_t kRegRowVecs = 8;
#endif
constexpr int64_t kRegBlockBytes = 256 << 10;

// Column blocks of kRegRowVecs vectors (one narrower block when D fits in one) a row of width Dim is held in; 0
// where it is not held in registers: a runtime width, D not a multiple of 16 or of the block, or several blocks
// of SSE vectors (the baseline build's embedding-bag forward ran 2× slower with 8 blocks at D = 256).
template <class Dim>
static constexpr int64_t register_blocks() {
  if constexpr (std::is_integral_v<Dim>) {
    return 0;
  } else {
    constexpr int64_t nv = Dim::value / kVecW;
    if (Dim::value % 16 != 0) return 0;
    if (nv <= kRegRowVecs) return 1;
    return kVecW >= 8 && nv % kRegRowVecs == 0 ? nv / kRegRowVecs : 0;
  }
}

// Both helpers take row(j), the table row of step j, and ahead(j), the row to prefetch before step j (nullptr for
// none). ahead returns a pointer rather than prefetching itself: GCC 12 finds a lambda whose only effect is
// __builtin_prefetch free of side effects and deletes the calls to it, prefetches and all.

// h[j] = ⟨row(j), x⟩ for j in [j0, j1), in row_dot's order (16 lane sums, reduced pairwise).
template <class Dim, class Row, class Ahead>
static inline void rows_dot(Dim D, int64_t j0, int64_t j1, const Row& row, const Ahead& ahead, const float* x,
                            float* h) {
  if constexpr (register_blocks<Dim>() == 1) {
    constexpr int NV = (int)(Dim::value / kVecW), L = 16 / kVecW;  // L vectors hold the 16 lane sums
    vecf xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = vec_load(x + v * kVecW);
    for (int64_t j = j0; j < j1; ++j) {
      if (const float* pf = ahead(j)) prefetch_row(pf, D);
      const float* r = row(j);
      vecf acc[L] = {};
      for (int v = 0; v < NV; ++v) acc[v % L] += vec_load(r + v * kVecW) * xv[v];
      float a[16];
      std::memcpy(a, acc, sizeof a);
      h[j] = sum16_pairwise(a);
    }
  } else {
    for (int64_t j = j0; j < j1; ++j) {
      if (const float* pf = ahead(j)) prefetch_row(pf, D);
      h[j] = row_dot(row(j), x, D);
    }
  }
}

// out = Σ_{j ∈ [j0, j1)} coef(j) · row(j), every column summed in j order, starting from out's values when
// `accumulate` and from zero otherwise.
template <class Dim, class Row, class Coef, class Ahead>
static inline void weighted_row_sum(Dim D, int64_t j0, int64_t j1, const Row& row, const Coef& coef,
                                    const Ahead& ahead, float* out, bool accumulate) {
  constexpr int64_t B = register_blocks<Dim>();
  if constexpr (B > 0) {
    if (B == 1 || (j1 - j0) * Dim::value * (int64_t)sizeof(float) <= kRegBlockBytes) {
      constexpr int NV = (int)(B == 1 ? Dim::value / kVecW : kRegRowVecs);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t c0 = b * NV * kVecW;
        vecf acc[NV] = {};
        if (accumulate)
          for (int v = 0; v < NV; ++v) acc[v] = vec_load(out + c0 + v * kVecW);
        for (int64_t j = j0; j < j1; ++j) {
          if (b == 0)
            if (const float* pf = ahead(j)) prefetch_row(pf, D);
          const float* r = row(j) + c0;
          const float c = coef(j);
          for (int v = 0; v < NV; ++v) acc[v] += c * vec_load(r + v * kVecW);
        }
        for (int v = 0; v < NV; ++v) std::memcpy(out + c0 + v * kVecW, &acc[v], sizeof(vecf));
      }
      return;
    }
  }
  if (!accumulate) row_zero(out, D);
  for (int64_t j = j0; j < j1; ++j) {
    if (const float* pf = ahead(j)) prefetch_row(pf, D);
    row_axpy(out, coef(j), row(j), D);
  }
}

// The gradient row of one unique table row from its hits q in [q0, q1) of a reverse index (p = pos[q], token
// t = tok(p)), streamed out once: out_k[c] = Σ_q coef(p, k) · src_k[t·D + c] for k < K, summed in q order for
// every column c. The sums live in registers, kSumVecs vectors per output at a time, and each column block is
// streamed out as soon as it is complete; the hits' source rows are read once per block, so the caller has them
// in cache (its first pass over the hits touched or prefetched them). An L1 accumulator row instead (zeroed,
// updated with an axpy per hit, then streamed) costs a store per vector per hit, and those stores queue behind
// the non-temporal ones: the PEER row pass took 1.5× as long (47 vs 31 ms at D = 256, J = 128, N = 1024²,
// T = 4096, 2 threads, AVX-512 EPYC VM, C++ harness). Same arithmetic in the same order, bit-identical.
constexpr int kSumVecs = 4;

template <int K, class Dim, class Coef>
static inline void stream_row_sums(Dim D, const TokenOf& tok, const int64_t* pos, int64_t q0, int64_t q1,
                                   const Coef& coef, const float* const (&src)[K], float* const (&out)[K]) {
  int64_t c0 = 0;
  auto block = [&](auto nv) {  // columns [c0, c0 + nv·kVecW)
    constexpr int NV = decltype(nv)::value;
    vecf acc[K][NV] = {};
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t p = pos[q], r = tok(p) * D + c0;
      for (int k = 0; k < K; ++k) {
        const float a = coef(p, k);
        for (int v = 0; v < NV; ++v) acc[k][v] += a * vec_load(src[k] + r + v * kVecW);
      }
    }
    for (int k = 0; k < K; ++k)
      for (int v = 0; v < NV; ++v) vec_stream(out[k] + c0 + v * kVecW, acc[k][v]);
  };
  for (; c0 + kSumVecs * kVecW <= D; c0 += kSumVecs * kVecW) block(std::integral_constant<int, kSumVecs>());
  for (; c0 + kVecW <= D; c0 += kVecW) block(std::integral_constant<int, 1>());
  for (; c0 < D; ++c0) {
    float acc[K] = {};
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t p = pos[q], r = tok(p) * D + c0;
      for (int k = 0; k < K; ++k) acc[k] += coef(p, k) * src[k][r];
    }
    for (int k = 0; k < K; ++k) out[k][c0] = acc[k];
  }
}

// Branch-free exp and erf over plain float arithmetic, so the activation loops vectorise (no libm calls):
//   exp: x = n·ln2 + r with |r| <= ln2/2 (n rounded with the 1.5·2^23 trick), e^r by its degree-6 Taylor
//        polynomial, 2^n from the exponent bits (relative error ~2e-7);  erf: Abramowitz & Stegun 7.1.26
//        (absolute error <= 1.5e-7). The float64 references use std::exp / std::erf.
static inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = ((int32_t)n + 127) << 23;
  return p * scale.f;
}

static inline float fast_erff(float x) {
  const float ax = x < 0 ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * fast_expf(-ax * ax);
  return x < 0 ? -y : y;
}

// PEER activations (pkm.h PeerAct): 0 relu, 1 gelu (erf), 2 silu, 3 identity.
static inline float peer_act(int act, float h) {
  switch (act) {
    case 0: return h > 0 ? h : 0.0f;
    case 1: return 0.5f * h * (1.0f + fast_erff(h * 0.70710678118654752f));
    case 2: return h / (1.0f + fast_expf(-h));
    default: return h;
  }
}

static inline float peer_act_grad(int act, float h) {
  switch (act) {
    case 0: return h > 0 ? 1.0f : 0.0f;
    case 1: {
      const float cdf = 0.5f * (1.0f + fast_erff(h * 0.70710678118654752f));
      return cdf + h * 0.39894228040143268f * fast_expf(-0.5f * h * h);
    }
    case 2: {
      const float s = 1.0f / (1.0f + fast_expf(-h));
      return s * (1.0f + h * (1.0f - s));
    }
    default: return 1.0f;
  }
}

// a[i] = act(h[i]) (and ag[i] = act'(h[i]) when ag is given), with the switch outside the loops so they vectorise.
static inline void peer_act_rows(int act, const float* __restrict h, float* __restrict a, float* __restrict ag,
                                 int64_t n) {
  switch (act) {
    case 0:
      for (int64_t i = 0; i < n; ++i) a[i] = peer_act(0, h[i]);
      if (ag) for (int64_t i = 0; i < n; ++i) ag[i] = peer_act_grad(0, h[i]);
      break;
    case 1:
      for (int64_t i = 0; i < n; ++i) a[i] = peer_act(1, h[i]);
      if (ag) for (int64_t i = 0; i < n; ++i) ag[i] = peer_act_grad(1, h[i]);
      break;
    case 2:
      for (int64_t i = 0; i < n; ++i) a[i] = peer_act(2, h[i]);
      if (ag) for (int64_t i = 0; i < n; ++i) ag[i] = peer_act_grad(2, h[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) a[i] = h[i];
      if (ag) for (int64_t i = 0; i < n; ++i) ag[i] = 1.0f;
  }
}

// out[t] = Σ_j w[t, j] · V[idx[t, j]] for t in [t0, t1).
template <class Dim>
static inline void eb_forward_range_d(int64_t t0, int64_t t1, int64_t J, Dim D, const int32_t* idx, const float* w,
                             const float* V, float* out) {
  const int64_t end = t1 * J;
  for (int64_t t = t0; t < t1; ++t)
    weighted_row_sum(
        D, t * J, (t + 1) * J, [&](int64_t p) { return V + (int64_t)idx[p] * D; }, [&](int64_t p) { return w[p]; },
        [&](int64_t p) { return p + kPrefetch < end ? V + (int64_t)idx[p + kPrefetch] * D : nullptr; }, out + t * D,
        false);
}

// Row-centric backward passes: one owner per unique table row reads that row ONCE and serves all positions that
// selected it (the per-position reads of a token-centric pass would fetch it again for every hit), writing the
// per-position results (dw / dg, dh; each position has exactly one row, so no conflicts) and streaming out the
// row's gradient. Any row width: the gradient sums live in registers a column block at a time (stream_row_sums).

// Unique rows ahead of the one being served whose table row is prefetched. PEER row pass at D = 256, J = 128,
// N = 1024², T = 4096 (2 threads, AVX-512 EPYC VM, C++ harness, variants interleaved): 1 / 2 / 4 / 8 rows ahead
// 38.0 / 35.8 / 35.2 / 37.2 ms.
constexpr int64_t kRowsAhead = 4;

// Embedding bag: dw[p] = ⟨dout[p / J], V[row]⟩ and dV[u] = Σ_p w[p] · dout[p / J] for unique rows [u0, u1).
static void eb_backward_rows_range(int64_t u0, int64_t u1, int64_t J, int64_t D, const int32_t* rows,
                                   const int64_t* offsets, const int64_t* pos, const float* w, const float* V,
                                   const float* dout, float* dw, float* dV) {
  const int64_t oend = offsets[u1];
  const TokenOf tok(J);
  for (int64_t u = u0; u < u1; ++u) {
    if (u + kRowsAhead < u1) prefetch_row(V + (int64_t)rows[u + kRowsAhead] * D, D);
    const float* vr = V + (int64_t)rows[u] * D;
    const int64_t q0 = offsets[u], q1 = offsets[u + 1];
    for (int64_t q = q0; q < q1; ++q) {
      if (q + kPrefetch < oend) {
        // Positions of a row are scattered over tokens: fetch the weight and dw entries ahead too.
        const int64_t pf = pos[q + kPrefetch];
        prefetch_row(dout + tok(pf) * D, D);
        __builtin_prefetch(w + pf, 0, 3);
        __builtin_prefetch(dw + pf, 1, 3);
      }
      const int64_t p = pos[q];
      dw[p] = row_dot(dout + tok(p) * D, vr, D);
    }
    stream_row_sums<1>(D, tok, pos, q0, q1, [&](int64_t p, int) { return w[p]; }, {dout}, {dV + u * D});
  }
  stream_fence();
}

// PEER: for unique rows [u0, u1) with c = ⟨V[row], dout[t]⟩: dg[p] = act(h)·c, dh[p] = g·c·act'(h),
// dU[u] = Σ_p dh[p]·x[t], dV[u] = Σ_p g·act(h)·dout[t]  (t = p / J).
// av, ag: act(h) and act'(h) per position (peer_act_rows in token order beforehand).
static void peer_backward_rows_range(int64_t u0, int64_t u1, int64_t J, int64_t D, const int32_t* rows,
                                     const int64_t* offsets, const int64_t* pos, const float* g, const float* av,
                                     const float* ag, const float* V, const float* x, const float* dout, float* dg,
                                     float* dh, float* dU, float* dV) {
  const int64_t oend = offsets[u1];
  const TokenOf tok(J);
  for (int64_t u = u0; u < u1; ++u) {
    if (u + kRowsAhead < u1) prefetch_row(V + (int64_t)rows[u + kRowsAhead] * D, D);
    const float* vr = V + (int64_t)rows[u] * D;
    const int64_t q0 = offsets[u], q1 = offsets[u + 1];
    for (int64_t q = q0; q < q1; ++q) {
      if (q + kPrefetch < oend) {
        const int64_t pf = pos[q + kPrefetch], tf = tok(pf);
        prefetch_row(dout + tf * D, D);
        prefetch_row(x + tf * D, D);
        __builtin_prefetch(g + pf, 0, 3);
        __builtin_prefetch(av + pf, 0, 3);
        __builtin_prefetch(ag + pf, 0, 3);
        __builtin_prefetch(dg + pf, 1, 3);
        __builtin_prefetch(dh + pf, 1, 3);
      }
      const int64_t p = pos[q];
      const float c = row_dot(vr, dout + tok(p) * D, D);
      dg[p] = av[p] * c;
      dh[p] = g[p] * c * ag[p];
    }
    stream_row_sums<2>(D, tok, pos, q0, q1, [&](int64_t p, int k) { return k == 0 ? dh[p] : g[p] * av[p]; },
                       {x, dout}, {dU + u * D, dV + u * D});
  }
  stream_fence();
}

// PEER: dx[t] = Σ_j dh[t, j] · U[idx[t, j]] for tokens [t0, t1).
template <class Dim>
static inline void peer_backward_dx_range_d(int64_t t0, int64_t t1, int64_t J, Dim D, const int32_t* idx,
                                          const float* U, const float* dh, float* dx) {
  const int64_t end = t1 * J;
  for (int64_t t = t0; t < t1; ++t)
    weighted_row_sum(
        D, t * J, (t + 1) * J, [&](int64_t p) { return U + (int64_t)idx[p] * D; }, [&](int64_t p) { return dh[p]; },
        [&](int64_t p) { return p + kPrefetch < end ? U + (int64_t)idx[p + kPrefetch] * D : nullptr; }, dx + t * D,
        false);
}

// PEER forward for tokens [t0, t1): h[t, j] = U[i] · x[t]; out[t] = Σ_j g · act(h) · V[i].
template <class Dim>
static inline void peer_forward_range_d(int64_t t0, int64_t t1, int64_t J, Dim D, int act, const float* x,
                               const int32_t* idx, const float* g, const float* U, const float* V, float* out,
                               float* h) {
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t* it = idx + t * J;
    float* ht = h + t * J;
    // h: the U rows, prefetching the first V rows at the end.
    rows_dot(
        D, 0, J, [&](int64_t j) { return U + (int64_t)it[j] * D; },
        [&](int64_t j) -> const float* {
          if (j + kPrefetch < J) return U + (int64_t)it[j + kPrefetch] * D;
          if (j + kPrefetch - J < J) return V + (int64_t)it[j + kPrefetch - J] * D;
          return nullptr;
        },
        x + t * D, ht);
    // out: the V rows weighted by g · act(h), 256 coefficients at a time, prefetching the next token's U rows at
    // the end (it[j] for j >= J is the next token's).
    alignas(64) float coef[256];
    int64_t j0 = 0;
    do {
      const int64_t w = J - j0 < 256 ? J - j0 : 256;
      peer_act_rows(act, ht + j0, coef, nullptr, w);
      for (int64_t i = 0; i < w; ++i) coef[i] *= g[t * J + j0 + i];
      weighted_row_sum(
          D, j0, j0 + w, [&](int64_t j) { return V + (int64_t)it[j] * D; }, [&](int64_t j) { return coef[j - j0]; },
          [&](int64_t j) -> const float* {
            if (j + kPrefetch < J) return V + (int64_t)it[j + kPrefetch] * D;
            if (t + 1 < t1 && j + kPrefetch - J < J) return U + (int64_t)it[j + kPrefetch] * D;
            return nullptr;
          },
          out + t * D, j0 > 0);
      j0 += 256;
    } while (j0 < J);
  }
}

// Entry points with the row width D as a compile-time constant for the common widths (see with_row_width). The
// two row-centric backward passes above are not specialised: with their old L1 accumulator rows a constant D made
// them slower (PEER backward 0.90×, embedding-bag backward 0.85×), and with the sums in registers it makes no
// difference we can measure (PEER row pass 30.3 vs 31.5 ms, C++ harness, within the noise).
static void eb_forward_range(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* w,
                             const float* V, float* out) {
  with_row_width(D, [&](auto d) { eb_forward_range_d(t0, t1, J, d, idx, w, V, out); });
}

static void peer_backward_dx_range(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* U,
                                   const float* dh, float* dx) {
  with_row_width(D, [&](auto d) { peer_backward_dx_range_d(t0, t1, J, d, idx, U, dh, dx); });
}

static void peer_forward_range(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const float* x,
                               const int32_t* idx, const float* g, const float* U, const float* V, float* out,
                               float* h) {
  with_row_width(D, [&](auto d) { peer_forward_range_d(t0, t1, J, d, act, x, idx, g, U, V, out, h); });
}

// ---- product-key top-k ---------------------------------------------------------------------------------------

// Bit l set when s[l] > thr, for 16 scores.
static inline unsigned block16_gt(const float* s, float thr) {
#if defined(__AVX512F__)
  return (unsigned)_mm512_cmp_ps_mask(_mm512_loadu_ps(s), _mm512_set1_ps(thr), _CMP_GT_OQ);
#elif defined(__AVX__)
  const __m256 t = _mm256_set1_ps(thr);
  return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s), t, _CMP_GT_OQ)) |
         ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + 8), t, _CMP_GT_OQ)) << 8);
#elif defined(__SSE2__)
  const __m128 t = _mm_set1_ps(thr);
  unsigned m = 0;
  for (int i = 0; i < 4; ++i) m |= (unsigned)_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(s + 4 * i), t)) << (4 * i);
  return m;
#else
  unsigned m = 0;
  for (int l = 0; l < 16; ++l) m |= (unsigned)(s[l] > thr) << l;
  return m;
#endif
}

#if defined(__AVX512F__)
// AVX-512 top-k for k <= 32: the sorted list lives in two zmm registers (values) and two (indices); inserting x
// is a compare (the entries smaller than x, a suffix of the list), a one-lane shift of that suffix and a masked
// write of x at its head: no data-dependent branch per insertion (the scalar insertion loop mispredicts on its
// exit for each of the ~k·ln(n/k) insertions). New scores come in index order and move only entries strictly
// smaller, so equal values keep the lower index first, as in the scalar version.
static inline void topk_half_avx512_32(const float* __restrict s, int64_t n, int64_t k, float* __restrict v,
                                       int32_t* __restrict ix) {
  __m512 v0 = _mm512_set1_ps(0.0f), v1 = v0;
  __m512i i0 = _mm512_setzero_si512(), i1 = i0;
  uint32_t valid = 0;  // lanes holding an entry (a prefix)
  const uint32_t full = k >= 32 ? 0xffffffffu : ((1u << k) - 1);
  const __m512i last = _mm512_set1_epi32((int)((k - 1) & 15));
  float thr = 0.0f;
  auto insert = [&](float x, int32_t a) {
    const __m512 xv = _mm512_set1_ps(x);
    const uint32_t lt = (uint32_t)_mm512_cmp_ps_mask(v0, xv, _CMP_LT_OQ) |
                        ((uint32_t)_mm512_cmp_ps_mask(v1, xv, _CMP_LT_OQ) << 16);
    const uint32_t m = (lt | ~valid) & full;  // entries that move right (a suffix of the first k lanes)
    if (!m) return;                           // list full and x not larger than the k-th best
    const uint32_t head = m & (0u - m);       // where x goes
    const __m512i sv0 = _mm512_alignr_epi32(_mm512_castps_si512(v0), _mm512_setzero_si512(), 15);
    const __m512i sv1 = _mm512_alignr_epi32(_mm512_castps_si512(v1), _mm512_castps_si512(v0), 15);
    const __m512i si0 = _mm512_alignr_epi32(i0, _mm512_setzero_si512(), 15);
    const __m512i si1 = _mm512_alignr_epi32(i1, i0, 15);
    const __mmask16 m0 = (__mmask16)(m & 0xffff), m1 = (__mmask16)(m >> 16);
    const __mmask16 h0 = (__mmask16)(head & 0xffff), h1 = (__mmask16)(head >> 16);
    v0 = _mm512_mask_mov_ps(_mm512_mask_mov_ps(v0, m0, _mm512_castsi512_ps(sv0)), h0, xv);
    v1 = _mm512_mask_mov_ps(_mm512_mask_mov_ps(v1, m1, _mm512_castsi512_ps(sv1)), h1, xv);
    const __m512i av = _mm512_set1_epi32(a);
    i0 = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(i0, m0, si0), h0, av);
    i1 = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(i1, m1, si1), h1, av);
    valid = ((valid << 1) | 1u) & full;
    if (valid == full) thr = _mm512_cvtss_f32(_mm512_permutexvar_ps(last, k > 16 ? v1 : v0));
  };
  int64_t a = 0;
  for (; a < n && valid != full; ++a) insert(s[a], (int32_t)a);
  for (; a + 16 <= n; a += 16) {
    uint32_t mask = (uint32_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(s + a), _mm512_set1_ps(thr), _CMP_GT_OQ);
    while (mask) {
      const int l = __builtin_ctz(mask);
      mask &= mask - 1;
      if (s[a + l] > thr) insert(s[a + l], (int32_t)(a + l));
    }
  }
  for (; a < n; ++a)
    if (s[a] > thr) insert(s[a], (int32_t)a);
  alignas(64) float vb[32];
  alignas(64) int32_t ib[32];
  _mm512_store_ps(vb, v0);
  _mm512_store_ps(vb + 16, v1);
  _mm512_store_si512((__m512i*)ib, i0);
  _mm512_store_si512((__m512i*)(ib + 16), i1);
  for (int64_t j = 0; j < k; ++j) {
    v[j] = vb[j];
    ix[j] = ib[j];
  }
}
#endif

// Sorted top-k of s[0..n) into (v desc, ix): insertion into a k-list, scanning in index order with a strict '>'
// so lower indices stay first among equal values. Blocks of 16 scores are first tested against the current
// k-th best in one vector compare: once the list is full almost every block is skipped without a branch per
// score (~k·ln(n/k) insertions happen in all).
static inline void topk_half_range(const float* __restrict s, int64_t n, int64_t k, float* __restrict v,
                                   int32_t* __restrict ix) {
#if defined(__AVX512F__)
  if (k <= 32) {
    topk_half_avx512_32(s, n, k, v, ix);
    return;
  }
#endif
  int64_t cnt = 0;
  auto insert = [&](float x, int64_t a) {
    if (cnt == k && !(x > v[k - 1])) return;
    int64_t p = cnt < k ? cnt : k - 1;
    while (p > 0 && v[p - 1] < x) {
      v[p] = v[p - 1];
      ix[p] = ix[p - 1];
      --p;
    }
    v[p] = x;
    ix[p] = (int32_t)a;
    if (cnt < k) ++cnt;
  };
  int64_t a = 0;
  for (; a < n && cnt < k; ++a) insert(s[a], a);
  for (; a + 16 <= n; a += 16) {
    unsigned mask = block16_gt(s + a, v[k - 1]);
    while (mask) {
      const int l = __builtin_ctz(mask);
      mask &= mask - 1;
      insert(s[a + l], a + l);  // re-checks against the (possibly raised) k-th best
    }
  }
  for (; a < n; ++a) insert(s[a], a);
}

// ---- product-key top-k backward (kernels/cpu/pkm_topk.cpp drives these) -------------------------------------

// dscore of one token's [H, k] block from dweights through the activation (pkm.h PkmAct: 0 none, 1 softmax,
// 2 softmax over all heads, 3 relu, 4 sigmoid).
static inline void pkm_act_backward(const PkmDims& d, int act, const float* s, const float* w, const float* dw,
                                    float* ds) {
  const int64_t HK = d.H * d.k;
  switch (act) {
    case 0: for (int64_t i = 0; i < HK; ++i) ds[i] = dw[i]; break;
    case 3: for (int64_t i = 0; i < HK; ++i) ds[i] = s[i] > 0 ? dw[i] : 0.0f; break;
    case 4: for (int64_t i = 0; i < HK; ++i) ds[i] = dw[i] * w[i] * (1.0f - w[i]); break;
    default: {
      const int64_t m = act == 1 ? d.k : HK;  // softmax block length
      for (int64_t b = 0; b < HK; b += m) {
        float dot = 0;
        for (int64_t i = b; i < b + m; ++i) dot += w[i] * dw[i];
        for (int64_t i = b; i < b + m; ++i) ds[i] = w[i] * (dw[i] - dot);
      }
    }
  }
}

// Pass 1 for tokens [t0, t1): dscore; per (token, head, half) the distinct sub-key rows with their merged
// gradients at positions ((t·H + h)·2 + half)·k + m (unused: row -1); dq (heads summed in order when Hq = 1).
static inline void pkm_bwd_tokens_range(int64_t t0, int64_t t1, const PkmDims& d, int act, const float* keys,
                                        const int32_t* idx, const float* scores, const float* weights,
                                        const float* dweights, float* dq, int32_t* ent_row, float* ent_g, float* ds) {
  const int64_t n = d.n, k = d.k, H = d.H, half = d.Dk / 2, HK = H * k;
  for (int64_t t = t0; t < t1; ++t) {
    pkm_act_backward(d, act, scores + t * HK, weights + t * HK, dweights + t * HK, ds);
    float* dqt0 = dq + t * d.Hq * d.Dk;
    row_zero(dqt0, d.Hq * d.Dk);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = d.Hk == 1 ? 0 : h;
      float* dqt = dqt0 + (d.Hq == 1 ? 0 : h * d.Dk);
      const int32_t* it = idx + (t * H + h) * k;
      for (int hf = 0; hf < 2; ++hf) {
        int32_t* er = ent_row + ((t * H + h) * 2 + hf) * k;
        float* eg = ent_g + ((t * H + h) * 2 + hf) * k;
        int64_t cnt = 0;
        for (int64_t j = 0; j < k; ++j) {
          const int32_t a = hf == 0 ? it[j] / (int32_t)n : it[j] % (int32_t)n;
          const int32_t row = (int32_t)((hk * 2 + hf) * n + a);
          int64_t m = 0;
          while (m < cnt && er[m] != row) ++m;
          if (m == cnt) {
            er[cnt] = row;
            eg[cnt++] = ds[h * k + j];
          } else {
            eg[m] += ds[h * k + j];
          }
        }
        for (int64_t m = cnt; m < k; ++m) er[m] = -1;
        float* dqh = dqt + hf * half;
        for (int64_t m = 0; m < cnt; ++m) row_axpy(dqh, eg[m], keys + (int64_t)er[m] * half, half);
      }
    }
  }
}

// Pass 2 for unique sub-key rows [u0, u1) of the reverse index over the pass-1 entries:
// dkeys[row] = Σ (positions ascending) g · (the query half that selected it).
static inline void pkm_bwd_rows_range(int64_t u0, int64_t u1, const PkmDims& d, const float* q, const int32_t* urows,
                                      const int64_t* offsets, const int64_t* pos, const float* ent_g, float* dkeys) {
  const int64_t k = d.k, H = d.H, half = d.Dk / 2;
  for (int64_t u = u0; u < u1; ++u) {
    float* dk = dkeys + (int64_t)urows[u] * half;
    for (int64_t o = offsets[u]; o < offsets[u + 1]; ++o) {
      const int64_t ps = pos[o];
      const int64_t th = ps / (2 * k), hf = (ps / k) % 2;
      const int64_t t = th / H, h = th % H;
      row_axpy(dk, ent_g[ps], q + (t * d.Hq + (d.Hq == 1 ? 0 : h)) * d.Dk + hf * half, half);
    }
  }
}

// ---- Bandwidth probe (kernels/cpu/membw.cpp) -------------------------------------------------------------------
// Reads rows [s, e) of a [rows, 256] array in a scattered order (row i at position (i · 2654435761) mod rows),
// prefetching kPrefetch rows ahead like the gather kernels, and sums them into 4 vector accumulators: the access
// pattern of PKM/PEER at its simplest, the yardstick of their "× rows" figures. It is compiled per ISA like the
// kernels it measures: built for baseline SSE (64 loads per row) it read 42-45 GB/s on the AVX-512 dev VM while the
// copy probe read 63-73 GB/s, against 61-68 GB/s built for AVX-512.
static float scattered_rows_sum(const float* a, int64_t rows, int64_t s, int64_t e) {
  constexpr int64_t kRow = 256;
  const auto row_of = [rows](int64_t i) { return (int64_t)(((uint64_t)i * 2654435761u) % (uint64_t)rows); };
  vecf acc[4] = {};
  for (int64_t i = s; i < e; ++i) {
    if (i + kPrefetch < e) prefetch_row(a + row_of(i + kPrefetch) * kRow, kRow);
    const float* r = a + row_of(i) * kRow;
    for (int64_t v = 0; v < kRow / kVecW; ++v) acc[v % 4] += vec_load(r + v * kVecW);
  }
  const vecf t = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float sum = 0;
  for (int l = 0; l < kVecW; ++l) sum += t[l];
  return sum;
}

// ---- AdamW element update (kernels/cpu/adamw.cpp; math in sffn/optim.h) ---------------------------------------
// c = (1 − lr·wd, β1, 1 − β1, β2, 1 − β2, lr / (1 − β1^t), 1 / √(1 − β2^t), ε). IEEE sqrt and divide: the result
// of an element does not depend on how the loop is split or vectorised (only on the ISA's FMA contraction).
static inline void adamw_update_range(int64_t n, float* __restrict p, const float* __restrict g, float* __restrict m,
                                      float* __restrict v, const float* c) {
  const float decay = c[0], b1 = c[1], c1 = c[2], b2 = c[3], c2 = c[4], step = c[5], ibc2 = c[6], eps = c[7];
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + c1 * gi;
    const float vi = b2 * v[i] + c2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step * (mi / (::sqrtf(vi) * ibc2 + eps));
  }
}

}  // namespace
}  // namespace sffn
