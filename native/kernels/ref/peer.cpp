// Reference PEER singleton experts (He 2024 §2, eq. for e_i(x) = σ(u_iᵀx) v_i):
//   h[t, j] = U[i] · x[t],  out[t] = Σ_j g[t, j] · act(h[t, j]) · V[i]          with i = idx[t, j]
// Backward: c = ⟨V[i], dout[t]⟩;  dg = act(h) · c;  dh = g · c · act'(h);
//   dx[t] = Σ_j dh · U[i];  dU[i] += dh · x[t];  dV[i] += g · act(h) · dout[t].
// Double accumulation, single thread; dU, dV are produced for a given list of rows by scanning every position.
// Shapes: x, out, dout [T, D]; idx, g, h [T, J]; U, V [N, D]. Test: test/ops/peer.test.ts.
#include <cmath>
#include <vector>

#include "sffn/pkm.h"

namespace sffn {
namespace {

double act_f(PeerAct a, double h) {
  switch (a) {
    case PeerAct::Relu: return h > 0 ? h : 0;
    case PeerAct::Gelu: return 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
    case PeerAct::Silu: return h / (1 + std::exp(-h));
    default: return h;
  }
}

double act_g(PeerAct a, double h) {
  switch (a) {
    case PeerAct::Relu: return h > 0 ? 1 : 0;
    case PeerAct::Gelu:
      return 0.5 * (1 + std::erf(h / std::sqrt(2.0))) + h * std::exp(-0.5 * h * h) / std::sqrt(2 * M_PI);
    case PeerAct::Silu: {
      double s = 1 / (1 + std::exp(-h));
      return s * (1 + h * (1 - s));
    }
    default: return 1;
  }
}

double dot(const float* a, const float* b, int64_t D) {
  double s = 0;
  for (int64_t i = 0; i < D; ++i) s += (double)a[i] * b[i];
  return s;
}

}  // namespace

void peer_forward_ref(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                      const float* g, const float* U, const float* V, float* out, float* h) {
  (void)N;
  std::vector<double> acc(D);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < D; ++i) acc[i] = 0;
    for (int64_t j = 0; j < J; ++j) {
      const int64_t p = t * J + j, r = idx[p];
      const double hv = dot(U + r * D, x + t * D, D);
      h[p] = (float)hv;
      const double c = g[p] * act_f(act, hv);
      for (int64_t i = 0; i < D; ++i) acc[i] += c * V[r * D + i];
    }
    for (int64_t i = 0; i < D; ++i) out[t * D + i] = (float)acc[i];
  }
}

void peer_backward_ref(int64_t T, int64_t J, int64_t N, int64_t D, PeerAct act, const float* x, const int32_t* idx,
                       const float* g, const float* U, const float* V, const float* h, const float* dout, float* dx,
                       float* dg, int64_t nrows, const int32_t* rows, float* dU_rows, float* dV_rows) {
  (void)N;
  std::vector<double> dh(T * J), gv(T * J), acc(D), acc2(D);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < D; ++i) acc[i] = 0;
    for (int64_t j = 0; j < J; ++j) {
      const int64_t p = t * J + j, r = idx[p];
      const double c = dot(V + r * D, dout + t * D, D);
      dg[p] = (float)(act_f(act, h[p]) * c);
      dh[p] = g[p] * c * act_g(act, h[p]);
      gv[p] = g[p] * act_f(act, h[p]);
      for (int64_t i = 0; i < D; ++i) acc[i] += dh[p] * U[r * D + i];
    }
    for (int64_t i = 0; i < D; ++i) dx[t * D + i] = (float)acc[i];
  }
  for (int64_t u = 0; u < nrows; ++u) {
    for (int64_t i = 0; i < D; ++i) acc[i] = acc2[i] = 0;
    for (int64_t p = 0; p < T * J; ++p) {
      if (idx[p] != rows[u]) continue;
      const int64_t t = p / J;
      for (int64_t i = 0; i < D; ++i) {
        acc[i] += dh[p] * x[t * D + i];
        acc2[i] += gv[p] * dout[t * D + i];
      }
    }
    for (int64_t i = 0; i < D; ++i) {
      dU_rows[u * D + i] = (float)acc[i];
      dV_rows[u * D + i] = (float)acc2[i];
    }
  }
}

}  // namespace sffn
