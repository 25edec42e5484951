// Causal self-attention with rotary positions on the CPU. One work item per (sequence, head), split over the pool;
// inside an item every product is a gathered GEMM on the calling thread (gemm_f32_rows: rows addressed through
// pointer tables, so q, k, v are read in place from the strided qkv buffer) and each item writes only its own head's
// columns: deterministic and independent of the thread count. The full S×S score block is computed and the upper
// triangle masked (simple; at most 2× the causal work).
// Forward:  qr, kr = rope(q, k);  P = softmax_causal(qr·krᵀ/√dh);  out = P·v
// Backward: dv = Pᵀ·dout;  dP = dout·vᵀ;  dS = P ⊙ (dP − rowsum(P ⊙ dP));  dq = rope⁻¹(dS·kr/√dh);
//           dk = rope⁻¹(dSᵀ·qr/√dh).
// Spec: kernels/ref/attention.cpp. Test: test/ops/nn.test.ts.
#include <cstddef>
#include <cmath>

#include "sffn/core.h"
#include "sffn/gemm.h"
#include "sffn/nn.h"

namespace sffn {
namespace {

// cos/sin table [S, dh/2] in scratch slot 7 of the calling thread (filled before the parallel region).
float* rope_table(int64_t S, int64_t dh) {
  const int64_t half = dh / 2;
  float* tab = static_cast<float*>(scratch(0, 7, (size_t)(2 * S * half) * sizeof(float)));
  for (int64_t i = 0; i < S; i++)
    for (int64_t m = 0; m < half; m++) {
      const double a = (double)i * std::pow(10000.0, -2.0 * (double)m / (double)dh);
      tab[2 * (i * half + m)] = (float)std::cos(a);
      tab[2 * (i * half + m) + 1] = (float)std::sin(a);
    }
  return tab;
}

inline void rope_row(int64_t dh, const float* cs, const float* in, float* out, float sign) {
  for (int64_t m = 0; m < dh / 2; m++) {
    const float c = cs[2 * m], s = sign * cs[2 * m + 1];
    const float u = in[2 * m], w = in[2 * m + 1];
    out[2 * m] = u * c - w * s;
    out[2 * m + 1] = u * s + w * c;
  }
}

}  // namespace

void attention_forward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, float* out, float* qr, float* kr,
                       float* p) {
  if (B == 0 || S == 0 || H == 0) return;
  const int64_t D = H * dh;
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  const float* tab = rope_table(S, dh);
  parallel_for(B * H, [&](int64_t w0, int64_t w1, int tid) {
    const float** ptr = static_cast<const float**>(scratch(tid, 0, (size_t)(4 * S) * sizeof(float*)));
    const float** qrows = ptr;
    const float** krows = ptr + S;
    const float** vrows = ptr + 2 * S;
    const float** prow_c = ptr + 3 * S;
    float** cptr = static_cast<float**>(scratch(tid, 1, (size_t)(2 * S) * sizeof(float*)));
    for (int64_t wi = w0; wi < w1; wi++) {
      const int64_t b = wi / H, h = wi % H;
      float* Q = qr + wi * S * dh;
      float* Kr = kr + wi * S * dh;
      float* P = p + wi * S * S;
      for (int64_t i = 0; i < S; i++) {
        const float* row = qkv + (b * S + i) * 3 * D;
        rope_row(dh, tab + i * dh, row + h * dh, Q + i * dh, 1.0f);
        rope_row(dh, tab + i * dh, row + D + h * dh, Kr + i * dh, 1.0f);
        qrows[i] = Q + i * dh;
        krows[i] = Kr + i * dh;
        vrows[i] = row + 2 * D + h * dh;
        cptr[i] = P + i * S;
        prow_c[i] = P + i * S;
        cptr[S + i] = out + (b * S + i) * D + h * dh;
      }
      gemm_f32_rows(false, true, S, S, dh, scale, qrows, krows, 0.0f, cptr);
      for (int64_t i = 0; i < S; i++) {
        float* r = P + i * S;
        float mx = r[0];
        for (int64_t j = 1; j <= i; j++) mx = r[j] > mx ? r[j] : mx;
        double z = 0;
        for (int64_t j = 0; j <= i; j++) {
          r[j] = std::exp(r[j] - mx);
          z += r[j];
        }
        const float inv = (float)(1.0 / z);
        for (int64_t j = 0; j <= i; j++) r[j] *= inv;
        for (int64_t j = i + 1; j < S; j++) r[j] = 0.0f;
      }
      gemm_f32_rows(false, false, S, dh, S, 1.0f, prow_c, vrows, 0.0f, cptr + S);
    }
  });
}

void attention_backward(int64_t B, int64_t S, int64_t H, int64_t dh, const float* qkv, const float* qr, const float* kr,
                        const float* p, const float* dout, float* dqkv) {
  if (B == 0 || S == 0 || H == 0) return;
  const int64_t D = H * dh;
  const float scale = (float)(1.0 / std::sqrt((double)dh));
  const float* tab = rope_table(S, dh);
  parallel_for(B * H, [&](int64_t w0, int64_t w1, int tid) {
    const float** in = static_cast<const float**>(scratch(tid, 0, (size_t)(6 * S) * sizeof(float*)));
    const float** prows = in;
    const float** dorows = in + S;
    const float** vrows = in + 2 * S;
    const float** dsrows = in + 3 * S;
    const float** qrows = in + 4 * S;
    const float** krows = in + 5 * S;
    float** outp = static_cast<float**>(scratch(tid, 1, (size_t)(4 * S) * sizeof(float*)));
    float** dvrows = outp;
    float** dprows = outp + S;
    float** dqrows = outp + 2 * S;
    float** dkrows = outp + 3 * S;
    float* dP = static_cast<float*>(scratch(tid, 2, (size_t)(S * S) * sizeof(float)));
    float* dQ = static_cast<float*>(scratch(tid, 3, (size_t)(2 * S * dh) * sizeof(float)));
    float* dK = dQ + S * dh;
    for (int64_t wi = w0; wi < w1; wi++) {
      const int64_t b = wi / H, h = wi % H;
      const float* Q = qr + wi * S * dh;
      const float* Kr = kr + wi * S * dh;
      const float* P = p + wi * S * S;
      for (int64_t i = 0; i < S; i++) {
        prows[i] = P + i * S;
        dorows[i] = dout + (b * S + i) * D + h * dh;
        vrows[i] = qkv + (b * S + i) * 3 * D + 2 * D + h * dh;
        dsrows[i] = dP + i * S;
        qrows[i] = Q + i * dh;
        krows[i] = Kr + i * dh;
        dvrows[i] = dqkv + (b * S + i) * 3 * D + 2 * D + h * dh;
        dprows[i] = dP + i * S;
        dqrows[i] = dQ + i * dh;
        dkrows[i] = dK + i * dh;
      }
      gemm_f32_rows(true, false, S, dh, S, 1.0f, prows, dorows, 0.0f, dvrows);
      gemm_f32_rows(false, true, S, S, dh, 1.0f, dorows, vrows, 0.0f, dprows);
      for (int64_t i = 0; i < S; i++) {
        const float* pr = P + i * S;
        float* d = dP + i * S;
        double dot = 0;
        for (int64_t j = 0; j <= i; j++) dot += (double)pr[j] * d[j];
        const float df = (float)dot;
        for (int64_t j = 0; j <= i; j++) d[j] = pr[j] * (d[j] - df);
        for (int64_t j = i + 1; j < S; j++) d[j] = 0.0f;
      }
      gemm_f32_rows(false, false, S, dh, S, scale, dsrows, krows, 0.0f, dqrows);
      gemm_f32_rows(true, false, S, dh, S, scale, dsrows, qrows, 0.0f, dkrows);
      for (int64_t i = 0; i < S; i++) {
        float* row = dqkv + (b * S + i) * 3 * D;
        rope_row(dh, tab + i * dh, dQ + i * dh, row + h * dh, -1.0f);
        rope_row(dh, tab + i * dh, dK + i * dh, row + D + h * dh, -1.0f);
      }
    }
  });
}

}  // namespace sffn
