// Normal initialisation of large tables, in parallel, drawing exactly what lib/data/random.ts's Rng.normal()
// draws one value after another: mulberry32 adds a constant to its state before each draw, so draw j of a fill
// that starts at state s is a pure function of s + j·C (mod 2^32) and every element can be computed on its own.
// Element i is Box-Muller over draws 2i+1 and 2i+2, in double precision like the JS code, then scaled and
// rounded to f32 once. Test: test/unit/init.test.ts (against the JS generator).
#include <algorithm>
#include <cmath>

#include "sffn/core.h"
#include "sffn/nn.h"

namespace sffn {
namespace {

constexpr uint32_t kMulberryStep = 0x6d2b79f5u;

// mulberry32's output for the state after a step, as a double in [0, 1).
inline double mulberry_uniform(uint32_t s) {
  uint32_t t = s;
  t = (t ^ (t >> 15)) * (t | 1u);
  t ^= t + (t ^ (t >> 7)) * (t | 61u);
  return (double)(t ^ (t >> 14)) / 4294967296.0;
}

}  // namespace

void fill_normal_mulberry(int64_t n, uint32_t state, double std_dev, float* out) {
  const double two_pi = 2 * M_PI;
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
          const uint32_t s = state + (uint32_t)(2 * i + 1) * kMulberryStep;
          const double u = std::max(mulberry_uniform(s), 1e-300);
          const double v = mulberry_uniform(s + kMulberryStep);
          out[i] = (float)(std::sqrt(-2 * std::log(u)) * std::cos(two_pi * v) * std_dev);
        }
      },
      1 << 14);
}

}  // namespace sffn
