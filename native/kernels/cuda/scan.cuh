// Block-wide scans shared by the CUDA kernels (and compiled as plain C++ by the host emulator, test/gpu/emulate).
#pragma once
#include <cstdint>

namespace sffn {
namespace cuda {

// One block of BLOCK threads: out[i] = Σ_{j<i} counts[j] for i in [0, n), in a fixed order whatever the data (thread
// t sums a contiguous segment, thread 0 scans the segment totals, then every thread writes its segment), so the
// result is deterministic. Returns the total, on every thread.
template <int BLOCK>
__device__ int64_t block_exclusive_scan(int64_t n, const int32_t* __restrict__ counts, int64_t* __restrict__ out) {
  __shared__ int64_t seg[BLOCK + 1];
  const int64_t per = (n + BLOCK - 1) / BLOCK;
  const int64_t b = threadIdx.x * per, e = b + per < n ? b + per : n;
  int64_t s = 0;
  for (int64_t i = b; i < e; ++i) s += counts[i];
  seg[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t run = 0;
    for (int i = 0; i < BLOCK; ++i) {
      const int64_t x = seg[i];
      seg[i] = run;
      run += x;
    }
    seg[BLOCK] = run;
  }
  __syncthreads();
  int64_t run = seg[threadIdx.x];
  for (int64_t i = b; i < e; ++i) {
    out[i] = run;
    run += counts[i];
  }
  return seg[BLOCK];
}

}  // namespace cuda
}  // namespace sffn
