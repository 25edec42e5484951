// Host stand-ins for the CUDA features our kernels use, so kernel headers (native/kernels/cuda/*_kernels.cuh) compile
// as plain C++ and run on the CPU: every CUDA thread of a block is a std::thread, __syncthreads/__syncwarp are
// barriers, blocks run one at a time (so function statics act as per-block shared memory), cp.async is a
// synchronous copy with the same zero-fill and alignment rules, WMMA fragments are whole 16×16 tiles held by
// every lane. Used by gemm_emu.cpp and moe_emu.cpp (built with AddressSanitizer by test/gpu/*-emulated.test.ts).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define SFFN_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so function statics behave as per-block shared memory
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

thread_local dim3 threadIdx;
dim3 blockIdx, gridDim, blockDim;
std::barrier<>* g_block_barrier = nullptr;
std::vector<std::barrier<>*> g_warp_barriers;
std::string g_error;  // first emulation-rule violation (alignment), reported by the driver

void violation(const std::string& what) {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (g_error.empty()) g_error = what;
}

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline void __syncwarp() { g_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

// Warp shuffles through a per-block exchange buffer (all 32 lanes must call them, as on the GPU with a full mask).
template <class V>
inline V emu_shfl(V v, unsigned src_lane_in_warp, bool valid) {
  static V lanes[1024];
  const unsigned t = threadIdx.x;
  lanes[t] = v;
  __syncwarp();
  const V r = valid ? lanes[t / 32 * 32 + src_lane_in_warp] : v;
  __syncwarp();
  return r;
}
template <class V>
inline V __shfl_down_sync(unsigned, V v, int delta) {
  const unsigned l = threadIdx.x % 32;
  return emu_shfl(v, l + delta, l + delta < 32);
}
template <class V>
inline V __shfl_sync(unsigned, V v, int src) {
  return emu_shfl(v, (unsigned)src % 32, true);
}
template <class V>
inline V __shfl_xor_sync(unsigned, V v, int mask) {
  return emu_shfl(v, (threadIdx.x % 32) ^ (unsigned)mask, true);
}

// Integer atomics (the only atomics our kernels use: counts, whose result does not depend on the order).
inline int atomicAdd(int* p, int v) {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  const int old = *p;
  *p = old + v;
  return old;
}

alignas(128) static unsigned char g_dynamic_smem[96 * 1024];
inline unsigned char* dynamic_smem() { return g_dynamic_smem; }

// cp.async.cg 16 bytes with src-size: copy src_bytes, zero the rest. Real hardware needs both addresses 16-byte
// aligned and 0 <= src_bytes <= 16.
inline void cp_async16(void* smem, const void* gmem, int src_bytes) {
  if (((uintptr_t)smem & 15) || ((uintptr_t)gmem & 15)) violation("cp.async with a misaligned address");
  if (src_bytes < 0 || src_bytes > 16) violation("cp.async src-size out of [0, 16]");
  if (src_bytes > 0) std::memcpy(smem, gmem, (size_t)src_bytes);
  std::memset((char*)smem + src_bytes, 0, (size_t)(16 - src_bytes));
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

// Every lane holds the whole tile (the real fragment is spread over the warp; its layout is opaque anyway).
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float v[16][16];
};

inline float bf16_to_float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float x) {
  for (auto& row : f.v)
    for (float& e : row) e = x;
}

template <class Use, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p, unsigned ldm) {
  if ((uintptr_t)p & 31) violation("load_matrix_sync: pointer not 32-byte aligned");
  if (ldm % 8) violation("load_matrix_sync: ldm not a multiple of 8 for 16-bit elements");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.v[r][c] = bf16_to_float(std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
}

template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float t[16][16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.v[r][n];
      for (int k = 0; k < 16; ++k) s += a.v[r][k] * b.v[k][n];
      t[r][n] = s;
    }
  std::memcpy(d.v, t, sizeof t);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  if ((uintptr_t)p & 31) violation("store_matrix_sync: pointer not 32-byte aligned");
  if (threadIdx.x % 32) return;  // one lane writes (all lanes hold the same tile)
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
}
}  // namespace wmma
}  // namespace nvcuda

// Runs body() as every thread of every block of `grid`, one block at a time. The block's threads are created
// once per launch and step through the blocks together (a barrier publishes each blockIdx and separates blocks).
template <class F>
void launch(dim3 grid, unsigned threads, F&& body) {
  gridDim = grid;
  blockDim = dim3{threads, 1, 1};
  const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  std::barrier<> block(threads);
  std::vector<std::barrier<>*> warps;
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(new std::barrier<>(32));
  g_block_barrier = &block;
  g_warp_barriers = warps;
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t)
    ts.emplace_back([t, nblocks, grid, &block, &body] {
      threadIdx = dim3{t, 0, 0};
      for (uint64_t b = 0; b < nblocks; ++b) {
        if (t == 0) blockIdx = dim3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        block.arrive_and_wait();  // blockIdx published
        body();
        block.arrive_and_wait();  // every thread done with this block (statics are reused by the next)
      }
    });
  for (auto& t : ts) t.join();
  for (auto* w : warps) delete w;
}

