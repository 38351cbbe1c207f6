#include <string>
#include <vector>

#include "bench/cuda/ws_variants.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.cuh"

namespace attention::cuda::bench {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, bool kSeparateO,
          int kQBuffers = 1, bool kPrefetchNext = false, bool kTmaStoreO = false,
          bool kOverlapNextS = false, bool kOrders = false>
WsVariant Make() {
  return {kHeadDim,
          Sm90WsTileConfig{kBlockN, kStages, kConsumers, kSeparateO, kQBuffers, kPrefetchNext,
                           kTmaStoreO, kOverlapNextS},
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, false, kBlockN, kStages, kConsumers,
                                kSeparateO, kQBuffers, kPrefetchNext, kTmaStoreO, kOverlapNextS,
                                kOrders>,
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, true, kBlockN, kStages, kConsumers,
                                kSeparateO, kQBuffers, kPrefetchNext, kTmaStoreO, kOverlapNextS,
                                kOrders>};
}

// `v` (compiled with kOrders) on the snake or the fold order of FwdSm90WsSchedule.
WsVariant Snake(WsVariant v) {
  v.config.snake = true;
  return v;
}
WsVariant Fold(WsVariant v) {
  v.config.fold = true;
  return v;
}

}  // namespace

std::string WsVariant::Label() const {
  return std::to_string(64 * config.consumers) + "x" + std::to_string(config.block_n) + "/" +
         std::to_string(config.consumers) + "c/" + std::to_string(config.stages) + "s" +
         (config.separate_o ? "/o" : "") + (config.q_buffers == 2 ? "/q2" : "") +
         (config.prefetch_next ? "/pf" : "") + (config.tma_store_o ? "/ts" : "") +
         (config.overlap_next_s ? "/x" : "") + (config.snake ? "/sn" : "") +
         (config.fold ? "/fd" : "");
}

// The defaults (DefaultSm90WsTileConfig) and their neighbours: at d = 64 two or three consumer
// warpgroups (128 or 192 query rows; three leave 160 registers each, and the causal variant of
// 192 x 128 spills 220 bytes, hence also 192 x 96) and two or four stages; at d = 128 three
// stages with O staged in Q (224 KB) against two with a separate O tile, and 64-key tiles
// (FlashAttention-3's 176-key tiles ran 0.67-1.04x the routed kernel in device call 3 and spill
// 516 bytes with causal: dropped). For short sequences (issue 23: 512-1024 keys, 4-8 KV tiles
// per query tile) the defaults with the next tile's first copies earlier: two Q buffers with O
// staged in the retiring one (/q2, in the shared memory of a separate O tile), an L2 prefetch of
// the next tile's Q and first KV tile (/pf), both; O written by bulk tensor stores (/ts); and the
// next tile's first S issued in a tile's last turn, under its epilogue (/x, with /q2); and the
// snake (/sn) and fold (/fd) orders for the causal defaults and the q2/pf/x candidates (kernels
// compiled with kOrders).
const std::vector<WsVariant>& WsVariants() {
#ifdef ATTN_WS_VARIANTS_256
  // A build of bucket 256 (configured with CMAKE_CUDA_FLAGS=-DATTN_WS_VARIANTS_256 beside
  // ATTN_KERNEL_HEAD_DIMS=256): its default (O staged in Q; two Q buffers, the overlap and the
  // bulk-store epilogue need shared memory it lacks), the prefetch, and the snake and fold orders.
  static const std::vector<WsVariant> variants = {
      Make<256, 64, 2, 2, false>(),
      Make<256, 64, 2, 2, false, 1, true>(),
      Snake(Make<256, 64, 2, 2, false, 1, false, false, false, true>()),
      Fold(Make<256, 64, 2, 2, false, 1, false, false, false, true>()),
      Fold(Make<256, 64, 2, 2, false, 1, true, false, false, true>()),
  };
#else
  static const std::vector<WsVariant> variants = {
      Make<64, 128, 4, 2, true>(),
      Make<64, 128, 2, 2, true>(),
      Make<64, 128, 4, 3, true>(),
      Make<64, 96, 4, 3, true>(),
      Make<64, 128, 4, 3, true, 1, true>(),
      Make<64, 128, 4, 3, false, 2, true>(),
      Make<64, 96, 4, 3, false, 2, true>(),
      Make<64, 128, 4, 3, true, 1, false, true>(),
      Make<64, 128, 4, 2, false, 2, true>(),
      Make<64, 96, 4, 3, false, 2, true, false, true>(),
      Make<64, 128, 4, 2, false, 2, true, false, true>(),
      Snake(Make<64, 96, 4, 3, true, 1, false, false, false, true>()),
      Snake(Make<64, 128, 4, 2, false, 2, true, false, true, true>()),
      Fold(Make<64, 96, 4, 3, true, 1, false, false, false, true>()),
      Fold(Make<64, 128, 4, 2, false, 2, true, false, true, true>()),
      Make<128, 128, 2, 2, true>(),
      Make<128, 128, 3, 2, false>(),
      Make<128, 64, 4, 2, true>(),
      Make<128, 128, 2, 2, true, 1, true>(),
      Make<128, 128, 2, 2, false, 2>(),
      Make<128, 128, 2, 2, false, 2, true>(),
      Make<128, 128, 2, 2, true, 1, false, true>(),
      Make<128, 128, 2, 2, true, 1, true, true>(),
      Make<128, 128, 2, 2, false, 2, false, false, true>(),
      Make<128, 128, 2, 2, false, 2, true, false, true>(),
      Snake(Make<128, 128, 2, 2, true, 1, false, false, false, true>()),
      Snake(Make<128, 128, 2, 2, false, 2, true, false, true, true>()),
      Fold(Make<128, 128, 2, 2, true, 1, false, false, false, true>()),
      Fold(Make<128, 128, 2, 2, false, 2, true, false, true, true>()),
  };
#endif
  return variants;
}

}  // namespace attention::cuda::bench
