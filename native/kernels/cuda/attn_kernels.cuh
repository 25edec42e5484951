// Device code of the CUDA causal self-attention with rotary positions (launcher: attn.cu; contract: sffn/cuda.h,
// following sffn::attention_forward / _backward in sffn/nn.h). Kept apart so test/gpu/emulate/attn_emu.cpp runs
// these exact kernels against the reference (kernels/ref/attention.cpp).
//
//   rope:     qr, kr [B, H, S, dh] = RoPE(q, k) (angle pos·10000^(−2m/dh) in double); the backward applies the
//             inverse rotation to dq, dk.
//   forward:  warp per query row i: scores of the keys j <= i lane by lane (32 keys per step), an online max/sum per
//             lane merged in lane order (lse_i), then P_ij = exp(s_ij − lse_i) broadcast key by key into the output
//             accumulators (each lane owns head columns e = lane + 32r).
//   backward: warp per query row: dQ_i = scale·Σ_j dS_ij·Kr_j with dS_ij = P_ij·(dO_i·V_j − dO_i·O_i); warp per key
//             row: dK_j = scale·Σ_{i>=j} dS_ij·Q_i and dV_j = Σ_{i>=j} P_ij·dO_i. Every sum has one owner and a fixed
//             order (no atomics): deterministic. O(S²·dh) work per head, no S×S matrix stored.
// Layout: qkv [B·S, 3D] = q | k | v with heads contiguous (D = H·dh); out [B·S, D]; lse [B, H, S]. dh <= 256.
#pragma once
#include <cstdint>

namespace sffn {
namespace cuda {
namespace {

constexpr int AT_MAX_NE = 8;  // head columns per lane: dh <= 32·8

// Thread per (b, h, i, m): dst[(b·H + h)·S + i][2m, 2m+1] = rotate(src row (b·S + i), columns off + h·dh + 2m, +1)
// by sign·i·θ_m, where rows of src have `ld` floats. to_heads = false swaps the layouts: src is [B, H, S, dh] and
// dst has rows of `ld` floats (the inverse rotation of the backward, sign = −1).
__global__ void attn_rope_kernel(int64_t B, int64_t S, int64_t H, int64_t dh, const float* __restrict__ src,
                                 float* __restrict__ dst, int64_t ld, int64_t off, double sign, bool to_heads) {
  const int64_t half = dh / 2, n = B * H * S * half;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = idx % half, i = idx / half % S, h = idx / half / S % H, b = idx / half / S / H;
    const int64_t head = (((b * H + h) * S + i) * dh) + 2 * m, row = (b * S + i) * ld + off + h * dh + 2 * m;
    const float* in = src + (to_heads ? row : head);
    float* out = dst + (to_heads ? head : row);
    const double theta = pow(10000.0, -2.0 * (double)m / (double)dh);
    const double a = sign * (double)i * theta, c = cos(a), s = sin(a);
    const double u = in[0], w = in[1];
    out[0] = (float)(u * c - w * s);
    out[1] = (float)(u * s + w * c);
  }
}

__device__ __forceinline__ float at_dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t e = 0; e < n; ++e) s = fmaf(a[e], b[e], s);
  return s;
}

// Warp per query row (b, h, i), grid-stride over B·H·S rows.
__global__ void attn_fwd_kernel(int64_t B, int64_t S, int64_t H, int64_t dh, float scale, const float* __restrict__ qkv,
                                const float* __restrict__ qr, const float* __restrict__ kr, float* __restrict__ out,
                                float* __restrict__ lse) {
  const int lane = threadIdx.x % 32;
  const int64_t D = H * dh, rows = B * H * S, nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < rows; row += nwarps) {
    const int64_t i = row % S, bh = row / S, b = bh / H, h = bh % H;
    const float* Q = qr + row * dh;
    const float* K = kr + bh * S * dh;
    // Online max and sum per lane over its keys, then merged in lane order.
    float m = -INFINITY;
    double z = 0;
    for (int64_t j = lane; j <= i; j += 32) {
      const float s = at_dot(Q, K + j * dh, dh) * scale;
      if (s > m) {
        z = z * exp((double)m - (double)s) + 1.0;
        m = s;
      } else {
        z += exp((double)s - (double)m);
      }
    }
    float M = m;
    for (int o = 16; o > 0; o /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    double zz = m == -INFINITY ? 0.0 : z * exp((double)m - (double)M);
    for (int o = 16; o > 0; o /= 2) zz += __shfl_xor_sync(0xffffffffu, zz, o);
    const float L = (float)((double)M + log(zz));
    float acc[AT_MAX_NE];
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) acc[r] = 0.f;
    for (int64_t j0 = 0; j0 <= i; j0 += 32) {
      const int64_t j = j0 + lane;
      const float p = j <= i ? expf(at_dot(Q, K + j * dh, dh) * scale - L) : 0.f;
      const int64_t nj = i - j0 + 1 < 32 ? i - j0 + 1 : 32;
      for (int64_t q = 0; q < nj; ++q) {
        const float pq = __shfl_sync(0xffffffffu, p, (int)q);
        const float* V = qkv + (b * S + j0 + q) * 3 * D + 2 * D + h * dh;
#pragma unroll
        for (int r = 0; r < AT_MAX_NE; ++r) {
          const int64_t e = lane + 32 * r;
          if (e < dh) acc[r] = fmaf(pq, V[e], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) {
      const int64_t e = lane + 32 * r;
      if (e < dh) out[(b * S + i) * D + h * dh + e] = acc[r];
    }
    if (lane == 0) lse[row] = L;
  }
}

// Warp per query row: dots[row] = dO_i·O_i; dq[row] (unrotated, [B, H, S, dh]) = scale·Σ_{j<=i} dS_ij·Kr_j.
__global__ void attn_bwd_dq_kernel(int64_t B, int64_t S, int64_t H, int64_t dh, float scale,
                                   const float* __restrict__ qkv, const float* __restrict__ out,
                                   const float* __restrict__ qr, const float* __restrict__ kr,
                                   const float* __restrict__ lse, const float* __restrict__ dout,
                                   float* __restrict__ dots, float* __restrict__ dq) {
  const int lane = threadIdx.x % 32;
  const int64_t D = H * dh, rows = B * H * S, nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < rows; row += nwarps) {
    const int64_t i = row % S, bh = row / S, b = bh / H, h = bh % H;
    const float* Q = qr + row * dh;
    const float* K = kr + bh * S * dh;
    const float* dO = dout + (b * S + i) * D + h * dh;
    const float* O = out + (b * S + i) * D + h * dh;
    float dt = 0.f;
    for (int64_t e = lane; e < dh; e += 32) dt = fmaf(dO[e], O[e], dt);
    for (int o = 16; o > 0; o /= 2) dt += __shfl_xor_sync(0xffffffffu, dt, o);
    const float L = lse[row];
    float acc[AT_MAX_NE];
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) acc[r] = 0.f;
    for (int64_t j0 = 0; j0 <= i; j0 += 32) {
      const int64_t j = j0 + lane;
      float ds = 0.f;
      if (j <= i) {
        const float p = expf(at_dot(Q, K + j * dh, dh) * scale - L);
        const float dp = at_dot(dO, qkv + (b * S + j) * 3 * D + 2 * D + h * dh, dh);
        ds = p * (dp - dt);
      }
      const int64_t nj = i - j0 + 1 < 32 ? i - j0 + 1 : 32;
      for (int64_t q = 0; q < nj; ++q) {
        const float dsq = __shfl_sync(0xffffffffu, ds, (int)q);
        const float* Kj = K + (j0 + q) * dh;
#pragma unroll
        for (int r = 0; r < AT_MAX_NE; ++r) {
          const int64_t e = lane + 32 * r;
          if (e < dh) acc[r] = fmaf(dsq, Kj[e], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) {
      const int64_t e = lane + 32 * r;
      if (e < dh) dq[row * dh + e] = acc[r] * scale;
    }
    if (lane == 0) dots[row] = dt;
  }
}

// Warp per key row (b, h, j): dk[row] (unrotated) = scale·Σ_{i>=j} dS_ij·Q_i; dV_j = Σ_{i>=j} P_ij·dO_i written to
// the v columns of dqkv.
__global__ void attn_bwd_dkv_kernel(int64_t B, int64_t S, int64_t H, int64_t dh, float scale,
                                    const float* __restrict__ qkv, const float* __restrict__ qr,
                                    const float* __restrict__ kr, const float* __restrict__ lse,
                                    const float* __restrict__ dout, const float* __restrict__ dots,
                                    float* __restrict__ dk, float* __restrict__ dqkv) {
  const int lane = threadIdx.x % 32;
  const int64_t D = H * dh, rows = B * H * S, nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; row < rows; row += nwarps) {
    const int64_t j = row % S, bh = row / S, b = bh / H, h = bh % H;
    const float* Kj = kr + row * dh;
    const float* Vj = qkv + (b * S + j) * 3 * D + 2 * D + h * dh;
    float ak[AT_MAX_NE], av[AT_MAX_NE];
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) ak[r] = av[r] = 0.f;
    for (int64_t i0 = j; i0 < S; i0 += 32) {
      const int64_t i = i0 + lane;
      float p = 0.f, ds = 0.f;
      if (i < S) {
        const float* Qi = qr + (bh * S + i) * dh;
        const float* dOi = dout + (b * S + i) * D + h * dh;
        p = expf(at_dot(Qi, Kj, dh) * scale - lse[bh * S + i]);
        ds = p * (at_dot(dOi, Vj, dh) - dots[bh * S + i]);
      }
      const int64_t ni = S - i0 < 32 ? S - i0 : 32;
      for (int64_t q = 0; q < ni; ++q) {
        const float pq = __shfl_sync(0xffffffffu, p, (int)q), dsq = __shfl_sync(0xffffffffu, ds, (int)q);
        const float* Qi = qr + (bh * S + i0 + q) * dh;
        const float* dOi = dout + (b * S + i0 + q) * D + h * dh;
#pragma unroll
        for (int r = 0; r < AT_MAX_NE; ++r) {
          const int64_t e = lane + 32 * r;
          if (e < dh) {
            ak[r] = fmaf(dsq, Qi[e], ak[r]);
            av[r] = fmaf(pq, dOi[e], av[r]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < AT_MAX_NE; ++r) {
      const int64_t e = lane + 32 * r;
      if (e < dh) {
        dk[row * dh + e] = ak[r] * scale;
        dqkv[(b * S + j) * 3 * D + 2 * D + h * dh + e] = av[r];
      }
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
