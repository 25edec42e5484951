// Test data and comparisons shared by the emulation drivers (*_emu.cpp): a seeded LCG for inputs, a relative
// tolerance check that prints the first mismatch, and the per-case report line (which also fails the case when
// the emulator recorded a rule violation). Define EMU_SEED before including; each driver keeps its own data.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda_emu.h"

#ifndef EMU_SEED
#error "define EMU_SEED before including emu_check.h"
#endif

static uint32_t g_rng = EMU_SEED;
static uint32_t urand() { return g_rng = g_rng * 1664525u + 1013904223u; }
static float frand() { return (float)((urand() >> 8) & 0xffff) / 32768.f - 1.f; }
static std::vector<float> rnd(int64_t n, float scale = 1.f) {
  std::vector<float> v(n);
  for (float& f : v) f = scale * frand();
  return v;
}

// |a - b| <= tol·(1 + |b|) element-wise; NaN only matches NaN.
static bool near(const char* what, const float* a, const float* b, int64_t n, double tol) {
  for (int64_t i = 0; i < n; ++i) {
    const bool both_nan = std::isnan(a[i]) && std::isnan(b[i]);
    if (!both_nan && !(std::fabs((double)a[i] - b[i]) <= tol * (1 + std::fabs((double)b[i])))) {
      std::printf("  %s[%lld]: emulated %.9g, reference %.9g\n", what, (long long)i, a[i], b[i]);
      return false;
    }
  }
  return true;
}

static bool report(const char* what, bool ok) {
  std::printf("%-60s %s\n", what, ok ? "ok" : "MISMATCH");
  if (!g_error.empty()) std::printf("  emulation rule violated: %s\n", g_error.c_str());
  return ok && g_error.empty();
}
