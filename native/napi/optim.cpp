// Optimiser group: adamwStep ↔ adamw_step, sparseAdamwStep ↔ sparse_adamw_step (math in sffn/optim.h). Both update
// their buffers in place. A trailing `ref` boolean runs the reference (kernels/ref/adamw.cpp) for the tests.
#include "common.h"
#include "sffn/optim.h"
#ifdef SFFN_WITH_CUDA
#include "cuda_util.h"
#include "sffn/cuda.h"
#endif

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxI32 = 2147483647;

// Hyper-parameters (lr, beta1, beta2, eps, weightDecay) at positions i .. i+4.
AdamwHyper arg_hyper(const Napi::CallbackInfo& info, size_t i, const char* op) {
  AdamwHyper hp;
  hp.lr = (float)arg_num(info, i, op, "lr");
  hp.beta1 = (float)arg_num(info, i + 1, op, "beta1");
  hp.beta2 = (float)arg_num(info, i + 2, op, "beta2");
  hp.eps = (float)arg_num(info, i + 3, op, "eps");
  hp.weight_decay = (float)arg_num(info, i + 4, op, "weightDecay");
  if (hp.lr < 0) fail(ErrKind::Range, op, ": lr must be >= 0, got ", hp.lr);
  if (!(hp.beta1 >= 0 && hp.beta1 < 1)) fail(ErrKind::Range, op, ": beta1 must be in [0, 1), got ", hp.beta1);
  if (!(hp.beta2 >= 0 && hp.beta2 < 1)) fail(ErrKind::Range, op, ": beta2 must be in [0, 1), got ", hp.beta2);
  if (!(hp.eps > 0)) fail(ErrKind::Range, op, ": eps must be > 0, got ", hp.eps);
  if (hp.weight_decay < 0) fail(ErrKind::Range, op, ": weightDecay must be >= 0, got ", hp.weight_decay);
  return hp;
}

// adamwStep(p, g, m, v, lr, beta1, beta2, eps, weightDecay, step, ref?)
Napi::Value JS_adamwStep(const Napi::CallbackInfo& info) {
  const char* op = "adamwStep";
  Buf p = arg_buf(info, 0, op, "p", DType::F32);
  Buf g = arg_buf(info, 1, op, "g", DType::F32, p.count);
  Buf m = arg_buf(info, 2, op, "m", DType::F32, p.count);
  Buf v = arg_buf(info, 3, op, "v", DType::F32, p.count);
  AdamwHyper hp = arg_hyper(info, 4, op);
  const int64_t step = arg_int(info, 9, op, "step", 1, (int64_t)1 << 53);
  const bool ref = opt_ref(info, 10, op);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"p", &p}, {"g", &g}, {"m", &m}, {"v", &v}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    check_cuda(cuda::adamw_step(p.count, p.as<float>(), g.as<float>(), m.as<float>(), v.as<float>(), hp.lr, hp.beta1,
                                hp.beta2, hp.eps, hp.weight_decay, step),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"p", &p}, {"g", &g}, {"m", &m}, {"v", &v}});
  (ref ? adamw_step_ref : adamw_step)(p.count, p.as<float>(), g.as<float>(), m.as<float>(), v.as<float>(), hp, step);
  return info.Env().Undefined();
}

// sparseAdamwStep(p, m, v, steps, rows, g, N, D, lr, beta1, beta2, eps, weightDecay, ref?)
Napi::Value JS_sparseAdamwStep(const Napi::CallbackInfo& info) {
  const char* op = "sparseAdamwStep";
  const int64_t N = arg_int(info, 6, op, "N", 0, kMaxI32);
  const int64_t D = arg_int(info, 7, op, "D", 1, 1 << 24);
  AdamwHyper hp = arg_hyper(info, 8, op);
  const bool ref = opt_ref(info, 13, op);
  Buf p = arg_buf(info, 0, op, "p", DType::F32, N * D);
  Buf m = arg_buf(info, 1, op, "m", DType::F32, N * D);
  Buf v = arg_buf(info, 2, op, "v", DType::F32, N * D);
  Buf steps = arg_buf(info, 3, op, "steps", DType::I32, N);
  Buf rows = arg_buf(info, 4, op, "rows", DType::I32);
  const int64_t U = rows.count;
  Buf g = arg_buf(info, 5, op, "g", DType::F32, U * D);
#ifdef SFFN_WITH_CUDA
  // CUDA: rows live on the device and cannot be checked here; the kernel skips rows outside [0, N), and distinct
  // rows (what the backward ops return) are the caller's promise.
  if (same_device(op, {{"p", &p}, {"m", &m}, {"v", &v}, {"steps", &steps}, {"rows", &rows}, {"g", &g}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    check_cuda(cuda::sparse_adamw_step(N, D, p.as<float>(), m.as<float>(), v.as<float>(), steps.as<int32_t>(), U,
                                       rows.as<int32_t>(), g.as<float>(), hp.lr, hp.beta1, hp.beta2, hp.eps,
                                       hp.weight_decay),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"p", &p}, {"m", &m}, {"v", &v}, {"steps", &steps}, {"rows", &rows}, {"g", &g}});
  // Distinct rows are what make the row-parallel update race-free; ascending order is what backward ops return.
  const int32_t* r = rows.as<int32_t>();
  const int32_t* st = steps.as<int32_t>();
  for (int64_t u = 0; u < U; ++u) {
    if (r[u] < 0 || r[u] >= N) fail(ErrKind::Range, op, ": rows[", u, "] must be in [0, N=", N, "), got ", r[u]);
    if (u > 0 && r[u] <= r[u - 1])
      fail(ErrKind::Range, op, ": rows must be strictly ascending (unique), got rows[", u - 1, "]=", r[u - 1],
           ", rows[", u, "]=", r[u]);
    if (st[r[u]] < 0 || st[r[u]] == kMaxI32)
      fail(ErrKind::Range, op, ": steps[", r[u], "] must be in [0, 2^31-2], got ", st[r[u]]);
  }
  (ref ? sparse_adamw_step_ref : sparse_adamw_step)(N, D, p.as<float>(), m.as<float>(), v.as<float>(),
                                                    steps.as<int32_t>(), U, r, g.as<float>(), hp);
  return info.Env().Undefined();
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "adamwStep", JS_adamwStep);
  def(env, exports, "sparseAdamwStep", JS_sparseAdamwStep);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
