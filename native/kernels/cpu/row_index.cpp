// Reverse index of a list of row ids (Meta "memory" embedding-bag backward, strategy (b), built serially and
// stably): histogram of the ids → exclusive prefix over the touched rows → positions dropped into their row's
// range in ascending order. The result drives every sparse row gradient here (one owner per row, no atomics,
// fixed summation order), so gradients are bit-identical for any thread count.
// Shapes: ids [M] in [0, N) or negative (skipped). Declared in sffn/pkm.h.
#include <cstring>

#include "sffn/pkm.h"

namespace sffn {

int64_t row_index_build(const int32_t* ids, int64_t M, int64_t N, int64_t* counts, int32_t* rows, int64_t* offsets,
                        int64_t* pos) {
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
