// Compile-time shape of the float32 forward kernel (flash_fwd_fp32_kernel.cuh): its variants, the
// tile table per head-dim bucket, the shared-memory layout of a float32 tile, and the declaration
// of the launch template that the generated instantiation files define. Host-compilable (the
// dispatch and the benchmark read the tile table); no device code and no absl here.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_TRAITS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_TRAITS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// Which feature set one compiled float32 kernel covers. Two per (head-dim bucket, precision):
//   kPlain:   no ALiBi / softcap / mask and softmax_scale > 0 (the scale is folded into exp2);
//             causal and sliding windows at run time (fully masked KV tiles skipped, boundary
//             tiles masked element-wise).
//   kGeneral: everything else at run time: window, ALiBi, softcap, bool / additive mask, and a
//             softmax_scale <= 0; scores are turned into logits before the softmax.
// Sinks are a run-time branch of the epilogue of both.
enum class Fp32Variant : uint8_t { kPlain, kGeneral };

// Code-shape options of the float32 kernel, a bit set (Fp32TileConfig::options). None changes
// what is computed (the products, their order and the roundings are the same), only the code and
// the schedule; bench/cuda/fp32_notes.md has the measurements.
//   kFp32OneBody:    one copy of the K/V step, the element-wise mask applied under a run-time
//                    flag, instead of a masked and an unmasked copy. At d = 256 a copy is ~85 KB
//                    of SASS, and a causal block runs both (its diagonal tiles masked, the rest
//                    not), so every block refetches each copy into the instruction cache.
//   kFp32RolledQk:   the k-loop of Q K^T (head_dim / 8 steps) unrolled 4 times rather than fully:
//                    a smaller step body again, for some address arithmetic.
//   kFp32Persistent: one block per SM slot (grid = SMs x blocks_per_sm) walks its query tiles one
//                    after the other; the next tile's Q and first K tile load during the last
//                    step's P V and the epilogue, which with one block per SM nothing overlapped.
enum Fp32KernelOption : int {
  kFp32OneBody = 1,
  kFp32RolledQk = 2,
  kFp32Persistent = 4,
};

// One tile configuration of the float32 kernel: a block of `block_m` query rows (`warps` warps,
// 16 or 32 rows each) streams K / V in tiles of `block_n` keys through `stages` shared-memory
// buffers each (1: V[n] loads behind Q K^T and K[n-1] behind softmax + P V; 2: both one whole
// iteration ahead). `blocks_per_sm` sizes the register budget (__launch_bounds__); `options` is a
// set of Fp32KernelOption.
struct Fp32TileConfig {
  int block_m;
  int block_n;
  int warps;
  int stages;
  int blocks_per_sm;
  int options = 0;
};

// The tile table. Float32 tiles take twice the shared memory of 16-bit ones and the split
// operands (big + small parts) twice the fragment registers, so the 16-bit kernel's 128 x 64 tiles
// do not carry over. The rows below compile without register spills (ptxas -v, sm_90a) except
// d > 192, and keep 8 warps per SM; bench/cuda/fp32_notes.md has the measurements behind them.
//  - d <= 96: 4 warps of 32 query rows: every K / V fragment read from shared memory (and split)
//    feeds the MMAs of two m16 tiles, which halves the shared-memory traffic and the split
//    arithmetic per MMA relative to 16-row warps. Two blocks per SM (64 / 96 KB at d = 64 / 96).
//  - d = 128: 4 warps of 32 rows with 32-key tiles, one stage (96 KB, two blocks per SM). Since P V
//    runs per K/V tile into its own accumulator this beat 16-row warps with 64-key tiles on an H100
//    by 13-19% (tile sweep, bench/results/gpu_2026-12-06b.md: 61.3 against 54.1 TFLOP/s at 4096
//    tokens, causal 50.0 against 42.6).
//  - d > 128: 8 warps of 16 rows, 32-key tiles, one stage, one block per SM (192 KB at d = 256).
//    Bucket 256 with one step body (kFp32OneBody): on an H100 (2026-12-06, sixth session, call 2)
//    it ran causal 512 / 1024 at 35.2 / 42.2 TFLOP/s against 26.9 / 35.4 with the masked and
//    unmasked copies (PyTorch's float32 SDPA: 33.1 / 35.9), and every other cell of the d-256 grid
//    1-8% faster, o bitwise the same. Buckets 160-224 keep two copies until a device run checks
//    them (their grid cells are not measured).
constexpr Fp32TileConfig DefaultFp32TileConfig(int head_dim_bucket) {
  if (head_dim_bucket <= 32) return {128, 64, 4, 2, 2};
  if (head_dim_bucket <= 96) return {128, 32, 4, 2, 2};
  if (head_dim_bucket <= 128) return {128, 32, 4, 1, 2};
  if (head_dim_bucket <= 224) return {128, 32, 8, 1, 1};
  return {128, 32, 8, 1, 1, kFp32OneBody};
}

// Shared-memory layout of a [kRows, kCols] float32 tile: rows of kCols * 4 bytes (a multiple of
// 128) in row-major order; within each group of eight 16-byte chunks (128 bytes) of a row, chunk
// c is stored at position c ^ (row % 8). The eight rows an ldmatrix phase reads at one chunk, the
// rows {0, 2, 4, 6} (or {1, 3, 5, 7}) x two adjacent chunks a V-fragment load phase reads, and
// the consecutive chunks of one row a warp's cp.async writes all fall in distinct banks.
template <int kRows, int kCols>
struct Fp32SmemTile {
  static_assert(kCols % 32 == 0, "rows of whole 128-byte swizzle groups");
  static constexpr int kChunks = kCols / 4;  // 16-byte chunks per row
  static constexpr uint32_t kRowBytes = kCols * 4;
  static constexpr int kBytes = kRows * kCols * 4;

  // Byte offset of 16-byte chunk `chunk` (columns 4 * chunk ..) of row `row`.
  ATTN_HOST_DEVICE static constexpr uint32_t Offset(int row, int chunk) {
    const uint32_t r = static_cast<uint32_t>(row);
    const uint32_t c = static_cast<uint32_t>(chunk);
    return r * kRowBytes + (((c & ~7u) | ((c ^ r) & 7u)) << 4);
  }

  // The offset of (row0 + rows, chunk) from `offset0` = Offset(row0, chunk), where rows is a
  // multiple of a power of two R and row0 < R (the tile copies' rows per iteration): the row's
  // swizzle bits are row0's XOR those of `rows`, so one XOR and one add, no recomputation.
  ATTN_HOST_DEVICE static constexpr uint32_t OffsetAfterRows(uint32_t offset0, uint32_t rows) {
    return (offset0 ^ ((rows & 7u) << 4)) + rows * kRowBytes;
  }

  // ldmatrix addressing: a lane reads row (row0 + lane_row) at chunk (chunk0 + lane_chunk) with
  // row0 % 8 == 0 and chunk0 % 2 == 0 known at compile time and lane_chunk in {0, 1}. With a
  // 128-byte aligned tile the swizzle only touches address bits 4-6, so the address is the lane
  // base (computed once) XOR (chunk0 % 8) << 4 plus a compile-time offset.
  ATTN_HOST_DEVICE static constexpr uint32_t LaneBase(uint32_t tile_base, uint32_t lane_row,
                                                      uint32_t lane_chunk) {
    return tile_base + lane_row * kRowBytes + (((lane_chunk ^ lane_row) & 7u) << 4);
  }
  ATTN_HOST_DEVICE static constexpr uint32_t Address(uint32_t lane_base, int row0, int chunk0) {
    return (lane_base ^ ((static_cast<uint32_t>(chunk0) & 7u) << 4)) +
           static_cast<uint32_t>(row0) * kRowBytes + (static_cast<uint32_t>(chunk0) / 8u) * 128u;
  }
};

// Constants the float32 device code is written against, checked once here.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kStages_,
          int kMinBlocksPerSm_, int kOptions_ = 0>
struct Fp32FwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kOptions = kOptions_;
  static constexpr bool kOneBody = (kOptions & kFp32OneBody) != 0;
  static constexpr bool kRolledQk = (kOptions & kFp32RolledQk) != 0;
  static constexpr bool kPersistent = (kOptions & kFp32Persistent) != 0;
  static constexpr int kNThreads = kNWarps * 32;

  static_assert((kOptions & ~(kFp32OneBody | kFp32RolledQk | kFp32Persistent)) == 0,
                "unknown Fp32KernelOption bits");
  static_assert(!kPersistent || kStages == 1,
                "the persistent schedule loads the next tile's Q into buffers one stage frees");
  static_assert(!kRolledQk || (kHeadDim / 8) % 4 == 0, "the rolled Q K^T loop steps by 4");

  static_assert(
      kHeadDim % 32 == 0 && kHeadDim >= 32 && kHeadDim <= 256,
      "head-dim buckets are multiples of 32 up to 256 (P V reads V 32 columns at a time)");
  static_assert(kBlockM % (16 * kNWarps) == 0, "every warp owns whole m16 tiles");
  static_assert(kBlockN % 16 == 0 && kBlockN >= 16, "K fragments come in pairs of n8 tiles");
  static_assert(kStages == 1 || kStages == 2, "one or two shared-memory buffers for K and V");

  // m16 tiles of query rows per warp, n8 tiles of S and of O per m16 tile.
  static constexpr int kMTiles = kBlockM / (16 * kNWarps);
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;
  static_assert(kMTiles >= 1 && kMTiles <= 2, "one or two m16 tiles per warp");
  // Float32 accumulators per thread: O is 4 * kMTiles * kNTilesO, S is 4 * kMTiles * kNTilesS;
  // the split fragments (up to 8 registers per m16 tile of Q and P, 8 per K / V fragment) and
  // the addresses need the rest of 255.
  static_assert(4 * kMTiles * (kNTilesO + kNTilesS) <= 160,
                "the S and O accumulators must leave registers for the split fragments");

  using QTile = Fp32SmemTile<kBlockM, kHeadDim>;
  using KVTile = Fp32SmemTile<kBlockN, kHeadDim>;
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemKOffset = QTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + kStages * KVTile::kBytes;
  static constexpr int kSmemBytes = kSmemVOffset + kStages * KVTile::kBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");
  static_assert(kMinBlocksPerSm * (kSmemBytes + 1024) <= 228 * 1024,
                "the blocks the registers are sized for must fit in shared memory too");
};

// Enqueues the float32 kernel for `p` on `stream` with DefaultFp32TileConfig(kHeadDim).
// `p` must be normalized and checked (attention_cuda.cc, flash_fwd_fp32.h's CheckFp32Layout),
// with p.dtype == kFloat32, p.head_dim <= kHeadDim and kPrecision kFull (split-TF32 products,
// float32 accuracy) or kTF32 (one TF32 product). Returns the launch's CUDA error.
template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision>
cudaError_t RunFlashFwdFp32(const AttentionParams& p, cudaStream_t stream);

// Same with an explicit tile configuration (the benchmark's tile sweep instantiates it for the
// configurations it measures).
template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision, int kBlockM, int kBlockN,
          int kNWarps, int kStages, int kMinBlocksPerSm, int kOptions = 0>
cudaError_t RunFlashFwdFp32Tiles(const AttentionParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_TRAITS_H_
