// Device code shared by the two forward kernels (mma.sync, flash_fwd_kernel.cuh; wgmma,
// flash_fwd_sm90_kernel.cuh): tile copies (contiguous and paged K / V), the block's coordinates,
// the KV tile order, the score -> logit transform, the bounds mask, the online softmax and the
// epilogue (attention sinks included).
//
// Both kernels hold S and O in the same per-warp register layout: a warp owns 16 * kMTiles query
// rows, and accumulator acc[mt][j][e] of lane l is row 16 * mt + l / 4 + 8 * (e / 2), column
// 8 * j + 2 * (l % 4) + e % 2 of the warp's rows (the mma.sync m16n8 layout, which wgmma's m64nN
// accumulators repeat per warp of the warpgroup).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_COMMON_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/softmax_epilogue.h"

namespace attention::cuda::fwd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Copies rows [0, valid_rows) x 16-byte chunks [0, valid_chunks) of a [kRows, kHeadDim] global
// tile (row stride `row_stride` elements) into the swizzled shared tile at `smem_tile`; the rest
// of the shared tile is zero-filled, so padded rows and columns contribute nothing to S or O.
template <typename Traits, int kRows, typename Element>
__device__ __forceinline__ void LoadTile(uint32_t smem_tile, const Element* gmem,
                                         int64_t row_stride, int valid_rows, int valid_chunks,
                                         int tid) {
  using Tile = SmemTile<kRows, Traits::kHeadDim>;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  if constexpr (kThreads % kChunks == 0) {
    // Every thread copies the same chunk column of rows tid / kChunks + it * kRowsPerIter. The
    // source pointer advances by one stride per iteration rather than being recomputed, which
    // keeps per-iteration 64-bit offsets from being hoisted into registers.
    constexpr int kRowsPerIter = kThreads / kChunks;
    const int row0 = tid / kChunks;
    const int chunk = tid % kChunks;
    const int64_t step = kRowsPerIter * row_stride;
    const Element* src = gmem + row0 * row_stride + chunk * 8;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowsPerIter;
      if (kTotal % kThreads == 0 || row < kRows) {
        const bool pred = row < valid_rows && chunk < valid_chunks;
        // Predicated-off copies read nothing, so their address needs no clamping; the
        // one-stage kernels clamp it anyway because ptxas then allocates their registers without
        // spills (bench/cuda/NOTES.md, run 3: -11% for d = 256 with the spills).
        CpAsync16(smem_tile + Tile::Offset(row, chunk),
                  Traits::kKVStages == 1 && !pred ? gmem : src, pred);
      }
      src += step;
    }
  } else {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = tid + it * kThreads;
      const int row = idx / kChunks;
      const int chunk = idx % kChunks;
      if (kTotal % kThreads == 0 || row < kRows) {
        const bool pred = row < valid_rows && chunk < valid_chunks;
        CpAsync16(smem_tile + Tile::Offset(row, chunk), gmem + row * row_stride + chunk * 8, pred);
      }
    }
  }
}

// A block whose rows have no allowed key at all: o = 0 and lse = `empty_lse` for its valid rows
// (-inf, or the sink's logit with attention sinks).
template <typename Traits, typename Element>
__device__ __forceinline__ void StoreEmptyRows(Element* o, int64_t o_row_stride, float* lse,
                                               float empty_lse, int rows, int valid_chunks,
                                               int tid) {
  constexpr int kChunks = Traits::kChunks;
  for (int idx = tid; idx < rows * kChunks; idx += Traits::kNThreads) {
    const int r = idx / kChunks;
    const int c = idx % kChunks;
    if (c < valid_chunks) {
      *reinterpret_cast<uint4*>(o + r * o_row_stride + c * 8) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  if (lse != nullptr) {
    for (int r = tid; r < rows; r += Traits::kNThreads) lse[r] = empty_lse;
  }
}

// Where one block works: its (sequence, head), its query rows [row0, row0 + rows), its allowed
// keys [key_begin, key_end) before the window (the whole sequence [0, len_k), or the sequence's
// key range in the paged variants) and the pointers of attention_params.h's addressing rule (q,
// o and lse at row0; k and v at key 0, or, paged, at the pools' first page).
template <typename Element>
struct BlockCoords {
  int batch, head;
  int row0, rows;
  int len_q, len_k;
  int left, right;  // the window sides of the variant (-1 = unbounded)
  int key_begin, key_end;
  const Element* q;
  const Element* k;
  const Element* v;
  Element* o;
  float* lse;
  // Paged variants only: the sequence's row of the page table and log2(page_size).
  const int32_t* pages;
  int page_shift;
};

// Fills `c` for query tile blockIdx.x of head blockIdx.y of sequence blockIdx.z; returns false
// when the tile starts past the sequence (packed batches size the grid by the longest one).
template <int kBlockM, bool kHasWindow, bool kPaged, typename Element>
__device__ __forceinline__ bool LocateBlock(const AttentionParams& p, BlockCoords<Element>& c) {
  c.head = blockIdx.y;
  c.batch = blockIdx.z;
  c.left = kHasWindow ? p.window_left : -1;
  c.right = kHasWindow ? p.window_right : -1;
  // With a right limit (causal), a block's cost grows with its row index: run the most expensive
  // blocks first so that the cheap ones fill the tail of the grid.
  const int m_block =
      c.right >= 0 ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  // Sequence bounds: dense batches use seqlen_q / seqlen_k, packed ones cu_seqlens; a paged
  // context's length is seqlens_k (q may still be packed).
  int64_t q_start = 0;
  int64_t k_start = 0;
  c.len_q = p.seqlen_q;
  c.len_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[c.batch];
    c.len_q = p.cu_seqlens_q[c.batch + 1] - static_cast<int>(q_start);
    if constexpr (!kPaged) {
      k_start = p.cu_seqlens_k[c.batch];
      c.len_k = p.cu_seqlens_k[c.batch + 1] - static_cast<int>(k_start);
    }
  }
  if constexpr (kPaged) c.len_k = p.seqlens_k[c.batch];
  c.row0 = m_block * kBlockM;
  if (c.row0 >= c.len_q) return false;
  c.rows = min(kBlockM, c.len_q - c.row0);
  c.key_begin = 0;
  c.key_end = c.len_k;
  const int kv_head = c.head / (p.q_heads / p.kv_heads);
  c.q = static_cast<const Element*>(p.q) + c.batch * p.q_batch_stride +
        (q_start + c.row0) * p.q_row_stride + c.head * p.q_head_stride;
  if constexpr (kPaged) {
    // k and v are page pools: the batch strides are the page strides, applied per tile row.
    c.k = static_cast<const Element*>(p.k) + kv_head * p.k_head_stride;
    c.v = static_cast<const Element*>(p.v) + kv_head * p.v_head_stride;
    c.pages = p.page_table + c.batch * p.page_table_stride;
    c.page_shift = __ffs(p.page_size) - 1;
    if (p.key_range != nullptr) {
      // Clamped to the context; an empty or inverted range leaves no key.
      c.key_begin = min(max(p.key_range[2 * c.batch], 0), c.len_k);
      c.key_end = max(min(p.key_range[2 * c.batch + 1], c.len_k), c.key_begin);
    }
  } else {
    c.k = static_cast<const Element*>(p.k) + c.batch * p.k_batch_stride + k_start * p.k_row_stride +
          kv_head * p.k_head_stride;
    c.v = static_cast<const Element*>(p.v) + c.batch * p.v_batch_stride + k_start * p.v_row_stride +
          kv_head * p.v_head_stride;
    c.pages = nullptr;
    c.page_shift = 0;
  }
  c.o = static_cast<Element*>(p.o) + c.batch * p.o_batch_stride +
        (q_start + c.row0) * p.o_row_stride + c.head * p.o_head_stride;
  c.lse = p.lse == nullptr ? nullptr
                           : p.lse + c.batch * p.lse_batch_stride + c.head * p.lse_head_stride +
                                 q_start + c.row0;
  return true;
}

// The sink's logit of the block's (sequence, head), or -inf without attention sinks.
template <typename Element>
__device__ __forceinline__ float SinkLogit(const AttentionParams& p,
                                           const BlockCoords<Element>& c) {
  return p.sink_logits != nullptr ? p.sink_logits[c.batch * p.sink_batch_stride + c.head]
                                  : -INFINITY;
}

// A kernel's start: the block's coordinates `c` and KV tile range `tiles`. Returns false when the
// block has nothing left to do: it starts past its sequence, or none of its rows has an allowed
// key (then it has written o = 0 and lse = -inf, or the sink's logit, for them).
template <typename Traits, FwdVariant kVariant, typename Element>
__device__ __forceinline__ bool BeginBlock(const AttentionParams& p, BlockCoords<Element>& c,
                                           KvTileRange& tiles) {
  if (!LocateBlock<Traits::kBlockM, VariantHasWindow(kVariant), VariantIsPaged(kVariant)>(p, c)) {
    return false;
  }
  tiles = KvTilesInRange(c.row0, c.rows, c.len_q, c.len_k, Traits::kBlockN, c.left, c.right,
                         c.key_begin, c.key_end);
  if (tiles.end > tiles.begin) return true;
  StoreEmptyRows<Traits>(c.o, p.o_row_stride, c.lse, SinkLogit(p, c), c.rows, p.head_dim / 8,
                         static_cast<int>(threadIdx.x));
  return false;
}

// Copies 4 bytes from global to shared memory asynchronously (cp.async.ca: the 4-byte form goes
// through L1); when `pred` is false nothing is read and the 4 bytes are zero-filled.
__device__ __forceinline__ void CpAsync4(uint32_t smem_addr, const void* gmem, bool pred) {
  const int src_bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_bytes));
}

// Paged K / V (the paged variants). Key j of the block's sequence is row j % page_size of page
// pages[j / page_size] of the K and V pools; which page of a tile holds which row is
// block_info.h's (TilePage, TileRowPage, TileRowInPage).
//
// Each block keeps the page-table entries of the tiles it is about to load in kPageSlots shared
// slots of kPageEntries entries (tile n in slot n % kPageSlots), copied with cp.async two steps
// before the K / V copies that read them, so that the K / V copies never wait on a page-table
// read: a tile's entries land with the copy group they were committed in, and the barrier at the
// top of every step publishes them to all threads. A slot is rewritten two steps after its last
// read (the kernels' loops say which steps read which slots).

// Index of entry `e` of tile `n`'s page slot in the slots (int32 [kPageSlots, kPageEntries] in
// shared memory). The kernels read the slots with plain loads, which the compiler may gather
// ahead of the copies that use them but not move above the barrier that publishes them.
template <typename Traits>
__device__ __forceinline__ int PageSlotIndex(int n, int e) {
  return (n % Traits::kPageSlots) * Traits::kPageEntries + e;
}

// Copies the page-table entries of KV tile `n` into its slot: thread e < kPageEntries copies entry
// e when that page holds a key of [key_begin, key_end), and zero-fills it otherwise, so that no
// page-table entry outside the key range (nor past the context) is ever read. Part of the
// caller's next commit group; n >= 0.
template <typename Traits, typename Element>
__device__ __forceinline__ void CopyTilePages(int32_t* slots, const BlockCoords<Element>& c, int n,
                                              int tid) {
  if (tid < Traits::kPageEntries) {
    const bool valid =
        TilePageNeeded(n, Traits::kBlockN, tid, c.page_shift, c.key_begin, c.key_end);
    const int page = valid ? TilePage(n, Traits::kBlockN, tid, c.page_shift) : 0;
    CpAsync4(SmemAddress(slots + PageSlotIndex<Traits>(n, tid)), c.pages + page, valid);
  }
}

// The per-row copy (pages too small for the page-grouped copy below): visits the copies of KV
// tile `n` of a paged pool this thread issues (the same rows and chunks as LoadTile's): copy(row,
// chunk, page, in_page, pred) for tile row `row`, 16-byte chunk `chunk`, the row's page and its row
// within the page. pred says whether the row holds a key of [key_begin, key_end) and the chunk is
// below valid_chunks; page_of(e) (the tile's e-th page) is called only then, and page is 0
// otherwise.
template <typename Traits, typename Element, typename PageOf, typename Copy>
__device__ __forceinline__ void ForEachPagedChunk(const BlockCoords<Element>& c, int n,
                                                  int valid_chunks, PageOf&& page_of, Copy&& copy,
                                                  int tid) {
  constexpr int kRows = Traits::kBlockN;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  const int key0 = n * kRows;
  const int row_lo = c.key_begin - key0;
  const int row_hi = c.key_end - key0;
  const auto visit = [&](int row, int chunk) {
    const bool pred = row >= row_lo && row < row_hi && chunk < valid_chunks;
    const int page = pred ? page_of(TileRowPage(row, c.page_shift)) : 0;
    copy(row, chunk, page, TileRowInPage(n, kRows, row, c.page_shift), pred);
  };
  if constexpr (kThreads % kChunks == 0) {
    // As LoadTile: every thread copies one chunk column of rows tid / kChunks + it * kRowsPerIter.
    constexpr int kRowsPerIter = kThreads / kChunks;
    const int row0 = tid / kChunks;
    const int chunk = tid % kChunks;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowsPerIter;
      if (kTotal % kThreads == 0 || row < kRows) visit(row, chunk);
    }
  } else {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = tid + it * kThreads;
      const int row = idx / kChunks;
      if (kTotal % kThreads == 0 || row < kRows) visit(row, idx % kChunks);
    }
  }
}

// One paged pool (K or V): `base` is the pool at the block's KV head, `page_stride` and
// `row_stride` its strides in elements, `smem_tile` the swizzled shared tile it is copied into.
template <typename Element>
struct PagedPool {
  uint32_t smem_tile;
  const Element* base;
  int64_t page_stride;
  int64_t row_stride;
};

// Whether the page-grouped copy (block_info.h, ThreadPageGroupRows) fits the traits' tile copy:
// whole passes of kRowsPerPass = kNThreads / kChunks rows, a power of two of at least 8. It then
// takes every page size of at least 8 * kBlockN / kRowsPerPass keys (PageGroupsFit): all of them
// (kMinPageSize and up) when kPageGroupedCopyOnly, and the per-row copy is not compiled.
template <typename Traits>
inline constexpr int kRowsPerPass = Traits::kNThreads / Traits::kChunks;
template <typename Traits>
inline constexpr bool kHasPageGroupedCopy =
    Traits::kNThreads % Traits::kChunks == 0 &&
    (Traits::kBlockN * Traits::kChunks) % Traits::kNThreads == 0 && kRowsPerPass<Traits> >= 8 &&
    (kRowsPerPass<Traits> & (kRowsPerPass<Traits> - 1)) == 0;
template <typename Traits>
inline constexpr bool kPageGroupedCopyOnly =
    kHasPageGroupedCopy<Traits> && 8 * Traits::kBlockN / kRowsPerPass<Traits> <= kMinPageSize;

// The page-grouped copy of tile `n` (PageGroupsFit holds): this thread's rows all lie in the
// tile's page g.page, so one page-table entry per tile, one 64-bit page offset per pool, and then
// one pointer step per row, as LoadTile. The rows out of [key_begin, key_end) and the chunks past
// valid_chunks are zero-filled; page_of(g.page) is called only when that page holds a key of the
// range (TilePageNeeded), so every page-table entry it reads is valid.
template <typename Traits, typename Element, int kPools, typename PageOf>
__device__ __forceinline__ void LoadPagedTilesGrouped(const PagedPool<Element> (&pools)[kPools],
                                                      const BlockCoords<Element>& c, int n,
                                                      int valid_chunks, PageOf&& page_of, int tid) {
  using Tile = SmemTile<Traits::kBlockN, Traits::kHeadDim>;
  constexpr int kRows = Traits::kBlockN;
  constexpr int kIters = kRows * Traits::kChunks / Traits::kNThreads;
  const PageGroupRows g =
      ThreadPageGroupRows(tid, Traits::kNThreads, Traits::kChunks, kRows, c.page_shift);
  const int key_first = n * kRows + g.first_row;
  const bool needed = TilePageNeeded(n, kRows, g.page, c.page_shift, c.key_begin, c.key_end);
  const int page = needed ? page_of(g.page) : 0;
  // The first row's position in its page: the tile's offset in the page plus the row when one
  // page holds the whole tile (pages of kBlockN keys or more), the row's within its page else.
  const int in_page = key_first & ((1 << c.page_shift) - 1);
  const bool chunk_ok = g.chunk < valid_chunks;
  // Keys [key_begin, key_end) as rows relative to key_first: one unsigned compare per row.
  const uint32_t row_lo = static_cast<uint32_t>(c.key_begin - key_first);
  const uint32_t rows_in_range = static_cast<uint32_t>(c.key_end - c.key_begin);
  // Rows g.row_step apart (a multiple of 8) keep their position in the swizzle: one shared
  // offset step per row (rows of 128 bytes, or 64 in a trailing 32-column panel).
  const uint32_t smem_first = Tile::Offset(g.first_row, g.chunk);
  const uint32_t smem_step = static_cast<uint32_t>(g.row_step) * Tile::RowBytes(g.chunk);
#pragma unroll
  for (int i = 0; i < kPools; ++i) {
    const Element* src =
        pools[i].base + page * pools[i].page_stride + in_page * pools[i].row_stride + g.chunk * 8;
    const int64_t step = g.row_step * pools[i].row_stride;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const uint32_t rel = static_cast<uint32_t>(it * g.row_step) - row_lo;
      CpAsync16(pools[i].smem_tile + smem_first + it * smem_step, src,
                chunk_ok && rel < rows_in_range);
      src += step;
    }
  }
}

// Whether this block's tiles take the page-grouped copy (pages of c.page_shift).
template <typename Traits>
__device__ __forceinline__ bool UsesPageGroupedCopy(int page_shift) {
  if constexpr (kPageGroupedCopyOnly<Traits>) {
    return true;
  } else if constexpr (kHasPageGroupedCopy<Traits>) {
    return PageGroupsFit(Traits::kBlockN, kRowsPerPass<Traits>, page_shift);
  } else {
    return false;
  }
}

// The page-table entry of the e-th page of tile `n` when that page holds a key of [key_begin,
// key_end), 0 otherwise (no entry outside the range is read): the page-grouped copy's page of a
// thread, read straight from global memory into a register steps before its copy.
template <typename Traits, typename Element>
__device__ __forceinline__ int32_t ThreadTilePage(const BlockCoords<Element>& c, int n, int e) {
  return TilePageNeeded(n, Traits::kBlockN, e, c.page_shift, c.key_begin, c.key_end)
             ? __ldg(c.pages + TilePage(n, Traits::kBlockN, e, c.page_shift))
             : 0;
}

// Copies KV tile `n` of the paged pools `pools` (one, or K and V of the same tile, which share
// their pages) into their shared tiles: the rows that hold keys of [key_begin, key_end) and
// 16-byte chunks [0, valid_chunks), zero-filling the rest (which the bounds mask then drops).
// The page-grouped copy where it fits (on the wgmma kernel every page size at d = 64 and pages
// of 64 keys or more at d = 128); the rest reads each row's page-table entry and computes its
// address.
template <typename Traits, typename Element, int kPools, typename PageOf>
__device__ __forceinline__ void LoadPagedTiles(const PagedPool<Element> (&pools)[kPools],
                                               const BlockCoords<Element>& c, int n,
                                               int valid_chunks, PageOf&& page_of, int tid) {
  if constexpr (kPageGroupedCopyOnly<Traits>) {
    LoadPagedTilesGrouped<Traits>(pools, c, n, valid_chunks, page_of, tid);
  } else {
    if (UsesPageGroupedCopy<Traits>(c.page_shift)) {
      LoadPagedTilesGrouped<Traits>(pools, c, n, valid_chunks, page_of, tid);
      return;
    }
    using Tile = SmemTile<Traits::kBlockN, Traits::kHeadDim>;
    ForEachPagedChunk<Traits>(
        c, n, valid_chunks, page_of,
        [&](int row, int chunk, int page, int in_page, bool pred) {
#pragma unroll
          for (int i = 0; i < kPools; ++i) {
            const Element* src = pools[i].base + page * pools[i].page_stride +
                                 in_page * pools[i].row_stride + chunk * 8;
            CpAsync16(pools[i].smem_tile + Tile::Offset(row, chunk), src, pred);
          }
        },
        tid);
  }
}

// The prologue's copy of tile `n`, its page-table entries read from global memory (the slots fill
// only with the prologue's copy group).
template <typename Traits, typename Element, int kPools>
__device__ __forceinline__ void LoadPagedTilesDirect(const PagedPool<Element> (&pools)[kPools],
                                                     const BlockCoords<Element>& c, int n,
                                                     int valid_chunks, int tid) {
  LoadPagedTiles<Traits>(
      pools, c, n, valid_chunks,
      [&](int e) { return c.pages[TilePage(n, Traits::kBlockN, e, c.page_shift)]; }, tid);
}

// A later copy of tile `n`, its page-table entries read from its slot.
template <typename Traits, typename Element, int kPools>
__device__ __forceinline__ void LoadPagedTilesFromSlot(const PagedPool<Element> (&pools)[kPools],
                                                       const BlockCoords<Element>& c, int n,
                                                       int valid_chunks, const int32_t* slots,
                                                       int tid) {
  const int32_t* slot = slots + PageSlotIndex<Traits>(n, 0);
  LoadPagedTiles<Traits>(
      pools, c, n, valid_chunks, [&](int e) { return slot[e]; }, tid);
}

// Scores enter the softmax as s * scale_log2 (base-2 logits). The dense and window variants keep
// raw q.k scores and fold the softmax scale into that factor; the general variant turns scores
// into logits first (softcap, ALiBi and masks act on logits) and uses log2(e).
template <FwdVariant kVariant>
__device__ __forceinline__ float SoftmaxScaleLog2(const AttentionParams& p) {
  return VariantIsGeneral(kVariant) ? kLog2e : p.softmax_scale * kLog2e;
}

// Runs step(n, std::true_type / std::false_type) over KV tiles [tiles.begin, tiles.end) in
// descending order: tiles [top, end) need the element-wise mask (sequence tail, right side of the
// window), then [bottom, top) run unmasked, then [begin, bottom) need it again (left side of the
// window). The general variant masks every tile.
template <int kBlockN, FwdVariant kVariant, typename Element, typename Step>
__device__ __forceinline__ void ForEachKvTile(const KvTileRange& tiles,
                                              const BlockCoords<Element>& c, Step&& step) {
  constexpr bool kHasWindow = VariantHasWindow(kVariant);
  int top = tiles.end;
  int bottom = tiles.begin;
  const auto needs_mask = [&c](int n) {
    return TileNeedsMaskInRange(n, c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right,
                                c.key_begin, c.key_end);
  };
  if constexpr (VariantIsGeneral(kVariant)) {
    top = bottom;
  } else {
    while (top > tiles.begin && needs_mask(top - 1)) --top;
    if constexpr (kHasWindow) {
      while (bottom < top && needs_mask(bottom)) ++bottom;
    }
  }
  int n = tiles.end - 1;
  for (; n >= top; --n) step(n, std::true_type{});
  for (; n >= bottom; --n) step(n, std::false_type{});
  if constexpr (kHasWindow) {
    for (; n >= tiles.begin; --n) step(n, std::true_type{});
  }
}

// The general variant: scores -> logits in the order of the contract (scale, softcap, ALiBi,
// additive mask); a false bool mask entry drops the key. `warp_row0` is the warp's first row
// within the block, `key0` the tile's first key.
template <int kMTiles, int kNTilesS, typename Element>
__device__ __forceinline__ void ScoresToLogits(float (&acc_s)[kMTiles][kNTilesS][4],
                                               const AttentionParams& p,
                                               const BlockCoords<Element>& c, int warp_row0,
                                               int key0, int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int shift = c.len_k - c.len_q;
  const float softcap = p.softcap;
  const float cap_scale = softcap > 0.f ? p.softmax_scale / softcap : 0.f;
  const float slope =
      p.alibi_slopes != nullptr ? p.alibi_slopes[c.batch * p.alibi_batch_stride + c.head] : 0.f;
  const int64_t mask_base = c.batch * p.mask_batch_stride + c.head * p.mask_head_stride;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = c.row0 + warp_row0 + mt * 16 + g + 8 * (e / 2);
        const int j = key0 + nt * 8 + 2 * t + e % 2;
        float s = acc_s[mt][nt][e];
        s = softcap > 0.f ? softcap * Tanh(s * cap_scale) : s * p.softmax_scale;
        s -= slope * fabsf(static_cast<float>(i + shift - j));
        if (p.mask_kind != MaskKind::kNone && i < c.len_q && j < c.len_k) {
          const int64_t idx = mask_base + i * p.mask_row_stride + j * p.mask_col_stride;
          if (p.mask_kind == MaskKind::kBool) {
            if (static_cast<const uint8_t*>(p.mask)[idx] == 0) s = -INFINITY;
          } else {
            s += static_cast<const float*>(p.mask)[idx];
          }
        }
        acc_s[mt][nt][e] = s;
      }
    }
  }
}

// Element-wise bounds on the tiles that need them: keys outside [key_begin, key_end) (past len_k
// without a key range) and, with a window, keys outside [p(i) - left, p(i) + right].
template <int kMTiles, int kNTilesS, typename Element>
__device__ __forceinline__ void MaskOutsideWindow(float (&acc_s)[kMTiles][kNTilesS][4],
                                                  const BlockCoords<Element>& c, int warp_row0,
                                                  int key0, int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  const int shift = c.len_k - c.len_q;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      // Allowed keys of this row, relative to key0: [key_lo, key_hi). The host API clamps
      // window sides to the sequence lengths, so none of this overflows an int.
      const int pos = c.row0 + warp_row0 + mt * 16 + g + 8 * hf + shift;
      const int key_lo = (c.left >= 0 ? max(pos - c.left, c.key_begin) : c.key_begin) - key0;
      const int key_hi = (c.right >= 0 ? min(pos + c.right + 1, c.key_end) : c.key_end) - key0;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = nt * 8 + 2 * t + e;
          if (j < key_lo || j >= key_hi) acc_s[mt][nt][2 * hf + e] = -INFINITY;
        }
      }
    }
  }
}

// Running softmax state of the rows a thread holds (two per m16 tile).
template <int kMTiles>
struct RowStats {
  float max[kMTiles][2];
  float sum[kMTiles][2];  // this thread's partial sums; reduced across the quad at the end

  __device__ __forceinline__ void Init() {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        max[mt][hf] = -INFINITY;
        sum[mt][hf] = 0.f;
      }
    }
  }
};

// Online softmax over one KV tile, without touching O: new row max, P = exp2(s * scale_log2 -
// max * scale_log2) in place of S, the running sums rescaled and increased by P's row sums, and
// alpha = the factor O must be rescaled by. Returns whether any row of the warp moved its max
// (warp-uniform); when none did, alpha is 1 everywhere and the rescale can be skipped.
template <int kMTiles, int kNTilesS>
__device__ __forceinline__ bool SoftmaxStep(float (&acc_s)[kMTiles][kNTilesS][4],
                                            RowStats<kMTiles>& stats, float scale_log2,
                                            float (&alpha)[kMTiles][2]) {
  bool max_moved = false;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = stats.max[mt][hf];
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        mx = fmaxf(mx, fmaxf(acc_s[mt][nt][2 * hf], acc_s[mt][nt][2 * hf + 1]));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with no allowed key so far keeps max -inf; subtracting 0 keeps its P at 0.
      const float max_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      alpha[mt][hf] = Exp2(stats.max[mt][hf] * scale_log2 - max_scaled);
      max_moved |= mx != stats.max[mt][hf];
      stats.max[mt][hf] = mx;
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = Exp2(fmaf(acc_s[mt][nt][2 * hf + e], scale_log2, -max_scaled));
          acc_s[mt][nt][2 * hf + e] = pe;
        }
      }
    }
  }
  // Once the running maxima settle (most tiles of a long row), alpha is 1 for every row of the
  // warp: a warp-uniform branch instead of 4 * kMTiles * kNTilesO multiplications per tile.
  const bool any_moved = __any_sync(0xffffffffu, max_moved);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (any_moved) stats.sum[mt][hf] *= alpha[mt][hf];
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
        stats.sum[mt][hf] += acc_s[mt][nt][2 * hf] + acc_s[mt][nt][2 * hf + 1];
      }
    }
  }
  return any_moved;
}

// O *= alpha, row by row.
template <int kMTiles, int kNTilesO>
__device__ __forceinline__ void RescaleRows(float (&acc_o)[kMTiles][kNTilesO][4],
                                            const float (&alpha)[kMTiles][2]) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        acc_o[mt][dt][2 * hf] *= alpha[mt][hf];
        acc_o[mt][dt][2 * hf + 1] *= alpha[mt][hf];
      }
    }
  }
}

// SoftmaxStep followed by the rescale of O.
template <int kMTiles, int kNTilesS, int kNTilesO>
__device__ __forceinline__ void OnlineSoftmax(float (&acc_s)[kMTiles][kNTilesS][4],
                                              float (&acc_o)[kMTiles][kNTilesO][4],
                                              RowStats<kMTiles>& stats, float scale_log2) {
  float alpha[kMTiles][2];
  if (SoftmaxStep(acc_s, stats, scale_log2, alpha)) RescaleRows(acc_o, alpha);
}

// P's A fragment (mma.sync m16n8k16 layout, also wgmma's register A) for keys [16 kk, 16 kk + 16)
// of m16 tile mt: the S accumulators of n8 tiles 2 kk and 2 kk + 1, rounded to 16 bits.
template <typename Element, int kMTiles, int kNTilesS>
__device__ __forceinline__ void PackP(uint32_t (&frag)[4],
                                      const float (&acc_s)[kMTiles][kNTilesS][4], int mt, int kk) {
  using Ops = MmaOps<Element>;
  frag[0] = Ops::Pack(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
  frag[1] = Ops::Pack(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
  frag[2] = Ops::Pack(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
  frag[3] = Ops::Pack(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
}

// Epilogue of one warp: O /= rowsum, LSE = ln(sum) + max (natural log; a row without any allowed
// key has sum 0: o = 0 and lse = -inf), O staged in the warp's own rows [warp_row0,
// warp_row0 + 16 * kMTiles) of the shared tile `stage` (layout OTile, no other warp reads them
// and every read of them by this warp has completed) and written to global memory with 16-byte
// stores; LSE written once per row.
// Attention sinks: `sink_log2` is the sink's logit times log2(e) (-inf without sinks); it joins
// each row's denominator here (NormalizeRow, softmax_epilogue.h), and a row without an allowed
// key gets o = 0 and lse = sink.
template <typename OTile, int kChunks, typename Element, int kMTiles, int kNTilesO>
__device__ __forceinline__ void StoreOutput(float (&acc_o)[kMTiles][kNTilesO][4],
                                            const RowStats<kMTiles>& stats, float scale_log2,
                                            float sink_log2, uint32_t stage,
                                            const BlockCoords<Element>& c, int64_t o_row_stride,
                                            int valid_chunks, int warp_row0, int lane) {
  using Ops = MmaOps<Element>;
  const int g = lane / 4;
  const int t = lane % 4;
  float lse[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = stats.sum[mt][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      // The row max in base-2 logits (-inf for a row without an allowed key; the scale is
      // positive in every variant, see SoftmaxScaleLog2).
      const RowNormalization norm = NormalizeRow(stats.max[mt][hf] * scale_log2, sum, sink_log2,
                                                 [](float x) { return Exp2(x); });
      lse[mt][hf] = norm.lse;
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        acc_o[mt][dt][2 * hf] *= norm.scale;
        acc_o[mt][dt][2 * hf + 1] *= norm.scale;
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp_row0 + mt * 16 + g + 8 * hf;
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        StoreShared32(stage + OTile::Offset(r, dt) + 4 * t,
                      Ops::Pack(acc_o[mt][dt][2 * hf], acc_o[mt][dt][2 * hf + 1]));
      }
    }
  }
  __syncwarp();
  constexpr int kWarpChunks = 16 * kMTiles * kChunks;
  static_assert(kWarpChunks % 32 == 0, "whole rounds of 32 lanes");
#pragma unroll
  for (int it = 0; it < kWarpChunks / 32; ++it) {
    const int idx = lane + 32 * it;
    const int r = warp_row0 + idx / kChunks;
    const int ch = idx % kChunks;
    if (r < c.rows && ch < valid_chunks) {
      *reinterpret_cast<uint4*>(c.o + r * o_row_stride + ch * 8) =
          LoadShared128(stage + OTile::Offset(r, ch));
    }
  }
  if (c.lse != nullptr && t == 0) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = warp_row0 + mt * 16 + g + 8 * hf;
        if (r < c.rows) c.lse[r] = lse[mt][hf];
      }
    }
  }
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_COMMON_CUH_
