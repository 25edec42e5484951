// Device code of the CUDA training row ops (launcher: nn.cu; contract: sffn/cuda.h, which follows sffn/nn.h and
// sffn/optim.h). Kept apart so test/gpu/emulate/nn_emu.cpp runs these exact kernels on the CPU against the
// reference ops (native/kernels/ref/*.cpp).
//
//   layer norm   y = (x − μ)·r·g + b, r = 1/√(σ² + eps): warp per row, double sums. Backward dx warp per row;
//                dg = Σ_t dy·x̂, db = Σ_t dy as per-256-row partials, then an ordered sum over the partials.
//   embedding    y[t] = W[ids[t]]. Backward dW[v] = Σ_{t: ids[t] = v} dy[t] without sorting and without float
//                atomics: a counting scan (integer histogram per 256-token chunk, per-row scan over chunks,
//                offsets, stable placement) lists the tokens of each row in token order, then one thread per
//                (row, column) sums them in that order (rows without tokens get 0).
//   cross-entropy lse_t = logsumexp(logits[t]), loss = (1/T)·Σ_t (lse_t − logits[t, y_t]): block per row, the
//                per-row terms summed in token order by one block. Backward dlogits = dloss/T·(exp(l − lse) − 1[v=y]).
//   AdamW        dense: elementwise with the host's coefficients (as cpu/adamw.cpp). Sparse rows: block per listed
//                row, its own step counter and bias corrections.
//   linear       y = x·Wᵀ + b and its backward through gemm_f32 (bias rows first, then a beta = 1 GEMM); db as
//                ordered column sums. dropout: the CPU's stateless mask bit for bit. sumSquares: per-8192 partials
//                summed in order by one block; scaleInPlace elementwise.
// Indices that come from the device (ids, targets, rows) cannot be checked by the host without a copy: an id or
// target outside [0, V) gives a NaN row (forward) or is skipped (backward); a row outside [0, N) is skipped.
// All index math is 64-bit; every reduction has one owner and a fixed order (deterministic).
#pragma once
#include <cstdint>

#include "scan.cuh"

namespace sffn {
namespace cuda {
namespace {

constexpr int NN_CHUNK = 256;  // rows per column-partial block, tokens per histogram block; their block size

__device__ __forceinline__ double nn_warp_sum(double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float nn_warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- layer norm -------------------------------------------------------------------------------------------------

__global__ void layer_norm_fwd_kernel(int64_t T, int64_t D, float eps, const float* __restrict__ x,
                                      const float* __restrict__ g, const float* __restrict__ b, float* __restrict__ y,
                                      float* __restrict__ mean, float* __restrict__ rstd) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; t < T; t += nwarps) {
    const float* xt = x + t * D;
    double s = 0;
    for (int64_t d = lane; d < D; d += 32) s += xt[d];
    const double m = nn_warp_sum(s) / (double)D;
    double q = 0;
    for (int64_t d = lane; d < D; d += 32) q += ((double)xt[d] - m) * ((double)xt[d] - m);
    const double r = 1.0 / sqrt(nn_warp_sum(q) / (double)D + (double)eps);
    for (int64_t d = lane; d < D; d += 32) y[t * D + d] = (float)(((double)xt[d] - m) * r * g[d] + b[d]);
    if (lane == 0) {
      mean[t] = (float)m;
      rstd[t] = (float)r;
    }
  }
}

__global__ void layer_norm_bwd_dx_kernel(int64_t T, int64_t D, const float* __restrict__ x, const float* __restrict__ g,
                                         const float* __restrict__ mean, const float* __restrict__ rstd,
                                         const float* __restrict__ dy, float* __restrict__ dx) {
  const int lane = threadIdx.x % 32;
  const int64_t nwarps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; t < T; t += nwarps) {
    const double m = mean[t], r = rstd[t];
    double s1 = 0, s2 = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const double xh = ((double)x[t * D + d] - m) * r, dxh = (double)dy[t * D + d] * g[d];
      s1 += dxh;
      s2 += dxh * xh;
    }
    s1 = nn_warp_sum(s1) / (double)D;
    s2 = nn_warp_sum(s2) / (double)D;
    for (int64_t d = lane; d < D; d += 32) {
      const double xh = ((double)x[t * D + d] - m) * r, dxh = (double)dy[t * D + d] * g[d];
      dx[t * D + d] = (float)(r * (dxh - s1 - xh * s2));
    }
  }
}

// Grid (ceil(D/256), up to 65535 striding over the chunks): chunk c of column d sums rows [256c, 256c + 256) in
// row order: part_g[c, d] = Σ dy·x̂, part_b[c, d] = Σ dy.
__global__ void layer_norm_bwd_partial_kernel(int64_t T, int64_t D, const float* __restrict__ x,
                                              const float* __restrict__ mean, const float* __restrict__ rstd,
                                              const float* __restrict__ dy, double* __restrict__ part_g,
                                              double* __restrict__ part_b) {
  const int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t nchunks = (T + NN_CHUNK - 1) / NN_CHUNK;
  for (int64_t c = blockIdx.y; c < nchunks; c += gridDim.y) {
    const int64_t t0 = c * NN_CHUNK, t1 = t0 + NN_CHUNK < T ? t0 + NN_CHUNK : T;
    double ag = 0, ab = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const double xh = ((double)x[t * D + d] - mean[t]) * rstd[t];
      ag += (double)dy[t * D + d] * xh;
      ab += dy[t * D + d];
    }
    part_g[c * D + d] = ag;
    part_b[c * D + d] = ab;
  }
}

// Thread per column: out[d] = Σ_c part[c, d] in chunk order (for dg and db, or any column partials).
__global__ void nn_column_final_kernel(int64_t nchunks, int64_t D, const double* __restrict__ part_a,
                                       const double* __restrict__ part_b, float* __restrict__ out_a,
                                       float* __restrict__ out_b) {
  for (int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x) {
    double a = 0, b = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      a += part_a[c * D + d];
      b += part_b[c * D + d];
    }
    out_a[d] = (float)a;
    out_b[d] = (float)b;
  }
}

// ---- embedding --------------------------------------------------------------------------------------------------

__global__ void embedding_fwd_kernel(int64_t T, int64_t V, int64_t D, const int32_t* __restrict__ ids,
                                     const float* __restrict__ w, float* __restrict__ y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / D, d = i % D, v = ids[t];
    y[i] = v >= 0 && v < V ? w[v * D + d] : NAN;
  }
}

// Block c: hist[c, v] += 1 for each token of chunk c with id v (integer atomics: the counts do not depend on the
// order). hist is zeroed by the caller. Ids outside [0, V) are not counted.
__global__ void embedding_hist_kernel(int64_t T, int64_t V, const int32_t* __restrict__ ids, int32_t* __restrict__ hist) {
  const int64_t c = blockIdx.x, t = c * NN_CHUNK + threadIdx.x;
  if (t >= T) return;
  const int64_t v = ids[t];
  if (v >= 0 && v < V) atomicAdd(&hist[c * V + v], 1);
}

// Thread per row v: hist[:, v] becomes its exclusive prefix over the chunks, counts[v] the total.
__global__ void embedding_scan_kernel(int64_t nchunks, int64_t V, int32_t* __restrict__ hist, int32_t* __restrict__ counts) {
  for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < V; v += (int64_t)gridDim.x * blockDim.x) {
    int32_t run = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int32_t h = hist[c * V + v];
      hist[c * V + v] = run;
      run += h;
    }
    counts[v] = run;
  }
}

// One block of NN_CHUNK threads: offsets [V + 1] = exclusive scan of counts (scan.cuh), offsets[V] the total.
__global__ void nn_offsets_kernel(int64_t V, const int32_t* __restrict__ counts, int64_t* __restrict__ offsets) {
  const int64_t total = block_exclusive_scan<NN_CHUNK>(V, counts, offsets);
  if (threadIdx.x == 0) offsets[V] = total;
}

// Block c, thread i: token t = 256c + i with id v goes to list[offsets[v] + hist[c, v] + #{earlier tokens of the
// chunk with id v}]: the tokens of each row in token order.
__global__ void embedding_place_kernel(int64_t T, int64_t V, const int32_t* __restrict__ ids,
                                       const int32_t* __restrict__ hist, const int64_t* __restrict__ offsets,
                                       int32_t* __restrict__ list) {
  __shared__ int32_t s_ids[NN_CHUNK];
  const int64_t c = blockIdx.x, t0 = c * NN_CHUNK;
  const int64_t n = T - t0 < NN_CHUNK ? T - t0 : NN_CHUNK;
  const int i = threadIdx.x;
  s_ids[i] = i < n ? ids[t0 + i] : -1;
  __syncthreads();
  if (i >= n) return;
  const int64_t v = s_ids[i];
  if (v < 0 || v >= V) return;
  int64_t local = 0;
  for (int q = 0; q < i; ++q) local += s_ids[q] == v;
  list[offsets[v] + hist[c * V + v] + local] = (int32_t)(t0 + i);
}

// Thread per (row v, column d): dw[v, d] = Σ dy[t, d] over the row's tokens in token order (double), 0 if none.
__global__ void embedding_reduce_kernel(int64_t V, int64_t D, const int64_t* __restrict__ offsets,
                                        const int32_t* __restrict__ list, const float* __restrict__ dy,
                                        float* __restrict__ dw) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < V * D; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t v = i / D, d = i % D;
    double s = 0;
    for (int64_t k = offsets[v]; k < offsets[v + 1]; ++k) s += dy[(int64_t)list[k] * D + d];
    dw[i] = (float)s;
  }
}

// ---- cross-entropy ----------------------------------------------------------------------------------------------

// Block (NN_CHUNK threads) per row t, grid-stride over rows: lse[t] and term[t] = lse_t − logits[t, y_t] (NaN for a
// target outside [0, V)). Block max and sum by fixed trees.
__global__ void cross_entropy_fwd_kernel(int64_t T, int64_t V, const float* __restrict__ logits,
                                         const int32_t* __restrict__ targets, float* __restrict__ lse,
                                         double* __restrict__ term) {
  __shared__ float s_max[NN_CHUNK];
  __shared__ double s_sum[NN_CHUNK];
  const int tid = threadIdx.x;
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float* l = logits + t * V;
    float m = -INFINITY;
    for (int64_t v = tid; v < V; v += NN_CHUNK) m = fmaxf(m, l[v]);
    s_max[tid] = m;
    __syncthreads();
    for (int w = NN_CHUNK / 2; w > 0; w /= 2) {
      if (tid < w) s_max[tid] = fmaxf(s_max[tid], s_max[tid + w]);
      __syncthreads();
    }
    m = s_max[0];
    double s = 0;
    for (int64_t v = tid; v < V; v += NN_CHUNK) s += exp((double)l[v] - (double)m);
    s_sum[tid] = s;
    __syncthreads();
    for (int w = NN_CHUNK / 2; w > 0; w /= 2) {
      if (tid < w) s_sum[tid] += s_sum[tid + w];
      __syncthreads();
    }
    if (tid == 0) {
      const double z = (double)m + log(s_sum[0]);
      const int64_t y = targets[t];
      lse[t] = (float)z;
      term[t] = y >= 0 && y < V ? z - (double)l[y] : NAN;
    }
    __syncthreads();  // s_max / s_sum are reused by the next row
  }
}

// One block: loss = Σ_t term[t] / T, per-thread contiguous segments in order, then a fixed tree.
__global__ void cross_entropy_loss_kernel(int64_t T, const double* __restrict__ term, double* __restrict__ loss) {
  __shared__ double s[NN_CHUNK];
  const int64_t per = (T + NN_CHUNK - 1) / NN_CHUNK;
  const int64_t b = threadIdx.x * per, e = b + per < T ? b + per : T;
  double a = 0;
  for (int64_t t = b; t < e; ++t) a += term[t];
  s[threadIdx.x] = a;
  __syncthreads();
  for (int w = NN_CHUNK / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = T > 0 ? s[0] / (double)T : 0.0;
}

__global__ void cross_entropy_bwd_kernel(int64_t T, int64_t V, const float* __restrict__ logits,
                                         const int32_t* __restrict__ targets, const float* __restrict__ lse, double scale,
                                         float* __restrict__ dlogits) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * V; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / V, v = i % V, y = targets[t];
    const double p = exp((double)logits[i] - (double)lse[t]);
    dlogits[i] = y >= 0 && y < V ? (float)(scale * (p - (v == y ? 1.0 : 0.0))) : NAN;
  }
}

// ---- AdamW ------------------------------------------------------------------------------------------------------

// c = (1 − lr·wd, β1, 1 − β1, β2, 1 − β2, lr/(1 − β1^t), 1/√(1 − β2^t), ε), as cpu/adamw.cpp.
struct AdamwCoef {
  float c[8];
};

__device__ __forceinline__ void adamw_elem(float& p, float gi, float& m, float& v, const float* c) {
  const float mi = c[1] * m + c[2] * gi;
  const float vi = c[3] * v + c[4] * (gi * gi);
  m = mi;
  v = vi;
  p = p * c[0] - c[5] * (mi / (sqrtf(vi) * c[6] + c[7]));
}

__global__ void adamw_kernel(int64_t n, float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, AdamwCoef c) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    adamw_elem(p[i], g[i], m[i], v[i], c.c);
}

// Block per listed row u (grid-stride over U): r = rows[u] (skipped outside [0, N)); t = ++steps[r]; the row's
// update with bias corrections at t (double pow, as the CPU's coefficients). Rows must be distinct.
__global__ void sparse_adamw_kernel(int64_t N, int64_t D, float* __restrict__ p, float* __restrict__ m,
                                    float* __restrict__ v, int32_t* __restrict__ steps, int64_t U,
                                    const int32_t* __restrict__ rows, const float* __restrict__ g, float lr, float beta1,
                                    float beta2, float eps, float wd) {
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    const int64_t r = rows[u];
    if (r < 0 || r >= N) continue;  // uniform across the block
    const int64_t t = (int64_t)steps[r] + 1;
    const double bc1 = 1 - pow((double)beta1, (double)t), bc2 = 1 - pow((double)beta2, (double)t);
    const float c[8] = {(float)(1 - (double)lr * wd), beta1, (float)(1 - (double)beta1), beta2,
                        (float)(1 - (double)beta2), (float)(lr / bc1), (float)(1 / sqrt(bc2)), eps};
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) adamw_elem(p[r * D + d], g[u * D + d], m[r * D + d], v[r * D + d], c);
    __syncthreads();  // every thread has read steps[r]
    if (threadIdx.x == 0) steps[r] = (int32_t)t;
  }
}

// ---- linear (the GEMMs are gemm_f32), dropout, gradient norm ----------------------------------------------------

// y[t, n] = b[n]: the bias rows a beta = 1 GEMM then accumulates into (y = x·Wᵀ + b in one rounding).
__global__ void bias_rows_kernel(int64_t T, int64_t N, const float* __restrict__ b, float* __restrict__ y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * N; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = b[i % N];
}

// Grid (ceil(N/256), up to 65535 striding over the chunks): part[c, n] = Σ_{t in chunk c} dy[t, n] in row order.
__global__ void column_sum_partial_kernel(int64_t T, int64_t N, const float* __restrict__ dy, double* __restrict__ part) {
  const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int64_t nchunks = (T + NN_CHUNK - 1) / NN_CHUNK;
  for (int64_t c = blockIdx.y; c < nchunks; c += gridDim.y) {
    const int64_t t0 = c * NN_CHUNK, t1 = t0 + NN_CHUNK < T ? t0 + NN_CHUNK : T;
    double a = 0;
    for (int64_t t = t0; t < t1; ++t) a += dy[t * N + n];
    part[c * N + n] = a;
  }
}

// Thread per column: out[n] = Σ_c part[c, n] in chunk order.
__global__ void column_sum_final_kernel(int64_t nchunks, int64_t N, const double* __restrict__ part, float* __restrict__ out) {
  for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    double a = 0;
    for (int64_t c = 0; c < nchunks; ++c) a += part[c * N + n];
    out[n] = (float)a;
  }
}

// The CPU's dropout mask (kernels/cpu/dropout.cpp dropout_keep), bit for bit: kept when the top 32 bits of a
// splitmix64 of (seed, i), as a fraction of 2^32, are >= p.
__device__ __forceinline__ bool nn_dropout_keep(uint64_t seed, int64_t i, float p) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 32) / 4294967296.0 >= (double)p;
}

__global__ void dropout_kernel(int64_t n, float p, uint64_t seed, float scale, const float* __restrict__ x,
                               float* __restrict__ y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = nn_dropout_keep(seed, i, p) ? x[i] * scale : 0.0f;
}

constexpr int64_t NN_SQ_BLOCK = 8192;  // elements per sum-of-squares partial

// Block b (NN_CHUNK threads, grid-stride over blocks): part[b] = Σ x² over [8192b, 8192b + 8192), lane-strided
// double partials then a fixed tree.
__global__ void sum_squares_partial_kernel(int64_t n, const float* __restrict__ x, double* __restrict__ part) {
  __shared__ double s[NN_CHUNK];
  const int64_t nb = (n + NN_SQ_BLOCK - 1) / NN_SQ_BLOCK;
  for (int64_t b = blockIdx.x; b < nb; b += gridDim.x) {
    const int64_t e = (b + 1) * NN_SQ_BLOCK < n ? (b + 1) * NN_SQ_BLOCK : n;
    double a = 0;
    for (int64_t i = b * NN_SQ_BLOCK + threadIdx.x; i < e; i += NN_CHUNK) a += (double)x[i] * x[i];
    s[threadIdx.x] = a;
    __syncthreads();
    for (int w = NN_CHUNK / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) part[b] = s[0];
    __syncthreads();
  }
}

// One block: *out = Σ_b part[b], contiguous per-thread segments in order, then a fixed tree.
__global__ void sum_final_kernel(int64_t nb, const double* __restrict__ part, double* __restrict__ out) {
  __shared__ double s[NN_CHUNK];
  const int64_t per = (nb + NN_CHUNK - 1) / NN_CHUNK;
  const int64_t b = threadIdx.x * per, e = b + per < nb ? b + per : nb;
  double a = 0;
  for (int64_t i = b; i < e; ++i) a += part[i];
  s[threadIdx.x] = a;
  __syncthreads();
  for (int w = NN_CHUNK / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = s[0];
}

__global__ void scale_kernel(int64_t n, float sc, float* __restrict__ x) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) x[i] *= sc;
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
