// Launch layer of the warp-specialized Hopper forward kernel: dynamic shared-memory limit and
// launch. Included only by its instantiation files (instantiations/flash_fwd_sm90ws_*.cu) and
// the benchmark's variants.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_sm90ws_kernel.cuh"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"

namespace attention::cuda {

template <DType kDType, int kHeadDim, bool kCausal, int kBlockN, int kStages, int kConsumers,
          bool kSeparateO, int kQBuffers, bool kPrefetchNext, bool kTmaStoreO, bool kOverlapNextS,
          bool kOrders, bool kPaged, int kDirectO>
cudaError_t LaunchFlashFwdSm90Ws(const FwdSm90WsArgs& args, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16,
                "the tensor cores take 16-bit operands");
  using Element = std::conditional_t<kDType == DType::kBFloat16, __nv_bfloat16, __half>;
  using Traits = fwd::Sm90WsTraits<kHeadDim, kBlockN, kStages, kConsumers, kSeparateO, kQBuffers,
                                   kPrefetchNext, kTmaStoreO, kOverlapNextS, kOrders, kDirectO>;
  const auto kernel = &fwd::FlashFwdSm90WsKernel<Traits, Element, kCausal, kPaged>;
  // Above 48 KB a kernel must opt in to the larger dynamic shared-memory limit.
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               Traits::kSmemLaunchBytes);
  if (err != cudaSuccess) return err;
  kernel<<<args.sched.grid, Traits::kNThreads, Traits::kSmemLaunchBytes, stream>>>(args);
  return cudaGetLastError();
}

template <DType kDType, int kHeadDim, bool kCausal, bool kPaged>
cudaError_t LaunchFlashFwdSm90WsDefault(const FwdSm90WsArgs& args, cudaStream_t stream) {
  constexpr Sm90WsTileConfig kTiles = kPaged ? PagedSm90WsTileConfig(kHeadDim, kCausal)
                                             : DefaultSm90WsTileConfig(kHeadDim, kCausal);
  return LaunchFlashFwdSm90Ws<kDType, kHeadDim, kCausal, kTiles.block_n, kTiles.stages,
                              kTiles.consumers, kTiles.separate_o, kTiles.q_buffers,
                              kTiles.prefetch_next, kTiles.tma_store_o, kTiles.overlap_next_s,
                              (kTiles.snake || kTiles.fold), kPaged, kTiles.direct_o>(args, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90WS_LAUNCH_CUH_
