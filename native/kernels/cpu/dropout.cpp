// Dropout with a stateless mask: element i is kept when hash(seed, i) / 2^32 ≥ p, and scaled by 1/(1 − p). The
// same call is the forward (x → y) and the backward (dy → dx). Deterministic for any thread count.
// Test: test/ops/nn.test.ts.
#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {

bool dropout_keep(uint64_t seed, int64_t i, float p) {
  // splitmix64 of (seed, i): cheap, well mixed, no state.
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 32) / 4294967296.0 >= (double)p;
}

void dropout_apply(int64_t n, float p, uint64_t seed, const float* x, float* y) {
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  parallel_for(n, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; i++) y[i] = dropout_keep(seed, i, p) ? x[i] * scale : 0.0f;
  }, 4096);
}

}  // namespace sffn
