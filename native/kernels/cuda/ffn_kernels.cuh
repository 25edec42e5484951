// Device code of the CUDA dense FFN (launcher: ffn.cu; contract: sffn/cuda.h, following sffn::ffn_dense_forward /
// _backward in sffn/moe.h; methods.md §1.1–1.2): pre = x·W1 (+ b1), h = act(pre) keeping, with topk, only the
// entries >= the row's topk-th largest (the Top-K activation), y = h·W2 (+ b2). The products are gemm_f32; here are
// the row kernels: block per row, the topk-th largest found by a 4-pass radix select over order-preserving 32-bit
// keys (shared-memory histograms of 256 bins; integer counts, so the result does not depend on the order).
// Kept apart so test/gpu/emulate/ffn_emu.cpp runs these exact kernels against the reference (kernels/ref/ffn_dense.cpp).
#pragma once
#include <cstdint>
#include <cstring>

#include "moe_kernels.cuh"  // moe_act, moe_act_grad (sffn::Act codes)

namespace sffn {
namespace cuda {
namespace {

constexpr int FFN_THREADS = 256;

__device__ __forceinline__ uint32_t ffn_key(float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending keys in the order of the floats
}
__device__ __forceinline__ float ffn_unkey(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

// The topk-th largest of row a [F] (1 <= topk < F), by the whole block: the element of ascending rank F − topk.
__device__ float ffn_kth_largest(const float* a, int64_t F, int64_t topk) {
  __shared__ int32_t bins[256];
  __shared__ uint32_t s_prefix;
  __shared__ int64_t s_rank;
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_rank = F - topk;
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) bins[b] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix;
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
      const uint32_t k = ffn_key(a[f]);
      if ((k & mask) == prefix) atomicAdd(&bins[(k >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t r = s_rank, b = 0;
      while (r >= bins[b]) r -= bins[b++];
      s_rank = r;
      s_prefix = prefix | ((uint32_t)b << shift);
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  return ffn_unkey(s_prefix);
}

// Block per row (grid-stride): h = act(pre), then the top-k mask (entries below the topk-th largest become 0).
__global__ void ffn_act_kernel(int64_t T, int64_t F, int act, int64_t topk, const float* __restrict__ pre,
                               float* __restrict__ h) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float* p = pre + t * F;
    float* hr = h + t * F;
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) hr[f] = moe_act(act, p[f]);
    if (topk > 0 && topk < F) {
      __syncthreads();  // the row of h is complete
      const float th = ffn_kth_largest(hr, F, topk);
      for (int64_t f = threadIdx.x; f < F; f += blockDim.x)
        if (!(hr[f] >= th)) hr[f] = 0.0f;
    }
    __syncthreads();  // before the next row reuses the shared histogram
  }
}

// Block per row: dpre = dh ⊙ act'(pre) ⊙ mask, the mask recomputed from pre exactly as forward (a = act(pre) into
// the row of `scratch` [T, F]).
__global__ void ffn_act_grad_kernel(int64_t T, int64_t F, int act, int64_t topk, const float* __restrict__ pre,
                                    float* __restrict__ dpre, float* __restrict__ scratch) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float* p = pre + t * F;
    float* d = dpre + t * F;
    if (topk > 0 && topk < F) {
      float* a = scratch + t * F;
      for (int64_t f = threadIdx.x; f < F; f += blockDim.x) a[f] = moe_act(act, p[f]);
      __syncthreads();
      const float th = ffn_kth_largest(a, F, topk);
      for (int64_t f = threadIdx.x; f < F; f += blockDim.x)
        d[f] = a[f] >= th ? d[f] * moe_act_grad(act, p[f]) : 0.0f;
    } else {
      for (int64_t f = threadIdx.x; f < F; f += blockDim.x) d[f] *= moe_act_grad(act, p[f]);
    }
    __syncthreads();
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
