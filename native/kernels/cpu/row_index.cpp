// Reverse index of a list of row ids (Meta "memory" embedding-bag backward, strategy (b), built serially and
// stably): histogram of the ids → exclusive prefix over the touched rows → positions dropped into their row's
// range in ascending order. The result drives every sparse row gradient here (one owner per row, no atomics,
// fixed summation order), so gradients are bit-identical for any thread count. When the ids are few compared
// with N, sorting (id, position) pairs gives the same index in O(M log M) without touching N counters.
// Shapes: ids [M] in [0, N) or negative (skipped). Declared in sffn/pkm.h.
#include <algorithm>
#include <cstring>

#include "sffn/pkm.h"

namespace sffn {

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
  std::memset(counts, 0, (size_t)(N + 1) * sizeof(int64_t));
  for (int64_t p = 0; p < M; ++p)
    if (ids[p] >= 0) ++counts[ids[p]];
  int64_t U = 0, off = 0;
  for (int64_t r = 0; r < N; ++r) {
    const int64_t c = counts[r];
    if (!c) continue;
    rows[U] = (int32_t)r;
    offsets[U++] = off;
    counts[r] = off;  // becomes the fill cursor of row r
    off += c;
  }
  offsets[U] = off;
  for (int64_t p = 0; p < M; ++p)
    if (ids[p] >= 0) pos[counts[ids[p]]++] = p;
  return U;
}

}  // namespace sffn
