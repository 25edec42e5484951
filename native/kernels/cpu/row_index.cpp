// Reverse index of a list of row ids (Meta "memory" embedding-bag backward, strategy (b)): for every distinct id,
// ascending, the positions that hold it, ascending. The result drives every sparse row gradient here (one owner
// per row, no atomics, fixed summation order), so gradients are bit-identical for any thread count. Three ways to
// the same index, by size:
// - few ids in a big table (16·M < N): sort the (id, position) pairs, O(M log M), no N counters to touch;
// - big tables (N >= 2^16): a stable LSD radix sort of the pairs by id, 11-bit digits (2 passes up to 2^22 rows),
//   split over threads in contiguous chunks (see row_index_radix);
// - small tables: a counting sort (histogram → exclusive prefix over the touched rows → positions dropped into
//   their row's range in order); its N counters stay in cache.
// The counting sort was split over threads by row blocks before; the radix sort replaced it for big tables:
// 5.2 → 3.1-3.4 ms at N = 2^20 and 4.7-4.8 → 3.5-3.6 ms at N = 2^18 for M = 2^19 ids (PEER's and PKM's
// T = 4096; 2 threads, AVX-512 EPYC VM, C++ harness, medians of 21 calls interleaved). At N = 2^12 the counting
// sort is faster (1.9 vs 3.2 ms). Shapes: ids [M] in [0, N) or negative (skipped). Declared in sffn/pkm.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {
namespace {

// Widest radix digit: 2^11 buckets of scatter streams still fit L2 with their write lines.
constexpr int kRadixMaxBits = 11;

// The counting path (serial: small tables) with counters of type C. The scan over the N counters has no branch
// on the count (most counters can be zero: a data-dependent branch).
template <typename C>
int64_t row_index_count(const int32_t* ids, int64_t M, int64_t N, C* counts, int32_t* rows, int64_t* offsets,
                        int64_t* pos) {
  std::memset(counts, 0, (size_t)N * sizeof(C));
  for (int64_t p = 0; p < M; ++p)
    if (ids[p] >= 0) ++counts[ids[p]];
  int64_t u = 0, off = 0;
  for (int64_t r = 0; r < N; ++r) {
    // rows[u] / offsets[u] are written for every row and kept (u advanced) only for touched ones.
    const int64_t c = counts[r];
    rows[u] = (int32_t)r;
    offsets[u] = off;
    counts[r] = (C)off;  // becomes the fill cursor of row r
    u += c != 0;
    off += c;
  }
  for (int64_t p = 0; p < M; ++p)
    if (ids[p] >= 0) pos[counts[ids[p]]++] = p;
  offsets[u] = off;
  return u;
}

// The radix path: (row << 32 | position) pairs sorted by row with a stable LSD radix sort, then one scan. Each
// pass splits its input into one contiguous chunk per thread; a chunk histograms its digits, the exclusive prefix
// over (digit, chunk) gives every chunk its slots, and each chunk scatters in input order. The sort is stable, so
// the result is the unique one (rows ascending, a row's positions ascending) for any thread count. The scatter
// writes to 2^bits sequential streams that stay in L1/L2, where the counting path's increments and position
// writes land at random over N counters and M positions.
// Buffers a and b hold M pairs each (a: the counts buffer, b: pos); the last pass may end in either, and the final
// scan reads a pair and writes its position at the same index.
int64_t row_index_radix(const int32_t* ids, int64_t M, int64_t N, uint64_t* a, uint64_t* b, int32_t* rows,
                        int64_t* offsets, int64_t* pos) {
  int nbits = 1;
  while (nbits < 31 && ((int64_t)1 << nbits) < N) ++nbits;
  const int passes = (nbits + kRadixMaxBits - 1) / kRadixMaxBits;
  const int bits = (nbits + passes - 1) / passes;
  const int64_t nbuckets = (int64_t)1 << bits;
  const int nc = M >= (int64_t)1 << 15 ? std::max(1, num_threads()) : 1;
  std::vector<int64_t> hist((size_t)nc * nbuckets);
  int64_t m = 0;  // pairs (the ids that are not negative)
  const uint64_t* src = nullptr;
  uint64_t* dst = a;
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = 32 + pass * bits;
    const int64_t n = pass == 0 ? M : m;
    auto chunk = [&](int c) { return n * c / nc; };
    auto digit = [&](uint64_t key) { return (int64_t)((key >> shift) & (uint64_t)(nbuckets - 1)); };
    // The first pass reads the ids and skips negative ones.
    auto key_at = [&](int64_t i, uint64_t& key) {
      if (pass > 0) {
        key = src[i];
        return true;
      }
      key = ((uint64_t)(uint32_t)ids[i] << 32) | (uint64_t)i;
      return ids[i] >= 0;
    };
    parallel_for(nc, [&](int64_t c0, int64_t c1, int) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t* h = hist.data() + c * nbuckets;
        std::fill(h, h + nbuckets, 0);
        uint64_t key;
        for (int64_t i = chunk((int)c); i < chunk((int)c + 1); ++i)
          if (key_at(i, key)) ++h[digit(key)];
      }
    });
    int64_t off = 0;
    for (int64_t d = 0; d < nbuckets; ++d)
      for (int c = 0; c < nc; ++c) {
        const int64_t k = hist[(size_t)c * nbuckets + d];
        hist[(size_t)c * nbuckets + d] = off;
        off += k;
      }
    m = off;
    parallel_for(nc, [&](int64_t c0, int64_t c1, int) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t* h = hist.data() + c * nbuckets;
        uint64_t key;
        for (int64_t i = chunk((int)c); i < chunk((int)c + 1); ++i)
          if (key_at(i, key)) dst[h[digit(key)]++] = key;
      }
    });
    src = dst;
    dst = dst == a ? b : a;
  }
  // Scan: positions, then the first index of every distinct row (per chunk, then placed by a prefix). The
  // positions may overwrite the pairs in place (pos == b), so the write pass compares each row with the previous
  // one kept in a register, seeded with the row before the chunk from the read-only counting pass.
  const uint64_t* sorted = src;
  std::vector<int64_t> starts(nc + 1, 0), before(nc, -1);
  auto chunk = [&](int c) { return m * c / nc; };
  parallel_for(nc, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i0 = chunk((int)c), i1 = chunk((int)c + 1);
      int64_t u = 0, prev = i0 > 0 ? (int64_t)(sorted[i0 - 1] >> 32) : -1;
      before[c] = prev;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = (int64_t)(sorted[i] >> 32);
        u += r != prev;
        prev = r;
      }
      starts[c + 1] = u;
    }
  });
  for (int c = 0; c < nc; ++c) starts[c + 1] += starts[c];
  parallel_for(nc, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t u = starts[c], prev = before[c];
      for (int64_t i = chunk((int)c); i < chunk((int)c + 1); ++i) {
        const uint64_t key = sorted[i];
        const int64_t r = (int64_t)(key >> 32);
        if (r != prev) {
          rows[u] = (int32_t)r;
          offsets[u++] = i;
          prev = r;
        }
        pos[i] = (int64_t)(key & 0xffffffffu);
      }
    }
  });
  offsets[starts[nc]] = m;
  return starts[nc];
}

// The radix sort for big tables (where N counters no longer stay in cache) whose positions fit 32 bits, when the
// pair sort does not apply.
bool use_radix(int64_t M, int64_t N) { return M * 16 >= N && N >= ((int64_t)1 << 16) && M < ((int64_t)1 << 32); }

}  // namespace

int64_t row_index_counts_size(int64_t M, int64_t N) { return use_radix(M, N) ? std::max(N + 1, M) : N + 1; }

int64_t row_index_build(const int32_t* ids, int64_t M, int64_t N, int64_t* counts, int32_t* rows, int64_t* offsets,
                        int64_t* pos) {
  if (M * 16 < N) {
    // Few ids in a big table (e.g. one token over 1024² rows): sort (id, position) pairs instead of clearing and
    // scanning N counters. Pairs are unique, so the order (and the result) is the same as the counting path.
    int64_t* pairs = counts;  // 2·M int64 fit in the N + 1 counters
    int64_t m = 0;
    for (int64_t p = 0; p < M; ++p)
      if (ids[p] >= 0) pairs[m++] = ((int64_t)ids[p] << 32) | p;
    std::sort(pairs, pairs + m);
    int64_t U = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t r = (int32_t)(pairs[i] >> 32);
      if (U == 0 || rows[U - 1] != r) {
        rows[U] = r;
        offsets[U++] = i;
      }
      pos[i] = pairs[i] & 0xffffffff;
    }
    offsets[U] = m;
    return U;
  }
  if (use_radix(M, N))
    return row_index_radix(ids, M, N, reinterpret_cast<uint64_t*>(counts), reinterpret_cast<uint64_t*>(pos), rows,
                           offsets, pos);
  if (M < ((int64_t)1 << 31))
    return row_index_count(ids, M, N, reinterpret_cast<int32_t*>(counts), rows, offsets, pos);
  return row_index_count(ids, M, N, counts, rows, offsets, pos);
}

}  // namespace sffn
