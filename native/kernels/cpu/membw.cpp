// STREAM-like memory bandwidth probe (McCalpin's copy and triad), used by the benchmarks to express kernel
// throughput as a fraction of what this machine can move. Each thread works on its own contiguous slice, so
// pages stay local to the thread that first touched them.
#include <chrono>
#include <cstring>

#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {

MemBandwidth mem_bandwidth(float* a, float* b, float* c, int64_t n, int reps) {
  parallel_for(n, [&](int64_t s, int64_t e, int) {
    for (int64_t i = s; i < e; ++i) a[i] = 1.0f, b[i] = 2.0f, c[i] = 0.5f;
  });
  using clock = std::chrono::steady_clock;
  double best_copy = 1e30, best_triad = 1e30, best_read = 1e30;
  float sink[256] = {0};
  for (int r = 0; r < reps; ++r) {
    auto t0 = clock::now();
    parallel_for(n, [&](int64_t s, int64_t e, int) { std::memcpy(b + s, a + s, (size_t)(e - s) * sizeof(float)); });
    auto t1 = clock::now();
    parallel_for(n, [&](int64_t s, int64_t e, int) {
      for (int64_t i = s; i < e; ++i) a[i] = b[i] + 0.5f * c[i];
    });
    auto t2 = clock::now();
    // Read-only: a sum with 16 independent partial sums per thread (vectorisable, no stores).
    parallel_for(n, [&](int64_t s, int64_t e, int tid) {
      float acc[16] = {0};
      int64_t i = s;
      for (; i + 16 <= e; i += 16)
        for (int l = 0; l < 16; ++l) acc[l] += a[i + l];
      for (int l = 0; l < 16; ++l) sink[tid & 255] += acc[l];
    });
    auto t3 = clock::now();
    best_read = std::min(best_read, std::chrono::duration<double>(t3 - t2).count());
    best_copy = std::min(best_copy, std::chrono::duration<double>(t1 - t0).count());
    best_triad = std::min(best_triad, std::chrono::duration<double>(t2 - t1).count());
  }
  const double bytes = (double)n * sizeof(float);
  // Random rows: 1 KiB rows of `a` in a scattered order (multiplicative hash of the row number), read with the
  // same 8-rows-ahead prefetch as the gather kernels: the access pattern of PKM/PEER, at its simplest.
  const int64_t rows = n / 256;
  double best_rows = 1e30;
  for (int r = 0; r < reps && rows > 0; ++r) {
    auto t0 = clock::now();
    parallel_for(rows, [&](int64_t s, int64_t e, int tid) {
      float acc[16] = {0};
      auto row_of = [&](int64_t i) { return (int64_t)(((uint64_t)i * 2654435761u) % (uint64_t)rows); };
      for (int64_t i = s; i < e; ++i) {
        if (i + 8 < e) {
          const float* pf = a + row_of(i + 8) * 256;
          for (int l = 0; l < 256; l += 16) __builtin_prefetch(pf + l, 0, 3);
        }
        const float* row = a + row_of(i) * 256;
        for (int l = 0; l < 256; l += 16)
          for (int m = 0; m < 16; ++m) acc[m] += row[l + m];
      }
      for (int l = 0; l < 16; ++l) sink[tid & 255] += acc[l];
    });
    best_rows = std::min(best_rows, std::chrono::duration<double>(clock::now() - t0).count());
  }
  volatile float keep = sink[0];
  (void)keep;
  return MemBandwidth{2 * bytes / best_copy, 3 * bytes / best_triad, bytes / best_read,
                      rows > 0 ? (double)rows * 1024 / best_rows : 0};
}

}  // namespace sffn
