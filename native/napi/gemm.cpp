// GEMM exports: gemm / gemmRef (C = alpha·op(A)·op(B) + beta·C over strided batches of typed arrays),
// gemmBf16 (bf16 A and B, f32 accumulation and C), gemmRows (the gathered row-pointer GEMM, with rows given as
// element offsets), gemmBlocking and fmaPeak. In the CUDA flavor gemm and gemmBf16 also take DeviceBuffers
// (all three on the device) and run kernels/cuda/gemm.cu.
//
// Every element a call can touch is checked to lie inside its array before the kernel runs, and C may not
// overlap A or B, so no argument can make the kernel read or write out of bounds.
#include <cstring>
#include <vector>

#include "common.h"
#include "sffn/core.h"
#include "sffn/gemm.h"
#ifdef SFFN_WITH_CUDA
#include "cuda_util.h"
#include "sffn/cuda.h"
#endif

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxDim = (int64_t)1 << 40;

struct Extent {
  int64_t first = 0, last = -1;  // element range touched (empty when last < first)
};

// Elements touched by `batch` matrices of rows×cols with row stride ld and batch stride `stride`.
Extent extent(int64_t batch, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
  Extent e;
  if (batch == 0 || rows == 0 || cols == 0) return e;
  __int128 last = (__int128)(batch - 1) * stride + (__int128)(rows - 1) * ld + (cols - 1);
  e.first = 0;
  e.last = last > (__int128)INT64_MAX ? INT64_MAX : (int64_t)last;
  return e;
}

void check_inside(const char* op, const char* name, const Buf& b, const Extent& e, const char* how) {
  if (e.last >= b.count)
    fail(ErrKind::Shape, op, ": ", name, " has ", b.count, " elements but ", how, " reach element ", e.last);
}

bool overlaps(const Buf& x, const Extent& ex, const Buf& y, const Extent& ey) {
  if (ex.last < ex.first || ey.last < ey.first) return false;
  const int64_t sx = (int64_t)dtype_size(x.dtype), sy = (int64_t)dtype_size(y.dtype);
  const char* x0 = static_cast<const char*>(x.data) + ex.first * sx;
  const char* x1 = static_cast<const char*>(x.data) + (ex.last + 1) * sx;
  const char* y0 = static_cast<const char*>(y.data) + ey.first * sy;
  const char* y1 = static_cast<const char*>(y.data) + (ey.last + 1) * sy;
  return x0 < y1 && y0 < x1;
}

// bf16 bit patterns -> f32 (exact), for the host path of gemmBf16.
std::vector<float> widen_bf16(const Buf& b, const Extent& e) {
  std::vector<float> out((size_t)(e.last + 1));
  const uint16_t* src = b.as<uint16_t>();
  for (int64_t i = 0; i <= e.last; ++i) {
    uint32_t u = (uint32_t)src[i] << 16;
    std::memcpy(&out[(size_t)i], &u, 4);
  }
  return out;
}

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                        float, float*, int64_t, int64_t, int64_t, int64_t, int64_t);

// gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, strideA, strideB, strideC)
// ab: the dtype of A and B (f32, or bf16 for gemmBf16); C is always f32. on_device: whether DeviceBuffers may
// be passed (the CUDA flavor's gemm and gemmBf16; never the reference).
Napi::Value run_gemm(const Napi::CallbackInfo& info, const char* op, GemmFn fn, DType ab = DType::F32,
                     bool on_device = true) {
  if (info.Length() < 17) fail(ErrKind::Type, op, ": expected 17 arguments, got ", info.Length());
  bool ta = arg_bool(info, 0, op, "transA");
  bool tb = arg_bool(info, 1, op, "transB");
  int64_t M = arg_int(info, 2, op, "M", 0, kMaxDim);
  int64_t N = arg_int(info, 3, op, "N", 0, kMaxDim);
  int64_t K = arg_int(info, 4, op, "K", 0, kMaxDim);
  double alpha = arg_num(info, 5, op, "alpha");
  Buf A = arg_buf(info, 6, op, "A", ab);
  int64_t lda = arg_int(info, 7, op, "lda", 0, kMaxDim);
  Buf B = arg_buf(info, 8, op, "B", ab);
  int64_t ldb = arg_int(info, 9, op, "ldb", 0, kMaxDim);
  double beta = arg_num(info, 10, op, "beta");
  Buf C = arg_buf(info, 11, op, "C", DType::F32);
  int64_t ldc = arg_int(info, 12, op, "ldc", 0, kMaxDim);
  int64_t batch = arg_int(info, 13, op, "batch", 0, kMaxDim);
  int64_t sa = arg_int(info, 14, op, "strideA", 0, kMaxDim);
  int64_t sb = arg_int(info, 15, op, "strideB", 0, kMaxDim);
  int64_t sc = arg_int(info, 16, op, "strideC", 0, kMaxDim);

  // Stored shapes: A is M×K (K×M when transposed), B is K×N (N×K), C is M×N.
  int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  if (lda < a_cols) fail(ErrKind::Shape, op, ": lda must be >= ", ta ? "M=" : "K=", a_cols, ", got ", lda);
  if (ldb < b_cols) fail(ErrKind::Shape, op, ": ldb must be >= ", tb ? "K=" : "N=", b_cols, ", got ", ldb);
  if (ldc < N) fail(ErrKind::Shape, op, ": ldc must be >= N=", N, ", got ", ldc);

  bool dev = same_device(op, {{"A", &A}, {"B", &B}, {"C", &C}});
  if (dev && !on_device) fail(ErrKind::Device, op, ": runs on the CPU only; A, B and C must be host arrays");

  // A and B are only read when there is something to accumulate; C is touched whenever M, N > 0.
  bool reads_ab = K > 0 && alpha != 0.0 && M > 0 && N > 0;
  Extent ea = reads_ab ? extent(batch, a_rows, a_cols, lda, sa) : Extent{};
  Extent eb = reads_ab ? extent(batch, b_rows, b_cols, ldb, sb) : Extent{};
  Extent ec = extent(batch, M, N, ldc, sc);
  check_inside(op, "A", A, ea, "M, K, lda, batch and strideA");
  check_inside(op, "B", B, eb, "K, N, ldb, batch and strideB");
  check_inside(op, "C", C, ec, "M, N, ldc, batch and strideC");
  if (overlaps(C, ec, A, ea)) fail(ErrKind::Range, op, ": C must not overlap A");
  if (overlaps(C, ec, B, eb)) fail(ErrKind::Range, op, ": C must not overlap B");

  if (dev) {
#ifdef SFFN_WITH_CUDA
    // Same contract on the GPU. When A and B are not read (K = 0 or alpha = 0) the kernel gets K = 0, so it
    // never touches them either: C = beta·C.
    const int64_t k = reads_ab ? K : 0;
    check_cuda(ab == DType::BF16
                   ? cuda::gemm_bf16(ta, tb, M, N, k, (float)alpha, A.as<uint16_t>(), lda, B.as<uint16_t>(), ldb,
                                     (float)beta, C.as<float>(), ldc, batch, sa, sb, sc)
                   : cuda::gemm_f32(ta, tb, M, N, k, (float)alpha, A.as<float>(), lda, B.as<float>(), ldb,
                                    (float)beta, C.as<float>(), ldc, batch, sa, sb, sc),
               op);
    return info.Env().Undefined();
#else
    fail(ErrKind::Device, op, ": device buffers need the CUDA flavor");
#endif
  }

  if (ab == DType::BF16) {
    // Host bf16: widen the touched range of A and B to f32 (exact) and run the f32 GEMM.
    std::vector<float> a32 = reads_ab ? widen_bf16(A, ea) : std::vector<float>(1);
    std::vector<float> b32 = reads_ab ? widen_bf16(B, eb) : std::vector<float>(1);
    fn(ta, tb, M, N, K, (float)alpha, a32.data(), lda, b32.data(), ldb, (float)beta, C.as<float>(), ldc, batch, sa,
       sb, sc);
    return info.Env().Undefined();
  }
  fn(ta, tb, M, N, K, (float)alpha, A.as<float>(), lda, B.as<float>(), ldb, (float)beta, C.as<float>(), ldc, batch, sa,
     sb, sc);
  return info.Env().Undefined();
}

void gemm_fast(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t sa, int64_t sb,
               int64_t sc) {
  gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
}
void gemm_reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t sa,
                    int64_t sb, int64_t sc) {
  gemm_f32_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
}

Napi::Value JS_gemm(const Napi::CallbackInfo& info) { return run_gemm(info, "gemm", gemm_fast); }
Napi::Value JS_gemmRef(const Napi::CallbackInfo& info) {
  return run_gemm(info, "gemmRef", gemm_reference, DType::F32, false);
}
// gemmBf16: the gemm contract with bf16 A and B (Uint16Array bit patterns or bf16 DeviceBuffers), f32 C.
Napi::Value JS_gemmBf16(const Napi::CallbackInfo& info) { return run_gemm(info, "gemmBf16", gemm_fast, DType::BF16); }

// Row-offset table: `count` Int32 element offsets into an array of `total` elements, rows of `width`.
template <class T>
std::vector<T*> row_table(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, int64_t count,
                          int64_t width, const Buf& data, bool used) {
  Buf idx = arg_buf(info, i, op, name, DType::I32, count);
  std::vector<T*> rows((size_t)count);
  const int32_t* off = idx.as<int32_t>();
  for (int64_t r = 0; r < count; ++r) {
    if (used && width > 0 && (off[r] < 0 || (int64_t)off[r] + width > data.count))
      fail(ErrKind::Range, op, ": ", name, "[", r, "] = ", off[r], " puts a row of ", width,
           " elements outside an array of ", data.count);
    rows[(size_t)r] = static_cast<T*>(data.data) + (used ? off[r] : 0);
  }
  return rows;
}

// gemmRows(aTrans, bTrans, M, N, K, alpha, A, aRows, B, bRows, beta, C, cRows): sffn::gemm_f32_rows with the
// row pointers given as element offsets (aRows: M entries, or K when aTrans; bRows: K, or N when bTrans;
// cRows: M). Exposes the gathered GEMM to tests and benchmarks.
Napi::Value JS_gemmRows(const Napi::CallbackInfo& info) {
  const char* op = "gemmRows";
  if (info.Length() < 13) fail(ErrKind::Type, op, ": expected 13 arguments, got ", info.Length());
  bool ta = arg_bool(info, 0, op, "aTrans");
  bool tb = arg_bool(info, 1, op, "bTrans");
  int64_t M = arg_int(info, 2, op, "M", 0, kMaxDim);
  int64_t N = arg_int(info, 3, op, "N", 0, kMaxDim);
  int64_t K = arg_int(info, 4, op, "K", 0, kMaxDim);
  double alpha = arg_num(info, 5, op, "alpha");
  Buf A = arg_buf(info, 6, op, "A", DType::F32);
  Buf B = arg_buf(info, 8, op, "B", DType::F32);
  double beta = arg_num(info, 10, op, "beta");
  Buf C = arg_buf(info, 11, op, "C", DType::F32);
  if (same_device(op, {{"A", &A}, {"B", &B}, {"C", &C}}))
    fail(ErrKind::Device, op, ": device buffers are not supported (CPU only)");
  bool reads_ab = K > 0 && alpha != 0.0 && M > 0 && N > 0;
  auto a = row_table<const float>(info, 7, op, "aRows", ta ? K : M, ta ? M : K, A, reads_ab);
  auto b = row_table<const float>(info, 9, op, "bRows", tb ? N : K, tb ? K : N, B, reads_ab);
  auto c = row_table<float>(info, 12, op, "cRows", M, N, C, M > 0 && N > 0);
  Extent whole_c{0, C.count - 1}, whole_a{0, A.count - 1}, whole_b{0, B.count - 1};
  if (M > 0 && N > 0 && (overlaps(C, whole_c, A, whole_a) || overlaps(C, whole_c, B, whole_b)))
    fail(ErrKind::Range, op, ": C must not share memory with A or B");
  gemm_f32_rows(ta, tb, M, N, K, (float)alpha, a.data(), b.data(), (float)beta, c.data());
  return info.Env().Undefined();
}

Napi::Value JS_gemmBlocking(const Napi::CallbackInfo& info) {
  GemmBlocking g = gemm_blocking();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("isa", isa_name(active_isa()));
  o.Set("mr", g.mr);
  o.Set("nr", g.nr);
  o.Set("kc", (double)g.kc);
  o.Set("mc", (double)g.mc);
  o.Set("nc", (double)g.nc);
  return o;
}

// fmaPeak(isa, threads, iterations) -> GFLOP/s of independent register FMA chains.
Napi::Value JS_fmaPeak(const Napi::CallbackInfo& info) {
  const char* op = "fmaPeak";
  const Isa isa = arg_isa(info, 0, op);
  if (!isa_supported(isa))
    fail(ErrKind::Backend, op, ": this CPU cannot run ", isa_name(isa), " (best available: ", isa_name(best_isa()), ")");
  int threads = (int)arg_int(info, 1, op, "threads", 1, num_threads());
  int64_t iters = arg_int(info, 2, op, "iterations", 1, (int64_t)1 << 40);
  return Napi::Number::New(info.Env(), gemm_fma_peak(isa, threads, iters));
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "gemm", JS_gemm);
  def(env, exports, "gemmRef", JS_gemmRef);
  def(env, exports, "gemmBf16", JS_gemmBf16);
  def(env, exports, "gemmRows", JS_gemmRows);
  def(env, exports, "gemmBlocking", JS_gemmBlocking);
  def(env, exports, "fmaPeak", JS_fmaPeak);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
