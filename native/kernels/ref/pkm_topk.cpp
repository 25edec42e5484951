// Reference product-key top-k (the spec): for every (token t, head h)
//   s1[a] = q[t,h,:Dk/2] · C_h[a],  s2[b] = q[t,h,Dk/2:] · C'_h[b]     (double)
//   pick the k largest of s1[a] + s2[b] over ALL n² slots (exhaustive, no pruning), order: score desc, slot asc;
//   weights = act(scores) (pkm.h PkmAct).
// Backward: dscore from dweights through act; dq half 1 += dscore · C_h[a], half 2 += dscore · C'_h[b];
// dC_h[a] += dscore · q half 1, dC'_h[b] += dscore · q half 2 (Lample 2019 §3; PEER §2.2 shares C, C' by heads).
// Shapes: q [T, Hq, Dk], keys [Hk, 2, n, Dk/2], idx/scores/weights [T, H, k]. Test: test/ops/pkm-topk.test.ts.
#include <cmath>
#include <cstring>
#include <vector>

#include "sffn/pkm.h"

namespace sffn {
namespace {

const float* qrow(const PkmDims& d, const float* q, int64_t t, int64_t h) {
  return q + (t * d.Hq + (d.Hq == 1 ? 0 : h)) * d.Dk;
}
const float* keyrow(const PkmDims& d, const float* keys, int64_t h, int half, int64_t a) {
  int64_t hk = d.Hk == 1 ? 0 : h;
  return keys + ((hk * 2 + half) * d.n + a) * (d.Dk / 2);
}

// weights from the raw scores of one token ([H, k] block), in double.
void act_forward(const PkmDims& d, PkmAct act, const double* s, double* w) {
  int64_t HK = d.H * d.k;
  auto softmax = [](const double* x, double* y, int64_t m) {
    double mx = x[0];
    for (int64_t i = 1; i < m; ++i) mx = std::fmax(mx, x[i]);
    double z = 0;
    for (int64_t i = 0; i < m; ++i) z += std::exp(x[i] - mx);
    for (int64_t i = 0; i < m; ++i) y[i] = std::exp(x[i] - mx) / z;
  };
  switch (act) {
    case PkmAct::None: for (int64_t i = 0; i < HK; ++i) w[i] = s[i]; break;
    case PkmAct::Relu: for (int64_t i = 0; i < HK; ++i) w[i] = s[i] > 0 ? s[i] : 0; break;
    case PkmAct::Sigmoid: for (int64_t i = 0; i < HK; ++i) w[i] = 1 / (1 + std::exp(-s[i])); break;
    case PkmAct::Softmax: for (int64_t h = 0; h < d.H; ++h) softmax(s + h * d.k, w + h * d.k, d.k); break;
    case PkmAct::SoftmaxAll: softmax(s, w, HK); break;
  }
}

// dscore from dweight for one token's [H, k] block.
void act_backward(const PkmDims& d, PkmAct act, const double* s, const double* w, const double* dw, double* ds) {
  int64_t HK = d.H * d.k;
  auto softmax_bwd = [](const double* y, const double* dy, double* dx, int64_t m) {
    double dot = 0;
    for (int64_t i = 0; i < m; ++i) dot += y[i] * dy[i];
    for (int64_t i = 0; i < m; ++i) dx[i] = y[i] * (dy[i] - dot);
  };
  switch (act) {
    case PkmAct::None: for (int64_t i = 0; i < HK; ++i) ds[i] = dw[i]; break;
    case PkmAct::Relu: for (int64_t i = 0; i < HK; ++i) ds[i] = s[i] > 0 ? dw[i] : 0; break;
    case PkmAct::Sigmoid: for (int64_t i = 0; i < HK; ++i) ds[i] = dw[i] * w[i] * (1 - w[i]); break;
    case PkmAct::Softmax:
      for (int64_t h = 0; h < d.H; ++h) softmax_bwd(w + h * d.k, dw + h * d.k, ds + h * d.k, d.k);
      break;
    case PkmAct::SoftmaxAll: softmax_bwd(w, dw, ds, HK); break;
  }
}

double dot(const float* a, const float* b, int64_t m) {
  double s = 0;
  for (int64_t i = 0; i < m; ++i) s += (double)a[i] * b[i];
  return s;
}

}  // namespace

void pkm_topk_forward_ref(const PkmDims& d, PkmAct act, const float* q, const float* keys, int32_t* idx,
                          float* scores, float* weights) {
  const int64_t n = d.n, k = d.k, half = d.Dk / 2, HK = d.H * k;
  std::vector<double> s1(n), s2(n), best(k), sd(HK), wd(HK);
  std::vector<int64_t> slot(k);
  for (int64_t t = 0; t < d.T; ++t) {
    for (int64_t h = 0; h < d.H; ++h) {
      const float* qt = qrow(d, q, t, h);
      for (int64_t a = 0; a < n; ++a) s1[a] = dot(qt, keyrow(d, keys, h, 0, a), half);
      for (int64_t b = 0; b < n; ++b) s2[b] = dot(qt + half, keyrow(d, keys, h, 1, b), half);
      // Exhaustive: insertion into a sorted list of the k best of all n² sums (slots visited in ascending
      // order, so a strict comparison keeps the lower slot first among equal scores).
      int64_t cnt = 0;
      for (int64_t a = 0; a < n; ++a)
        for (int64_t b = 0; b < n; ++b) {
          double x = s1[a] + s2[b];
          if (cnt == k && !(x > best[k - 1])) continue;
          int64_t p = cnt < k ? cnt : k - 1;
          while (p > 0 && best[p - 1] < x) {
            best[p] = best[p - 1];
            slot[p] = slot[p - 1];
            --p;
          }
          best[p] = x;
          slot[p] = a * n + b;
          if (cnt < k) ++cnt;
        }
      for (int64_t j = 0; j < k; ++j) {
        idx[(t * d.H + h) * k + j] = (int32_t)slot[j];
        sd[h * k + j] = best[j];
      }
    }
    act_forward(d, act, sd.data(), wd.data());
    for (int64_t i = 0; i < HK; ++i) {
      scores[t * HK + i] = (float)sd[i];
      weights[t * HK + i] = (float)wd[i];
    }
  }
}

void pkm_topk_backward_ref(const PkmDims& d, PkmAct act, const float* q, const float* keys, const int32_t* idx,
                           const float* scores, const float* weights, const float* dweights, float* dq, float* dkeys) {
  const int64_t n = d.n, k = d.k, half = d.Dk / 2, HK = d.H * k;
  std::vector<double> dqd(d.T * d.Hq * d.Dk, 0.0), dkd(d.Hk * 2 * n * half, 0.0);
  std::vector<double> s(HK), w(HK), dw(HK), ds(HK);
  for (int64_t t = 0; t < d.T; ++t) {
    for (int64_t i = 0; i < HK; ++i) {
      s[i] = scores[t * HK + i];
      w[i] = weights[t * HK + i];
      dw[i] = dweights[t * HK + i];
    }
    act_backward(d, act, s.data(), w.data(), dw.data(), ds.data());
    for (int64_t h = 0; h < d.H; ++h) {
      const float* qt = qrow(d, q, t, h);
      double* dqt = dqd.data() + (t * d.Hq + (d.Hq == 1 ? 0 : h)) * d.Dk;
      int64_t hk = d.Hk == 1 ? 0 : h;
      for (int64_t j = 0; j < k; ++j) {
        int64_t sl = idx[(t * d.H + h) * k + j], a = sl / n, b = sl % n;
        double g = ds[h * k + j];
        const float* c1 = keyrow(d, keys, h, 0, a);
        const float* c2 = keyrow(d, keys, h, 1, b);
        double* dc1 = dkd.data() + ((hk * 2 + 0) * n + a) * half;
        double* dc2 = dkd.data() + ((hk * 2 + 1) * n + b) * half;
        for (int64_t i = 0; i < half; ++i) {
          dqt[i] += g * c1[i];
          dqt[half + i] += g * c2[i];
          dc1[i] += g * qt[i];
          dc2[i] += g * qt[half + i];
        }
      }
    }
  }
  for (size_t i = 0; i < dqd.size(); ++i) dq[i] = (float)dqd[i];
  for (size_t i = 0; i < dkd.size(); ++i) dkeys[i] = (float)dkd[i];
}

}  // namespace sffn
