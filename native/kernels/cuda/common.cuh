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

}  // namespace cuda
}  // namespace sffn

#define SFFN_CUDA_TRY(call, what)                            \
  do {                                                       \
    ::sffn::cuda::Status _s = ::sffn::cuda::status_of((call), (what)); \
    if (!_s.ok()) return _s;                                 \
  } while (0)
