// sparse-ffn native core: the execution context every CPU kernel receives.
//
// Shape letters used in every kernel comment: T tokens, D model width, E experts, K experts per token,
// G expert width, F dense width, H heads, N memory slots, V vocabulary, B batch, S sequence length.
//
// Kernels are plain functions over raw pointers: they never throw, never touch N-API, and never allocate
// except through Ctx::scratch, a grow-only, 64-byte aligned per-thread arena owned by the addon.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace sffn {

// ---- CPU instruction sets ----------------------------------------------------------------------------
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false, avx512vnni = false;
  bool os_avx = false, os_avx512 = false;  // XCR0 says the OS saves the registers
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
// Highest ISA this CPU (and OS) can run.
Isa best_isa();
// ISA used by kernels now: best_isa(), lowered by SPARSE_FFN_ISA or set_isa().
Isa active_isa();
// Returns false (and changes nothing) if the CPU cannot run `isa`.
bool set_isa(Isa isa);
bool isa_supported(Isa isa);

// ---- threads -------------------------------------------------------------------------------------------
int physical_cores();
int num_threads();
void set_num_threads(int n);  // n >= 1; the pool is rebuilt lazily

// Runs fn(tid, nthreads) once on every pool thread (the caller is tid 0) and waits for all.
// Calls from several host threads are serialised. Work split must depend only on (tid, nthreads), so
// results are deterministic for a fixed thread count.
void parallel_run(const std::function<void(int tid, int nthreads)>& fn);

// Static split of [0, n) into nthreads contiguous chunks: fn(begin, end, tid).
template <class F>
void parallel_for(int64_t n, F&& fn, int64_t min_chunk = 1) {
  int nt = num_threads();
  if (n <= 0) return;
  if (nt > 1 && n >= 2 * min_chunk) {
    int64_t max_threads = (n + min_chunk - 1) / min_chunk;
    if (max_threads < nt) nt = (int)max_threads;
  } else {
    nt = 1;
  }
  if (nt == 1) {
    fn((int64_t)0, n, 0);
    return;
  }
  parallel_run([&](int tid, int nthreads) {
    if (tid >= nt) return;
    int64_t b = n * tid / nt, e = n * (tid + 1) / nt;
    if (b < e) fn(b, e, tid);
    (void)nthreads;
  });
}

// Dynamic split of [0, n): the pool threads claim blocks of about n / (16 · nthreads) indices (at least
// min_chunk) in turn and call fn(begin, end, tid) for each, so a thread slowed by its neighbours on a shared
// machine takes fewer blocks instead of holding the others up at the join. Only for loops in which every index
// is computed alone, the same whichever thread or block runs it (no per-thread partial sums, no tid-dependent
// order): their results are then identical for any thread count and schedule.
template <class F>
void parallel_for_dynamic(int64_t n, F&& fn, int64_t min_chunk = 1) {
  const int nt = num_threads();
  if (n <= 0) return;
  if (nt == 1 || n < 2 * min_chunk) {
    fn((int64_t)0, n, 0);
    return;
  }
  const int64_t block = std::max<int64_t>(min_chunk, (n + 16 * nt - 1) / (16 * nt));
  std::atomic<int64_t> next{0};
  parallel_run([&](int tid, int) {
    for (int64_t b = next.fetch_add(block, std::memory_order_relaxed); b < n;
         b = next.fetch_add(block, std::memory_order_relaxed))
      fn(b, std::min(n, b + block), tid);
  });
}

// ---- scratch memory ------------------------------------------------------------------------------------
// 64-byte aligned buffer for thread `tid` (0 <= tid < num_threads()), at least `bytes` long. Valid until
// the next scratch() call with the same (tid, slot). Distinct slots can be held at the same time.
void* scratch(int tid, int slot, size_t bytes);
void* aligned_alloc64(size_t bytes);
void aligned_free64(void* p);

}  // namespace sffn
