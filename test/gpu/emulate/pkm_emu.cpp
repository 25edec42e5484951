// Host emulation of the CUDA PKM / PEER kernels (native/kernels/cuda/pkm_kernels.cuh, pkm_topk_kernels.cuh) against
// the reference ops of the CPU (native/kernels/ref/{embedding_bag,peer,pkm_topk}.cpp, compiled in): the product-key
// top-k forward (indices exactly the exhaustive search's) and backward for per-head, shared and single-query keys,
// every score activation, k = 1 and k = n, a slot out of range in the backward (NaN dq row, left out of dkeys); the reverse index (radix passes for
// N below and above 256 and 65536, repeated rows, rows touched once, positions across the 256-position chunks; the
// sorted positions must be ascending within each row), embeddingBag forward/backward and peerExperts forward/
// backward for every activation, a position out of range (NaN output row and dw / dg / dx, left out of the sparse
// gradients), empty batches and J = 0. The sparse outputs are checked over their worst-case capacity: rows past U
// are −1 with zero values. Launched as pkm.cu does, with small grids so the loops stride. AddressSanitizer catches
// out-of-bounds accesses. Run by test/gpu/pkm-emulated.test.ts; prints "ok" and exits 0 on success.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"
#include "pkm_kernels.cuh"
#include "pkm_topk_kernels.cuh"
#include "../../../native/kernels/ref/embedding_bag.cpp"
#include "../../../native/kernels/ref/peer.cpp"
// Both references define a file-local dot(); renamed in this one so the two compile into one program.
#define dot pkm_topk_ref_dot
#include "../../../native/kernels/ref/pkm_topk.cpp"
#undef dot

using namespace sffn::cuda;

#define EMU_SEED 7u
#include "emu_check.h"

// Random indices in [0, N) drawn from `spread` rows (repeats when spread is small); `bad` puts one out of range.
static std::vector<int32_t> indices(int64_t M, int64_t N, int64_t spread, bool bad) {
  std::vector<int32_t> idx(M);
  const int64_t s = std::min(spread, N);
  for (auto& i : idx) i = (int32_t)((urand() % s) * (N / s));
  if (bad && M > 5) idx[5] = (int32_t)N + 2;
  if (bad && M > 9) idx[9] = -3;
  return idx;
}

// The unique valid rows ascending (what the reference backward is given).
static std::vector<int32_t> unique_rows(const std::vector<int32_t>& idx, int64_t N) {
  std::vector<int32_t> r;
  for (int32_t i : idx)
    if (i >= 0 && i < N) r.push_back(i);
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

// The reverse index as pkm.cu's DevRowIndex builds it (small grids where the kernels stride). Returns U; checks
// the sorted positions against idx.
struct EmuIndex {
  std::vector<int32_t> keys[2], vals[2], hist, cnt;
  std::vector<int64_t> coff, starts;
  int64_t nU = -7;
  const int32_t* pos = nullptr;
  bool sorted_ok = true;

  void build(int64_t M, int64_t N, int64_t cap, const int32_t* idx, int32_t* rows) {
    const int64_t nc = (M + PK_CHUNK - 1) / PK_CHUNK;
    for (auto& v : keys) v.assign(std::max<int64_t>(M, 1), -5);
    for (auto& v : vals) v.assign(std::max<int64_t>(M, 1), -5);
    hist.assign(std::max<int64_t>(nc * PK_RADIX, 1), 0);
    cnt.assign(std::max<int64_t>(nc, 1), 0);
    coff.assign(std::max<int64_t>(nc, 1), 0);
    starts.assign(cap + 1, -9);
    int cur = 0;
    if (M > 0) {
      launch(dim3{2, 1, 1}, 64, [&] { pk_keys_init_kernel(M, N, idx, keys[0].data(), vals[0].data()); });
      for (int shift = 0; shift < 31 && (N >> shift) > 0; shift += 8) {
        launch(dim3{(unsigned)nc, 1, 1}, PK_CHUNK, [&] { pk_digit_hist_kernel(M, shift, keys[cur].data(), hist.data()); });
        launch(dim3{1, 1, 1}, PK_RADIX, [&] { pk_digit_scan_kernel(nc, hist.data()); });
        launch(dim3{(unsigned)nc, 1, 1}, PK_CHUNK, [&] {
          pk_digit_place_kernel(M, shift, keys[cur].data(), vals[cur].data(), hist.data(), keys[1 - cur].data(),
                                vals[1 - cur].data());
        });
        cur = 1 - cur;
      }
      launch(dim3{(unsigned)nc, 1, 1}, PK_CHUNK, [&] { pk_unique_count_kernel(M, N, keys[cur].data(), cnt.data()); });
    }
    launch(dim3{1, 1, 1}, PK_CHUNK, [&] { pk_chunk_offsets_kernel(nc, cnt.data(), coff.data(), &nU, starts.data()); });
    if (M > 0)
      launch(dim3{(unsigned)nc, 1, 1}, PK_CHUNK, [&] {
        pk_rows_kernel(M, N, keys[cur].data(), coff.data(), &nU, rows, starts.data());
      });
    pos = vals[cur].data();
    // Every row's positions ascending and holding that row; the slices tile [0, number of valid positions).
    int64_t valid = 0;
    for (int64_t p = 0; p < M; ++p) valid += idx[p] >= 0 && idx[p] < N;
    sorted_ok = nU >= 0 && nU <= cap && starts[0] == 0 && starts[nU] == valid;
    for (int64_t u = 0; sorted_ok && u < nU; ++u) {
      sorted_ok &= starts[u] < starts[u + 1] && (u == 0 || rows[u - 1] < rows[u]);
      for (int64_t k = starts[u]; k < starts[u + 1]; ++k)
        sorted_ok &= idx[pos[k]] == rows[u] && (k == starts[u] || pos[k - 1] < pos[k]);
    }
    if (!sorted_ok) std::printf("  reverse index malformed (U=%lld)\n", (long long)nU);
  }
};

// The sparse output over its capacity: rows = the reference's unique rows then −1, values = reference then 0.
static bool sparse_ok(const char* what, const std::vector<int32_t>& urows, const std::vector<float>& ref, int64_t cap,
                      int64_t D, const int32_t* rows, const float* vals, double tol) {
  const int64_t U = (int64_t)urows.size();
  for (int64_t u = 0; u < cap; ++u)
    if (rows[u] != (u < U ? urows[u] : -1)) {
      std::printf("  %s rows[%lld]: emulated %d, expected %d\n", what, (long long)u, rows[u], u < U ? urows[u] : -1);
      return false;
    }
  std::vector<float> full(cap * D, 0.f);
  std::copy(ref.begin(), ref.end(), full.begin());
  return near(what, vals, full.data(), cap * D, tol);
}

static bool embedding_bag(int64_t T, int64_t J, int64_t N, int64_t D, int64_t spread, bool bad) {
  const int64_t M = T * J, cap = std::min(M, N);
  auto idx = indices(M, N, spread, bad);
  auto w = rnd(M), V = rnd(N * D), dout = rnd(T * D);
  std::vector<int32_t> ok_idx(idx);
  for (auto& i : ok_idx) i = i >= 0 && i < N ? i : 0;
  // Reference with the out-of-range positions given zero weight, then their token rows / dw NaN.
  std::vector<float> w0(w);
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N) w0[p] = 0.f;
  std::vector<float> rout(T * D), out(T * D, -9.f);
  sffn::embedding_bag_forward_ref(T, J, N, D, ok_idx.data(), w0.data(), V.data(), rout.data());
  auto urows = unique_rows(idx, N);
  const int64_t U = (int64_t)urows.size();
  std::vector<float> rdw(M), rdv(U * D);
  sffn::embedding_bag_backward_ref(T, J, N, D, ok_idx.data(), w0.data(), V.data(), dout.data(), rdw.data(), U,
                                   urows.data(), rdv.data());
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N) {
      rdw[p] = NAN;
      for (int64_t d = 0; d < D; ++d) rout[(p / J) * D + d] = NAN;
    }
  if (T > 0)
    launch(dim3{2, 1, 1}, 64, [&] { pk_weighted_rows_kernel(T, J, N, D, idx.data(), w.data(), V.data(), out.data()); });
  std::vector<float> dw(M, -9.f), values(cap * D, -9.f);
  std::vector<int32_t> rows(cap, -9);
  if (M > 0) launch(dim3{2, 1, 1}, 64, [&] { pk_row_dot_kernel(T, J, N, D, idx.data(), V.data(), dout.data(), dw.data()); });
  EmuIndex ri;
  bool ok = true;
  if (cap > 0) {
    ri.build(M, N, cap, idx.data(), rows.data());
    launch(dim3{2, 1, 1}, 64, [&] {
      eb_dv_kernel(J, D, cap, &ri.nU, ri.starts.data(), ri.pos, w.data(), dout.data(), rows.data(), values.data());
    });
    ok = ri.sorted_ok && ri.nU == U;
  }
  char what[96];
  std::snprintf(what, sizeof what, "embeddingBag T=%lld J=%lld N=%lld D=%lld bad=%d", (long long)T, (long long)J,
                (long long)N, (long long)D, bad);
  return report(what, ok && near("out", out.data(), rout.data(), T * D, 1e-6) && near("dw", dw.data(), rdw.data(), M, 1e-6) &&
                          sparse_ok("dV", urows, rdv, cap, D, rows.data(), values.data(), 1e-6));
}

static bool peer(int64_t T, int64_t J, int64_t N, int64_t D, int act, int64_t spread, bool bad) {
  const int64_t M = T * J, cap = std::min(M, N);
  auto idx = indices(M, N, spread, bad);
  auto x = rnd(T * D), g = rnd(M), U = rnd(N * D, 0.5f), V = rnd(N * D), dout = rnd(T * D);
  std::vector<int32_t> ok_idx(idx);
  for (auto& i : ok_idx) i = i >= 0 && i < N ? i : 0;
  std::vector<float> g0(g);
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N) g0[p] = 0.f;
  const sffn::PeerAct pa = (sffn::PeerAct)act;
  std::vector<float> rout(T * D), rh(M), out(T * D, -9.f), h(M, -9.f);
  sffn::peer_forward_ref(T, J, N, D, pa, x.data(), ok_idx.data(), g0.data(), U.data(), V.data(), rout.data(), rh.data());
  auto urows = unique_rows(idx, N);
  const int64_t nu = (int64_t)urows.size();
  std::vector<float> rdx(T * D), rdg(M), rdU(nu * D), rdV(nu * D);
  sffn::peer_backward_ref(T, J, N, D, pa, x.data(), ok_idx.data(), g0.data(), U.data(), V.data(), rh.data(),
                          dout.data(), rdx.data(), rdg.data(), nu, urows.data(), rdU.data(), rdV.data());
  for (int64_t p = 0; p < M; ++p)
    if (idx[p] < 0 || idx[p] >= N) {
      rh[p] = rdg[p] = NAN;
      for (int64_t d = 0; d < D; ++d) rout[(p / J) * D + d] = rdx[(p / J) * D + d] = NAN;
    }
  if (M > 0) launch(dim3{2, 1, 1}, 64, [&] { pk_row_dot_kernel(T, J, N, D, idx.data(), U.data(), x.data(), h.data()); });
  if (T > 0)
    launch(dim3{2, 1, 1}, 64, [&] {
      peer_fwd_kernel(T, J, N, D, act, idx.data(), g.data(), h.data(), V.data(), out.data());
    });
  // The backward reads the emulated h (as the device op reads the saved h).
  std::vector<float> dx(T * D, -9.f), dg(M, -9.f), dU(cap * D, -9.f), dV(cap * D, -9.f);
  std::vector<int32_t> rows(cap, -9);
  std::vector<double> dh(std::max<int64_t>(M, 1)), gv(std::max<int64_t>(M, 1));
  EmuIndex ri;
  ri.build(cap > 0 ? M : 0, N, cap, idx.data(), rows.data());
  if (M > 0)
    launch(dim3{2, 1, 1}, 64, [&] {
      peer_bwd_pos_kernel(T, J, N, D, act, idx.data(), g.data(), V.data(), h.data(), dout.data(), dg.data(), dh.data(),
                          gv.data());
    });
  if (T > 0)
    launch(dim3{2, 1, 1}, 64, [&] { pk_weighted_rows_kernel(T, J, N, D, idx.data(), dh.data(), U.data(), dx.data()); });
  if (cap > 0)
    launch(dim3{2, 1, 1}, 64, [&] {
      peer_duv_kernel(J, D, cap, &ri.nU, ri.starts.data(), ri.pos, dh.data(), gv.data(), x.data(), dout.data(),
                      rows.data(), dU.data(), dV.data());
    });
  const bool idx_ok = cap == 0 || (ri.sorted_ok && ri.nU == nu);
  char what[96];
  std::snprintf(what, sizeof what, "peerExperts T=%lld J=%lld N=%lld D=%lld act=%d bad=%d", (long long)T, (long long)J,
                (long long)N, (long long)D, act, bad);
  return report(what, idx_ok && near("out", out.data(), rout.data(), T * D, 1e-5) && near("h", h.data(), rh.data(), M, 1e-6) &&
                          near("dx", dx.data(), rdx.data(), T * D, 1e-5) && near("dg", dg.data(), rdg.data(), M, 1e-5) &&
                          sparse_ok("dU", urows, rdU, cap, D, rows.data(), dU.data(), 1e-5) &&
                          sparse_ok("dV", urows, rdV, cap, D, rows.data(), dV.data(), 1e-5));
}

static bool pkm_topk(int64_t T, int64_t H, int64_t Hq, int64_t Hk, int64_t Dk, int64_t n, int64_t k, int act,
                     bool bad) {
  const sffn::PkmDims d{T, H, Hq, Hk, Dk, n, k};
  const int64_t THK = T * H * k, half = Dk / 2, R = Hk * 2 * n;
  auto q = rnd(T * Hq * Dk), keys = rnd(R * half), dwt = rnd(THK);
  std::vector<int32_t> ridx(THK), idx(THK, -9);
  std::vector<float> rs(THK), rw(THK), sc(THK, -9.f), wt(THK, -9.f);
  sffn::pkm_topk_forward_ref(d, (sffn::PkmAct)act, q.data(), keys.data(), ridx.data(), rs.data(), rw.data());
  // Forward as pkm.cu launches it (small grids: the block loops stride).
  const int64_t rows = T * H * 2, C = pkt_num_candidates(k);
  std::vector<float> sub(std::max<int64_t>(rows * n, 1)), tv(std::max<int64_t>(rows * k, 1), -9.f),
      cv(std::max<int64_t>(T * H * C, 1));
  std::vector<int32_t> ti(std::max<int64_t>(rows * k, 1), -9), cs(std::max<int64_t>(T * H * C, 1));
  if (T > 0) {
    launch(dim3{3, 1, 1}, 64, [&] { pkt_subscore_kernel(d, q.data(), keys.data(), sub.data()); });
    launch(dim3{2, 1, 1}, 32, [&] { pkt_half_topk_kernel(rows, n, k, sub.data(), tv.data(), ti.data()); });
    launch(dim3{2, 1, 1}, 64, [&] {
      pkt_select_kernel(d, C, tv.data(), ti.data(), cv.data(), cs.data(), idx.data(), sc.data());
    });
    launch(dim3{1, 1, 1}, 32, [&] { pkt_act_kernel(T, H, k, act, sc.data(), wt.data()); });
  }
  bool ok = idx == ridx;
  if (!ok)
    for (int64_t i = 0; i < THK; ++i)
      if (idx[i] != ridx[i]) {
        std::printf("  idx[%lld]: emulated %d, reference %d\n", (long long)i, idx[i], ridx[i]);
        break;
      }
  ok = ok && near("scores", sc.data(), rs.data(), THK, 1e-5) && near("weights", wt.data(), rw.data(), THK, 1e-5);
  // Backward from the reference's selection (the same when the forward matched), one slot out of range if `bad`.
  std::vector<int32_t> bidx(ridx);
  if (bad && THK > 2) bidx[2] = (int32_t)(n * n);  // token 0 (T·H·k > 2 and k >= 1)
  std::vector<float> rdq(T * Hq * Dk), rdk(R * half), dq(T * Hq * Dk, -9.f), dk(R * half, -9.f);
  sffn::pkm_topk_backward_ref(d, (sffn::PkmAct)act, q.data(), keys.data(), ridx.data(), rs.data(), rw.data(),
                              dwt.data(), rdq.data(), rdk.data());
  const int64_t M = T * H * 2 * k, cap = std::min(M, R);
  std::vector<double> ds(std::max<int64_t>(THK, 1));
  std::vector<int32_t> ent(std::max<int64_t>(M, 1)), urows(std::max<int64_t>(cap, 1), -9);
  std::fill(dk.begin(), dk.end(), 0.f);  // pkm.cu: cudaMemset
  if (T > 0) {
    launch(dim3{1, 1, 1}, 32, [&] {
      pkt_ds_kernel(T, H, k, act, rs.data(), rw.data(), dwt.data(), ds.data());
    });
    launch(dim3{2, 1, 1}, 64, [&] { pkt_entries_kernel(d, bidx.data(), ent.data()); });
    launch(dim3{2, 1, 1}, 64, [&] { pkt_dq_kernel(d, keys.data(), bidx.data(), ds.data(), dq.data()); });
    EmuIndex ri;
    ri.build(M, R, cap, ent.data(), urows.data());
    ok = ok && ri.sorted_ok;
    launch(dim3{2, 1, 1}, 64, [&] {
      pkt_dkeys_kernel(d, cap, &ri.nU, urows.data(), ri.starts.data(), ri.pos, q.data(), ds.data(), dk.data());
    });
  }
  if (bad && THK > 2) {
    // Position 2 = (t, h, j): the query row it reads gets NaN; its two sub-key rows lose its own contribution
    // ds · q half (ds does not depend on the slot), which is taken out of the reference before comparing.
    const int64_t th = 2 / k, t = th / H, h = th % H, slot = ridx[2], hk = Hk == 1 ? 0 : h;
    const int64_t qr = (t * Hq + (Hq == 1 ? 0 : h)) * Dk;
    for (int64_t i = qr; i < qr + Dk; ++i) {
      ok = ok && std::isnan(dq[i]);
      dq[i] = rdq[i];
    }
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t row = (hk * 2 + hf) * n + (hf == 0 ? slot / n : slot % n);
      for (int64_t x = 0; x < half; ++x)
        rdk[row * half + x] = (float)((double)rdk[row * half + x] - ds[2] * q[qr + hf * half + x]);
    }
  }
  ok = ok && near("dq", dq.data(), rdq.data(), T * Hq * Dk, 1e-4) && near("dkeys", dk.data(), rdk.data(), R * half, 1e-4);
  char what[96];
  std::snprintf(what, sizeof what, "pkmTopk T=%lld H=%lld Hq=%lld Hk=%lld Dk=%lld n=%lld k=%lld act=%d bad=%d",
                (long long)T, (long long)H, (long long)Hq, (long long)Hk, (long long)Dk, (long long)n, (long long)k,
                act, bad);
  return report(what, ok);
}

int main() {
  bool ok = true;
  ok &= embedding_bag(40, 6, 50, 7, 50, false);        // N < 256: one radix pass; many repeats
  ok &= embedding_bag(300, 4, 1000, 33, 1000, true);   // two passes, positions across chunks, bad positions
  ok &= embedding_bag(70, 8, 70000, 5, 300, false);    // three passes (N > 65536), spread rows
  ok &= embedding_bag(600, 2, 3, 3, 3, false);          // three rows hit hundreds of times each
  ok &= embedding_bag(0, 4, 10, 4, 10, false);
  ok &= embedding_bag(5, 0, 10, 4, 10, false);
  for (int act = 0; act < 4; ++act) ok &= peer(45, 6, 64, 37, act, 64, act == 1);
  ok &= peer(300, 3, 2000, 9, 2, 2000, false);         // positions across chunks, two passes
  ok &= peer(20, 16, 100000, 4, 0, 500, true);          // three passes, bad positions
  ok &= peer(0, 3, 10, 4, 0, 10, false);
  ok &= peer(4, 0, 10, 4, 1, 10, false);
  for (int act = 0; act < 5; ++act) ok &= pkm_topk(30, 4, 4, 4, 12, 20, 5, act, act == 1);  // PKM: per-head keys
  ok &= pkm_topk(40, 3, 3, 1, 8, 33, 7, 1, false);   // PEER: shared keys
  ok &= pkm_topk(25, 2, 1, 2, 10, 16, 4, 3, true);   // Csordás: one query read by every head
  ok &= pkm_topk(9, 2, 2, 2, 6, 12, 1, 2, false);    // k = 1
  ok &= pkm_topk(7, 1, 1, 1, 4, 6, 6, 1, false);     // k = n
  ok &= pkm_topk(300, 2, 2, 1, 4, 8, 3, 0, false);   // entries across the 256-position chunks, rows hit often
  ok &= pkm_topk(0, 2, 2, 2, 4, 5, 2, 1, false);
  std::printf(ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
