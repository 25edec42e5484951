// Device code of the CUDA product-key top-k (launcher: pkm.cu; contract: sffn/cuda.h, which follows
// sffn::pkm_topk_forward / _backward in sffn/pkm.h). Included after pkm_kernels.cuh (the backward reuses its reverse
// index); test/gpu/emulate/pkm_emu.cpp runs these exact kernels on the CPU against kernels/ref/pkm_topk.cpp.
//
//   sub-key scores  sub[(t, h, half), a] = q half · key row a (double sums, stored f32): thread per (row, a).
//   half top-k      block per (t, h, half) row: the k best of its n scores, sorted (score desc, index asc), by rank
//                   counting (thread per a: rank = #{better a'}; O(n²) per row, no sort, no atomics).
//   candidates      with both lists sorted, (i, j) can be in the top-k only when (i+1)(j+1) <= k (kernels.md §7):
//                   C = Σ_i ⌊k/(i+1)⌋ candidates v1[i] + v2[j] (f32 add, as the CPU) with slot i1[i]·n + i2[j];
//                   block per (t, h): the k best by rank counting (O(C²) per (t, h)), sorted.
//   activation      thread per token (double, as the reference): none, softmax per head, softmax over H·k, relu,
//                   sigmoid.
//   backward        ds from dweights through the activation (thread per token, double); dq thread per element,
//                   heads then slots in order; dkeys: one entry per (t, h, half, j) naming its sub-key row, the
//                   reverse index of pkm_kernels.cuh over the Hk·2·n rows, thread per (row, column) summing
//                   ds · q half over the row's entries in ascending order; untouched rows 0.
// Order everywhere: higher score first, then lower index (a NaN score ranks below every number), so selections are
// unique. An idx entry outside [0, n²) given to the backward (device memory, not checked by the host) gives a NaN
// dq row and is left out of dkeys. All index math is 64-bit; every reduction has one owner and a fixed order.
#pragma once
#include <cstdint>

#include "sffn/pkm.h"

namespace sffn {
namespace cuda {
namespace {

__device__ __forceinline__ const float* pkt_qrow(const PkmDims& d, const float* q, int64_t t, int64_t h) {
  return q + (t * d.Hq + (d.Hq == 1 ? 0 : h)) * d.Dk;
}
__device__ __forceinline__ const float* pkt_keyrow(const PkmDims& d, const float* keys, int64_t h, int64_t hf,
                                                   int64_t a) {
  return keys + (((d.Hk == 1 ? 0 : h) * 2 + hf) * d.n + a) * (d.Dk / 2);
}

// x (index sx) ranks before y (index sy): higher score, then lower index; NaN below everything.
__device__ __forceinline__ bool pkt_better(float x, int64_t sx, float y, int64_t sy) {
  const bool nx = x != x, ny = y != y;
  if (nx || ny) return !nx && ny ? true : (nx && ny ? sx < sy : false);
  return x > y || (x == y && sx < sy);
}

// Number of candidates (i, j) with (i+1)(j+1) <= k.
__host__ __device__ __forceinline__ int64_t pkt_num_candidates(int64_t k) {
  int64_t c = 0;
  for (int64_t i = 1; i <= k; ++i) c += k / i;
  return c;
}

// Thread per (row r = (t·H + h)·2 + half, a): sub[r·n + a] = q[t, h, half] · keys[h, half, a].
__global__ void pkt_subscore_kernel(PkmDims d, const float* __restrict__ q, const float* __restrict__ keys,
                                    float* __restrict__ sub) {
  const int64_t half = d.Dk / 2, total = d.T * d.H * 2 * d.n;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t a = i % d.n, r = i / d.n, hf = r % 2, th = r / 2, t = th / d.H, h = th % d.H;
    const float* qh = pkt_qrow(d, q, t, h) + hf * half;
    const float* c = pkt_keyrow(d, keys, h, hf, a);
    double s = 0;
    for (int64_t x = 0; x < half; ++x) s += (double)qh[x] * c[x];
    sub[i] = (float)s;
  }
}

// Block per row (grid-stride over the T·H·2 rows): tv[r, rank], ti[r, rank] for the k best a of the row.
__global__ void pkt_half_topk_kernel(int64_t rows, int64_t n, int64_t k, const float* __restrict__ sub,
                                     float* __restrict__ tv, int32_t* __restrict__ ti) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* s = sub + r * n;
    for (int64_t a = threadIdx.x; a < n; a += blockDim.x) {
      const float x = s[a];
      int64_t rank = 0;
      for (int64_t b = 0; b < n && rank < k; ++b) rank += pkt_better(s[b], b, x, a);
      if (rank < k) {
        tv[r * k + rank] = x;
        ti[r * k + rank] = (int32_t)a;
      }
    }
  }
}

// Block per (t, h) (grid-stride): the C candidates, then the k best of them by rank counting into idx / scores.
// cv, cs [T·H, C] are the candidate workspace.
__global__ void pkt_select_kernel(PkmDims d, int64_t C, const float* __restrict__ tv, const int32_t* __restrict__ ti,
                                  float* __restrict__ cv, int32_t* __restrict__ cs, int32_t* __restrict__ idx,
                                  float* __restrict__ scores) {
  const int64_t k = d.k, n = d.n;
  for (int64_t th = blockIdx.x; th < d.T * d.H; th += gridDim.x) {
    const float* v1 = tv + (th * 2) * k;
    const float* v2 = tv + (th * 2 + 1) * k;
    const int32_t* i1 = ti + (th * 2) * k;
    const int32_t* i2 = ti + (th * 2 + 1) * k;
    float* v = cv + th * C;
    int32_t* sl = cs + th * C;
    // Thread per i: its ⌊k/(i+1)⌋ candidates at offset Σ_{i' < i} ⌊k/(i'+1)⌋.
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      int64_t off = 0;
      for (int64_t m = 0; m < i; ++m) off += k / (m + 1);
      for (int64_t j = 0; j < k / (i + 1); ++j) {
        v[off + j] = v1[i] + v2[j];
        sl[off + j] = (int32_t)((int64_t)i1[i] * n + i2[j]);
      }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float x = v[c];
      const int64_t sx = sl[c];
      int64_t rank = 0;
      for (int64_t e = 0; e < C && rank < k; ++e) rank += pkt_better(v[e], sl[e], x, sx);
      if (rank < k) {
        idx[th * k + rank] = (int32_t)sx;
        scores[th * k + rank] = x;
      }
    }
    __syncthreads();  // the candidate block is reused by the next (t, h) of this block
  }
}

// Thread per token: weights [H·k] = act(scores [H·k]) in double (PkmAct codes).
__global__ void pkt_act_kernel(int64_t T, int64_t H, int64_t k, int act, const float* __restrict__ scores,
                               float* __restrict__ weights) {
  const int64_t HK = H * k;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (int64_t)gridDim.x * blockDim.x) {
    const float* s = scores + t * HK;
    float* w = weights + t * HK;
    if (act == 1 || act == 2) {
      const int64_t m = act == 1 ? k : HK;
      for (int64_t g0 = 0; g0 < HK; g0 += m) {
        double mx = s[g0];
        for (int64_t i = 1; i < m; ++i) mx = fmax(mx, (double)s[g0 + i]);
        double z = 0;
        for (int64_t i = 0; i < m; ++i) z += exp((double)s[g0 + i] - mx);
        for (int64_t i = 0; i < m; ++i) w[g0 + i] = (float)(exp((double)s[g0 + i] - mx) / z);
      }
    } else {
      for (int64_t i = 0; i < HK; ++i) {
        const double x = s[i];
        w[i] = (float)(act == 3 ? (x > 0 ? x : 0) : act == 4 ? 1 / (1 + exp(-x)) : x);
      }
    }
  }
}

// Thread per token: ds [H·k] (double) from dweights through the activation.
__global__ void pkt_ds_kernel(int64_t T, int64_t H, int64_t k, int act, const float* __restrict__ scores,
                              const float* __restrict__ weights, const float* __restrict__ dweights,
                              double* __restrict__ ds) {
  const int64_t HK = H * k;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < T; t += (int64_t)gridDim.x * blockDim.x) {
    const float* s = scores + t * HK;
    const float* w = weights + t * HK;
    const float* dw = dweights + t * HK;
    double* o = ds + t * HK;
    if (act == 1 || act == 2) {
      const int64_t m = act == 1 ? k : HK;
      for (int64_t g0 = 0; g0 < HK; g0 += m) {
        double dot = 0;
        for (int64_t i = 0; i < m; ++i) dot += (double)w[g0 + i] * dw[g0 + i];
        for (int64_t i = 0; i < m; ++i) o[g0 + i] = (double)w[g0 + i] * ((double)dw[g0 + i] - dot);
      }
    } else {
      for (int64_t i = 0; i < HK; ++i)
        o[i] = act == 3 ? (s[i] > 0 ? (double)dw[i] : 0) : act == 4 ? (double)dw[i] * w[i] * (1 - (double)w[i]) : dw[i];
    }
  }
}

// Thread per entry e = ((t·H + h)·2 + half)·k + j: ent[e] = the sub-key row (hk·2 + half)·n + a it read, or Hk·2·n
// (left out) when idx[t, h, j] is outside [0, n²).
__global__ void pkt_entries_kernel(PkmDims d, const int32_t* __restrict__ idx, int32_t* __restrict__ ent) {
  const int64_t M = d.T * d.H * 2 * d.k, R = d.Hk * 2 * d.n;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < M; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = e % d.k, r = e / d.k, hf = r % 2, th = r / 2, h = th % d.H;
    const int64_t slot = idx[th * d.k + j];
    if (slot < 0 || slot >= d.n * d.n) {
      ent[e] = (int32_t)R;
      continue;
    }
    const int64_t a = hf == 0 ? slot / d.n : slot % d.n;
    ent[e] = (int32_t)(((d.Hk == 1 ? 0 : h) * 2 + hf) * d.n + a);
  }
}

// Thread per element (t, hq, x) of dq: Σ over the heads reading query hq (ascending) and their slots j (ascending) of
// ds · (key row of the slot's half)[x]; NaN when one of those slots is out of range.
__global__ void pkt_dq_kernel(PkmDims d, const float* __restrict__ keys, const int32_t* __restrict__ idx,
                              const double* __restrict__ ds, float* __restrict__ dq) {
  const int64_t half = d.Dk / 2, total = d.T * d.Hq * d.Dk;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t x = i % d.Dk, tq = i / d.Dk, hq = tq % d.Hq, t = tq / d.Hq, hf = x / half, xx = x % half;
    const int64_t h0 = d.Hq == 1 ? 0 : hq, h1 = d.Hq == 1 ? d.H : hq + 1;
    double s = 0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t j = 0; j < d.k; ++j) {
        const int64_t p = (t * d.H + h) * d.k + j, slot = idx[p];
        if (slot < 0 || slot >= d.n * d.n) {
          s = NAN;
          continue;
        }
        s += ds[p] * pkt_keyrow(d, keys, h, hf, hf == 0 ? slot / d.n : slot % d.n)[xx];
      }
    dq[i] = (float)s;
  }
}

// Thread per (u, column) over the cap rows of the entries' reverse index: dkeys[rows[u], x] = Σ ds · q half[x] over
// the row's entries in ascending order (rows past U do nothing; dkeys was zeroed).
__global__ void pkt_dkeys_kernel(PkmDims d, int64_t cap, const int64_t* __restrict__ nU, const int32_t* __restrict__ rows,
                                 const int64_t* __restrict__ starts, const int32_t* __restrict__ pos,
                                 const float* __restrict__ q, const double* __restrict__ ds, float* __restrict__ dkeys) {
  const int64_t U = *nU, half = d.Dk / 2;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cap * half; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t u = i / half, x = i % half;
    if (u >= U) continue;
    double s = 0;
    for (int64_t kk = starts[u]; kk < starts[u + 1]; ++kk) {
      const int64_t e = pos[kk], j = e % d.k, r = e / d.k, hf = r % 2, th = r / 2, t = th / d.H, h = th % d.H;
      s += ds[th * d.k + j] * pkt_qrow(d, q, t, h)[hf * half + x];
    }
    dkeys[(int64_t)rows[u] * half + x] = (float)s;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
