// Device code of the CUDA σ-MoE expert block forward (launcher: moe_experts.cu; contract: sffn/cuda.h, which
// follows sffn::moe_experts_forward in sffn/moe.h). Kept apart so test/gpu/emulate/moe_emu.cpp can run these
// exact kernels on the CPU (SFFN_CUDA_EMULATION).
//
//   up:      pre[r] = x[t(r)] · W1[e] (+ b1[e]),  hs[r] = gate(r) · act(pre[r])     rows r of expert e, [S, G]
//   down:    yr[r]  = hs[r] · W2[e]                                                   [S, D]
//   combine: y[t]   = Σ_{j<K, kept} yr[rank(t, j)] (+ b2)                             [T, D], fixed j order
// Shapes: x [T, D], w1 [E, D, G], b1 [E, G], w2 [E, G, D], b2 [D]; r is a rank (row of the sorted slot list),
// t(r) = sorted_slots[r] / K. A grouped GEMM block owns one (expert, 128-row tile, 128-column tile): the token
// rows are gathered while staging A (no permuted copy of x), every C element is reduced over D (or G) in a fixed
// order by one thread, so the result is deterministic. f32 SIMT FMA, the tile scheme of gemm_f32_kernel.
#pragma once
#include <cstdint>
#include <vector>

namespace sffn {
namespace cuda {
namespace {

constexpr int MG_BM = 128, MG_BN = 128, MG_BK = 8, MG_THREADS = 256, MG_PAD = 4;

// The (expert, first row) of every 128-row tile, from host offsets [E + 1]: what the grid's x index walks.
inline std::vector<int32_t> moe_row_tiles(int64_t E, const int64_t* offsets) {
  std::vector<int32_t> tiles;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = 0; r < offsets[e + 1] - offsets[e]; r += MG_BM) {
      tiles.push_back((int32_t)e);
      tiles.push_back((int32_t)r);
    }
  return tiles;
}

// ---- device routing ------------------------------------------------------------------------------------------
// A routing that lives on the device (moeRoute on cuda) is not validated by the host. These two kernels derive
// the arrays every other kernel follows so that no content can steer an access out of bounds (a valid routing
// passes through unchanged): sorted slots outside [0, TK) become 0, ranks outside [-1, S) become -1.
__global__ void moe_sanitize_routing_kernel(int64_t TK, int64_t S, const int32_t* __restrict__ sorted,
                                            const int32_t* __restrict__ rank, int32_t* __restrict__ sorted_out,
                                            int32_t* __restrict__ rank_out) {
  const int64_t n = TK > S ? TK : S;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if (i < S) {
      const int32_t v = sorted[i];
      sorted_out[i] = v >= 0 && v < TK ? v : 0;
    }
    if (i < TK) {
      const int32_t v = rank[i];
      rank_out[i] = v >= 0 && v < S ? v : -1;
    }
  }
}

// One thread: offsets clamped to be non-decreasing within [0, S] (offsets[0] taken as 0), and the tile map of
// moe_row_tiles for them, padded with expert -1 to max_tiles = (S + 127·E) / 128 entries (>= Σ_e ceil(c_e/128)),
// so the grid size is known without reading the counts back.
__global__ void moe_device_tiles_kernel(int64_t E, int64_t S, const int64_t* __restrict__ offsets,
                                        int64_t* __restrict__ off_out, int32_t* __restrict__ tiles, int64_t max_tiles) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t prev = 0, n = 0;
  off_out[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t o = offsets[e + 1];
    o = o < prev ? prev : (o > S ? S : o);
    off_out[e + 1] = o;
    for (int64_t r = 0; r < o - prev && n < max_tiles; r += MG_BM, ++n) {
      tiles[2 * n] = (int32_t)e;
      tiles[2 * n + 1] = (int32_t)r;
    }
    prev = o;
  }
  for (; n < max_tiles; ++n) {
    tiles[2 * n] = -1;
    tiles[2 * n + 1] = 0;
  }
}

// Act codes as sffn::Act: 0 relu, 1 gelu (erf form, as PyTorch), 2 silu, 3 none.
__device__ __forceinline__ float moe_act(int act, float a) {
  switch (act) {
    case 0: return a > 0.f ? a : 0.f;
    case 1: return 0.5f * a * (1.f + erff(a * 0.70710678118654752f));
    case 2: return a / (1.f + expf(-a));
    default: return a;
  }
}

__device__ __forceinline__ float moe_act_grad(int act, float a) {
  switch (act) {
    case 0: return a > 0.f ? 1.f : 0.f;
    case 1: return 0.5f * (1.f + erff(a * 0.70710678118654752f)) + a * 0.39894228040143268f * expf(-0.5f * a * a);
    case 2: {
      const float s = 1.f / (1.f + expf(-a));
      return s * (1.f + a * (1.f - s));
    }
    default: return 1.f;
  }
}

// Grouped GEMM over the row tiles of every expert: out[r] = A(r) · op(W[e]) for rows r of expert e, where
//   A(r) = A + t(r)·lda (GATHER: token rows, t(r) = sorted_slots[r] / K) or A + r·lda (per-slot rows);
//   op(W[e]) is KD×N: W[e] stored KD×N, or N×KD with TB (the transposed weights of the backward).
//   UP: epilogue out = pre = acc (+ bias[e]), hs_out = gate · act(pre); otherwise out = acc.
// Forward up: <GATHER, !TB, UP> over x and W1; down: <!GATHER, !TB> over hs and W2.
// Backward dhs = dy[t]·W2[e]ᵀ: <GATHER, TB>; dxr = dpre·W1[e]ᵀ: <!GATHER, TB>.
template <bool GATHER, bool TB, bool UP>
__global__ void __launch_bounds__(MG_THREADS)
    moe_grouped_gemm_kernel(const int32_t* __restrict__ tiles, const int64_t* __restrict__ offsets,
                            const int32_t* __restrict__ sorted_slots, const float* __restrict__ gates, int64_t K_slots,
                            const float* __restrict__ A, int64_t lda, const float* __restrict__ W, int64_t KD,
                            int64_t N, const float* __restrict__ bias, int act, float* __restrict__ out,
                            float* __restrict__ hs_out) {
  __shared__ __align__(16) float As[2][MG_BK][MG_BM + MG_PAD];  // As[k][m]
  __shared__ __align__(16) float Bs[2][MG_BK][MG_BN + MG_PAD];  // Bs[k][n]

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  const int e = tiles[2 * blockIdx.x];
  if (e < 0) return;  // an unused entry of a worst-case-sized tile map (device routing): the whole block leaves
  const int64_t rbeg = offsets[e] + tiles[2 * blockIdx.x + 1];
  const int64_t rend = offsets[e + 1];
  const int64_t n0 = (int64_t)blockIdx.y * MG_BN;
  const float* We = W + (int64_t)e * KD * N;
  const int64_t ktiles = (KD + MG_BK - 1) / MG_BK;

  // Staging map: A thread -> row m = tid/2, k = (tid%2)*4 + 0..3 (one row per thread for the whole K loop).
  // B thread -> k = tid/32, n = (tid%32)*4 + 0..3 (W stored KD×N), or n = tid/2, k = (tid%2)*4 + 0..3 (TB).
  const int a_m = tid / 2, a_k = (tid % 2) * 4;
  const int b_k = TB ? (tid % 2) * 4 : tid / 32, b_n = TB ? tid / 2 : (tid % 32) * 4;
  const int64_t ra = rbeg + a_m;
  const float* arow = nullptr;
  if (ra < rend) arow = GATHER ? A + (int64_t)(sorted_slots[ra] / K_slots) * lda : A + ra * lda;

  float rA[4], rB[4];
  auto load = [&](int64_t kt) {
    const int64_t k0 = kt * MG_BK;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t gk = k0 + a_k + q;
      rA[q] = (arow && gk < KD) ? arow[gk] : 0.f;
      const int64_t gk2 = k0 + b_k + (TB ? q : 0), gn = n0 + b_n + (TB ? 0 : q);
      rB[q] = (gk2 < KD && gn < N) ? (TB ? We[gn * KD + gk2] : We[gk2 * N + gn]) : 0.f;
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      As[buf][a_k + q][a_m] = rA[q];
      Bs[buf][b_k + (TB ? q : 0)][b_n + (TB ? 0 : q)] = rB[q];
    }
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  if (ktiles > 0) {
    load(0);
    store(0);
    __syncthreads();
  }
  int buf = 0;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    const bool more = kt + 1 < ktiles;
    if (more) load(kt + 1);
#pragma unroll
    for (int k = 0; k < MG_BK; ++k) {
      float4 a0 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&As[buf][k][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t r = rbeg + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (r >= rend) continue;
    const float g = (UP && hs_out) ? gates[sorted_slots[r]] : 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (n >= N) continue;
      float v = acc[i][j];
      if (UP && bias) v += bias[(int64_t)e * N + n];
      out[r * N + n] = v;
      if (UP && hs_out) hs_out[r * N + n] = g * moe_act(act, v);
    }
  }
}

// ---- backward ------------------------------------------------------------------------------------------------

// One warp per kept row r < min(S, *kept) (kept = &offsets[E] on the device; slot s = sorted_slots[r], gate g):
// dgates[s] = <dhs[r], act(pre[r])> and dpre[r] = g · dhs[r] ⊙ act'(pre[r]). Lane-strided partial sums and a
// fixed shuffle tree: deterministic.
__global__ void moe_gate_grad_kernel(int64_t S, int64_t G, const int64_t* __restrict__ kept,
                                     const int32_t* __restrict__ sorted_slots, const float* __restrict__ gates,
                                     const float* __restrict__ pre, const float* __restrict__ dhs, int act,
                                     float* __restrict__ dpre, float* __restrict__ dgates) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  const int64_t rows = *kept < S ? *kept : S;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows; r += nwarps) {
    const int32_t slot = sorted_slots[r];
    const float g = gates[slot];
    float part = 0.f;
    for (int64_t c = lane; c < G; c += 32) {
      const float a = pre[r * G + c], d = dhs[r * G + c];
      part += d * moe_act(act, a);
      dpre[r * G + c] = g * d * moe_act_grad(act, a);
    }
    for (int off = 16; off > 0; off /= 2) part += __shfl_down_sync(0xffffffffu, part, off);
    if (lane == 0) dgates[slot] = part;
  }
}

// Weight gradients with a per-expert reduction over its rows: C[e] [P, Q] = Σ_{r of e} U(r)ᵀ ⊗ V(r), where
// U(r) = U + (UG ? t(r) : r)·ldu holds P values and V(r) = V + (VG ? t(r) : r)·ldv holds Q values.
//   dW2[e] = Σ hs[r]ᵀ dy[t]: <!UG, VG>, P = G, Q = D.   dW1[e] = Σ x[t]ᵀ dpre[r]: <UG, !VG>, P = D, Q = G.
// One block owns a 128×128 tile of one expert's gradient and walks that expert's rows in rank order (no atomics,
// deterministic); experts without rows get zeros. Grid: x = E · ceil(P/128), y = ceil(Q/128).
template <bool UG, bool VG>
__global__ void __launch_bounds__(MG_THREADS)
    moe_wgrad_kernel(int64_t P, int64_t Q, const int64_t* __restrict__ offsets, const int32_t* __restrict__ sorted_slots,
                     int64_t K_slots, const float* __restrict__ U, int64_t ldu, const float* __restrict__ V, int64_t ldv,
                     float* __restrict__ C) {
  __shared__ __align__(16) float As[2][MG_BK][MG_BM + MG_PAD];  // As[row][p]
  __shared__ __align__(16) float Bs[2][MG_BK][MG_BN + MG_PAD];  // Bs[row][q]

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  const int64_t ptiles = (P + MG_BM - 1) / MG_BM;
  const int64_t e = blockIdx.x / ptiles;
  const int64_t p0 = (blockIdx.x % ptiles) * MG_BM;
  const int64_t q0 = (int64_t)blockIdx.y * MG_BN;
  const int64_t rbeg = offsets[e], rend = offsets[e + 1];
  const int64_t ktiles = (rend - rbeg + MG_BK - 1) / MG_BK;
  // Staging: thread -> row k = tid/32 of the 8-row chunk, columns c = (tid%32)*4 + 0..3 of U and of V.
  const int k_row = tid / 32, c0 = (tid % 32) * 4;

  float rA[4], rB[4];
  auto load = [&](int64_t kt) {
    const int64_t r = rbeg + kt * MG_BK + k_row;
    const float* urow = nullptr;
    const float* vrow = nullptr;
    if (r < rend) {
      const int64_t t = sorted_slots[r] / K_slots;
      urow = U + (UG ? t : r) * ldu;
      vrow = V + (VG ? t : r) * ldv;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      rA[q] = (urow && p0 + c0 + q < P) ? urow[p0 + c0 + q] : 0.f;
      rB[q] = (vrow && q0 + c0 + q < Q) ? vrow[q0 + c0 + q] : 0.f;
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      As[buf][k_row][c0 + q] = rA[q];
      Bs[buf][k_row][c0 + q] = rB[q];
    }
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  if (ktiles > 0) {
    load(0);
    store(0);
    __syncthreads();
  }
  int buf = 0;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    const bool more = kt + 1 < ktiles;
    if (more) load(kt + 1);
#pragma unroll
    for (int k = 0; k < MG_BK; ++k) {
      float4 a0 = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&As[buf][k][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

  float* Ce = C + e * P * Q;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t p = p0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
    if (p >= P) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t q = q0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (q < Q) Ce[p * Q + q] = acc[i][j];
    }
  }
}

// db1[e, g] = Σ_{r of e} dpre[r, g], rows in rank order. Grid-stride over E·G.
__global__ void moe_bias_grad_kernel(int64_t E, int64_t G, const int64_t* __restrict__ offsets,
                                     const float* __restrict__ dpre, float* __restrict__ db1) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < E * G; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = i / G, g = i % G;
    float s = 0.f;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) s += dpre[r * G + g];
    db1[i] = s;
  }
}

// db2[d] = Σ_t dy[t, d], tokens in order. Grid-stride over D.
__global__ void moe_col_sum_kernel(int64_t T, int64_t D, const float* __restrict__ dy, float* __restrict__ db2) {
  for (int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int64_t t = 0; t < T; ++t) s += dy[t * D + d];
    db2[d] = s;
  }
}

// y[t, d] = Σ_{j<K} yr[rank(t, j), d] over kept slots, in j order, then + b2[d]. Grid-stride over T·D.
__global__ void moe_combine_kernel(int64_t T, int64_t D, int64_t K, const int32_t* __restrict__ slot_rank,
                                   const float* __restrict__ yr, const float* __restrict__ b2, float* __restrict__ y) {
  const int64_t n = T * D;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    float s = 0.f;
    for (int64_t j = 0; j < K; ++j) {
      const int32_t r = slot_rank[t * K + j];
      if (r >= 0) s += yr[(int64_t)r * D + d];
    }
    y[i] = b2 ? s + b2[d] : s;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
