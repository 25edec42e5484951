// Baseline build of the row kernels (pkm_rows.h) and the per-ISA dispatch table (pkm_isa.h).
#include "pkm_isa.h"
#include "pkm_rows.h"
#include "sffn/core.h"

namespace sffn {

const PkmRowKernels& pkm_row_kernels() {
  static const PkmRowKernels scalar{eb_forward_range,       peer_forward_range,       pkm_bwd_tokens_range,
                                  pkm_bwd_rows_range,     eb_backward_rows_range,   peer_backward_rows_range,
                                  peer_act_rows,          peer_backward_dx_range,   topk_half_range,
                                  adamw_update_range,     scattered_rows_sum};
#if defined(__x86_64__)
  // The ISA libraries exist only on x64 (binding.gyp); elsewhere active_isa() is always Scalar.
  static const PkmRowKernels k_avx2 = avx2::pkm_row_kernels_avx2();
  static const PkmRowKernels k_avx512 = avx512::pkm_row_kernels_avx512();
  switch (active_isa()) {
    case Isa::Avx512: return k_avx512;
    case Isa::Avx2: return k_avx2;
    default: return scalar;
  }
#else
  return scalar;
#endif
}

}  // namespace sffn
