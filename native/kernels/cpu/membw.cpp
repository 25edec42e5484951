// STREAM-like memory bandwidth probe (McCalpin's copy and triad), used by the benchmarks to express kernel
// throughput as a fraction of what this machine can move. Each thread works on its own contiguous slice, so
// pages stay local to the thread that first touched them.
#include <chrono>
#include <cstring>

#include "pkm_isa.h"
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
  // Random rows: 1 KiB rows of `a` in a scattered order, read by the active ISA's probe kernel (pkm_rows.h
  // scattered_rows_sum): the access pattern of PKM/PEER at its simplest.
  const PkmRowKernels& kern = pkm_row_kernels();
  const int64_t rows = n / 256;
  double best_rows = 1e30;
  for (int r = 0; r < reps && rows > 0; ++r) {
    auto t0 = clock::now();
    parallel_for(rows,
                 [&](int64_t s, int64_t e, int tid) { sink[tid & 255] += kern.scattered_rows_sum(a, rows, s, e); });
    best_rows = std::min(best_rows, std::chrono::duration<double>(clock::now() - t0).count());
  }
  volatile float keep = sink[0];
  (void)keep;
  return MemBandwidth{2 * bytes / best_copy, 3 * bytes / best_triad, bytes / best_read,
                      rows > 0 ? (double)rows * 1024 / best_rows : 0};
}

}  // namespace sffn
