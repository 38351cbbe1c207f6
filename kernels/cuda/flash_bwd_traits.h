// Compile-time shape of the backward kernels (flash_bwd_kernel.cuh): tile sizes per head-dim
// bucket, shared-memory layout and the warp layouts of each product. Readable by the host
// compiler (the dispatch and the benchmark print the tiles); no device code here.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_

#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// One tile configuration of a backward kernel: blocks of `block_m` query rows and `block_n` keys,
// `warps` warps per block.
struct BwdTileConfig {
  int block_m;
  int block_n;
  int warps;
};

// The dK / dV kernel (one block per key tile). 64 x 64 tiles with 8 warps for every bucket: the
// four products of a tile pair split over the warps as 4 x 2 (16 keys x 32 queries for S^T and
// dP^T, 16 keys x head_dim / 2 for dV and dK, 16 queries x head_dim / 2 for dQ), so that the dK
// and dV accumulators (head_dim / 2 floats per thread together) fit in registers up to
// head_dim 256. Shared memory: K, V, Q, dO tiles and the 16-bit P^T and dS^T tiles,
// 4 * 64 * head_dim * 2 + 16 KB (144 KB at 256: one block per SM on sm_80 and sm_90).
// Not tuned on a GPU yet (docs/kernel.md, "Backward").
constexpr BwdTileConfig DefaultBwdTileConfig(int /*head_dim_bucket*/) { return {64, 64, 8}; }

// The deterministic dQ kernel (one block per query tile): 4 warps of 16 query rows, which hold
// dQ (head_dim / 2 floats per thread), S and dP (block_n / 2 each): 32-key tiles above 128.
constexpr BwdTileConfig DefaultBwdDqTileConfig(int head_dim_bucket) {
  return {64, head_dim_bucket > 128 ? 32 : 64, 4};
}

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_>
struct BwdKernelTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;  // query rows per tile
  static constexpr int kBlockN = kBlockN_;  // keys per tile
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kChunks = kHeadDim / 8;
  // LoadTile (flash_fwd_common.cuh) reads this: predicated-off copies need no address clamp.
  static constexpr int kKVStages = 2;

  static_assert(kHeadDim % 32 == 0 && kHeadDim >= 32 && kHeadDim <= 256,
                "head-dim buckets are multiples of 32 up to 256");
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0, "whole m16 / k16 steps");

  // S^T = K Q^T and dP^T = V dO^T, [kBlockN, kBlockM]: kWarpsN x kWarpsM warps of 16 keys x
  // kWarpCols queries.
  static constexpr int kWarpsN = kBlockN / 16;
  static constexpr int kWarpsM = kNWarps / kWarpsN;
  static constexpr int kWarpCols = kBlockM / (kWarpsM > 0 ? kWarpsM : 1);
  static constexpr int kNTilesSW = kWarpCols / 8;
  // dV += P^T dO and dK += dS^T Q, [kBlockN, kHeadDim]: kWarpsN x kWarpsM warps of 16 keys x
  // kWarpD columns.
  static constexpr int kWarpD = kHeadDim / (kWarpsM > 0 ? kWarpsM : 1);
  static constexpr int kNTilesD = kWarpD / 8;
  // dQ += dS K, [kBlockM, kHeadDim]: kWarpsQ x kWarpsQD warps of 16 queries x kWarpQD columns.
  static constexpr int kWarpsQ = kBlockM / 16;
  static constexpr int kWarpsQD = kNWarps / kWarpsQ;
  static constexpr int kWarpQD = kHeadDim / (kWarpsQD > 0 ? kWarpsQD : 1);

  static_assert(kNWarps % kWarpsN == 0 && kWarpsM >= 1, "whole rows of warps over the keys");
  static_assert(kBlockM % kWarpsM == 0 && kWarpCols % 16 == 0, "k16 pairs of query columns");
  static_assert(kHeadDim % kWarpsM == 0 && kWarpD % 16 == 0, "n16 pairs of dK / dV columns");
  static_assert(kNWarps % kWarpsQ == 0 && kWarpsQD >= 1, "whole rows of warps over the queries");
  static_assert(kHeadDim % kWarpsQD == 0 && kWarpQD % 16 == 0, "n16 pairs of dQ columns");
  static_assert(2 * kBlockM <= kNThreads, "one thread copies each lse and D entry");
  // dK and dV accumulators, S^T and dP^T per thread.
  static_assert(2 * 4 * kNTilesD + 2 * 4 * kNTilesSW <= 160, "accumulators fit in registers");

  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q and dO
  using KVTile = SmemTile<kBlockN, kHeadDim>;  // K and V
  using PTile = SmemTile<kBlockN, kBlockM>;    // P^T and dS^T (16-bit)
  static constexpr int kSmemKOffset = 0;
  static constexpr int kSmemVOffset = kSmemKOffset + KVTile::kBytes;
  static constexpr int kSmemQOffset = kSmemVOffset + KVTile::kBytes;
  static constexpr int kSmemDoOffset = kSmemQOffset + QTile::kBytes;
  static constexpr int kSmemPOffset = kSmemDoOffset + QTile::kBytes;
  static constexpr int kSmemDsOffset = kSmemPOffset + PTile::kBytes;
  static constexpr int kSmemLseOffset = kSmemDsOffset + PTile::kBytes;  // float [kBlockM]
  static constexpr int kSmemDOffset = kSmemLseOffset + 4 * kBlockM;     // float [kBlockM]
  static constexpr int kSmemBytes = kSmemDOffset + 4 * kBlockM;
  static_assert(kSmemBytes <= 163 * 1024, "shared memory per block on sm_80 (227 KB on sm_90)");
};

// The deterministic dQ kernel: each warp owns 16 query rows (the forward's layout), Q, dO, K and
// V tiles in shared memory, one K / V buffer.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_>
struct BwdDqKernelTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kKVStages = 2;
  static constexpr int kNTilesS = kBlockN / 8;
  static constexpr int kNTilesO = kHeadDim / 8;

  static_assert(kBlockM == 16 * kNWarps, "one m16 tile of query rows per warp");
  static_assert(kBlockN % 16 == 0, "k16 steps of dS K");
  static_assert(4 * (kNTilesO + 2 * kNTilesS) <= 192, "dQ, S and dP fit in registers");

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  static constexpr int kSmemQOffset = 0;
  static constexpr int kSmemDoOffset = QTile::kBytes;
  static constexpr int kSmemKOffset = kSmemDoOffset + QTile::kBytes;
  static constexpr int kSmemVOffset = kSmemKOffset + KVTile::kBytes;
  static constexpr int kSmemLseOffset = kSmemVOffset + KVTile::kBytes;
  static constexpr int kSmemDOffset = kSmemLseOffset + 4 * kBlockM;
  static constexpr int kSmemBytes = kSmemDOffset + 4 * kBlockM;
  static_assert(kSmemBytes <= 163 * 1024, "shared memory per block on sm_80");
};

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_
