// N-API helpers for the CUDA flavor (device_buffer.cpp, cuda_ops.cpp): CUDA Status -> typed JS error, and
// the DeviceBuffer argument guard. Only included by files wrapped in #ifdef SFFN_WITH_CUDA.
#pragma once
#include "common.h"
#include "sffn/cuda.h"

namespace sffn {
namespace napi {

// Out of device memory -> RangeError-like (ErrKind::Range); any other CUDA failure -> DeviceError.
inline void check_cuda(const cuda::Status& s, const char* op) {
  if (s.ok()) return;
  if (s.out_of_memory()) fail(ErrKind::Range, op, ": out of device memory (", s.message, ")");
  fail(ErrKind::Device, op, ": CUDA error: ", s.message);
}

// Argument i must be a live DeviceBuffer (any dtype); returns its view (device = true).
Buf arg_device(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);

}  // namespace napi
}  // namespace sffn
