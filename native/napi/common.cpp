// Argument guards, error translation and op registration shared by every napi/<group>.cpp.
#include "common.h"

#include <cmath>
#include <exception>
#include <new>

namespace sffn {
namespace napi {

bool (*device_buffer_unwrap)(Napi::Value v, Buf* out, const char* op, const char* name) = nullptr;

namespace {

struct Addon {
  Napi::FunctionReference classes[(int)ErrKind::Count];
};

Addon* addon(Napi::Env env) {
  Addon* a = env.GetInstanceData<Addon>();
  if (!a) {
    a = new Addon();
    env.SetInstanceData<Addon>(a);
  }
  return a;
}

const char* typed_array_name(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "TypedArray";
  }
}

napi_typedarray_type typed_array_for(DType dt) {
  switch (dt) {
    case DType::F32: return napi_float32_array;
    case DType::I32: return napi_int32_array;
    case DType::I64: return napi_bigint64_array;
    case DType::BF16: return napi_uint16_array;
    default: return napi_uint8_array;
  }
}

std::string describe(Napi::Value v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsTypedArray()) return typed_array_name(v.As<Napi::TypedArray>().TypedArrayType());
  if (v.IsArray()) return "Array";
  if (v.IsNumber()) return cat("number ", v.As<Napi::Number>().DoubleValue());
  if (v.IsString()) return "string";
  if (v.IsBoolean()) return "boolean";
  if (v.IsBigInt()) return "bigint";
  if (v.IsFunction()) return "function";
  return "object";
}

std::vector<Registrar::Fn>& registry() {
  static std::vector<Registrar::Fn> fns;
  return fns;
}

}  // namespace

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32: return "f32";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::BF16: return "bf16";
    default: return "u8";
  }
}

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::I64: return 8;
    case DType::BF16: return 2;
    case DType::U8: return 1;
    default: return 4;
  }
}

Buf arg_buf(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt) {
  Napi::Value v = info[i];
  Buf b;
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != typed_array_for(dt))
      fail(ErrKind::DType, op, ": ", name, " must be a ", typed_array_name(typed_array_for(dt)), " (", dtype_name(dt),
           "), got ", typed_array_name(ta.TypedArrayType()));
    b.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    b.count = (int64_t)ta.ElementLength();
    b.dtype = dt;
    return b;
  }
  if (device_buffer_unwrap && v.IsObject() && device_buffer_unwrap(v, &b, op, name)) {
    if (b.dtype != dt)
      fail(ErrKind::DType, op, ": ", name, " must be a ", dtype_name(dt), " device buffer, got ", dtype_name(b.dtype));
    return b;
  }
  fail(ErrKind::Type, op, ": ", name, " must be a ", typed_array_name(typed_array_for(dt)), ", got ", describe(v));
}

Buf arg_buf(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt, int64_t count) {
  Buf b = arg_buf(info, i, op, name, dt);
  if (b.count != count) fail(ErrKind::Shape, op, ": ", name, " must have ", count, " elements, got ", b.count);
  return b;
}

Buf arg_buf_opt(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, DType dt, int64_t count) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return Buf{};
  return arg_buf(info, i, op, name, dt, count);
}

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, int64_t lo, int64_t hi) {
  Napi::Value v = info[i];
  int64_t x;
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
      fail(ErrKind::Type, op, ": ", name, " must be an integer, got ", d);
    x = (int64_t)d;
  } else if (v.IsBigInt()) {
    bool lossless = true;
    x = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) fail(ErrKind::Range, op, ": ", name, " does not fit in 64 bits");
  } else {
    fail(ErrKind::Type, op, ": ", name, " must be an integer, got ", describe(v));
  }
  if (x < lo || x > hi) fail(ErrKind::Range, op, ": ", name, " must be in [", lo, ", ", hi, "], got ", x);
  return x;
}

double arg_num(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) fail(ErrKind::Type, op, ": ", name, " must be a number, got ", describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) fail(ErrKind::Range, op, ": ", name, " must be finite, got ", d);
  return d;
}

bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) fail(ErrKind::Type, op, ": ", name, " must be a boolean, got ", describe(v));
  return v.As<Napi::Boolean>().Value();
}

std::string arg_str(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsString()) fail(ErrKind::Type, op, ": ", name, " must be a string, got ", describe(v));
  return v.As<Napi::String>().Utf8Value();
}

std::vector<int64_t> arg_dims(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  Napi::Value v = info[i];
  std::vector<int64_t> dims;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto a = v.As<Napi::Int32Array>();
    for (size_t k = 0; k < a.ElementLength(); ++k) dims.push_back(a[k]);
  } else if (v.IsArray()) {
    auto a = v.As<Napi::Array>();
    for (uint32_t k = 0; k < a.Length(); ++k) {
      Napi::Value e = a.Get(k);
      if (!e.IsNumber()) fail(ErrKind::Type, op, ": ", name, "[", k, "] must be a number, got ", describe(e));
      double d = e.As<Napi::Number>().DoubleValue();
      if (d != std::floor(d)) fail(ErrKind::Shape, op, ": ", name, "[", k, "] must be an integer, got ", d);
      dims.push_back((int64_t)d);
    }
  } else {
    fail(ErrKind::Type, op, ": ", name, " must be an array of dims, got ", describe(v));
  }
  for (size_t k = 0; k < dims.size(); ++k)
    if (dims[k] < 0) fail(ErrKind::Shape, op, ": ", name, "[", k, "] must be >= 0, got ", dims[k]);
  return dims;
}

bool same_device(const char* op, std::initializer_list<std::pair<const char*, const Buf*>> bufs) {
  const char* first = nullptr;
  bool dev = false;
  for (auto& [name, b] : bufs) {
    if (!b->data) continue;
    if (!first) {
      first = name;
      dev = b->device;
    } else if (b->device != dev) {
      fail(ErrKind::Device, op, ": ", name, " is on ", b->device ? "cuda" : "cpu", " but ", first, " is on ",
           dev ? "cuda" : "cpu");
    }
  }
  return dev;
}

Napi::Error make_error(Napi::Env env, ErrKind kind, const std::string& message) {
  Addon* a = addon(env);
  Napi::FunctionReference& cls = a->classes[(int)kind];
  if (!cls.IsEmpty()) {
    Napi::Object obj = cls.New({Napi::String::New(env, message)});
    return Napi::Error(env, obj);
  }
  if (kind == ErrKind::Type || kind == ErrKind::DType) return Napi::TypeError::New(env, message);
  if (kind == ErrKind::Range || kind == ErrKind::Shape) return Napi::RangeError::New(env, message);
  return Napi::Error::New(env, message);
}

namespace {
// The JS side calls setErrorClasses({ TypeError, RangeError, ShapeError, DTypeError, DeviceError,
// DisposedError, BackendUnavailableError }) once after loading.
Napi::Value JS_setErrorClasses(const Napi::CallbackInfo& info) {
  static const char* keys[] = {"TypeError",   "RangeError",    "ShapeError",
                               "DTypeError",  "DeviceError",   "DisposedError",
                               "BackendUnavailableError"};
  if (!info[0].IsObject()) fail(ErrKind::Type, "setErrorClasses: classes must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  Addon* a = addon(info.Env());
  for (int k = 0; k < (int)ErrKind::Count; ++k) {
    Napi::Value c = o.Get(keys[k]);
    if (c.IsFunction()) a->classes[k] = Napi::Persistent(c.As<Napi::Function>());
  }
  return info.Env().Undefined();
}
Registrar reg_errors([](Napi::Env env, Napi::Object exports) { def(env, exports, "setErrorClasses", JS_setErrorClasses); });
}  // namespace

void def(Napi::Env env, Napi::Object exports, const char* name, JsFn fn) {
  exports.Set(name, Napi::Function::New(
                        env,
                        [fn](const Napi::CallbackInfo& info) -> Napi::Value {
                          try {
                            return fn(info);
                          } catch (const ArgError& e) {
                            throw make_error(info.Env(), e.kind, e.message);
                          } catch (const Napi::Error&) {
                            throw;
                          } catch (const std::bad_alloc&) {
                            throw make_error(info.Env(), ErrKind::Range, "out of memory");
                          } catch (const std::exception& e) {
                            throw Napi::Error::New(info.Env(), e.what());
                          }
                        },
                        name));
}

Registrar::Registrar(Fn fn) { registry().push_back(fn); }

void register_all(Napi::Env env, Napi::Object exports) {
  for (auto fn : registry()) fn(env, exports);
}

void host_only(const char* op, std::initializer_list<std::pair<const char*, const Buf*>> bufs) {
  for (auto& [name, b] : bufs)
    if (b->data && b->device) fail(ErrKind::Device, op, ": ", name, " is a cuda buffer; this op runs on the cpu");
}

bool opt_ref(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return false;
  return arg_bool(info, i, op, "ref");
}

}  // namespace napi
}  // namespace sffn
