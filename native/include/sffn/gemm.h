// GEMM: C = alpha · op(A) · op(B) + beta · C, f32, row-major, the one matrix kernel every op builds on.
//
//   op(A) is M×K: A stored M×K (row stride lda >= K), or with trans_a stored K×M (lda >= M).
//   op(B) is K×N: B stored K×N (ldb >= N),           or with trans_b stored N×K (ldb >= K).
//   C is M×N (ldc >= N). beta == 0 means C is write-only (NaN/Inf already in C do not propagate), as in BLAS.
//   Batched: matrix b uses A + b·stride_a, B + b·stride_b, C + b·stride_c.
//
// Deterministic: for a fixed thread count the result is bit-identical run to run, and the K-reduction order
// of every C element does not depend on the thread count (so 1 and 2 threads agree bit for bit).
// Test: test/ops/gemm.test.ts. Benchmark: npm run bench -- gemm.
#pragma once
#include <cstdint>

#include "sffn/core.h"

namespace sffn {

void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch = 1, int64_t stride_a = 0,
              int64_t stride_b = 0, int64_t stride_c = 0);

// The readable specification (kernels/ref/gemm.cpp): triple loop, double accumulation, single thread.
void gemm_f32_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch = 1,
                  int64_t stride_a = 0, int64_t stride_b = 0, int64_t stride_c = 0);

// ---- gathered GEMM (the building block of the MoE grouped GEMM) ----------------------------------------
// Operands and C are addressed through row-pointer tables, so rows can be gathered from / scattered to
// anywhere (token rows routed to one expert) without a permuted copy:
//   A(i,k) = a_rows[i][k]  (a_trans = false, a_rows has M entries)   or  a_rows[k][i]  (a_trans = true, K entries)
//   B(k,j) = b_rows[k][j]  (b_trans = false, b_rows has K entries)   or  b_rows[j][k]  (b_trans = true, N entries)
//   c_rows[i][j] = alpha · Σ_k A(i,k)·B(k,j) + beta · c_rows[i][j]
// Runs on the calling thread only (callers parallelise over independent problems or column blocks), and
// follows the same fixed reduction order as gemm_f32.
void gemm_f32_rows(bool a_trans, bool b_trans, int64_t M, int64_t N, int64_t K, float alpha, const float* const* a_rows,
                   const float* const* b_rows, float beta, float* const* c_rows);

// ---- tuning and measurement ------------------------------------------------------------------------------
// The blocking the active ISA's GEMM uses: register tile MR×NR, cache blocks KC (reduction), MC (rows of A per
// packed block), NC (columns of B per packed panel). Callers that tile work themselves (grouped GEMMs) can
// align their tiles to MR/NR; K blocks are ceil(K/KC) equal-ish pieces, fixed by K alone.
struct GemmBlocking {
  int mr, nr;
  int64_t kc, mc, nc;
};
GemmBlocking gemm_blocking();

// Measured FMA throughput of `isa` in GFLOP/s: independent FMA chains in registers (the scalar path counts a
// multiply + add as 2 flops) on `threads` pool threads (clamped to [1, num_threads()]), `iterations` rounds.
// Used by the benchmark to report GEMM speed as a fraction of the machine's peak.
double gemm_fma_peak(Isa isa, int threads, int64_t iterations);

}  // namespace sffn
