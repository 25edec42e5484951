// N-API group "moe": MoE routing, the expert block (grouped GEMMs) and the dense FFN baseline.
// Every argument is validated here (typed-array kinds, exact lengths, dims, enum strings, and every index that
// a kernel would follow: expert ids, slot numbers, ranks, offsets) before a kernel runs. Kernels: sffn/moe.h.
// JS names match lib/ops/moe.ts and lib/ops/ffn.ts (moeRoute <-> moe_route_*, ffnDense <-> ffn_dense_*).
#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"
#include "sffn/core.h"
#include "sffn/moe.h"
#ifdef SFFN_WITH_CUDA
#include "cuda_util.h"
#include "sffn/cuda.h"
#endif

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxDim = (int64_t)1 << 40;
constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();
// Scratch slot for the backward workspaces (dpre); tid 0, taken on the calling thread before the kernel runs.
// Kernels use slot 7 per thread for their pointer tables, so the two never alias.
constexpr int kWorkSlot = 5;

MoeGate arg_gate(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return arg_enum<MoeGate>(info, i, op, "gate",
                           {{"sigmoid", MoeGate::Sigmoid}, {"softmax", MoeGate::Softmax},
                            {"softmax-renorm", MoeGate::SoftmaxRenorm}});
}

MoeSelect arg_select(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return arg_enum<MoeSelect>(info, i, op, "select",
                             {{"topk", MoeSelect::TopK}, {"adaptive", MoeSelect::Adaptive},
                              {"threshold", MoeSelect::Threshold}});
}

Act arg_act(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return arg_enum<Act>(info, i, op, "act", {{"relu", Act::Relu}, {"gelu", Act::Gelu}, {"silu", Act::Silu}});
}

// ---- routing -----------------------------------------------------------------------------------------------
// Params at args [0..9]: T, E, K, gate, select, threshold, dropout, seed, capacity, ref.
struct RouteArgs {
  MoeRouteParams p;
  bool ref = false;
};

RouteArgs route_params(const Napi::CallbackInfo& info, const char* op) {
  RouteArgs a;
  MoeRouteParams& p = a.p;
  p.T = arg_int(info, 0, op, "T", 0, kMaxI32);
  p.E = arg_int(info, 1, op, "E", 1, kMaxI32);
  p.K = arg_int(info, 2, op, "k", 1, kMaxI32);
  if (p.K > p.E) fail(ErrKind::Range, op, ": k must be in [1, E=", p.E, "], got ", p.K);
  if (p.T * p.K > kMaxI32) fail(ErrKind::Range, op, ": T·k must be < 2^31 (slot ids are int32), got ", p.T * p.K);
  p.gate = arg_gate(info, 3, op);
  p.select = arg_select(info, 4, op);
  if (p.select == MoeSelect::Adaptive && p.K != 2)
    fail(ErrKind::Range, op, ": adaptive selection uses k = 2 slots, got k = ", p.K);
  p.threshold = (float)arg_num(info, 5, op, "threshold");
  double dr = arg_num(info, 6, op, "dropout");
  if (dr < 0 || dr >= 1) fail(ErrKind::Range, op, ": dropout must be in [0, 1), got ", dr);
  p.dropout = (float)dr;
  p.seed = (uint64_t)arg_int(info, 7, op, "seed", 0, std::numeric_limits<int64_t>::max());
  p.capacity = arg_int(info, 8, op, "capacity", -1, kMaxI32);
  a.ref = arg_bool(info, 9, op, "ref");
  return a;
}

#ifdef SFFN_WITH_CUDA
void device_route_supported(const char* op, const RouteArgs& a) {
  if (a.ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
}
#endif

// moeRoute(T, E, K, gate, select, threshold, dropout, seed, capacity, ref, z, choices, ids, gates, counts, offsets,
//          sortedSlots, slotRank, dropped, tokenCounts?, aux?) -> { entropy, balance, zloss } (host), undefined (cuda)
Napi::Value JS_moeRoute(const Napi::CallbackInfo& info) {
  const char* op = "moeRoute";
  RouteArgs a = route_params(info, op);
  const MoeRouteParams& p = a.p;
  const int64_t TK = p.T * p.K;
  Buf z = arg_buf(info, 10, op, "z", DType::F32, p.T * p.E);
  Buf choices = arg_buf(info, 11, op, "choices", DType::I32, TK);
  Buf ids = arg_buf(info, 12, op, "ids", DType::I32, TK);
  Buf gates = arg_buf(info, 13, op, "gates", DType::F32, TK);
  Buf counts = arg_buf(info, 14, op, "counts", DType::I32, p.E);
  Buf offsets = arg_buf(info, 15, op, "offsets", DType::I64, p.E + 1);
  Buf sorted = arg_buf(info, 16, op, "sortedSlots", DType::I32, TK);
  Buf rank = arg_buf(info, 17, op, "slotRank", DType::I32, TK);
  Buf dropped = arg_buf(info, 18, op, "dropped", DType::I32, p.E);
  Buf token_counts = arg_buf_opt(info, 19, op, "tokenCounts", DType::I32, p.T);
  if (same_device(op, {{"z", &z}, {"choices", &choices}, {"ids", &ids}, {"gates", &gates}, {"counts", &counts},
                       {"offsets", &offsets}, {"sortedSlots", &sorted}, {"slotRank", &rank}, {"dropped", &dropped},
                       {"tokenCounts", &token_counts}})) {
    // CUDA: everything on the device; aux [3] (arg 20) receives {entropy, balance, zloss} as f64 bit patterns.
#ifdef SFFN_WITH_CUDA
    Buf aux = arg_buf(info, 20, op, "aux", DType::I64, 3);
    if (!aux.device) fail(ErrKind::Device, op, ": aux must be a cuda buffer like z");
    if (!token_counts.data) fail(ErrKind::Type, op, ": tokenCounts is required on cuda");
    device_route_supported(op, a);
    check_cuda(cuda::moe_route_forward(p.T, p.E, p.K, (int)p.gate, (int)p.select, p.threshold, p.dropout, p.seed,
                                       p.capacity, z.as<float>(), choices.as<int32_t>(),
                                       ids.as<int32_t>(), gates.as<float>(), counts.as<int32_t>(),
                                       offsets.as<int64_t>(), sorted.as<int32_t>(), rank.as<int32_t>(),
                                       dropped.as<int32_t>(), token_counts.as<int32_t>(), aux.as<double>()),
               op);
    return info.Env().Undefined();
#else
    fail(ErrKind::Device, op, ": device buffers need the CUDA flavor");
#endif
  }
  host_only(op, {{"z", &z}, {"choices", &choices}, {"ids", &ids}, {"gates", &gates}, {"counts", &counts},
                 {"offsets", &offsets}, {"sortedSlots", &sorted}, {"slotRank", &rank}, {"dropped", &dropped},
                 {"tokenCounts", &token_counts}});
  MoeRouteOut out;
  out.choices = choices.as<int32_t>();
  out.ids = ids.as<int32_t>();
  out.gates = gates.as<float>();
  out.counts = counts.as<int32_t>();
  out.offsets = offsets.as<int64_t>();
  out.sorted_slots = sorted.as<int32_t>();
  out.slot_rank = rank.as<int32_t>();
  out.dropped = dropped.as<int32_t>();
  // Experts kept per token (after capacity): natively rather than in JS, where a cold loop over T·K ids cost
  // more than the routing itself. The CPU kernel fills it in its sort pass.
  int32_t* tc = token_counts.as<int32_t>();
  if (a.ref) {
    moe_route_forward_ref(z.as<float>(), p, out);
  } else {
    out.token_counts = tc;
    // The workspace is small (per-256-token-block partial sums); the scratch arena avoids a fresh zero-filled
    // vector per call.
    float* work = static_cast<float*>(scratch(0, kWorkSlot, moe_route_work_floats(p) * sizeof(float)));
    moe_route_forward(z.as<float>(), p, out, work);
  }
  if (tc && a.ref) {
    for (int64_t t = 0; t < p.T; ++t) {
      int32_t n = 0;
      for (int64_t j = 0; j < p.K; ++j) n += out.ids[t * p.K + j] >= 0;
      tc[t] = n;
    }
  }
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("entropy", out.aux.entropy);
  r.Set("balance", out.aux.balance);
  r.Set("zloss", out.aux.zloss);
  return r;
}

// moeRouteBackward(T, E, K, gate, select, threshold, dropout, seed, capacity, ref, z, choices, ids, dgates,
//                  wEntropy, wBalance, wZ, dz)
Napi::Value JS_moeRouteBackward(const Napi::CallbackInfo& info) {
  const char* op = "moeRouteBackward";
  RouteArgs a = route_params(info, op);
  const MoeRouteParams& p = a.p;
  const int64_t TK = p.T * p.K;
  Buf z = arg_buf(info, 10, op, "z", DType::F32, p.T * p.E);
  Buf choices = arg_buf(info, 11, op, "choices", DType::I32, TK);
  Buf ids = arg_buf(info, 12, op, "ids", DType::I32, TK);
  Buf dgates = arg_buf(info, 13, op, "dgates", DType::F32, TK);
  float we = (float)arg_num(info, 14, op, "entropyWeight");
  float wb = (float)arg_num(info, 15, op, "balanceWeight");
  float wz = (float)arg_num(info, 16, op, "zLossWeight");
  Buf dz = arg_buf(info, 17, op, "dz", DType::F32, p.T * p.E);
  if (same_device(op, {{"z", &z}, {"choices", &choices}, {"ids", &ids}, {"dgates", &dgates}, {"dz", &dz}})) {
    // CUDA: the kernel treats choices outside [0, E) as unused slots and keeps a slot only where ids equals its
    // choice, so device contents cannot steer an access out of bounds (they cannot be scanned here without a copy).
#ifdef SFFN_WITH_CUDA
    device_route_supported(op, a);
    check_cuda(cuda::moe_route_backward(p.T, p.E, p.K, (int)p.gate, z.as<float>(), choices.as<int32_t>(),
                                        ids.as<int32_t>(), dgates.as<float>(), we, wb, wz, dz.as<float>()),
               op);
    return info.Env().Undefined();
#else
    fail(ErrKind::Device, op, ": device buffers need the CUDA flavor");
#endif
  }
  host_only(op, {{"z", &z}, {"choices", &choices}, {"ids", &ids}, {"dgates", &dgates}, {"dz", &dz}});
  const int32_t* c = choices.as<int32_t>();
  const int32_t* id = ids.as<int32_t>();
  for (int64_t s = 0; s < TK; ++s) {
    if (c[s] < -1 || c[s] >= p.E)
      fail(ErrKind::Range, op, ": choices[", s, "] must be in [-1, E=", p.E, "), got ", c[s]);
    if (id[s] != -1 && id[s] != c[s])
      fail(ErrKind::Range, op, ": ids[", s, "] must be -1 or choices[", s, "]=", c[s], ", got ", id[s]);
  }
  if (a.ref) {
    moe_route_backward_ref(z.as<float>(), p, c, id, dgates.as<float>(), we, wb, wz, dz.as<float>());
  } else {
    float* work = static_cast<float*>(scratch(0, kWorkSlot, moe_route_work_floats(p) * sizeof(float)));
    moe_route_backward(z.as<float>(), p, c, id, dgates.as<float>(), we, wb, wz, dz.as<float>(), work);
  }
  return info.Env().Undefined();
}

// ---- expert block ------------------------------------------------------------------------------------------
// Routing at args [a..a+3]: gates [T,K] f32, offsets [E+1] i64, sortedSlots [S] i32, slotRank [T·K] i32.
// Checks everything the kernels follow: offsets non-decreasing from 0 to S <= T·K, every sorted slot in
// [0, T·K) and slotRank its exact inverse (so each slot is used once, and no rank or token is out of range).
// With on_device != null a routing that lives wholly on the device is accepted too (*on_device = true): S is then
// sortedSlots' length (<= T·k); its contents cannot be read here without a copy, so the CUDA launchers sanitise
// them on the device (sffn/cuda.h, moe_experts_forward_dev).
MoeRoutingView routing_arg(const Napi::CallbackInfo& info, size_t a, const char* op, const MoeExpertsShape& s,
                           int64_t* S_out, std::vector<Buf>& keep, bool* on_device = nullptr) {
  const int64_t TK = s.T * s.K;
  Buf gates = arg_buf(info, a, op, "gates", DType::F32, TK);
  Buf offsets = arg_buf(info, a + 1, op, "offsets", DType::I64, s.E + 1);
  Buf sorted = arg_buf(info, a + 2, op, "sortedSlots", DType::I32);
  Buf rank = arg_buf(info, a + 3, op, "slotRank", DType::I32, TK);
  if (on_device) {
    *on_device = same_device(op, {{"gates", &gates}, {"offsets", &offsets}, {"sortedSlots", &sorted}, {"slotRank", &rank}});
    if (*on_device) {
      if (sorted.count > TK)
        fail(ErrKind::Shape, op, ": sortedSlots must have at most T·k=", TK, " elements, got ", sorted.count);
      *S_out = sorted.count;
      keep = {gates, offsets, sorted, rank};
      MoeRoutingView v;
      v.gates = gates.as<float>();
      v.offsets = offsets.as<int64_t>();
      v.sorted_slots = sorted.as<int32_t>();
      v.slot_rank = rank.as<int32_t>();
      return v;
    }
  }
  host_only(op, {{"gates", &gates}, {"offsets", &offsets}, {"sortedSlots", &sorted}, {"slotRank", &rank}});
  const int64_t* off = offsets.as<int64_t>();
  if (off[0] != 0) fail(ErrKind::Range, op, ": offsets[0] must be 0, got ", off[0]);
  for (int64_t e = 0; e < s.E; ++e)
    if (off[e + 1] < off[e])
      fail(ErrKind::Range, op, ": offsets must be non-decreasing, got offsets[", e + 1, "]=", off[e + 1], " < offsets[",
           e, "]=", off[e]);
  const int64_t S = off[s.E];
  if (S > TK) fail(ErrKind::Range, op, ": offsets[E] must be <= T·k=", TK, ", got ", S);
  if (sorted.count < S)
    fail(ErrKind::Shape, op, ": sortedSlots must have at least offsets[E]=", S, " elements, got ", sorted.count);
  const int32_t* ss = sorted.as<int32_t>();
  const int32_t* rk = rank.as<int32_t>();
  int64_t kept = 0;
  for (int64_t i = 0; i < TK; ++i) {
    if (rk[i] < -1 || rk[i] >= S) fail(ErrKind::Range, op, ": slotRank[", i, "] must be in [-1, ", S, "), got ", rk[i]);
    if (rk[i] >= 0) ++kept;
  }
  for (int64_t r = 0; r < S; ++r) {
    if (ss[r] < 0 || ss[r] >= TK)
      fail(ErrKind::Range, op, ": sortedSlots[", r, "] must be in [0, T·k=", TK, "), got ", ss[r]);
    if (rk[ss[r]] != r)
      fail(ErrKind::Range, op, ": slotRank[sortedSlots[", r, "]] must be ", r, ", got ", rk[ss[r]]);
  }
  if (kept != S) fail(ErrKind::Range, op, ": slotRank marks ", kept, " kept slots but offsets[E] is ", S);
  *S_out = S;
  keep = {gates, offsets, sorted, rank};
  MoeRoutingView v;
  v.gates = gates.as<float>();
  v.offsets = off;
  v.sorted_slots = ss;
  v.slot_rank = rk;
  return v;
}

MoeExpertsShape experts_shape(const Napi::CallbackInfo& info, size_t a, const char* op) {
  MoeExpertsShape s;
  s.T = arg_int(info, a, op, "T", 0, kMaxDim);
  s.D = arg_int(info, a + 1, op, "D", 1, kMaxDim);
  s.E = arg_int(info, a + 2, op, "E", 1, kMaxI32);
  s.K = arg_int(info, a + 3, op, "k", 1, kMaxI32);
  s.G = arg_int(info, a + 4, op, "G", 1, kMaxDim);
  if (s.K > s.E) fail(ErrKind::Range, op, ": k must be in [1, E=", s.E, "], got ", s.K);
  if (s.T * s.K > kMaxI32) fail(ErrKind::Range, op, ": T·k must be < 2^31, got ", s.T * s.K);
  s.act = arg_act(info, a + 5, op);
  return s;
}

// moeExperts(T, D, E, K, G, act, ref, gates, offsets, sortedSlots, slotRank, x, w1, b1|null, w2, b2|null,
//            pre, hs, y)
Napi::Value JS_moeExperts(const Napi::CallbackInfo& info) {
  const char* op = "moeExperts";
  MoeExpertsShape s = experts_shape(info, 0, op);
  bool ref = arg_bool(info, 6, op, "ref");
  int64_t S = 0;
  std::vector<Buf> keep;
  bool routing_on_device = false;
  MoeRoutingView r = routing_arg(info, 7, op, s, &S, keep, &routing_on_device);
  Buf x = arg_buf(info, 11, op, "x", DType::F32, s.T * s.D);
  Buf w1 = arg_buf(info, 12, op, "w1", DType::F32, s.E * s.D * s.G);
  Buf b1 = arg_buf_opt(info, 13, op, "b1", DType::F32, s.E * s.G);
  Buf w2 = arg_buf(info, 14, op, "w2", DType::F32, s.E * s.G * s.D);
  Buf b2 = arg_buf_opt(info, 15, op, "b2", DType::F32, s.D);
  Buf pre = arg_buf(info, 16, op, "pre", DType::F32, S * s.G);
  Buf hs = arg_buf(info, 17, op, "hs", DType::F32, S * s.G);
  Buf y = arg_buf(info, 18, op, "y", DType::F32, s.T * s.D);
  // CUDA flavor: the tensors may all live on the device, the routing on the host (validated above) or the device.
  if (same_device(op, {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}, {"pre", &pre}, {"hs", &hs},
                       {"y", &y}})) {
#ifdef SFFN_WITH_CUDA
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    if (routing_on_device) {
      check_cuda(cuda::moe_experts_forward_dev(s.T, s.D, s.E, s.K, s.G, S, (int)s.act, r.gates, r.offsets,
                                               r.sorted_slots, r.slot_rank, x.as<float>(), w1.as<float>(),
                                               b1.as<float>(), w2.as<float>(), b2.as<float>(), pre.as<float>(),
                                               hs.as<float>(), y.as<float>()),
                 op);
      return info.Env().Undefined();
    }
    check_cuda(cuda::moe_experts_forward(s.T, s.D, s.E, s.K, s.G, (int)s.act, r.gates, r.offsets, r.sorted_slots,
                                         r.slot_rank, x.as<float>(), w1.as<float>(), b1.as<float>(), w2.as<float>(),
                                         b2.as<float>(), pre.as<float>(), hs.as<float>(), y.as<float>()),
               op);
    return info.Env().Undefined();
#else
    fail(ErrKind::Device, op, ": device buffers need the CUDA flavor");
#endif
  }
  if (routing_on_device) fail(ErrKind::Device, op, ": the routing is on cuda but x and the parameters are on the cpu");
  if (ref) {
    moe_experts_forward_ref(s, r, x.as<float>(), w1.as<float>(), b1.as<float>(), w2.as<float>(), b2.as<float>(),
                            pre.as<float>(), hs.as<float>(), y.as<float>());
  } else {
    moe_experts_forward(s, r, x.as<float>(), w1.as<float>(), b1.as<float>(), w2.as<float>(), b2.as<float>(),
                        pre.as<float>(), hs.as<float>(), y.as<float>());
  }
  return info.Env().Undefined();
}

// moeExpertsBackward(T, D, E, K, G, act, ref, gates, offsets, sortedSlots, slotRank, x, w1, w2, pre, hs, dy,
//                    dx, dw1, db1|null, dw2, db2|null, dgates, dwZeroed)
Napi::Value JS_moeExpertsBackward(const Napi::CallbackInfo& info) {
  const char* op = "moeExpertsBackward";
  MoeExpertsShape s = experts_shape(info, 0, op);
  bool ref = arg_bool(info, 6, op, "ref");
  int64_t S = 0;
  std::vector<Buf> keep;
  bool routing_on_device = false;
  MoeRoutingView r = routing_arg(info, 7, op, s, &S, keep, &routing_on_device);
  Buf x = arg_buf(info, 11, op, "x", DType::F32, s.T * s.D);
  Buf w1 = arg_buf(info, 12, op, "w1", DType::F32, s.E * s.D * s.G);
  Buf w2 = arg_buf(info, 13, op, "w2", DType::F32, s.E * s.G * s.D);
  Buf pre = arg_buf(info, 14, op, "pre", DType::F32, S * s.G);
  Buf hs = arg_buf(info, 15, op, "hs", DType::F32, S * s.G);
  Buf dy = arg_buf(info, 16, op, "dy", DType::F32, s.T * s.D);
  Buf dx = arg_buf(info, 17, op, "dx", DType::F32, s.T * s.D);
  Buf dw1 = arg_buf(info, 18, op, "dw1", DType::F32, s.E * s.D * s.G);
  Buf db1 = arg_buf_opt(info, 19, op, "db1", DType::F32, s.E * s.G);
  Buf dw2 = arg_buf(info, 20, op, "dw2", DType::F32, s.E * s.G * s.D);
  Buf db2 = arg_buf_opt(info, 21, op, "db2", DType::F32, s.D);
  Buf dgates = arg_buf(info, 22, op, "dgates", DType::F32, s.T * s.K);
  // Optional: true promises that dw1, dw2 and db1 are all zeros (lib/ops/moe.ts passes freshly allocated
  // arrays), so the kernel leaves experts without slots untouched. Not scanned: that would touch every page the
  // promise exists to leave alone. A false promise cannot write out of bounds, only leave those values as given.
  bool dw_zeroed = info.Length() > 23 && arg_bool(info, 23, op, "dwZeroed");
  // CUDA flavor: the tensors may all live on the device; the routing and dgates on the host or the device.
  if (same_device(op, {{"x", &x}, {"w1", &w1}, {"w2", &w2}, {"pre", &pre}, {"hs", &hs}, {"dy", &dy}, {"dx", &dx},
                       {"dw1", &dw1}, {"db1", &db1}, {"dw2", &dw2}, {"db2", &db2}})) {
#ifdef SFFN_WITH_CUDA
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    if (routing_on_device) {
      if (!dgates.device) fail(ErrKind::Device, op, ": dgates must be a cuda buffer like the routing");
      check_cuda(cuda::moe_experts_backward_dev(s.T, s.D, s.E, s.K, s.G, S, (int)s.act, r.gates, r.offsets,
                                                r.sorted_slots, r.slot_rank, x.as<float>(), w1.as<float>(),
                                                w2.as<float>(), pre.as<float>(), hs.as<float>(), dy.as<float>(),
                                                dx.as<float>(), dw1.as<float>(), db1.as<float>(), dw2.as<float>(),
                                                db2.as<float>(), dgates.as<float>()),
                 op);
      return info.Env().Undefined();
    }
    host_only(op, {{"dgates", &dgates}});
    check_cuda(cuda::moe_experts_backward(s.T, s.D, s.E, s.K, s.G, (int)s.act, r.gates, r.offsets, r.sorted_slots,
                                          r.slot_rank, x.as<float>(), w1.as<float>(), w2.as<float>(), pre.as<float>(),
                                          hs.as<float>(), dy.as<float>(), dx.as<float>(), dw1.as<float>(),
                                          db1.as<float>(), dw2.as<float>(), db2.as<float>(), dgates.as<float>()),
               op);
    return info.Env().Undefined();
#else
    fail(ErrKind::Device, op, ": device buffers need the CUDA flavor");
#endif
  }
  if (routing_on_device) fail(ErrKind::Device, op, ": the routing is on cuda but x and the gradients are on the cpu");
  host_only(op, {{"dgates", &dgates}});
  if (ref) {
    moe_experts_backward_ref(s, r, x.as<float>(), w1.as<float>(), w2.as<float>(), pre.as<float>(), hs.as<float>(),
                             dy.as<float>(), dx.as<float>(), dw1.as<float>(), db1.as<float>(), dw2.as<float>(),
                             db2.as<float>(), dgates.as<float>());
  } else {
    // Grow-only workspace reused across calls (no zeroing of S·G floats per call).
    float* dpre = static_cast<float*>(scratch(0, kWorkSlot, (size_t)(S * s.G) * sizeof(float)));
    moe_experts_backward(s, r, x.as<float>(), w1.as<float>(), w2.as<float>(), pre.as<float>(), hs.as<float>(),
                         dy.as<float>(), dx.as<float>(), dw1.as<float>(), db1.as<float>(), dw2.as<float>(),
                         db2.as<float>(), dgates.as<float>(), dpre, dw_zeroed);
  }
  return info.Env().Undefined();
}

// Primitives. moeExpertUp(T, D, E, K, G, act, gates, offsets, sortedSlots, slotRank, x, w1, b1|null, pre, hs|null)
Napi::Value JS_moeExpertUp(const Napi::CallbackInfo& info) {
  const char* op = "moeExpertUp";
  MoeExpertsShape s = experts_shape(info, 0, op);
  int64_t S = 0;
  std::vector<Buf> keep;
  bool routing_on_device = false;
  MoeRoutingView r = routing_arg(info, 6, op, s, &S, keep, &routing_on_device);
  Buf x = arg_buf(info, 10, op, "x", DType::F32, s.T * s.D);
  Buf w1 = arg_buf(info, 11, op, "w1", DType::F32, s.E * s.D * s.G);
  Buf b1 = arg_buf_opt(info, 12, op, "b1", DType::F32, s.E * s.G);
  Buf pre = arg_buf(info, 13, op, "pre", DType::F32, S * s.G);
  Buf hs = arg_buf_opt(info, 14, op, "hs", DType::F32, S * s.G);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"pre", &pre}, {"hs", &hs}})) {
    check_cuda(cuda::moe_expert_up(routing_on_device, s.T, s.D, s.E, s.K, s.G, S, (int)s.act, r.gates, r.offsets,
                                   r.sorted_slots, r.slot_rank, x.as<float>(), w1.as<float>(), b1.as<float>(),
                                   pre.as<float>(), hs.as<float>()), op);
    return info.Env().Undefined();
  }
#endif
  if (routing_on_device) fail(ErrKind::Device, op, ": the routing is on cuda but x and w1 are on the cpu");
  host_only(op, {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"pre", &pre}, {"hs", &hs}});
  moe_expert_up_forward(s, r, x.as<float>(), w1.as<float>(), b1.as<float>(), pre.as<float>(), hs.as<float>());
  return info.Env().Undefined();
}

// moeExpertDown(T, D, E, K, G, act, gates, offsets, sortedSlots, slotRank, hs, w2, yr)
Napi::Value JS_moeExpertDown(const Napi::CallbackInfo& info) {
  const char* op = "moeExpertDown";
  MoeExpertsShape s = experts_shape(info, 0, op);
  int64_t S = 0;
  std::vector<Buf> keep;
  bool routing_on_device = false;
  MoeRoutingView r = routing_arg(info, 6, op, s, &S, keep, &routing_on_device);
  Buf hs = arg_buf(info, 10, op, "hs", DType::F32, S * s.G);
  Buf w2 = arg_buf(info, 11, op, "w2", DType::F32, s.E * s.G * s.D);
  Buf yr = arg_buf(info, 12, op, "yr", DType::F32, S * s.D);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"hs", &hs}, {"w2", &w2}, {"yr", &yr}})) {
    check_cuda(cuda::moe_expert_down(routing_on_device, s.T, s.D, s.E, s.K, s.G, S, r.gates, r.offsets, r.sorted_slots,
                                     r.slot_rank, hs.as<float>(), w2.as<float>(), yr.as<float>()), op);
    return info.Env().Undefined();
  }
#endif
  if (routing_on_device) fail(ErrKind::Device, op, ": the routing is on cuda but hs and w2 are on the cpu");
  host_only(op, {{"hs", &hs}, {"w2", &w2}, {"yr", &yr}});
  moe_expert_down_forward(s, r, hs.as<float>(), w2.as<float>(), yr.as<float>());
  return info.Env().Undefined();
}

// moeCombine(T, D, E, K, G, act, gates, offsets, sortedSlots, slotRank, yr, b2|null, y)
Napi::Value JS_moeCombine(const Napi::CallbackInfo& info) {
  const char* op = "moeCombine";
  MoeExpertsShape s = experts_shape(info, 0, op);
  int64_t S = 0;
  std::vector<Buf> keep;
  bool routing_on_device = false;
  MoeRoutingView r = routing_arg(info, 6, op, s, &S, keep, &routing_on_device);
  Buf yr = arg_buf(info, 10, op, "yr", DType::F32, S * s.D);
  Buf b2 = arg_buf_opt(info, 11, op, "b2", DType::F32, s.D);
  Buf y = arg_buf(info, 12, op, "y", DType::F32, s.T * s.D);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"yr", &yr}, {"b2", &b2}, {"y", &y}})) {
    check_cuda(cuda::moe_combine(routing_on_device, s.T, s.D, s.E, s.K, S, r.gates, r.offsets, r.sorted_slots, r.slot_rank,
                                 yr.as<float>(), b2.as<float>(), y.as<float>()), op);
    return info.Env().Undefined();
  }
#endif
  if (routing_on_device) fail(ErrKind::Device, op, ": the routing is on cuda but yr is on the cpu");
  host_only(op, {{"yr", &yr}, {"b2", &b2}, {"y", &y}});
  moe_combine_forward(s, r, yr.as<float>(), b2.as<float>(), y.as<float>());
  return info.Env().Undefined();
}

// ---- dense FFN -----------------------------------------------------------------------------------------------
FfnShape ffn_shape(const Napi::CallbackInfo& info, const char* op) {
  FfnShape s;
  s.T = arg_int(info, 0, op, "T", 0, kMaxDim);
  s.D = arg_int(info, 1, op, "D", 1, kMaxDim);
  s.F = arg_int(info, 2, op, "F", 1, kMaxDim);
  s.act = arg_act(info, 3, op);
  s.topk = arg_int(info, 4, op, "topk", 0, s.F);
  return s;
}

// ffnDense(T, D, F, act, topk, ref, x, w1, b1|null, w2, b2|null, pre, h, y)
Napi::Value JS_ffnDense(const Napi::CallbackInfo& info) {
  const char* op = "ffnDense";
  FfnShape s = ffn_shape(info, op);
  bool ref = arg_bool(info, 5, op, "ref");
  Buf x = arg_buf(info, 6, op, "x", DType::F32, s.T * s.D);
  Buf w1 = arg_buf(info, 7, op, "w1", DType::F32, s.D * s.F);
  Buf b1 = arg_buf_opt(info, 8, op, "b1", DType::F32, s.F);
  Buf w2 = arg_buf(info, 9, op, "w2", DType::F32, s.F * s.D);
  Buf b2 = arg_buf_opt(info, 10, op, "b2", DType::F32, s.D);
  Buf pre = arg_buf(info, 11, op, "pre", DType::F32, s.T * s.F);
  Buf h = arg_buf(info, 12, op, "h", DType::F32, s.T * s.F);
  Buf y = arg_buf(info, 13, op, "y", DType::F32, s.T * s.D);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}, {"pre", &pre}, {"h", &h},
                       {"y", &y}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    check_cuda(cuda::ffn_dense_forward(s.T, s.D, s.F, (int)s.act, s.topk, x.as<float>(), w1.as<float>(),
                                       b1.as<float>(), w2.as<float>(), b2.as<float>(), pre.as<float>(), h.as<float>(),
                                       y.as<float>()),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}, {"pre", &pre}, {"h", &h}, {"y", &y}});
  (ref ? ffn_dense_forward_ref : ffn_dense_forward)(s, x.as<float>(), w1.as<float>(), b1.as<float>(), w2.as<float>(),
                                                    b2.as<float>(), pre.as<float>(), h.as<float>(), y.as<float>());
  return info.Env().Undefined();
}

// ffnDenseBackward(T, D, F, act, topk, ref, x, w1, w2, pre, h, dy, dx, dw1, db1|null, dw2, db2|null)
Napi::Value JS_ffnDenseBackward(const Napi::CallbackInfo& info) {
  const char* op = "ffnDenseBackward";
  FfnShape s = ffn_shape(info, op);
  bool ref = arg_bool(info, 5, op, "ref");
  Buf x = arg_buf(info, 6, op, "x", DType::F32, s.T * s.D);
  Buf w1 = arg_buf(info, 7, op, "w1", DType::F32, s.D * s.F);
  Buf w2 = arg_buf(info, 8, op, "w2", DType::F32, s.F * s.D);
  Buf pre = arg_buf(info, 9, op, "pre", DType::F32, s.T * s.F);
  Buf h = arg_buf(info, 10, op, "h", DType::F32, s.T * s.F);
  Buf dy = arg_buf(info, 11, op, "dy", DType::F32, s.T * s.D);
  Buf dx = arg_buf(info, 12, op, "dx", DType::F32, s.T * s.D);
  Buf dw1 = arg_buf(info, 13, op, "dw1", DType::F32, s.D * s.F);
  Buf db1 = arg_buf_opt(info, 14, op, "db1", DType::F32, s.F);
  Buf dw2 = arg_buf(info, 15, op, "dw2", DType::F32, s.F * s.D);
  Buf db2 = arg_buf_opt(info, 16, op, "db2", DType::F32, s.D);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"x", &x}, {"w1", &w1}, {"w2", &w2}, {"pre", &pre}, {"h", &h}, {"dy", &dy}, {"dx", &dx},
                       {"dw1", &dw1}, {"db1", &db1}, {"dw2", &dw2}, {"db2", &db2}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    check_cuda(cuda::ffn_dense_backward(s.T, s.D, s.F, (int)s.act, s.topk, x.as<float>(), w1.as<float>(),
                                        w2.as<float>(), pre.as<float>(), h.as<float>(), dy.as<float>(), dx.as<float>(),
                                        dw1.as<float>(), db1.as<float>(), dw2.as<float>(), db2.as<float>()),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"x", &x}, {"w1", &w1}, {"w2", &w2}, {"pre", &pre}, {"h", &h}, {"dy", &dy}, {"dx", &dx},
                 {"dw1", &dw1}, {"db1", &db1}, {"dw2", &dw2}, {"db2", &db2}});
  if (ref) {
    ffn_dense_backward_ref(s, x.as<float>(), w1.as<float>(), w2.as<float>(), pre.as<float>(), h.as<float>(),
                           dy.as<float>(), dx.as<float>(), dw1.as<float>(), db1.as<float>(), dw2.as<float>(),
                           db2.as<float>());
  } else {
    float* dpre = static_cast<float*>(scratch(0, kWorkSlot, (size_t)(s.T * s.F) * sizeof(float)));
    ffn_dense_backward(s, x.as<float>(), w1.as<float>(), w2.as<float>(), pre.as<float>(), h.as<float>(),
                       dy.as<float>(), dx.as<float>(), dw1.as<float>(), db1.as<float>(), dw2.as<float>(),
                       db2.as<float>(), dpre);
  }
  return info.Env().Undefined();
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "moeRoute", JS_moeRoute);
  def(env, exports, "moeRouteBackward", JS_moeRouteBackward);
  def(env, exports, "moeExperts", JS_moeExperts);
  def(env, exports, "moeExpertsBackward", JS_moeExpertsBackward);
  def(env, exports, "moeExpertUp", JS_moeExpertUp);
  def(env, exports, "moeExpertDown", JS_moeExpertDown);
  def(env, exports, "moeCombine", JS_moeCombine);
  def(env, exports, "ffnDense", JS_ffnDense);
  def(env, exports, "ffnDenseBackward", JS_ffnDenseBackward);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
