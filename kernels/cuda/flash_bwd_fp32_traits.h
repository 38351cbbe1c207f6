// Tile configuration of the float32 backward kernels (flash_bwd_fp32_kernel.cuh): the sizes of
// the key and query tiles, how the 256 threads split each of the five products into per-thread
// micro-tiles, and the shared-memory layout. Host and device code; every constant is checked by
// static_assert here, so a configuration that compiles is one the kernel can run.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_TRAITS_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_TRAITS_H_

#include <cstdint>

namespace attention::cuda {

// Key and query tile rows of a head-dim bucket. 64 x 64 up to bucket 128: the K, V, Q and dO
// tiles (64 rows of head_dim + 4 floats each) and the P and dS tiles take 170 KB at 128, under
// the 227 KB an H100 block may have. From bucket 160 on, 64 keys x 32 query rows (212 KB at
// 256; 64 x 64 would need 282 KB): 32 x 32 would give each thread 2 x 2 scores, whose 16-byte
// shared reads (12 wavefronts per 32 FMAs of a warp) outrun its FMAs, and 2-row dK / dV
// micro-tiles with the same imbalance; 64 x 32 keeps both at about one wavefront per warp FMA
// instruction, with 128 accumulator registers per thread at 256 (ptxas: no spills).
struct BwdFp32TileConfig {
  int block_n;  // keys per dK / dV block
  int block_m;  // query rows per query tile (and per dQ block)
};

constexpr BwdFp32TileConfig DefaultBwdFp32TileConfig(int head_dim) {
  return head_dim <= 128 ? BwdFp32TileConfig{64, 64} : BwdFp32TileConfig{64, 32};
}

// Threads of every float32 backward block: 8 warps. The default is one block per SM (the tiles
// take most of the shared memory), so each thread may hold up to 255 registers;
// kMinBlocksPerSm = 2 (backward_fp32_bench --variants) caps them at 128.
inline constexpr int kBwdFp32Threads = 256;

// Largest power of two <= 16 that divides x (x > 0).
constexpr int Pow2DivisorUpTo16(int x) {
  return x % 16 == 0 ? 16 : x % 8 == 0 ? 8 : x % 4 == 0 ? 4 : x % 2 == 0 ? 2 : 1;
}

// The layout every kernel of one bucket shares. Shared tiles are row-major float32 with rows of
// kStride floats (head_dim + 4: consecutive rows start 16 bytes apart modulo 128, so eight
// threads reading a 16-byte chunk of eight different rows hit distinct banks); the P and dS
// tiles are [kBlockM][kBlockN + 4], query row i's P over the tile's keys contiguous.
//
// Products and their thread grids (tid = threadIdx.x):
//   A. S^T and dP^T [kBlockN keys x kBlockM queries]: 16 x 16 threads; thread tid holds keys
//      kRowsA * (tid / 16) + [0, kRowsA) (contiguous, so that it stores P and dS of a query row
//      as one vector) and queries tid % 16 + 16 c, c < kColsA.
//   B. dV and dK [kBlockN keys x kHeadDim]: kThreadsBD column threads (16-byte chunks of head_dim,
//      chunk tid % kThreadsBD + kThreadsBD c) x kThreadsBN key threads (keys kRowsB * (tid /
//      kThreadsBD) + [0, kRowsB)).
//   C. dQ [kBlockM queries x kHeadDim]: the same column threads, query rows tid / kThreadsBD +
//      kThreadsCM r, r < kRowsC.
template <int kHeadDim_, int kBlockN_, int kBlockM_, int kMinBlocksPerSm_ = 1>
struct BwdFp32Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kNThreads = kBwdFp32Threads;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kStride = kHeadDim + 4;
  static constexpr int kPStride = kBlockN + 4;
  static constexpr int kChunks = kHeadDim / 4;  // 16-byte chunks of a row

  static constexpr int kRowsA = kBlockN / 16;
  static constexpr int kColsA = kBlockM / 16;

  static constexpr int kThreadsBD = Pow2DivisorUpTo16(kChunks);
  static constexpr int kChunksB = kChunks / kThreadsBD;  // chunks per thread
  static constexpr int kThreadsBN = kNThreads / kThreadsBD;
  static constexpr int kRowsB = kBlockN / kThreadsBN;
  static constexpr int kThreadsCM = kNThreads / kThreadsBD;
  static constexpr int kRowsC = kBlockM / kThreadsCM;

  // Shared memory, in floats: K, V [kBlockN][kStride], Q, dO [kBlockM][kStride], P, dS
  // [kBlockM][kPStride], lse_log2 and D [kBlockM].
  static constexpr int kKOffset = 0;
  static constexpr int kVOffset = kKOffset + kBlockN * kStride;
  static constexpr int kQOffset = kVOffset + kBlockN * kStride;
  static constexpr int kDoOffset = kQOffset + kBlockM * kStride;
  static constexpr int kPOffset = kDoOffset + kBlockM * kStride;
  static constexpr int kDsOffset = kPOffset + kBlockM * kPStride;
  static constexpr int kLseOffset = kDsOffset + kBlockM * kPStride;
  static constexpr int kDOffset = kLseOffset + kBlockM;
  static constexpr int kSmemFloats = kDOffset + kBlockM;
  static constexpr int kSmemBytes = kSmemFloats * 4;

  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head-dim buckets are multiples of 32");
  static_assert(kBlockN % 16 == 0 && kBlockM % 16 == 0, "product A: 16 x 16 threads");
  static_assert(kRowsA == 1 || kRowsA == 2 || kRowsA == 4, "P / dS rows stored as one vector");
  static_assert(kThreadsBN * kThreadsBD == kNThreads && kBlockN % kThreadsBN == 0,
                "product B: every thread owns whole key rows");
  static_assert(kRowsB == 1 || kRowsB == 2 || kRowsB == 4, "P / dS columns read as one vector");
  static_assert(kBlockM % kThreadsCM == 0 && kRowsC >= 1, "product C: every thread owns rows");
  static_assert(kBlockN % 4 == 0, "product C reads dS rows in 16-byte chunks");
  static_assert(kSmemBytes <= 227 * 1024, "one block's tiles fit an H100 SM");
  // 228 KB of shared memory per SM, of which each block reserves 1 KB.
  static_assert(kMinBlocksPerSm * (kSmemBytes + 1024) <= 228 * 1024, "the blocks fit an SM");
};

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_TRAITS_H_
