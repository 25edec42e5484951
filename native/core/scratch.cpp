// Grow-only, 64-byte aligned scratch buffers per (thread, slot), owned by the addon and reused across
// calls, so kernels get packing panels and workspaces without allocating on every call.
#include <cstdlib>
#include <new>

#include "sffn/core.h"

namespace sffn {
namespace {
constexpr int kMaxThreads = 256;
constexpr int kSlots = 8;
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
};
Buf g_bufs[kMaxThreads][kSlots];
}  // namespace

void* aligned_alloc64(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) throw std::bad_alloc();
  return p;
}

void aligned_free64(void* p) { std::free(p); }

void* scratch(int tid, int slot, size_t bytes) {
  if (tid < 0 || tid >= kMaxThreads || slot < 0 || slot >= kSlots) return nullptr;
  Buf& b = g_bufs[tid][slot];
  if (b.bytes < bytes) {
    aligned_free64(b.p);
    b.p = nullptr;
    b.bytes = 0;
    // Grow by 1.5x so slowly increasing sizes do not reallocate every call.
    size_t want = bytes + bytes / 2;
    b.p = aligned_alloc64(want);
    b.bytes = want;
  }
  return b.p;
}

}  // namespace sffn
