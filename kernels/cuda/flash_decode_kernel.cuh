// Device code of the decode kernels (Flash-Decoding over paged K/V).
//
// One block computes, for one (sequence b, KV head g, split s, query tile), the attention of all
// query rows of the KV head's group against the split's keys:
//   - rows are packed as r = query_row * group + head_in_group, so every query head of the group
//     shares each K/V byte the block streams (GQA-4 decode: 4 rows; 16 query rows x GQA-4: 64);
//   - K and V tiles stream through a cp.async pipeline of DecodeSmem*().stages shared-memory
//     stages, with key rows resolved through the page table (or the dense layout) row by row, so
//     any page size and any page order cost the same;
//   - the 16-bit kernel computes S = Q K^T and O += P V on the tensor cores (mma.sync m16n8k16);
//     with 16 rows its 4 warps split every 64-key tile into 4 slices and keep 4 online-softmax
//     states that are merged once at the end, so no warp waits for another inside the loop
//     beyond the one barrier per tile that recycles a stage;
//   - the float32 kernel computes in float32 FMA (lane = key for Q K^T, lane = column chunk for
//     P V), which decode's bandwidth bound affords;
//   - the result is final (o in the output type, lse, sinks folded in) when the launch has one
//     split, else a float32 partial (o normalized by its own sum, lse) that the combine kernel
//     merges: lse = log sum_s e^lse_s (+ e^sink), o = sum_s e^(lse_s - lse) o_s.
// Logits are kept in base 2 inside the loop (exp2 on the special-function unit) and converted to
// the contract's natural-log LSE once per row.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_DECODE_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_DECODE_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/decode_block_info.h"
#include "kernels/cuda/decode_heuristics.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_decode_launch.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda::decode {

using fwd::CpAsync16;
using fwd::CpAsyncCommit;
using fwd::CpAsyncWait;
using fwd::Exp2;
using fwd::LdsmX4;
using fwd::LdsmX4Trans;
using fwd::MmaOps;
using fwd::SmemAddress;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Programmatic dependent launch (sm_90): the decode grid lets the combine grid start once every
// decode block has passed its main loop; the combine grid waits for the decode grid's completion
// (and its memory) before reading partials. No-ops below sm_90 and without the launch attribute.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WaitForPrimaryGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Where one block works, and the key bounds of its rows.
struct DecodeBlock {
  int b, g, split;
  int row0;                  // first packed row of the block's query tile
  int rows;                  // valid packed rows of the block (<= block_m)
  int n_q;                   // query rows of sequence b
  int len_k;                 // context length of sequence b
  int64_t q_row0;            // row offset of sequence b in q, o and lse (cu_seqlens_q[b] or 0)
  int range_lo, range_hi;    // key range of sequence b, clamped to [0, len_k]
  int key_lo, key_hi;        // keys any row of the block may see: [key_lo, key_hi)
  int tile_begin, tile_end;  // this split's KV tiles
  const int32_t* page_row;   // page table row of sequence b, or null (dense K/V)
  int64_t k_seq, v_seq;      // dense K/V: element offset of sequence b's key 0 at head g
  int64_t k_head, v_head;    // paged K/V: element offset of head g inside a page row
};

// Allowed keys of query row i (local to its sequence): decode_block_info.h.
__device__ __forceinline__ DecodeRange RowKeyBounds(const AttentionParams& p,
                                                    const DecodeBlock& blk, int i) {
  return DecodeRowKeys(i, blk.n_q, blk.len_k, p.window_left, p.window_right, blk.range_lo,
                       blk.range_hi);
}

// Fills `blk` for blockIdx.x; returns false when the block's query tile starts past its
// sequence's rows (packed batches size the grid by the longest sequence): such a block writes
// nothing, and the combine pass skips those rows too. kBlockM: query-tile rows per KV head; with
// kHeads > 1 (kDecodeVariants' heads) the block holds KV heads g .. g + kHeads - 1 (the grid has
// kv_heads / kHeads blocks per (sequence, split, query tile)), each with the same packed rows.
template <int kBlockM, int kBlockN, int kHeads = 1>
__device__ __forceinline__ bool LocateDecodeBlock(const AttentionParams& p, const DecodeLaunch& l,
                                                  DecodeBlock& blk) {
  int id = static_cast<int>(blockIdx.x);
  const int head_blocks = p.kv_heads / kHeads;
  blk.g = (id % head_blocks) * kHeads;
  id /= head_blocks;
  const int query_tile = id % l.query_tiles;
  id /= l.query_tiles;
  blk.split = id % l.num_splits;
  blk.b = id / l.num_splits;
  const int b = blk.b;

  blk.q_row0 = 0;
  blk.n_q = p.seqlen_q;
  if (p.cu_seqlens_q != nullptr) {
    blk.q_row0 = p.cu_seqlens_q[b];
    blk.n_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
  }
  // The host sized the grid and the partials by seqlen_q and seqlen_k (the longest sequence):
  // clamping keeps a batch that breaks that contract inside its buffers.
  blk.n_q = min(blk.n_q, p.seqlen_q);
  blk.row0 = query_tile * kBlockM;
  const int total_rows = blk.n_q * l.group;
  if (blk.row0 >= total_rows) return false;
  blk.rows = min(kBlockM, total_rows - blk.row0);

  blk.page_row = nullptr;
  blk.k_seq = blk.v_seq = 0;
  blk.k_head = int64_t{blk.g} * p.k_head_stride;
  blk.v_head = int64_t{blk.g} * p.v_head_stride;
  if (p.page_table != nullptr) {
    blk.page_row = p.page_table + int64_t{b} * p.page_table_stride;
    blk.len_k = p.seqlens_k != nullptr ? p.seqlens_k[b] : p.seqlen_k;
  } else {
    int64_t k_start = 0;
    if (p.cu_seqlens_k != nullptr) {
      k_start = p.cu_seqlens_k[b];
      blk.len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    } else {
      blk.len_k = p.seqlens_k != nullptr ? p.seqlens_k[b] : p.seqlen_k;
    }
    blk.k_seq = b * p.k_batch_stride + k_start * p.k_row_stride + blk.k_head;
    blk.v_seq = b * p.v_batch_stride + k_start * p.v_row_stride + blk.v_head;
  }
  blk.len_k = min(blk.len_k, p.seqlen_k);
  blk.range_lo = 0;
  blk.range_hi = blk.len_k;
  if (p.key_range != nullptr) {
    blk.range_lo = max(p.key_range[2 * b], 0);
    blk.range_hi = min(p.key_range[2 * b + 1], blk.len_k);
  }

  // Keys of the block: bounds are monotone in the query row, so the first row's lower bound and
  // the last row's upper bound enclose every row's keys.
  const DecodeRange first = RowKeyBounds(p, blk, blk.row0 / l.group);
  const DecodeRange last = RowKeyBounds(p, blk, (blk.row0 + blk.rows - 1) / l.group);
  blk.key_lo = first.lo;
  blk.key_hi = last.hi;
  const DecodeRange tiles =
      DecodeSplitTiles(blk.key_lo, blk.key_hi, kBlockN, blk.split, l.num_splits, l.split_tiles);
  blk.tile_begin = tiles.lo;
  blk.tile_end = tiles.hi;
  return true;
}

// Element offsets (K and V) of key `key`'s row at the block's head.
__device__ __forceinline__ void KeyRowOffsets(const AttentionParams& p, const DecodeBlock& blk,
                                              int key, int64_t& k_off, int64_t& v_off) {
  if (blk.page_row != nullptr) {
    const int slot = key / p.page_size;
    const int64_t page = __ldg(blk.page_row + slot);
    const int64_t row = key - slot * p.page_size;
    k_off = page * p.k_batch_stride + row * p.k_row_stride + blk.k_head;
    v_off = page * p.v_batch_stride + row * p.v_row_stride + blk.v_head;
  } else {
    k_off = blk.k_seq + int64_t{key} * p.k_row_stride;
    v_off = blk.v_seq + int64_t{key} * p.v_row_stride;
  }
}

// cp.async.cg of 16 bytes (zero-filled when !pred) with the L2 hint kHint (DecodeCacheHint).
template <DecodeCacheHint kHint>
__device__ __forceinline__ void CpAsync16Hint(uint32_t smem_addr, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  if constexpr (kHint == DecodeCacheHint::kNone) {
    CpAsync16(smem_addr, gmem, pred);
  } else if constexpr (kHint == DecodeCacheHint::kPrefetch128) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(smem_addr),
                 "l"(gmem), "r"(src_bytes));
  } else {
    static_assert(kHint == DecodeCacheHint::kPrefetch256, "a DecodeCacheHint");
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(smem_addr),
                 "l"(gmem), "r"(src_bytes));
  }
}

// Which K/V layouts a kernel instantiation reads: both, told apart at run time (kAny: the
// candidate kernels of kDecodeVariants and the float32 kernel), or one known at compile time (the
// production 16-bit kernel has one instantiation per layout, LaunchDecode16 picking by
// p.page_table). A paged lookup inside the dense kernel's copy loop, even one never taken, cost
// dense K/V 15-20 % wherever one block holds an SM (H200, 2026-12-06, device call 2: 8 x 32k to
// 1 x 128k), so the production kernel's dense loop has none.
enum class DecodeKv : uint8_t { kAny, kDense, kPaged };

// Copies per thread of one K (or V) tile of kBlockN rows x kChunks 16-byte chunks.
template <int kBlockN, int kChunks>
inline constexpr int kKvCopyIters = (kBlockN * kChunks + kDecodeThreads - 1) / kDecodeThreads;

// How a block finds a key's page (kDecodeVariants' pages_ahead): shift = log2(page_size) for a
// power of two, else -1 (a division).
struct PageGeometry {
  int size;
  int shift;

  __device__ __forceinline__ explicit PageGeometry(int page_size) : size(page_size) {
    shift = page_size > 0 && (page_size & (page_size - 1)) == 0 ? __ffs(page_size) - 1 : -1;
  }
  __device__ __forceinline__ int Slot(int key) const {
    return shift >= 0 ? key >> shift : key / size;
  }
  __device__ __forceinline__ int InPage(int key) const {
    return shift >= 0 ? key & (size - 1) : key - (key / size) * size;
  }
};

// The page-table entries of the rows this thread copies in KV tile `tile` (the rows of
// LoadKvTile's iterations), 0 for rows outside [key_lo, key_hi) or without a page table.
template <int kBlockN, int kChunks>
__device__ __forceinline__ void LoadTilePages(const DecodeBlock& blk, const PageGeometry& geo,
                                              int tile, int tid,
                                              int32_t (&pages)[kKvCopyIters<kBlockN, kChunks>]) {
  constexpr int kTotal = kBlockN * kChunks;
#pragma unroll
  for (int it = 0; it < kKvCopyIters<kBlockN, kChunks>; ++it) {
    const int idx = tid + it * kDecodeThreads;
    const int key = tile * kBlockN + idx / kChunks;
    const bool pred = (kTotal % kDecodeThreads == 0 || idx < kTotal) && key >= blk.key_lo &&
                      key < blk.key_hi && blk.page_row != nullptr;
    pages[it] = pred ? __ldg(blk.page_row + geo.Slot(key)) : 0;
  }
}

// Copies KV tile `tile` (keys [tile * kBlockN, +kBlockN)) of K and V into the shared tiles at
// smem_k / smem_v with cp.async: keys outside [key_lo, key_hi) and 16-byte chunks past
// `valid_chunks` are zero-filled without reading memory (nor the page table). `Offset(row, chunk)`
// gives a chunk's byte offset inside a tile; a chunk is 16 bytes of kElemBytes-byte elements.
// With `pages` (kDecodeVariants' pages_ahead / pages_early, paged K/V) the rows' page-table
// entries come from LoadTilePages instead of a lookup here, and a row's offset inside its page is
// 32-bit.
// kHeads > 1: the block's KV heads g .. g + kHeads - 1, whose rows are neighbours in memory, are
// copied together (consecutive threads walk one key's kHeads x head_dim contiguous elements), head
// m's tiles at smem_k / smem_v + m * head_tile_bytes.
// kUnroll: how far the copy loop is unrolled (kDecodeVariants' compact rolls it: 1). kTable (paged
// K/V, kDecodeVariants' lean_cache): a row's page comes from table[slot - table_first] (shared
// memory when the block cached its split's entries, else the page table itself) and the page
// geometry `geo`, in this same loop (no second copy loop). kKv: the K/V layouts the kernel
// instantiation reads (DecodeKv).
template <int kBlockN, int kChunks, int kElemBytes, DecodeCacheHint kHint = DecodeCacheHint::kNone,
          int kHeads = 1, int kUnroll = 64, bool kTable = false, DecodeKv kKv = DecodeKv::kAny,
          typename OffsetFn>
__device__ __forceinline__ void LoadKvTile(const AttentionParams& p, const DecodeBlock& blk,
                                           int tile, uint32_t smem_k, uint32_t smem_v,
                                           int valid_chunks, int tid, OffsetFn offset,
                                           const int32_t* pages = nullptr,
                                           const PageGeometry* geo = nullptr,
                                           uint32_t head_tile_bytes = 0,
                                           const int32_t* table = nullptr, int table_first = 0) {
  constexpr int kElems = 16 / kElemBytes;
  constexpr int kRowChunks = kChunks * kHeads;
  constexpr int kTotal = kBlockN * kRowChunks;
  constexpr int kIters = (kTotal + kDecodeThreads - 1) / kDecodeThreads;
  static_assert(kHeads == 1 || kIters == kKvCopyIters<kBlockN, kChunks> * kHeads,
                "whole rows per iteration");
  const char* k = static_cast<const char*>(p.k);
  const char* v = static_cast<const char*>(p.v);
  // Paged K/V whose pages hold whole tiles (page_size a multiple of kBlockN, e.g. 64, 128, 256
  // at kBlockN 64): the tile lies in one page, looked up once per tile (a uniform load) instead
  // of once per row (8 rows per thread: 8 integer divisions and 8 dependent table loads ahead of
  // the copies). Its first key may sit before key_lo, but in the page of the tile's allowed keys,
  // so no entry outside the block's keys is read. -1: rows are looked up one by one.
  // Smaller pages of a power-of-two size (16, 32: the server's default pages hold 16 tokens at 8
  // KV heads x head_dim 128 x bf16) find each row's page with a shift instead of a division.
  // Only the production kernel's paged instantiation (kKv kPaged) takes these paths.
  int64_t tile_k_off = -1, tile_v_off = -1;
  int page_shift = -1;
  if constexpr (kKv == DecodeKv::kPaged) {
    page_shift = (p.page_size & (p.page_size - 1)) == 0 ? __ffs(p.page_size) - 1 : -1;
  }
  if (kKv == DecodeKv::kPaged && pages == nullptr && !kTable && p.page_size % kBlockN == 0) {
    const int first_key = tile * kBlockN;
    const int slot = first_key / p.page_size;
    const int64_t page = __ldg(blk.page_row + slot);
    const int64_t in_page = first_key - int64_t{slot} * p.page_size;
    tile_k_off = page * p.k_batch_stride + in_page * p.k_row_stride + blk.k_head;
    tile_v_off = page * p.v_batch_stride + in_page * p.v_row_stride + blk.v_head;
  }
#pragma unroll kUnroll
  for (int it = 0; it < kIters; ++it) {
    const int idx = tid + it * kDecodeThreads;
    if (kTotal % kDecodeThreads != 0 && idx >= kTotal) break;
    const int row = idx / kRowChunks;
    const int head = kHeads == 1 ? 0 : (idx % kRowChunks) / kChunks;
    const int chunk = kHeads == 1 ? idx % kChunks : (idx % kRowChunks) % kChunks;
    const int key = tile * kBlockN + row;
    const bool pred = key >= blk.key_lo && key < blk.key_hi && chunk < valid_chunks;
    const char* k_src = k;
    const char* v_src = v;
    if (pred) {
      if (pages != nullptr && blk.page_row != nullptr) {
        const int in_page = geo->InPage(key);
        const int col = chunk * kElems;
        const int64_t page = pages[it];
        // 32-bit inside the page: the host checked page_size x row stride + a row fit an int.
        const int k_in =
            in_page * static_cast<int>(p.k_row_stride) + static_cast<int>(blk.k_head) + col;
        const int v_in =
            in_page * static_cast<int>(p.v_row_stride) + static_cast<int>(blk.v_head) + col;
        k_src = k + (page * p.k_batch_stride + k_in) * kElemBytes;
        v_src = v + (page * p.v_batch_stride + v_in) * kElemBytes;
      } else {
        int64_t k_off = 0;
        int64_t v_off = 0;
        if (kTable && blk.page_row != nullptr) {
          const int slot = geo->Slot(key);
          const int64_t page = table[slot - table_first];
          const int64_t in_page = key - slot * geo->size;
          k_off = page * p.k_batch_stride + in_page * p.k_row_stride + blk.k_head;
          v_off = page * p.v_batch_stride + in_page * p.v_row_stride + blk.v_head;
        } else if constexpr (kKv == DecodeKv::kDense) {
          k_off = blk.k_seq + int64_t{key} * p.k_row_stride;
          v_off = blk.v_seq + int64_t{key} * p.v_row_stride;
        } else if (kKv == DecodeKv::kPaged && tile_k_off >= 0) {
          k_off = tile_k_off + int64_t{row} * p.k_row_stride;
          v_off = tile_v_off + int64_t{row} * p.v_row_stride;
        } else if (kKv == DecodeKv::kPaged && page_shift >= 0) {
          const int64_t page = __ldg(blk.page_row + (key >> page_shift));
          const int64_t in_page = key & (p.page_size - 1);
          k_off = page * p.k_batch_stride + in_page * p.k_row_stride + blk.k_head;
          v_off = page * p.v_batch_stride + in_page * p.v_row_stride + blk.v_head;
        } else {
          KeyRowOffsets(p, blk, key, k_off, v_off);
        }
        const int64_t col = int64_t{chunk} * kElems;
        if constexpr (kHeads > 1) {
          k_off += head * p.k_head_stride;
          v_off += head * p.v_head_stride;
        }
        k_src = k + (k_off + col) * kElemBytes;
        v_src = v + (v_off + col) * kElemBytes;
      }
    }
    const uint32_t dst = offset(row, chunk) + (kHeads > 1 ? head * head_tile_bytes : 0u);
    CpAsync16Hint<kHint>(smem_k + dst, k_src, pred);
    CpAsync16Hint<kHint>(smem_v + dst, v_src, pred);
  }
}

// kDecodeVariants' page_cache: the pages the block's split would read if its sequence's context
// were p.seqlen_k keys long, its query rows p.seqlen_q and its key range unbounded (what
// LocateDecodeBlock computes once it has read them), so that their entries can be read while those
// reads are in flight (decode_block_info.h's DecodeSplitPages). Sequence index of the block in `b`.
template <int kBlockM, int kBlockN>
__device__ __forceinline__ DecodeRange GuessSplitPages(const AttentionParams& p,
                                                       const DecodeLaunch& l, int& b) {
  int id = static_cast<int>(blockIdx.x) / p.kv_heads;
  const int query_tile = id % l.query_tiles;
  id /= l.query_tiles;
  const int split = id % l.num_splits;
  b = id / l.num_splits;
  const int row0 = query_tile * kBlockM;
  const int total_rows = p.seqlen_q * l.group;
  if (row0 >= total_rows) return {0, 0};
  const int rows = min(kBlockM, total_rows - row0);
  const DecodeRange first = DecodeRowKeys(row0 / l.group, p.seqlen_q, p.seqlen_k, p.window_left,
                                          p.window_right, 0, p.seqlen_k);
  const DecodeRange last = DecodeRowKeys((row0 + rows - 1) / l.group, p.seqlen_q, p.seqlen_k,
                                         p.window_left, p.window_right, 0, p.seqlen_k);
  const DecodeRange tiles =
      DecodeSplitTiles(first.lo, last.hi, kBlockN, split, l.num_splits, l.split_tiles);
  return DecodeSplitPages(tiles.lo, tiles.hi, first.lo, last.hi, kBlockN, p.page_size);
}

// LoadKvTile for paged K/V whose page entries sit in shared memory: `cache` holds the entries of
// pages [cache_first, ...) of the block's sequence, covering every key the split reads.
template <int kBlockN, int kChunks, DecodeCacheHint kHint, int kUnroll, typename OffsetFn>
__device__ __forceinline__ void LoadKvTileCached(const AttentionParams& p, const DecodeBlock& blk,
                                                 int tile, uint32_t smem_k, uint32_t smem_v,
                                                 int valid_chunks, int tid, OffsetFn offset,
                                                 const int32_t* cache, int cache_first,
                                                 const PageGeometry& geo) {
  constexpr int kElems = 8;  // 16-bit elements per 16-byte chunk
  constexpr int kTotal = kBlockN * kChunks;
  constexpr int kIters = (kTotal + kDecodeThreads - 1) / kDecodeThreads;
  const char* k = static_cast<const char*>(p.k);
  const char* v = static_cast<const char*>(p.v);
#pragma unroll kUnroll
  for (int it = 0; it < kIters; ++it) {
    const int idx = tid + it * kDecodeThreads;
    if (kTotal % kDecodeThreads != 0 && idx >= kTotal) break;
    const int row = idx / kChunks;
    const int chunk = idx % kChunks;
    const int key = tile * kBlockN + row;
    const bool pred = key >= blk.key_lo && key < blk.key_hi && chunk < valid_chunks;
    const char* k_src = k;
    const char* v_src = v;
    if (pred) {
      const int slot = geo.Slot(key);
      const int64_t page = cache[slot - cache_first];
      const int64_t in_page = key - slot * geo.size;
      const int64_t col = int64_t{chunk} * kElems;
      k_src = k + (page * p.k_batch_stride + in_page * p.k_row_stride + blk.k_head + col) * 2;
      v_src = v + (page * p.v_batch_stride + in_page * p.v_row_stride + blk.v_head + col) * 2;
    }
    const uint32_t dst = offset(row, chunk);
    CpAsync16Hint<kHint>(smem_k + dst, k_src, pred);
    CpAsync16Hint<kHint>(smem_v + dst, v_src, pred);
  }
}

// Copies the block's packed query rows into the shared Q tile (zero-filled past the block's rows
// and past head_dim). kHeads > 1: tile rows [m kBlockM / kHeads, + kBlockM / kHeads) hold KV head
// g + m's rows.
template <int kBlockM, int kChunks, int kElemBytes, int kHeads = 1, typename OffsetFn>
__device__ __forceinline__ void LoadQTile(const AttentionParams& p, const DecodeLaunch& l,
                                          const DecodeBlock& blk, uint32_t smem_q, int valid_chunks,
                                          int tid, OffsetFn offset) {
  constexpr int kElems = 16 / kElemBytes;
  constexpr int kTotal = kBlockM * kChunks;
  constexpr int kHeadRows = kBlockM / kHeads;
  const char* q = static_cast<const char*>(p.q);
  for (int idx = tid; idx < kTotal; idx += kDecodeThreads) {
    const int row = idx / kChunks;
    const int member = row / kHeadRows;
    const int r = row % kHeadRows;
    const int chunk = idx % kChunks;
    const bool pred = r < blk.rows && chunk < valid_chunks;
    int64_t off = 0;
    if (pred) {
      const int packed = blk.row0 + r;
      const int i = packed / l.group;
      const int h = (blk.g + member) * l.group + packed % l.group;
      off = blk.b * p.q_batch_stride + (blk.q_row0 + i) * p.q_row_stride + h * p.q_head_stride +
            int64_t{chunk} * kElems;
    }
    CpAsync16(smem_q + offset(row, chunk), q + off * kElemBytes, pred);
  }
}

// Emits one 4-column chunk of packed row `r` of the block (of its KV head g + member): the final
// output (o in the output element type, lse, sinks) with one split, the float32 partial with
// several.
template <typename Element>
struct Emitter {
  const AttentionParams& p;
  const DecodeLaunch& l;
  const DecodeBlock& blk;

  __device__ __forceinline__ void operator()(int r, int c4, float4 o, float lse,
                                             int member = 0) const {
    const int packed = blk.row0 + r;
    const int g = blk.g + member;
    if (l.num_splits > 1) {
      const int64_t row = int64_t{blk.split} * l.partial_rows +
                          (int64_t{blk.b} * p.kv_heads + g) * l.rows_pad + packed;
      *reinterpret_cast<float4*>(l.partial_o + row * p.head_dim + 4 * c4) = o;
      if (c4 == 0) l.partial_lse[row] = lse;
      return;
    }
    const int i = packed / l.group;
    const int h = g * l.group + packed % l.group;
    float final_lse = lse;
    float scale = 1.f;
    if (p.sink_logits != nullptr) {
      const float sink = p.sink_logits[blk.b * p.sink_batch_stride + h];
      const float m = fmaxf(lse, sink);
      final_lse = m == -INFINITY ? m : m + logf(expf(lse - m) + expf(sink - m));
      scale = lse == -INFINITY ? 0.f : expf(lse - final_lse);
    }
    StoreOutput(p, blk.b, blk.q_row0 + i, h, c4, o, scale);
    if (c4 == 0 && p.lse != nullptr) {
      p.lse[blk.b * p.lse_batch_stride + h * p.lse_head_stride + blk.q_row0 + i] = final_lse;
    }
  }

  // o[4] * scale as four elements at columns 4 c4.. of (sequence b, row q_row, head h).
  static __device__ __forceinline__ void StoreOutput(const AttentionParams& p, int b, int64_t q_row,
                                                     int h, int c4, float4 o, float scale) {
    Element* dst = static_cast<Element*>(p.o) + b * p.o_batch_stride + q_row * p.o_row_stride +
                   h * p.o_head_stride + 4 * c4;
    const float x = o.x * scale;
    const float y = o.y * scale;
    const float z = o.z * scale;
    const float w = o.w * scale;
    if constexpr (std::is_same_v<Element, float>) {
      *reinterpret_cast<float4*>(dst) = make_float4(x, y, z, w);
    } else {
      using Ops = MmaOps<Element>;
      *reinterpret_cast<uint2*>(dst) = make_uint2(Ops::Pack(x, y), Ops::Pack(z, w));
    }
  }
};

// A block whose split sees no allowed key: o = 0 and lse = -inf (or the sink), or an empty
// partial (lse = -inf; its o is never read), for each of its kHeads KV heads.
template <typename Element, int kHeads = 1>
__device__ __forceinline__ void EmitEmptyRows(const Emitter<Element>& emit, int head_dim, int tid) {
  const int chunks = head_dim / 4;
  const int per_head = emit.blk.rows * chunks;
  for (int idx = tid; idx < kHeads * per_head; idx += kDecodeThreads) {
    const int member = idx / per_head;
    const int r = (idx % per_head) / chunks;
    const int c4 = idx % chunks;
    if (emit.l.num_splits > 1) {
      if (c4 == 0) {
        const int64_t row =
            int64_t{emit.blk.split} * emit.l.partial_rows +
            (int64_t{emit.blk.b} * emit.p.kv_heads + emit.blk.g + member) * emit.l.rows_pad +
            emit.blk.row0 + r;
        emit.l.partial_lse[row] = -INFINITY;
      }
    } else {
      emit(r, c4, make_float4(0.f, 0.f, 0.f, 0.f), -INFINITY, member);
    }
  }
}

// Scores -> base-2 logits of the contract: scale, softcap, ALiBi, then the row's key bounds.
struct LogitTransform {
  float scale;       // softmax_scale
  float scale_log2;  // softmax_scale * log2(e): the whole transform without softcap and ALiBi
  float softcap;     // 0 = off
  float cap_scale;   // softmax_scale / softcap
  bool general;      // softcap or ALiBi

  __device__ __forceinline__ explicit LogitTransform(const AttentionParams& p) {
    scale = p.softmax_scale;
    scale_log2 = p.softmax_scale * kLog2e;
    softcap = p.softcap;
    cap_scale = softcap > 0.f ? p.softmax_scale / softcap : 0.f;
    general = softcap > 0.f || p.alibi_slopes != nullptr;
  }

  // The base-2 logit of score `s` of key `key` for a row at position `pos` with ALiBi slope
  // `slope` and allowed keys [lo, hi); -inf outside. kAccurate: tanhf (float32 kernel) instead of
  // the exp2-based fast tanh (~1e-7 absolute error). kMayBeGeneral false: the caller knows there is
  // neither softcap nor ALiBi (the softcap / ALiBi code is left out).
  template <bool kAccurate, bool kMayBeGeneral = true>
  __device__ __forceinline__ float Apply(float s, int key, int pos, float slope, int lo,
                                         int hi) const {
    float x;
    if (kMayBeGeneral && general) {
      if (softcap > 0.f) {
        x = softcap * (kAccurate ? tanhf(s * cap_scale) : fwd::Tanh(s * cap_scale));
      } else {
        x = s * scale;
      }
      x -= slope * fabsf(static_cast<float>(pos - key));
      x *= kLog2e;
    } else {
      x = s * scale_log2;
    }
    return key >= lo && key < hi ? x : -INFINITY;
  }
};

// ALiBi slope of packed row `packed` of the block's KV head g + member (0 without ALiBi).
__device__ __forceinline__ float RowSlope(const AttentionParams& p, const DecodeLaunch& l,
                                          const DecodeBlock& blk, int packed, int member = 0) {
  if (p.alibi_slopes == nullptr) return 0.f;
  const int h = (blk.g + member) * l.group + packed % l.group;
  return p.alibi_slopes[blk.b * p.alibi_batch_stride + h];
}

// ------------------------------------------------------------------------------------------------
// The combine pass: one warp per (sequence, KV head, packed row).

// Merges partial row `row` ((b * kv_heads + g) * rows_pad + packed) of every split into o and lse
// (and the sinks); `lane` is the calling warp's lane, the whole warp calls it. kThroughL2: the
// partials are read through L2 (ld.global.cg), as the fused variant needs (other blocks of the
// same grid wrote them, which L1 does not see); the combine kernel reads them after the decode
// grid, plainly. kSplitUnroll: partials read per round of the split loop (16: one round for 16
// splits; the compact combine's 4 keeps its SASS at 19 KB instead of 39, which a launch after
// decode_bench's L2 flush fetches from DRAM as it runs).
template <typename T>
__device__ __forceinline__ T LoadPartial(const T* ptr, bool through_l2) {
  return through_l2 ? __ldcg(ptr) : *ptr;
}

template <typename Element, int kSplitUnroll = 16, bool kThroughL2 = false>
__device__ __forceinline__ void CombineRow(const AttentionParams& p, const DecodeLaunch& l,
                                           int64_t row, int lane) {
  const int packed = static_cast<int>(row % l.rows_pad);
  const int64_t bg = row / l.rows_pad;
  const int g = static_cast<int>(bg % p.kv_heads);
  const int b = static_cast<int>(bg / p.kv_heads);
  int64_t q_row0 = 0;
  int n_q = p.seqlen_q;
  if (p.cu_seqlens_q != nullptr) {
    q_row0 = p.cu_seqlens_q[b];
    n_q = min(p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b], p.seqlen_q);
  }
  if (packed >= n_q * l.group) return;
  const int i = packed / l.group;
  const int h = g * l.group + packed % l.group;

  // Max over the splits' LSEs (and the sink), then sum_s e^(lse_s - m): the same arithmetic as
  // the one-split epilogue (Emitter), so that adding empty splits changes no bit.
  float m = -INFINITY;
  for (int s = lane; s < l.num_splits; s += 32) {
    m = fmaxf(m, LoadPartial(l.partial_lse + s * l.partial_rows + row, kThroughL2));
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  float lse_splits = -INFINITY;  // log sum_s e^lse_s, without the sink
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int s = lane; s < l.num_splits; s += 32) {
      sum += expf(LoadPartial(l.partial_lse + s * l.partial_rows + row, kThroughL2) - m);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    lse_splits = m + logf(sum);
  }
  float final_lse = lse_splits;
  if (p.sink_logits != nullptr) {
    const float sink = p.sink_logits[b * p.sink_batch_stride + h];
    const float ms = fmaxf(lse_splits, sink);
    final_lse = ms == -INFINITY ? ms : ms + logf(expf(lse_splits - ms) + expf(sink - ms));
  }

  // o = sum_s e^(lse_s - lse) o_s. Lane j of each round of 32 splits computes split j's weight
  // once; the round's partials are then read with independent loads (a weight of 0 selects the
  // old sum, so an empty split's unwritten partial is read but never used) to keep many loads in
  // flight: the pass is bound by L2 latency, not bandwidth.
  const int chunks = p.head_dim / 4;
  constexpr int kMaxChunksPerLane = kMaxHeadDim / 4 / 32;
  float4 o[kMaxChunksPerLane];
#pragma unroll
  for (int c = 0; c < kMaxChunksPerLane; ++c) o[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (final_lse != -INFINITY) {
    for (int base = 0; base < l.num_splits; base += 32) {
      float w = 0.f;
      if (base + lane < l.num_splits) {
        const float ls =
            LoadPartial(l.partial_lse + (base + lane) * l.partial_rows + row, kThroughL2);
        w = ls == -INFINITY ? 0.f : expf(ls - final_lse);
      }
      const int round = min(32, l.num_splits - base);
#pragma unroll kSplitUnroll
      for (int j = 0; j < round; ++j) {
        const float wj = __shfl_sync(0xffffffffu, w, j);
        const float* src = l.partial_o + ((base + j) * l.partial_rows + row) * p.head_dim;
#pragma unroll
        for (int c = 0; c < kMaxChunksPerLane; ++c) {
          const int c4 = lane + 32 * c;
          if (c4 < chunks) {
            const float4 part =
                LoadPartial(reinterpret_cast<const float4*>(src + 4 * c4), kThroughL2);
            if (wj != 0.f) {
              o[c].x = fmaf(wj, part.x, o[c].x);
              o[c].y = fmaf(wj, part.y, o[c].y);
              o[c].z = fmaf(wj, part.z, o[c].z);
              o[c].w = fmaf(wj, part.w, o[c].w);
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kMaxChunksPerLane; ++c) {
    const int c4 = lane + 32 * c;
    if (c4 < chunks) Emitter<Element>::StoreOutput(p, b, q_row0 + i, h, c4, o[c], 1.f);
  }
  if (lane == 0 && p.lse != nullptr) {
    p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + q_row0 + i] = final_lse;
  }
}

template <typename Element, int kSplitUnroll = 16>
__global__ void __launch_bounds__(kDecodeThreads)
    FlashDecodeCombineKernel(const __grid_constant__ AttentionParams p,
                             const __grid_constant__ DecodeLaunch l) {
  WaitForPrimaryGrid();
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t{blockIdx.x} * kDecodeWarps + threadIdx.x / 32;
  if (row >= l.partial_rows) return;
  CombineRow<Element, kSplitUnroll>(p, l, row, lane);
}

// Zeroes the fused variant's ticket counters. It lets the decode kernel (launched behind it with
// programmatic stream serialization) start at once; the decode kernel waits for this grid's
// completion and memory only before it takes a ticket.
// (A template only so that every file including this header may define it.)
template <typename Counter>
__global__ void __launch_bounds__(kDecodeThreads)
    FlashDecodeZeroCounters(Counter* counters, int64_t n) {
  AllowDependentLaunch();
  for (int64_t i = int64_t{blockIdx.x} * kDecodeThreads + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kDecodeThreads) {
    counters[i] = Counter{0};
  }
}

// The fused variant's end of a split block, after its partial is written (every thread of the
// block calls it): a ticket from the unit's counter, and, in the unit's last block, the combine
// of the unit's rows (one warp per row, as the combine kernel). `query_tile`: the block's.
template <typename Element>
__device__ __forceinline__ void FinishFusedSplit(const AttentionParams& p, const DecodeLaunch& l,
                                                 const DecodeBlock& blk, int query_tile, int tid) {
  __shared__ unsigned int ticket;
  // Every thread's partial stores reach L2 (device scope) before thread 0 takes the ticket.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    // The counters were zeroed by the grid launched before this one (or are kept zero between
    // launches: counters_self_reset, where no grid precedes this one programmatically).
    WaitForPrimaryGrid();
    const int64_t unit = (int64_t{blk.b} * p.kv_heads + blk.g) * l.query_tiles + query_tile;
    ticket = atomicAdd(l.counters + unit, 1u);
    // The unit's last ticket: no other block of this launch touches the counter again.
    if (l.counters_self_reset && ticket == static_cast<unsigned int>(l.num_splits - 1)) {
      l.counters[unit] = 0u;
    }
  }
  __syncthreads();
  if (ticket != static_cast<unsigned int>(l.num_splits - 1)) return;
  // The last block: every other split's partial is visible (their fence came before their
  // ticket); this fence orders the reads below after the ticket.
  __threadfence();
  const int64_t first = (int64_t{blk.b} * p.kv_heads + blk.g) * l.rows_pad + blk.row0;
  for (int r = tid / 32; r < blk.rows; r += kDecodeWarps) {
    CombineRow<Element, 16, true>(p, l, first + r, tid % 32);
  }
}

// ------------------------------------------------------------------------------------------------
// The 16-bit kernel (tensor cores).

// kHeads > 1 (kDecodeVariants' heads): the block holds that many KV heads, kBlockM / kHeads = 16
// query-tile rows each, and a K and a V tile per head in every stage.
// kPageEntries_ > 0 (kDecodeVariants' page_cache): a page cache of that many entries behind the
// stages.
template <int kHeadDim_, DecodeRows kRows_, int kStagesOverride = 0, int kHeads_ = 1,
          int kPageEntries_ = 0>
struct Decode16Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr DecodeRows kRows = kRows_;
  static constexpr int kHeads = kHeads_;
  static constexpr int kPageEntries = kPageEntries_;
  static constexpr int kBlockM = DecodeBlockM(kRows) * kHeads;
  static constexpr int kBlockN = kDecodeBlockN16;
  static constexpr int kMWarps = kBlockM / 16;
  static constexpr int kNWarps = kDecodeWarps / kMWarps;
  static constexpr int kWarpN = kBlockN / kNWarps;  // keys of a tile per warp
  static constexpr int kNTilesS = kWarpN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr DecodeSmem kSmem =
      DecodeSmem16(kHeadDim, kRows, kStagesOverride, kHeads, kPageEntries);
  static constexpr int kStages = kSmem.stages;
  static constexpr int kPageCacheOffset = kSmem.total - kPageEntries * 4;
  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  static constexpr int kMergeStride = kHeadDim + 8;  // floats per merge row (bank padding)

  static_assert(kMWarps * kNWarps == kDecodeWarps, "every warp owns one (rows, keys) slice");
  static_assert(kWarpN % 16 == 0, "a warp's key slice is whole k16 steps of P V");
  static_assert(kHeads == 1 || (kRows == DecodeRows::kRows16 && kMWarps == kHeads),
                "a multi-head block has one m16 tile (warp row) per head");
  static_assert(QTile::kBytes == kSmem.q_bytes && 2 * kHeads * KVTile::kBytes == kSmem.stage_bytes,
                "decode_heuristics.h sizes the same tiles");
  static_assert(kSmem.q_bytes % 128 == 0, "K/V stages start 128-byte aligned (swizzle)");
};

// kVariant: an entry of kDecodeVariants (0 = the production kernel); Traits carries its stages.
// kGeneralLogits false (kDecodeVariants' specialize_logits, for launches without softcap and
// ALiBi): the logits' softcap / ALiBi code is left out.
template <typename Traits, typename Element, int kVariant = 0, bool kGeneralLogits = true,
          DecodeKv kKv = DecodeKv::kAny>
__global__ void __launch_bounds__(kDecodeThreads, 2)
    FlashDecodeKernel16(const __grid_constant__ AttentionParams p,
                        const __grid_constant__ DecodeLaunch l) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kNWarps = Traits::kNWarps;
  constexpr int kWarpN = Traits::kWarpN;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kStages = Traits::kStages;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using Ops = MmaOps<Element>;
  constexpr DecodeCacheHint kHint = kDecodeVariants[kVariant].hint;
  constexpr bool kPagesAhead = kDecodeVariants[kVariant].pages_ahead;
  constexpr bool kPagesEarly = kDecodeVariants[kVariant].pages_early;
  constexpr int kCopyIters = kKvCopyIters<kBlockN, kChunks>;
  constexpr int kHeads = Traits::kHeads;
  constexpr int kHeadRows = kBlockM / kHeads;  // query-tile rows per KV head
  constexpr bool kPageCache = Traits::kPageEntries > 0;
  constexpr bool kFused = kDecodeVariants[kVariant].fused_combine;
  constexpr bool kRotate = kDecodeVariants[kVariant].rotate;
  // How far the copy loops unroll (kDecodeVariants' copy_unroll; 64: whole).
  constexpr int kUnroll =
      kDecodeVariants[kVariant].copy_unroll > 0 ? kDecodeVariants[kVariant].copy_unroll : 64;
  // The compact kernels (copy_unroll > 0) send a split without allowed keys through the main path
  // (no tile is copied, the merge emits o = 0 and lse = -inf) instead of a second inlined copy of
  // the output code (4 KB of SASS).
  constexpr bool kEmptyThroughMainPath = kDecodeVariants[kVariant].copy_unroll > 0;
  // lean_cache: the cache's lookups inside the one copy loop (LoadKvTile's kTable).
  constexpr bool kLeanCache = kPageCache && kDecodeVariants[kVariant].lean_cache;
  constexpr int kSpecPerThread = (Traits::kPageEntries + kDecodeThreads - 1) / kDecodeThreads;
  static_assert(!((kPagesAhead || kPagesEarly) && kHeads > 1), "pages_* copy one head's rows");
  static_assert(!(kPagesAhead && kPagesEarly), "the entries load one way");
  static_assert(!(kPageCache && (kHeads > 1 || kPagesAhead || kPagesEarly)),
                "page_cache: one head, own lookups");
  static_assert(!(kFused && kHeads > 1), "fused_combine merges one KV head's rows");

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem);
  const uint32_t smem_kv = smem_q + Traits::kSmem.q_bytes;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const PageGeometry geo(p.page_size);

  // page_cache: the entries of the split a seqlen_k-key context would give, read before
  // LocateDecodeBlock's reads of the sequence's length (and key range) return.
  DecodeRange guess = {0, 0};
  int32_t spec[kSpecPerThread > 0 ? kSpecPerThread : 1];
  if constexpr (kPageCache) {
    if (p.page_table != nullptr && l.speculate_pages) {
      int b = 0;
      guess = GuessSplitPages<kHeadRows, kBlockN>(p, l, b);
      const int32_t* entries = p.page_table + int64_t{b} * p.page_table_stride + guess.lo;
#pragma unroll
      for (int j = 0; j < kSpecPerThread; ++j) {
        const int idx = tid + j * kDecodeThreads;
        spec[j] = idx < guess.hi - guess.lo ? __ldg(entries + idx) : 0;
      }
    }
  }

  DecodeBlock blk;
  if (!LocateDecodeBlock<kHeadRows, kBlockN, kHeads>(p, l, blk)) return;
  const Emitter<Element> emit{p, l, blk};
  if (!kEmptyThroughMainPath && blk.tile_begin >= blk.tile_end) {
    AllowDependentLaunch();
    EmitEmptyRows<Element, kHeads>(emit, p.head_dim, tid);
    if constexpr (kFused) {
      if (l.num_splits > 1) FinishFusedSplit<Element>(p, l, blk, blk.row0 / kHeadRows, tid);
    }
    return;
  }
  const int valid_chunks = p.head_dim / 8;
  const auto kv_offset = [](int row, int chunk) { return KVTile::Offset(row, chunk); };
  // pages_ahead / pages_early: `pages` holds the entries of the next tile the loop will copy.
  int32_t pages[kCopyIters] = {};
  const int32_t* pages_arg = kPagesAhead || kPagesEarly ? pages : nullptr;

  const auto load_q = [&] {
    LoadQTile<kBlockM, kChunks, 2, kHeads>(
        p, l, blk, smem_q, valid_chunks, tid,
        [](int row, int chunk) { return QTile::Offset(row, chunk); });
  };
  // page_cache: Q's copy first (it needs no page), then the split's entries into shared memory,
  // from the guess when it holds them (a split longer than the cache looks its pages up in
  // global memory, as without the cache).
  if constexpr (kPageCache) load_q();
  int32_t* page_cache = reinterpret_cast<int32_t*>(smem + Traits::kPageCacheOffset);
  bool cached = false;
  int cache_first = 0;
  if constexpr (kPageCache) {
    if (blk.page_row != nullptr) {
      const DecodeRange need = DecodeSplitPages(blk.tile_begin, blk.tile_end, blk.key_lo,
                                                blk.key_hi, kBlockN, p.page_size);
      cached = need.hi - need.lo <= Traits::kPageEntries;
      if (cached) {
        cache_first = need.lo;
        const bool hit = guess.lo == need.lo && need.hi <= guess.hi;
#pragma unroll
        for (int j = 0; j < kSpecPerThread; ++j) {
          const int idx = tid + j * kDecodeThreads;
          if (idx < need.hi - need.lo) {
            page_cache[idx] = hit ? spec[j] : __ldg(blk.page_row + cache_first + idx);
          }
        }
        __syncthreads();
      }
    }
  }
  const auto load_tile = [&](int tile, uint32_t base) {
    if constexpr (kLeanCache) {
      LoadKvTile<kBlockN, kChunks, 2, kHint, kHeads, kUnroll, true, kKv>(
          p, blk, tile, base, base + kHeads * KVTile::kBytes, valid_chunks, tid, kv_offset,
          pages_arg, &geo, KVTile::kBytes, cached ? page_cache : blk.page_row,
          cached ? cache_first : 0);
      return;
    }
    if constexpr (kPageCache) {
      if (cached) {
        LoadKvTileCached<kBlockN, kChunks, kHint, kUnroll>(p, blk, tile, base,
                                                           base + KVTile::kBytes, valid_chunks, tid,
                                                           kv_offset, page_cache, cache_first, geo);
        return;
      }
    }
    LoadKvTile<kBlockN, kChunks, 2, kHint, kHeads, kUnroll, false, kKv>(
        p, blk, tile, base, base + kHeads * KVTile::kBytes, valid_chunks, tid, kv_offset, pages_arg,
        &geo, KVTile::kBytes);
  };

  // The split's tiles in the order the block walks them: from tile_begin, or (rotate, outside
  // the deterministic mode) from an offset that depends on the sequence, head and split.
  const int n_tiles = blk.tile_end - blk.tile_begin;
  int rot = 0;
  if constexpr (kRotate) {
    if (l.split_tiles == 0 && n_tiles > 0) {
      rot = static_cast<int>((static_cast<uint32_t>(blk.b) * 40503u +
                              static_cast<uint32_t>(blk.g) * 9973u +
                              static_cast<uint32_t>(blk.split) * 7u) %
                             static_cast<uint32_t>(n_tiles));
    }
  }
  // The tile the block reads in place of tile t of its split (t itself without rotate).
  const auto tile_at = [&](int t) {
    if constexpr (kRotate) {
      const int j = t - blk.tile_begin + rot;
      return blk.tile_begin + (j < n_tiles ? j : j - n_tiles);
    } else {
      return t;
    }
  };

  // Prologue: Q with the first tile in copy group 0, then tiles 1 .. kStages - 2 (a group each,
  // empty past the split's end, so that the group count stays uniform).
  if constexpr (!kPageCache) load_q();
#pragma unroll kUnroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (blk.tile_begin + st < blk.tile_end) {
      const uint32_t base = smem_kv + st * Traits::kSmem.stage_bytes;
      if constexpr (kPagesAhead || kPagesEarly) {
        LoadTilePages<kBlockN, kChunks>(blk, geo, tile_at(blk.tile_begin + st), tid, pages);
      }
      load_tile(tile_at(blk.tile_begin + st), base);
    }
    CpAsyncCommit();
  }
  if constexpr (kPagesAhead) {
    if (blk.tile_begin + kStages - 1 < blk.tile_end) {
      LoadTilePages<kBlockN, kChunks>(blk, geo, tile_at(blk.tile_begin + kStages - 1), tid, pages);
    }
  }

  // Warp roles: rows [16 mw, 16 mw + 16) of the block, keys [kWarpN nw, + kWarpN) of each tile.
  const int mw = warp / kNWarps;
  const int nw = warp % kNWarps;
  const int member = kHeads > 1 ? mw : 0;  // the warp's KV head: g + member
  const int quad_row = lane / 4;           // accumulator rows quad_row and quad_row + 8
  const int quad_col = lane % 4;
  // ldmatrix lanes: A operand (Q) and transposed B operand (V) read row lane % 8 + 8 * ((lane / 8)
  // % 2) at chunk lane / 16; B operand (K) reads row lane % 8 + 8 * (lane / 16) at chunk
  // (lane / 8) % 2.
  const uint32_t a_row = lane % 8 + 8 * ((lane / 8) % 2);
  const uint32_t a_chunk = lane / 16;
  const uint32_t b_row = lane % 8 + 8 * (lane / 16);
  const uint32_t b_chunk = (lane / 8) % 2;
  const typename QTile::LaneBase q_lane = QTile::MakeLaneBase(smem_q, 16 * mw + a_row, a_chunk);

  // The two rows this thread holds: key bounds, positions, ALiBi slopes.
  int row_lo[2], row_hi[2], row_pos[2];
  float row_slope[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = 16 * mw + quad_row + 8 * hf - kHeadRows * member;  // row of the warp's head
    if (r < blk.rows) {
      const int packed = blk.row0 + r;
      const int i = packed / l.group;
      const DecodeRange kb = RowKeyBounds(p, blk, i);
      row_lo[hf] = kb.lo;
      row_hi[hf] = kb.hi;
      row_pos[hf] = i + blk.len_k - blk.n_q;
      row_slope[hf] = RowSlope(p, l, blk, packed, member);
    } else {
      row_lo[hf] = 1;
      row_hi[hf] = 0;
      row_pos[hf] = 0;
      row_slope[hf] = 0.f;
    }
  }
  const LogitTransform logit(p);

  float acc_o[kNTilesO][4];
#pragma unroll
  for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[dt][e] = 0.f;
  }
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this thread's share; reduced across the quad at the end

  int stage = 0;
  for (int t = blk.tile_begin; t < blk.tile_end; ++t) {
    const int tile = tile_at(t);
    // pages_early: the refill's entries load while this iteration waits for its tile.
    if constexpr (kPagesEarly) {
      if (blk.page_row != nullptr && t + kStages - 1 < blk.tile_end) {
        LoadTilePages<kBlockN, kChunks>(blk, geo, tile_at(t + kStages - 1), tid, pages);
      }
    }
    // Tile `tile` has landed, and every warp is done with the stage computed last iteration:
    // refill that stage with the tile kStages - 1 ahead.
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int ahead = t + kStages - 1;
      int ahead_stage = stage + kStages - 1;
      if (ahead_stage >= kStages) ahead_stage -= kStages;
      if (ahead < blk.tile_end) {
        const uint32_t base = smem_kv + ahead_stage * Traits::kSmem.stage_bytes;
        load_tile(tile_at(ahead), base);
        // The next refill's page entries load while this tile is computed.
        if constexpr (kPagesAhead) {
          if (ahead + 1 < blk.tile_end) {
            LoadTilePages<kBlockN, kChunks>(blk, geo, tile_at(ahead + 1), tid, pages);
          }
        }
      }
      CpAsyncCommit();
    }
    const uint32_t smem_k = smem_kv + stage * Traits::kSmem.stage_bytes;
    // A stage holds K of heads 0 .. kHeads - 1, then their V.
    const typename KVTile::LaneBase k_lane =
        KVTile::MakeLaneBase(smem_k + member * KVTile::kBytes, b_row, b_chunk);
    const typename KVTile::LaneBase v_lane =
        KVTile::MakeLaneBase(smem_k + (kHeads + member) * KVTile::kBytes, a_row, a_chunk);

    // S = Q K^T: the warp's 16 rows x its kWarpN keys.
    float acc_s[kNTilesS][4];
#pragma unroll
    for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[nt][e] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      uint32_t q_frag[4];
      LdsmX4(q_frag, QTile::LdsmAddress(q_lane, 0, 2 * ks));
#pragma unroll
      for (int np = 0; np < kNTilesS / 2; ++np) {
        uint32_t k_frag[4];
        LdsmX4(k_frag, KVTile::LdsmAddress(k_lane, kWarpN * nw + 16 * np, 2 * ks));
        Ops::Mma(acc_s[2 * np], q_frag, k_frag[0], k_frag[1]);
        Ops::Mma(acc_s[2 * np + 1], q_frag, k_frag[2], k_frag[3]);
      }
    }

    // Logits (base 2) and the online softmax of the two rows.
    const int key0 = tile * kBlockN + kWarpN * nw;
    float alpha[2];
    bool moved = false;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = row_max[hf];
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = key0 + 8 * nt + 2 * quad_col + e;
          const float x = logit.Apply<false, kGeneralLogits>(
              acc_s[nt][2 * hf + e], key, row_pos[hf], row_slope[hf], row_lo[hf], row_hi[hf]);
          acc_s[nt][2 * hf + e] = x;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row without an allowed key so far keeps max -inf; subtracting 0 keeps its P at 0.
      const float ref = mx == -INFINITY ? 0.f : mx;
      alpha[hf] = Exp2(row_max[hf] - ref);
      moved |= mx != row_max[hf];
      row_max[hf] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = Exp2(acc_s[nt][2 * hf + e] - ref);
          acc_s[nt][2 * hf + e] = pe;
          sum += pe;
        }
      }
      row_sum[hf] = row_sum[hf] * alpha[hf] + sum;
    }
    // Once the maxima settle, alpha is 1 for every row of the warp: skip the rescale.
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        acc_o[dt][0] *= alpha[0];
        acc_o[dt][1] *= alpha[0];
        acc_o[dt][2] *= alpha[1];
        acc_o[dt][3] *= alpha[1];
      }
    }

    // O += P V. P's A fragment for keys [16 kk, 16 kk + 16) of the slice is the S accumulators
    // of n8 tiles 2 kk and 2 kk + 1, rounded to 16 bits.
#pragma unroll
    for (int kk = 0; kk < kWarpN / 16; ++kk) {
      uint32_t p_frag[4];
      p_frag[0] = Ops::Pack(acc_s[2 * kk][0], acc_s[2 * kk][1]);
      p_frag[1] = Ops::Pack(acc_s[2 * kk][2], acc_s[2 * kk][3]);
      p_frag[2] = Ops::Pack(acc_s[2 * kk + 1][0], acc_s[2 * kk + 1][1]);
      p_frag[3] = Ops::Pack(acc_s[2 * kk + 1][2], acc_s[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kNTilesO / 2; ++dp) {
        uint32_t v_frag[4];
        LdsmX4Trans(v_frag, KVTile::LdsmAddress(v_lane, kWarpN * nw + 16 * kk, 2 * dp));
        Ops::Mma(acc_o[2 * dp], p_frag, v_frag[0], v_frag[1]);
        Ops::Mma(acc_o[2 * dp + 1], p_frag, v_frag[2], v_frag[3]);
      }
    }
    if (++stage == kStages) stage = 0;
  }
  AllowDependentLaunch();

  // Merge the warps' states through shared memory (the stages are free once every copy has
  // landed and every warp has left the loop): warp w writes O [16, kHeadDim] (unnormalized), its
  // row maxima (base 2) and its row sums.
  CpAsyncWait<0>();
  __syncthreads();
  float* merge_o = reinterpret_cast<float*>(smem + Traits::kSmem.q_bytes);
  float* merge_max = merge_o + kDecodeWarps * 16 * Traits::kMergeStride;
  float* merge_sum = merge_max + kDecodeWarps * 16;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float sum = row_sum[hf];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = quad_row + 8 * hf;
    float* dst = merge_o + (warp * 16 + r) * Traits::kMergeStride + 2 * quad_col;
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
      *reinterpret_cast<float2*>(dst + 8 * dt) =
          make_float2(acc_o[dt][2 * hf], acc_o[dt][2 * hf + 1]);
    }
    if (quad_col == 0) {
      merge_max[warp * 16 + r] = row_max[hf];
      merge_sum[warp * 16 + r] = sum;
    }
  }
  __syncthreads();

  // Each (row, 4-column chunk): the kNWarps key slices of the row merged, normalized, emitted.
  const int chunks = p.head_dim / 4;
  const int per_head = blk.rows * chunks;
  for (int idx = tid; idx < kHeads * per_head; idx += kDecodeThreads) {
    const int head = kHeads > 1 ? idx / per_head : 0;
    const int r = (kHeads > 1 ? idx % per_head : idx) / chunks;  // row of head g + head
    const int c4 = idx % chunks;
    const int tile_row = kHeadRows * head + r;
    const int w0 = (tile_row / 16) * kNWarps;
    const int rr = tile_row % 16;
    float m = -INFINITY;
#pragma unroll
    for (int n = 0; n < kNWarps; ++n) m = fmaxf(m, merge_max[(w0 + n) * 16 + rr]);
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    float lse = -INFINITY;
    if (m != -INFINITY) {
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kNWarps; ++n) {
        const float w = Exp2(merge_max[(w0 + n) * 16 + rr] - m);
        sum += w * merge_sum[(w0 + n) * 16 + rr];
        const float4 part = *reinterpret_cast<const float4*>(
            merge_o + ((w0 + n) * 16 + rr) * Traits::kMergeStride + 4 * c4);
        o.x += w * part.x;
        o.y += w * part.y;
        o.z += w * part.z;
        o.w += w * part.w;
      }
      const float inv = 1.f / sum;
      o = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
      lse = (m + log2f(sum)) * kLn2;
    }
    emit(r, c4, o, lse, head);
  }
  if constexpr (kFused) {
    if (l.num_splits > 1) FinishFusedSplit<Element>(p, l, blk, blk.row0 / kHeadRows, tid);
  }
}

// ------------------------------------------------------------------------------------------------
// The float32 kernel (CUDA cores, float32 accuracy).

template <int kHeadDim_>
struct Decode32Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kDecodeFp32BlockM;
  static constexpr int kBlockN = kDecodeBlockN32;
  static constexpr int kChunks = kHeadDim / 4;                 // 16-byte chunks per row
  static constexpr int kChunksPerLane = (kChunks + 31) / 32;   // P V: a lane's column chunks
  static constexpr int kRowsPerWarp = kBlockM / kDecodeWarps;  // rows warp, warp + 4, ...
  static constexpr DecodeSmem kSmem = DecodeSmem32(kHeadDim);
  static constexpr int kStages = kSmem.stages;
  static constexpr int kTileBytes = kBlockN * kHeadDim * 4;
  static_assert(kChunks % 8 == 0, "the swizzle permutes chunks within groups of 8");
  static_assert(kBlockN == 32, "one key per lane");
  static_assert(2 * kTileBytes == kSmem.stage_bytes, "decode_heuristics.h sizes the same tiles");

  // Chunk `chunk` of K/V row `row` sits at chunk position (chunk & ~7) | ((chunk ^ row) & 7), so
  // that the 8 lanes of an LDS.128 phase reading one chunk of 8 consecutive rows hit 8 distinct
  // 16-byte bank groups.
  static __device__ __forceinline__ uint32_t KvOffset(int row, int chunk) {
    return static_cast<uint32_t>(row * (kHeadDim * 4) +
                                 (((chunk & ~7) | ((chunk ^ row) & 7)) << 4));
  }
};

template <typename Traits>
__global__ void __launch_bounds__(kDecodeThreads, 1)
    FlashDecodeKernel32(const __grid_constant__ AttentionParams p,
                        const __grid_constant__ DecodeLaunch l) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kChunksPerLane = Traits::kChunksPerLane;
  constexpr int kRowsPerWarp = Traits::kRowsPerWarp;
  constexpr int kStages = Traits::kStages;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem);
  const uint32_t smem_kv = smem_q + Traits::kSmem.q_bytes;
  const float* q_tile = reinterpret_cast<const float*>(smem);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;

  DecodeBlock blk;
  if (!LocateDecodeBlock<kBlockM, kBlockN>(p, l, blk)) return;
  const Emitter<float> emit{p, l, blk};
  if (blk.tile_begin >= blk.tile_end) {
    AllowDependentLaunch();
    EmitEmptyRows(emit, p.head_dim, tid);
    return;
  }
  const int valid_chunks = p.head_dim / 4;
  const auto kv_offset = [](int row, int chunk) { return Traits::KvOffset(row, chunk); };

  LoadQTile<kBlockM, kChunks, 4>(p, l, blk, smem_q, valid_chunks, tid, [](int row, int chunk) {
    return static_cast<uint32_t>((row * kChunks + chunk) * 16);
  });
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (blk.tile_begin + st < blk.tile_end) {
      const uint32_t base = smem_kv + st * Traits::kSmem.stage_bytes;
      LoadKvTile<kBlockN, kChunks, 4>(p, blk, blk.tile_begin + st, base, base + Traits::kTileBytes,
                                      valid_chunks, tid, kv_offset);
    }
    CpAsyncCommit();
  }

  // Warp `warp` owns block rows warp + 4 j (j < kRowsPerWarp); `rows_here` of them are valid
  // (warp-uniform).
  const int rows_here = blk.rows > warp ? (blk.rows - warp + kDecodeWarps - 1) / kDecodeWarps : 0;
  int row_lo[kRowsPerWarp], row_hi[kRowsPerWarp], row_pos[kRowsPerWarp];
  float row_slope[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int r = warp + kDecodeWarps * j;
    if (j < rows_here) {
      const int packed = blk.row0 + r;
      const int i = packed / l.group;
      const DecodeRange kb = RowKeyBounds(p, blk, i);
      row_lo[j] = kb.lo;
      row_hi[j] = kb.hi;
      row_pos[j] = i + blk.len_k - blk.n_q;
      row_slope[j] = RowSlope(p, l, blk, packed);
    } else {
      row_lo[j] = 1;
      row_hi[j] = 0;
      row_pos[j] = 0;
      row_slope[j] = 0.f;
    }
  }
  const LogitTransform logit(p);

  float4 acc_o[kRowsPerWarp][kChunksPerLane];
  float row_max[kRowsPerWarp];
  float row_sum[kRowsPerWarp];  // this lane's share
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    row_max[j] = -INFINITY;
    row_sum[j] = 0.f;
#pragma unroll
    for (int c = 0; c < kChunksPerLane; ++c) acc_o[j][c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  int stage = 0;
  for (int tile = blk.tile_begin; tile < blk.tile_end; ++tile) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int ahead = tile + kStages - 1;
      int ahead_stage = stage + kStages - 1;
      if (ahead_stage >= kStages) ahead_stage -= kStages;
      if (ahead < blk.tile_end) {
        const uint32_t base = smem_kv + ahead_stage * Traits::kSmem.stage_bytes;
        LoadKvTile<kBlockN, kChunks, 4>(p, blk, ahead, base, base + Traits::kTileBytes,
                                        valid_chunks, tid, kv_offset);
      }
      CpAsyncCommit();
    }
    const unsigned char* k_tile = smem + Traits::kSmem.q_bytes + stage * Traits::kSmem.stage_bytes;
    const unsigned char* v_tile = k_tile + Traits::kTileBytes;

    // S: lane = key, one dot product per row of the warp.
    float s[kRowsPerWarp];
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) s[j] = 0.f;
#pragma unroll 4
    for (int c = 0; c < kChunks; ++c) {
      const float4 kv = *reinterpret_cast<const float4*>(k_tile + Traits::KvOffset(lane, c));
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        if (j < rows_here) {
          const float4 qv = *reinterpret_cast<const float4*>(
              q_tile + (warp + kDecodeWarps * j) * kHeadDim + 4 * c);
          s[j] = fmaf(qv.x, kv.x, s[j]);
          s[j] = fmaf(qv.y, kv.y, s[j]);
          s[j] = fmaf(qv.z, kv.z, s[j]);
          s[j] = fmaf(qv.w, kv.w, s[j]);
        }
      }
    }

    const int key = tile * kBlockN + lane;
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      if (j >= rows_here) continue;
      const float x = logit.Apply<true>(s[j], key, row_pos[j], row_slope[j], row_lo[j], row_hi[j]);
      float mx = fmaxf(row_max[j], x);
#pragma unroll
      for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float ref = mx == -INFINITY ? 0.f : mx;
      const float alpha = Exp2(row_max[j] - ref);
      row_max[j] = mx;
      s[j] = Exp2(x - ref);
      row_sum[j] = row_sum[j] * alpha + s[j];
      if (alpha != 1.f) {
#pragma unroll
        for (int c = 0; c < kChunksPerLane; ++c) {
          acc_o[j][c].x *= alpha;
          acc_o[j][c].y *= alpha;
          acc_o[j][c].z *= alpha;
          acc_o[j][c].w *= alpha;
        }
      }
    }

    // O += P V: lane = column chunk; P of key n comes from lane n.
#pragma unroll 4
    for (int n = 0; n < kBlockN; ++n) {
      float4 vv[kChunksPerLane];
#pragma unroll
      for (int c = 0; c < kChunksPerLane; ++c) {
        const int chunk = lane + 32 * c;
        vv[c] = chunk < kChunks
                    ? *reinterpret_cast<const float4*>(v_tile + Traits::KvOffset(n, chunk))
                    : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        if (j >= rows_here) continue;
        const float pn = __shfl_sync(0xffffffffu, s[j], n);
#pragma unroll
        for (int c = 0; c < kChunksPerLane; ++c) {
          acc_o[j][c].x = fmaf(pn, vv[c].x, acc_o[j][c].x);
          acc_o[j][c].y = fmaf(pn, vv[c].y, acc_o[j][c].y);
          acc_o[j][c].z = fmaf(pn, vv[c].z, acc_o[j][c].z);
          acc_o[j][c].w = fmaf(pn, vv[c].w, acc_o[j][c].w);
        }
      }
    }
    if (++stage == kStages) stage = 0;
  }
  AllowDependentLaunch();
  CpAsyncWait<0>();

#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    if (j >= rows_here) continue;
    float sum = row_sum[j];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const bool empty = row_max[j] == -INFINITY;
    const float inv = empty ? 0.f : 1.f / sum;
    const float lse = empty ? -INFINITY : (row_max[j] + log2f(sum)) * kLn2;
#pragma unroll
    for (int c = 0; c < kChunksPerLane; ++c) {
      const int chunk = lane + 32 * c;
      if (chunk < valid_chunks) {
        const float4 o = acc_o[j][c];
        emit(warp + kDecodeWarps * j, chunk,
             make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv), lse);
      }
    }
  }
}

}  // namespace attention::cuda::decode

#endif  // ATTENTION_KERNELS_CUDA_FLASH_DECODE_KERNEL_CUH_
