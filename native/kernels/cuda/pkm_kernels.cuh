// Device code of the CUDA PKM / PEER row ops (launcher: pkm.cu; contract: sffn/cuda.h, which follows sffn/pkm.h).
// Kept apart so test/gpu/emulate/pkm_emu.cpp runs these exact kernels on the CPU against the reference ops
// (native/kernels/ref/{embedding_bag,peer}.cpp).
//
//   reverse index  the positions p of idx [M = T·J] grouped by row, ascending within a row, without float atomics
//                  and without an N-sized histogram per chunk (N = 1024² rows): a stable LSD radix sort of (row, p)
//                  by 8-bit digits (per 256-position chunk a digit histogram, per digit a scan over the chunks,
//                  a scan over the 256 digits, stable placement by the rank among the chunk's earlier positions
//                  with the same digit), then the distinct rows compacted by a flag scan: rows[u] ascending,
//                  starts[u] .. starts[u + 1] the row's slice of the sorted positions, U on the device.
//   embedding bag  out[t] = Σ_j w[t, j] · V[idx[t, j]]: thread per (t, column), j in order (double).
//                  dw[p] = ⟨dout[t], V[idx[p]]⟩: warp per position, fixed butterfly. dV[u] = Σ w[p] · dout[p / J]
//                  over the row's positions in ascending order: thread per (u, column).
//   PEER           h[p] = U[i] · x[t]: warp per position; out[t] = Σ_j g · act(h) · V[i]: thread per (t, column).
//                  Backward c = ⟨V[i], dout[t]⟩ warp per position → dg = act(h)·c, dh = g·c·act'(h), gv = g·act(h);
//                  dx[t] = Σ_j dh · U[i] thread per (t, column); dU[u] = Σ dh · x[t], dV[u] = Σ gv · dout[t] over
//                  the row's positions in ascending order, thread per (u, column).
// Sparse outputs are sized for the worst case cap = min(M, N) rows (the host never waits for U): rows past U are
// −1 and their values 0. Indices come from the device and cannot be checked by the host: a position whose row is
// outside [0, N) gives a NaN output row (forward), NaN dw / dg / dx (backward), and is left out of the sparse
// gradient. All index math is 64-bit; every reduction has one owner and a fixed order (deterministic).
#pragma once
#include <cstdint>

#include "scan.cuh"

namespace sffn {
namespace cuda {
namespace {

constexpr int PK_CHUNK = 256;  // positions per histogram / placement block, and the block size of the scans
constexpr int PK_RADIX = 256;  // 8-bit digits (== PK_CHUNK: one thread per digit)

__device__ __forceinline__ double pk_warp_sum(double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ⟨a, b⟩ over D columns by one warp (lane l takes columns l, l + 32, …), summed in double; on every lane.
__device__ __forceinline__ double pk_warp_dot(const float* __restrict__ a, const float* __restrict__ b, int64_t D,
                                              int lane) {
  double s = 0;
  for (int64_t d = lane; d < D; d += 32) s += (double)a[d] * b[d];
  return pk_warp_sum(s);
}

// ---- reverse index ----------------------------------------------------------------------------------------------

// keys[p] = idx[p] when in [0, N), else N (sorts last, left out of the rows); vals[p] = p.
__global__ void pk_keys_init_kernel(int64_t M, int64_t N, const int32_t* __restrict__ idx, int32_t* __restrict__ keys,
                                    int32_t* __restrict__ vals) {
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < M; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t v = idx[p];
    keys[p] = v >= 0 && v < N ? (int32_t)v : (int32_t)N;
    vals[p] = (int32_t)p;
  }
}

// Block c (PK_CHUNK threads): hist[c, d] = #{positions of chunk c whose key has digit d at `shift`} (integer
// atomics on shared memory: counts do not depend on the order).
__global__ void pk_digit_hist_kernel(int64_t M, int shift, const int32_t* __restrict__ keys, int32_t* __restrict__ hist) {
  __shared__ int s_h[PK_RADIX];
  const int64_t c = blockIdx.x, p = c * PK_CHUNK + threadIdx.x;
  s_h[threadIdx.x] = 0;
  __syncthreads();
  if (p < M) atomicAdd(&s_h[(keys[p] >> shift) & (PK_RADIX - 1)], 1);
  __syncthreads();
  hist[c * PK_RADIX + threadIdx.x] = s_h[threadIdx.x];
}

// One block, thread per digit d: hist[c, d] becomes the first output slot of chunk c's positions with digit d
// (exclusive scan over the chunks, plus the exclusive scan of the digit totals).
__global__ void pk_digit_scan_kernel(int64_t nchunks, int32_t* __restrict__ hist) {
  __shared__ int64_t s_tot[PK_RADIX];
  const int d = threadIdx.x;
  int64_t run = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int32_t h = hist[c * PK_RADIX + d];
    hist[c * PK_RADIX + d] = (int32_t)run;
    run += h;
  }
  s_tot[d] = run;
  __syncthreads();
  if (d == 0) {
    int64_t r = 0;
    for (int i = 0; i < PK_RADIX; ++i) {
      const int64_t x = s_tot[i];
      s_tot[i] = r;
      r += x;
    }
  }
  __syncthreads();
  const int64_t base = s_tot[d];
  for (int64_t c = 0; c < nchunks; ++c) hist[c * PK_RADIX + d] += (int32_t)base;
}

// Block c, thread i: the position at 256c + i goes to hist[c, digit] + #{earlier positions of the chunk with the
// same digit}: stable, so after every pass the order within equal keys is the input order (ascending p).
__global__ void pk_digit_place_kernel(int64_t M, int shift, const int32_t* __restrict__ keys_in,
                                      const int32_t* __restrict__ vals_in, const int32_t* __restrict__ hist,
                                      int32_t* __restrict__ keys_out, int32_t* __restrict__ vals_out) {
  __shared__ int32_t s_dig[PK_CHUNK];
  const int64_t c = blockIdx.x, p0 = c * PK_CHUNK;
  const int64_t n = M - p0 < PK_CHUNK ? M - p0 : PK_CHUNK;
  const int i = threadIdx.x;
  const int32_t key = i < n ? keys_in[p0 + i] : 0;
  s_dig[i] = i < n ? (key >> shift) & (PK_RADIX - 1) : -1;
  __syncthreads();
  if (i >= n) return;
  const int32_t d = s_dig[i];
  int64_t local = 0;
  for (int q = 0; q < i; ++q) local += s_dig[q] == d;
  const int64_t dst = (int64_t)hist[c * PK_RADIX + d] + local;
  keys_out[dst] = key;
  vals_out[dst] = vals_in[p0 + i];
}

// Sorted key k[i] starts a row when it is a valid row (< N) and differs from k[i − 1].
__device__ __forceinline__ bool pk_row_start(int64_t i, int64_t N, const int32_t* keys) {
  return keys[i] < N && (i == 0 || keys[i] != keys[i - 1]);
}

// Block c: cnt[c] = number of row starts among the sorted keys of chunk c.
__global__ void pk_unique_count_kernel(int64_t M, int64_t N, const int32_t* __restrict__ keys, int32_t* __restrict__ cnt) {
  __shared__ int32_t s_f[PK_CHUNK];
  const int64_t c = blockIdx.x, i = c * PK_CHUNK + threadIdx.x;
  s_f[threadIdx.x] = i < M && pk_row_start(i, N, keys) ? 1 : 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t s = 0;
    for (int q = 0; q < PK_CHUNK; ++q) s += s_f[q];
    cnt[c] = s;
  }
}

// One block of PK_CHUNK threads: coff [nchunks] = exclusive scan of cnt (scan.cuh); *nU = the total (U),
// starts[U] = 0 (the end of the last row is written by pk_rows_kernel when there is one).
__global__ void pk_chunk_offsets_kernel(int64_t nchunks, const int32_t* __restrict__ cnt, int64_t* __restrict__ coff,
                                        int64_t* __restrict__ nU, int64_t* __restrict__ starts) {
  const int64_t total = block_exclusive_scan<PK_CHUNK>(nchunks, cnt, coff);
  if (threadIdx.x == 0) {
    *nU = total;
    starts[total] = 0;
  }
}

// Block c, thread i: a row start at sorted index i = 256c + i becomes row u = coff[c] + #{earlier starts of the
// chunk}: rows[u] = its key, starts[u] = i. The last valid key also writes starts[U] = i + 1.
__global__ void pk_rows_kernel(int64_t M, int64_t N, const int32_t* __restrict__ keys, const int64_t* __restrict__ coff,
                               const int64_t* __restrict__ nU, int32_t* __restrict__ rows, int64_t* __restrict__ starts) {
  __shared__ int32_t s_f[PK_CHUNK];
  const int64_t c = blockIdx.x, i = c * PK_CHUNK + threadIdx.x;
  const bool f = i < M && pk_row_start(i, N, keys);
  s_f[threadIdx.x] = f ? 1 : 0;
  __syncthreads();
  if (i >= M) return;
  if (f) {
    int64_t local = 0;
    for (int q = 0; q < (int)threadIdx.x; ++q) local += s_f[q];
    const int64_t u = coff[c] + local;
    rows[u] = keys[i];
    starts[u] = i;
  }
  if (keys[i] < N && (i + 1 == M || keys[i + 1] >= N)) starts[*nU] = i + 1;
}

// ---- embedding bag ----------------------------------------------------------------------------------------------

// Thread per (t, column): out[t, d] = Σ_j coef[t, j] · table[idx[t, j], d], j in order, in double (NaN when a
// position of t is out of range). The embedding bag's forward (coef w, table V) and PEER's dx (coef dh, table U).
template <class C>
__global__ void pk_weighted_rows_kernel(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* __restrict__ idx,
                                        const C* __restrict__ coef, const float* __restrict__ table,
                                        float* __restrict__ out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    double s = 0;
    for (int64_t j = 0; j < J; ++j) {
      const int64_t p = t * J + j, r = idx[p];
      s += r >= 0 && r < N ? (double)coef[p] * table[r * D + d] : NAN;
    }
    out[i] = (float)s;
  }
}

// Warp per position p: out[p] = ⟨table[idx[p]], tok[p / J]⟩ (lane-strided double partials, butterfly sum); NaN
// where idx[p] is outside [0, N). The embedding bag's dw (table V, tok dout) and PEER's h (table U, tok x).
__global__ void pk_row_dot_kernel(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* __restrict__ idx,
                                  const float* __restrict__ table, const float* __restrict__ tok,
                                  float* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t p = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; p < T * J; p += nwarps) {
    const int64_t r = idx[p];
    if (r < 0 || r >= N) {  // uniform across the warp
      if (lane == 0) out[p] = NAN;
      continue;
    }
    const double s = pk_warp_dot(table + r * D, tok + (p / J) * D, D, lane);
    if (lane == 0) out[p] = (float)s;
  }
}

// Thread per (u, column) over the cap rows of the sparse output: values[u, d] = Σ w[p] · dout[p / J, d] over the
// row's positions in ascending order; rows past U: rows[u] = −1, values 0.
__global__ void eb_dv_kernel(int64_t J, int64_t D, int64_t cap, const int64_t* __restrict__ nU,
                             const int64_t* __restrict__ starts, const int32_t* __restrict__ pos,
                             const float* __restrict__ w, const float* __restrict__ dout, int32_t* __restrict__ rows,
                             float* __restrict__ values) {
  const int64_t U = *nU;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cap * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i / D, d = i % D;
    if (u >= U) {
      values[i] = 0.f;
      if (d == 0) rows[u] = -1;
      continue;
    }
    double s = 0;
    for (int64_t k = starts[u]; k < starts[u + 1]; ++k) {
      const int64_t p = pos[k];
      s += (double)w[p] * dout[(p / J) * D + d];
    }
    values[i] = (float)s;
  }
}

// ---- PEER ---------------------------------------------------------------------------------------------------------

// act codes as sffn::PeerAct: 0 relu, 1 gelu (erf form), 2 silu, 3 identity. Double, as the reference.
__device__ __forceinline__ double pk_act(int act, double h) {
  switch (act) {
    case 0: return h > 0 ? h : 0;
    case 1: return 0.5 * h * (1 + erf(h * 0.70710678118654752440));
    case 2: return h / (1 + exp(-h));
    default: return h;
  }
}
__device__ __forceinline__ double pk_act_grad(int act, double h) {
  switch (act) {
    case 0: return h > 0 ? 1 : 0;
    case 1: return 0.5 * (1 + erf(h * 0.70710678118654752440)) + h * exp(-0.5 * h * h) * 0.39894228040143267794;
    case 2: {
      const double s = 1 / (1 + exp(-h));
      return s * (1 + h * (1 - s));
    }
    default: return 1;
  }
}

// Thread per (t, column): out[t, d] = Σ_j g · act(h) · V[i, d], j in order.
__global__ void peer_fwd_kernel(int64_t T, int64_t J, int64_t N, int64_t D, int act, const int32_t* __restrict__ idx,
                                const float* __restrict__ g, const float* __restrict__ h, const float* __restrict__ V,
                                float* __restrict__ out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    double s = 0;
    for (int64_t j = 0; j < J; ++j) {
      const int64_t p = t * J + j, r = idx[p];
      s += r >= 0 && r < N ? (double)g[p] * pk_act(act, h[p]) * V[r * D + d] : NAN;
    }
    out[i] = (float)s;
  }
}

// Warp per position p: c = ⟨V[i], dout[t]⟩; dg[p] = act(h)·c, dh[p] = g·c·act'(h), gv[p] = g·act(h) (double).
__global__ void peer_bwd_pos_kernel(int64_t T, int64_t J, int64_t N, int64_t D, int act, const int32_t* __restrict__ idx,
                                    const float* __restrict__ g, const float* __restrict__ V,
                                    const float* __restrict__ h, const float* __restrict__ dout, float* __restrict__ dg,
                                    double* __restrict__ dh, double* __restrict__ gv) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t p = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; p < T * J; p += nwarps) {
    const int64_t r = idx[p];
    if (r < 0 || r >= N) {
      if (lane == 0) {
        dg[p] = NAN;
        dh[p] = NAN;
        gv[p] = 0;
      }
      continue;
    }
    const float* v = V + r * D;
    const float* go = dout + (p / J) * D;
    const double c = pk_warp_dot(v, go, D, lane);
    if (lane == 0) {
      const double hv = h[p];
      dg[p] = (float)(pk_act(act, hv) * c);
      dh[p] = (double)g[p] * c * pk_act_grad(act, hv);
      gv[p] = (double)g[p] * pk_act(act, hv);
    }
  }
}

// Thread per (u, column) over the cap rows: dU[u, d] = Σ dh[p] · x[p / J, d], dV[u, d] = Σ gv[p] · dout[p / J, d]
// over the row's positions in ascending order; rows past U: rows[u] = −1, values 0.
__global__ void peer_duv_kernel(int64_t J, int64_t D, int64_t cap, const int64_t* __restrict__ nU,
                                const int64_t* __restrict__ starts, const int32_t* __restrict__ pos,
                                const double* __restrict__ dh, const double* __restrict__ gv,
                                const float* __restrict__ x, const float* __restrict__ dout, int32_t* __restrict__ rows,
                                float* __restrict__ dU, float* __restrict__ dV) {
  const int64_t U = *nU;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cap * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i / D, d = i % D;
    if (u >= U) {
      dU[i] = 0.f;
      dV[i] = 0.f;
      if (d == 0) rows[u] = -1;
      continue;
    }
    double a = 0, b = 0;
    for (int64_t k = starts[u]; k < starts[u + 1]; ++k) {
      const int64_t p = pos[k], o = (p / J) * D + d;
      a += dh[p] * x[o];
      b += gv[p] * dout[o];
    }
    dU[i] = (float)a;
    dV[i] = (float)b;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
