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
WsVariant PairMajor(WsVariant v) {
  v.config.pair_major = true;
  return v;
}

}  // namespace

std::string WsVariant::Label() const {
  return std::to_string(64 * config.consumers) + "x" + std::to_string(config.block_n) + "/" +
         std::to_string(config.consumers) + "c/" + std::to_string(config.stages) + "s" +
         (config.separate_o ? "/o" : "") + (config.q_buffers == 2 ? "/q2" : "") +
         (config.prefetch_next ? "/pf" : "") + (config.tma_store_o ? "/ts" : "") +
         (config.overlap_next_s ? "/x" : "") + (config.snake ? "/sn" : "") +
         (config.fold ? "/fd" : "") + (config.pair_major ? "/pm" : "");
}

// Candidates for short sequences (issue 23), each timed interleaved with the default
// (attention_kernel_bench --ws-variants): at d = 64 the two-consumer 128 x 128 tiles with four
// stages (device call C of 2026-12-06: 1.084 / 1.027x the default at causal 512 / 1024 keys),
// alone and with the fold order, and the causal default 192 x 96 with the fold order; at d = 128
// the default with the snake and the fold orders (call C: fold 1.033 / 1.028x at causal 1024 /
// 2048); and the pair-major order (/pm, FwdSm90WsSchedule::pair_major: a pair's query tiles
// together, its K / V from DRAM about once) on the defaults of both buckets and on 128 x 128 at
// d = 64, and with it the configurations that keep more copies in flight, which a launch bound by
// DRAM latency rather than tensor cores may need once K / V come from L2: two Q buffers (/q2, the
// next tile's Q copied a whole tile ahead) on both causal defaults, and three K / V stages at
// d = 128 (O staged in Q, 224 KB), and bulk tensor stores of O (/ts: one lane per warp writes its
// rows and the warp moves on) at d = 128. Kernels with the snake or fold order are compiled with
// kOrders; the pair-major order needs no such kernel (KernelTileRankAt), so its variants run the
// kernels the host API would launch with it. The other
// neighbours of call C (two Q buffers, the L2 prefetch, bulk stores of O, the next tile's S under
// the epilogue) lost or changed nothing there (sm90ws_notes.md) and are left out of this build.
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
      Fold(Make<64, 128, 4, 2, true, 1, false, false, false, true>()),
      PairMajor(Make<64, 128, 4, 2, true>()),
      PairMajor(Make<64, 128, 4, 3, true>()),
      Fold(Make<64, 96, 4, 3, true, 1, false, false, false, true>()),
      PairMajor(Make<64, 96, 4, 3, true>()),
      PairMajor(Make<64, 96, 4, 3, false, 2>()),
      Snake(Make<128, 128, 2, 2, true, 1, false, false, false, true>()),
      Fold(Make<128, 128, 2, 2, true, 1, false, false, false, true>()),
      PairMajor(Make<128, 128, 2, 2, true>()),
      PairMajor(Make<128, 128, 2, 2, false, 2>()),
      PairMajor(Make<128, 128, 3, 2, false>()),
      PairMajor(Make<128, 128, 2, 2, true, 1, false, true>()),
  };
#endif
  return variants;
}

}  // namespace attention::cuda::bench
