// Launch layer of the warp-specialized Hopper forward kernel (flash_fwd_sm90ws_kernel.cuh), as
// seen from host code: the kernel's argument block, its tile table and the launch function
// template, explicitly instantiated per (element type, head-dim bucket, causal) in
// instantiations/flash_fwd_sm90ws_*.cu. Host-compilable and free of absl, so that both the host
// API (flash_fwd_sm90ws.cc) and the instantiation files include it.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_

// CUtensorMap only (a 128-byte, 64-byte aligned opaque type): nothing here links libcuda, the
// host API reaches cuTensorMapEncodeTiled through cudaGetDriverEntryPointByVersion.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include "kernels/attention_params.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// The order in which the blocks take query tiles (m_blocks per (sequence, head) pair, tiles
// numbered 0 .. num_tiles - 1): pairs in groups of heads_per_group, whose K and V together fit
// in a share of L2 so that the blocks running at the same time reuse them; inside a group the
// tiles go rank by rank, each rank over the group's pairs, rank r being a pair's r-th query block
// counted from its last one for causal (the most keys first) and from its first otherwise. Block
// b takes tiles b, b + grid, b + 2 grid, ...: grid = num_tiles gives one tile per block, grid =
// the SM count a persistent grid. A packed (varlen) batch sizes m_blocks by its longest sequence
// and counts each sequence's ranks from its own last block (SequenceMBlock): the ranks a shorter
// sequence lacks are empty tiles that blocks skip, so that every sequence's most expensive causal
// tile comes in the first rank. With `snake`, every odd round of `grid` tiles that is complete runs
// in reverse (block b takes its tile grid - 1 - b): with causal the costs fall along the order, so
// a block that drew an expensive tile in one round draws a cheap one in the next (a model of the
// call 4 shapes puts the busiest block of a d = 128 causal launch at 1.15-1.27x the mean without
// it, 1.07-1.10x with it).
//
// With `fold` (a persistent grid), a block's tiles come in slots of two: rank r of a pair and then,
// in the block's next round, the same pair's rank m - 1 - r (m its sequence's query blocks; the
// middle rank of an odd m alone), so that every slot of a causal launch costs m + 1 KV tiles and
// the blocks, taking slots b, b + grid, ..., stay balanced to one slot; the second tile's K / V
// are the first's, from L2. Slots are numbered as the plain schedule numbers tiles, with
// ceil(m_blocks / 2) ranks per pair; num_tiles = 2 grid ceil(slots / grid), the tiles past the
// last slot empty.
//
// With `pair_major` (a persistent grid over dense or packed K / V, neither snake nor fold; kernels
// take it with or without kOrders, KernelTileRankAt), a pair's m_blocks tiles are
// consecutive (PairMajorTileRankAt): the blocks running at once work on grid / m_blocks pairs, all
// of one pair's query tiles together, so that each pair's K / V come from DRAM about once and then
// from L2 while they are read, instead of once per rank of an L2 group spread over rounds (a short
// sequence moves 256 MB of q, k, v and o per 16k-token launch at d 128, 85 us at 3 TB/s, more than
// half of a 512-key launch: DRAM traffic counts there). The ranks rotate with the pair, so that a
// block of a grid whose grid / m_blocks is odd (132 SMs, m_blocks 4) moves on one rank per round
// and a causal launch's costs even out over m_blocks rounds.
struct FwdSm90WsSchedule {
  int m_blocks;
  int pairs;  // q_heads * batch; pair = batch * q_heads + head
  int heads_per_group;
  int num_tiles;
  int grid;
  bool snake = false;
  bool fold = false;
  bool pair_major = false;
};

// Tile `tile` of the schedule as its pair's rank-th tile (TileMBlock gives its query block);
// `half` is -1 on a schedule without fold, else 0 for the first tile of a slot and 1 for its
// partner.
struct RankedTile {
  int rank;
  int pair;
  int half = -1;
};

// Index `index` of the plain order with `ranks` ranks per pair: heads in groups, rank by rank
// within a group.
ATTN_HOST_DEVICE inline RankedTile RankMajorAt(const FwdSm90WsSchedule& s, int index, int ranks) {
  const int group_tiles = s.heads_per_group * ranks;
  const int group = index / group_tiles;
  const int in_group = index - group * group_tiles;
  const int rest = s.pairs - group * s.heads_per_group;
  const int group_pairs = rest < s.heads_per_group ? rest : s.heads_per_group;
  const int rank = in_group / group_pairs;
  return {rank, group * s.heads_per_group + (in_group - rank * group_pairs)};
}

// Tile `tile` of a schedule with fold.
ATTN_HOST_DEVICE inline RankedTile FoldedTileRankAt(const FwdSm90WsSchedule& s, int tile) {
  const int round = tile / s.grid;
  const int slot = (round >> 1) * s.grid + (tile - round * s.grid);
  const int ranks = (s.m_blocks + 1) / 2;
  if (int64_t{slot} >= int64_t{ranks} * s.pairs) return {s.m_blocks, 0, 0};  // past the slots
  RankedTile at = RankMajorAt(s, slot, ranks);
  at.half = round & 1;
  return at;
}

// Tile `tile` of a schedule in the plain order (neither snake nor fold), which kernels compiled
// without the other orders (Sm90WsTraits::kOrders) take.
ATTN_HOST_DEVICE inline RankedTile PlainTileRankAt(const FwdSm90WsSchedule& s, int tile) {
  return RankMajorAt(s, tile, s.m_blocks);
}

// Tile `tile` of a schedule without fold.
ATTN_HOST_DEVICE inline RankedTile TileRankAt(const FwdSm90WsSchedule& s, int tile) {
  if (s.snake) {
    const int round = tile / s.grid;
    if ((round & 1) != 0 && int64_t{round + 1} * s.grid <= s.num_tiles) {
      tile = round * s.grid + (s.grid - 1 - (tile - round * s.grid));
    }
  }
  return RankMajorAt(s, tile, s.m_blocks);
}

// Tile `tile` of a schedule with pair_major: pair tile / m_blocks, rank (tile % m_blocks + pair)
// % m_blocks (every rank of the pair once).
ATTN_HOST_DEVICE inline RankedTile PairMajorTileRankAt(const FwdSm90WsSchedule& s, int tile) {
  const int pair = tile / s.m_blocks;
  int rank = tile - pair * s.m_blocks + pair % s.m_blocks;
  if (rank >= s.m_blocks) rank -= s.m_blocks;
  return {rank, pair};
}

// Tile `tile` of any schedule.
ATTN_HOST_DEVICE inline RankedTile ScheduleTileRankAt(const FwdSm90WsSchedule& s, int tile) {
  return s.fold         ? FoldedTileRankAt(s, tile)
         : s.pair_major ? PairMajorTileRankAt(s, tile)
                        : TileRankAt(s, tile);
}

// Tile `tile` as a kernel finds it: compiled with the snake and fold orders (kOrders), any
// schedule; without, the plain order or, for dense K / V, the pair-major one where the schedule
// has it (one branch, no other order's arithmetic); paged kernels the plain order only.
template <bool kOrders, bool kPaged>
ATTN_HOST_DEVICE inline RankedTile KernelTileRankAt(const FwdSm90WsSchedule& s, int tile) {
  if constexpr (kOrders) {
    return ScheduleTileRankAt(s, tile);
  } else if constexpr (kPaged) {
    return PlainTileRankAt(s, tile);
  } else {
    return s.pair_major ? PairMajorTileRankAt(s, tile) : PlainTileRankAt(s, tile);
  }
}

// The query block of rank `rank` of a sequence of `seq_m_blocks` query blocks: counted from the
// last block for causal, from the first otherwise; -1 when the sequence has no such rank.
ATTN_HOST_DEVICE inline int SequenceMBlock(int rank, int seq_m_blocks, bool causal) {
  if (rank >= seq_m_blocks) return -1;
  return causal ? seq_m_blocks - 1 - rank : rank;
}

// The query block of tile `at` in a sequence of `seq_m_blocks` query blocks (SequenceMBlock of its
// rank; with fold, of rank r < ceil(m / 2) for a slot's first tile and of m - 1 - r for its
// partner when that differs from r); -1 when the sequence has no such tile.
ATTN_HOST_DEVICE inline int TileMBlock(const RankedTile& at, int seq_m_blocks, bool causal) {
  int rank = at.rank;
  if (at.half >= 0) {
    if (rank >= (seq_m_blocks + 1) / 2) return -1;
    if (at.half == 1) {
      rank = seq_m_blocks - 1 - rank;
      if (rank <= at.rank) return -1;
    }
  }
  return SequenceMBlock(rank, seq_m_blocks, causal);
}

// Query tile `tile` of a dense batch (every sequence m_blocks query blocks long): query block
// m_block of pair `pair`.
struct ScheduledTile {
  int m_block;
  int pair;
};

ATTN_HOST_DEVICE inline ScheduledTile TileAt(const FwdSm90WsSchedule& s, bool causal, int tile) {
  const RankedTile at = ScheduleTileRankAt(s, tile);
  return {TileMBlock(at, s.m_blocks, causal), at.pair};
}

// Everything one launch reads: the checked, normalized params, the schedule and the bulk-copy
// (TMA) maps of q, k and v. Each map describes its tensor as 4-D {head_dim, heads, rows, batch}
// (innermost first; strides head, row and batch stride), boxes of {64, 1, tile rows, 1}: one
// 64-column panel of a tile, 128-byte rows in the 128-byte swizzle, which is SmemTile's layout
// (kernel_traits.h) and what wgmma's descriptors read. Rows past the tensor and columns past
// head_dim are zero-filled. A packed batch (cu_seqlens) maps the packed tensors as one sequence
// {head_dim, heads, total rows, 1}: a tile's box starts at its sequence's first row plus the
// tile's, and its rows past the sequence's end hold the next sequence's (or zeros past the
// tensor), which the kernel masks (keys) or does not store (query rows).
// `o` (built only for a configuration with tma_store_o) maps o likewise, in boxes of
// kSm90WsOStoreRows rows: one consumer warp's rows, which that warp stages and stores itself.
// Paged K / V (p.page_table set): k and v map their page pools as {head_dim, kv_heads,
// page_size, pages} (strides head, row and page stride = k_batch_stride; pages as MapPages in
// flash_fwd_sm90ws.cc counts them, at most kSm90WsPagedMapPages), boxes
// of {64, 1, Sm90WsPagedBoxRows(block_n, page_size), 1}: a box is one segment of a KV tile
// inside one page, at the page-table entry's page coordinate.
struct FwdSm90WsArgs {
  AttentionParams p;
  FwdSm90WsSchedule sched;
  CUtensorMap q;
  CUtensorMap k;
  CUtensorMap v;
  CUtensorMap o;
};

// Rows of one bulk store of O (tma_store_o): the 16 rows of one warp of the m64 accumulators.
inline constexpr int kSm90WsOStoreRows = 16;

// Rows of a paged KV tile's bulk copies: the page, or the largest power of two dividing block_n
// when that is smaller (block_n = 96 at bucket 64 with causal: 32), so that every box lies in
// one page and starts at a multiple of its size within the tile. page_size is a power of two.
ATTN_HOST_DEVICE constexpr int Sm90WsPagedBoxRows(int block_n, int page_size) {
  return page_size < (block_n & -block_n) ? page_size : (block_n & -block_n);
}

// The most pages of a paged map: every page index an int32 page table can hold. The host API
// maps min(this, 2^38 bytes / page stride) pages (256 GiB, more than any one GPU's memory). The
// params do not carry the pools' size, and a map's bounds are no protection against a wrong
// page-table entry anyway (the kernel reads the entries of the keys it attends to only, as the
// contract of AttentionParams::page_table asks of the caller).
inline constexpr int64_t kSm90WsPagedMapPages = (int64_t{1} << 31) - 1;

// The head-dim buckets the kernel is compiled for.
constexpr bool HasSm90WsKernel(int head_dim_bucket) {
  return head_dim_bucket == 64 || head_dim_bucket == 128 || head_dim_bucket == 256;
}

// One tile configuration: query tiles of 64 * consumers rows (one consumer warpgroup per 64),
// KV tiles of block_n keys through `stages` shared-memory buffers each for K and V, O staged in
// a shared tile of its own (separate_o: the next query tile's Q loads once the tile's last
// S = Q K^T has completed) or in Q's. With q_buffers = 2 (separate_o false) Q is double-buffered
// and O is staged in its own tile's Q buffer: the next tile's Q loads while the tile runs, in
// the shared memory of a separate O tile. prefetch_next: the producer prefetches the next query
// tile's Q and first KV tile into L2 when it starts a tile. tma_store_o (with separate_o): each
// consumer warp writes its staged O rows with a bulk tensor store issued by one lane instead of
// its 32 lanes' 16-byte stores, and waits for the store to have read them only before staging
// the next tile's O there. overlap_next_s (with q_buffers = 2): a consumer's last turn of a query
// tile issues the next tile's first S = Q K^T after the last P V, which then runs during the
// epilogue. All four aim at short sequences, where a query tile has only a few
// KV tiles to hide its prologue and epilogue behind.
struct Sm90WsTileConfig {
  int block_n;
  int stages;
  int consumers;
  bool separate_o;
  int q_buffers = 1;
  bool prefetch_next = false;
  bool tma_store_o = false;
  bool overlap_next_s = false;
  // The order of a persistent grid's tiles (FwdSm90WsSchedule::snake, fold, pair_major); snake
  // and fold need kernels compiled for them (Sm90WsTraits::kOrders), pair_major does not (dense
  // or packed K / V only: paged launches take the plain order).
  bool snake = false;
  bool fold = false;
  bool pair_major = false;
  // O stored from the consumers' registers, without a shared tile (Sm90WsTraits::kDirectO;
  // separate_o and tma_store_o off): 0 (off), 4 (each thread's 4-byte column pairs) or 16
  // (16-byte chunks gathered across each quad of threads).
  int direct_o = 0;
};

// Shared memory: Q (and O) 64 * consumers x d, stages x (K + V) block_n x d, 16-bit elements.
// From device call 2 of 2026-12-06 (H100, attention_kernel_bench --ws-variants, bf16, seqlen 512
// / 2048 / 8192, bench/results/gpu_2026-12-06d.md):
//  - d = 64: three consumers (192 query rows, 160 registers each), four stages: 192 x 128 without
//    a mask (1.08 / 1.18 / 1.19x the routed kernel, against 1.03 / 0.99 / 1.03x for the former
//    128 x 128 default), 192 x 96 with causal (192 x 128 spills 220 bytes there): 0.90 / 1.05 /
//    1.09-1.14x against 0.92 / 0.93 / 1.02x.
//  - d = 128: 128 x 128 tiles, two stages (32 + 32 + 2 x 64 = 192 KB): the best or within 1 % of
//    it without a mask; with causal the same tiles on one block per tile are best from 2048 keys
//    (Sm90WsPersistentFor).
//  - d = 256: 128 x 64 tiles, two stages, O staged in Q (64 + 2 x 64 = 192 KB; a separate O tile
//    would need 256). O is 128 floats per consumer thread, S 32. Not swept yet.
// The table takes `causal` because the best tiles differ with a mask. The paged kernels keep these
// (PagedSm90WsTileConfig); for dense and packed K / V, d = 128 writes O by bulk tensor stores
// (DefaultSm90WsTileConfig).
constexpr Sm90WsTileConfig PagedSm90WsTileConfig(int head_dim_bucket, bool causal) {
  if (head_dim_bucket <= 64)
    return causal ? Sm90WsTileConfig{96, 4, 3, true} : Sm90WsTileConfig{128, 4, 3, true};
  if (head_dim_bucket <= 128) return {128, 2, 2, true};
  return {64, 2, 2, false};
}

// Dense and packed K / V. d = 128 adds bulk tensor stores of O (tma_store_o) to the tiles above:
// device call 2 of session 7 (H200, --ws-variants --varlen, bf16, 15 interleaved rounds, queued
// as the peer's do_bench) timed them with the pair-major order (Sm90WsPairMajorFor) at 1.077 /
// 1.065 / 1.011 / 1.014x the former default without a mask at 512 / 1024 / 2048 / 4096 keys and
// 1.116 / 1.111 / 1.050x with causal at 512 / 1024 / 2048 (the default again: 0.965-1.005x),
// against 0.995-1.065x for the pair-major order alone.
constexpr Sm90WsTileConfig DefaultSm90WsTileConfig(int head_dim_bucket, bool causal) {
  Sm90WsTileConfig config = PagedSm90WsTileConfig(head_dim_bucket, causal);
  if (head_dim_bucket > 64 && head_dim_bucket <= 128) config.tma_store_o = true;
  return config;
}

// Whether the host API launches a persistent grid (one block per SM walking the schedule) rather
// than one block per query tile, for the longest sequence's seqlen_k and the head-dim bucket:
// always without a mask, and with causal while seqlen_k * bucket < 2048 * 128. The persistent
// blocks take their tiles in a fixed order, and long causal tiles differ enough in cost that the
// hardware's block scheduler balances one block per tile better (device call 2, d = 128 causal:
// one block per tile +11 % at 2048 keys, +9 % at 8192, -13 % at 512; call 1's grid ran 632
// TFLOP/s at 16384 keys against the persistent 509; d = 256 causal 16384: persistent 0.77x the
// routed kernel), while short ones gain from the persistent grid's overlap of a tile's epilogue
// with the next one's loads.
constexpr bool Sm90WsPersistentFor(bool causal, int seqlen_k, int head_dim_bucket) {
  return !causal || int64_t{seqlen_k} * head_dim_bucket < int64_t{2048} * 128;
}

// The persistent grid of a dense or packed launch (the paged and FP8 kernels keep
// Sm90WsPersistentFor): as Sm90WsPersistentFor, and at bucket 128 also causal launches of 2048 to
// 4095 keys, which with the pair-major order and the bulk stores of O ran 1.050x one block per
// tile at 2048 keys (device call 2 of session 7, H200) but 0.924x at 4096.
constexpr bool Sm90WsDensePersistentFor(bool causal, int seqlen_k, int head_dim_bucket) {
  if (head_dim_bucket > 64 && head_dim_bucket <= 128) return !causal || seqlen_k < 4096;
  return Sm90WsPersistentFor(causal, seqlen_k, head_dim_bucket);
}

// Whether a dense or packed launch's persistent grid takes the pair-major order
// (FwdSm90WsSchedule::pair_major): at buckets 64 and 128 up to 4096 keys, where device call 2 of
// session 7 (H200) measured it (d 128: with the bulk stores of O, above; d 64 without a mask
// 1.028 / 1.007 / 1.006 / 1.015x the plain order at 512 / 1024 / 2048 / 4096 keys, causal
// 1.135x at 2048, where the warp-specialized kernel serves causal launches). Longer sequences and
// bucket 256 keep the plain order, which they were measured with.
constexpr bool Sm90WsPairMajorFor(int seqlen_k, int head_dim_bucket) {
  return head_dim_bucket <= 128 && seqlen_k <= 4096;
}

// Whether the kernel zeroes the rows of a packed sequence's last V tile that lie past the
// sequence (the next sequence's rows) before P V reads them: without it a non-finite value in one
// sequence's V turns the masked products (0 * inf) of the sequence before it into NaN, so one
// request of a packed batch could spoil another's output. On; the switch exists to time the
// fix-up (a second warp of the producer warpgroup) against its absence on a GPU: with it ptxas
// spills 20 bytes at d 128 causal and d 256 dense and 76 at d 256 causal (without: none, and 8
// at d 256 causal), in every launch, packed or not.
inline constexpr bool kSm90WsZeroVTail = true;

// Enqueues the kernel on `stream` for `args` (params checked by CheckFlashFwdSm90Ws, schedule and
// maps built by MakeFwdSm90WsArgs for the same configuration) with p.dtype == kDType and
// head_dim <= kHeadDim; kCausal iff p.causal, kPaged iff p.page_table is set. Returns the
// launch's CUDA error.
template <DType kDType, int kHeadDim, bool kCausal, int kBlockN, int kStages, int kConsumers,
          bool kSeparateO, int kQBuffers = 1, bool kPrefetchNext = false, bool kTmaStoreO = false,
          bool kOverlapNextS = false, bool kOrders = false, bool kPaged = false, int kDirectO = 0>
cudaError_t LaunchFlashFwdSm90Ws(const FwdSm90WsArgs& args, cudaStream_t stream);

// The same with DefaultSm90WsTileConfig(kHeadDim, kCausal), or PagedSm90WsTileConfig for the paged
// kernels (kPaged, instantiated only in builds with ATTN_KERNEL_PAGED): the ones the host API
// launches.
template <DType kDType, int kHeadDim, bool kCausal, bool kPaged = false>
cudaError_t LaunchFlashFwdSm90WsDefault(const FwdSm90WsArgs& args, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_H_
