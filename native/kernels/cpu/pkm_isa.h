// The row kernels of pkm_rows.h for each ISA, behind one table picked from sffn::active_isa() (pkm_rows.cpp).
// The *.avx2.cpp / *.avx512.cpp files define sffn::avx2::pkm_row_kernels_avx2() / sffn::avx512::... so that
// only those translation units contain ISA instructions.
#pragma once
#include <cstdint>

namespace sffn {

struct PkmRowKernels {
  void (*eb_forward)(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* w,
                     const float* V, float* out);
  void (*eb_backward_dw)(int64_t t0, int64_t t1, int64_t J, int64_t D, const int32_t* idx, const float* V,
                         const float* dout, float* dw);
  void (*rows_accumulate)(int64_t u0, int64_t u1, int64_t J, int64_t D, const int64_t* offsets, const int64_t* pos,
                          const float* coef, const float* src, float* out, const float* coef2, const float* src2,
                          float* out2);
  void (*peer_forward)(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const float* x, const int32_t* idx,
                       const float* g, const float* U, const float* V, float* out, float* h);
  void (*peer_backward_tokens)(int64_t t0, int64_t t1, int64_t J, int64_t D, int act, const int32_t* idx,
                               const float* g, const float* U, const float* V, const float* h, const float* dout,
                               float* dx, float* dg, float* dh, float* gv);
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
