// Benchmark helpers for the CUDA flavor, timed with CUDA events (declarations in sffn/cuda.h):
//   bench_gemm: back-to-back gemm_f32 / gemm_bf16 at M×N×K on buffers it owns.
//   bench_peak: the measured compute ceiling the GEMM figures are compared with: every SM runs a register-only
//     loop of independent f32 FMAs (SIMT peak) or bf16 mma.sync.m16n8k16 with f32 accumulators (the peak of
//     the warp-level tensor-core instructions gemm_bf16 uses; Hopper's wgmma can go higher).
// Used by bench/gemm-cuda.ts (npm run bench -- gemm-cuda).
#include <vector>

#include "common.cuh"

namespace sffn {
namespace cuda {
namespace {

// Deterministic pseudo-random values in [-1, 1) (a hash of the index), so timings do not run on zeros.
__global__ void init_f32(float* p, int64_t n, uint32_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = (float)(h & 0xffffff) / 8388608.f - 1.f;
  }
}

__global__ void init_bf16(uint16_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    float f = (float)(h & 0xffffff) / 8388608.f - 1.f;
    p[i] = (uint16_t)(__float_as_uint(f) >> 16);
  }
}

constexpr int kPeakIters = 4096;

// 8 independent FMA chains per thread keep the pipes full; the sum is stored only if it equals a value it
// never takes, so the compiler cannot drop the loop.
__global__ void peak_fma_kernel(float* out, float x, float y) {
  float a[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) a[i] = x + i * 1e-3f;
  for (int it = 0; it < kPeakIters; ++it) {
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = fmaf(a[i], x, y);
  }
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) s += a[i];
  if (s == 1234.5678f) out[0] = s;
}

// Each warp issues 4 independent mma.sync.m16n8k16 (bf16 in, f32 accumulate) per iteration.
__global__ void peak_mma_kernel(float* out, uint32_t seed) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t a0 = seed ^ threadIdx.x, a1 = a0 * 3u, a2 = a0 * 5u, a3 = a0 * 7u;
  uint32_t b0 = a0 * 11u, b1 = a0 * 13u;
  float c[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) c[i][j] = 0.f;
  for (int it = 0; it < kPeakIters; ++it) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(c[i][0]), "+f"(c[i][1]), "+f"(c[i][2]), "+f"(c[i][3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
  }
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) s += c[i][j];
  if (s == 1234.5678f) out[0] = s;
#endif
}

// Owns the events and buffers of one measurement and releases them on every path.
struct Scope {
  std::vector<void*> bufs;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~Scope() {
    for (void* p : bufs) device_free(p);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
  Status alloc(void** p, size_t bytes) {
    Status s = device_malloc(p, bytes);
    if (s.ok()) bufs.push_back(*p);
    return s;
  }
  Status events() {
    SFFN_CUDA_TRY(cudaEventCreate(&start), "cudaEventCreate");
    SFFN_CUDA_TRY(cudaEventCreate(&stop), "cudaEventCreate");
    return Status{};
  }
};

}  // namespace

Status bench_gemm(int dtype, int64_t M, int64_t N, int64_t K, int warmup, int iters, float* ms_out) {
  Scope sc;
  void *A = nullptr, *B = nullptr, *C = nullptr;
  const size_t es = dtype == 1 ? 2 : 4;
  Status s = sc.alloc(&A, (size_t)(M * K) * es);
  if (s.ok()) s = sc.alloc(&B, (size_t)(K * N) * es);
  if (s.ok()) s = sc.alloc(&C, (size_t)(M * N) * 4);
  if (s.ok()) s = sc.events();
  if (!s.ok()) return s;
  if (dtype == 1) {
    init_bf16<<<1024, 256>>>((uint16_t*)A, M * K, 1u);
    init_bf16<<<1024, 256>>>((uint16_t*)B, K * N, 2u);
  } else {
    init_f32<<<1024, 256>>>((float*)A, M * K, 1u);
    init_f32<<<1024, 256>>>((float*)B, K * N, 2u);
  }
  s = launch_status("init");
  if (!s.ok()) return s;
  auto run = [&]() {
    return dtype == 1 ? gemm_bf16(false, false, M, N, K, 1.f, (const uint16_t*)A, K, (const uint16_t*)B, N, 0.f,
                                  (float*)C, N)
                      : gemm_f32(false, false, M, N, K, 1.f, (const float*)A, K, (const float*)B, N, 0.f, (float*)C, N);
  };
  for (int i = 0; i < warmup; ++i) {
    s = run();
    if (!s.ok()) return s;
  }
  SFFN_CUDA_TRY(cudaDeviceSynchronize(), "cudaDeviceSynchronize (warm-up)");
  for (int i = 0; i < iters; ++i) {
    SFFN_CUDA_TRY(cudaEventRecord(sc.start), "cudaEventRecord");
    s = run();
    if (!s.ok()) return s;
    SFFN_CUDA_TRY(cudaEventRecord(sc.stop), "cudaEventRecord");
    SFFN_CUDA_TRY(cudaEventSynchronize(sc.stop), "cudaEventSynchronize");
    SFFN_CUDA_TRY(cudaEventElapsedTime(&ms_out[i], sc.start, sc.stop), "cudaEventElapsedTime");
  }
  return Status{};
}

Status bench_peak(int dtype, double* tflops) {
  *tflops = 0;
  Scope sc;
  void* out = nullptr;
  Status s = sc.alloc(&out, 16);
  if (s.ok()) s = sc.events();
  if (!s.ok()) return s;
  int dev = 0, sms = 0;
  SFFN_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  SFFN_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int threads = 256, blocks = sms * 8;
  double flops;
  auto launch = [&]() {
    if (dtype == 1) peak_mma_kernel<<<blocks, threads>>>((float*)out, 7u);
    else peak_fma_kernel<<<blocks, threads>>>((float*)out, 0.999f, 1e-3f);
    return launch_status(dtype == 1 ? "peak_mma_kernel" : "peak_fma_kernel");
  };
  if (dtype == 1) flops = 2.0 * 16 * 8 * 16 * 4 * (double)kPeakIters * (blocks * (threads / 32));
  else flops = 2.0 * 8 * (double)kPeakIters * blocks * threads;
  s = launch();  // warm-up (clocks up, module loaded)
  if (!s.ok()) return s;
  SFFN_CUDA_TRY(cudaDeviceSynchronize(), "cudaDeviceSynchronize (warm-up)");
  float best = 0.f;
  for (int r = 0; r < 5; ++r) {
    SFFN_CUDA_TRY(cudaEventRecord(sc.start), "cudaEventRecord");
    s = launch();
    if (!s.ok()) return s;
    SFFN_CUDA_TRY(cudaEventRecord(sc.stop), "cudaEventRecord");
    SFFN_CUDA_TRY(cudaEventSynchronize(sc.stop), "cudaEventSynchronize");
    float ms = 0.f;
    SFFN_CUDA_TRY(cudaEventElapsedTime(&ms, sc.start, sc.stop), "cudaEventElapsedTime");
    if (r == 0 || ms < best) best = ms;
  }
  *tflops = flops / (best * 1e-3) / 1e12;
  return Status{};
}

}  // namespace cuda
}  // namespace sffn
