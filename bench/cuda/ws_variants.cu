#include <string>
#include <vector>

#include "bench/cuda/ws_variants.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.cuh"

namespace attention::cuda::bench {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, bool kSeparateO>
WsVariant Make() {
  return {kHeadDim, Sm90WsTileConfig{kBlockN, kStages, kConsumers, kSeparateO},
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, false, kBlockN, kStages, kConsumers,
                                kSeparateO>,
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, true, kBlockN, kStages, kConsumers,
                                kSeparateO>};
}

}  // namespace

std::string WsVariant::Label() const {
  return std::to_string(64 * config.consumers) + "x" + std::to_string(config.block_n) + "/" +
         std::to_string(config.consumers) + "c/" + std::to_string(config.stages) + "s" +
         (config.separate_o ? "/o" : "");
}

// The defaults (DefaultSm90WsTileConfig) and their neighbours: at d = 64 two or three consumer
// warpgroups (128 or 192 query rows; three leave 160 registers each, and the causal variant of
// 192 x 128 spills 220 bytes, hence also 192 x 96) and two or four stages; at d = 128 three
// stages with O staged in Q (224 KB) against two with a separate O tile, 64-key tiles, and
// FlashAttention-3's 176-key tiles (O in Q: 32 + 2 x 2 x 44 = 208 KB).
const std::vector<WsVariant>& WsVariants() {
  static const std::vector<WsVariant> variants = {
      Make<64, 128, 4, 2, true>(), Make<64, 128, 2, 2, true>(),   Make<64, 128, 4, 3, true>(),
      Make<64, 96, 4, 3, true>(),  Make<128, 128, 2, 2, true>(),  Make<128, 128, 3, 2, false>(),
      Make<128, 64, 4, 2, true>(), Make<128, 176, 2, 2, false>(),
  };
  return variants;
}

}  // namespace attention::cuda::bench
