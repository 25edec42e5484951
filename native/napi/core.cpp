// Core exports: build flavor, CPU features, ISA and thread control, and the probe the loader calls.
#include "common.h"
#include "sffn/core.h"

namespace sffn {
namespace napi {
namespace {

#ifdef SFFN_WITH_CUDA
constexpr const char* kFlavor = "cuda";
#else
constexpr const char* kFlavor = "cpu";
#endif

Napi::Value JS_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures& f = cpu_features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("flavor", kFlavor);
  Napi::Object feats = Napi::Object::New(env);
  auto put = [&](const char* k, bool v) { feats.Set(k, v); };
  put("sse4.2", f.sse42);
  put("avx", f.avx);
  put("avx2", f.avx2);
  put("fma", f.fma);
  put("f16c", f.f16c);
  put("avx512f", f.avx512f);
  put("avx512bw", f.avx512bw);
  put("avx512dq", f.avx512dq);
  put("avx512vl", f.avx512vl);
  put("avx512bf16", f.avx512bf16);
  put("avx512vnni", f.avx512vnni);
  o.Set("cpuFeatures", feats);
  o.Set("isa", isa_name(active_isa()));
  o.Set("bestIsa", isa_name(best_isa()));
  o.Set("threads", num_threads());
  o.Set("physicalCores", physical_cores());
  o.Set("napiVersion", NAPI_VERSION);
  o.Set("compiler", cat("g++ ", __VERSION__));
  return o;
}

Napi::Value JS_setNumThreads(const Napi::CallbackInfo& info) {
  set_num_threads((int)arg_int(info, 0, "setNumThreads", "n", 1, 256));
  return info.Env().Undefined();
}

Napi::Value JS_getNumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), num_threads()); }

Napi::Value JS_setIsa(const Napi::CallbackInfo& info) {
  const Isa isa = arg_isa(info, 0, "setIsa");
  if (!set_isa(isa))
    fail(ErrKind::Backend, "setIsa: this CPU cannot run ", isa_name(isa), " (best available: ", isa_name(best_isa()), ")");
  return info.Env().Undefined();
}

// alignOffset(buffer: ArrayBuffer, align) → the bytes to skip from the buffer's start so that what follows is
// aligned to `align` (a power of two up to 4096). JS cannot see addresses, and V8 places large ArrayBuffers
// 16 bytes past a page boundary (the allocator's header), so without this every 1 KiB row of a table spans 17
// cache lines and every 64-byte vector load splits across two (tensor.ts allocHost).
Napi::Value JS_alignOffset(const Napi::CallbackInfo& info) {
  const char* op = "alignOffset";
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) fail(ErrKind::Type, op, ": buffer must be an ArrayBuffer");
  const int64_t align = arg_int(info, 1, op, "align", 1, 4096);
  if ((align & (align - 1)) != 0) fail(ErrKind::Range, op, ": align must be a power of two, got ", align);
  return Napi::Number::New(info.Env(), (double)align_offset(info[0].As<Napi::ArrayBuffer>().Data(), (size_t)align));
}

#ifndef SFFN_WITH_CUDA
// The CPU flavor always passes its probe; the CUDA flavor defines probe() in device_buffer.cpp.
Napi::Value JS_probe(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("ok", true);
  o.Set("flavor", kFlavor);
  return o;
}
#endif

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "info", JS_info);
  def(env, exports, "setNumThreads", JS_setNumThreads);
  def(env, exports, "getNumThreads", JS_getNumThreads);
  def(env, exports, "setIsa", JS_setIsa);
  def(env, exports, "alignOffset", JS_alignOffset);
#ifndef SFFN_WITH_CUDA
  def(env, exports, "probe", JS_probe);
#endif
});

}  // namespace
}  // namespace napi
}  // namespace sffn
