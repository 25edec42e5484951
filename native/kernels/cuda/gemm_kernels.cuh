// The GEMM kernels of gemm.cu (device code only; the launchers and the contract are in gemm.cu / sffn/cuda.h).
// Kept apart so that tools/cuda-emu/gemm_emu.cpp can compile these exact kernels as host C++ with SIMT and WMMA
// stand-ins (SFFN_CUDA_EMULATION) and check their indexing, masking and pipelining on a machine without a GPU
// (test/gpu/gemm-emulated.test.ts).
#pragma once
#ifndef SFFN_CUDA_EMULATION
#include <cuda_bf16.h>
#include <mma.h>
#endif

#include <cstdint>
#include <type_traits>

namespace sffn {
namespace cuda {
namespace {

// ---- f32 SIMT ----------------------------------------------------------------------------------------------
constexpr int F_BM = 128, F_BN = 128, F_BK = 8, F_THREADS = 256;
constexpr int F_PAD = 4;  // keeps rows 16-byte aligned for float4 reads and spreads the transposing stores over banks

template <bool TA, bool TB>
__global__ void __launch_bounds__(F_THREADS)
    gemm_f32_kernel(int64_t M, int64_t N, int64_t K, float alpha, const float* __restrict__ A, int64_t lda,
                    const float* __restrict__ B, int64_t ldb, float beta, float* __restrict__ C, int64_t ldc,
                    int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  // Both tiles stored k-major: As[k][m], Bs[k][n], so the compute loop reads 4 consecutive m (or n) as a float4.
  __shared__ __align__(16) float As[2][F_BK][F_BM + F_PAD];
  __shared__ __align__(16) float Bs[2][F_BK][F_BN + F_PAD];

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;  // this thread owns rows ty*4+{0..3}, 64+ty*4+{0..3}; same for columns
  const int64_t m0 = (int64_t)blockIdx.x * F_BM;
  const int64_t n0 = (int64_t)blockIdx.y * F_BN;
  const int64_t ktiles = (K + F_BK - 1) / F_BK;

  // Staging map (4 elements per thread per operand), chosen so global reads run along the stored rows.
  //   A not transposed (M×K): thread -> m = tid/2, k = (tid%2)*4 + 0..3.   Transposed (K×M): k = tid/32, m = (tid%32)*4 + 0..3.
  //   B not transposed (K×N): thread -> k = tid/32, n = (tid%32)*4 + 0..3. Transposed (N×K): n = tid/2, k = (tid%2)*4 + 0..3.
  const int a_m = TA ? (tid % 32) * 4 : tid / 2;
  const int a_k = TA ? tid / 32 : (tid % 2) * 4;
  const int b_n = TB ? tid / 2 : (tid % 32) * 4;
  const int b_k = TB ? (tid % 2) * 4 : tid / 32;

  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const float* Ab = A + bz * stride_a;
    const float* Bb = B + bz * stride_b;
    float* Cb = C + bz * stride_c;
    float ra[4], rb[4];

    auto load = [&](int64_t kt) {
      const int64_t k0 = kt * F_BK;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int64_t gm = m0 + a_m + (TA ? e : 0), gk = k0 + a_k + (TA ? 0 : e);
        ra[e] = (gm < M && gk < K) ? (TA ? Ab[gk * lda + gm] : Ab[gm * lda + gk]) : 0.f;
        int64_t gn = n0 + b_n + (TB ? 0 : e), gk2 = k0 + b_k + (TB ? e : 0);
        rb[e] = (gn < N && gk2 < K) ? (TB ? Bb[gn * ldb + gk2] : Bb[gk2 * ldb + gn]) : 0.f;
      }
    };
    auto store = [&](int buf) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        As[buf][a_k + (TA ? 0 : e)][a_m + (TA ? e : 0)] = ra[e];
        Bs[buf][b_k + (TB ? e : 0)][b_n + (TB ? 0 : e)] = rb[e];
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
      // Fetch the next tile into registers while this one is multiplied; the store into the other buffer is
      // safe because every thread passed the barrier after that buffer's last use.
      const bool more = kt + 1 < ktiles;
      if (more) load(kt + 1);
#pragma unroll
      for (int k = 0; k < F_BK; ++k) {
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
      const int64_t gm = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
      if (gm >= M) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t gn = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
        if (gn >= N) continue;
        float* c = Cb + gm * ldc + gn;
        // beta == 0: C is write-only, so NaN/Inf already there do not propagate (BLAS convention).
        *c = beta == 0.f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
      }
    }
  }
}

// ---- bf16 tensor cores -------------------------------------------------------------------------------------
constexpr int H_BM = 128, H_BN = 128, H_BK = 32, H_STAGES = 4, H_THREADS = 256, H_PAD = 8;
// One operand tile in shared memory, either [128][BK+8] or [BK][128+8] bf16 (5120 or 4352 elements): every
// stage reserves the larger, so each of A and B starts 32-byte aligned as WMMA requires.
constexpr int H_TILE = H_BM * (H_BK + H_PAD);
constexpr int H_STAGE = 2 * H_TILE;  // A then B
constexpr size_t H_SMEM_BYTES = (size_t)H_STAGES * H_STAGE * sizeof(__nv_bfloat16);  // 80 KiB
constexpr int H_LD_K = H_BK + H_PAD;  // leading dim of a tile whose rows run along K
constexpr int H_LD_MN = H_BM + H_PAD;  // leading dim of a tile whose rows run along M or N

#ifndef SFFN_CUDA_EMULATION
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  // Copies src_bytes (0..16) and zero-fills the rest of the 16 bytes: this is how ragged tiles get padded.
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  return smem_raw;
}
#endif

__device__ __forceinline__ int64_t clamp8(int64_t v) { return v < 0 ? 0 : (v > 8 ? 8 : v); }

// Stages a 16-byte chunk: 8 consecutive bf16 of one stored row, starting at `src` (row index `row` < rows,
// element offset `col` in that row; `valid` of the 8 are inside the matrix, the rest read as zero).
template <bool ALIGNED>
__device__ __forceinline__ void stage_chunk(uint16_t* dst, const uint16_t* base, const uint16_t* src, int64_t valid) {
  if (ALIGNED) {
    cp_async16(dst, valid > 0 ? src : base, (int)(valid * 2));
  } else {
    // Rows not 16-byte aligned: masked scalar loads, then one 16-byte shared store.
    alignas(16) uint16_t v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = e < valid ? src[e] : (uint16_t)0;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
  }
}

// Stages one operand tile per K-tile: 512 chunks of 8 elements, 2 per thread. Two stored layouts:
//   K-contiguous (A not transposed: M×K; B transposed: N×K): tile [128][BK+8], chunk = (mn row, 8 k's).
//   MN-contiguous (A transposed: K×M; B not transposed: K×N): tile [BK][128+8], chunk = (k row, 8 mn's).
// Pointers and bounds are set up once per C tile so the K loop only adds a fixed step (fewer 64-bit
// multiplies, fewer registers).
template <bool KCONTIG, bool ALIGNED>
struct TileLoader {
  const uint16_t* base;
  const uint16_t* p[2];
  int64_t step;  // elements to advance per K-tile
  int soff[2];   // chunk offset inside the shared tile
  int kofs[2];   // K offset of the chunk inside the tile
  int w[2];      // K-contiguous: 1 if the row is inside the matrix; MN-contiguous: in-bounds elements (0..8)

  __device__ __forceinline__ void init(const uint16_t* b, int64_t ld, int64_t MN, int64_t mn0, int tid) {
    base = b;
    step = KCONTIG ? H_BK : H_BK * ld;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int c = tid + r * H_THREADS;
      if (KCONTIG) {
        const int row = c >> 2, col = (c & 3) * 8;
        soff[r] = row * H_LD_K + col;
        kofs[r] = col;
        w[r] = mn0 + row < MN;
        p[r] = w[r] ? b + (mn0 + row) * ld + col : b;
      } else {
        const int row = c >> 4, col = (c & 15) * 8;
        soff[r] = row * H_LD_MN + col;
        kofs[r] = row;
        w[r] = (int)clamp8(MN - (mn0 + col));
        p[r] = w[r] ? b + row * ld + mn0 + col : b;
      }
    }
  }

  __device__ __forceinline__ void stage(uint16_t* tile, int64_t kt, int64_t K) const {
    const int64_t k0 = kt * H_BK;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t valid = KCONTIG ? (w[r] ? clamp8(K - k0 - kofs[r]) : 0) : (k0 + kofs[r] < K ? w[r] : 0);
      stage_chunk<ALIGNED>(tile + soff[r], base, p[r] + kt * step, valid);
    }
  }
};

template <bool TA, bool TB, bool ALIGNED>
__global__ void __launch_bounds__(H_THREADS, 1)
    gemm_bf16_kernel(int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* __restrict__ A, int64_t lda,
                     const uint16_t* __restrict__ B, int64_t ldb, float beta, float* __restrict__ C, int64_t ldc,
                     int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c) {
#if defined(SFFN_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
  using namespace nvcuda;
  using LayoutA = typename std::conditional<TA, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<TB, wmma::col_major, wmma::row_major>::type;
  unsigned char* smem_raw = dynamic_smem();
  uint16_t* smem = reinterpret_cast<uint16_t*>(smem_raw);

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm*64 .. +63, columns wn*32 .. +31
  const int64_t m0 = (int64_t)blockIdx.x * H_BM;
  const int64_t n0 = (int64_t)blockIdx.y * H_BN;
  const int64_t ktiles = (K + H_BK - 1) / H_BK;
  // Element (m, k) of a stored tile: row-major [m][k] when not transposed, column-major (k rows) when transposed.
  const int lda_s = TA ? H_LD_MN : H_LD_K;
  const int ldb_s = TB ? H_LD_K : H_LD_MN;

  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const uint16_t* Ab = A + bz * stride_a;
    const uint16_t* Bb = B + bz * stride_b;
    float* Cb = C + bz * stride_c;

    TileLoader<!TA, ALIGNED> la;
    TileLoader<TB, ALIGNED> lb;
    la.init(Ab, lda, M, m0, tid);
    lb.init(Bb, ldb, N, n0, tid);

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    // Prologue: STAGES-1 tiles in flight. Every iteration commits one group (possibly empty), so
    // wait_group<STAGES-2> always means "the tile about to be used has landed".
#pragma unroll
    for (int s = 0; s < H_STAGES - 1; ++s) {
      if (s < ktiles) {
        uint16_t* st = smem + s * H_STAGE;
        la.stage(st, s, K);
        lb.stage(st + H_TILE, s, K);
      }
      cp_async_commit();
    }

    for (int64_t kt = 0; kt < ktiles; ++kt) {
      cp_async_wait<H_STAGES - 2>();
      __syncthreads();  // tile kt visible to all warps; the stage refilled below was last read in iteration kt-1
      const int64_t nk = kt + H_STAGES - 1;
      if (nk < ktiles) {
        uint16_t* st = smem + (nk % H_STAGES) * H_STAGE;
        la.stage(st, nk, K);
        lb.stage(st + H_TILE, nk, K);
      }
      cp_async_commit();

      const __nv_bfloat16* sa = reinterpret_cast<const __nv_bfloat16*>(smem + (kt % H_STAGES) * H_STAGE);
      const __nv_bfloat16* sb = sa + H_TILE;
#pragma unroll
      for (int kk = 0; kk < H_BK; kk += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int n = wn * 32 + j * 16;
          wmma::load_matrix_sync(fb[j], TB ? sb + n * ldb_s + kk : sb + kk * ldb_s + n, ldb_s);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = wm * 64 + i * 16;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
          wmma::load_matrix_sync(fa, TA ? sa + kk * lda_s + m : sa + m * lda_s + kk, lda_s);
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // all warps done with the pipeline buffers: reuse them as epilogue scratch

    // Epilogue: accumulator element positions are opaque in WMMA, so each 16×16 fragment goes through a
    // per-warp scratch tile, then lanes write the in-bounds part with alpha/beta.
    float* scratch = reinterpret_cast<float*>(smem_raw) + warp * 256;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int64_t gm = m0 + wm * 64 + i * 16 + (e >> 4);
          const int64_t gn = n0 + wn * 32 + j * 16 + (e & 15);
          if (gm < M && gn < N) {
            float* c = Cb + gm * ldc + gn;
            const float v = alpha * scratch[e];
            *c = beta == 0.f ? v : v + beta * *c;
          }
        }
        __syncwarp();
      }
    }
    __syncthreads();  // scratch overlaps stage 0, which the next batch's prologue refills
  }
#endif
}

}  // namespace
}  // namespace cuda
}  // namespace sffn
