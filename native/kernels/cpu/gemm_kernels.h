// Internal interface between the GEMM driver (gemm.cpp, baseline ISA) and its per-ISA packing routines and
// micro-kernels (gemm.avx512.cpp, gemm.avx2.cpp). Plain declarations only: this header is compiled with
// different -m flags in different files, so it holds no non-static inline code (the linker could otherwise
// keep an AVX-512 copy of a function the baseline code calls).
//
// BLIS-style data flow for C[M×N] += op(A)[M×K] · op(B)[K×N]:
//   pack_a: op(A)[i0:i0+mc, k0:k0+kc] -> ceil(mc/MR) slivers, each [kc][MR] (rows past mc are zero)
//   pack_b: op(B)[k0:k0+kc, j0:j0+nc] -> ceil(nc/NR) slivers, each [kc][NR] (columns past nc are zero)
//   kernel: one MR×NR tile: acc = Σ_k a[k][0:MR] ⊗ b[k][0:NR] (k ascending, one FMA per term), then
//           C = alpha·acc (beta == 0, C never read) or C = alpha·acc + beta·C, on the first mr×nr entries.
// Operands are read through GemmSrc, which is either a strided matrix or a table of row pointers, so the
// strided GEMM and the gathered (row-pointer) GEMM share every line of packing and kernel code.
#pragma once
#include <cstdint>

namespace sffn {

// A row-major source: row r starts at rows[r] when rows is set, else at base + r·ld.
struct GemmSrc {
  const float* base;
  int64_t ld;
  const float* const* rows;
};

static inline const float* gemm_src_row(const GemmSrc* s, int64_t r) {
  return s->rows ? s->rows[r] : s->base + r * s->ld;
}

// A(i,k) = row(i)[k] (trans = false) or row(k)[i] (trans = true). dst is 64-byte aligned.
using GemmPackA = void (*)(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst);
// B(k,j) = row(k)[j] (trans = false) or row(j)[k] (trans = true). dst is 64-byte aligned.
using GemmPackB = void (*)(const GemmSrc* b, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst);
// c[r] points at C(row r of the tile, column 0 of the tile), r < mr.
using GemmKernel = void (*)(int64_t kc, const float* a, const float* b, float* const* c, float alpha, float beta, int mr,
                            int nr);

// Few rows (m <= MR per call; the driver calls it per group of MR rows), nothing packed:
// C[0:m, 0:n] = alpha·A·B + beta·C, where A row r is a[r][0:K] (contiguous), B(k,j) = row(k)[j0+j]
// (b_trans = false) or row(j0+j)[k] (b_trans = true), c[r] points at C(r, 0); work holds m·n floats
// (64-byte aligned). Every element is one FMA chain (b_trans = false) or one
// fixed-order lane reduction (b_trans = true) over the whole K.
using GemmSmall = void (*)(bool b_trans, int m, int64_t n, int64_t K, const float* const* a, const GemmSrc* b,
                           int64_t j0, float* const* c, float alpha, float beta, float* work);

namespace avx512 {
constexpr int kGemmMR = 6, kGemmNR = 64;
void gemm_pack_a(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst);
void gemm_pack_b(const GemmSrc* b, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst);
void gemm_kernel(int64_t kc, const float* a, const float* b, float* const* c, float alpha, float beta, int mr, int nr);
void gemm_small(bool b_trans, int m, int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0,
                float* const* c, float alpha, float beta, float* work);
// Independent FMA chains in registers; returns a value that depends on all of them. flops per call: 768·iters.
float gemm_fma_loop(int64_t iters);
}  // namespace avx512

namespace avx2 {
constexpr int kGemmMR = 6, kGemmNR = 16;
void gemm_pack_a(const GemmSrc* a, bool trans, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst);
void gemm_pack_b(const GemmSrc* b, bool trans, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst);
void gemm_kernel(int64_t kc, const float* a, const float* b, float* const* c, float alpha, float beta, int mr, int nr);
void gemm_small(bool b_trans, int m, int64_t n, int64_t K, const float* const* a, const GemmSrc* b, int64_t j0,
                float* const* c, float alpha, float beta, float* work);
// flops per call: 192·iters (12 ymm chains).
float gemm_fma_loop(int64_t iters);
}  // namespace avx2

}  // namespace sffn
