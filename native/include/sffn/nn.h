// Transformer ops (CPU): linear, embedding, layer norm, causal self-attention with rotary positions,
// cross-entropy, dropout, and the reductions behind gradient clipping. Forward and backward side by side.
//
// Shape letters: T = B·S tokens, D model width, H heads, dh = D/H head width, V vocabulary, K/N the in/out
// widths of a linear map. Row-major everywhere. Backward kernels overwrite their outputs (no accumulation).
//
//   linear          y [T, N] = x [T, K] · Wᵀ + b,  W [N, K], b [N]
//   embedding       y [T, D] = W[ids[t]],  W [V, D]
//   layer_norm      y = (x − μ_t)·r_t·g + b, r_t = 1/√(σ²_t + eps); μ, r [T] saved for backward
//   attention       qkv [T, 3D] = (q | k | v), each [T, D] with heads contiguous; q, k rotated by RoPE
//                   (interleaved pairs, θ_j = 10000^(−2j/dh), position = index within the sequence);
//                   P = softmax_causal(q·kᵀ/√dh); out [T, D] = P·v; saved: qr, kr [B, H, S, dh] and the row
//                   log-sum-exp L [B, H, S] (P is recomputed block by block in backward: memory O(S), not O(S²))
//   cross_entropy   loss = (1/T) Σ_t (lse_t − logits[t, y_t]), lse [T] saved
//   dropout         y = x · m / (1 − p), m_i = [hash(seed, i) ≥ p], no state saved (the mask is recomputed)
//   sum_squares     Σ x² in double, fixed-size blocks summed in order (independent of the thread count)
//
// Every reduction has one owner per output element and a fixed order, so results are bit-identical for any
// thread count. Test: test/ops/nn.test.ts. Benchmark: npm run bench -- train.
#pragma once
#include <cstdint>

namespace sffn {

void linear_forward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);
// dx [T, K], dw [N, K], db [N]; any may be null (not computed).
void linear_backward(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db);
void linear_forward_ref(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);
void linear_backward_ref(int64_t T, int64_t K, int64_t N, const float* x, const float* w, const float* dy, float* dx,
                         float* dw, float* db);

// ids must be in [0, V) (the napi layer checks).
void embedding_forward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y);
void embedding_backward(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw);
void embedding_forward_ref(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* w, float* y);
void embedding_backward_ref(int64_t T, int64_t V, int64_t D, const int32_t* ids, const float* dy, float* dw);

void layer_norm_forward(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                        float* mean, float* rstd);
void layer_norm_backward(int64_t T, int64_t D, const float* x, const float* g, const float* mean, const float* rstd,
                         const float* dy, float* dx, float* dg, float* db);
void layer_norm_forward_ref(int64_t T, int64_t D, float eps, const float* x, const float* g, const float* b, float* y,
                            float* mean, float* rstd);
void layer_norm_backward_ref(int64_t T, int64_t D, const float* x, const float* g, const float* mean,
                             const float* rstd, const float* dy, float* dx, float* dg, float* db);

// qr, kr [B, H, S, dh] (rotated q and k) and lse [B, H, S] (log Σ_{j≤i} e^{s_ij}) are saved for backward.
void attention_forward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr, float* kr,
                       float* lse);
// dqkv [T, 3D]. `out` is the forward's output (the fast kernel gets the softmax row term as dout_i·out_i).
void attention_backward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                        const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv);
void attention_forward_ref(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr,
                           float* kr, float* lse);
void attention_backward_ref(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* out,
                            const float* qr, const float* kr, const float* lse, const float* dout, float* dqkv);

// Targets must be in [0, V). Returns the mean loss.
double cross_entropy_forward(int64_t T, int64_t V, const float* logits, const int32_t* y, float* lse);
// dlogits [T, V] = dloss/T · (softmax − onehot).
void cross_entropy_backward(int64_t T, int64_t V, const float* logits, const int32_t* y, const float* lse, float dloss,
                            float* dlogits);
double cross_entropy_forward_ref(int64_t T, int64_t V, const float* logits, const int32_t* y, float* lse);
void cross_entropy_backward_ref(int64_t T, int64_t V, const float* logits, const int32_t* y, const float* lse,
                                float dloss, float* dlogits);

// The same function computes forward (x → y) and backward (dy → dx): the mask depends only on (seed, i).
void dropout_apply(int64_t n, float p, uint64_t seed, const float* x, float* y);
bool dropout_keep(uint64_t seed, int64_t i, float p);

// out[i] = f32(N(0,1) · std_dev) for the n values Rng.normal() (lib/data/random.ts, mulberry32 + Box-Muller)
// draws from `state`, bit for bit; the generator's state afterwards is state + 2n·0x6d2b79f5 (mod 2^32).
void fill_normal_mulberry(int64_t n, uint32_t state, double std_dev, float* out);

double sum_squares(int64_t n, const float* x);
void scale_inplace(int64_t n, float s, float* x);

}  // namespace sffn
