// CUDA flavor: plain C++ declarations of the device-memory helpers and kernel launchers in native/kernels/cuda/.
// nvcc compiles the .cu files that define these; napi/*.cpp (compiled by g++, never seen by nvcc) calls them.
// Nothing here includes CUDA headers, so the N-API glue needs no CUDA include path.
//
// Conventions: every function returns a Status; code 0 means success, otherwise `message` names the CUDA call
// and carries the runtime's error text. Nothing aborts or exits. Kernels run on the legacy default stream, so
// launches are ordered with each other and with the synchronous copies below. All index arithmetic is 64-bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sffn {
namespace cuda {

struct Status {
  int code = 0;          // cudaError_t value (0 = cudaSuccess)
  std::string message;  // "cudaMalloc(4096 bytes): out of memory"
  bool ok() const { return code == 0; }
  bool out_of_memory() const;  // cudaErrorMemoryAllocation
};

// ---- probe -------------------------------------------------------------------------------------------------
struct DeviceProps {
  std::string name;
  int major = 0, minor = 0;
  uint64_t total_memory = 0;
  int sm_count = 0;
  int clock_khz = 0;
};

struct ProbeInfo {
  int device_count = 0;
  int driver_version = 0;   // e.g. 13000; 0 when no driver is installed
  int runtime_version = 0;  // the statically linked cudart
  std::vector<DeviceProps> devices;
  std::string archs;  // the architectures this binary was compiled for (CMAKE_CUDA_ARCHITECTURES)
};

// Fills what it can into `out` even on failure. Success means: a device exists, the driver is new enough for
// the runtime, and a kernel from this binary launched and completed on device 0 (so the binary carries code
// for this GPU).
Status probe(ProbeInfo* out);

// ---- device memory -----------------------------------------------------------------------------------------
Status device_malloc(void** ptr, size_t bytes);
// Never fails loudly: errors at process teardown (cudart unloading) are ignored.
Status device_free(void* ptr);
Status copy_to_device(void* dst, const void* src, size_t bytes);
Status copy_to_host(void* dst, const void* src, size_t bytes);
Status copy_device_to_device(void* dst, const void* src, size_t bytes);
// Fills `count` elements of `elem_bytes` (1, 2, 4 or 8) with the bit pattern `pattern` (low bytes used).
Status device_fill(void* dst, int64_t count, int elem_bytes, uint64_t pattern);
Status device_synchronize();
// Free and total memory of the current device.
Status device_mem_info(size_t* free_bytes, size_t* total_bytes);

// ---- GEMM (kernels/cuda/gemm.cu) ---------------------------------------------------------------------------
// C = alpha · op(A) · op(B) + beta · C, row-major, with the same conventions as sffn::gemm_f32 (gemm.h):
//   op(A) is M×K: A stored M×K (lda >= K), or with trans_a stored K×M (lda >= M).
//   op(B) is K×N: B stored K×N (ldb >= N), or with trans_b stored N×K (ldb >= K).
//   C is M×N (ldc >= N); beta == 0 means C is write-only. Batch b uses A + b·stride_a, B + b·stride_b, C + b·stride_c.
// All pointers are device pointers. Deterministic: each C element is reduced over K in a fixed order by one
// thread block (no split-K, no atomics), so results are bit-identical run to run.
//   gemm_f32:  f32 SIMT FMA (exact f32 products, f32 accumulation).
//   gemm_bf16: A and B are bf16 bit patterns, C is f32; tensor cores (WMMA m16n16k16) with f32 accumulation.
//              Needs compute capability >= 8.0.
Status gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch = 1,
                int64_t stride_a = 0, int64_t stride_b = 0, int64_t stride_c = 0);
Status gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                 int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t batch = 1,
                 int64_t stride_a = 0, int64_t stride_b = 0, int64_t stride_c = 0);

// ---- σ-MoE expert block (kernels/cuda/moe_experts.cu) -------------------------------------------------------
// The forward of sffn::moe_experts_forward (sffn/moe.h): pre[r] = x[t]·W1[e] (+ b1[e]), hs[r] = g·act(pre[r]),
// y[t] = Σ_j hs[rank(t,j)]·W2[e] (+ b2). x [T, D], w1 [E, D, G], b1 [E, G] or null, w2 [E, G, D], b2 [D] or null,
// pre and hs [S, G], y [T, D] are DEVICE pointers; the routing (gates [T, K], offsets [E+1], sorted_slots [S],
// slot_rank [T·K]) is in HOST memory, already validated (napi routing_arg), and uploaded per call.
// act: 0 relu, 1 gelu (erf), 2 silu, 3 none (sffn::Act). Deterministic (fixed reduction orders, no atomics).
Status moe_experts_forward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                           const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                           const float* x, const float* w1, const float* b1, const float* w2, const float* b2,
                           float* pre, float* hs, float* y);
// The backward of sffn::moe_experts_backward (sffn/moe.h) from dy [T, D]: dx [T, D], dw1 [E, D, G], db1 [E, G]
// (or null), dw2 [E, G, D], db2 [D] (or null), all DEVICE pointers like x, w1, w2, pre, hs, dy; dgates [T, K]
// is a HOST array (like the routing), 0 for slots that were not kept. Every gradient is overwritten. Reductions
// have one owner each and a fixed order (dW per expert tile over its rows in rank order; dx over the K slots in
// order), so results are deterministic.
Status moe_experts_backward(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int act, const float* gates,
                            const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                            const float* x, const float* w1, const float* w2, const float* pre, const float* hs,
                            const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2,
                            float* dgates);

// The same two with the routing on the DEVICE (moeRoute on cuda): gates [T·K], offsets [E+1], sorted_slots [S],
// slot_rank [T·K] are device pointers (S = sorted_slots' length, T·K for a device routing), and so is dgates. The
// host cannot validate device contents without a copy, so the launcher derives sanitised copies on the device
// (slots outside [0, T·K) -> 0, ranks outside [-1, S) -> -1, offsets clamped non-decreasing within [0, S]): any
// content is memory-safe, and a valid routing gives results bit-identical to the host-routing path. pre and hs are
// [S, G]; rows past offsets[E] are left untouched. The grid covers the worst-case tile count (S + 127·E) / 128, so
// nothing is read back.
Status moe_experts_forward_dev(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                               const float* gates, const int64_t* offsets, const int32_t* sorted_slots,
                               const int32_t* slot_rank, const float* x, const float* w1, const float* b1,
                               const float* w2, const float* b2, float* pre, float* hs, float* y);
Status moe_experts_backward_dev(int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                                const float* gates, const int64_t* offsets, const int32_t* sorted_slots,
                                const int32_t* slot_rank, const float* x, const float* w1, const float* w2,
                                const float* pre, const float* hs, const float* dy, float* dx, float* dw1, float* db1,
                                float* dw2, float* db2, float* dgates);

// The pieces of the forward as separate calls (moeExpertUp, moeExpertDown, moeCombine), DEVICE tensors; the
// routing on the host (validated, uploaded; S = offsets[E]) or, with routing_on_device, on the device (sanitised
// as above; S = sorted_slots' length).
Status moe_expert_up(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S, int act,
                     const float* gates, const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                     const float* x, const float* w1, const float* b1, float* pre, float* hs);
Status moe_expert_down(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t G, int64_t S,
                       const float* gates, const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank,
                       const float* hs, const float* w2, float* yr);
Status moe_combine(bool routing_on_device, int64_t T, int64_t D, int64_t E, int64_t K, int64_t S, const float* gates,
                   const int64_t* offsets, const int32_t* sorted_slots, const int32_t* slot_rank, const float* yr,
                   const float* b2, float* y);

// ---- MoE routing (kernels/cuda/moe_route.cu) ------------------------------------------------------------------
// sffn::moe_route_forward (sffn/moe.h) with every array a DEVICE pointer: z [T, E] -> choices, ids, gates [T·K],
// counts [E], offsets [E+1], sorted_slots, slot_rank [T·K] (sorted padded with -1 past S = offsets[E]), dropped
// [E], token_counts [T], aux [3] = {entropy, balance, z-loss} (double). gate: sffn::MoeGate; select: sffn::MoeSelect
// (0 top-K, 1 adaptive, 2 threshold); dropout and seed as MoeRouteParams (the same mask bit for bit); capacity < 0
// = dropless. Every buffer is sized for the worst case (S <= T·K), so the host never waits: the placement and the
// capacity ranks are deterministic counting scans (per-chunk histograms, ordered scans, no atomics), stable in
// slot order (priority order for capacity) like the CPU's.
Status moe_route_forward(int64_t T, int64_t E, int64_t K, int gate, int select, float threshold, float dropout,
                         uint64_t seed, int64_t capacity, const float* z, int32_t* choices, int32_t* ids, float* gates,
                         int32_t* counts, int64_t* offsets, int32_t* sorted_slots, int32_t* slot_rank,
                         int32_t* dropped, int32_t* token_counts, double* aux);
// sffn::moe_route_backward for the same routings, DEVICE pointers: dz [T, E] from z, choices, ids [T·K] and
// dgates [T·K] (null = zeros), plus the weighted regularisers. Entries of choices outside [0, E) are unused slots.
Status moe_route_backward(int64_t T, int64_t E, int64_t K, int gate, const float* z, const int32_t* choices,
                          const int32_t* ids, const float* dgates, float w_entropy, float w_balance, float w_z,
                          float* dz);

// ---- training row ops (kernels/cuda/nn.cu) ---------------------------------------------------------------------
// The contracts of sffn/nn.h and sffn/optim.h with DEVICE pointers (except `loss`, a host double). Indices read on
// the device cannot be validated by the host: an id or target outside [0, V) gives a NaN output row (and NaN
// loss), is skipped by the backward; a sparse-AdamW row outside [0, N) is skipped, and rows must be distinct.
// Every reduction has one owner and a fixed order (no float atomics): results are bit-identical run to run.
Status layer_norm_forward(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                          float* mean, float* rstd);
Status layer_norm_backward(int64_t T, int64_t D, const float* x, const float* g, const float* mean, const float* rstd,
                           const float* dy, float* dx, float* dg, float* db);
Status embedding_forward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y);
// dw [V, D] is overwritten (rows without tokens get 0): a counting scan lists each row's tokens in token order.
Status embedding_backward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw);
// Synchronises: the mean loss is copied back into *loss.
Status cross_entropy_forward(int64_t T, int64_t V, const float* logits, const int32_t* targets, float* lse,
                             double* loss);
Status cross_entropy_backward(int64_t T, int64_t V, const float* logits, const int32_t* targets, const float* lse,
                              float dloss, float* dlogits);
Status adamw_step(int64_t n, float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t step);
Status sparse_adamw_step(int64_t N, int64_t D, float* p, float* m, float* v, int32_t* steps, int64_t U,
                         const int32_t* rows, const float* g, float lr, float beta1, float beta2, float eps,
                         float weight_decay);

// linear: y [T, N] = x [T, K]·(w [N, K])ᵀ + b (b may be null); backward dx [T, K], dw [N, K], db [N], each may be
// null (not computed). The products run gemm_f32; db is an ordered column sum.
Status linear_forward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);
Status linear_backward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                       float* dw, float* db);
// The CPU's stateless dropout mask (sffn::dropout_apply) bit for bit; y = x·mask/(1 − p).
Status dropout_apply(int64_t n, float p, uint64_t seed, const float* x, float* y);
// Σ x² in double, in a fixed order; synchronises (the sum is copied back into *out).
Status sum_squares(int64_t n, const float* x, double* out);
Status scale_inplace(int64_t n, float s, float* x);

// ---- dense FFN (kernels/cuda/ffn.cu) --------------------------------------------------------------------------
// sffn::ffn_dense_forward / _backward (sffn/moe.h) with DEVICE pointers: x [T, D], w1 [D, F], b1 [F] or null,
// w2 [F, D], b2 [D] or null, pre and h [T, F], y [T, D]; act as sffn::Act; topk > 0 keeps the entries of each row
// of h >= its topk-th largest (the backward recomputes that mask from pre). Every gradient is overwritten.
Status ffn_dense_forward(int64_t T, int64_t D, int64_t F, int act, int64_t topk, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, float* pre, float* h, float* y);
Status ffn_dense_backward(int64_t T, int64_t D, int64_t F, int act, int64_t topk, const float* x, const float* w1,
                          const float* w2, const float* pre, const float* h, const float* dy, float* dx, float* dw1,
                          float* db1, float* dw2, float* db2);

// ---- attention (kernels/cuda/attn.cu) -------------------------------------------------------------------------
// sffn::attention_forward / _backward (sffn/nn.h) with DEVICE pointers: qkv [B·S, 3D] -> out [B·S, D], qr, kr
// [B, H, S, dh], lse [B, H, S]; backward dqkv [B·S, 3D] (overwritten) from dout and the saved tensors (out for the
// row term dout_i·out_i). Causal, rotary positions. The head width dh must be even and at most 256. Warp per row,
// O(S²·dh) per head without an S×S matrix; deterministic.
Status attention_forward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr, float* kr,
                         float* lse);
Status attention_backward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                          const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv);

// ---- PKM / PEER row ops (kernels/cuda/pkm.cu) ------------------------------------------------------------------
// The contracts of sffn/pkm.h with DEVICE pointers: idx, w, g, h, dw, dg [T, J]; V, U [N, D]; x, out, dout, dx
// [T, D]. The sparse table gradients are sized for the worst case cap = min(T·J, N) rows, so the host never waits:
// rows [cap] receives the distinct touched rows ascending, then −1; values / dU / dV [cap, D] the rows' gradients,
// then zeros. Indices on the device cannot be validated by the host: a position whose row is outside [0, N) gives
// a NaN output row (forward), NaN dw / dg and a NaN dx row (backward), and is left out of the table gradients. The
// reverse index is a stable counting radix sort of the positions by row; every reduction has one owner and a fixed
// order (no float atomics): results are bit-identical run to run. act: sffn::PeerAct (0 relu, 1 gelu, 2 silu,
// 3 identity).
Status embedding_bag_forward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                             const float* V, float* out);
Status embedding_bag_backward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                              const float* V, const float* dout, float* dw, int64_t cap, int32_t* rows,
                              float* values);
Status peer_forward(int64_t T, int64_t J, int64_t N, int64_t D, int act, const float* x, const int32_t* idx,
                    const float* g, const float* U, const float* V, float* out, float* h);
Status peer_backward(int64_t T, int64_t J, int64_t N, int64_t D, int act, const float* x, const int32_t* idx,
                     const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                     float* dg, int64_t cap, int32_t* rows, float* dU, float* dV);

// sffn::pkm_topk_forward / _backward (sffn/pkm.h) with DEVICE pointers: q [T, Hq, Dk], keys [Hk, 2, n, Dk/2],
// idx, scores, weights, dweights [T, H, k]; dq and dkeys (dense, overwritten) shaped like q and keys. act:
// sffn::PkmAct. The dims are validated by the host (Dk even, Hq and Hk in {1, H}, 1 <= k <= n, n² < 2³¹); idx
// given to the backward is not: an entry outside [0, n²) gives a NaN dq row and is left out of dkeys. The same
// selection order as the CPU (score desc, then slot asc), exact over all n² slots (candidates (i+1)(j+1) <= k).
Status pkm_topk_forward(int64_t T, int64_t H, int64_t Hq, int64_t Hk, int64_t Dk, int64_t n, int64_t k, int act,
                        const float* q, const float* keys, int32_t* idx, float* scores, float* weights);
Status pkm_topk_backward(int64_t T, int64_t H, int64_t Hq, int64_t Hk, int64_t Dk, int64_t n, int64_t k, int act,
                         const float* q, const float* keys, const int32_t* idx, const float* scores,
                         const float* weights, const float* dweights, float* dq, float* dkeys);

// ---- benchmarks (kernels/cuda/bench.cu) --------------------------------------------------------------------
// Times `iters` back-to-back GEMMs of M×N×K (no transposes, alpha 1, beta 0) on device buffers it allocates
// and frees itself, after `warmup` untimed runs, with CUDA events. dtype: 0 = f32, 1 = bf16. Writes the
// per-iteration milliseconds of each timed run into ms_out (iters entries).
Status bench_gemm(int dtype, int64_t M, int64_t N, int64_t K, int warmup, int iters, float* ms_out);
// Measured peak: a register-resident loop of independent FMAs (dtype 0, f32 SIMT) or bf16 mma.sync m16n8k16
// (dtype 1, tensor cores, f32 accumulate) over every SM. Returns TFLOP/s (2 flops per multiply-add).
Status bench_peak(int dtype, double* tflops);

}  // namespace cuda
}  // namespace sffn
