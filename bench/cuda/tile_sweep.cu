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
          &RunFlashFwdTiles<DType::kBFloat16, kHeadDim, FwdVariant::kDense, kBlockM, kBlockN,
                            kWarps, kStages, kPrefetch>,
          &RunFlashFwdTiles<DType::kBFloat16, kHeadDim, FwdVariant::kWindow, kBlockM, kBlockN,
                            kWarps, kStages, kPrefetch>};
}

}  // namespace

std::string TileVariant::Label() const {
  return std::to_string(block_m) + "x" + std::to_string(block_n) + "/" + std::to_string(warps) +
         "w/" + std::to_string(stages) + "s" + (prefetch ? "/pf" : "");
}

const std::vector<TileVariant>& TileSweep() {
  static const std::vector<TileVariant> sweep = {
      Make<64, 128, 64, 4, 2>(),        Make<64, 128, 64, 4, 2, true>(),
      Make<64, 128, 64, 4, 1>(),        Make<128, 128, 64, 4, 2>(),
      Make<128, 128, 64, 4, 2, true>(), Make<128, 128, 32, 4, 2>(),
      Make<256, 64, 64, 4, 1>(),        Make<256, 64, 64, 4, 1, true>(),
      Make<256, 128, 64, 8, 2>(),       Make<256, 128, 64, 8, 2, true>(),
      Make<256, 128, 64, 8, 1>(),       Make<256, 64, 32, 4, 1>(),
  };
  return sweep;
}

}  // namespace attention::cuda::bench
