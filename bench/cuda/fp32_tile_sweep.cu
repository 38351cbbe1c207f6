#include <string>
#include <vector>

#include "bench/cuda/fp32_tile_sweep.h"
#include "kernels/cuda/flash_fwd_fp32_launch.cuh"

namespace attention::cuda::bench {
namespace {

template <int kHeadDim, int kBlockM, int kBlockN, int kNWarps, int kStages, int kBlocksPerSm>
Fp32TileVariant Variant() {
  return {std::to_string(kBlockM) + "x" + std::to_string(kBlockN) + " " + std::to_string(kNWarps) +
              "w " + std::to_string(kStages) + "s " + std::to_string(kBlocksPerSm) + "b/SM",
          kHeadDim,
          &RunFlashFwdFp32Tiles<kHeadDim, Fp32Variant::kPlain, Precision::kFull, kBlockM, kBlockN,
                                kNWarps, kStages, kBlocksPerSm>};
}

}  // namespace

// The candidates around DefaultFp32TileConfig (flash_fwd_fp32_traits.h): 32-row warps (two m16
// tiles, more reuse per shared-memory read, more registers) against 16-row ones, 32- against
// 64-key tiles, one against two stages, and 64-row blocks of two 32-row warps (three blocks per SM
// at d = 128: less diagonal waste and finer-grained tails on short causal sequences).
const std::vector<Fp32TileVariant>& Fp32TileSweep() {
  static const std::vector<Fp32TileVariant> sweep = {
      Variant<64, 128, 32, 4, 2, 2>(),  Variant<64, 64, 64, 4, 2, 2>(),
      Variant<64, 128, 64, 4, 2, 2>(),  Variant<64, 64, 32, 4, 2, 2>(),
      Variant<128, 64, 64, 4, 1, 2>(),  Variant<128, 128, 32, 4, 1, 2>(),
      Variant<128, 64, 32, 4, 2, 2>(),  Variant<128, 128, 32, 4, 2, 1>(),
      Variant<128, 64, 32, 2, 1, 3>(),  Variant<128, 64, 32, 2, 2, 2>(),
      Variant<256, 128, 32, 8, 1, 1>(), Variant<256, 64, 32, 4, 1, 1>(),
      Variant<256, 128, 16, 8, 2, 1>(),
  };
  return sweep;
}

}  // namespace attention::cuda::bench
