// Launch of the bucket-256 Hopper dK / dV kernel with dQ by bulk tensor reductions
// (FlashBwdSm90SplitBulkKernel, BwdSm90SplitKernelTraits::kDqBulk): the tensor maps of dq_accum,
// q and do built on the host (EncodeBwdSplitMaps), then the kernel with the grid and shared
// memory of the other Hopper dK / dV kernels. Included by flash_bwd_sm90_launch_template.cuh,
// which routes a kDqBulk configuration here, so CUDA sources only.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_SPLIT_LAUNCH_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_SPLIT_LAUNCH_CUH_

#include <cuda.h>
#include <cuda_runtime.h>

#include "kernels/cuda/flash_bwd_bulk.cuh"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_sm90_kernel.cuh"

namespace attention::cuda {

// Enqueues FlashBwdSm90SplitBulkKernel<Traits, Element, kGeneral> on `p` (as RunFlashBwdSm90
// receives it, not empty) over `grid` (RunFlashBwdSm90WithTraits's). cudaErrorNotSupported when
// the driver cannot build the maps.
template <typename Traits, typename Element, bool kGeneral>
cudaError_t RunFlashBwdSm90SplitBulk(const BwdParams& p, dim3 grid, cudaStream_t stream) {
  static_assert(Traits::kSplitHeadDim && Traits::kDqBulk, "the bulk form of the split kernel");
  BwdSplitMaps maps;
  if (const cudaError_t err = EncodeBwdSplitMaps(p, maps); err != cudaSuccess) return err;
  const auto kernel = &bwd::FlashBwdSm90SplitBulkKernel<Traits, Element, kGeneral>;
  if (const cudaError_t err = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemLaunchBytes);
      err != cudaSuccess) {
    return err;
  }
  kernel<<<grid, Traits::kNThreads, Traits::kSmemLaunchBytes, stream>>>(p, maps);
  return cudaGetLastError();
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_SPLIT_LAUNCH_CUH_
