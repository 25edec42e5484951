// CPU feature detection (cpuid + xgetbv) and the ISA chosen for kernels.
// SPARSE_FFN_ISA=scalar|avx2|avx512 lowers the choice (tests use it to run every path the CPU can run).
#include <cstdlib>
#include <cstring>

#include "sffn/core.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace sffn {
namespace {

#if defined(__x86_64__)
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.sse42 = c & bit_SSE4_2;
  f.fma = c & bit_FMA;
  f.f16c = c & bit_F16C;
  bool osxsave = c & bit_OSXSAVE;
  f.avx = c & bit_AVX;
  if (osxsave) {
    uint64_t xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;       // plus opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & bit_AVX2;
    f.avx512f = b & bit_AVX512F;
    f.avx512dq = b & bit_AVX512DQ;
    f.avx512bw = b & bit_AVX512BW;
    f.avx512vl = b & bit_AVX512VL;
    f.avx512vnni = c & bit_AVX512VNNI;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = a & (1u << 5);
  if (!f.os_avx) f.avx = f.avx2 = f.fma = f.f16c = false;
  if (!f.os_avx512) f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = f.avx512bf16 = f.avx512vnni = false;
#endif
  return f;
}

Isa detect_best(const CpuFeatures& f) {
  // The AVX-512 kernels are built with F/BW/DQ/VL/BF16 enabled; the compiler may use any of them.
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512bf16 && f.fma && f.avx2) return Isa::Avx512;
  if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;
  return Isa::Scalar;
}

Isa initial_isa() {
  Isa best = detect_best(cpu_features());
  const char* env = std::getenv("SPARSE_FFN_ISA");
  if (!env || !*env) return best;
  Isa want = best;
  if (!std::strcmp(env, "scalar")) want = Isa::Scalar;
  else if (!std::strcmp(env, "avx2")) want = Isa::Avx2;
  else if (!std::strcmp(env, "avx512")) want = Isa::Avx512;
  return (int)want <= (int)best ? want : best;
}

Isa g_isa = initial_isa();

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_isa() { return detect_best(cpu_features()); }
Isa active_isa() { return g_isa; }
bool isa_supported(Isa isa) { return (int)isa <= (int)best_isa(); }

bool set_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  g_isa = isa;
  return true;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace sffn
