// AdamW (Loshchilov & Hutter 2019, decoupled weight decay), dense and sparse-row, as in torch.optim.AdamW
// (amsgrad off, maximize off). One element, at step t (1-based):
//   p ← p · (1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
// Dense: every element, one step counter t for the whole tensor (passed by the caller).
// Sparse ("lazy moments", like torch.optim.SparseAdam plus decoupled decay): only the rows listed in the sparse
// gradient change; each row keeps its own step counter steps[r] (incremented when the row is touched) that feeds
// its bias correction. Untouched rows keep p, m, v and steps unchanged (no decay, no moment decay). Hence the
// sparse update equals the dense one bit for bit on every row touched at every step so far; rows touched less
// often see fewer, not zero-gradient, steps.
// Tests: test/ops/adamw.test.ts.
#pragma once
#include <cstdint>

namespace sffn {

struct AdamwHyper {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
};

// p, g, m, v [n]; step >= 1 is the step number after this update.
void adamw_step(int64_t n, float* p, const float* g, float* m, float* v, const AdamwHyper& hp, int64_t step);
void adamw_step_ref(int64_t n, float* p, const float* g, float* m, float* v, const AdamwHyper& hp, int64_t step);

// p, m, v [N, D]; steps [N] per-row counters; rows [U] distinct row ids; g [U, D] their gradients.
void sparse_adamw_step(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                       const int32_t* rows, const float* g, const AdamwHyper& hp);
void sparse_adamw_step_ref(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                           const int32_t* rows, const float* g, const AdamwHyper& hp);

}  // namespace sffn
