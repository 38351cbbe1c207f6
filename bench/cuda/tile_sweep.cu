#include <string>
#include <vector>

#include "bench/cuda/tile_sweep.h"
#include "kernels/cuda/flash_fwd_launch_template.cuh"

namespace attention::cuda::bench {
namespace {

template <int kHeadDim, int kBlockM, int kBlockN, int kWarps, int kStages, bool kPrefetch = false>
TileVariant Make() {
  return {kHeadDim,
          kBlockM,
          kBlockN,
          kWarps,
          kStages,
          kPrefetch,
          false,
          0,
          &RunFlashFwdTiles<DType::kBFloat16, kHeadDim, FwdVariant::kDense, kBlockM, kBlockN,
                            kWarps, kStages, kPrefetch>,
          &RunFlashFwdTiles<DType::kBFloat16, kHeadDim, FwdVariant::kWindow, kBlockM, kBlockN,
                            kWarps, kStages, kPrefetch>};
}

// The wgmma kernel: 64 * kWarpgroups query rows, kBlockN keys, two K / V buffers.
template <int kHeadDim, int kBlockN, int kWarpgroups, int kBlocksPerSm>
TileVariant MakeSm90() {
  return {kHeadDim,
          64 * kWarpgroups,
          kBlockN,
          4 * kWarpgroups,
          2,
          false,
          true,
          kBlocksPerSm,
          &RunFlashFwdSm90Tiles<DType::kBFloat16, kHeadDim, FwdVariant::kDense, kBlockN,
                                kWarpgroups, kBlocksPerSm>,
          &RunFlashFwdSm90Tiles<DType::kBFloat16, kHeadDim, FwdVariant::kWindow, kBlockN,
                                kWarpgroups, kBlocksPerSm>};
}

}  // namespace

std::string TileVariant::Label() const {
  const std::string shape = std::to_string(block_m) + "x" + std::to_string(block_n) + "/";
  if (sm90) {
    return "sm90 " + shape + std::to_string(warps / 4) + "wg/" + std::to_string(blocks_per_sm) +
           "b";
  }
  return shape + std::to_string(warps) + "w/" + std::to_string(stages) + "s" +
         (prefetch ? "/pf" : "");
}

const std::vector<TileVariant>& TileSweep() {
  // The mma.sync kernel's neighbours were measured in session 2 (bench/cuda/NOTES.md, runs 1-8);
  // the sweep now covers the wgmma kernel's (the defaults are 128x128/2wg/1b for d <= 128 and
  // 128x64/2wg/1b above), and those of the buckets with a trailing 32-column panel (defaults
  // 128x64/2wg/2b at d 32, 128x128/2wg/1b at d 96, 128x64/2wg/1b at d 160 and 224) beside their
  // spill-free neighbours.
  static const std::vector<TileVariant> sweep = {
      MakeSm90<64, 128, 2, 1>(), MakeSm90<64, 64, 2, 2>(),   MakeSm90<64, 128, 3, 1>(),
      MakeSm90<64, 64, 3, 1>(),  MakeSm90<128, 128, 2, 1>(), MakeSm90<128, 64, 2, 2>(),
      MakeSm90<128, 64, 3, 1>(), MakeSm90<128, 96, 2, 1>(),  MakeSm90<256, 64, 2, 1>(),
      MakeSm90<32, 64, 2, 2>(),  MakeSm90<32, 128, 2, 1>(),  MakeSm90<96, 128, 2, 1>(),
      MakeSm90<96, 64, 2, 1>(),  MakeSm90<160, 64, 2, 1>(),  MakeSm90<224, 64, 2, 1>(),
  };
  return sweep;
}

}  // namespace attention::cuda::bench
