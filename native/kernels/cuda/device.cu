// CUDA flavor: probe (device count, driver/runtime versions, compute capability, a test launch), device
// memory (malloc/free/copies/fill) and synchronisation. Declarations: sffn/cuda.h. Used by napi/device_buffer.cpp.
// Test: test/gpu/device.test.ts (skipped without a GPU).
#include <cstring>

#include "common.cuh"

#ifndef SFFN_CUDA_ARCHS
#define SFFN_CUDA_ARCHS "unknown"
#endif

namespace sffn {
namespace cuda {

bool Status::out_of_memory() const { return code == (int)cudaErrorMemoryAllocation; }

namespace {

__global__ void probe_kernel(int* out) { *out = 42; }

// Writes `pattern` (elem_bytes wide) into count elements; grid-stride so any count fits one launch.
template <class T>
__global__ void fill_kernel(T* dst, int64_t count, T value) {
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) dst[i] = value;
}

template <class T>
Status fill_as(void* dst, int64_t count, uint64_t pattern) {
  T v;
  std::memcpy(&v, &pattern, sizeof(T));  // little-endian: the low bytes of pattern
  int threads = 256;
  int64_t blocks = ceil_div(count, threads);
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  fill_kernel<T><<<(unsigned)blocks, threads>>>(static_cast<T*>(dst), count, v);
  return launch_status("fill_kernel");
}

}  // namespace

Status probe(ProbeInfo* out) {
  out->archs = SFFN_CUDA_ARCHS;
  // Both version queries work without a driver (driver version reads 0 then).
  cudaDriverGetVersion(&out->driver_version);
  cudaRuntimeGetVersion(&out->runtime_version);
  int n = 0;
  SFFN_CUDA_TRY(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  out->device_count = n;
  if (n == 0) return status_of(cudaErrorNoDevice, "cudaGetDeviceCount");
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp p;
    SFFN_CUDA_TRY(cudaGetDeviceProperties(&p, d), "cudaGetDeviceProperties");
    DeviceProps dp;
    dp.name = p.name;
    dp.major = p.major;
    dp.minor = p.minor;
    dp.total_memory = p.totalGlobalMem;
    dp.sm_count = p.multiProcessorCount;
    int clk = 0;
    cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, d);
    dp.clock_khz = clk;
    out->devices.push_back(dp);
  }
  // A real launch: fails with "no kernel image is available" when this binary has no code for the GPU.
  SFFN_CUDA_TRY(cudaSetDevice(0), "cudaSetDevice(0)");
  int* d_out = nullptr;
  SFFN_CUDA_TRY(cudaMalloc(&d_out, sizeof(int)), "cudaMalloc (probe)");
  probe_kernel<<<1, 1>>>(d_out);
  Status s = launch_status("probe_kernel");
  int h = 0;
  if (s.ok()) s = status_of(cudaMemcpy(&h, d_out, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy (probe)");
  cudaFree(d_out);
  if (s.ok() && h != 42) {
    s.code = (int)cudaErrorUnknown;
    s.message = "probe_kernel: wrong result";
  }
  return s;
}

// Device memory comes from the stream-ordered allocator (cudaMallocAsync on the default stream) where the device
// supports memory pools: cudaFree synchronises the whole device, and tensors freed by tidy() every step would
// stall the pipeline. The pool keeps freed blocks for reuse (release threshold: unlimited), like PyTorch's caching
// allocator; cudaMalloc/cudaFree remain the fallback. The choice is made once per process.
namespace {
int use_pools() {
  static int pools = -1;
  if (pools >= 0) return pools;
  int dev = 0, supported = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;  // undecided: the runtime is not usable yet; retry on the next call
  }
  if (supported) {
    cudaMemPool_t pool;
    uint64_t threshold = UINT64_MAX;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) {
      cudaGetLastError();
      supported = 0;
    }
  }
  return pools = supported ? 1 : 0;
}
}  // namespace

Status device_malloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  // Never hand out a null pointer (napi treats null data as "absent"): zero-sized buffers get one byte.
  const size_t n = bytes ? bytes : 1;
  const std::string what = "cudaMalloc(" + std::to_string(bytes) + " bytes)";
  if (use_pools()) {
    Status s = status_of(cudaMallocAsync(ptr, n, 0), what);
    // The pool may hold freed blocks of another size: return them to the device and try once more.
    if (s.out_of_memory()) {
      cudaGetLastError();
      cudaMemPool_t pool;
      int dev = 0;
      if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess &&
          cudaDeviceSynchronize() == cudaSuccess && cudaMemPoolTrimTo(pool, 0) == cudaSuccess)
        s = status_of(cudaMallocAsync(ptr, n, 0), what);
    }
    return s;
  }
  return status_of(cudaMalloc(ptr, n), what);
}

Status device_free(void* ptr) {
  if (!ptr) return Status{};
  cudaError_t e = use_pools() ? cudaFreeAsync(ptr, 0) : cudaFree(ptr);
  if (e == cudaErrorCudartUnloading) return Status{};  // process teardown: the memory goes with the context
  return status_of(e, "cudaFree");
}

Status copy_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return Status{};
  return status_of(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host->device");
}

Status copy_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return Status{};
  return status_of(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device->host");
}

Status copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return Status{};
  return status_of(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy device->device");
}

Status device_fill(void* dst, int64_t count, int elem_bytes, uint64_t pattern) {
  if (count <= 0) return Status{};
  if (pattern == 0) return status_of(cudaMemset(dst, 0, (size_t)count * elem_bytes), "cudaMemset");
  switch (elem_bytes) {
    case 1: return fill_as<uint8_t>(dst, count, pattern);
    case 2: return fill_as<uint16_t>(dst, count, pattern);
    case 4: return fill_as<uint32_t>(dst, count, pattern);
    case 8: return fill_as<uint64_t>(dst, count, pattern);
    default: {
      Status s;
      s.code = (int)cudaErrorInvalidValue;
      s.message = "device_fill: element size must be 1, 2, 4 or 8 bytes, got " + std::to_string(elem_bytes);
      return s;
    }
  }
}

Status device_synchronize() { return status_of(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

Status device_mem_info(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  return status_of(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

}  // namespace cuda
}  // namespace sffn
