// Smallest possible AVX-512 kernel: lets tests confirm that the avx512 library links and dispatches.
#include <immintrin.h>

namespace sffn {
namespace avx512 {
// Sum of n floats (n % 16 == 0), 16 lanes at a time.
float sum_f32(const float* x, long n) {
  __m512 acc = _mm512_setzero_ps();
  for (long i = 0; i < n; i += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(x + i));
  return _mm512_reduce_add_ps(acc);
}
}  // namespace avx512
}  // namespace sffn
