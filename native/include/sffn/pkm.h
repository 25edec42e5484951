// Product-Key Memory (Lample et al. 2019; Csordás et al. 2023 §3.2) and PEER (He 2024) kernels.
//
// Shape letters: T tokens, H heads, D value/model width, N = n² memory slots (n sub-keys per half),
// k slots kept per head, J = H·k slots per token, U unique rows touched by a batch.
//
//   pkm_topk      q [T, Hq, Dk] · sub-keys [Hk, 2, n, Dk/2] → exact top-k of s1[a] + s2[b] over all N = n² slots
//                 per (token, head): indices [T, H, k] (slot a·n + b), raw scores and activated weights.
//                 Hq, Hk ∈ {1, H}: per-head keys (PKM, Hk = H), shared keys (PEER, Hk = 1), one query read by
//                 every head (Csordás PKM, Hq = 1).
//   embedding_bag out[t] = Σ_j w[t, j] · V[idx[t, j]]                       V [N, D]
//   peer          out[t] = Σ_j g[t, j] · act(U[idx[t, j]] · x[t]) · V[idx[t, j]]    U, V [N, D]
//
// Backward passes return the table gradients sparse: the unique rows touched (ascending) and one [U, D] block,
// built with a deterministic reverse index (histogram → prefix → stable inverted list → one owner per row), so
// no N×D buffer is ever allocated and results do not depend on the thread count.
//
// Kernels never allocate: callers pass workspaces sized by the *_work_bytes() functions.
// Tests: test/ops/pkm-topk.test.ts, embedding-bag.test.ts, peer.test.ts. Benchmark: npm run bench -- pkm.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sffn {

// ---- product-key top-k ------------------------------------------------------------------------------------
// Activation of the k selected raw scores of one head into weights:
//   None: w = s;  Softmax: softmax over the head's k;  SoftmaxAll: softmax over the token's H·k (the Csordás code);
//   Relu: max(s, 0) (non-competitive);  Sigmoid: 1 / (1 + e^-s).
enum class PkmAct : int { None = 0, Softmax = 1, SoftmaxAll = 2, Relu = 3, Sigmoid = 4 };

struct PkmDims {
  int64_t T;   // tokens
  int64_t H;   // heads
  int64_t Hq;  // query heads stored: 1 (all heads read the same query) or H
  int64_t Hk;  // sub-key tables: 1 (shared, PEER) or H (per head, PKM)
  int64_t Dk;  // query width (even); each half has Dk/2
  int64_t n;   // sub-keys per half; N = n²
  int64_t k;   // slots kept per head, 1 <= k <= n
};

// Ordering used everywhere (so results are unique even with ties): higher score first, then lower slot index.
size_t pkm_topk_work_bytes(const PkmDims& d);
// idx, scores, weights [T, H, k], sorted by score descending within each head.
void pkm_topk_forward(const PkmDims& d, PkmAct act, const float* q, const float* keys, int32_t* idx, float* scores,
                      float* weights, void* work);
// dq [T, Hq, Dk] and dkeys [Hk, 2, n, Dk/2] are overwritten. dweights [T, H, k] is the gradient of the weights.
size_t pkm_topk_backward_work_bytes(const PkmDims& d);
void pkm_topk_backward(const PkmDims& d, PkmAct act, const float* q, const float* keys, const int32_t* idx,
                       const float* scores, const float* weights, const float* dweights, float* dq, float* dkeys,
                       void* work);
// References (kernels/ref/pkm_topk.cpp): exhaustive search over all n² sums in double, single thread.
void pkm_topk_forward_ref(const PkmDims& d, PkmAct act, const float* q, const float* keys, int32_t* idx,
                          float* scores, float* weights);
void pkm_topk_backward_ref(const PkmDims& d, PkmAct act, const float* q, const float* keys, const int32_t* idx,
                           const float* scores, const float* weights, const float* dweights, float* dq, float* dkeys);

// ---- reverse index: which positions of a list of row ids hold each row ------------------------------------
// ids [M] with values in [0, N) (a negative id is skipped). On return rows[0..U) are the distinct ids ascending;
// positions offsets[u] .. offsets[u+1] of pos hold the positions p (ascending) with ids[p] == rows[u]. Capacities:
// counts row_index_counts_size(M, N) (N + 1, or M where a radix sort uses it for pairs), rows and offsets
// min(M, N) + 1, pos M. Returns U. Deterministic: the same index for any thread count.
int64_t row_index_counts_size(int64_t M, int64_t N);
int64_t row_index_build(const int32_t* ids, int64_t M, int64_t N, int64_t* counts, int32_t* rows, int64_t* offsets,
                        int64_t* pos);

// ---- weighted row gather (embedding bag, sum mode) ----------------------------------------------------------
// idx, w [T, J]; V [N, D]; out [T, D].
void embedding_bag_forward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                           const float* V, float* out);
// dw [T, J] = ⟨dout[t], V[idx[t, j]]⟩; dV_rows [U, D]: row u = Σ over positions p of row u of w[p] · dout[p / J].
// (rows, offsets, pos) come from row_index_build(idx, T·J, N, ...).
void embedding_bag_backward(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                            const float* V, const float* dout, float* dw, int64_t U, const int32_t* rows,
                            const int64_t* offsets, const int64_t* pos, float* dV_rows);
void embedding_bag_forward_ref(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                               const float* V, float* out);
// The reference fills dV_rows for the given unique rows by scanning every position (no reverse index).
void embedding_bag_backward_ref(int64_t T, int64_t J, int64_t N, int64_t D, const int32_t* idx, const float* w,
                                const float* V, const float* dout, float* dw, int64_t U, const int32_t* rows,
                                float* dV_rows);

// ---- PEER singleton experts ---------------------------------------------------------------------------------
// act(h) applied to h = U[i] · x: Relu, Gelu (erf form, as torch.nn.GELU()), Silu, Identity.
enum class PeerAct : int { Relu = 0, Gelu = 1, Silu = 2, Identity = 3 };

// x [T, D]; idx, g [T, J]; U, V [N, D]; out [T, D]; h [T, J] receives the pre-activations (saved for backward).
void peer_forward(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                  const float* g, const float* U, const float* V, float* out, float* h);
// dx [T, D]; dg [T, J] = act(h) · ⟨V[i], dout[t]⟩; dU_rows, dV_rows [U, D] for the unique rows of idx:
//   dU[i] = Σ g · act'(h) · ⟨V[i], dout[t]⟩ · x[t],   dV[i] = Σ g · act(h) · dout[t].
// work: peer_backward_work_bytes(T, J).
size_t peer_backward_work_bytes(int64_t T, int64_t J);
void peer_backward(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                   const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                   float* dg, int64_t nrows, const int32_t* rows, const int64_t* offsets, const int64_t* pos,
                   float* dU_rows, float* dV_rows, void* work);
void peer_forward_ref(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                      const float* g, const float* U, const float* V, float* out, float* h);
void peer_backward_ref(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                       const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                       float* dg, int64_t nrows, const int32_t* rows, float* dU_rows, float* dV_rows);

// ---- query BatchNorm (Lample 2019 §3.2 / PEER §2: BatchNorm1d over the H·Dk query features) ------------------
// x, y [T, F]; gamma, beta [F] (null: 1 and 0); running_mean/var [F] (null: not tracked); mean, invstd [F] out.
// training: statistics of this batch (biased variance normalises, unbiased variance updates the running
// estimate with `momentum`, as torch.nn.BatchNorm1d); else the running statistics. mean/invstd receive the
// statistics used, for the backward. Per feature, sums run over t in order: deterministic for any thread count.
void batch_norm_forward(int64_t T, int64_t F, const float* x, const float* gamma, const float* beta,
                        float* running_mean, float* running_var, bool training, float momentum, float eps, float* y,
                        float* mean, float* invstd);
// dx [T, F]; dgamma, dbeta [F] (null: not needed). training selects the batch-statistics gradient.
void batch_norm_backward(int64_t T, int64_t F, const float* dy, const float* x, const float* gamma, const float* mean,
                         const float* invstd, bool training, float* dx, float* dgamma, float* dbeta);
void batch_norm_forward_ref(int64_t T, int64_t F, const float* x, const float* gamma, const float* beta,
                            float* running_mean, float* running_var, bool training, float momentum, float eps,
                            float* y, float* mean, float* invstd);
void batch_norm_backward_ref(int64_t T, int64_t F, const float* dy, const float* x, const float* gamma,
                             const float* mean, const float* invstd, bool training, float* dx, float* dgamma,
                             float* dbeta);

// ---- machine memory bandwidth (for the benchmarks' floors) ---------------------------------------------------
// STREAM-like copy (a → b), triad (a = b + s·c) and read (sum of a) over buffers of `bytes` each, plus `rows`:
// reading 1 KiB rows of a in a scattered order (the PKM/PEER gather pattern), on the current thread pool. Returns
// the best of `reps` repetitions in bytes moved per second (copy counts 2 × bytes, triad 3 × bytes).
struct MemBandwidth {
  double copy;
  double triad;
  double read;
  double rows;
};
MemBandwidth mem_bandwidth(float* a, float* b, float* c, int64_t n, int reps);

}  // namespace sffn
