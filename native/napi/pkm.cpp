// PKM / PEER group: pkmTopk ↔ pkm_topk_forward, pkmTopkBackward ↔ pkm_topk_backward, embeddingBag ↔
// embedding_bag_forward, embeddingBagBackward ↔ embedding_bag_backward, peerExperts ↔ peer_forward,
// peerExpertsBackward ↔ peer_backward, batchNorm ↔ batch_norm_forward, batchNormBackward ↔ batch_norm_backward,
// memBandwidth ↔ mem_bandwidth, adviseHugePages. Every function takes a trailing `ref`
// boolean that runs the scalar reference (kernels/ref) instead, for the tests.
//
// Validation covers every buffer kind and length, every dim, and every index that would be read through
// (idx values of gathers and of the top-k backward), so bad input raises a typed JS error, never a crash. Device
// buffers (CUDA flavor: pkmTopk, embeddingBag, peerExperts and their backwards) get the same buffer and dim checks; their
// indices live on the device and are handled by the kernels instead (see below).
// Sparse gradients are returned as fresh typed arrays ({ rows: Int32Array [U], ...: Float32Array [U, D] }) since
// U is known only after the reverse index is built; workspaces live only for the call.
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <memory>
#include <vector>

#include "common.h"
#include "sffn/core.h"
#include "sffn/pkm.h"
#ifdef SFFN_WITH_CUDA
#include "cuda_util.h"
#include "sffn/cuda.h"
#endif

namespace sffn {
namespace napi {
namespace {

constexpr int64_t kMaxI32 = 2147483647;

// Workspaces come from the grow-only scratch arena of the calling thread (tid 0 is the JS thread): fresh
// allocations of tens of MB per call would cost more in page faults than the kernels take. Slot 6 is reserved
// for the PKM/PEER N-API layer (MoE kernels use slot 7; the kernels called here use none).
constexpr int kWorkSlot = 6;

struct Work {
  void* p;
  explicit Work(size_t bytes) : p(scratch(0, kWorkSlot, bytes ? bytes : 64)) {}
};

// CUDA flavor: pkmTopk, embeddingBag and peerExperts (forward and backward) with every buffer on the device run the
// CUDA kernels (sffn/cuda.h), which cannot check indices that live on the device (out of range: NaN rows, left out
// of the gradients; see pkm_kernels.cuh, pkm_topk_kernels.cuh). Their sparse gradients go into the caller's device buffers, sized for
// the worst case min(T·J, N) rows (rows past the touched ones are −1), so nothing is copied back.
using Bufs = std::initializer_list<std::pair<const char*, const Buf*>>;
#ifdef SFFN_WITH_CUDA
#define SFFN_DEVICE_BRANCH(bufs, call)                                                   \
  if (same_device(op, bufs)) {                                                           \
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu"); \
    call;                                                                                \
    return info.Env().Undefined();                                                       \
  }
// The sparse-gradient outputs of a device call: every one a device buffer (empty ones, with no memory, pass).
void device_outputs(const char* op, Bufs bufs) {
  for (auto& [name, b] : bufs)
    if (b->data && !b->device)
      fail(ErrKind::Device, op, ": ", name, " must be a device buffer for cuda inputs, got a host array");
}
#else
#define SFFN_DEVICE_BRANCH(bufs, call)
#endif

// Throws unless every index is in [0, N).
void check_indices(const char* op, const char* name, const int32_t* idx, int64_t M, int64_t N) {
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N)
      fail(ErrKind::Range, op, ": ", name, "[", p, "] must be in [0, N=", N, "), got ", idx[p]);
}

void check_product(const char* op, const char* what, int64_t a, int64_t b, int64_t limit) {
  if (a != 0 && b > limit / a) fail(ErrKind::Range, op, ": ", what, " = ", a, "·", b, " exceeds ", limit);
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
  bool ref = opt_ref(info, 13, op);
  const int64_t THK = d.T * d.H * d.k;
  Buf q = arg_buf(info, 0, op, "q", DType::F32, d.T * d.Hq * d.Dk);
  Buf keys = arg_buf(info, 1, op, "keys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  Buf idx = arg_buf(info, 2, op, "idx", DType::I32, THK);
  Buf scores = arg_buf(info, 3, op, "scores", DType::F32, THK);
  Buf weights = arg_buf(info, 4, op, "weights", DType::F32, THK);
  SFFN_DEVICE_BRANCH((Bufs{{"q", &q}, {"keys", &keys}, {"idx", &idx}, {"scores", &scores}, {"weights", &weights}}),
                     check_cuda(cuda::pkm_topk_forward(d.T, d.H, d.Hq, d.Hk, d.Dk, d.n, d.k, (int)act, q.as<float>(),
                                                       keys.as<float>(), idx.as<int32_t>(), scores.as<float>(),
                                                       weights.as<float>()),
                                op))
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
  bool ref = opt_ref(info, 16, op);
  const int64_t THK = d.T * d.H * d.k;
  Buf q = arg_buf(info, 0, op, "q", DType::F32, d.T * d.Hq * d.Dk);
  Buf keys = arg_buf(info, 1, op, "keys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  Buf idx = arg_buf(info, 2, op, "idx", DType::I32, THK);
  Buf scores = arg_buf(info, 3, op, "scores", DType::F32, THK);
  Buf weights = arg_buf(info, 4, op, "weights", DType::F32, THK);
  Buf dweights = arg_buf(info, 5, op, "dweights", DType::F32, THK);
  Buf dq = arg_buf(info, 6, op, "dq", DType::F32, d.T * d.Hq * d.Dk);
  Buf dkeys = arg_buf(info, 7, op, "dkeys", DType::F32, d.Hk * 2 * d.n * (d.Dk / 2));
  SFFN_DEVICE_BRANCH((Bufs{{"q", &q}, {"keys", &keys}, {"idx", &idx}, {"scores", &scores}, {"weights", &weights},
                           {"dweights", &dweights}, {"dq", &dq}, {"dkeys", &dkeys}}),
                     check_cuda(cuda::pkm_topk_backward(d.T, d.H, d.Hq, d.Hk, d.Dk, d.n, d.k, (int)act,
                                                        q.as<float>(), keys.as<float>(), idx.as<int32_t>(),
                                                        scores.as<float>(), weights.as<float>(), dweights.as<float>(),
                                                        dq.as<float>(), dkeys.as<float>()),
                                op))
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

// Reverse index of idx [T·J] over N rows, followed by `extra` bytes of kernel workspace, all in one scratch
// block (valid for the duration of the call).
struct RowIndex {
  int64_t* counts;
  int64_t* offsets;
  int64_t* pos;
  int32_t* rows;
  void* extra;
  int64_t U = 0;
  RowIndex(const int32_t* idx, int64_t M, int64_t N, size_t extra_bytes = 0) {
    const int64_t cap = std::min(M, N) + 1;
    auto round = [](size_t b) { return (b + 63) / 64 * 64; };
    const size_t b_counts = round((size_t)row_index_counts_size(M, N) * 8), b_off = round((size_t)cap * 8),
                 b_pos = round((size_t)std::max<int64_t>(M, 1) * 8), b_rows = round((size_t)cap * 4);
    char* p = static_cast<char*>(scratch(0, kWorkSlot, b_counts + b_off + b_pos + b_rows + extra_bytes + 64));
    counts = (int64_t*)p;
    offsets = (int64_t*)(p + b_counts);
    pos = (int64_t*)(p + b_counts + b_off);
    rows = (int32_t*)(p + b_counts + b_off + b_pos);
    extra = p + b_counts + b_off + b_pos + b_rows;
    U = row_index_build(idx, M, N, counts, rows, offsets, pos);
  }
};

// A Float32Array of n floats starting on a 64-byte boundary (a view into a buffer 64 bytes longer). The row passes
// stream gradient rows out with aligned non-temporal stores (pkm_rows.h vec_stream); at the start of a V8 buffer
// (16 bytes past a page) they fell back to plain stores, each a read-for-ownership, and the PEER backward at
// D = 256, T = 4096 took ~1.15x as long.
Napi::Float32Array aligned_floats(Napi::Env env, size_t n) {
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, n * sizeof(float) + 64);
  return Napi::Float32Array::New(env, n, ab, align_offset(ab.Data(), 64));
}

// Output arrays of a sparse gradient: the caller's (positions `i`.. of info) when given, else fresh ones of
// exactly U rows. lib/ops/pkm.ts's SparseGradWorkspace passes buffers sized for the most rows a call can touch,
// min(T·J, N), so given buffers always hold the U rows.
struct SparseOut {
  Napi::Int32Array rows;
  std::vector<Napi::Float32Array> vals;
};

SparseOut sparse_out(const Napi::CallbackInfo& info, size_t i, int nvals, const char* op, int64_t U, int64_t D) {
  SparseOut o;
  if (info.Length() > i && !info[i].IsNull() && !info[i].IsUndefined()) {
    Buf r = arg_buf(info, i, op, "outRows", DType::I32);
    if (r.count < U) fail(ErrKind::Shape, op, ": outRows must hold the ", U, " rows touched, got ", r.count);
    for (int v = 0; v < nvals; ++v) {
      Buf b = arg_buf(info, i + 1 + v, op, "outValues", DType::F32);
      if (b.count % D != 0 || b.count / D != r.count)
        fail(ErrKind::Shape, op, ": outValues must have ", r.count, "·", D, " elements, got ", b.count);
      o.vals.push_back(info[i + 1 + v].As<Napi::Float32Array>());
    }
    o.rows = info[i].As<Napi::Int32Array>();
    return o;
  }
  o.rows = Napi::Int32Array::New(info.Env(), (size_t)U);
  for (int v = 0; v < nvals; ++v) o.vals.push_back(aligned_floats(info.Env(), (size_t)(U * D)));
  return o;
}

// embeddingBag(idx, w, V, out, T, J, N, D, ref?)
Napi::Value JS_embeddingBag(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBag";
  GatherDims g = arg_gather_dims(info, 4, op);
  bool ref = opt_ref(info, 8, op);
  check_product(op, "N·D", g.N, g.D, INT64_MAX / 8);
  Buf idx = arg_buf(info, 0, op, "idx", DType::I32, g.T * g.J);
  Buf w = arg_buf(info, 1, op, "w", DType::F32, g.T * g.J);
  Buf V = arg_buf(info, 2, op, "V", DType::F32, g.N * g.D);
  Buf out = arg_buf(info, 3, op, "out", DType::F32, g.T * g.D);
  SFFN_DEVICE_BRANCH((Bufs{{"idx", &idx}, {"w", &w}, {"V", &V}, {"out", &out}}),
                     check_cuda(cuda::embedding_bag_forward(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(),
                                                            V.as<float>(), out.as<float>()),
                                op))
  host_only(op, {{"idx", &idx}, {"w", &w}, {"V", &V}, {"out", &out}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  (ref ? embedding_bag_forward_ref : embedding_bag_forward)(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(),
                                                            V.as<float>(), out.as<float>());
  return info.Env().Undefined();
}

// embeddingBagBackward(idx, w, V, dout, dw, T, J, N, D, ref?, outRows?, outValues?)
//   → { count: U, rows: Int32Array [>= U], values: Float32Array [>= U·D] } (the first U rows are the gradient;
//   the arrays are outRows/outValues when given and large enough, else fresh).
//   Device buffers: outRows [min(T·J, N)] and outValues [min(T·J, N)·D] are required device buffers the kernels
//   fill (rows ascending, then −1); returns undefined.
Napi::Value JS_embeddingBagBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBagBackward";
  GatherDims g = arg_gather_dims(info, 5, op);
  bool ref = opt_ref(info, 9, op);
  Buf idx = arg_buf(info, 0, op, "idx", DType::I32, g.T * g.J);
  Buf w = arg_buf(info, 1, op, "w", DType::F32, g.T * g.J);
  Buf V = arg_buf(info, 2, op, "V", DType::F32, g.N * g.D);
  Buf dout = arg_buf(info, 3, op, "dout", DType::F32, g.T * g.D);
  Buf dw = arg_buf(info, 4, op, "dw", DType::F32, g.T * g.J);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"idx", &idx}, {"w", &w}, {"V", &V}, {"dout", &dout}, {"dw", &dw}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    const int64_t cap = std::min(g.T * g.J, g.N);
    Buf rows = arg_buf(info, 10, op, "outRows", DType::I32, cap);
    Buf vals = arg_buf(info, 11, op, "outValues", DType::F32, cap * g.D);
    device_outputs(op, {{"outRows", &rows}, {"outValues", &vals}});
    check_cuda(cuda::embedding_bag_backward(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(), V.as<float>(),
                                            dout.as<float>(), dw.as<float>(), cap, rows.as<int32_t>(),
                                            vals.as<float>()),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"idx", &idx}, {"w", &w}, {"V", &V}, {"dout", &dout}, {"dw", &dw}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  RowIndex ri(idx.as<int32_t>(), g.T * g.J, g.N);
  SparseOut so = sparse_out(info, 10, 1, op, ri.U, g.D);
  std::copy(ri.rows, ri.rows + ri.U, so.rows.Data());
  float* values = so.vals[0].Data();
  if (ref)
    embedding_bag_backward_ref(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(), V.as<float>(), dout.as<float>(),
                               dw.as<float>(), ri.U, ri.rows, values);
  else
    embedding_bag_backward(g.T, g.J, g.N, g.D, idx.as<int32_t>(), w.as<float>(), V.as<float>(), dout.as<float>(),
                           dw.as<float>(), ri.U, ri.rows, ri.offsets, ri.pos, values);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("count", (double)ri.U);
  o.Set("rows", so.rows);
  o.Set("values", so.vals[0]);
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
  bool ref = opt_ref(info, 12, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, g.T * g.D);
  Buf idx = arg_buf(info, 1, op, "idx", DType::I32, g.T * g.J);
  Buf gate = arg_buf(info, 2, op, "g", DType::F32, g.T * g.J);
  Buf U = arg_buf(info, 3, op, "U", DType::F32, g.N * g.D);
  Buf V = arg_buf(info, 4, op, "V", DType::F32, g.N * g.D);
  Buf out = arg_buf(info, 5, op, "out", DType::F32, g.T * g.D);
  Buf h = arg_buf(info, 6, op, "h", DType::F32, g.T * g.J);
  SFFN_DEVICE_BRANCH((Bufs{{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"out", &out}, {"h", &h}}),
                     check_cuda(cuda::peer_forward(g.T, g.J, g.N, g.D, (int)act, x.as<float>(), idx.as<int32_t>(),
                                                   gate.as<float>(), U.as<float>(), V.as<float>(), out.as<float>(),
                                                   h.as<float>()),
                                op))
  host_only(op, {{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"out", &out}, {"h", &h}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  (ref ? peer_forward_ref : peer_forward)(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(),
                                          U.as<float>(), V.as<float>(), out.as<float>(), h.as<float>());
  return info.Env().Undefined();
}

// peerExpertsBackward(x, idx, g, U, V, h, dout, dx, dg, T, J, N, D, act, ref?, outRows?, outDU?, outDV?)
//   → { count: U, rows: Int32Array [>= U], dU, dV: Float32Array [>= U·D] } (reuse as in embeddingBagBackward)
//   Device buffers: outRows [min(T·J, N)], outDU and outDV [min(T·J, N)·D] are required device buffers the kernels
//   fill (rows ascending, then −1); returns undefined.
Napi::Value JS_peerExpertsBackward(const Napi::CallbackInfo& info) {
  const char* op = "peerExpertsBackward";
  GatherDims g = arg_gather_dims(info, 9, op);
  PeerAct act = arg_peer_act(info, 13, op);
  bool ref = opt_ref(info, 14, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, g.T * g.D);
  Buf idx = arg_buf(info, 1, op, "idx", DType::I32, g.T * g.J);
  Buf gate = arg_buf(info, 2, op, "g", DType::F32, g.T * g.J);
  Buf U = arg_buf(info, 3, op, "U", DType::F32, g.N * g.D);
  Buf V = arg_buf(info, 4, op, "V", DType::F32, g.N * g.D);
  Buf h = arg_buf(info, 5, op, "h", DType::F32, g.T * g.J);
  Buf dout = arg_buf(info, 6, op, "dout", DType::F32, g.T * g.D);
  Buf dx = arg_buf(info, 7, op, "dx", DType::F32, g.T * g.D);
  Buf dg = arg_buf(info, 8, op, "dg", DType::F32, g.T * g.J);
#ifdef SFFN_WITH_CUDA
  if (same_device(op, {{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"h", &h}, {"dout", &dout},
                       {"dx", &dx}, {"dg", &dg}})) {
    if (ref) fail(ErrKind::Device, op, ": the reference implementation runs on the cpu");
    const int64_t cap = std::min(g.T * g.J, g.N);
    Buf rows = arg_buf(info, 15, op, "outRows", DType::I32, cap);
    Buf dU = arg_buf(info, 16, op, "outDU", DType::F32, cap * g.D);
    Buf dV = arg_buf(info, 17, op, "outDV", DType::F32, cap * g.D);
    device_outputs(op, {{"outRows", &rows}, {"outDU", &dU}, {"outDV", &dV}});
    check_cuda(cuda::peer_backward(g.T, g.J, g.N, g.D, (int)act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(),
                                   U.as<float>(), V.as<float>(), h.as<float>(), dout.as<float>(), dx.as<float>(),
                                   dg.as<float>(), cap, rows.as<int32_t>(), dU.as<float>(), dV.as<float>()),
               op);
    return info.Env().Undefined();
  }
#endif
  host_only(op, {{"x", &x}, {"idx", &idx}, {"g", &gate}, {"U", &U}, {"V", &V}, {"h", &h}, {"dout", &dout},
                   {"dx", &dx}, {"dg", &dg}});
  check_indices(op, "idx", idx.as<int32_t>(), g.T * g.J, g.N);
  RowIndex ri(idx.as<int32_t>(), g.T * g.J, g.N, peer_backward_work_bytes(g.T, g.J));
  SparseOut so = sparse_out(info, 15, 2, op, ri.U, g.D);
  std::copy(ri.rows, ri.rows + ri.U, so.rows.Data());
  float* dU = so.vals[0].Data();
  float* dV = so.vals[1].Data();
  if (ref) {
    peer_backward_ref(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(), U.as<float>(),
                      V.as<float>(), h.as<float>(), dout.as<float>(), dx.as<float>(), dg.as<float>(), ri.U, ri.rows,
                      dU, dV);
  } else {
    peer_backward(g.T, g.J, g.N, g.D, act, x.as<float>(), idx.as<int32_t>(), gate.as<float>(), U.as<float>(),
                  V.as<float>(), h.as<float>(), dout.as<float>(), dx.as<float>(), dg.as<float>(), ri.U, ri.rows,
                  ri.offsets, ri.pos, dU, dV, ri.extra);
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("count", (double)ri.U);
  o.Set("rows", so.rows);
  o.Set("dU", so.vals[0]);
  o.Set("dV", so.vals[1]);
  return o;
}

// memBandwidth(bytes, threads, reps?) → { copy, triad, read, rows } in GB/s (10⁹ bytes moved per second), best of `reps`
// repetitions (default 5).
Napi::Value JS_memBandwidth(const Napi::CallbackInfo& info) {
  const char* op = "memBandwidth";
  const int64_t bytes = arg_int(info, 0, op, "bytes", 1 << 20, (int64_t)1 << 34);
  const int threads = (int)arg_int(info, 1, op, "threads", 1, 256);
  const int reps = info.Length() > 2 && !info[2].IsUndefined() ? (int)arg_int(info, 2, op, "reps", 1, 1000) : 5;
  const int64_t n = bytes / 4;
  // 2 MiB-aligned buffers with transparent huge pages, like the tables the benchmarks use (adviseHugePages).
  struct Buffer {
    void* p;
    explicit Buffer(size_t b) {
      const size_t huge = (size_t)2 << 20, len = (b + huge - 1) / huge * huge;
      p = std::aligned_alloc(huge, len);
      if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(p, len, MADV_HUGEPAGE);
#endif
    }
    ~Buffer() { std::free(p); }
  } a(bytes), b(bytes), c(bytes);
  const int old = num_threads();
  set_num_threads(threads);
  MemBandwidth bw;
  try {
    bw = mem_bandwidth((float*)a.p, (float*)b.p, (float*)c.p, n, reps);
  } catch (...) {
    set_num_threads(old);
    throw;
  }
  set_num_threads(old);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("copy", bw.copy / 1e9);
  o.Set("triad", bw.triad / 1e9);
  o.Set("read", bw.read / 1e9);
  o.Set("rows", bw.rows / 1e9);
  return o;
}

// ---- query BatchNorm ------------------------------------------------------------------------------------------
// batchNorm(x, gamma?, beta?, runningMean?, runningVar?, y, mean, invstd, T, F, training, momentum, eps, ref?)
Napi::Value JS_batchNorm(const Napi::CallbackInfo& info) {
  const char* op = "batchNorm";
  const int64_t T = arg_int(info, 8, op, "T", 0, kMaxI32);
  const int64_t F = arg_int(info, 9, op, "F", 1, kMaxI32);
  check_product(op, "T·F", T, F, (int64_t)1 << 40);
  const bool training = arg_bool(info, 10, op, "training");
  const double momentum = arg_num(info, 11, op, "momentum");
  const double eps = arg_num(info, 12, op, "eps");
  if (!(momentum >= 0 && momentum <= 1)) fail(ErrKind::Range, op, ": momentum must be in [0, 1], got ", momentum);
  if (!(eps >= 0)) fail(ErrKind::Range, op, ": eps must be >= 0, got ", eps);
  const bool ref = opt_ref(info, 13, op);
  Buf x = arg_buf(info, 0, op, "x", DType::F32, T * F);
  Buf gamma = arg_buf_opt(info, 1, op, "gamma", DType::F32, F);
  Buf beta = arg_buf_opt(info, 2, op, "beta", DType::F32, F);
  Buf rm = arg_buf_opt(info, 3, op, "runningMean", DType::F32, F);
  Buf rv = arg_buf_opt(info, 4, op, "runningVar", DType::F32, F);
  Buf y = arg_buf(info, 5, op, "y", DType::F32, T * F);
  Buf mean = arg_buf(info, 6, op, "mean", DType::F32, F);
  Buf invstd = arg_buf(info, 7, op, "invstd", DType::F32, F);
  host_only(op, {{"x", &x}, {"gamma", &gamma}, {"beta", &beta}, {"runningMean", &rm}, {"runningVar", &rv}, {"y", &y},
                 {"mean", &mean}, {"invstd", &invstd}});
  if (training && T < 1) fail(ErrKind::Shape, op, ": training needs at least one token, got T=0");
  (ref ? batch_norm_forward_ref : batch_norm_forward)(T, F, x.as<float>(), gamma.as<float>(), beta.as<float>(),
                                                      rm.as<float>(), rv.as<float>(), training, (float)momentum,
                                                      (float)eps, y.as<float>(), mean.as<float>(), invstd.as<float>());
  return info.Env().Undefined();
}

// batchNormBackward(dy, x, gamma?, mean, invstd, dx, dgamma?, dbeta?, T, F, training, ref?)
Napi::Value JS_batchNormBackward(const Napi::CallbackInfo& info) {
  const char* op = "batchNormBackward";
  const int64_t T = arg_int(info, 8, op, "T", 0, kMaxI32);
  const int64_t F = arg_int(info, 9, op, "F", 1, kMaxI32);
  check_product(op, "T·F", T, F, (int64_t)1 << 40);
  const bool training = arg_bool(info, 10, op, "training");
  const bool ref = opt_ref(info, 11, op);
  Buf dy = arg_buf(info, 0, op, "dy", DType::F32, T * F);
  Buf x = arg_buf(info, 1, op, "x", DType::F32, T * F);
  Buf gamma = arg_buf_opt(info, 2, op, "gamma", DType::F32, F);
  Buf mean = arg_buf(info, 3, op, "mean", DType::F32, F);
  Buf invstd = arg_buf(info, 4, op, "invstd", DType::F32, F);
  Buf dx = arg_buf(info, 5, op, "dx", DType::F32, T * F);
  Buf dgamma = arg_buf_opt(info, 6, op, "dgamma", DType::F32, F);
  Buf dbeta = arg_buf_opt(info, 7, op, "dbeta", DType::F32, F);
  host_only(op, {{"dy", &dy}, {"x", &x}, {"gamma", &gamma}, {"mean", &mean}, {"invstd", &invstd}, {"dx", &dx},
                 {"dgamma", &dgamma}, {"dbeta", &dbeta}});
  (ref ? batch_norm_backward_ref : batch_norm_backward)(T, F, dy.as<float>(), x.as<float>(), gamma.as<float>(),
                                                        mean.as<float>(), invstd.as<float>(), training,
                                                        dx.as<float>(), dgamma.as<float>(), dbeta.as<float>());
  return info.Env().Undefined();
}

// adviseHugePages(array) → bool: asks the kernel to back the array's memory with transparent huge pages
// (madvise MADV_HUGEPAGE on the 2 MiB-aligned interior). Random row reads over a 1 GiB table miss the TLB on
// nearly every row with 4 KiB pages; with 2 MiB pages the whole table fits the TLB. Takes effect for pages
// touched after the call (call it before filling a fresh table). False where unsupported.
Napi::Value JS_adviseHugePages(const Napi::CallbackInfo& info) {
  const char* op = "adviseHugePages";
  Napi::Value v = info[0];
  if (!v.IsTypedArray()) fail(ErrKind::Type, op, ": array must be a typed array");
  auto ta = v.As<Napi::TypedArray>();
  bool ok = false;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = (uintptr_t)2 << 20;
  uintptr_t b = (uintptr_t)(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  uintptr_t e = b + ta.ByteLength();
  uintptr_t ab = (b + huge - 1) & ~(huge - 1), ae = e & ~(huge - 1);
  if (ae > ab) ok = madvise((void*)ab, ae - ab, MADV_HUGEPAGE) == 0;
#endif
  return Napi::Boolean::New(info.Env(), ok);
}

Registrar reg([](Napi::Env env, Napi::Object exports) {
  def(env, exports, "adviseHugePages", JS_adviseHugePages);
  def(env, exports, "batchNorm", JS_batchNorm);
  def(env, exports, "batchNormBackward", JS_batchNormBackward);
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
