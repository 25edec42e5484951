// CUDA GEMM: C = alpha · op(A) · op(B) + beta · C, row-major, strided batches, any shape (tails masked).
// Same conventions as the CPU gemm_f32 (sffn/gemm.h); declarations and the contract in sffn/cuda.h.
//
//   gemm_f32:  128×128×8 tiles, 256 threads, 8×8 outputs per thread (SIMT FMA), shared memory double-buffered
//              through a register prefetch of the next K-tile. Exact f32 products, f32 accumulation.
//   gemm_bf16: bf16 A and B, f32 accumulate and f32 C. 128×128×32 tiles, 8 warps of 64×32, tensor cores via
//              WMMA m16n16k16, a 4-stage cp.async pipeline (16-byte copies with zero-fill for the ragged
//              edges) when rows are 16-byte aligned, plain masked loads otherwise.
//
// Operand transposes are handled when staging tiles: each (trans_a, trans_b) pair is its own instantiation
// and keeps the stored layout in shared memory (WMMA reads row- or column-major fragments directly).
// Deterministic: one block owns each C tile and walks K in a fixed order; no split-K and no atomics.
// Test: test/gpu/gemm.test.ts. Benchmark: npm run bench -- gemm-cuda.
#include "common.cuh"
#include "gemm_kernels.cuh"

namespace sffn {
namespace cuda {
namespace {

// Grid: x over M tiles (up to 2^31 - 1), y over N tiles (up to 65535), z over batches (grid-stride).
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridZ = 65535;

Status invalid(const std::string& msg) {
  Status s;
  s.code = (int)cudaErrorInvalidValue;
  s.message = msg;
  return s;
}

// ---- launchers ---------------------------------------------------------------------------------------------

Status check_dims(const char* op, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t tile_n) {
  if (M < 0 || N < 0 || K < 0 || batch < 0) return invalid(std::string(op) + ": negative dimension");
  if (ceil_div(N, tile_n) > kMaxGridY)
    return invalid(std::string(op) + ": N = " + std::to_string(N) + " exceeds the grid limit of " +
                   std::to_string(kMaxGridY * tile_n) + " columns");
  return Status{};
}

template <bool TA, bool TB>
Status launch_f32(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                  int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t sa, int64_t sb, int64_t sc) {
  dim3 grid((unsigned)ceil_div(M, F_BM), (unsigned)ceil_div(N, F_BN), (unsigned)(batch < kMaxGridZ ? batch : kMaxGridZ));
  gemm_f32_kernel<TA, TB><<<grid, F_THREADS>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
  return launch_status("gemm_f32_kernel");
}

template <bool TA, bool TB, bool ALIGNED>
Status launch_bf16(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t sa, int64_t sb, int64_t sc) {
  auto kernel = gemm_bf16_kernel<TA, TB, ALIGNED>;
  // 80 KiB of dynamic shared memory is above the 48 KiB default: opt in (per device, so every call; cheap).
  SFFN_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)H_SMEM_BYTES),
                "cudaFuncSetAttribute(gemm_bf16_kernel, 80 KiB shared memory)");
  dim3 grid((unsigned)ceil_div(M, H_BM), (unsigned)ceil_div(N, H_BN), (unsigned)(batch < kMaxGridZ ? batch : kMaxGridZ));
  kernel<<<grid, H_THREADS, H_SMEM_BYTES>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
  return launch_status("gemm_bf16_kernel");
}

template <bool ALIGNED>
Status dispatch_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
                     const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t sa,
                     int64_t sb, int64_t sc) {
  if (!ta && !tb) return launch_bf16<false, false, ALIGNED>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
  if (!ta && tb) return launch_bf16<false, true, ALIGNED>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
  if (ta && !tb) return launch_bf16<true, false, ALIGNED>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
  return launch_bf16<true, true, ALIGNED>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, sa, sb, sc);
}

bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

}  // namespace

Status gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch, int64_t stride_a,
                int64_t stride_b, int64_t stride_c) {
  Status s = check_dims("gemm_f32", M, N, K, batch, F_BN);
  if (!s.ok()) return s;
  if (M == 0 || N == 0 || batch == 0) return s;
  if (!trans_a && !trans_b)
    return launch_f32<false, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, stride_a, stride_b, stride_c);
  if (!trans_a && trans_b)
    return launch_f32<false, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, stride_a, stride_b, stride_c);
  if (trans_a && !trans_b)
    return launch_f32<true, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, stride_a, stride_b, stride_c);
  return launch_f32<true, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, stride_a, stride_b, stride_c);
}

Status gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                 int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch,
                 int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  Status s = check_dims("gemm_bf16", M, N, K, batch, H_BN);
  if (!s.ok()) return s;
  if (M == 0 || N == 0 || batch == 0) return s;
  int dev = 0, major = 0;
  SFFN_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  SFFN_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  if (major < 8) return invalid("gemm_bf16: needs a GPU of compute capability >= 8.0 (bf16 tensor cores)");
  // cp.async moves 16-byte chunks: every row start (and every batch start) must be 16-byte aligned.
  const bool aligned = aligned16(A) && aligned16(B) && lda % 8 == 0 && ldb % 8 == 0 &&
                       (batch == 1 || (stride_a % 8 == 0 && stride_b % 8 == 0));
  return aligned ? dispatch_bf16<true>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch, stride_a,
                                       stride_b, stride_c)
                 : dispatch_bf16<false>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, batch,
                                        stride_a, stride_b, stride_c);
}

}  // namespace cuda
}  // namespace sffn
