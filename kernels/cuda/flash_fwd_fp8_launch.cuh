// Launch layer of the FP8 (E4M3) Hopper forward kernel: dynamic shared-memory limit and launch.
// Included only by its instantiation files (instantiations/flash_fwd_fp8_hdim*.cu).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_CUH_

#include <cuda_runtime.h>

#include "kernels/cuda/flash_fwd_fp8_kernel.cuh"
#include "kernels/cuda/flash_fwd_fp8_launch.h"

namespace attention::cuda {

template <int kHeadDim, bool kCausal, int kBlockN, int kStages, int kConsumers, int kFmaExp,
          bool kTree, bool kSumMma, bool kLazy, int kSpec, bool kNoTurns, bool kLseF32>
cudaError_t LaunchFlashFwdFp8(const FwdFp8Args& args, cudaStream_t stream) {
  using Traits = fwd::Fp8Traits<kHeadDim, kBlockN, kStages, kConsumers, kFmaExp, kTree, kSumMma,
                                kLazy, kSpec, kNoTurns, kLseF32>;
  const auto kernel = &fwd::FlashFwdFp8Kernel<Traits, kCausal>;
  // Above 48 KB a kernel must opt in to the larger dynamic shared-memory limit.
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               Traits::kSmemLaunchBytes);
  if (err != cudaSuccess) return err;
  kernel<<<args.sched.grid, Traits::kNThreads, Traits::kSmemLaunchBytes, stream>>>(args);
  return cudaGetLastError();
}

template <int kHeadDim, bool kCausal>
cudaError_t LaunchFlashFwdFp8Default(const FwdFp8Args& args, cudaStream_t stream) {
  constexpr Fp8TileConfig kTiles = DefaultFp8TileConfig(kHeadDim);
  return LaunchFlashFwdFp8<kHeadDim, kCausal, kTiles.block_n, kTiles.stages, kTiles.consumers,
                           kTiles.fma_exp, kTiles.tree, kTiles.sum_mma, kTiles.lazy, kTiles.spec,
                           kTiles.no_turns, kTiles.lse_f32>(args, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_LAUNCH_CUH_
