// pkm_rows.h compiled with the avx512 flags (see pkm_isa.h).
#include "pkm_isa.h"
#include "pkm_rows.h"

namespace sffn {
namespace avx512 {

PkmRowKernels pkm_row_kernels_avx512() {
  return PkmRowKernels{eb_forward_range, peer_forward_range, pkm_bwd_tokens_range, pkm_bwd_rows_range,
                       eb_backward_rows_range, peer_backward_rows_range, peer_act_rows, peer_backward_dx_range,
                       topk_half_range, adamw_update_range, scattered_rows_sum};
}

}  // namespace avx512
}  // namespace sffn
