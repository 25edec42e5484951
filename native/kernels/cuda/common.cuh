// Helpers shared by the .cu files of the CUDA flavor (not a translation unit of its own: tools/sources.cjs
// lists only *.cu). Turns cudaError_t into sffn::cuda::Status with the failing call named.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "sffn/cuda.h"

namespace sffn {
namespace cuda {

inline Status status_of(cudaError_t e, const std::string& what) {
  Status s;
  if (e == cudaSuccess) return s;
  s.code = (int)e;
  s.message = what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
  return s;
}

// After a kernel launch: configuration errors show up in cudaGetLastError (which also clears them, so one
// failed launch does not poison later calls). Asynchronous faults surface at the next synchronising call.
inline Status launch_status(const char* kernel) { return status_of(cudaGetLastError(), std::string("launch ") + kernel); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for n items of `threads` each, at least 1 and at most 65535·8 (grid-stride loops cover the rest).
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t g = (n + threads - 1) / threads;
  return (unsigned)(g < 1 ? 1 : g > 65535 * 8 ? 65535 * 8 : g);
}
// Blocks of 256 threads for one warp per row.
inline unsigned warp_grid(int64_t rows) { return grid_for(rows * 32, 256); }
// Sub-buffers of a workspace start on 256-byte boundaries.
inline size_t pad256(size_t b) { return (b + 255) / 256 * 256; }

// A pooled device workspace freed stream-ordered at scope exit (device_malloc into p).
struct DeviceScratch {
  char* p = nullptr;
  ~DeviceScratch() {
    if (p) device_free(p);
  }
};

}  // namespace cuda
}  // namespace sffn

#define SFFN_CUDA_TRY(call, what)                            \
  do {                                                       \
    ::sffn::cuda::Status _s = ::sffn::cuda::status_of((call), (what)); \
    if (!_s.ok()) return _s;                                 \
  } while (0)
