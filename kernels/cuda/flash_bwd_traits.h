// Compile-time shape of the backward kernels (flash_bwd_kernel.cuh): tile sizes per head-dim
// bucket, shared-memory layout and the warp layouts of each product. Readable by the host
// compiler (the dispatch and the benchmark print the tiles); no device code here.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_

#include <type_traits>

#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// One tile configuration of a backward kernel: blocks of `block_m` query rows and `block_n` keys,
// `warps` warps per block. The dK / dV kernel splits its three kinds of product over its own warp
// grid each (the dQ kernel's warps each own 16 query rows and ignore the last three fields):
//   sdp_warps_n: warps along the keys of S^T = K Q^T and dP^T = V dO^T [block_n, block_m], the
//                others along the queries;
//   dkv_warps_n: warps along the keys of dV += P^T dO and dK += dS^T Q [block_n, head_dim], the
//                others along head_dim;
//   dq_warps_m:  warps along the queries of dQ += dS K [block_m, head_dim], the others along
//                head_dim.
// (FlashAttention-2's AtomLayoutMSdP is warps / sdp_warps_n, its AtomLayoutNdKV dkv_warps_n and
// its AtomLayoutMdQ dq_warps_m.) q_stages: shared-memory buffers of the query tile (Q, dO, lse,
// D): 1 loads the next tile once this one's dK / dV products are done (it flies during dQ), 2
// loads it when this one starts (it flies during all three products; 2 x block_m x head_dim x 4
// bytes more shared memory).
struct BwdTileConfig {
  int block_m;
  int block_n;
  int warps;
  int sdp_warps_n = 0;
  int dkv_warps_n = 0;
  int dq_warps_m = 0;
  int q_stages = 1;
};

// The dK / dV kernel (one block per key tile) per head-dim bucket. 32, 64 and 128:
// FlashAttention-2's sm_80 / sm_90 choice, 128-key tiles of 64 query rows and 8 warps, so that
// each block loads Q and dO (and adds its dQ atomics) once per 128 keys instead of once per 64.
// The dK and dV accumulators of a warp (32 keys x head_dim / 2, i.e. 64 floats per thread each
// at 128) are spread over 4 x 2 warps; S^T and dP^T over 4 x 2 (32 keys x 32 queries); dQ over
// 4 x 2 at 32 and 64, 2 x 4 at 128 (32 queries x 32 columns: one 32-float accumulator pass, dS
// fragments read once). Other buckets: 64 x 64 tiles, every product 4 x 2, so that dK and dV
// (16 keys x head_dim / 2 each) fit in registers up to 256. Query-tile stages: two where shared
// memory allows (the next Q / dO land during all three products; the deterministic mode has no
// dQ product to hide them behind), one at 160 and from 224 up. The choices between equally
// plausible ones follow ptxas (sm_90a, bf16; every kernel at 255 registers or fewer): no spills
// at 32, 64, 96 and 128 (dense), where 64 x 128 tiles spill 96-168 bytes at 96 and one stage 16
// bytes at 128; at 192 two stages spill 24 bytes where one spills 96; 160, 224 and 256 spill
// 56, about 470 (general variant) and 40 bytes. Shared memory: K, V (block_n x head_dim each),
// Q, dO (block_m x head_dim, per stage) and the 16-bit P^T, dS^T tiles (block_n x block_m): 96 KB
// at 64, 161 KB at 128 and 192, 144 KB at 256; one block per SM, within sm_80's 163 KB.
// Measured (H100, 2026-12-06, backward_bench --sweep, bench/results/gpu_2026-12-06b.md): at 128
// the default above was the fastest of six candidates at every sequence length (182-241 TFLOP/s,
// +36-45% over 64 x 64); at 64, 128 x 128 tiles with S^T / dP^T over 2 x 4 warps and one query
// stage beat it by 3-7% (190 against 181 TFLOP/s at 16k tokens; 96 bytes of spills), and are the
// default there. 32 keeps 64 x 128 (not measured).
constexpr BwdTileConfig DefaultBwdTileConfig(int head_dim_bucket) {
  switch (head_dim_bucket) {
    case 32:
      return {64, 128, 8, 4, 4, 4, 2};
    case 64:
      return {128, 128, 8, 2, 4, 4, 1};
    case 96:
      return {64, 64, 8, 4, 4, 4, 2};
    case 128:
      return {64, 128, 8, 4, 4, 2, 2};
    case 192:
      return {64, 64, 8, 4, 4, 4, 2};
    default:  // 160, 224, 256
      return {64, 64, 8, 4, 4, 4, 1};
  }
}

// The deterministic dQ kernel (one block per query tile): 4 warps of 16 query rows, which hold
// dQ (head_dim / 2 floats per thread), S and dP (block_n / 2 each): 32-key tiles above 128.
constexpr BwdTileConfig DefaultBwdDqTileConfig(int head_dim_bucket) {
  return {64, head_dim_bucket > 128 ? 32 : 64, 4};
}

// The dK / dV kernel's constants for one configuration (BwdTileConfig's fields, in order).
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kSdpWarpsN_, int kDkvWarpsN_,
          int kDqWarpsM_, int kQStages_ = 1>
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
  static_assert(kBlockM % 32 == 0, "P^T and dS^T tiles have whole 32-column steps of queries");
  static_assert(kSdpWarpsN_ >= 1 && kDkvWarpsN_ >= 1 && kDqWarpsM_ >= 1, "warp grids given");
  static constexpr int kQStages = kQStages_;
  static_assert(kQStages == 1 || kQStages == 2, "one or two query-tile buffers");

  // A. S^T = K Q^T and dP^T = V dO^T, [kBlockN, kBlockM]: kSdpWarpsN x kSdpWarpsM warps, each
  // kSdpMTiles m16 tiles of keys x kSdpWarpCols queries (kNTilesSW n8 tiles).
  static constexpr int kSdpWarpsN = kSdpWarpsN_;
  static constexpr int kSdpWarpsM = kNWarps / kSdpWarpsN;
  static constexpr int kSdpMTiles = kBlockN / (16 * kSdpWarpsN);
  static constexpr int kSdpWarpCols = kBlockM / kSdpWarpsM;
  static constexpr int kNTilesSW = kSdpWarpCols / 8;
  static_assert(kNWarps % kSdpWarpsN == 0, "S^T: whole rows of warps over the keys");
  static_assert(kBlockN % (16 * kSdpWarpsN) == 0, "S^T: whole m16 tiles of keys per warp");
  static_assert(kBlockM % kSdpWarpsM == 0 && kSdpWarpCols % 16 == 0,
                "S^T: n16 pairs of query columns per warp");

  // B. dV += P^T dO and dK += dS^T Q, [kBlockN, kHeadDim]: kDkvWarpsN x kDkvWarpsD warps, each
  // kDkvMTiles m16 tiles of keys x kWarpD columns (kNTilesD n8 tiles).
  static constexpr int kDkvWarpsN = kDkvWarpsN_;
  static constexpr int kDkvWarpsD = kNWarps / kDkvWarpsN;
  static constexpr int kDkvMTiles = kBlockN / (16 * kDkvWarpsN);
  static constexpr int kWarpD = kHeadDim / kDkvWarpsD;
  static constexpr int kNTilesD = kWarpD / 8;
  static_assert(kNWarps % kDkvWarpsN == 0, "dK / dV: whole rows of warps over the keys");
  static_assert(kBlockN % (16 * kDkvWarpsN) == 0, "dK / dV: whole m16 tiles of keys per warp");
  static_assert(kHeadDim % kDkvWarpsD == 0 && kWarpD % 16 == 0,
                "dK / dV: n16 pairs of head_dim columns per warp");

  // C. dQ += dS K, [kBlockM, kHeadDim]: kDqWarpsM x kDqWarpsD warps, each kDqMTiles m16 tiles of
  // queries x kWarpQD columns, accumulated kDqChunkCols columns at a time and added to dq_accum.
  // The warp's dS fragments (4 registers per m16 tile and k16 step of keys) are read once and
  // held over the chunks when they take at most 16 registers (kDqHoldDs; 16-column chunks then,
  // 8 accumulator floats), else read again per chunk of up to 32 columns (at most 32 floats).
  static constexpr int kDqWarpsM = kDqWarpsM_;
  static constexpr int kDqWarpsD = kNWarps / kDqWarpsM;
  static constexpr int kDqMTiles = kBlockM / (16 * kDqWarpsM);
  static constexpr int kWarpQD = kHeadDim / kDqWarpsD;
  static constexpr bool kDqHoldDs = 4 * kDqMTiles * (kBlockN / 16) <= 16;
  static constexpr int kDqChunkCols = !kDqHoldDs && kDqMTiles <= 2 && kWarpQD % 32 == 0 ? 32 : 16;
  static_assert(kNWarps % kDqWarpsM == 0, "dQ: whole rows of warps over the queries");
  static_assert(kBlockM % (16 * kDqWarpsM) == 0, "dQ: whole m16 tiles of queries per warp");
  static_assert(kHeadDim % kDqWarpsD == 0 && kWarpQD % 16 == 0,
                "dQ: n16 pairs of head_dim columns per warp");
  static_assert(kDqMTiles <= 4, "dQ: at most 32 accumulator floats per thread");

  static_assert(2 * kBlockM <= kNThreads, "one thread copies each lse and D entry");
  // dK and dV accumulators (live throughout), S^T and dP^T (live in product A) per thread: the
  // rest of 255 registers holds fragments and addresses.
  static constexpr int kAccumulatorFloats =
      2 * 4 * kDkvMTiles * kNTilesD + 2 * 4 * kSdpMTiles * kNTilesSW;
  static_assert(kAccumulatorFloats <= 192, "accumulators fit in registers");

  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q and dO
  using KVTile = SmemTile<kBlockN, kHeadDim>;  // K and V
  using PTile = SmemTile<kBlockN, kBlockM>;    // P^T and dS^T (16-bit)
  // Stage s of the query tile: Q at kSmemQOffset + s * kQStageBytes, dO after it; its lse and D
  // (float [kBlockM] each) at kSmemLseOffset + s * kRowStageBytes, D after lse.
  static constexpr int kSmemKOffset = 0;
  static constexpr int kSmemVOffset = kSmemKOffset + KVTile::kBytes;
  static constexpr int kSmemQOffset = kSmemVOffset + KVTile::kBytes;
  static constexpr int kSmemDoOffset = kSmemQOffset + QTile::kBytes;
  static constexpr int kQStageBytes = 2 * QTile::kBytes;
  static constexpr int kSmemPOffset = kSmemQOffset + kQStages * kQStageBytes;
  static constexpr int kSmemDsOffset = kSmemPOffset + PTile::kBytes;
  static constexpr int kSmemLseOffset = kSmemDsOffset + PTile::kBytes;
  static constexpr int kSmemDOffset = kSmemLseOffset + 4 * kBlockM;
  static constexpr int kRowStageBytes = 8 * kBlockM;
  static constexpr int kSmemBytes = kSmemLseOffset + kQStages * kRowStageBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90 (163 KB on sm_80)");
};

// The dK / dV kernel's traits for DefaultBwdTileConfig(kHeadDim).
template <int kHeadDim>
struct DefaultBwdKernelTraits {
  static constexpr BwdTileConfig kTiles = DefaultBwdTileConfig(kHeadDim);
  using type =
      BwdKernelTraits<kHeadDim, kTiles.block_m, kTiles.block_n, kTiles.warps, kTiles.sdp_warps_n,
                      kTiles.dkv_warps_n, kTiles.dq_warps_m, kTiles.q_stages>;
  static_assert(type::kSmemBytes <= 163 * 1024, "the default tiles fit sm_80's shared memory");
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

// The deterministic dQ kernel's traits for DefaultBwdDqTileConfig(kHeadDim).
template <int kHeadDim>
struct DefaultBwdDqKernelTraits {
  static constexpr BwdTileConfig kTiles = DefaultBwdDqTileConfig(kHeadDim);
  using type = BwdDqKernelTraits<kHeadDim, kTiles.block_m, kTiles.block_n, kTiles.warps>;
};

// The Hopper dK / dV kernel (sm_90a, flash_bwd_sm90_kernel.cuh): its products on warpgroup MMAs
// (wgmma). Compiled for head-dim buckets 64 and 128 (whole 64-column swizzle panels whose dK and
// dV accumulators fit in registers next to S^T and dP^T) and 256 (its head-dim split form,
// Sm90BwdSplitsHeadDim); the other buckets, and the deterministic mode, run the mma.sync kernels.
constexpr bool HasSm90BwdKernel(int head_dim_bucket) {
  return head_dim_bucket == 64 || head_dim_bucket == 128 || head_dim_bucket == 256;
}

// Whether the bucket runs the head-dim split form of the Hopper kernel (FlashBwdSm90SplitKernel,
// BwdSm90SplitKernelTraits): at 256, 64 keys of dK and dV over the full head_dim are 2 x 128
// floats per thread of one warpgroup, more than its registers hold, so two warpgroups share one
// 64-key tile, each owning half of head_dim.
constexpr bool Sm90BwdSplitsHeadDim(int head_dim_bucket) { return head_dim_bucket == 256; }

// Query rows per tile of the Hopper dK / dV kernel (128-key tiles, two warpgroups of 64 keys):
// 64 at head_dim 128 and 128 at 64, so that each thread holds head_dim + block_m = 192
// accumulator floats (dK, dV: head_dim / 2 each; S^T, dP^T: block_m / 2 each) and each
// warpgroup's share of dQ += dS K is one m64n64 product (FlashAttention-3's hopper/ backward
// takes the same tile shapes for these head dims).
constexpr int DefaultBwdSm90BlockM(int head_dim_bucket) { return head_dim_bucket <= 64 ? 128 : 64; }

// The Hopper dK / dV kernel's constants. One block per 128-key tile, two warpgroups (256
// threads); warpgroup w owns keys [64 w, 64 w + 64) of S^T, dP^T, dK and dV, and a 64 x 64 share
// of dQ (query rows 64 (w % kDqWarpgroupsM) .., head_dim columns 64 (w / kDqWarpgroupsM) ..).
// Two query-tile stages: the next Q / dO land during all the products of this one.
// kOverlap (dense variant): P^T is computed as soon as S^T is done, while dP^T is still on the
// tensor cores, and dV += P^T dO is issued before dS^T is computed, so that the element-wise work
// overlaps the products; otherwise both wait for S^T and dP^T.
template <int kHeadDim_, int kBlockM_, bool kOverlap_ = true>
struct BwdSm90KernelTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;  // query rows per tile
  static constexpr bool kOverlap = kOverlap_;
  static constexpr bool kSplitHeadDim = false;  // FlashBwdSm90Kernel
  static constexpr bool kDqBulk = false;        // dQ by atomics
  static constexpr int kBlockN = 128;           // keys per tile: 64 per warpgroup
  static constexpr int kWarpgroups = 2;
  static constexpr int kNWarps = 4 * kWarpgroups;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kChunks = kHeadDim / 8;
  // LoadTile (flash_fwd_common.cuh) reads this: predicated-off copies need no address clamp.
  static constexpr int kKVStages = 2;
  static constexpr int kQStages = 2;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head-dim buckets 64 and 128");
  static_assert(kBlockM == 64 || kBlockM == 128, "S^T's N (wgmma m64nNk16): 64 or 128 queries");
  // n8 tiles per thread row of S^T / dP^T (N = kBlockM) and of dK / dV (N = kHeadDim).
  static constexpr int kNTilesS = kBlockM / 8;
  static constexpr int kNTilesD = kHeadDim / 8;
  // dQ += dS K over [kBlockM, kHeadDim]: warpgroups along the queries, the others along head_dim.
  static constexpr int kDqWarpgroupsM = kBlockM / 64;
  static constexpr int kDqWarpgroupsD = kWarpgroups / kDqWarpgroupsM;
  static_assert(kHeadDim == 64 * kDqWarpgroupsD,
                "each warpgroup's dQ share is one m64n64 product (Wgmma<..., 64>::SSMN)");
  static_assert(2 * kBlockM <= kNThreads, "one thread copies each lse and D entry");
  static constexpr int kAccumulatorFloats = kHeadDim + kBlockM;
  static_assert(kAccumulatorFloats <= 192, "accumulators fit in registers");

  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q and dO
  using KVTile = SmemTile<kBlockN, kHeadDim>;  // K and V
  using DsTile = SmemTile<kBlockN, kBlockM>;   // dS^T (16-bit), read M-major by dQ += dS K
  // Every tile starts on a 1024-byte boundary (the period of the 128-byte swizzle) past the
  // kernel's 1024-byte aligned base; lse and D as in BwdKernelTraits.
  static_assert(QTile::kBytes % 1024 == 0 && KVTile::kBytes % 1024 == 0 &&
                    DsTile::kBytes % 1024 == 0,
                "1024-byte tiles");
  static constexpr int kSmemKOffset = 0;
  static constexpr int kSmemVOffset = kSmemKOffset + KVTile::kBytes;
  static constexpr int kSmemQOffset = kSmemVOffset + KVTile::kBytes;
  static constexpr int kSmemDoOffset = kSmemQOffset + QTile::kBytes;
  static constexpr int kQStageBytes = 2 * QTile::kBytes;
  static constexpr int kSmemDsOffset = kSmemQOffset + kQStages * kQStageBytes;
  static constexpr int kSmemLseOffset = kSmemDsOffset + DsTile::kBytes;
  static constexpr int kSmemDOffset = kSmemLseOffset + 4 * kBlockM;
  static constexpr int kRowStageBytes = 8 * kBlockM;
  static constexpr int kSmemBytes = kSmemLseOffset + kQStages * kRowStageBytes;
  // Launched with 1024 bytes more, which the kernel spends aligning its base.
  static constexpr int kSmemLaunchBytes = kSmemBytes + 1024;
  static_assert(kSmemLaunchBytes <= 227 * 1024, "shared memory per block on sm_90");
};

// The head-dim split form of the Hopper dK / dV kernel (FlashBwdSm90SplitKernel, bucket 256).
// One block of two warpgroups (256 threads) per 64-key tile, 64-row query tiles:
//   - product A is split by kind, not by rows: warpgroup 0 computes S^T = K Q^T, warpgroup 1
//     dP^T = V dO^T, each the whole [64 keys, 64 queries] tile (one m64n64 accumulator, 32
//     floats per thread), so that K, V, Q and dO are each read once per tile from shared memory
//     (split by query rows, each warpgroup would read all of K and V: 192 KB of operand reads
//     per tile instead of 128 KB);
//   - the element-wise step is split by query columns: warpgroup w computes P^T and dS^T of
//     columns [32 w, 32 w + 32), taking the other product's half from the partner through a
//     float32 scratch, and the two exchange their packed fragments through the same scratch;
//   - warpgroup w owns head_dim columns [kHalfDim w, kHalfDim (w + 1)) of dK, dV (kHalfDim / 2
//     floats per thread each: 128 at 256) and of dQ (kDqPasses m64n64 products of 32 floats).
// Registers per thread: dK + dV 128 throughout; at most 64 more at once (S^T or dP^T; the
// fragments; the two dQ passes).
// Shared memory at 256: K, V 32 KB each; Q, dO 32 KB each per stage (two stages); dS^T 8 KB;
// the scratch 16 KB; lse and D 512 bytes per stage: 217 KB, plus the 1 KB the kernel aligns its
// base with.
// FlashAttention-3's hopper/ backward at 256 also has two MMA warpgroups splitting dK / dV along
// head_dim (as dV^T = dO^T P), with 64 x 80 tiles and one Q / dO stage; each of its warpgroups
// computes S and dP for half of the keys, and dQ goes through shared memory (TMA reduce-add).
// kDqOverlap: dQ's two passes in two accumulators, the first pass's atomics while the second
// is on the tensor cores; off (the default: 1.00-1.03x the overlap in every cell on the H100,
// backward_sm90_notes.md), one accumulator, the passes one after the other. kDqVec4: dQ
// added with four-float reductions (red.global.add.v4.f32, a lane-pair shuffle first) instead
// of two-float ones. kPrefetchA: the next query tile's barrier and product A (S^T / dP^T) are
// issued at the end of a tile, before the atomics of its last dQ pass, which then run while A
// is on the tensor cores (else A waits for them, at the top of the next tile). kStaggerQ: each
// block starts its walk over the query tiles at its key tile's index, so that the blocks
// running at once add into different rows of dq_accum (else all start at the first tile).
// kDqEarly (serial dQ): the first dQ pass is issued between products C and C' (it needs only the
// DsTile and K), so that its atomics run while C' is on the tensor cores.
// kDqBulk (FlashBwdSm90SplitBulkKernel; serial dQ, early or not, with or without kPrefetchA):
// each warp stages its 16 rows of a dQ pass in float32 into shared memory (the swizzled boxes
// of flash_bwd_bulk.cuh) and adds them into dq_accum with bulk tensor reductions (TMA) instead
// of red.global.add atomics: 32 shared stores of two wavefronts per thread and tile where the
// atomics take eight (one 32-byte sector in each of eight rows), and whole-line additions in L2.
// The staging reuses the tile's own Q / dO stage: warpgroup w's panels of dO (pass 0) and Q
// (pass 1), 64 rows x 128 columns x 4 bytes = 32 KB, which only its products C and C' read
// after product A. So that the next query tile but one may load into that stage only once the
// reductions have read it, the next tile's copies are issued after exchange 1 instead of at the
// tile's first barrier. Rows past the end of the query sequence are staged as zeros (their
// boxes add +0 into the next sequence's rows).
// kTmaQ (with kDqBulk, without kPrefetchA): Q and dO come by bulk tensor copies (TMA), issued by
// one thread after exchange 1 and awaited on one mbarrier per stage, instead of cp.async by
// every thread; the block barrier at the top of each tile goes (exchange 1's barrier already
// orders every reuse of the scratch, the DsTile and the stages, see the kernel), and with it 16
// cp.async per thread and tile. Rows past a packed sequence land as the next sequence's and are
// zeroed in shared memory (tail tiles only: one extra barrier there).
template <int kHeadDim_, bool kDqOverlap_ = false, bool kDqVec4_ = false, bool kPrefetchA_ = false,
          bool kStaggerQ_ = false, bool kDqEarly_ = false, bool kDqBulk_ = false,
          bool kTmaQ_ = false>
struct BwdSm90SplitKernelTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kSplitHeadDim = true;
  static constexpr bool kOverlap = false;
  static constexpr bool kDqOverlap = kDqOverlap_;
  static constexpr bool kDqVec4 = kDqVec4_;
  static constexpr bool kPrefetchA = kPrefetchA_;
  static constexpr bool kStaggerQ = kStaggerQ_;
  static constexpr bool kDqEarly = kDqEarly_;
  static_assert(!(kDqEarly && kDqOverlap), "kDqEarly: one dQ accumulator, the passes in turn");
  static constexpr bool kDqBulk = kDqBulk_;
  static_assert(!kDqBulk || (!kDqOverlap && !kDqVec4),
                "kDqBulk: one dQ accumulator, its passes staged in the two-float layout");
  static constexpr bool kTmaQ = kTmaQ_;
  static_assert(!kTmaQ || (kDqBulk && !kPrefetchA),
                "kTmaQ: the next tile's copies after exchange 1 (kDqBulk's order), no prefetch");
  static constexpr int kBlockM = 64;  // query rows per tile
  static constexpr int kBlockN = 64;  // keys per tile
  static constexpr int kWarpgroups = 2;
  static constexpr int kNWarps = 4 * kWarpgroups;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kChunks = kHeadDim / 8;
  // LoadTile (flash_fwd_common.cuh) reads this: predicated-off copies need no address clamp.
  static constexpr int kKVStages = 2;
  static constexpr int kQStages = 2;

  static_assert(Sm90BwdSplitsHeadDim(kHeadDim), "head-dim bucket 256");
  // head_dim columns of dK, dV and dQ per warpgroup; n8 tiles of S^T / dP^T (N = kBlockM) and
  // of a warpgroup's dK / dV (N = kHalfDim: Wgmma<..., 128>::RS).
  static constexpr int kHalfDim = kHeadDim / kWarpgroups;
  static constexpr int kNTilesS = kBlockM / 8;
  static constexpr int kNTilesD = kHalfDim / 8;
  static constexpr int kDqPasses = kHalfDim / 64;  // m64n64 dQ products per warpgroup
  static_assert(kHalfDim % 64 == 0, "whole 64-column swizzle panels per warpgroup");
  static_assert(2 * kBlockM <= kNThreads, "one thread copies each lse and D entry");
  // dK, dV and both dQ passes (the largest set live at once).
  static constexpr int kAccumulatorFloats = kHalfDim + 64;
  static_assert(kAccumulatorFloats <= 192, "accumulators fit in registers");

  using QTile = SmemTile<kBlockM, kHeadDim>;   // Q and dO
  using KVTile = SmemTile<kBlockN, kHeadDim>;  // K and V
  using DsTile = SmemTile<kBlockN, kBlockM>;   // dS^T (16-bit), read M-major by dQ += dS K
  static_assert(QTile::kBytes % 1024 == 0 && KVTile::kBytes % 1024 == 0 &&
                    DsTile::kBytes % 1024 == 0,
                "1024-byte tiles");
  // The exchange between the warpgroups: slot i of warpgroup-thread x at (128 i + x) * 16
  // bytes, eight slots (region r: slots 4 r .. 4 r + 3): half of an m64n64 float32 accumulator
  // (16 floats per thread), then two k16 steps of P^T and dS^T fragments, per warpgroup.
  static constexpr int kScratchBytes = 2 * 4 * 128 * 16;
  static constexpr int kSmemKOffset = 0;
  static constexpr int kSmemVOffset = kSmemKOffset + KVTile::kBytes;
  static constexpr int kSmemQOffset = kSmemVOffset + KVTile::kBytes;
  static constexpr int kSmemDoOffset = kSmemQOffset + QTile::kBytes;
  static constexpr int kQStageBytes = 2 * QTile::kBytes;
  static constexpr int kSmemDsOffset = kSmemQOffset + kQStages * kQStageBytes;
  static constexpr int kSmemScratchOffset = kSmemDsOffset + DsTile::kBytes;
  static constexpr int kSmemLseOffset = kSmemScratchOffset + kScratchBytes;
  static constexpr int kSmemDOffset = kSmemLseOffset + 4 * kBlockM;
  static constexpr int kRowStageBytes = 8 * kBlockM;
  // kTmaQ: one 8-byte mbarrier per query-tile stage.
  static constexpr int kSmemBarOffset = kSmemLseOffset + kQStages * kRowStageBytes;
  static constexpr int kSmemBytes = kSmemBarOffset + (kTmaQ ? 8 * kQStages : 0);
  static constexpr int kSmemLaunchBytes = kSmemBytes + 1024;
  static_assert(kSmemLaunchBytes <= 227 * 1024, "shared memory per block on sm_90");
};

// The head-dim split form's default: dQ staged in shared memory and added by bulk tensor
// reductions, its first pass early, Q and dO by TMA (kDqEarly, kDqBulk, kTmaQ). H100, 2026-12-06
// (bench/results/gpu_2026-12-06e.md): 1.29-1.31x the serial-atomics form at 4k-16k keys
// without a mask, 1.29x FA2 at 16k. A launch whose tensor maps the driver refuses (a pointer or
// a row stride not a multiple of 16 bytes) runs the serial form, BwdSm90SplitKernelTraits<256>.
template <int kHeadDim>
using DefaultBwdSm90SplitKernelTraits =
    BwdSm90SplitKernelTraits<kHeadDim, /*kDqOverlap_=*/false, /*kDqVec4_=*/false,
                             /*kPrefetchA_=*/false, /*kStaggerQ_=*/false, /*kDqEarly_=*/true,
                             /*kDqBulk_=*/true, /*kTmaQ_=*/true>;

// The Hopper dK / dV kernel's traits: DefaultBwdSm90BlockM(kHeadDim) query rows at 64 and 128,
// the head-dim split form at 256.
template <int kHeadDim>
struct DefaultBwdSm90KernelTraits {
  using type =
      std::conditional_t<Sm90BwdSplitsHeadDim(kHeadDim), DefaultBwdSm90SplitKernelTraits<kHeadDim>,
                         BwdSm90KernelTraits<kHeadDim, DefaultBwdSm90BlockM(kHeadDim)>>;
};

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_TRAITS_H_
