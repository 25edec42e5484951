// Smallest possible AVX2 kernel: lets tests confirm that the avx2 library links and dispatches.
#include <immintrin.h>

namespace sffn {
namespace avx2 {
// Sum of n floats (n % 8 == 0), 8 lanes at a time.
float sum_f32(const float* x, long n) {
  __m256 acc = _mm256_setzero_ps();
  for (long i = 0; i < n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float s = 0;
  for (float l : lanes) s += l;
  return s;
}
}  // namespace avx2
}  // namespace sffn
