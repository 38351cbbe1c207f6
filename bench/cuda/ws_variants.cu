#include <string>
#include <vector>

#include "bench/cuda/ws_variants.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.cuh"

namespace attention::cuda::bench {
namespace {

template <int kHeadDim, int kBlockN, int kStages, int kConsumers, bool kSeparateO,
          int kQBuffers = 1, bool kPrefetchNext = false, bool kTmaStoreO = false,
          bool kOverlapNextS = false, bool kOrders = false, int kDirectO = 0>
WsVariant Make() {
  Sm90WsTileConfig config{kBlockN,   kStages,       kConsumers, kSeparateO,
                          kQBuffers, kPrefetchNext, kTmaStoreO, kOverlapNextS};
  config.direct_o = kDirectO;
  return {kHeadDim, config,
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, false, kBlockN, kStages, kConsumers,
                                kSeparateO, kQBuffers, kPrefetchNext, kTmaStoreO, kOverlapNextS,
                                kOrders, false, kDirectO>,
          &LaunchFlashFwdSm90Ws<DType::kBFloat16, kHeadDim, true, kBlockN, kStages, kConsumers,
                                kSeparateO, kQBuffers, kPrefetchNext, kTmaStoreO, kOverlapNextS,
                                kOrders, false, kDirectO>};
}

// Tiles of `kHeadDim` x kBlockN with O stored from registers (Sm90WsTileConfig::direct_o),
// kBytes per store.
template <int kHeadDim, int kBlockN, int kStages, int kConsumers, int kQBuffers = 1, int kBytes = 4>
WsVariant Direct() {
  return Make<kHeadDim, kBlockN, kStages, kConsumers, false, kQBuffers, false, false, false, false,
              kBytes>();
}

// `v` (compiled with kOrders) on the snake or the fold order of FwdSm90WsSchedule.
[[maybe_unused]] WsVariant Snake(WsVariant v) {
  v.config.snake = true;
  return v;
}
[[maybe_unused]] WsVariant Fold(WsVariant v) {
  v.config.fold = true;
  return v;
}
[[maybe_unused]] WsVariant PairMajor(WsVariant v) {
  v.config.pair_major = true;
  return v;
}

}  // namespace

std::string WsVariant::Label() const {
  return std::to_string(64 * config.consumers) + "x" + std::to_string(config.block_n) + "/" +
         std::to_string(config.consumers) + "c/" + std::to_string(config.stages) + "s" +
         (config.separate_o ? "/o" : "") + (config.q_buffers == 2 ? "/q2" : "") +
         (config.prefetch_next ? "/pf" : "") + (config.tma_store_o ? "/ts" : "") +
         (config.direct_o == 4    ? "/do"
          : config.direct_o == 16 ? "/do16"
                                  : "") +
         (config.overlap_next_s ? "/x" : "") + (config.snake ? "/sn" : "") +
         (config.fold ? "/fd" : "") + (config.pair_major ? "/pm" : "");
}

// The dense defaults before device call 2 of session 7, beside the routed ones (bulk stores of O
// at d = 128, the pair-major order up to 4096 keys, persistent causal d = 128 launches under 4096
// keys: DefaultSm90WsTileConfig, Sm90WsPairMajorFor, Sm90WsDensePersistentFor): 192 x 128 and
// 192 x 96 at d = 64, 128 x 128 with 16-byte stores of O at d = 128, each in the plain order, on a
// persistent grid and on one block per tile. That call's other candidates (sm90ws_notes.md) lost
// to the routed ones or are what they route. For the cells left to the wgmma kernel (d = 64 causal
// under 2048 keys, where call 2's best, two consumers of 128 x 128 in the pair-major order, ran
// 1.117 / 1.098x the default against the wgmma kernel's 1.161 / 1.104x), the bulk stores of O that
// made the difference at d = 128, on those tiles and on 192 x 96.
// Session 8 (issue 23, short causal): O stored from registers (/do, 4-byte stores; /do16, 16-byte
// stores after a transpose within each quad) needs no O tile, so that a tile's Q buffer is
// released after its last S and the 32 KB at d = 128 buy a third K / V stage. Device call B of
// session 8 (H200) timed /do with two and three stages and with a second Q buffer at 0.83-0.99x
// the routed bulk stores at d = 128 (more stages or Q buffers changed nothing); FA3's 128 x 176
// tiles, 128 x 96 / 3 stages / q2, 128 x 64 / 5 stages / q2 (0.72-0.91x) and the deeper d = 64
// pipelines (192 x 96 / 7 stages / q2, 128 x 128 / 6 stages / q2) are no longer compiled.
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
      Make<64, 128, 4, 3, true>(),
      Make<64, 96, 4, 3, true>(),
      PairMajor(Make<64, 128, 4, 2, true, 1, false, true>()),
      PairMajor(Make<64, 96, 4, 3, true, 1, false, true>()),
      Make<128, 128, 2, 2, true>(),
      PairMajor(Direct<128, 128, 2, 2>()),
      PairMajor(Direct<128, 128, 3, 2>()),
      PairMajor(Direct<64, 128, 6, 2>()),
      PairMajor(Direct<64, 96, 5, 3>()),
      // The next tile's first S issued before the epilogue (/x) beside the bulk stores of O, with
      // one Q buffer (released at a tile's last S).
      PairMajor(Make<128, 128, 2, 2, true, 1, false, true, true>()),
      PairMajor(Make<64, 128, 4, 2, true, 1, false, true, true>()),
      // 16-byte direct stores (a quad's words transposed by shuffles).
      PairMajor(Direct<128, 128, 2, 2, 1, 16>()),
      PairMajor(Direct<128, 128, 3, 2, 1, 16>()),
      PairMajor(Direct<64, 128, 6, 2, 1, 16>()),
      // The plain order, also timed on one block per tile.
      Direct<128, 128, 3, 2>(),
      // d = 256, whose default stages O in Q (released only after the epilogue): with direct
      // stores Q is free after the tile's last S (64 + 2 x 64 = 192 KB), in the plain order (the
      // default's) and the pair-major one.
      Direct<256, 64, 2, 2>(),
      PairMajor(Direct<256, 64, 2, 2>()),
      Direct<256, 64, 2, 2, 1, 16>(),
  };
#endif
  return variants;
}

}  // namespace attention::cuda::bench
