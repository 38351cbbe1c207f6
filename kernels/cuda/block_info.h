// Which KV tiles a block of query rows visits, and which of those need the element-wise mask.
// Host and device code (the unit test checks these against a brute-force scan of the window
// rule on the CPU).
//
// Rule (attention_params.h): query row i sits at key position p(i) = i + len_k - len_q; key j is
// allowed iff j < len_k and p(i) - left <= j <= p(i) + right, where -1 means unbounded, and, with
// a key range [key_begin, key_end), key_begin <= j < key_end.
#ifndef ATTENTION_KERNELS_CUDA_BLOCK_INFO_H_
#define ATTENTION_KERNELS_CUDA_BLOCK_INFO_H_

#include <cstdint>

#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// Floor of a / b for b > 0 and any sign of a.
ATTN_HOST_DEVICE inline int64_t FloorDiv(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Window sides that reach past every key of a sequence are unbounded: left >= seqlen_k allows
// every key j >= 0 to every row i >= 0, and right >= seqlen_q every key j < seqlen_k. The host API
// replaces them by -1 (max lengths for packed batches), which keeps the kernel's int arithmetic
// on positions in range and sends such windows to the dense kernel.
ATTN_HOST_DEVICE inline void ClampWindow(int max_len_q, int max_len_k, int& left, int& right) {
  if (left >= max_len_k) left = -1;
  if (right >= max_len_q) right = -1;
}

struct KvTileRange {
  int begin;
  int end;
};

// As KvTiles below, for keys restricted to [key_begin, key_end) with 0 <= key_begin and
// key_end <= len_k (a key range of AttentionParams::key_range, clamped to the sequence): tiles
// without a key of the range are skipped too. Positions (and so the window) keep their absolute
// values.
ATTN_HOST_DEVICE inline KvTileRange KvTilesInRange(int row0, int rows, int len_q, int len_k,
                                                   int block_n, int left, int right, int key_begin,
                                                   int key_end) {
  int64_t begin = key_begin / block_n;
  int64_t end = (int64_t{key_end} + block_n - 1) / block_n;
  const int64_t shift = int64_t{len_k} - len_q;
  if (right >= 0) {
    // The largest allowed key of the block's last row.
    const int64_t last_key = int64_t{row0} + rows - 1 + shift + right;
    const int64_t tiles = FloorDiv(last_key, block_n) + 1;
    if (tiles < end) end = tiles;
  }
  if (left >= 0) {
    // The smallest allowed key of the block's first row.
    const int64_t first_key = int64_t{row0} + shift - left;
    const int64_t tile = FloorDiv(first_key, block_n);
    if (tile > begin) begin = tile;
  }
  if (end < begin) end = begin;
  return {static_cast<int>(begin), static_cast<int>(end)};
}

// KV tiles [begin, end) of `block_n` keys that hold at least one allowed key for some of the
// query rows [row0, row0 + rows) (rows >= 1). Tiles outside hold none and are skipped; end <= begin
// means the block has no allowed key at all.
ATTN_HOST_DEVICE inline KvTileRange KvTiles(int row0, int rows, int len_q, int len_k, int block_n,
                                            int left, int right) {
  return KvTilesInRange(row0, rows, len_q, len_k, block_n, left, right, 0, len_k);
}

// Whether KV tile `n` (keys [n * block_n, (n + 1) * block_n)) may hold a key that is not allowed
// for one of the rows [row0, row0 + rows): outside the key range [key_begin, key_end) (the whole
// sequence [0, len_k) without one), right of the first row's window or left of the last row's
// window. Tiles for which this is false are processed without any mask. Requires window sides
// clamped as ClampWindow does.
ATTN_HOST_DEVICE inline bool TileNeedsMaskInRange(int n, int row0, int rows, int len_q, int len_k,
                                                  int block_n, int left, int right, int key_begin,
                                                  int key_end) {
  // int arithmetic: the host API clamps left to < seqlen_k and right to < seqlen_q.
  const int key_lo = n * block_n;
  const int key_hi = key_lo + block_n - 1;
  const int shift = len_k - len_q;
  if (key_hi >= key_end || key_lo < key_begin) return true;
  if (right >= 0 && key_hi > row0 + shift + right) return true;
  if (left >= 0 && key_lo < row0 + rows - 1 + shift - left) return true;
  return false;
}

ATTN_HOST_DEVICE inline bool TileNeedsMask(int n, int row0, int rows, int len_q, int len_k,
                                           int block_n, int left, int right) {
  return TileNeedsMaskInRange(n, row0, rows, len_q, len_k, block_n, left, right, 0, len_k);
}

// Paged K / V (the paged variants): KV tile n holds keys [n * block_n, (n + 1) * block_n) of its
// sequence, key j being row j % page_size of page page_table[j / page_size]. The tile starts at a
// multiple of block_n and both are powers of two (page_size = 1 << page_shift), so the tile spans
// whole pages or lies inside one: its pages are TilePages consecutive page-table entries.

// Pages (page-table entries) a tile spans: block_n / page_size, or 1 when one page holds it.
ATTN_HOST_DEVICE inline int TilePages(int block_n, int page_shift) {
  return ((block_n - 1) >> page_shift) + 1;
}

// Index in the sequence's page-table row of the e-th page of tile n.
ATTN_HOST_DEVICE inline int TilePage(int n, int block_n, int e, int page_shift) {
  return ((n * block_n) >> page_shift) + e;
}

// The tile's page (e) and the row within that page of tile row `row`.
ATTN_HOST_DEVICE inline int TileRowPage(int row, int page_shift) { return row >> page_shift; }
ATTN_HOST_DEVICE inline int TileRowInPage(int n, int block_n, int row, int page_shift) {
  return (n * block_n + row) & ((1 << page_shift) - 1);
}

// The page-grouped copy of a paged tile (flash_fwd_common.cuh, LoadPagedTiles): `threads` threads
// copy a tile of block_n rows x `chunks` 16-byte chunks, threads % chunks == 0, so that one pass
// of all threads covers rows_per_pass = threads / chunks rows. The threads split into one group
// per page of the tile (TilePages), group e copying the tile rows of page e; inside a group thread
// t copies chunk t % chunks of rows first_row + i * row_step, i in [0, block_n * chunks / threads).
// Every thread then reads a single page-table entry per tile and walks its page with a constant
// stride, as the contiguous copy does. Taken when the groups split the passes in multiples of 8
// rows (PageGroupsFit), so that a thread's rows share one position in the 128-byte swizzle
// (row % 8); smaller pages take the per-row copy.
ATTN_HOST_DEVICE inline bool PageGroupsFit(int block_n, int rows_per_pass, int page_shift) {
  return TilePages(block_n, page_shift) * 8 <= rows_per_pass;
}

struct PageGroupRows {
  int page;       // e: the tile's page (page-table entry) this thread's rows lie in
  int first_row;  // the thread's first tile row
  int row_step;   // tile rows between the thread's copies: a multiple of 8
  int chunk;      // the thread's 16-byte chunk column
};

// log2 of a power of two (compile-time for the kernels' constants).
ATTN_HOST_DEVICE constexpr int Log2OfPow2(int x) { return x <= 1 ? 0 : 1 + Log2OfPow2(x / 2); }

// The rows thread `tid` copies in the page-grouped copy; requires PageGroupsFit and
// rows_per_pass = threads / chunks a power of two. Shifts only: a tile's pages (TilePages) are a
// power of two too.
ATTN_HOST_DEVICE inline PageGroupRows ThreadPageGroupRows(int tid, int threads, int chunks,
                                                          int block_n, int page_shift) {
  const int block_log2 = Log2OfPow2(block_n);
  const int pages_log2 = block_log2 > page_shift ? block_log2 - page_shift : 0;
  const int step_log2 = Log2OfPow2(threads / chunks) - pages_log2;
  const int pass_row = tid / chunks;
  const int page = pass_row >> step_log2;
  return {page, (page << (block_log2 - pages_log2)) + (pass_row & ((1 << step_log2) - 1)),
          1 << step_log2, tid % chunks};
}

// Whether the e-th page of tile n holds a key of [key_begin, key_end): the kernels read the
// page-table entries of those pages only, so entries of pages outside a key range (or past the
// context) may hold anything.
ATTN_HOST_DEVICE inline bool TilePageNeeded(int n, int block_n, int e, int page_shift,
                                            int key_begin, int key_end) {
  if (e >= TilePages(block_n, page_shift)) return false;
  // int arithmetic: first_key <= n * block_n + block_n - 1 lies within the context, and
  // key_begin - page_size cannot overflow (key_begin >= 0).
  const int first_key = TilePage(n, block_n, e, page_shift) << page_shift;
  return first_key < key_end && first_key > key_begin - (1 << page_shift);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_BLOCK_INFO_H_
