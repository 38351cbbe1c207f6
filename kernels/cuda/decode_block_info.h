// Which keys a decode block visits and which KV tiles each split of them holds. Host and device
// code: the decode kernel (flash_decode_kernel.cuh) calls these, and flash_decode_host_test checks
// them against a brute-force scan of the window rule on the CPU.
//
// Rule (attention_params.h): query row i of a sequence with n_q query rows and a context of
// len_k keys sits at key position p(i) = i + len_k - n_q; key j is allowed iff
// range_lo <= j < range_hi (the key range, clamped to [0, len_k]) and
// p(i) - window_left <= j <= p(i) + window_right, where -1 means unbounded.
#ifndef ATTENTION_KERNELS_CUDA_DECODE_BLOCK_INFO_H_
#define ATTENTION_KERNELS_CUDA_DECODE_BLOCK_INFO_H_

#include <cstdint>

#include "kernels/cuda/kernel_traits.h"  // ATTN_HOST_DEVICE

namespace attention::cuda {

// Half-open integer interval [lo, hi); empty when hi <= lo.
struct DecodeRange {
  int lo;
  int hi;
};

// Allowed keys of query row i: [lo, hi) (hi == lo when none). Both bounds are non-decreasing in
// i, so a block's rows [i_first, i_last] see keys within [Keys(i_first).lo, Keys(i_last).hi).
ATTN_HOST_DEVICE inline DecodeRange DecodeRowKeys(int i, int n_q, int len_k, int window_left,
                                                  int window_right, int range_lo, int range_hi) {
  const int64_t pos = int64_t{i} + len_k - n_q;
  int64_t lo = range_lo;
  int64_t hi = range_hi;
  if (window_left >= 0 && pos - window_left > lo) lo = pos - window_left;
  if (window_right >= 0 && pos + window_right + 1 < hi) hi = pos + window_right + 1;
  if (hi < lo) hi = lo;
  return {static_cast<int>(lo), static_cast<int>(hi)};
}

// The KV tiles (of block_n keys) that split `split` of a block visits, for the block's keys
// [key_lo, key_hi): the tiles t0 = key_lo / block_n .. t1 = ceil(key_hi / block_n) are cut into
// pieces of split_tiles tiles (deterministic mode: fixed cuts, counted from t0) or, when
// split_tiles is 0, into num_splits pieces of ceil((t1 - t0) / num_splits) tiles. The pieces of
// splits 0 .. num_splits - 1 are disjoint, in order, and cover [t0, t1) as long as
// num_splits * split_tiles >= t1 - t0 (the host sizes num_splits so).
ATTN_HOST_DEVICE inline DecodeRange DecodeSplitTiles(int key_lo, int key_hi, int block_n, int split,
                                                     int num_splits, int split_tiles) {
  if (key_hi <= key_lo) return {0, 0};
  const int t0 = key_lo / block_n;
  const int t1 = (key_hi + block_n - 1) / block_n;
  const int per = split_tiles > 0 ? split_tiles : (t1 - t0 + num_splits - 1) / num_splits;
  const int64_t begin = int64_t{t0} + int64_t{split} * per;
  const int b = begin < t1 ? static_cast<int>(begin) : t1;
  const int e = b + per < t1 ? b + per : t1;
  return {b, e};
}

// The pages [lo, hi) of a sequence's page table that the KV tiles [tile_begin, tile_end) (of
// block_n keys) read when only keys [key_lo, key_hi) are read (the decode kernel reads no other):
// what kDecodeVariants' page_cache keeps in shared memory for a split. Empty ({0, 0}) when the
// tiles hold none of the keys.
ATTN_HOST_DEVICE inline DecodeRange DecodeSplitPages(int tile_begin, int tile_end, int key_lo,
                                                     int key_hi, int block_n, int page_size) {
  const int64_t k0 =
      int64_t{tile_begin} * block_n > key_lo ? int64_t{tile_begin} * block_n : key_lo;
  const int64_t k1 = int64_t{tile_end} * block_n < key_hi ? int64_t{tile_end} * block_n : key_hi;
  if (tile_begin >= tile_end || k1 <= k0) return {0, 0};
  return {static_cast<int>(k0 / page_size), static_cast<int>((k1 - 1) / page_size + 1)};
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_DECODE_BLOCK_INFO_H_
