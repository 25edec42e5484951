// CUDA flavor: device GEMM entry points and the GEMM benchmark hooks.
//
//   cudaGemmF32(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc[, batch, strideA, strideB, strideC])
//     A, B, C: f32 DeviceBuffers. C = alpha · op(A) · op(B) + beta · C (conventions of sffn/gemm.h).
//   cudaGemmBf16(same arguments): A and B bf16 DeviceBuffers, C an f32 DeviceBuffer; tensor cores, f32 accumulate.
//   cudaBenchGemm(dtype 'f32'|'bf16', M, N, K, warmup, iters) -> Float32Array of per-run milliseconds (CUDA events)
//   cudaPeakTflops(dtype 'f32'|'bf16') -> measured TFLOP/s of an FMA / mma.sync loop
// Test: test/gpu/gemm.test.ts. Benchmark: bench/gemm-cuda.ts.
#ifdef SFFN_WITH_CUDA
#include "common.h"
#include "cuda_util.h"
#include "sffn/cuda.h"

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxDim = (int64_t)1 << 40;

struct GemmArgs {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  Buf A, B, C;
  int64_t lda, ldb, ldc, batch, sa, sb, sc;
};

// Elements a batch of row-major rows×cols matrices with row stride ld and batch stride `stride` spans.
__int128 span(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  if (batch == 0 || rows == 0 || cols == 0) return 0;
  return (__int128)(batch - 1) * stride + (__int128)(rows - 1) * ld + cols;
}

void check_operand(const char* op, const char* name, const char* ldname, const Buf& b, int64_t rows, int64_t cols,
                   int64_t ld, int64_t batch, int64_t stride) {
  if (rows > 0 && cols > 0 && ld < cols)
    fail(ErrKind::Range, op, ": ", ldname, " must be >= ", cols, " (the stored row length of ", name, "), got ", ld);
  __int128 need = span(batch, stride, rows, cols, ld);
  if ((__int128)b.count < need)
    fail(ErrKind::Shape, op, ": ", name, " must have at least ", (int64_t)need, " elements for a ", rows, "x", cols,
         " matrix with ", ldname, "=", ld, batch > 1 ? cat(" in ", batch, " batches of stride ", stride) : std::string(),
         ", got ", b.count);
}

GemmArgs parse_gemm(const Napi::CallbackInfo& info, const char* op, DType ab) {
  GemmArgs g;
  g.ta = arg_bool(info, 0, op, "transA");
  g.tb = arg_bool(info, 1, op, "transB");
  g.M = arg_int(info, 2, op, "M", 0, kMaxDim);
  g.N = arg_int(info, 3, op, "N", 0, kMaxDim);
  g.K = arg_int(info, 4, op, "K", 0, kMaxDim);
  g.alpha = (float)arg_num(info, 5, op, "alpha");
  g.A = arg_buf(info, 6, op, "A", ab);
  g.lda = arg_int(info, 7, op, "lda", 1, kMaxDim);
  g.B = arg_buf(info, 8, op, "B", ab);
  g.ldb = arg_int(info, 9, op, "ldb", 1, kMaxDim);
  g.beta = (float)arg_num(info, 10, op, "beta");
  g.C = arg_buf(info, 11, op, "C", DType::F32);
  g.ldc = arg_int(info, 12, op, "ldc", 1, kMaxDim);
  const bool batched = info.Length() > 13 && !info[13].IsUndefined();
  g.batch = batched ? arg_int(info, 13, op, "batch", 0, kMaxDim) : 1;
  g.sa = batched ? arg_int(info, 14, op, "strideA", 0, kMaxDim) : 0;
  g.sb = batched ? arg_int(info, 15, op, "strideB", 0, kMaxDim) : 0;
  g.sc = batched ? arg_int(info, 16, op, "strideC", 0, kMaxDim) : 0;

  if (!same_device(op, {{"A", &g.A}, {"B", &g.B}, {"C", &g.C}}) && (g.A.data || g.B.data || g.C.data))
    fail(ErrKind::Device, op, ": A, B and C must be DeviceBuffers (cuda), got host arrays");
  check_operand(op, "A", "lda", g.A, g.ta ? g.K : g.M, g.ta ? g.M : g.K, g.lda, g.batch, g.sa);
  check_operand(op, "B", "ldb", g.B, g.tb ? g.N : g.K, g.tb ? g.K : g.N, g.ldb, g.batch, g.sb);
  check_operand(op, "C", "ldc", g.C, g.M, g.N, g.ldc, g.batch, g.sc);
  // Batches of C written by different blocks must not overlap (that would be a race, not just aliasing).
  if (g.batch > 1 && g.M > 0 && g.N > 0 && (__int128)g.sc < span(1, 0, g.M, g.N, g.ldc))
    fail(ErrKind::Range, op, ": strideC must be >= ", (int64_t)span(1, 0, g.M, g.N, g.ldc),
         " so that the C matrices of different batches do not overlap, got ", g.sc);
  return g;
}

Napi::Value JS_cudaGemmF32(const Napi::CallbackInfo& info) {
  const char* op = "cudaGemmF32";
  GemmArgs g = parse_gemm(info, op, DType::F32);
  check_cuda(cuda::gemm_f32(g.ta, g.tb, g.M, g.N, g.K, g.alpha, g.A.as<float>(), g.lda, g.B.as<float>(), g.ldb, g.beta,
                            g.C.as<float>(), g.ldc, g.batch, g.sa, g.sb, g.sc),
             op);
  return info.Env().Undefined();
}

Napi::Value JS_cudaGemmBf16(const Napi::CallbackInfo& info) {
  const char* op = "cudaGemmBf16";
  GemmArgs g = parse_gemm(info, op, DType::BF16);
  check_cuda(cuda::gemm_bf16(g.ta, g.tb, g.M, g.N, g.K, g.alpha, g.A.as<uint16_t>(), g.lda, g.B.as<uint16_t>(), g.ldb,
                             g.beta, g.C.as<float>(), g.ldc, g.batch, g.sa, g.sb, g.sc),
             op);
  return info.Env().Undefined();
}

int arg_gemm_dtype(const Napi::CallbackInfo& info, size_t i, const char* op) {
  std::string s = arg_str(info, i, op, "dtype");
  if (s == "f32") return 0;
  if (s == "bf16") return 1;
  fail(ErrKind::DType, op, ": dtype must be 'f32' or 'bf16', got '", s, "'");
}

Napi::Value JS_cudaBenchGemm(const Napi::CallbackInfo& info) {
  const char* op = "cudaBenchGemm";
  int dt = arg_gemm_dtype(info, 0, op);
  int64_t M = arg_int(info, 1, op, "M", 1, 1 << 16);
  int64_t N = arg_int(info, 2, op, "N", 1, 1 << 16);
  int64_t K = arg_int(info, 3, op, "K", 1, 1 << 16);
  int warmup = (int)arg_int(info, 4, op, "warmup", 0, 1000);
  int iters = (int)arg_int(info, 5, op, "iters", 1, 100000);
  Napi::Float32Array out = Napi::Float32Array::New(info.Env(), (size_t)iters);
  check_cuda(cuda::bench_gemm(dt, M, N, K, warmup, iters, out.Data()), op);
  return out;
}

Napi::Value JS_cudaPeakTflops(const Napi::CallbackInfo& info) {
  const char* op = "cudaPeakTflops";
  int dt = arg_gemm_dtype(info, 0, op);
  double tflops = 0;
  check_cuda(cuda::bench_peak(dt, &tflops), op);
  return Napi::Number::New(info.Env(), tflops);
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "cudaGemmF32", JS_cudaGemmF32);
  def(env, exports, "cudaGemmBf16", JS_cudaGemmBf16);
  def(env, exports, "cudaBenchGemm", JS_cudaBenchGemm);
  def(env, exports, "cudaPeakTflops", JS_cudaPeakTflops);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
#endif  // SFFN_WITH_CUDA
