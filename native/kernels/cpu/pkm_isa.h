// The row kernels of pkm_rows.h for each ISA, behind one table picked from sffn::active_isa() (pkm_rows.cpp).
// The *.avx2.cpp / *.avx512.cpp files define sffn::avx2::pkm_row_kernels_avx2() / sffn::avx512::... so that
// only those translation units contain ISA instructions.
#pragma once
#include <cstdint>

#include "sffn/pkm.h"

namespace sffn {

struct PkmRowKernels {
  void (*eb_forward)(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* w,
                     const float* V, float* out);
  void (*peer_forward)(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const float* x, const int32_t* idx,
                       const float* g, const float* U, const float* V, float* out, float* h);
  void (*pkm_bwd_tokens)(int64_t t0, int64_t t1, const PkmDims& d, int act, const float* keys, const int32_t* idx,
                         const float* scores, const float* weights, const float* dweights, float* dq,
                         int32_t* ent_row, float* ent_g, float* ds);
  void (*pkm_bwd_rows)(int64_t u0, int64_t u1, const PkmDims& d, const float* q, const int32_t* urows,
                       const int64_t* offsets, const int64_t* pos, const float* ent_g, float* dkeys);
  void (*eb_backward_rows)(int64_t u0, int64_t u1, int64_t J, int64_t D, const int32_t* rows, const int64_t* offsets,
                           const int64_t* pos, const float* w, const float* V, const float* dout, float* dw,
                           float* dV);
  void (*peer_backward_rows)(int64_t u0, int64_t u1, int64_t J, int64_t D, const int32_t* rows,
                             const int64_t* offsets, const int64_t* pos, const float* g, const float* av,
                             const float* ag, const float* V, const float* x, const float* dout, float* dg, float* dh,
                             float* dU, float* dV);
  void (*peer_act_rows)(int act, const float* h, float* a, float* ag, int64_t n);
  void (*peer_backward_dx)(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* U,
                           const float* dh, float* dx);
  void (*topk_half)(const float* s, int64_t n, int64_t k, float* v, int32_t* ix);
  // AdamW update of n elements; the coefficients are (decay, β1, 1−β1, β2, 1−β2, step size, 1/√bc2, ε).
  void (*adamw_update)(int64_t n, float* p, const float* g, float* m, float* v, const float* coef8);
  // The bandwidth probe's scattered 1 KiB row reads (membw.cpp): the sum of rows [s, e) of a [rows, 256] array.
  float (*scattered_rows_sum)(const float* a, int64_t rows, int64_t s, int64_t e);
};

// The table for the ISA kernels run with now.
const PkmRowKernels& pkm_row_kernels();

namespace avx2 {
PkmRowKernels pkm_row_kernels_avx2();
}
namespace avx512 {
PkmRowKernels pkm_row_kernels_avx512();
}

}  // namespace sffn
