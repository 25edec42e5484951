// Per-token row kernels of the MoE routing (moe_route.cpp) for each ISA. The *.avx2.cpp / *.avx512.cpp files
// define them in sffn::avx2 / sffn::avx512; moe_route.cpp picks one from sffn::active_isa().
//
// Canonical arithmetic, shared by every ISA so that p, the choices and the gates are bit-identical across
// ISAs (moe_route.cpp implements the same order in plain C++ for the scalar path):
//   m = max_e z[e];  x[e] = fast_exp(z[e] - m) (act.h, mul/add only, never fused into FMA);
//   sum: 16 lanes, lane l = Σ x[e] over e ≡ l (mod 16) in increasing e, then halves added 8, 4, 2, 1;
//   p[e] = x[e] · (1 / sum);  σ(v) = 1 / (1 + fast_exp(-v)).
// Shapes: z, p [E]; cand, sig [want].
#pragma once
#include <cstdint>

namespace sffn {

// Widest row whose selection the vector kernels do (the candidate set is a 64-bit mask).
constexpr int64_t kMoeRowMaxE = 64;

// A run of n token rows z [n, E] (row i at z + i·E):
//   p [n, E] = softmax of each row, m [n] = row max, sum [n] = Σ exp(z - m) (the caller forms lse = m + log(sum));
//   pacc [E] (if not null) += (double)p of the rows, in row order;
//   if want > 0 (then E <= kMoeRowMaxE): with keep_i = keep[i] (bit e = expert e survives dropout; keep = null:
//     all E experts) and w_i = min(want, popcount(keep_i)), cand [n, cs] row i holds the w_i best experts of
//     keep_i in the strict order z[a] > z[b] || (z[a] == z[b] && a < b);
//   if sig is not null (and want > 0): sig [n, cs] row i holds σ(z[cand[j]]) for j < w_i.
// ok[i] = 0 and nothing else written for row i (pacc untouched) when the row holds a NaN or an infinity: the
// caller then takes the scalar path, whose results are defined by its own sequential code.
using MoeRouteRowsFn = void (*)(const float* z, int64_t n, int64_t E, const uint64_t* keep, int64_t want, int64_t cs,
                                float* p, float* m, float* sum, uint8_t* ok, int32_t* cand, float* sig, double* pacc);

// Backward row: given p [E] = softmax(z) and lse, writes
//   dz[e] = cz·lse·p[e] + ce·p[e]·(logpb[e] - se) + cb·p[e]·(fe[e] - sf) - a·p[e]
// with se = Σ p·logpb and sf = Σ p·fe summed in double (reg = false: the ce and cb terms are skipped).
using MoeRouteBwdRowFn = void (*)(const float* p, int64_t E, float lse, bool reg, const float* logpb,
                                  const float* fe, float ce, float cb, float cz, float a, float* dz);

namespace avx2 {
void moe_route_rows(const float* z, int64_t n, int64_t E, const uint64_t* keep, int64_t want, int64_t cs, float* p,
                    float* m, float* sum, uint8_t* ok, int32_t* cand, float* sig, double* pacc);
void moe_route_bwd_row(const float* p, int64_t E, float lse, bool reg, const float* logpb, const float* fe, float ce,
                       float cb, float cz, float a, float* dz);
}  // namespace avx2
namespace avx512 {
void moe_route_rows(const float* z, int64_t n, int64_t E, const uint64_t* keep, int64_t want, int64_t cs, float* p,
                    float* m, float* sum, uint8_t* ok, int32_t* cand, float* sig, double* pacc);
void moe_route_bwd_row(const float* p, int64_t E, float lse, bool reg, const float* logpb, const float* fe, float ce,
                       float cb, float cz, float a, float* dz);
}  // namespace avx512

}  // namespace sffn
