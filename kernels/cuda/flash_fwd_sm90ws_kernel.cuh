// Device code of the warp-specialized Hopper forward kernel (sm_90a): FlashAttention-3's
// structure written for this project, the dense and causal variants of fixed-length and packed
// (varlen, cu_seqlens) batches (softcap, attention sinks and the LSE included), and of paged K/V
// (kPaged: K / V tiles copied from page pools through the page table, one bulk copy per segment
// of a tile inside one page; key ranges; see "Paged K / V" below).
//
// A block of 1 + kConsumers warpgroups works through query tiles of 64 * kConsumers rows of one
// (sequence, head) each: one tile per block, or, with a persistent grid (one block per SM), the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ... of the schedule (FwdSm90WsSchedule: heads in
// groups whose K / V fit in L2, within a group the longest causal tiles first).
//   - Warpgroup 0 is the producer. It gives its registers away (setmaxnreg down to
//     kProducerRegisters), and one thread issues every copy as a bulk tensor copy (TMA): a tile's
//     Q once the consumers have released the previous one, then K[n] and V[n] for its KV tiles
//     from the last down, each into stage i % kStages of its own ring of shared buffers (i counts
//     the block's KV tiles over all its query tiles). A copy waits for its buffer's "empty"
//     mbarrier and completes on its "full" mbarrier by transaction bytes. With two Q buffers
//     (kQBuffers) a tile's Q is copied while the tile before it runs; with kPrefetchNext the
//     producer also prefetches the next tile's Q and first KV tile into L2 when it starts a tile.
//   - Warpgroups 1 .. kConsumers are the consumers (setmaxnreg up to kConsumerRegisters), 64
//     query rows each, with the wgmma kernel's algorithm (flash_fwd_sm90_kernel.cuh): K one tile
//     ahead of V, so step i issues S[i] = Q K[i]^T and then O += P[i-1] V[i-1], waits for S only,
//     runs the softmax of S[i] while P V is on the tensor cores (intra-warpgroup overlap), then
//     waits for P V and rescales O. A buffer is released (one arrival per consumer warp on its
//     empty mbarrier) as soon as the wgmma that read it has completed.
//   - Ping-pong: the consumers take turns issuing their GEMMs through named barriers, so that
//     one warpgroup's softmax runs while another's GEMMs occupy the tensor cores. A turn is a
//     step's two products (or a tile's last P V, with kOverlapNextS joined by the next tile's
//     first S, which then runs during the epilogue); each warpgroup waits for its turn (bar.sync on
//     its own barrier), issues, and passes the turn to the next warpgroup (bar.arrive on that
//     one's barrier). The last warpgroup hands warpgroup 1 its first turn, and warpgroup 1 takes
//     the one turn left over at the end, so every barrier sees as many arrivals as syncs (all
//     consumers of a block run the same steps).
//   - Masks, online softmax and the epilogue are the other kernels' (flash_fwd_common.cuh): O is
//     staged in the warp's own rows of a shared tile (its own, kSeparateO, or its tile's Q) and
//     written with 16-byte stores (or, kTmaStoreO, a bulk tensor store per warp), and the LSE per
//     row; attention sinks join the normalization.
// Compiled to an empty kernel for architectures other than sm_90a; the host API launches it only
// on compute capability 9.0 devices when the build includes sm_90a.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_KERNEL_CUH_

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_fwd_common.cuh"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/tma_utils.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda::fwd {

// The constants the kernel is written against, checked once here.
template <int kHeadDim_, int kBlockN_, int kStages_, int kConsumers_, bool kSeparateO_,
          int kQBuffers_ = 1, bool kPrefetchNext_ = false, bool kTmaStoreO_ = false,
          bool kOverlapNextS_ = false, bool kOrders_ = false, int kDirectO_ = 0>
struct Sm90WsTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups, 64 query rows each
  static constexpr bool kSeparateO = kSeparateO_;
  // Q buffers (Sm90WsTileConfig::q_buffers): with two, query tile r's Q lands in buffer r % 2
  // while tile r - 1 runs, and O is staged in the Q buffer of its own tile.
  static constexpr int kQBuffers = kQBuffers_;
  // Sm90WsTileConfig::prefetch_next: the producer prefetches the next tile's Q and first K / V
  // tile into L2 when it starts a tile.
  static constexpr bool kPrefetchNext = kPrefetchNext_;
  static_assert(kQBuffers == 1 || (kQBuffers == 2 && !kSeparateO),
                "one Q buffer, or two with O staged in the retiring one");
  // Sm90WsTileConfig::tma_store_o: each consumer warp writes its staged O rows with bulk tensor
  // stores (one lane issues them) and waits for them to have read the rows only before it
  // stages the next tile's O there, which needs an O tile no bulk copy loads into.
  static constexpr bool kTmaStoreO = kTmaStoreO_;
  static_assert(!kTmaStoreO || kSeparateO, "bulk stores of O from an O tile of its own");
  // Sm90WsTileConfig::overlap_next_s: a consumer's last turn of a query tile issues the next
  // tile's first S = Q K^T after the last P V, so that it runs during the epilogue; the next
  // tile's Q must be in shared memory by then: two Q buffers, or one released at the tile's last
  // S (O in a tile of its own).
  static constexpr bool kOverlapNextS = kOverlapNextS_;
  static_assert(!kOverlapNextS || kQBuffers == 2 || kSeparateO,
                "the next tile's S reads a Q buffer no epilogue still uses");
  // Compiled to follow the snake and fold orders (FwdSm90WsSchedule::snake, fold) when the
  // schedule has them; without, kernels take the plain order only, which keeps the other orders'
  // arithmetic out of their registers (20 bytes more spills at d 256 causal).
  static constexpr bool kOrders = kOrders_;
  // Sm90WsTileConfig::direct_o: the consumer threads store their normalized O fragments straight
  // to global memory (StoreOutputDirect), kDirectO bytes per store (4 or 16), so O needs no shared
  // tile and a tile's Q buffer is released after its last S: the 32 KB of an O tile (d = 128)
  // buy a K / V stage or a Q buffer.
  static constexpr int kDirectOBytes = kDirectO_;
  static constexpr bool kDirectO = kDirectO_ != 0;
  static_assert(kDirectOBytes == 0 || kDirectOBytes == 4 || kDirectOBytes == 16,
                "4-byte or 16-byte direct stores");
  static_assert(!kDirectO || (!kSeparateO && !kTmaStoreO && !kOverlapNextS),
                "O stored from registers: no O tile, no staged epilogue");
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kNThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  // Register split (65536 per SM, one block): two consumers at 240 and the producer at 24 use
  // 64512; three at 160 and the producer at 32 use 65536. A consumer holds O (kHeadDim / 2
  // floats), S (kBlockN / 2) and P's fragments (kBlockN / 4): 192 at d = 128 with 128-key tiles,
  // 128 at d = 64.
  static constexpr int kProducerRegisters = kConsumers == 2 ? 24 : 32;
  static constexpr int kConsumerRegisters = kConsumers == 2 ? 240 : 160;
  static_assert(kConsumers == 2 || kConsumers == 3, "two or three consumer warpgroups");
  static_assert(128 * kProducerRegisters + kConsumerThreads * kConsumerRegisters <= 65536,
                "the register file of one SM");

  static_assert(kHeadDim % 64 == 0 && kHeadDim <= 256, "whole 64-column swizzle panels");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N and the k16 steps of P V");
  static_assert(kStages >= 2, "the producer runs at least one tile ahead");

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  static_assert(QTile::kBytes % 1024 == 0 && KVTile::kBytes % 1024 == 0,
                "every tile starts on a 1024-byte boundary (the period of the 128-byte swizzle)");
  static constexpr int kPanels = kHeadDim / 64;  // one bulk copy per 64-column panel
  // Q buffer b at kSmemQOffset + b * QTile::kBytes; O in a tile of its own (kSeparateO) or in
  // the Q buffer of its query tile.
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemOOffset = kSeparateO ? QTile::kBytes : kSmemQOffset;
  static constexpr int kSmemKOffset = (kSeparateO ? 2 : kQBuffers) * QTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + kStages * KVTile::kBytes;
  // mbarriers: Q full per Q buffer, Q empty per Q buffer, then per stage K full, V full, K
  // empty, V empty, V tail (where a packed sequence's last V tile lands before its rows past the
  // sequence are zeroed), 8 bytes each.
  static constexpr int kSmemBarrierOffset = kSmemVOffset + kStages * KVTile::kBytes;
  static constexpr int kStageBarrier0 = 2 * kQBuffers;
  static constexpr int kBarriers = kStageBarrier0 + 5 * kStages;
  static constexpr int kSmemBytes = kSmemBarrierOffset + 8 * kBarriers;
  // Launched with 1024 bytes of slack to align the tiles.
  static constexpr int kSmemLaunchBytes = kSmemBytes + 1024;
  static_assert(kSmemLaunchBytes <= 227 * 1024, "shared memory per block on sm_90");

  // Named barrier ids of the consumers' turns, kTurnBarrier0 + consumer (0 is __syncthreads).
  static constexpr int kTurnBarrier0 = 1;

  // StoreEmptyRows's view of the consumers (kNThreads threads copying kChunks chunks per row).
  struct ConsumerThreads {
    static constexpr int kChunks = Sm90WsTraits::kChunks;
    static constexpr int kNThreads = Sm90WsTraits::kConsumerThreads;
  };
};

// Where a query tile's bulk copies read: the row coordinate of its first query row in the maps
// of q (o is addressed through BlockCoords), of its sequence's first key in those of k and v, and
// the batch coordinate (0 for a packed batch, whose maps hold one sequence of all rows).
struct WsTileRows {
  int q_row;
  int k_row;
  int batch;
};

// Where query tile `tile` of the schedule works (TileRankAt, TileMBlock): its BlockCoords (as
// LocateBlock fills them), its copy coordinates and its KV tiles. False when its sequence has no
// query block of the tile's rank (a packed batch's shorter sequences, an empty one): the tile
// does nothing, producer and consumers alike. kPaged: the context is sequence `batch`'s pages
// (its length seqlens_k[batch], its keys clamped to key_range[batch] when set, as LocateBlock
// clamps them), q dense or packed by cu_seqlens_q; rows.k_row is 0 (the maps address pages).
template <int kBlockM, int kBlockN, bool kCausal, bool kOrders, bool kPaged = false,
          typename Element>
__device__ __forceinline__ bool LocateTile(const AttentionParams& p, const FwdSm90WsSchedule& sched,
                                           int tile, BlockCoords<Element>& c, WsTileRows& rows,
                                           KvTileRange& tiles) {
  const RankedTile at = KernelTileRankAt<kOrders, kPaged>(sched, tile);
  c.head = at.pair % p.q_heads;
  c.batch = at.pair / p.q_heads;
  c.left = kCausal ? p.window_left : -1;
  c.right = kCausal ? p.window_right : -1;
  int q_start = 0;
  int k_start = 0;
  c.len_q = p.seqlen_q;
  c.len_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[c.batch];
    c.len_q = p.cu_seqlens_q[c.batch + 1] - q_start;
    if constexpr (!kPaged) {
      k_start = p.cu_seqlens_k[c.batch];
      c.len_k = p.cu_seqlens_k[c.batch + 1] - k_start;
    }
  }
  if constexpr (kPaged) c.len_k = p.seqlens_k[c.batch];
  const int m_block = TileMBlock(at, (c.len_q + kBlockM - 1) / kBlockM, kCausal);
  if (m_block < 0) return false;
  c.row0 = m_block * kBlockM;
  c.rows = min(kBlockM, c.len_q - c.row0);
  c.key_begin = 0;
  c.key_end = c.len_k;
  if (kPaged && p.key_range != nullptr) {
    // Clamped to the context; an empty or inverted range leaves no key.
    c.key_begin = min(max(p.key_range[2 * c.batch], 0), c.len_k);
    c.key_end = max(min(p.key_range[2 * c.batch + 1], c.len_k), c.key_begin);
  }
  const int kv_head = c.head / (p.q_heads / p.kv_heads);
  const int64_t q_offset =
      c.batch * p.q_batch_stride + (int64_t{q_start} + c.row0) * p.q_row_stride;
  c.q = static_cast<const Element*>(p.q) + q_offset + c.head * p.q_head_stride;
  // (The kernel copies K and V through the maps; these pointers are LocateBlock's, and a paged
  // context's are its pools' at the KV head, the batch strides being page strides.)
  c.k = static_cast<const Element*>(p.k) + (kPaged ? 0 : c.batch * p.k_batch_stride) +
        int64_t{k_start} * p.k_row_stride + kv_head * p.k_head_stride;
  c.v = static_cast<const Element*>(p.v) + (kPaged ? 0 : c.batch * p.v_batch_stride) +
        int64_t{k_start} * p.v_row_stride + kv_head * p.v_head_stride;
  c.o = static_cast<Element*>(p.o) + c.batch * p.o_batch_stride +
        (int64_t{q_start} + c.row0) * p.o_row_stride + c.head * p.o_head_stride;
  c.lse = p.lse == nullptr ? nullptr
                           : p.lse + c.batch * p.lse_batch_stride + c.head * p.lse_head_stride +
                                 q_start + c.row0;
  c.pages = kPaged ? p.page_table + c.batch * p.page_table_stride : nullptr;
  c.page_shift = kPaged ? __ffs(p.page_size) - 1 : 0;
  const bool packed = p.cu_seqlens_q != nullptr;
  rows = {q_start + c.row0, k_start, packed ? 0 : c.batch};
  // Keys >= len_k of a packed batch's last KV tile belong to the next sequence: key_end = len_k
  // makes that tile a masked one (TileNeedsMaskInRange), exactly like a dense batch's tail.
  tiles = KvTilesInRange(c.row0, c.rows, c.len_q, c.len_k, kBlockN, c.left, c.right, c.key_begin,
                         c.key_end);
  return true;
}

// Zeroes rows [valid_rows, kRows) of a shared tile of kRows rows in kPanels 64-column panels
// (SmemTile's layout: a panel's row r is the 128 bytes at r * 128, whatever the swizzle does
// inside them) with the 32 lanes of one warp: lane l stores 16-byte chunk l % 8 of every fourth
// row from valid_rows + l / 8, in every panel.
template <int kRows, int kPanels>
__device__ __forceinline__ void ZeroTileRows(uint32_t tile, int valid_rows, int lane) {
  for (uint32_t at = tile + (valid_rows + lane / 8) * 128 + (lane % 8) * 16;
       at < tile + kRows * 128; at += 4 * 128) {
#pragma unroll
    for (int panel = 0; panel < kPanels; ++panel) StoreSharedZero128(at + panel * (kRows * 128));
  }
}

// Zeroes the rows outside [row_begin, row_end) of a shared tile as ZeroTileRows does (lane l
// stores chunk l % 8 of every fourth row from l / 8).
template <int kRows, int kPanels>
__device__ __forceinline__ void ZeroTileRowsOutside(uint32_t tile, int row_begin, int row_end,
                                                    int lane) {
#pragma unroll 1
  for (int row = lane / 8; row < kRows; row += 4) {
    if (row >= row_begin && row < row_end) continue;
    const uint32_t at = tile + row * 128 + (lane % 8) * 16;
#pragma unroll
    for (int panel = 0; panel < kPanels; ++panel) StoreSharedZero128(at + panel * (kRows * 128));
  }
}

// Prefetches the 128-byte line holding `ptr` into L1 (a hint; nothing is loaded into registers).
__device__ __forceinline__ void PrefetchL1(const void* ptr) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(ptr));
}

// Paged K / V (kPaged). A KV tile of kBlockN keys is copied in segments of Sm90WsPagedBoxRows
// rows (the maps' box: the page, or the largest power of two dividing kBlockN when smaller), each
// inside one page: segment g of tile n holds keys [n kBlockN + g seg, n kBlockN + (g + 1) seg),
// rows (n kBlockN + g seg) % page_size .. of page pages[(n kBlockN + g seg) / page_size], and lands
// at tile row g seg (a multiple of 16 rows, so the 128-byte swizzle's 1024-byte period lines up
// with the whole tile's). Only segments holding a key of [key_begin, key_end) are copied, so no
// page-table entry outside the key range or past the context is read; V rows of the tile outside
// that range (uncopied segments, a partial last page's rows past the context) are zeroed by the
// V tail fix-up before P V reads them (PagedTileRows), since 0 * V is NaN where the pool holds
// non-finite values there. K rows outside the range only meet masked scores (MaskOutsideWindow
// assigns -inf whatever the product was).
struct PagedSegments {
  int shift;  // log2 of the segment rows
  int begin;  // the tile's first segment holding a key of the range
  int end;    // one past its last
};

template <int kBlockN>
__device__ __forceinline__ PagedSegments TileSegments(int n, int page_shift, int key_begin,
                                                      int key_end) {
  constexpr int kBlockNShift = Log2OfPow2(kBlockN & -kBlockN);
  const int shift = min(page_shift, kBlockNShift);
  const int key0 = n * kBlockN;
  const int lo = max(key_begin - key0, 0);
  const int hi = min(key_end - key0, kBlockN);
  return {shift, lo >> shift, (hi + (1 << shift) - 1) >> shift};
}

// The rows [begin, end) of paged KV tile n inside the key range [key_begin, key_end): the tile
// needs the V fix-up unless they are all of its rows (only a query tile's first and last KV tiles
// can be partly outside).
struct TileRowRange {
  int begin;
  int end;
};

template <int kBlockN>
__device__ __forceinline__ TileRowRange PagedTileRows(int n, int key_begin, int key_end) {
  const int key0 = n * kBlockN;
  return {max(key_begin - key0, 0), min(key_end - key0, kBlockN)};
}

// What the V tail fix-up needs of query tile `tile` (as LocateTile finds it): its KV tiles (0
// when it has none or no query rows) and the rows of its first copied KV tile (tiles.end - 1)
// inside the sequence, kBlockN when all are.
struct WsTail {
  int kv_tiles;
  int valid_rows;
};

template <int kBlockM, int kBlockN, bool kCausal, bool kOrders>
__device__ __forceinline__ WsTail TailOfTile(const AttentionParams& p,
                                             const FwdSm90WsSchedule& sched, int tile) {
  const RankedTile at = KernelTileRankAt<kOrders, false>(sched, tile);
  const int batch = at.pair / p.q_heads;
  const int q_start = p.cu_seqlens_q[batch];
  const int len_q = p.cu_seqlens_q[batch + 1] - q_start;
  const int len_k = p.cu_seqlens_k[batch + 1] - p.cu_seqlens_k[batch];
  const int m_block = TileMBlock(at, (len_q + kBlockM - 1) / kBlockM, kCausal);
  if (m_block < 0) return {0, kBlockN};
  const int row0 = m_block * kBlockM;
  const KvTileRange tiles =
      KvTilesInRange(row0, min(kBlockM, len_q - row0), len_q, len_k, kBlockN,
                     kCausal ? p.window_left : -1, kCausal ? p.window_right : -1, 0, len_k);
  if (tiles.end <= tiles.begin) return {0, kBlockN};
  return {tiles.end - tiles.begin, min(kBlockN, len_k - (tiles.end - 1) * kBlockN)};
}

// Prefetches into L1 the page-table entry of the first KV tile the producer copies for query
// tile `tile` (its last, holding the diagonal with causal) as if the tile's sequence had
// seqlen_q query rows and a context of seqlen_k keys: exact for a batch of equal lengths, a
// harmless hint otherwise. Issued before LocateTile, whose loads of seqlens_k (and cu_seqlens_q,
// key_range) that entry's index depends on, so that a block's first tile (every tile of a grid
// of one block per tile) does not wait for two dependent loads before its first K copy.
template <int kBlockM, int kBlockN, bool kCausal, bool kOrders>
__device__ __forceinline__ void PrefetchFirstPageGuess(const AttentionParams& p,
                                                       const FwdSm90WsSchedule& sched, int tile) {
  const RankedTile at = kOrders ? ScheduleTileRankAt(sched, tile) : PlainTileRankAt(sched, tile);
  const int m_block = TileMBlock(at, (p.seqlen_q + kBlockM - 1) / kBlockM, kCausal);
  if (m_block < 0 || p.seqlen_k <= 0) return;
  const int row0 = m_block * kBlockM;
  const KvTileRange tiles =
      KvTilesInRange(row0, min(kBlockM, p.seqlen_q - row0), p.seqlen_q, p.seqlen_k, kBlockN,
                     kCausal ? p.window_left : -1, kCausal ? p.window_right : -1, 0, p.seqlen_k);
  if (tiles.end <= tiles.begin) return;
  const int32_t* pages = p.page_table + (at.pair / p.q_heads) * p.page_table_stride;
  PrefetchL1(pages + (((tiles.end - 1) * kBlockN) >> (__ffs(p.page_size) - 1)));
}

// What the paged V fix-up needs of query tile `tile` (LocateTile<..., kPaged>'s KV tiles and
// key range, without the rest of its coordinates): no tiles when it has none.
struct WsPagedTail {
  KvTileRange tiles;
  int key_begin;
  int key_end;
};

template <int kBlockM, int kBlockN, bool kCausal, bool kOrders>
__device__ __forceinline__ WsPagedTail PagedTailOfTile(const AttentionParams& p,
                                                       const FwdSm90WsSchedule& sched, int tile) {
  const RankedTile at = kOrders ? ScheduleTileRankAt(sched, tile) : PlainTileRankAt(sched, tile);
  const int batch = at.pair / p.q_heads;
  const int len_q =
      p.cu_seqlens_q != nullptr ? p.cu_seqlens_q[batch + 1] - p.cu_seqlens_q[batch] : p.seqlen_q;
  const int len_k = p.seqlens_k[batch];
  const int m_block = TileMBlock(at, (len_q + kBlockM - 1) / kBlockM, kCausal);
  if (m_block < 0) return {{0, 0}, 0, 0};
  int key_begin = 0;
  int key_end = len_k;
  if (p.key_range != nullptr) {
    key_begin = min(max(p.key_range[2 * batch], 0), len_k);
    key_end = max(min(p.key_range[2 * batch + 1], len_k), key_begin);
  }
  const int row0 = m_block * kBlockM;
  return {KvTilesInRange(row0, min(kBlockM, len_q - row0), len_q, len_k, kBlockN,
                         kCausal ? p.window_left : -1, kCausal ? p.window_right : -1, key_begin,
                         key_end),
          key_begin, key_end};
}

// The epilogues' normalization of row half `hf` (row g or g + 8 of the warp's m16 tile): the row
// sum reduced over the quad's four threads, then O's scale and the LSE from it (NormalizeRow,
// attention sinks in the denominator).
__device__ __forceinline__ RowNormalization QuadRowNormalization(const RowStats<1>& stats, int hf,
                                                                 float scale_log2,
                                                                 float sink_log2) {
  float sum = stats.sum[0][hf];
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  return NormalizeRow(stats.max[0][hf] * scale_log2, sum, sink_log2,
                      [](float x) { return Exp2(x); });
}

// StoreOutput's epilogue (flash_fwd_common.cuh) up to the staging, for the bulk-store epilogue:
// O /= rowsum (attention sinks in the denominator), staged in the warp's 16 rows [warp_row0,
// warp_row0 + 16) of the shared tile `stage` (layout OTile; no other warp reads them and no
// earlier read of them is pending), and the LSE stored per row. The caller writes the staged rows
// out.
template <typename OTile, typename Element, int kNTilesO>
__device__ __forceinline__ void StageOutput(float (&acc_o)[1][kNTilesO][4],
                                            const RowStats<1>& stats, float scale_log2,
                                            float sink_log2, uint32_t stage,
                                            const BlockCoords<Element>& c, int warp_row0,
                                            int lane) {
  using Ops = MmaOps<Element>;
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const RowNormalization norm = QuadRowNormalization(stats, hf, scale_log2, sink_log2);
    const int r = warp_row0 + g + 8 * hf;
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
      StoreShared32(
          stage + OTile::Offset(r, dt) + 4 * t,
          Ops::Pack(acc_o[0][dt][2 * hf] * norm.scale, acc_o[0][dt][2 * hf + 1] * norm.scale));
    }
    if (c.lse != nullptr && t == 0 && r < c.rows) c.lse[r] = norm.lse;
  }
}

// The epilogue without staging (Sm90WsTileConfig::direct_o): O /= rowsum as StageOutput
// normalizes it and stores it straight to global memory, rows past c.rows and 8-column tiles past
// the head_dim's valid_chunks dropped; the LSE per row. kBytes = 4: each thread stores its two
// adjacent columns of a row (4 bytes) of every 8-column tile (a quad's four threads write 16
// contiguous bytes; the L2 merges the sectors before they are written back). kBytes = 16: the
// quad's 4 x 4 words of four consecutive tiles are transposed by two butterfly exchanges (4
// shuffles), after which thread t holds the 16 bytes of tile 4 j + t and stores them at once (a
// quarter of the store instructions).
template <int kBytes, typename Element, int kNTilesO>
__device__ __forceinline__ void StoreOutputDirect(float (&acc_o)[1][kNTilesO][4],
                                                  const RowStats<1>& stats, float scale_log2,
                                                  float sink_log2, const BlockCoords<Element>& c,
                                                  int64_t o_row_stride, int valid_chunks,
                                                  int warp_row0, int lane) {
  using Ops = MmaOps<Element>;
  const int g = lane / 4;
  const int t = lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const RowNormalization norm = QuadRowNormalization(stats, hf, scale_log2, sink_log2);
    const int r = warp_row0 + g + 8 * hf;
    if constexpr (kBytes == 16) {
      static_assert(kNTilesO % 4 == 0, "groups of four 8-column tiles");
      uint4* row = reinterpret_cast<uint4*>(c.o + r * o_row_stride);
#pragma unroll
      for (int j = 0; j < kNTilesO / 4; ++j) {
        uint32_t w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          w[k] = Ops::Pack(acc_o[0][4 * j + k][2 * hf] * norm.scale,
                           acc_o[0][4 * j + k][2 * hf + 1] * norm.scale);
        }
        // Butterfly over lane bit m: of each pair of words whose indices differ in bit m, a
        // thread keeps the one whose bit m equals its own and swaps the other with the thread
        // differing in bit m; after both bits, w[k] is thread k's word t.
#pragma unroll
        for (int m = 1; m <= 2; m *= 2) {
          const bool upper = (t & m) != 0;
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (k & m) continue;
            const uint32_t sent = upper ? w[k] : w[k | m];
            const uint32_t got = __shfl_xor_sync(0xffffffffu, sent, m);
            if (upper) {
              w[k] = got;
            } else {
              w[k | m] = got;
            }
          }
        }
        if (r < c.rows && 4 * j + t < valid_chunks) row[4 * j + t] = {w[0], w[1], w[2], w[3]};
      }
    } else if (r < c.rows) {
      uint32_t* row = reinterpret_cast<uint32_t*>(c.o + r * o_row_stride + 2 * t);
#pragma unroll
      for (int dt = 0; dt < kNTilesO; ++dt) {
        if (dt < valid_chunks) {
          row[dt * 4] =
              Ops::Pack(acc_o[0][dt][2 * hf] * norm.scale, acc_o[0][dt][2 * hf + 1] * norm.scale);
        }
      }
    }
    if (c.lse != nullptr && t == 0 && r < c.rows) c.lse[r] = norm.lse;
  }
}

// Grid: args.sched.grid blocks of Traits::kNThreads threads; kSmemLaunchBytes of dynamic shared
// memory. args.p is normalized and checked by the host API (CheckFlashFwdSm90Ws): no window but
// causal, no ALiBi or mask, positive scale, dense or packed (cu_seqlens); with kPaged, K and V
// are page pools read through the page table (seqlens_k, optional key_range, q dense or packed
// by cu_seqlens_q) and args.k / args.v map the pools (FwdSm90WsArgs).
template <typename Traits, typename Element, bool kCausal, bool kPaged = false>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    FlashFwdSm90WsKernel(const __grid_constant__ FwdSm90WsArgs args) {
#ifdef ATTN_HAVE_WGMMA
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kConsumers = Traits::kConsumers;
  // Paged tiles take the window variant's tile loop even without causal: a key range's first
  // tile needs the lower-bound mask (ForEachKvTile), with both window sides unbounded.
  constexpr FwdVariant kVariant = kCausal || kPaged ? FwdVariant::kWindow : FwdVariant::kDense;
  static_assert(!(kPaged && Traits::kPrefetchNext),
                "the L2 prefetch addresses dense K / V (no paged form)");
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using MmaS = Wgmma<Element, kBlockN>;
  using MmaO = Wgmma<Element, kHeadDim>;
  const AttentionParams& p = args.p;
  const FwdSm90WsSchedule& sched = args.sched;

  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_base = (SmemAddress(smem) + 1023u) & ~1023u;
  constexpr int kQBuffers = Traits::kQBuffers;
  // Q buffer `b`; O of a query tile whose Q is in buffer `b`.
  const auto smem_q = [&](int b) { return smem_base + Traits::kSmemQOffset + b * QTile::kBytes; };
  const auto smem_o = [&](int b) {
    return Traits::kSeparateO ? smem_base + Traits::kSmemOOffset : smem_q(b);
  };
  const auto k_stage = [&](int s) { return smem_base + Traits::kSmemKOffset + s * KVTile::kBytes; };
  const auto v_stage = [&](int s) { return smem_base + Traits::kSmemVOffset + s * KVTile::kBytes; };
  const uint32_t bars = smem_base + Traits::kSmemBarrierOffset;
  const auto q_full = [&](int b) { return bars + 8u * b; };
  const auto q_empty = [&](int b) { return bars + 8u * (kQBuffers + b); };
  constexpr int kS0 = Traits::kStageBarrier0;
  const auto k_full = [&](int s) { return bars + 8u * (kS0 + s); };
  const auto v_full = [&](int s) { return bars + 8u * (kS0 + kStages + s); };
  const auto k_empty = [&](int s) { return bars + 8u * (kS0 + 2 * kStages + s); };
  const auto v_empty = [&](int s) { return bars + 8u * (kS0 + 3 * kStages + s); };
  const auto v_tail = [&](int s) { return bars + 8u * (kS0 + 4 * kStages + s); };

  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int b = 0; b < kQBuffers; ++b) {
      MbarrierInit(q_full(b), 1);
      MbarrierInit(q_empty(b), Traits::kConsumerWarps + (Traits::kPrefetchNext ? 1 : 0));
    }
    for (int s = 0; s < kStages; ++s) {
      MbarrierInit(k_full(s), 1);
      MbarrierInit(v_full(s), 1);
      MbarrierInit(k_empty(s), Traits::kConsumerWarps);
      MbarrierInit(v_empty(s), Traits::kConsumerWarps);
      MbarrierInit(v_tail(s), 1);
    }
    FenceMbarrierInit();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // Producer. One thread issues every copy; with a packed batch, warp 1 fixes the V tails up
    // (below); the others of the warpgroup have nothing to do.
    //
    // V tail (packed batches only): a sequence's last KV tile reaches into the next sequence's
    // rows, which the bulk copy does not zero-fill as it does rows past a tensor. Their scores
    // are masked (P = 0), but 0 * V is NaN where V is not finite, which would let one request's
    // values spoil its neighbour's output. So that tile's V lands on its stage's V tail mbarrier
    // instead of V full; warp 1, walking the same tiles, waits for it, zeroes the rows past the
    // sequence, orders its stores before the tensor cores' reads (proxy fence) and arrives on V
    // full, which the consumers wait for as usual. A stage's V tail phases cannot run ahead of
    // warp 1: the stage is copied into again only after the consumers released it, which they
    // do after V full. Dense batches never take this path (their rows past a sequence lie past
    // the tensor's row dimension, which the copy zero-fills).
    SetMaxRegistersDecrease<Traits::kProducerRegisters>();
    if (tid != 0) {
      if (Traits::kPrefetchNext && tid == 64) {
        // L2 prefetch (thread 0 of warp 2): once query tile `round`'s Q has landed (its tile is
        // about to run), the block's next query tile's Q and first KV tile (the last, copied
        // first) are prefetched into L2, so that their bulk copies, issued once this tile's
        // buffers free up, read L2 rather than DRAM: a short sequence's tile has few KV tiles
        // to hide that latency behind. This thread is one more arrival on Q empty, so the
        // copying thread cannot reuse a Q buffer before it has seen the buffer's previous phase
        // (a wait by parity would otherwise mistake a phase two uses later for its own).
        int round = 0;
        for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
          BlockCoords<Element> c;
          WsTileRows rows;
          KvTileRange tiles;
          if (!LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, tile, c,
                                                                              rows, tiles) ||
              tiles.end <= tiles.begin) {
            continue;
          }
          const int qb = round % kQBuffers;
          MbarrierWait(q_full(qb), (round / kQBuffers) & 1);
          MbarrierArrive(q_empty(qb));
          ++round;
          const int next = tile + gridDim.x;
          if (next < sched.num_tiles &&
              LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, next, c,
                                                                             rows, tiles) &&
              tiles.end > tiles.begin) {
            const int kv_head = c.head / (p.q_heads / p.kv_heads);
            const int kv_row = rows.k_row + (tiles.end - 1) * kBlockN;
#pragma unroll
            for (int panel = 0; panel < Traits::kPanels; ++panel) {
              TmaPrefetch4d(&args.q, panel * 64, c.head, rows.q_row, rows.batch);
              TmaPrefetch4d(&args.k, panel * 64, kv_head, kv_row, rows.batch);
              TmaPrefetch4d(&args.v, panel * 64, kv_head, kv_row, rows.batch);
            }
          }
        }
        return;
      }
      if (kPaged && tid / 32 == 1) {
        // Paged: a query tile's first and last KV tiles may hold rows outside its key range
        // (PagedTileRows); their V lands on V tail and is fixed up here as a packed batch's is.
        // (Written for the producer's 24 registers: one loop over those two tiles, one over a
        // tile's rows.)
        const int lane = tid % 32;
        int i = 0;                // KV tiles copied so far, as the copying thread counts
        uint32_t tail_phase = 0;  // bit s: parity of the next phase of V tail s
        for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
          const WsPagedTail tail =
              PagedTailOfTile<kBlockM, kBlockN, kCausal, Traits::kOrders>(p, sched, tile);
          const int kv_tiles = tail.tiles.end - tail.tiles.begin;
          if (kv_tiles <= 0) continue;
            // Copied from the last tile down: tile end - 1 is the query tile's KV tile i, tile
            // begin its i + kv_tiles - 1; the tiles between lie inside the range.
#pragma unroll 1
          for (int k = 0; k < (kv_tiles > 1 ? 2 : 1); ++k) {
            const int n = k == 0 ? tail.tiles.end - 1 : tail.tiles.begin;
            const TileRowRange in = PagedTileRows<kBlockN>(n, tail.key_begin, tail.key_end);
            if (in.begin == 0 && in.end == kBlockN) continue;
            const int s = (k == 0 ? i : i + kv_tiles - 1) % kStages;
            MbarrierWait(v_tail(s), (tail_phase >> s) & 1u);
            tail_phase ^= 1u << s;
            ZeroTileRowsOutside<kBlockN, Traits::kPanels>(v_stage(s), in.begin, in.end, lane);
            FenceProxyAsyncShared();
            __syncwarp();
            if (lane == 0) MbarrierArrive(v_full(s));
          }
          i += kv_tiles;
        }
        return;
      }
      if (!kPaged && kSm90WsZeroVTail && tid / 32 == 1 && p.cu_seqlens_q != nullptr) {
        const int lane = tid % 32;
        int i = 0;                // KV tiles copied so far, as the copying thread counts
        uint32_t tail_phase = 0;  // bit s: parity of the next phase of V tail s
        for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
          const WsTail tail =
              TailOfTile<kBlockM, kBlockN, kCausal, Traits::kOrders>(p, sched, tile);
          if (tail.kv_tiles <= 0) continue;
          if (tail.valid_rows < kBlockN) {
            const int s = i % kStages;
            MbarrierWait(v_tail(s), (tail_phase >> s) & 1u);
            tail_phase ^= 1u << s;
            ZeroTileRows<kBlockN, Traits::kPanels>(v_stage(s), tail.valid_rows, lane);
            FenceProxyAsyncShared();
            __syncwarp();
            if (lane == 0) MbarrierArrive(v_full(s));
          }
          i += tail.kv_tiles;
        }
      }
      return;
    }
    int i = 0;      // KV tiles copied so far
    int round = 0;  // query tiles copied so far
    for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
      if constexpr (kPaged)
        PrefetchFirstPageGuess<kBlockM, kBlockN, kCausal, Traits::kOrders>(p, sched, tile);
      BlockCoords<Element> c;
      WsTileRows rows;
      KvTileRange tiles;
      if (!LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, tile, c, rows,
                                                                          tiles))
        continue;
      if (tiles.end <= tiles.begin) continue;  // rows without keys: nothing to copy
      if constexpr (kPaged) {
        // The first copied KV tile's page-table entry, prefetched before the wait for the Q
        // buffer (the tile before's last S, or its epilogue), which hides its latency: short
        // sequences have few KV tiles to hide a cold entry behind.
        const int n = tiles.end - 1;
        const PagedSegments seg = TileSegments<kBlockN>(n, c.page_shift, c.key_begin, c.key_end);
        PrefetchL1(c.pages + ((n * kBlockN + (seg.begin << seg.shift)) >> c.page_shift));
      }
      const int kv_head = c.head / (p.q_heads / p.kv_heads);
      // Query tile `round` takes Q buffer round % kQBuffers, its (round / kQBuffers)-th use.
      const int qb = round % kQBuffers;
      MbarrierWait(q_empty(qb), ((round / kQBuffers) & 1) ^ 1);
      MbarrierArriveExpectTx(q_full(qb), QTile::kBytes);
#pragma unroll
      for (int panel = 0; panel < Traits::kPanels; ++panel) {
        TmaLoad4d(smem_q(qb) + panel * (kBlockM * 128), &args.q, q_full(qb), panel * 64, c.head,
                  rows.q_row, rows.batch);
      }
      ++round;
      for (int n = tiles.end - 1; n >= tiles.begin; --n, ++i) {
        const int s = i % kStages;
        const uint32_t empty_parity = ((i / kStages) & 1) ^ 1;
        if constexpr (kPaged) {
          // One bulk copy per segment (TileSegments) and panel, on the tile's one mbarrier with
          // the bytes of the segments copied. The page-table entries of this tile and the next
          // (n - 1) are prefetched into L1 before the waits for the tile's buffers, which hide
          // that latency; the copies then read them one segment at a time (a register array of
          // a tile's entries spilled from the producer's 24 registers).
          const PagedSegments seg = TileSegments<kBlockN>(n, c.page_shift, c.key_begin, c.key_end);
          const int key0 = n * kBlockN;
          PrefetchL1(c.pages + ((key0 + (seg.begin << seg.shift)) >> c.page_shift));
          if (n > tiles.begin) PrefetchL1(c.pages + ((key0 - 1) >> c.page_shift));
          const int page_mask = (1 << c.page_shift) - 1;
          const uint32_t bytes = ((seg.end - seg.begin) << seg.shift) * (kHeadDim * 2);
          const auto copy = [&](uint32_t stage, const CUtensorMap* map, uint32_t bar) {
            for (int g = seg.begin; g < seg.end; ++g) {
              const int key = key0 + (g << seg.shift);
              const int page = c.pages[key >> c.page_shift];
#pragma unroll
              for (int panel = 0; panel < Traits::kPanels; ++panel) {
                TmaLoad4d(stage + panel * (kBlockN * 128) + (g << seg.shift) * 128, map, bar,
                          panel * 64, kv_head, key & page_mask, page);
              }
            }
          };
          MbarrierWait(k_empty(s), empty_parity);
          MbarrierArriveExpectTx(k_full(s), bytes);
          copy(k_stage(s), &args.k, k_full(s));
          MbarrierWait(v_empty(s), empty_parity);
          const TileRowRange in = PagedTileRows<kBlockN>(n, c.key_begin, c.key_end);
          const uint32_t v_bar = in.begin > 0 || in.end < kBlockN ? v_tail(s) : v_full(s);
          MbarrierArriveExpectTx(v_bar, bytes);
          copy(v_stage(s), &args.v, v_bar);
          continue;
        }
        MbarrierWait(k_empty(s), empty_parity);
        MbarrierArriveExpectTx(k_full(s), KVTile::kBytes);
#pragma unroll
        for (int panel = 0; panel < Traits::kPanels; ++panel) {
          TmaLoad4d(k_stage(s) + panel * (kBlockN * 128), &args.k, k_full(s), panel * 64, kv_head,
                    rows.k_row + n * kBlockN, rows.batch);
        }
        MbarrierWait(v_empty(s), empty_parity);
        const uint32_t v_bar = kSm90WsZeroVTail && n == tiles.end - 1 &&
                                       (n + 1) * kBlockN > c.len_k && p.cu_seqlens_q != nullptr
                                   ? v_tail(s)
                                   : v_full(s);
        MbarrierArriveExpectTx(v_bar, KVTile::kBytes);
#pragma unroll
        for (int panel = 0; panel < Traits::kPanels; ++panel) {
          TmaLoad4d(v_stage(s) + panel * (kBlockN * 128), &args.v, v_bar, panel * 64, kv_head,
                    rows.k_row + n * kBlockN, rows.batch);
        }
      }
    }
    return;
  }

  // Consumers.
  SetMaxRegistersIncrease<Traits::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int ctid = tid - 128;
  const int lane = tid % 32;
  // The warp's 16 rows within the tile: 16 * (its index among the consumer warps).
  const int warp_row0 = ctid / 32 * 16;
  const int valid_chunks = p.head_dim / 8;
  const float scale_log2 = SoftmaxScaleLog2<kVariant>(p);
  // Softcap c > 0: each score s becomes (c / scale) tanh(s scale / c), which the softmax's
  // scale_log2 = scale log2(e) turns into the contract's logit c tanh(s scale / c) in base 2.
  const bool softcap = p.softcap > 0.f;
  const float cap_in = softcap ? p.softmax_scale / p.softcap : 0.f;
  const float cap_out = softcap ? p.softcap / p.softmax_scale : 0.f;
  const int my_turn = Traits::kTurnBarrier0 + consumer;
  const int next_turn = Traits::kTurnBarrier0 + (consumer + 1) % kConsumers;
  constexpr int kTurnThreads = 2 * 128;
  const auto release = [&](uint32_t bar) {
    if (lane == 0) MbarrierArrive(bar);
  };

  // The last consumer hands the first its first turn.
  if (consumer == kConsumers - 1) NamedBarrierArrive(Traits::kTurnBarrier0, kTurnThreads);

  int i = 0;      // KV tiles consumed so far, as the producer counts
  int round = 0;  // query tiles with keys consumed so far
  // With kOverlapNextS, whether the current query tile's first KV tile was done at the end of
  // the previous tile (its S issued in that tile's last turn, its softmax after that epilogue),
  // leaving its P in next_p and its row statistics in next_stats.
  bool first_done = false;
  RowStats<1> next_stats;
  uint32_t next_p[kNTilesS / 2][4];
  for (int tile = blockIdx.x; tile < sched.num_tiles; tile += gridDim.x) {
    BlockCoords<Element> c;
    WsTileRows rows;
    KvTileRange tiles;
    if (!LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, tile, c, rows,
                                                                        tiles))
      continue;
    if (tiles.end <= tiles.begin) {
      StoreEmptyRows<typename Traits::ConsumerThreads>(c.o, p.o_row_stride, c.lse, SinkLogit(p, c),
                                                       c.rows, valid_chunks, ctid);
      continue;
    }

    float acc_o[1][kNTilesO][4];
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[0][dt][e] = 0.f;
    }
    RowStats<1> stats;
    // P of the previous step as wgmma A fragments.
    uint32_t p_frag[kNTilesS / 2][4];
    if (first_done) {
      stats = next_stats;
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) {
#pragma unroll
        for (int e = 0; e < 4; ++e) p_frag[kk][e] = next_p[kk][e];
      }
    } else {
      stats.Init();
    }
    // S of the current step.
    float acc_s[1][kNTilesS][4];
    // Descriptors (128-byte swizzle; rows of a panel 128 bytes apart, 8-row groups 1024 apart): Q
    // (the consumer's 64 rows of its tile's Q buffer) and K are K-major, a k16 step is 32 bytes
    // within a panel and the next panel starts kRows * 128 bytes further; V is N-major, its
    // leading byte offset the panel stride and a k16 step of P V 16 rows = 2048 bytes.
    // S[i] = Q K[i]^T from the Q buffer `q_desc` and K stage `s` into acc_s, one commit group.
    const auto issue_s = [&](uint64_t q_desc, int s) {
      const uint64_t k_desc = SmemDescriptor(k_stage(s), 16, 1024);
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        const uint32_t q_off = (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
        const uint32_t k_off = (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
        MmaS::SS(acc_s[0], AdvanceDescriptor(q_desc, q_off), AdvanceDescriptor(k_desc, k_off),
                 ks > 0);
      }
      WgmmaCommit();
    };
    const auto issue_pv = [&](int s) {
      const uint64_t v_desc = SmemDescriptor(v_stage(s), kBlockN * 128, 1024);
      FenceAccumulators(acc_o[0]);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) {
        MmaO::RS(acc_o[0], p_frag[kk], AdvanceDescriptor(v_desc, kk * 16 * 128));
      }
    };

    const int qb = round % kQBuffers;
    MbarrierWait(q_full(qb), (round / kQBuffers) & 1);
    const uint64_t q_desc = SmemDescriptor(smem_q(qb) + consumer * 64 * 128, 16, 1024);
    // The KV tiles left to run: all, or (first_done) all but the first, whose P V the next step
    // issues as usual.
    const int i_first = first_done ? i - 1 : i;
    const KvTileRange rest = {tiles.begin, first_done ? tiles.end - 1 : tiles.end};
    const auto step = [&](const int n, auto mask_tag) {
      constexpr bool kMask = decltype(mask_tag)::value;
      const int s = i % kStages;
      const int s_prev = (i + kStages - 1) % kStages;
      const bool has_pv = i > i_first;
      // V[i-1] was copied before K[i]; both are waited for before the turn, so that nothing but
      // wgmmas sits between the two products' issue.
      if (has_pv) MbarrierWait(v_full(s_prev), ((i - 1) / kStages) & 1);
      MbarrierWait(k_full(s), (i / kStages) & 1);
      NamedBarrierSync(my_turn, kTurnThreads);
      FenceAccumulators(acc_o[0]);
      WgmmaFence();
      issue_s(q_desc, s);
      // (One branch per case: with the handover and the wait in separate branches on has_pv,
      // ptxas cannot tell that S[i] has completed when the softmax reads it, and serializes
      // every wgmma, C7514.)
      if (has_pv) {
        issue_pv(s_prev);
        WgmmaCommit();
        NamedBarrierArrive(next_turn, kTurnThreads);
        WgmmaWait<1>();  // S[i] done; P V may still run
      } else {
        NamedBarrierArrive(next_turn, kTurnThreads);
        WgmmaWait<0>();
      }
      FenceAccumulators(acc_s[0]);
      release(k_empty(s));
      // The tile's last S: with a separate O tile, Q is free for the next query tile.
      // (So it is with direct O stores, which stage nothing.)
      if ((Traits::kSeparateO || Traits::kDirectO) && n == tiles.begin) release(q_empty(qb));

      if (softcap) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[0][nt][e] = cap_out * Tanh(acc_s[0][nt][e] * cap_in);
        }
      }
      if constexpr (kMask) MaskOutsideWindow(acc_s, c, warp_row0, n * kBlockN, lane);
      float alpha[1][2];
      const bool rescale = SoftmaxStep(acc_s, stats, scale_log2, alpha);

      WgmmaWait<0>();  // P[i-1] V[i-1] done: O and p_frag are free, V[i-1]'s buffer too
      FenceAccumulators(acc_o[0]);
      FenceFragments(p_frag);
      if (has_pv) release(v_empty(s_prev));
      if (rescale) RescaleRows(acc_o, alpha);
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) PackP<Element>(p_frag[kk], acc_s, 0, kk);
      ++i;
    };
    ForEachKvTile<kBlockN, kVariant>(rest, c, step);

    // The last KV tile's P V, in a turn of its own; with kOverlapNextS also the block's next
    // query tile's first S when that tile has keys (the next tile of the schedule that exists:
    // every consumer finds the same one, so all take the same turns). Its Q is the next Q
    // buffer's next use and its K the next KV tile the producer copies.
    const int s_last = (i - 1) % kStages;
    bool overlap = false;
    if constexpr (Traits::kOverlapNextS) {
      int next = tile + gridDim.x;
      BlockCoords<Element> nc;
      WsTileRows nrows;
      KvTileRange ntiles;
      while (next < sched.num_tiles &&
             !LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, next, nc,
                                                                             nrows, ntiles)) {
        next += gridDim.x;
      }
      overlap = next < sched.num_tiles && ntiles.end > ntiles.begin;
    }
    MbarrierWait(v_full(s_last), ((i - 1) / kStages) & 1);
    // The epilogue: O normalized, staged and written, the LSE; the Q buffer released.
    const auto epilogue = [&] {
      // The tile's wgmmas have completed (with kOverlapNextS the next tile's first S may still
      // run). Each warp stages O in its own rows of the O tile (or of its Q buffer, which no wgmma
      // reads any more) and reads back only those; copy_out writes the staged rows inside the
      // sequence with 16-byte stores.
      const auto copy_out = [&] {
#pragma unroll
        for (int it = 0; it < kSm90WsOStoreRows * Traits::kChunks / 32; ++it) {
          const int idx = lane + 32 * it;
          const int r = warp_row0 + idx / Traits::kChunks;
          const int ch = idx % Traits::kChunks;
          if (r < c.rows && ch < valid_chunks) {
            *reinterpret_cast<uint4*>(c.o + r * p.o_row_stride + ch * 8) =
                LoadShared128(smem_o(qb) + QTile::Offset(r, ch));
          }
        }
      };
      if constexpr (Traits::kDirectO) {
        StoreOutputDirect<Traits::kDirectOBytes>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e,
                                                 c, p.o_row_stride, valid_chunks, warp_row0, lane);
      } else if constexpr (Traits::kTmaStoreO) {
        // The warp's rows of the O tile are free once its previous tile's bulk stores have read
        // them.
        if (lane == 0) BulkWaitRead<0>();
        __syncwarp();
        StageOutput<QTile>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e, smem_o(qb), c,
                           warp_row0, lane);
        FenceProxyAsyncShared();
        __syncwarp();
        // A dense batch's map ends at seqlen_q, so the store drops rows past the sequence; in a
        // packed batch those rows are the next sequence's, so a warp reaching past its sequence
        // stores its rows inside it with 16-byte stores instead.
        if (p.cu_seqlens_q == nullptr || warp_row0 + kSm90WsOStoreRows <= c.rows) {
          if (lane == 0 && warp_row0 < c.rows) {
#pragma unroll
            for (int panel = 0; panel < Traits::kPanels; ++panel) {
              TmaStore4d(&args.o, smem_o(qb) + panel * (kBlockM * 128) + warp_row0 * 128,
                         panel * 64, c.head, rows.q_row + warp_row0, rows.batch);
            }
            BulkCommit();
          }
        } else {
          copy_out();
        }
      } else if constexpr (Traits::kOverlapNextS) {
        // StoreOutput scales O in place, which the next tile's S in flight forbids (C7515 above).
        __syncwarp();
        StageOutput<QTile>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e, smem_o(qb), c,
                           warp_row0, lane);
        __syncwarp();
        copy_out();
      } else {
        StoreOutput<QTile, Traits::kChunks>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e,
                                            smem_o(qb), c, p.o_row_stride, valid_chunks, warp_row0,
                                            lane);
      }
      if constexpr (!Traits::kSeparateO && !Traits::kDirectO) {
        // A later Q lands where O was staged: order this warp's generic-proxy accesses before the
        // bulk copy's writes.
        FenceProxyAsyncShared();
        __syncwarp();
        release(q_empty(qb));
      }
    };
    // (One branch per case, from the turn to the wait for the next tile's S: with the issue and
    // the wait in separate branches on `overlap`, ptxas cannot tell that S has completed on
    // every path, waits for it right after the epilogue and serializes every wgmma, C7515.)
    first_done = false;
    if (overlap) {
      MbarrierWait(q_full((round + 1) % kQBuffers), ((round + 1) / kQBuffers) & 1);
      MbarrierWait(k_full(i % kStages), (i / kStages) & 1);
      NamedBarrierSync(my_turn, kTurnThreads);
      issue_pv(s_last);
      WgmmaCommit();
      WgmmaFence();
      issue_s(SmemDescriptor(smem_q((round + 1) % kQBuffers) + consumer * 64 * 128, 16, 1024),
              i % kStages);
      NamedBarrierArrive(next_turn, kTurnThreads);
      WgmmaWait<1>();  // P V done; the next tile's S may still run
      FenceAccumulators(acc_o[0]);
      FenceFragments(p_frag);
      release(v_empty(s_last));
      epilogue();
      // The next tile's first KV tile (the last, copied first): its S, issued in the turn
      // above, has run during the epilogue; its softmax now, as the step would (O is zero:
      // no rescale), leaving P and the row statistics for the next iteration.
      BlockCoords<Element> nc;
      WsTileRows nrows;
      KvTileRange ntiles;
      int next = tile + gridDim.x;
      while (!LocateTile<kBlockM, kBlockN, kCausal, Traits::kOrders, kPaged>(p, sched, next, nc,
                                                                             nrows, ntiles)) {
        next += gridDim.x;
      }
      const int n = ntiles.end - 1;
      next_stats.Init();
      WgmmaWait<0>();
      FenceAccumulators(acc_s[0]);
      release(k_empty(i % kStages));
      // With one Q buffer the step of a tile's last S releases it; a next tile of one KV tile has
      // no step left, so its only S, this one, releases it.
      if (kQBuffers == 1 && ntiles.end - ntiles.begin == 1) release(q_empty(0));
      if (softcap) {
#pragma unroll
        for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_s[0][nt][e] = cap_out * Tanh(acc_s[0][nt][e] * cap_in);
        }
      }
      if (TileNeedsMaskInRange(n, nc.row0, nc.rows, nc.len_q, nc.len_k, kBlockN, nc.left, nc.right,
                               nc.key_begin, nc.key_end)) {
        MaskOutsideWindow(acc_s, nc, warp_row0, n * kBlockN, lane);
      }
      float alpha[1][2];
      SoftmaxStep(acc_s, next_stats, scale_log2, alpha);
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) PackP<Element>(next_p[kk], acc_s, 0, kk);
      ++i;
      first_done = true;
    } else {
      NamedBarrierSync(my_turn, kTurnThreads);
      issue_pv(s_last);
      WgmmaCommit();
      NamedBarrierArrive(next_turn, kTurnThreads);
      WgmmaWait<0>();
      FenceAccumulators(acc_o[0]);
      FenceFragments(p_frag);
      release(v_empty(s_last));
      epilogue();
    }
    ++round;
  }
  // The turn the last consumer passed after its last GEMMs.
  if (consumer == 0) NamedBarrierSync(my_turn, kTurnThreads);
  // The block's shared memory must outlive the reads of its bulk stores.
  if (Traits::kTmaStoreO && lane == 0) BulkWait<0>();
#endif  // ATTN_HAVE_WGMMA
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_KERNEL_CUH_
