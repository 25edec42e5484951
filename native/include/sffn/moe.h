// Mixture-of-Experts kernels (CPU): routing, the expert computation as grouped GEMMs, and the dense FFN
// baseline. methods.md §1 (σ-MoE), §4 (Switch), §6 (adaptive gating), §7 (XMoE); kernels.md §1, §5.
//
// Shape letters: T tokens, D model width, E experts, K slots per token (experts per token, the maximum for
// the variable-K routers), G expert width, F dense width, S kept slots (S <= T·K).
//
// A slot is one (token, rank) pair, numbered s = t·K + j. Routing sorts the kept slots stably by expert:
// sorted_slots[offsets[e] .. offsets[e+1]) are the slots of expert e in increasing slot order, and
// slot_rank[s] is the position of slot s in that list (its "rank", the row of every per-slot buffer), or -1.
//
// Test: test/ops/moe-route.test.ts, test/ops/moe-experts.test.ts, test/ops/ffn-dense.test.ts.
// Benchmark: npm run bench -- moe.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sffn {

// ---- routing ---------------------------------------------------------------------------------------------

enum class MoeGate : int {
  Sigmoid = 0,        // σ-MoE: gate = σ(z_e), non-competitive
  Softmax = 1,        // gate = softmax(z)_e over all E experts, no renormalisation (Switch, "before top-k")
  SoftmaxRenorm = 2,  // gate = softmax over the chosen experts' logits only ("after top-k", Mixtral)
};

enum class MoeSelect : int {
  TopK = 0,       // the K largest logits (ties toward the lower index)
  Adaptive = 1,   // top-1, plus the top-2 expert when p1 - p2 <= threshold (p = softmax(z)); K must be 2
  Threshold = 2,  // XMoE: the shortest prefix (by p = softmax(z), descending) whose mass reaches threshold, <= K
};

struct MoeRouteParams {
  int64_t T = 0, E = 0, K = 0;
  MoeGate gate = MoeGate::Sigmoid;
  MoeSelect select = MoeSelect::TopK;
  float threshold = 0;  // Adaptive: probability gap; Threshold: cumulative probability
  float dropout = 0;    // expert dropout probability δ (σ-MoE §1.6): mask before selection, no rescaling
  uint64_t seed = 0;    // dropout mask = hash(seed, t·E + e): deterministic, independent of the thread count
  int64_t capacity = -1;  // max kept slots per expert (Switch token dropping); < 0 = dropless
};

// Auxiliary losses of one routing call, computed from z in double precision.
struct MoeAux {
  double entropy = 0;  // σ-MoE §1.5: Σ_e p̄_e log p̄_e, p̄ = mean_t softmax(z_t)
  double balance = 0;  // Switch: E · Σ_e f_e P_e, f_e = share of tokens whose first choice is e, P = p̄
  double zloss = 0;    // ST-MoE: mean_t (logsumexp_e z_t,e)²
};

// Outputs of moe_route_forward, all caller-provided.
struct MoeRouteOut {
  int32_t* choices = nullptr;       // [T, K] chosen expert before capacity, -1 for an unused slot
  int32_t* ids = nullptr;           // [T, K] expert that computes the slot, -1 if unused or dropped by capacity
  float* gates = nullptr;           // [T, K] combine weight, 0 where ids = -1
  int32_t* counts = nullptr;        // [E] kept slots per expert
  int64_t* offsets = nullptr;       // [E + 1] exclusive prefix sum of counts; offsets[E] = S
  int32_t* sorted_slots = nullptr;  // [T·K] first S entries: kept slots sorted stably by expert; rest -1
  int32_t* slot_rank = nullptr;     // [T·K] rank of each slot in sorted_slots, or -1
  int32_t* dropped = nullptr;       // [E] slots dropped by capacity per expert
  int32_t* token_counts = nullptr;  // [T] kept slots per token (optional; the reference leaves it alone)
  MoeAux aux;
};

// `work` holds at least moe_route_work_floats(p) floats (8-byte aligned; O(T/256·E), not O(T·E)).
size_t moe_route_work_floats(const MoeRouteParams& p);
void moe_route_forward(const float* z, const MoeRouteParams& p, MoeRouteOut& out, float* work);

// dz [T, E] = ∂L/∂z from the gate gradients dgates [T, K] (flowing through the kept gates only; the selection
// and the dropout mask are constants) plus w_entropy·∂entropy/∂z + w_balance·∂balance/∂z + w_z·∂zloss/∂z.
// `choices` and `ids` are the forward outputs (same params).
void moe_route_backward(const float* z, const MoeRouteParams& p, const int32_t* choices, const int32_t* ids,
                        const float* dgates, float w_entropy, float w_balance, float w_z, float* dz, float* work);

// Reference routing (kernels/ref/moe_route.cpp): same contract, plain serial loops, double precision.
void moe_route_forward_ref(const float* z, const MoeRouteParams& p, MoeRouteOut& out);
void moe_route_backward_ref(const float* z, const MoeRouteParams& p, const int32_t* choices, const int32_t* ids,
                            const float* dgates, float w_entropy, float w_balance, float w_z, float* dz);

// The dropout decision for (token t, expert e); shared by both implementations.
bool moe_expert_dropped(uint64_t seed, int64_t t, int64_t e, int64_t E, float dropout);

// ---- activations -----------------------------------------------------------------------------------------

enum class Act : int { Relu = 0, Gelu = 1, Silu = 2, None = 3 };

// ---- expert computation (grouped GEMMs) --------------------------------------------------------------------
//
// Forward, per kept slot r (rank) of token t = sorted_slots[r] / K routed to expert e with gate g:
//   pre[r] = x[t] · W1[e] (+ b1[e])          up-projection, X rows gathered inside the GEMM  [S, G]
//   hs[r]  = g · act(pre[r])                  epilogue: activation and gate scale             [S, G]
//   yr[r]  = hs[r] · W2[e]                    down-projection                                  [S, D]
//   y[t]   = Σ_{j=0..K-1, kept} yr[rank(t,j)] (+ b2)   fixed-order K-sum                      [T, D]
// Shapes: x [T, D], w1 [E, D, G], b1 [E, G] (optional), w2 [E, G, D], b2 [D] (optional), gates [T, K].
// Experts with no slots are skipped; work items are (expert, row block, column block) tiles with one owner,
// so results are deterministic and independent of the thread count.
struct MoeExpertsShape {
  int64_t T = 0, D = 0, E = 0, K = 0, G = 0;
  Act act = Act::Relu;
};

struct MoeRoutingView {
  const float* gates = nullptr;         // [T, K]
  const int64_t* offsets = nullptr;     // [E + 1]
  const int32_t* sorted_slots = nullptr;  // [S]
  const int32_t* slot_rank = nullptr;   // [T·K]
};

// Up-projection primitive: pre [S, G] and hs [S, G] (hs may be null: then only pre is written).
void moe_expert_up_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                           const float* b1, float* pre, float* hs);
// Down-projection primitive: yr [S, D] = hs · W2[e] per expert.
void moe_expert_down_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* hs, const float* w2,
                             float* yr);
// Combine primitive: y [T, D] = fixed-order K-sum of yr rows (+ b2).
void moe_combine_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* yr, const float* b2,
                         float* y);

// The whole expert block (up, act, gate, down, combine). pre, hs [S, G] are caller-provided and saved for
// backward. The down-projection accumulates straight into y: each column block of y has one owner thread that
// adds the experts' products in expert-id order (deterministic for any thread count, no [S, D] buffer).
void moe_experts_forward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                         const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y);

// Backward from dy [T, D]:
//   dhs[r] = dy[t] · W2[e]ᵀ;  dgates[t,j] = <dhs[r], act(pre[r])>;  dpre[r] = g · dhs[r] ⊙ act'(pre[r])
//   dW2[e] = Σ_r hs[r]ᵀ dy[t];  dW1[e] = Σ_r x[t]ᵀ dpre[r];  db1[e] = Σ_r dpre[r];  db2 = Σ_t dy[t]
//   dx[t]  = Σ_e dpre(rows of t at e) · W1[e]ᵀ  (column owners, expert order, as the forward's combine)
// Every dW tile has one owner reducing over its expert's rows in rank order (no atomics); experts with no
// slots get dW = 0. dgates is 0 for slots that were not kept. db1 / db2 may be null. Workspace: dpre [S, G].
// dw_zeroed: the caller guarantees dw1, dw2 and db1 hold zeros on entry (freshly allocated), so experts with no
// slots are not written at all (at small T that is most of the output: E·D·G floats never touched).
void moe_experts_backward(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                          const float* w2, const float* pre, const float* hs, const float* dy, float* dx, float* dw1,
                          float* db1, float* dw2, float* db2, float* dgates, float* dpre, bool dw_zeroed = false);

// Reference expert block (kernels/ref/moe_experts.cpp): plain loops with double accumulation, computed
// straight from the slot list (no GEMM); same outputs.
void moe_experts_forward_ref(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                             const float* b1, const float* w2, const float* b2, float* pre, float* hs, float* y);
void moe_experts_backward_ref(const MoeExpertsShape& s, const MoeRoutingView& r, const float* x, const float* w1,
                              const float* w2, const float* pre, const float* hs, const float* dy, float* dx,
                              float* dw1, float* db1, float* dw2, float* db2, float* dgates);

// ---- dense FFN (the baseline) and Top-K activation ---------------------------------------------------------
//
// pre = x · W1 (+ b1) [T, F];  h = act(pre), then with topk > 0 only the topk largest entries of each row of h
// are kept (entries >= the topk-th largest value, methods.md §1.2; the mask is a constant in backward);
// y = h · W2 (+ b2) [T, D]. x [T, D], w1 [D, F], b1 [F], w2 [F, D], b2 [D]. pre and h are saved for backward.
struct FfnShape {
  int64_t T = 0, D = 0, F = 0;
  Act act = Act::Relu;
  int64_t topk = 0;  // 0 = dense
};
void ffn_dense_forward(const FfnShape& s, const float* x, const float* w1, const float* b1, const float* w2,
                       const float* b2, float* pre, float* h, float* y);
// dh = dy · W2ᵀ (masked where h was dropped by top-k: entries with h == 0 after the mask are found from pre);
// workspace dpre [T, F].
void ffn_dense_backward(const FfnShape& s, const float* x, const float* w1, const float* w2, const float* pre,
                        const float* h, const float* dy, float* dx, float* dw1, float* db1, float* dw2, float* db2,
                        float* dpre);
void ffn_dense_forward_ref(const FfnShape& s, const float* x, const float* w1, const float* b1, const float* w2,
                           const float* b2, float* pre, float* h, float* y);
void ffn_dense_backward_ref(const FfnShape& s, const float* x, const float* w1, const float* w2, const float* pre,
                            const float* h, const float* dy, float* dx, float* dw1, float* db1, float* dw2,
                            float* db2);

// Activation helpers shared by the kernels (value and derivative at pre-activation a).
float act_forward(Act act, float a);
float act_backward(Act act, float a);  // d act / d a
double act_forward_d(Act act, double a);
double act_backward_d(Act act, double a);

}  // namespace sffn
