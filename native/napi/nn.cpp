// N-API group "nn": the Transformer ops (linear, embedding, layer norm, attention, cross-entropy, dropout, gradient
// norm). Every argument is validated here (typed-array kinds, exact lengths from the dims, dim ranges, ids and
// targets in range) before a kernel runs. Kernels: sffn/nn.h. JS names match lib/ops/nn.ts.
#include <cmath>
#include <limits>

#include "common.h"
#include "sffn/nn.h"
#ifdef SFFN_WITH_CUDA
#include "cuda_util.h"
#include "sffn/cuda.h"
#endif

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxDim = (int64_t)1 << 40;

// CUDA flavor: every buffer of the call on the device runs the CUDA kernel (sffn/cuda.h), which cannot check ids
// or targets that live on the device (out of range: NaN rows, skipped by the backward; see nn_kernels.cuh).
using Bufs = std::initializer_list<std::pair<const char*, const Buf*>>;
#ifdef SFFN_WITH_CUDA
#define SFFN_DEVICE_BRANCH(bufs, call)                                                   \
  if (same_device(op, bufs)) {                                                           \
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu"); \
    check_cuda(call, op);                                                                \
    return info.Env().Undefined();                                                       \
  }
#else
#define SFFN_DEVICE_BRANCH(bufs, call)
#endif

int64_t prod(const char* op, const char* what, int64_t a, int64_t b) {
  if (a != 0 && b > kMaxDim / a) fail(ErrKind::Range, op, ": ", what, " = ", a, "·", b, " is too large");
  return a * b;
}

void check_ids(const char* op, const char* name, const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V)
      fail(ErrKind::Range, op, ": ", name, "[", i, "] must be in [0, ", V, "), got ", ids[i]);
}

// linear(x, w, b|null, y, T, K, N, ref?)
Napi::Value JS_linear(const Napi::CallbackInfo& info) {
  const char* op = "linear";
  int64_t T = arg_int(info, 4, op, "T", 0, kMaxDim), K = arg_int(info, 5, op, "K", 1, kMaxDim),
          N = arg_int(info, 6, op, "N", 1, kMaxDim);
  bool ref = opt_ref(info, 7, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, prod(op, "T·K", T, K));
  Buf w = arg_buf(info, 1, op, "w", DType::F32, prod(op, "N·K", N, K));
  Buf b = arg_buf_opt(info, 2, op, "b", DType::F32, N);
  Buf y = arg_buf(info, 3, op, "y", DType::F32, prod(op, "T·N", T, N));
  SFFN_DEVICE_BRANCH((Bufs{{"x", &x}, {"w", &w}, {"b", &b}, {"y", &y}}),
                     cuda::linear_forward(T, K, N, x.as<float>(), w.as<float>(), b.as<float>(), y.as<float>()))
  host_only(op, {{"x", &x}, {"w", &w}, {"b", &b}, {"y", &y}});
  (ref ? linear_forward_ref : linear_forward)(T, K, N, x.as<float>(), w.as<float>(), b.as<float>(), y.as<float>());
  return info.Env().Undefined();
}

// linearBackward(x, w, dy, dx|null, dw|null, db|null, T, K, N, ref?)
Napi::Value JS_linearBackward(const Napi::CallbackInfo& info) {
  const char* op = "linearBackward";
  int64_t T = arg_int(info, 6, op, "T", 0, kMaxDim), K = arg_int(info, 7, op, "K", 1, kMaxDim),
          N = arg_int(info, 8, op, "N", 1, kMaxDim);
  bool ref = opt_ref(info, 9, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, prod(op, "T·K", T, K));
  Buf w = arg_buf(info, 1, op, "w", DType::F32, prod(op, "N·K", N, K));
  Buf dy = arg_buf(info, 2, op, "dy", DType::F32, prod(op, "T·N", T, N));
  Buf dx = arg_buf_opt(info, 3, op, "dx", DType::F32, T * K);
  Buf dw = arg_buf_opt(info, 4, op, "dw", DType::F32, N * K);
  Buf db = arg_buf_opt(info, 5, op, "db", DType::F32, N);
  SFFN_DEVICE_BRANCH((Bufs{{"x", &x}, {"w", &w}, {"dy", &dy}, {"dx", &dx}, {"dw", &dw}, {"db", &db}}),
                     cuda::linear_backward(T, K, N, x.as<float>(), w.as<float>(), dy.as<float>(), dx.as<float>(),
                                           dw.as<float>(), db.as<float>()))
  host_only(op, {{"x", &x}, {"w", &w}, {"dy", &dy}, {"dx", &dx}, {"dw", &dw}, {"db", &db}});
  (ref ? linear_backward_ref : linear_backward)(T, K, N, x.as<float>(), w.as<float>(), dy.as<float>(), dx.as<float>(),
                                                dw.as<float>(), db.as<float>());
  return info.Env().Undefined();
}

// embedding(ids, w, y, T, V, D, ref?)
Napi::Value JS_embedding(const Napi::CallbackInfo& info) {
  const char* op = "embedding";
  int64_t T = arg_int(info, 3, op, "T", 0, kMaxDim), V = arg_int(info, 4, op, "V", 1, std::numeric_limits<int32_t>::max()),
          D = arg_int(info, 5, op, "D", 1, kMaxDim);
  bool ref = opt_ref(info, 6, op);
  Buf ids = arg_buf(info, 0, op, "ids", DType::I32, T);
  Buf w = arg_buf(info, 1, op, "w", DType::F32, prod(op, "V·D", V, D));
  Buf y = arg_buf(info, 2, op, "y", DType::F32, prod(op, "T·D", T, D));
  SFFN_DEVICE_BRANCH((Bufs{{"ids", &ids}, {"w", &w}, {"y", &y}}),
                     cuda::embedding_forward(T, V, D, ids.as<int32_t>(), w.as<float>(), y.as<float>()))
  host_only(op, {{"ids", &ids}, {"w", &w}, {"y", &y}});
  check_ids(op, "ids", ids.as<int32_t>(), T, V);
  (ref ? embedding_forward_ref : embedding_forward)(T, V, D, ids.as<int32_t>(), w.as<float>(), y.as<float>());
  return info.Env().Undefined();
}

// embeddingBackward(ids, dy, dw, T, V, D, ref?)
Napi::Value JS_embeddingBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBackward";
  int64_t T = arg_int(info, 3, op, "T", 0, kMaxDim), V = arg_int(info, 4, op, "V", 1, std::numeric_limits<int32_t>::max()),
          D = arg_int(info, 5, op, "D", 1, kMaxDim);
  bool ref = opt_ref(info, 6, op);
  Buf ids = arg_buf(info, 0, op, "ids", DType::I32, T);
  Buf dy = arg_buf(info, 1, op, "dy", DType::F32, prod(op, "T·D", T, D));
  Buf dw = arg_buf(info, 2, op, "dw", DType::F32, prod(op, "V·D", V, D));
  SFFN_DEVICE_BRANCH((Bufs{{"ids", &ids}, {"dy", &dy}, {"dw", &dw}}),
                     cuda::embedding_backward(T, V, D, ids.as<int32_t>(), dy.as<float>(), dw.as<float>()))
  host_only(op, {{"ids", &ids}, {"dy", &dy}, {"dw", &dw}});
  check_ids(op, "ids", ids.as<int32_t>(), T, V);
  (ref ? embedding_backward_ref : embedding_backward)(T, V, D, ids.as<int32_t>(), dy.as<float>(), dw.as<float>());
  return info.Env().Undefined();
}

// layerNorm(x, g, b, y, mean, rstd, T, D, eps, ref?)
Napi::Value JS_layerNorm(const Napi::CallbackInfo& info) {
  const char* op = "layerNorm";
  int64_t T = arg_int(info, 6, op, "T", 0, kMaxDim), D = arg_int(info, 7, op, "D", 1, kMaxDim);
  double eps = arg_num(info, 8, op, "eps");
  if (!(eps > 0) || !std::isfinite(eps)) fail(ErrKind::Range, op, ": eps must be a finite number > 0, got ", eps);
  bool ref = opt_ref(info, 9, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, prod(op, "T·D", T, D));
  Buf g = arg_buf(info, 1, op, "g", DType::F32, D);
  Buf b = arg_buf(info, 2, op, "b", DType::F32, D);
  Buf y = arg_buf(info, 3, op, "y", DType::F32, T * D);
  Buf mean = arg_buf(info, 4, op, "mean", DType::F32, T);
  Buf rstd = arg_buf(info, 5, op, "rstd", DType::F32, T);
  SFFN_DEVICE_BRANCH((Bufs{{"x", &x}, {"g", &g}, {"b", &b}, {"y", &y}, {"mean", &mean}, {"rstd", &rstd}}),
                     cuda::layer_norm_forward(T, D, (float)eps, x.as<float>(), g.as<float>(), b.as<float>(),
                                              y.as<float>(), mean.as<float>(), rstd.as<float>()))
  host_only(op, {{"x", &x}, {"g", &g}, {"b", &b}, {"y", &y}, {"mean", &mean}, {"rstd", &rstd}});
  (ref ? layer_norm_forward_ref : layer_norm_forward)(T, D, (float)eps, x.as<float>(), g.as<float>(), b.as<float>(),
                                                      y.as<float>(), mean.as<float>(), rstd.as<float>());
  return info.Env().Undefined();
}

// layerNormBackward(x, g, mean, rstd, dy, dx, dg, db, T, D, ref?)
Napi::Value JS_layerNormBackward(const Napi::CallbackInfo& info) {
  const char* op = "layerNormBackward";
  int64_t T = arg_int(info, 8, op, "T", 0, kMaxDim), D = arg_int(info, 9, op, "D", 1, kMaxDim);
  bool ref = opt_ref(info, 10, op);
  int64_t TD = prod(op, "T·D", T, D);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, TD);
  Buf g = arg_buf(info, 1, op, "g", DType::F32, D);
  Buf mean = arg_buf(info, 2, op, "mean", DType::F32, T);
  Buf rstd = arg_buf(info, 3, op, "rstd", DType::F32, T);
  Buf dy = arg_buf(info, 4, op, "dy", DType::F32, TD);
  Buf dx = arg_buf(info, 5, op, "dx", DType::F32, TD);
  Buf dg = arg_buf(info, 6, op, "dg", DType::F32, D);
  Buf db = arg_buf(info, 7, op, "db", DType::F32, D);
  SFFN_DEVICE_BRANCH((Bufs{{"x", &x}, {"g", &g}, {"mean", &mean}, {"rstd", &rstd}, {"dy", &dy}, {"dx", &dx},
                           {"dg", &dg}, {"db", &db}}),
                     cuda::layer_norm_backward(T, D, x.as<float>(), g.as<float>(), mean.as<float>(),
                                               rstd.as<float>(), dy.as<float>(), dx.as<float>(), dg.as<float>(),
                                               db.as<float>()))
  host_only(op, {{"x", &x}, {"g", &g}, {"mean", &mean}, {"rstd", &rstd}, {"dy", &dy}, {"dx", &dx}, {"dg", &dg}, {"db", &db}});
  (ref ? layer_norm_backward_ref : layer_norm_backward)(T, D, x.as<float>(), g.as<float>(), mean.as<float>(),
                                                        rstd.as<float>(), dy.as<float>(), dx.as<float>(), dg.as<float>(),
                                                        db.as<float>());
  return info.Env().Undefined();
}

struct AttnDims {
  int64_t B, S, H, dh, T, D, L;  // L = B·H·S: the saved log-sum-exp (no S² tensor exists)
};

AttnDims attn_dims(const Napi::CallbackInfo& info, size_t i, const char* op) {
  AttnDims a;
  a.B = arg_int(info, i, op, "B", 0, kMaxDim);
  a.S = arg_int(info, i + 1, op, "S", 1, 1 << 20);
  a.H = arg_int(info, i + 2, op, "H", 1, 1 << 16);
  a.dh = arg_int(info, i + 3, op, "dh", 2, 1 << 16);
  if (a.dh % 2 != 0) fail(ErrKind::Range, op, ": the head width dh must be even (rotary pairs), got ", a.dh);
  a.T = prod(op, "B·S", a.B, a.S);
  a.D = a.H * a.dh;
  a.L = prod(op, "B·H·S", prod(op, "B·H", a.B, a.H), a.S);
  prod(op, "T·3D", a.T, 3 * a.D);
  return a;
}

// attention(qkv, out, qr, kr, lse, B, S, H, dh, ref?)
Napi::Value JS_attention(const Napi::CallbackInfo& info) {
  const char* op = "attention";
  AttnDims a = attn_dims(info, 5, op);
  bool ref = opt_ref(info, 9, op);
  Buf qkv = arg_buf(info, 0, op, "qkv", DType::F32, a.T * 3 * a.D);
  Buf out = arg_buf(info, 1, op, "out", DType::F32, a.T * a.D);
  Buf qr = arg_buf(info, 2, op, "qr", DType::F32, a.T * a.D);
  Buf kr = arg_buf(info, 3, op, "kr", DType::F32, a.T * a.D);
  Buf lse = arg_buf(info, 4, op, "lse", DType::F32, a.L);
  SFFN_DEVICE_BRANCH((Bufs{{"qkv", &qkv}, {"out", &out}, {"qr", &qr}, {"kr", &kr}, {"lse", &lse}}),
                     cuda::attention_forward(a.B, a.S, a.H, a.dh, qkv.as<float>(), out.as<float>(), qr.as<float>(),
                                             kr.as<float>(), lse.as<float>()))
  host_only(op, {{"qkv", &qkv}, {"out", &out}, {"qr", &qr}, {"kr", &kr}, {"lse", &lse}});
  (ref ? attention_forward_ref : attention_forward)(a.B, a.S, a.H, a.dh, qkv.as<float>(), out.as<float>(), qr.as<float>(),
                                                    kr.as<float>(), lse.as<float>());
  return info.Env().Undefined();
}

// attentionBackward(qkv, out, qr, kr, lse, dout, dqkv, B, S, H, dh, ref?)
Napi::Value JS_attentionBackward(const Napi::CallbackInfo& info) {
  const char* op = "attentionBackward";
  AttnDims a = attn_dims(info, 7, op);
  bool ref = opt_ref(info, 11, op);
  Buf qkv = arg_buf(info, 0, op, "qkv", DType::F32, a.T * 3 * a.D);
  Buf out = arg_buf(info, 1, op, "out", DType::F32, a.T * a.D);
  Buf qr = arg_buf(info, 2, op, "qr", DType::F32, a.T * a.D);
  Buf kr = arg_buf(info, 3, op, "kr", DType::F32, a.T * a.D);
  Buf lse = arg_buf(info, 4, op, "lse", DType::F32, a.L);
  Buf dout = arg_buf(info, 5, op, "dout", DType::F32, a.T * a.D);
  Buf dqkv = arg_buf(info, 6, op, "dqkv", DType::F32, a.T * 3 * a.D);
  SFFN_DEVICE_BRANCH((Bufs{{"qkv", &qkv}, {"out", &out}, {"qr", &qr}, {"kr", &kr}, {"lse", &lse}, {"dout", &dout},
                           {"dqkv", &dqkv}}),
                     cuda::attention_backward(a.B, a.S, a.H, a.dh, qkv.as<float>(), out.as<float>(), qr.as<float>(),
                                              kr.as<float>(), lse.as<float>(), dout.as<float>(), dqkv.as<float>()))
  host_only(op, {{"qkv", &qkv}, {"out", &out}, {"qr", &qr}, {"kr", &kr}, {"lse", &lse}, {"dout", &dout}, {"dqkv", &dqkv}});
  (ref ? attention_backward_ref : attention_backward)(a.B, a.S, a.H, a.dh, qkv.as<float>(), out.as<float>(),
                                                      qr.as<float>(), kr.as<float>(), lse.as<float>(), dout.as<float>(),
                                                      dqkv.as<float>());
  return info.Env().Undefined();
}

// crossEntropy(logits, y, lse, T, V, ref?) → mean loss
Napi::Value JS_crossEntropy(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropy";
  int64_t T = arg_int(info, 3, op, "T", 0, kMaxDim), V = arg_int(info, 4, op, "V", 1, std::numeric_limits<int32_t>::max());
  bool ref = opt_ref(info, 5, op);
  Buf logits = arg_buf(info, 0, op, "logits", DType::F32, prod(op, "T·V", T, V));
  Buf y = arg_buf(info, 1, op, "targets", DType::I32, T);
  Buf lse = arg_buf(info, 2, op, "lse", DType::F32, T);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"logits", &logits}, {"targets", &y}, {"lse", &lse}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    double l = 0;
    check_cuda(cuda::cross_entropy_forward(T, V, logits.as<float>(), y.as<int32_t>(), lse.as<float>(), &l), op);
    return Napi::Number::New(info.Env(), l);
  }
#endif
  host_only(op, {{"logits", &logits}, {"targets", &y}, {"lse", &lse}});
  check_ids(op, "targets", y.as<int32_t>(), T, V);
  double l = (ref ? cross_entropy_forward_ref : cross_entropy_forward)(T, V, logits.as<float>(), y.as<int32_t>(),
                                                                       lse.as<float>());
  return Napi::Number::New(info.Env(), l);
}

// crossEntropyBackward(logits, y, lse, dlogits, T, V, dloss, ref?)
Napi::Value JS_crossEntropyBackward(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropyBackward";
  int64_t T = arg_int(info, 4, op, "T", 0, kMaxDim), V = arg_int(info, 5, op, "V", 1, std::numeric_limits<int32_t>::max());
  double dloss = arg_num(info, 6, op, "dloss");
  bool ref = opt_ref(info, 7, op);
  int64_t TV = prod(op, "T·V", T, V);
  Buf logits = arg_buf(info, 0, op, "logits", DType::F32, TV);
  Buf y = arg_buf(info, 1, op, "targets", DType::I32, T);
  Buf lse = arg_buf(info, 2, op, "lse", DType::F32, T);
  Buf dl = arg_buf(info, 3, op, "dlogits", DType::F32, TV);
  SFFN_DEVICE_BRANCH((Bufs{{"logits", &logits}, {"targets", &y}, {"lse", &lse}, {"dlogits", &dl}}),
                     cuda::cross_entropy_backward(T, V, logits.as<float>(), y.as<int32_t>(), lse.as<float>(),
                                                  (float)dloss, dl.as<float>()))
  host_only(op, {{"logits", &logits}, {"targets", &y}, {"lse", &lse}, {"dlogits", &dl}});
  check_ids(op, "targets", y.as<int32_t>(), T, V);
  (ref ? cross_entropy_backward_ref : cross_entropy_backward)(T, V, logits.as<float>(), y.as<int32_t>(), lse.as<float>(),
                                                              (float)dloss, dl.as<float>());
  return info.Env().Undefined();
}

// dropout(x, y, p, seed): y = x·mask/(1 − p); the same call maps dy to dx.
Napi::Value JS_dropout(const Napi::CallbackInfo& info) {
  const char* op = "dropout";
  Buf x = arg_buf(info, 0, op, "x", DType::F32);
  Buf y = arg_buf(info, 1, op, "y", DType::F32, x.count);
  double p = arg_num(info, 2, op, "p");
  if (!(p >= 0 && p < 1)) fail(ErrKind::Range, op, ": p must be in [0, 1), got ", p);
  int64_t seed = arg_int(info, 3, op, "seed", 0, ((int64_t)1 << 53));
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"x", &x}, {"y", &y}})) {
    check_cuda(cuda::dropout_apply(x.count, (float)p, (uint64_t)seed, x.as<float>(), y.as<float>()), op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"x", &x}, {"y", &y}});
  dropout_apply(x.count, (float)p, (uint64_t)seed, x.as<float>(), y.as<float>());
  return info.Env().Undefined();
}

// fillNormal(out, state, std): out[i] = Rng.normal()·std for the draws of a generator at `state` (an unsigned
// 32-bit integer), in parallel (layer initialisation of large tables, lib/nn/init.ts).
Napi::Value JS_fillNormal(const Napi::CallbackInfo& info) {
  const char* op = "fillNormal";
  Buf out = arg_buf(info, 0, op, "out", DType::F32);
  host_only(op, {{"out", &out}});
  const int64_t state = arg_int(info, 1, op, "state", 0, 0xffffffffll);
  const double std_dev = arg_num(info, 2, op, "std");
  if (!std::isfinite(std_dev)) fail(ErrKind::Range, op, ": std must be finite, got ", std_dev);
  fill_normal_mulberry(out.count, (uint32_t)state, std_dev, out.as<float>());
  return info.Env().Undefined();
}

// sumSquares(x) → Σ x² (double)
Napi::Value JS_sumSquares(const Napi::CallbackInfo& info) {
  const char* op = "sumSquares";
  Buf x = arg_buf(info, 0, op, "x", DType::F32);
#ifdef SFFN_WITH_CUDA
  if (x.device) {
    double r = 0;
    check_cuda(cuda::sum_squares(x.count, x.as<float>(), &r), op);
    return Napi::Number::New(info.Env(), r);
  }
#endif
  host_only(op, {{"x", &x}});
  return Napi::Number::New(info.Env(), sum_squares(x.count, x.as<float>()));
}

// scaleInPlace(x, s)
Napi::Value JS_scaleInPlace(const Napi::CallbackInfo& info) {
  const char* op = "scaleInPlace";
  Buf x = arg_buf(info, 0, op, "x", DType::F32);
  double s = arg_num(info, 1, op, "s");
  if (!std::isfinite(s)) fail(ErrKind::Range, op, ": s must be finite, got ", s);
#ifdef SFFN_WITH_CUDA
  if (x.device) {
    check_cuda(cuda::scale_inplace(x.count, (float)s, x.as<float>()), op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"x", &x}});
  scale_inplace(x.count, (float)s, x.as<float>());
  return info.Env().Undefined();
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "linear", JS_linear);
  def(env, exports, "linearBackward", JS_linearBackward);
  def(env, exports, "embedding", JS_embedding);
  def(env, exports, "embeddingBackward", JS_embeddingBackward);
  def(env, exports, "layerNorm", JS_layerNorm);
  def(env, exports, "layerNormBackward", JS_layerNormBackward);
  def(env, exports, "attention", JS_attention);
  def(env, exports, "attentionBackward", JS_attentionBackward);
  def(env, exports, "crossEntropy", JS_crossEntropy);
  def(env, exports, "crossEntropyBackward", JS_crossEntropyBackward);
  def(env, exports, "dropout", JS_dropout);
  def(env, exports, "fillNormal", JS_fillNormal);
  def(env, exports, "sumSquares", JS_sumSquares);
  def(env, exports, "scaleInPlace", JS_scaleInPlace);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
