// Compile-time shape of the forward kernel: tile sizes per head-dim bucket, the shared-memory
// layout of a tile, and the derived constants the device code is written against. Readable by the
// host compiler (the dispatch and the benchmark use the tile table); no device code here.
#ifndef ATTENTION_KERNELS_CUDA_KERNEL_TRAITS_H_
#define ATTENTION_KERNELS_CUDA_KERNEL_TRAITS_H_

#include <cstdint>

#ifdef __CUDACC__
#define ATTN_HOST_DEVICE __host__ __device__
#else
#define ATTN_HOST_DEVICE
#endif

namespace attention::cuda {

// Which feature set one compiled kernel covers. Each (dtype, head-dim bucket) has five:
//   kDense:   no window, no ALiBi / softcap / mask; only the last KV tile is masked (seqlen_k).
//   kWindow:  causal or sliding window (same constraints otherwise); fully masked KV tiles are
//             skipped and only the boundary tiles are masked element-wise.
//   kGeneral: everything else at run time: window, ALiBi, softcap, bool / additive mask, and a
//             softmax_scale <= 0. Scores are turned into logits before the softmax.
//   kPaged, kPagedGeneral: kWindow and kGeneral with K / V read through page tables
//             (AttentionParams::page_table, seqlens_k) and an optional key range per sequence.
//             A paged launch without a window runs kPaged, whose tile loop costs the same.
// Attention sinks are no variant: every variant folds them into its final normalization, and a
// launch without sinks reads none.
enum class FwdVariant : uint8_t { kDense, kWindow, kGeneral, kPaged, kPagedGeneral };

// Whether the variant honours a window (causal included) and skips the KV tiles outside it.
ATTN_HOST_DEVICE constexpr bool VariantHasWindow(FwdVariant v) { return v != FwdVariant::kDense; }
// Whether the variant turns scores into logits (softcap, ALiBi, masks, any softmax_scale).
ATTN_HOST_DEVICE constexpr bool VariantIsGeneral(FwdVariant v) {
  return v == FwdVariant::kGeneral || v == FwdVariant::kPagedGeneral;
}
// Whether the variant reads K / V through page tables.
ATTN_HOST_DEVICE constexpr bool VariantIsPaged(FwdVariant v) {
  return v == FwdVariant::kPaged || v == FwdVariant::kPagedGeneral;
}

// Page sizes (keys per page) the paged variants take: powers of two in [kMinPageSize,
// kMaxPageSize]. A KV tile (64 or 128 keys, aligned to its size) then spans whole pages or lies
// inside one, so it needs at most kBlockN / kMinPageSize page-table entries. The kernels work
// for any larger power of two too; 256 is the largest the session store uses.
inline constexpr int kMinPageSize = 16;
inline constexpr int kMaxPageSize = 256;

// Head-dim buckets that kernels are generated for: head_dim_buckets.txt (compiled_head_dims.h
// for the host dispatch). A head_dim (multiple of 8) runs in the smallest compiled bucket >=
// head_dim, with zero-filled loads and predicated stores for the columns past head_dim.

// One tile configuration: a block of `block_m` query rows streams K/V in tiles of `block_n` rows
// through `kv_stages` shared-memory buffers each (1: V's load overlaps QK^T and the next K's load
// overlaps softmax + PV; 2: both are loaded one whole iteration ahead).
struct TileConfig {
  int block_m;
  int block_n;
  int warps;
  int kv_stages;
  // Load the ldmatrix fragments of the next k-step before the MMAs of the current one, in
  // explicit register double buffers, instead of leaving the distance to ptxas.
  bool prefetch_fragments;
};

// The tile table. The measurements behind each row are in docs/kernel.md and bench/cuda/NOTES.md.
//  - Each warp owns 16 * block_m / (16 * warps) query rows: two m16 tiles per warp (4 warps for
//    128 rows) lets every K / V fragment read from shared memory feed two MMAs, which is what
//    keeps mma.sync off the shared-memory bandwidth limit. Above d = 128 the O accumulator
//    (32 rows x d floats per warp) no longer fits in 255 registers, so 8 warps of 16 rows.
//  - 128-row query tiles halve the K / V traffic per FLOP relative to 64-row ones.
//  - kv_stages = 2 everywhere the shared memory allows two blocks per SM (d <= 128) or one block
//    of 8 warps (d > 128).
constexpr TileConfig DefaultTileConfig(int head_dim_bucket) {
  if (head_dim_bucket <= 64) return {128, 64, 4, 2, false};
  if (head_dim_bucket <= 128) return {128, 64, 4, 2, false};
  if (head_dim_bucket < 256) return {128, 64, 8, 2, false};
  return {64, 64, 4, 1, false};
}

// Shared-memory layout of a [kRows, kCols] tile of 16-bit elements. The columns are split into
// panels of 64 (128-byte rows; a last panel of 32 columns when kCols % 64 == 32), each panel
// stored row-major. Inside a panel the 16-byte chunk c of row r is stored at chunk position
// c ^ (r % 8) (64-column panels) or c ^ ((r / 2) % 4) (32-column panel), so that the eight rows
// an ldmatrix phase reads, and the eight rows a warp's cp.async writes, fall in distinct banks.
template <int kRows, int kCols>
struct SmemTile {
  static_assert(kCols % 32 == 0, "tile columns come in 32-column steps");
  static constexpr uint32_t kFullPanels = kCols / 64;
  static constexpr bool kHasHalfPanel = kCols % 64 != 0;
  static constexpr int kBytes = kRows * kCols * 2;

  // Bytes from one row to the next in the panel of 16-byte chunk `chunk`: 128, or 64 in the
  // trailing 32-column panel. Rows a multiple of 8 apart keep their swizzle position in either.
  ATTN_HOST_DEVICE static constexpr uint32_t RowBytes(int chunk) {
    return kHasHalfPanel && static_cast<uint32_t>(chunk) / 8 == kFullPanels ? 64u : 128u;
  }

  // Byte offset of 16-byte chunk `chunk` (columns 8 * chunk ..) of row `row`.
  ATTN_HOST_DEVICE static constexpr uint32_t Offset(int row, int chunk) {
    const uint32_t r = static_cast<uint32_t>(row);
    const uint32_t c = static_cast<uint32_t>(chunk);
    const uint32_t panel = c / 8;
    if (kHasHalfPanel && panel == kFullPanels) {
      return kFullPanels * (kRows * 128u) + r * 64u + (((c % 8) ^ ((r / 2) % 4)) << 4);
    }
    return panel * (kRows * 128u) + r * 128u + (((c % 8) ^ (r % 8)) << 4);
  }

  // ldmatrix addressing. Every lane of an ldmatrix.x4 reads row (row0 + lane_row) at chunk
  // (chunk0 + lane_chunk), with row0 % 8 == 0 and chunk0 % 2 == 0 known at compile time and
  // lane_chunk in {0, 1}. Since the tile base is 128-byte aligned, the swizzle only touches
  // address bits 4-6, so a lane's address is its lane base (below, computed once per thread)
  // XOR (chunk0 % 8) << 4 plus a compile-time offset: one LOP3 per ldmatrix, immediates for the
  // rest.
  struct LaneBase {
    uint32_t full;  // for 64-column panels
    uint32_t half;  // for the trailing 32-column panel
  };
  ATTN_HOST_DEVICE static constexpr LaneBase MakeLaneBase(uint32_t tile_base, uint32_t lane_row,
                                                          uint32_t lane_chunk) {
    return {tile_base + lane_row * 128u + (((lane_chunk ^ lane_row) & 7u) << 4),
            tile_base + kFullPanels * (kRows * 128u) + lane_row * 64u +
                (((lane_chunk ^ (lane_row / 2)) & 3u) << 4)};
  }
  ATTN_HOST_DEVICE static constexpr uint32_t LdsmAddress(const LaneBase& lane, int row0,
                                                         int chunk0) {
    const uint32_t panel = static_cast<uint32_t>(chunk0) / 8;
    const uint32_t c = static_cast<uint32_t>(chunk0) % 8;
    if (kHasHalfPanel && panel == kFullPanels) {
      return (lane.half ^ (c << 4)) + static_cast<uint32_t>(row0) * 64u;
    }
    return (lane.full ^ (c << 4)) + panel * (kRows * 128u) + static_cast<uint32_t>(row0) * 128u;
  }
};

// Constants the device code is written against, checked once here.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kKVStages_,
          bool kPrefetchFragments_ = false>
struct FwdKernelTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kKVStages = kKVStages_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr bool kPrefetchFragments = kPrefetchFragments_;

  static_assert(kHeadDim % 32 == 0 && kHeadDim >= 32 && kHeadDim <= 256,
                "head-dim buckets are multiples of 32 up to 256");
  static_assert(kBlockM % (16 * kNWarps) == 0, "every warp owns whole m16 tiles");
  static_assert(kBlockN % 16 == 0 && kBlockN >= 16, "KV tiles come in k16 steps of the PV product");
  static_assert(kKVStages == 1 || kKVStages == 2, "one or two shared-memory buffers for K and V");

  // m16 tiles of query rows per warp, n8 tiles of S per m16 tile, n8 tiles of O per m16 tile.
  static constexpr int kMTiles = kBlockM / (16 * kNWarps);
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static_assert(kMTiles >= 1 && kMTiles <= 2, "one or two m16 tiles per warp");
  // Float32 accumulators per thread: O is 4 * kMTiles * kNTilesO, S is 4 * kMTiles * kNTilesS.
  static_assert(4 * kMTiles * (kNTilesO + kNTilesS) <= 192,
                "the S and O accumulators must leave registers for fragments and addresses");

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemKOffset = QTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + kKVStages * KVTile::kBytes;
  static constexpr int kSmemBytes = kSmemVOffset + kKVStages * KVTile::kBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");

  // Blocks per SM the register allocation is sized for (two 4-warp blocks share an SM).
  static constexpr int kMinBlocksPerSm = kNWarps == 4 && 2 * kSmemBytes <= 227 * 1024 ? 2 : 1;

  // Paged variants only: kPageSlots slots of kPageEntries page-table entries behind the tiles
  // (PageSlots in flash_fwd_common.cuh), launched with kSmemBytesPaged.
  static constexpr int kPageEntries = kBlockN >= kMinPageSize ? kBlockN / kMinPageSize : 1;
  static constexpr int kPageSlots = 4;
  static constexpr int kSmemPageOffset = kSmemBytes;
  static constexpr int kSmemBytesPaged = kSmemBytes + kPageSlots * kPageEntries * 4;
  static_assert(kPageEntries <= kNThreads, "one thread copies each page-table entry");
};

// The Hopper kernel (sm_90a, flash_fwd_sm90_kernel.cuh): S = Q K^T and O += P V on warpgroup MMAs
// (wgmma) reading K and V straight from shared memory. Compiled for every head-dim bucket (the
// multiples of 32 up to 256): SmemTile's 64-column panels are wgmma's 128-byte swizzle and its
// trailing 32-column panel (buckets 32, 96, 160, 224) is the 64-byte swizzle, each described by
// its own descriptors.
constexpr bool HasSm90Kernel(int head_dim_bucket) {
  return head_dim_bucket % 32 == 0 && head_dim_bucket >= 32 && head_dim_bucket <= 256;
}

// Whether the host dispatch runs a bucket's Hopper kernel by default (on compute capability 9.0
// devices): every bucket. Those with a trailing 32-column panel (32, 96, 160, 224) passed the GPU
// tests on wgmma (H100, 2026-12-06: 96 and 160 in bench/results/gpu_2026-12-06d.md, call 4; 32
// and 224 in bench/results/gpu_2026-12-06e.md, call C: every variant's test on wgmma, memcheck /
// racecheck clean; 1.08-1.92x FA2 and 1.10-1.74x the mma.sync kernel on head dims 32 / 200 /
// 224, 1.00-1.79x FA2 on 72 / 80 / 96 / 160). kRouteSm90HalfPanelBuckets = false sends those four
// buckets back to the mma.sync kernel; ATTN_CUDA_KERNELS picks a family per process
// (flash_fwd_dispatch.h).
inline constexpr bool kRouteSm90HalfPanelBuckets = true;
constexpr bool Sm90KernelRoutedByDefault(int head_dim_bucket) {
  return HasSm90Kernel(head_dim_bucket) &&
         (head_dim_bucket % 64 == 0 || kRouteSm90HalfPanelBuckets);
}

struct Sm90TileConfig {
  int block_n;
  int warpgroups;     // each owns 64 query rows: block_m = 64 * warpgroups
  int blocks_per_sm;  // the register budget: 65536 / (blocks_per_sm * threads) per thread
};

// Measured on an H100 (bench/cuda/NOTES.md, run 10). d = 64: 128 x 64 tiles with registers for
// two blocks per SM (80 KB of shared memory each), so that one block's softmax overlaps the
// other's MMAs: +20-30% over one block of 128 x 128. d = 128: 128 x 128 tiles, one block (160 KB
// of shared memory). d > 128: 64-key tiles, which keep the O accumulator (d / 2 floats per
// thread) and S (32) in registers.
// The buckets with a trailing 32-column panel take the configuration of the next larger bucket,
// from ptxas (-Xptxas -v, bf16): d = 32 as d = 64 (113-128 registers for two blocks per SM; the
// paged general variant spills 80 bytes, d = 64's 120), d = 96 as d = 128, d = 160 and 224 as
// d > 128 (no spills but in the paged variants).
constexpr Sm90TileConfig DefaultSm90TileConfig(int head_dim_bucket) {
  if (head_dim_bucket <= 64) return {64, 2, 2};
  if (head_dim_bucket <= 128) return {128, 2, 1};
  return {64, 2, 1};
}

template <int kHeadDim_, int kBlockN_, int kWarpgroups_, int kMinBlocksPerSm_ = 1>
struct Sm90FwdKernelTraits {
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarpgroups = kWarpgroups_;
  static constexpr int kBlockM = 64 * kWarpgroups;
  static constexpr int kNWarps = 4 * kWarpgroups;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kKVStages = 2;  // K[n-1], V[n-1] load while tile n computes
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kMTiles = 1;  // per warp: 16 rows of its warpgroup's m64 tile
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  // O += P V runs as one wgmma over the 64-column panels (N = 64 * kFullPanels, 128-byte swizzle)
  // and, when the bucket has a trailing 32-column panel, one over it (N = 32, 64-byte swizzle):
  // a descriptor has one swizzle mode. Q K^T takes one descriptor per k16 step anyway.
  static constexpr int kFullPanels = kHeadDim / 64;
  static constexpr bool kHasHalfPanel = kHeadDim % 64 != 0;
  static constexpr int kNTilesOFull = 8 * kFullPanels;  // O's n8 tiles in the 64-column panels

  static_assert(HasSm90Kernel(kHeadDim), "head-dim buckets are multiples of 32 up to 256");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N and the k16 steps of P V");
  static_assert(kWarpgroups >= 1 && kWarpgroups <= 3, "at most 192 query rows per block");

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  // Every tile starts on a 1024-byte boundary (the period of the 128-byte swizzle); a trailing
  // 32-column panel starts kRows * 128 * kFullPanels bytes in, on a 512-byte boundary (the
  // period of the 64-byte swizzle), and so does each warpgroup's 64 rows of it in Q.
  static_assert(QTile::kBytes % 1024 == 0 && KVTile::kBytes % 1024 == 0, "1024-byte tiles");
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemKOffset = QTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + kKVStages * KVTile::kBytes;
  static constexpr int kSmemBytes = kSmemVOffset + kKVStages * KVTile::kBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");
  static_assert(kMinBlocksPerSm * (kSmemBytes + 2048) <= 228 * 1024,
                "the blocks the registers are sized for must fit in shared memory too");

  // Paged variants only, as in FwdKernelTraits.
  static constexpr int kPageEntries = kBlockN / kMinPageSize;
  static constexpr int kPageSlots = 4;
  static constexpr int kSmemPageOffset = kSmemBytes;
  static constexpr int kSmemBytesPaged = kSmemBytes + kPageSlots * kPageEntries * 4;
  static_assert(kMinBlocksPerSm * (kSmemBytesPaged + 2048) <= 228 * 1024,
                "the paged variant keeps the blocks per SM of the dense one");
};

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_KERNEL_TRAITS_H_
