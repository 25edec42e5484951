// PKM / PEER group: pkmTopk ↔ pkm_topk_forward, pkmTopkBackward ↔ pkm_topk_backward, embeddingBag ↔
// embedding_bag_forward, embeddingBagBackward ↔ embedding_bag_backward, peerExperts ↔ peer_forward,
// peerExpertsBackward ↔ peer_backward, memBandwidth ↔ mem_bandwidth. Every function takes a trailing `ref`
// boolean that runs the scalar reference (kernels/ref) instead, for the tests.
//
// Validation covers every buffer kind and length, every dim, and every index that would be read through
// (idx values of gathers and of the top-k backward), so bad input raises a typed JS error, never a crash.
// Sparse gradients are returned as fresh typed arrays ({ rows: Int32Array [U], ...: Float32Array [U, D] }) since
// U is known only after the reverse index is built; workspaces live only for the call.
#include <algorithm>
#include <memory>

#include "common.h"
#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxI32 = 2147483647;

struct Work {
  void* p = nullptr;
  explicit Work(size_t bytes) : p(aligned_alloc64(bytes)) {}
  ~Work() { aligned_free64(p); }
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
};

// Throws unless every index is in [0, N).
void check_indices(const char* op, const char* name, const int32_t* idx, int64_t M, int64_t N) {
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N)
      fail(ErrKind::Range, op, ": ", name, "[", p, "] must be in [0, N=", N, "), got ", idx[p]);
}

void check_product(const char* op, const char* what, int64_t a, int64_t b, int64_t limit) {
  if (a != 0 && b > limit / a) fail(ErrKind::Range, op, ": ", what, " = ", a, "·", b, " exceeds ", limit);
}

// These kernels run on the host only (the CUDA flavor has its own PKM ops).
void host_only(const char* op, std::initializer_list<std::pair<const char*, const Buf*>> bufs) {
  if (same_device(op, bufs)) fail(ErrKind::Device, op, ": runs on the CPU only, got CUDA device buffers");
}

bool arg_ref(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (info.Length() <= i || info[i].IsUndefined()) return false;
  return arg_bool(info, i, op, "ref");
}

// ---- product-key top-k ----------------------------------------------------------------------------------------
// Dims (T, H, Hq, Hk, Dk, n, k) at positions i .. i+6.
PkmDims arg_pkm_dims(const Napi::CallbackInfo& info, size_t i, const char* op) {
  PkmDims d;
  d.T = arg_int(info, i, op, "T", 0, kMaxI32);
  d.H = arg_int(info, i + 1, op, "H", 1, 65536);
  d.Hq = arg_int(info, i + 2, op, "Hq", 1, 65536);
  d.Hk = arg_int(info, i + 3, op, "Hk", 1, 65536);
  d.Dk = arg_int(info, i + 4, op, "Dk", 2, 1 << 20);
  d.n = arg_int(info, i + 5, op, "n", 1, 46340);  // n² must fit an int32 slot index
  d.k = arg_int(info, i + 6, op, "k", 1, d.n);
  if (d.Dk % 2) fail(ErrKind::Shape, op, ": Dk must be even (two halves), got ", d.Dk);
  if (d.Hq != 1 && d.Hq != d.H) fail(ErrKind::Shape, op, ": Hq must be 1 or H=", d.H, ", got ", d.Hq);
  if (d.Hk != 1 && d.Hk != d.H) fail(ErrKind::Shape, op, ": Hk must be 1 or H=", d.H, ", got ", d.Hk);
  check_product(op, "T·H·k", d.T, d.H * d.k, kMaxI32 / 2);
  return d;
}

PkmAct arg_pkm_act(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return (PkmAct)arg_int(info, i, op, "act", 0, 4);
}

// pkmTopk(q, keys, idx, scores, weights, T, H, Hq, Hk, Dk, n, k, act, ref?)
Napi::Value JS_pkmTopk(const Napi::CallbackInfo& info) {
  const char* op = "pkmTopk";
  PkmDims d = arg_pkm_dims(info, 5, op);
  PkmAct act = arg_pkm_act(info, 12, op);
  bool ref = arg_ref(info, 13, op);
  const int64_t THK = d.T * d.H * d.k;
  Buf q = arg_buf(info, 0, op, "q", DType::F32, d.T * d.Hq * d.Dk);
  Buf keys = arg_buf(info, 1, op, "keys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  Buf idx = arg_buf(info, 2, op, "idx", DType::I32, THK);
  Buf scores = arg_buf(info, 3, op, "scores", DType::F32, THK);
  Buf weights = arg_buf(info, 4, op, "weights", DType::F32, THK);
  host_only(op, {{"q", &q}, {"keys", &keys}, {"idx", &idx}, {"scores", &scores}, {"weights", &weights}});
  if (ref) {
    pkm_topk_forward_ref(d, act, q.as<float>(), keys.as<float>(), idx.as<int32_t>(), scores.as<float>(),
                         weights.as<float>());
  } else {
    Work w(pkm_topk_work_bytes(d));
    pkm_topk_forward(d, act, q.as<float>(), keys.as<float>(), idx.as<int32_t>(), scores.as<float>(),
                     weights.as<float>(), w.p);
  }
  return info.Env().Undefined();
}

// pkmTopkBackward(q, keys, idx, scores, weights, dweights, dq, dkeys, T, H, Hq, Hk, Dk, n, k, act, ref?)
Napi::Value JS_pkmTopkBackward(const Napi::CallbackInfo& info) {
  const char* op = "pkmTopkBackward";
  PkmDims d = arg_pkm_dims(info, 8, op);
  PkmAct act = arg_pkm_act(info, 15, op);
  bool ref = arg_ref(info, 16, op);
  const int64_t THK = d.T * d.H * d.k;
  Buf q = arg_buf(info, 0, op, "q", DType::F32, d.T * d.Hq * d.Dk);
  Buf keys = arg_buf(info, 1, op, "keys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  Buf idx = arg_buf(info, 2, op, "idx", DType::I32, THK);
  Buf scores = arg_buf(info, 3, op, "scores", DType::F32, THK);
  Buf weights = arg_buf(info, 4, op, "weights", DType::F32, THK);
  Buf dweights = arg_buf(info, 5, op, "dweights", DType::F32, THK);
  Buf dq = arg_buf(info, 6, op, "dq", DType::F32, d.T * d.Hq * d.Dk);
  Buf dkeys = arg_buf(info, 7, op, "dkeys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  host_only(op, {{"q", &q}, {"keys", &keys}, {"idx", &idx}, {"scores", &scores}, {"weights", &weights},
                   {"dweights", &dweights}, {"dq", &dq}, {"dkeys", &dkeys}});
  check_indices(op, "idx", idx.as<int32_t>(), THK, d.n * d.n);
  if (ref) {
    pkm_topk_backward_ref(d, act, q.as<float>(), keys.as<float>(), idx.as<int32_t>(), scores.as<float>(),
                          weights.as<float>(), dweights.as<float>(), dq.as<float>(), dkeys.as<float>());
  } else {
    Work w(pkm_topk_backward_work_bytes(d));
    pkm_topk_backward(d, act, q.as<float>(), keys.as<float>(), idx.as<int32_t>(), scores.as<float>(),
                      weights.as<float>(), dweights.as<float>(), dq.as<float>(), dkeys.as<float>(), w.p);
  }
  return info.Env().Undefined();
}

// ---- row gathers ------------------------------------------------------------------------------------------------
struct GatherDims {
  int64_t T, J, N, D;
};

GatherDims arg_gather_dims(const Napi::CallbackInfo& info, size_t i, const char* op) {
  GatherDims g;
  g.T = arg_int(info, i, op, "T", 0, kMaxI32);
  g.J = arg_int(info, i + 1, op, "J", 0, kMaxI32);
  g.N = arg_int(info, i + 2, op, "N", 1, kMaxI32);
  g.D = arg_int(info, i + 3, op, "D", 1, 1 << 24);
  check_product(op, "T·J", g.T, g.J, kMaxI32);
  return g;
}

// Reverse index of idx [T·J] over N rows; owns its buffers.
struct RowIndex {
  std::unique_ptr<int64_t[]> counts, offsets, pos;
  std::unique_ptr<int32_t[]> rows;
  int64_t U = 0;
  RowIndex(const int32_t* idx, int64_t M, int64_t N) {
    const int64_t cap = std::min(M, N) + 1;
    counts.reset(new int64_t[N + 1]);
    offsets.reset(new int64_t[cap]);
    pos.reset(new int64_t[M > 0 ? M : 1]);
    rows.reset(new int32_t[cap]);
    U = row_index_build(idx, M, N, counts.get(), rows.get(), offsets.get(), pos.get());
  }
};

// embeddingBag(idx, w, V, out, T, J, N, D, ref?)
Napi::Value JS_embeddingBag(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBag";
  GatherDims g = arg_gather_dims(info, 4, op);
  bool ref = arg_ref(info, 8, op);
  check_product(op, "N·D", g.N, g.D, INT64_MAX / 8);
  Buf idx = arg_buf(info, 0, op, "idx", DType::I32, g.T * g.J);
  Buf w = arg_buf(info, 1, op, "w", DType::F32, g.T * g.J);
  Buf V = arg_buf(info, 2, op, "V", DType::F32, g.N * g.D);
  Buf out = arg_buf(info, 3, op, "out", DType::F32, g.T * g.D);
  host_only(op, {{"idx", &idx}, {"w", &w}, {"V", &V}, {"out", &out}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  (ref ? embedding_bag_forward_ref : embedding_bag_forward)(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(),
                                                            V.as<float>(), out.as<float>());
  return info.Env().Undefined();
}

// embeddingBagBackward(idx, w, V, dout, dw, T, J, N, D, ref?) → { rows: Int32Array [U], values: Float32Array [U·D] }
Napi::Value JS_embeddingBagBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBagBackward";
  GatherDims g = arg_gather_dims(info, 5, op);
  bool ref = arg_ref(info, 9, op);
  Buf idx = arg_buf(info, 0, op, "idx", DType::I32, g.T * g.J);
  Buf w = arg_buf(info, 1, op, "w", DType::F32, g.T * g.J);
  Buf V = arg_buf(info, 2, op, "V", DType::F32, g.N * g.D);
  Buf dout = arg_buf(info, 3, op, "dout", DType::F32, g.T * g.D);
  Buf dw = arg_buf(info, 4, op, "dw", DType::F32, g.T * g.J);
  host_only(op, {{"idx", &idx}, {"w", &w}, {"V", &V}, {"dout", &dout}, {"dw", &dw}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  RowIndex ri(idx.as<int32_t>(), g.T * g.J, g.N);
  Napi::Env env = info.Env();
  auto rows = Napi::Int32Array::New(env, (size_t)ri.U);
  auto values = Napi::Float32Array::New(env, (size_t)(ri.U * g.D));
  std::copy(ri.rows.get(), ri.rows.get() + ri.U, rows.Data());
  if (ref)
    embedding_bag_backward_ref(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(), V.as<float>(), dout.as<float>(),
                               dw.as<float>(), ri.U, ri.rows.get(), values.Data());
  else
    embedding_bag_backward(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(), V.as<float>(), dout.as<float>(),
                           dw.as<float>(), ri.U, ri.rows.get(), ri.offsets.get(), ri.pos.get(), values.Data());
  Napi::Object o = Napi::Object::New(env);
  o.Set("rows", rows);
  o.Set("values", values);
  return o;
}

// ---- PEER experts --------------------------------------------------------------------------------------------
PeerAct arg_peer_act(const Napi::CallbackInfo& info, size_t i, const char* op) {
  return (PeerAct)arg_int(info, i, op, "act", 0, 3);
}

// peerExperts(x, idx, g, U, V, out, h, T, J, N, D, act, ref?)
Napi::Value JS_peerExperts(const Napi::CallbackInfo& info) {
  const char* op = "peerExperts";
  GatherDims g = arg_gather_dims(info, 7, op);
  PeerAct act = arg_peer_act(info, 11, op);
  bool ref = arg_ref(info, 12, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, g.T * g.D);
  Buf idx = arg_buf(info, 1, op, "idx", DType::I32, g.T * g.J);
  Buf gate = arg_buf(info, 2, op, "g", DType::F32, g.T * g.J);
  Buf U = arg_buf(info, 3, op, "U", DType::F32, g.N * g.D);
  Buf V = arg_buf(info, 4, op, "V", DType::F32, g.N * g.D);
  Buf out = arg_buf(info, 5, op, "out", DType::F32, g.T * g.D);
  Buf h = arg_buf(info, 6, op, "h", DType::F32, g.T * g.J);
  host_only(op, {{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"out", &out}, {"h", &h}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  (ref ? peer_forward_ref : peer_forward)(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(),
                                          U.as<float>(), V.as<float>(), out.as<float>(), h.as<float>());
  return info.Env().Undefined();
}

// peerExpertsBackward(x, idx, g, U, V, h, dout, dx, dg, T, J, N, D, act, ref?)
//   → { rows: Int32Array [U], dU: Float32Array [U·D], dV: Float32Array [U·D] }
Napi::Value JS_peerExpertsBackward(const Napi::CallbackInfo& info) {
  const char* op = "peerExpertsBackward";
  GatherDims g = arg_gather_dims(info, 9, op);
  PeerAct act = arg_peer_act(info, 13, op);
  bool ref = arg_ref(info, 14, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, g.T * g.D);
  Buf idx = arg_buf(info, 1, op, "idx", DType::I32, g.T * g.J);
  Buf gate = arg_buf(info, 2, op, "g", DType::F32, g.T * g.J);
  Buf U = arg_buf(info, 3, op, "U", DType::F32, g.N * g.D);
  Buf V = arg_buf(info, 4, op, "V", DType::F32, g.N * g.D);
  Buf h = arg_buf(info, 5, op, "h", DType::F32, g.T * g.J);
  Buf dout = arg_buf(info, 6, op, "dout", DType::F32, g.T * g.D);
  Buf dx = arg_buf(info, 7, op, "dx", DType::F32, g.T * g.D);
  Buf dg = arg_buf(info, 8, op, "dg", DType::F32, g.T * g.J);
  host_only(op, {{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"h", &h}, {"dout", &dout},
                   {"dx", &dx}, {"dg", &dg}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  RowIndex ri(idx.as<int32_t>(), g.T * g.J, g.N);
  Napi::Env env = info.Env();
  auto rows = Napi::Int32Array::New(env, (size_t)ri.U);
  auto dU = Napi::Float32Array::New(env, (size_t)(ri.U * g.D));
  auto dV = Napi::Float32Array::New(env, (size_t)(ri.U * g.D));
  std::copy(ri.rows.get(), ri.rows.get() + ri.U, rows.Data());
  if (ref) {
    peer_backward_ref(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(), U.as<float>(),
                      V.as<float>(), h.as<float>(), dout.as<float>(), dx.as<float>(), dg.as<float>(), ri.U,
                      ri.rows.get(), dU.Data(), dV.Data());
  } else {
    Work w(peer_backward_work_bytes(g.T, g.J));
    peer_backward(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(), U.as<float>(),
                  V.as<float>(), h.as<float>(), dout.as<float>(), dx.as<float>(), dg.as<float>(), ri.U, ri.rows.get(),
                  ri.offsets.get(), ri.pos.get(), dU.Data(), dV.Data(), w.p);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("rows", rows);
  o.Set("dU", dU);
  o.Set("dV", dV);
  return o;
}

// memBandwidth(bytes, threads) → { copy, triad } in GB/s (10⁹ bytes moved per second), best of 5 repetitions.
Napi::Value JS_memBandwidth(const Napi::CallbackInfo& info) {
  const char* op = "memBandwidth";
  const int64_t bytes = arg_int(info, 0, op, "bytes", 1 << 20, (int64_t)1 << 34);
  const int threads = (int)arg_int(info, 1, op, "threads", 1, 256);
  const int64_t n = bytes / 4;
  Work a(bytes), b(bytes), c(bytes);
  const int old = num_threads();
  set_num_threads(threads);
  MemBandwidth bw;
  try {
    bw = mem_bandwidth((float*)a.p, (float*)b.p, (float*)c.p, n, 5);
  } catch (...) {
    set_num_threads(old);
    throw;
  }
  set_num_threads(old);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("copy", bw.copy / 1e9);
  o.Set("triad", bw.triad / 1e9);
  return o;
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "pkmTopk", JS_pkmTopk);
  def(env, exports, "pkmTopkBackward", JS_pkmTopkBackward);
  def(env, exports, "embeddingBag", JS_embeddingBag);
  def(env, exports, "embeddingBagBackward", JS_embeddingBagBackward);
  def(env, exports, "peerExperts", JS_peerExperts);
  def(env, exports, "peerExpertsBackward", JS_peerExpertsBackward);
  def(env, exports, "memBandwidth", JS_memBandwidth);
});

}  // namespace
}  // namespace napi
}  // namespace sffn
