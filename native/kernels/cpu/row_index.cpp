// Reverse index of a list of row ids (Meta "memory" embedding-bag backward, strategy (b)): histogram of the ids →
// exclusive prefix over the touched rows → positions dropped into their row's range in ascending order. The
// result drives every sparse row gradient here (one owner per row, no atomics, fixed summation order), so
// gradients are bit-identical for any thread count. When the ids are few compared with N, sorting (id, position)
// pairs gives the same index in O(M log M) without touching N counters.
//
// The counting path splits the ROW range [0, N) into one contiguous block per thread: each thread reads all M ids
// (sequentially) but counts, scans and fills only the rows of its block, so no two threads write the same counter
// or the same part of rows / offsets / pos, and the index is the same as the serial one for any thread count
// (rows ascending; a row's positions ascending because each owner scans p in order). Counters are 32-bit when
// M < 2^31 (half the memory to clear, scan and hit at random) and the scan over the N counters has no branch on
// the count (~60% of the counters are zero at PEER's T·J = 2^19 ids over N = 2^20: a data-dependent branch).
// PEER's backward at T = 4096 (M = 2^19 ids, N = 2^20 rows, 2 threads, AVX-512 EPYC VM): 8.15 → 4.54 ms per
// build (medians of 15 calls interleaved with the serial int64 version in one process), ~5% of the whole call.
// Shapes: ids [M] in [0, N) or negative (skipped). Declared in sffn/pkm.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "sffn/core.h"
#include "sffn/pkm.h"

namespace sffn {
namespace {

// The counting path with counters of type C over row blocks [r0, r1) of the `nb` blocks.
template <typename C>
int64_t row_index_count(const int32_t* ids, int64_t M, int64_t N, C* counts, int32_t* rows, int64_t* offsets,
                        int64_t* pos) {
  // One block per thread where splitting pays; nb = 1 is the serial path.
  const int nb = N >= (int64_t)1 << 16 && M >= (int64_t)1 << 14 ? std::max(1, num_threads()) : 1;
  auto block = [&](int b) { return N * b / nb; };
  // Per block: number of distinct rows and of positions; then their exclusive prefixes.
  std::vector<int64_t> nu(nb + 1, 0), np(nb + 1, 0);
  auto count_block = [&](int b) {
    const int64_t r0 = block(b), r1 = block(b + 1);
    std::memset(counts + r0, 0, (size_t)(r1 - r0) * sizeof(C));
    for (int64_t p = 0; p < M; ++p) {
      const int64_t r = ids[p];  // negative ids (skipped) fall outside every block
      if (r >= r0 && r < r1) ++counts[r];
    }
    int64_t u = 0, n = 0;
    for (int64_t r = r0; r < r1; ++r) {
      u += counts[r] != 0;
      n += counts[r];
    }
    nu[b + 1] = u;
    np[b + 1] = n;
  };
  auto fill_block = [&](int b) {
    const int64_t r0 = block(b), r1 = block(b + 1);
    int64_t u = nu[b], off = np[b];
    const int64_t uend = nu[b + 1];
    // rows[u] / offsets[u] are written for every row and kept (u advanced) only for touched ones, so there is no
    // branch on the count. Past the block's last touched row, slot u belongs to the next block: stop writing
    // there (a branch taken only at the block's tail).
    for (int64_t r = r0; r < r1 && u < uend; ++r) {
      const int64_t c = counts[r];
      rows[u] = (int32_t)r;
      offsets[u] = off;
      counts[r] = (C)off;  // becomes the fill cursor of row r
      u += c != 0;
      off += c;
    }
    for (int64_t p = 0; p < M; ++p) {
      const int64_t r = ids[p];
      if (r >= r0 && r < r1) pos[counts[r]++] = p;
    }
  };
  parallel_for(nb, [&](int64_t b, int64_t e, int) { for (int64_t i = b; i < e; ++i) count_block((int)i); });
  for (int b = 0; b < nb; ++b) {
    nu[b + 1] += nu[b];
    np[b + 1] += np[b];
  }
  parallel_for(nb, [&](int64_t b, int64_t e, int) { for (int64_t i = b; i < e; ++i) fill_block((int)i); });
  offsets[nu[nb]] = np[nb];
  return nu[nb];
}

}  // namespace

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
  if (M < ((int64_t)1 << 31))
    return row_index_count(ids, M, N, reinterpret_cast<int32_t*>(counts), rows, offsets, pos);
  return row_index_count(ids, M, N, counts, rows, offsets, pos);
}

}  // namespace sffn
