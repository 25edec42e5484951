// The only code that touches N-API. Every JS-callable function:
//   1. unwraps and validates each argument with the arg_* guards below (typed-array kind, length, integer
//      ranges, shapes), which throw sffn::napi::ArgError naming the op, the argument, expected and actual;
//   2. calls a plain C++ kernel;
//   3. returns undefined or a small result.
// def() wraps every function so that ArgError becomes the matching JS error class (ShapeError, DTypeError,
// DeviceError, ...; classes handed over by lib/native at load), and any other C++ exception becomes an
// Error: nothing a user passes can crash the process.
#pragma once
#include <napi.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "sffn/core.h"

namespace sffn {
namespace napi {

enum class ErrKind : int { Type = 0, Range, Shape, DType, Device, Disposed, Backend, Count };

struct ArgError {
  ErrKind kind;
  std::string message;
};

template <class... A>
std::string cat(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}

template <class... A>
[[noreturn]] void fail(ErrKind kind, const A&... a) {
  throw ArgError{kind, cat(a...)};
}

enum class DType : int { F32 = 0, I32, I64, BF16, U8 };
const char* dtype_name(DType dt);
size_t dtype_size(DType dt);

// A borrowed view of a host typed array or (CUDA flavor) a DeviceBuffer.
struct Buf {
  void* data = nullptr;
  int64_t count = 0;  // elements
  DType dtype = DType::F32;
  bool device = false;
  template <class T>
  T* as() const { return static_cast<T*>(data); }
};

// arg i must be a typed array of `dt` (Float32Array for f32, Int32Array for i32, BigInt64Array for i64,
// Uint16Array for bf16, Uint8Array for u8), or a DeviceBuffer of that dtype when device buffers exist.
Buf arg_buf(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt);
// Same, and the element count must equal `count` exactly.
Buf arg_buf(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt, int64_t count);
// Optional buffer: null/undefined gives a Buf with data == nullptr.
Buf arg_buf_opt(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt, int64_t count);
// An integer in [lo, hi] (numbers must be exact integers; BigInt accepted).
int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, int64_t lo, int64_t hi);
double arg_num(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::string arg_str(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
// A string naming one of `choices`; anything else is a RangeError listing them:
//   "<op>: <name> must be one of a, b, c, got 'x'".
template <class E>
E arg_enum(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name,
           std::initializer_list<std::pair<const char*, E>> choices) {
  const std::string s = arg_str(info, i, op, name);
  std::string names;
  for (const auto& [key, value] : choices) {
    if (s == key) return value;
    names += names.empty() ? key : std::string(", ") + key;
  }
  fail(ErrKind::Range, op, ": ", name, " must be one of ", names, ", got '", s, "'");
}
// An ISA name (argument "isa"): scalar, avx2 or avx512.
inline Isa arg_isa(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return arg_enum<Isa>(info, i, op, "isa", {{"scalar", Isa::Scalar}, {"avx2", Isa::Avx2}, {"avx512", Isa::Avx512}});
}
// An Int32Array / number[] of dims, each >= 0.
std::vector<int64_t> arg_dims(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);

// All buffers must live on the same device; returns that device (false = host).
bool same_device(const char* op, std::initializer_list<std::pair<const char*, const Buf*>> bufs);
// For ops that run on the host only: a device buffer among `bufs` is a DeviceError naming it.
void host_only(const char* op, std::initializer_list<std::pair<const char*, const Buf*>> bufs);
// The optional trailing `ref` flag of an op (run the float64-accumulating reference): absent/undefined/null = false.
bool opt_ref(const Napi::CallbackInfo& info, size_t i, const char* op);

// Bytes to skip from p so that what follows is aligned to `align` (a power of two).
inline size_t align_offset(const void* p, size_t align) { return (align - ((uintptr_t)p & (align - 1))) & (align - 1); }

// Registration: each napi/<group>.cpp holds `static Registrar reg([](Napi::Env env, Napi::Object exports) {
// def(env, exports, "gemm", JS_gemm); ... });` so adding a group never edits addon.cpp.
using JsFn = Napi::Value (*)(const Napi::CallbackInfo&);
void def(Napi::Env env, Napi::Object exports, const char* name, JsFn fn);
struct Registrar {
  using Fn = void (*)(Napi::Env, Napi::Object);
  explicit Registrar(Fn fn);
};

// Throws a JS error of the class registered for `kind` (used by def(); exposed for AsyncWorker results).
Napi::Error make_error(Napi::Env env, ErrKind kind, const std::string& message);

// CUDA flavor hooks (device_buffer.cpp); null in the CPU flavor.
extern bool (*device_buffer_unwrap)(Napi::Value v, Buf* out, const char* op, const char* name);

}  // namespace napi
}  // namespace sffn
