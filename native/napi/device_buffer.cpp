// CUDA flavor: DeviceBuffer (device memory owned by a JS object), the copy/fill/sync functions over it, the
// device-memory counters, and probe() (what the loader calls to decide whether to use this flavor).
//
//   deviceAlloc(count, dtype) -> DeviceBuffer { byteLength, dtype, count, disposed, dispose() }
//   copyToDevice(dst, src), copyToHost(dst, src), copyDeviceToDevice(dst, src), deviceFill(dst, value),
//   deviceSynchronize(), deviceMemory() -> { allocatedBytes, liveBuffers }, probe()
//
// Device memory is freed by dispose() (idempotent). The GC finalizer frees leaked buffers only as a backstop:
// finalizers run late (only after a synchronous loop yields), and not at all at process exit, where the driver
// reclaims the memory. DeviceBuffers are type-tagged, so a look-alike object passed where one is expected is
// rejected instead of reinterpreted. Test: test/gpu/device.test.ts.
#ifdef SFFN_WITH_CUDA
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "common.h"
#include "cuda_util.h"
#include "sffn/cuda.h"

namespace sffn {
namespace napi {
namespace {

const napi_type_tag kDeviceBufferTag = {0x5ff1a0c0d2b94e01ULL, 0x8c7d6e5f4a3b2c1dULL};
// Only deviceAlloc may construct a DeviceBuffer: it passes an External pointing at this token.
int kConstructToken = 0;

std::atomic<int64_t> g_allocated_bytes{0};
std::atomic<int64_t> g_live_buffers{0};
// Set at exit(): static cudart may already be torn down, so finalizers must not call into it.
std::atomic<bool> g_process_exiting{false};

class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  void* ptr = nullptr;
  size_t bytes = 0;
  int64_t count = 0;
  DType dtype = DType::F32;
  bool disposed = true;  // until deviceAlloc succeeds

  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "DeviceBuffer",
                       {InstanceMethod<&DeviceBuffer::JS_dispose>("dispose"),
                        InstanceAccessor<&DeviceBuffer::JS_byteLength>("byteLength"),
                        InstanceAccessor<&DeviceBuffer::JS_dtype>("dtype"),
                        InstanceAccessor<&DeviceBuffer::JS_count>("count"),
                        InstanceAccessor<&DeviceBuffer::JS_disposed>("disposed"),
                        InstanceMethod<&DeviceBuffer::JS_toString>("toString")});
  }

  explicit DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
    if (info.Length() < 1 || !info[0].IsExternal() || info[0].As<Napi::External<int>>().Data() != &kConstructToken)
      throw make_error(info.Env(), ErrKind::Type, "DeviceBuffer: cannot be constructed directly; use deviceAlloc(count, dtype)");
    info.This().As<Napi::Object>().TypeTag(&kDeviceBufferTag);
  }

  ~DeviceBuffer() override {
    if (!g_process_exiting.load()) release();  // the GC backstop for a buffer that was never disposed
  }

  // Frees the memory once; later calls do nothing.
  cuda::Status release() {
    cuda::Status s;
    if (disposed) return s;
    disposed = true;
    s = cuda::device_free(ptr);
    ptr = nullptr;
    g_allocated_bytes -= (int64_t)bytes;
    g_live_buffers -= 1;
    return s;
  }

 private:
  Napi::Value JS_dispose(const Napi::CallbackInfo& info) {
    cuda::Status s = release();
    // A failed free means the context is broken (an earlier kernel fault); report it, the buffer stays disposed.
    if (!s.ok()) throw make_error(info.Env(), ErrKind::Device, "DeviceBuffer.dispose: CUDA error: " + s.message);
    return info.Env().Undefined();
  }
  Napi::Value JS_byteLength(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)bytes); }
  Napi::Value JS_dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_name(dtype)); }
  Napi::Value JS_count(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)count); }
  Napi::Value JS_disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed); }
  Napi::Value JS_toString(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), cat("DeviceBuffer(", dtype_name(dtype), ", ", count, disposed ? ", disposed)" : ")"));
  }
};

// The DeviceBuffer constructor of each environment (main thread and any worker threads), dropped at env
// cleanup. Not instance data: common.cpp owns the env's single instance-data slot.
std::mutex g_ctor_mutex;
std::unordered_map<napi_env, Napi::FunctionReference*> g_ctors;

Napi::Function constructor(Napi::Env env) {
  std::lock_guard<std::mutex> lock(g_ctor_mutex);
  auto it = g_ctors.find(env);
  if (it == g_ctors.end()) fail(ErrKind::Backend, "DeviceBuffer: not initialised in this environment");
  return it->second->Value();
}

DeviceBuffer* unwrap_tagged(Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.CheckTypeTag(&kDeviceBufferTag)) return nullptr;
  return DeviceBuffer::Unwrap(o);
}

// The hook arg_buf() calls for objects: true (and a filled view) for a live DeviceBuffer.
bool unwrap_hook(Napi::Value v, Buf* out, const char* op, const char* name) {
  DeviceBuffer* b = unwrap_tagged(v);
  if (!b) return false;
  if (b->disposed) fail(ErrKind::Disposed, op, ": ", name, " is a disposed device buffer");
  out->data = b->ptr;
  out->count = b->count;
  out->dtype = b->dtype;
  out->device = true;
  return true;
}

DType parse_dtype(const std::string& s, const char* op) {
  if (s == "f32") return DType::F32;
  if (s == "i32") return DType::I32;
  if (s == "i64") return DType::I64;
  if (s == "bf16") return DType::BF16;
  if (s == "u8") return DType::U8;
  fail(ErrKind::DType, op, ": dtype must be one of f32, i32, i64, bf16, u8, got '", s, "'");
}

// Host argument: a typed array of `dt` with `count` elements (a DeviceBuffer here is a device mix-up).
Buf arg_host(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt, int64_t count) {
  Buf b = arg_buf(info, i, op, name, dt);
  if (b.device)
    fail(ErrKind::Device, op, ": ", name, " must be a host typed array, got a DeviceBuffer (use copyDeviceToDevice)");
  if (b.count != count) fail(ErrKind::Shape, op, ": ", name, " must have ", count, " elements, got ", b.count);
  return b;
}

Napi::Value JS_deviceAlloc(const Napi::CallbackInfo& info) {
  const char* op = "deviceAlloc";
  // 2^50 elements is far above any device's memory; the bound only keeps count·size inside 64 bits.
  int64_t count = arg_int(info, 0, op, "count", 0, (int64_t)1 << 50);
  DType dt = parse_dtype(arg_str(info, 1, op, "dtype"), op);
  Napi::Env env = info.Env();
  Napi::Object obj = constructor(env).New({Napi::External<int>::New(env, &kConstructToken)});
  DeviceBuffer* b = DeviceBuffer::Unwrap(obj);
  size_t bytes = (size_t)count * dtype_size(dt);
  void* p = nullptr;
  check_cuda(cuda::device_malloc(&p, bytes), op);
  b->ptr = p;
  b->bytes = bytes;
  b->count = count;
  b->dtype = dt;
  b->disposed = false;
  g_allocated_bytes += (int64_t)bytes;
  g_live_buffers += 1;
  return obj;
}

Napi::Value JS_copyToDevice(const Napi::CallbackInfo& info) {
  const char* op = "copyToDevice";
  Buf dst = arg_device(info, 0, op, "dst");
  Buf src = arg_host(info, 1, op, "src", dst.dtype, dst.count);
  check_cuda(cuda::copy_to_device(dst.data, src.data, (size_t)dst.count * dtype_size(dst.dtype)), op);
  return info.Env().Undefined();
}

Napi::Value JS_copyToHost(const Napi::CallbackInfo& info) {
  const char* op = "copyToHost";
  Buf src = arg_device(info, 1, op, "src");
  Buf dst = arg_host(info, 0, op, "dst", src.dtype, src.count);
  check_cuda(cuda::copy_to_host(dst.data, src.data, (size_t)src.count * dtype_size(src.dtype)), op);
  return info.Env().Undefined();
}

Napi::Value JS_copyDeviceToDevice(const Napi::CallbackInfo& info) {
  const char* op = "copyDeviceToDevice";
  Buf dst = arg_device(info, 0, op, "dst");
  Buf src = arg_device(info, 1, op, "src");
  if (src.dtype != dst.dtype)
    fail(ErrKind::DType, op, ": src must be ", dtype_name(dst.dtype), " like dst, got ", dtype_name(src.dtype));
  if (src.count != dst.count) fail(ErrKind::Shape, op, ": src must have ", dst.count, " elements like dst, got ", src.count);
  if (src.data != dst.data)
    check_cuda(cuda::copy_device_to_device(dst.data, src.data, (size_t)dst.count * dtype_size(dst.dtype)), op);
  return info.Env().Undefined();
}

// f32 -> bf16 bits, round to nearest even, NaN kept quiet (the same rule as lib/tensor.ts f32ToBf16).
uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

Napi::Value JS_deviceFill(const Napi::CallbackInfo& info) {
  const char* op = "deviceFill";
  Buf dst = arg_device(info, 0, op, "dst");
  uint64_t pattern = 0;
  switch (dst.dtype) {
    case DType::F32: {
      float f = (float)arg_num(info, 1, op, "value");
      uint32_t u;
      std::memcpy(&u, &f, 4);
      pattern = u;
      break;
    }
    case DType::BF16: pattern = to_bf16((float)arg_num(info, 1, op, "value")); break;
    case DType::I32: pattern = (uint32_t)(int32_t)arg_int(info, 1, op, "value", INT32_MIN, INT32_MAX); break;
    case DType::I64: pattern = (uint64_t)arg_int(info, 1, op, "value", INT64_MIN, INT64_MAX); break;
    default: pattern = (uint64_t)arg_int(info, 1, op, "value", 0, 255); break;
  }
  check_cuda(cuda::device_fill(dst.data, dst.count, (int)dtype_size(dst.dtype), pattern), op);
  return info.Env().Undefined();
}

Napi::Value JS_deviceSynchronize(const Napi::CallbackInfo& info) {
  check_cuda(cuda::device_synchronize(), "deviceSynchronize");
  return info.Env().Undefined();
}

Napi::Value JS_deviceMemory(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("allocatedBytes", (double)g_allocated_bytes.load());
  o.Set("liveBuffers", (double)g_live_buffers.load());
  return o;
}

Napi::Value JS_probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cuda::ProbeInfo p;
  cuda::Status s = cuda::probe(&p);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", s.ok());
  o.Set("flavor", "cuda");
  if (!s.ok()) o.Set("error", s.message);
  o.Set("deviceCount", p.device_count);
  o.Set("driverVersion", p.driver_version);
  o.Set("runtimeVersion", p.runtime_version);
  Napi::Array devs = Napi::Array::New(env, p.devices.size());
  for (size_t d = 0; d < p.devices.size(); ++d) {
    const cuda::DeviceProps& dp = p.devices[d];
    Napi::Object od = Napi::Object::New(env);
    od.Set("name", dp.name);
    od.Set("computeCapability", cat(dp.major, ".", dp.minor));
    od.Set("totalMemory", (double)dp.total_memory);
    od.Set("multiprocessors", dp.sm_count);
    od.Set("clockKHz", dp.clock_khz);
    devs.Set((uint32_t)d, od);
  }
  o.Set("devices", devs);
  o.Set("archs", p.archs);
  return o;
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit([] { g_process_exiting = true; }); });
  {
    auto* ref = new Napi::FunctionReference(Napi::Persistent(DeviceBuffer::define(env)));
    std::lock_guard<std::mutex> lock(g_ctor_mutex);
    g_ctors[(napi_env)env] = ref;
  }
  env.AddCleanupHook([env]() {
    std::lock_guard<std::mutex> lock(g_ctor_mutex);
    auto it = g_ctors.find((napi_env)env);
    if (it == g_ctors.end()) return;
    delete it->second;
    g_ctors.erase(it);
  });
  device_buffer_unwrap = &unwrap_hook;
  def(env, exports, "deviceAlloc", JS_deviceAlloc);
  def(env, exports, "copyToDevice", JS_copyToDevice);
  def(env, exports, "copyToHost", JS_copyToHost);
  def(env, exports, "copyDeviceToDevice", JS_copyDeviceToDevice);
  def(env, exports, "deviceFill", JS_deviceFill);
  def(env, exports, "deviceSynchronize", JS_deviceSynchronize);
  def(env, exports, "deviceMemory", JS_deviceMemory);
  def(env, exports, "probe", JS_probe);
});

}  // namespace

Buf arg_device(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  Buf b;
  if (unwrap_hook(v, &b, op, name)) return b;
  if (v.IsTypedArray())
    fail(ErrKind::Device, op, ": ", name, " must be a DeviceBuffer, got a host typed array");
  fail(ErrKind::Type, op, ": ", name, " must be a DeviceBuffer");
}

}  // namespace napi
}  // namespace sffn
#endif  // SFFN_WITH_CUDA
