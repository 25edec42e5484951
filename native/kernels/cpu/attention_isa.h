// The softmax row helpers of the blocked attention kernel (attention.cpp) for each ISA. The *.avx2.cpp /
// *.avx512.cpp files define them in sffn::avx2 / sffn::avx512 so that only those translation units contain ISA
// instructions; attention.cpp picks one set from sffn::active_isa() before its parallel region.
#pragma once
#include <cstdint>

namespace sffn {

struct AttnRowOps {
  // max(init, x[0..n)); NaN in x may or may not win (the exp below propagates it either way).
  float (*row_max)(const float* x, int64_t n, float init);
  // x[c] = e^{x[c] − shift} in place for c < n; returns Σ_c x[c], summed in a fixed order (lanes, then a fixed
  // tree), so the result does not depend on anything but the inputs.
  float (*exp_sum)(float* x, int64_t n, float shift);
};

namespace avx2 {
AttnRowOps attn_row_ops();
}
namespace avx512 {
AttnRowOps attn_row_ops();
}

}  // namespace sffn
