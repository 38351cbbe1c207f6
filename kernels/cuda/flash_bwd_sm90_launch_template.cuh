// Launch layer of the Hopper dK / dV kernel: grid, dynamic shared-memory limit, launch and error
// check. Included only by the generated instantiation files (flash_bwd_sm90_*.cu), which the
// build compiles with ATTN_KERNEL_SM90 (sm_90a in CMAKE_CUDA_ARCHITECTURES).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_LAUNCH_TEMPLATE_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_LAUNCH_TEMPLATE_CUH_

#include <cuda_runtime.h>

#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_launch_template.cuh"
#include "kernels/cuda/flash_bwd_sm90_kernel.cuh"
#include "kernels/cuda/flash_bwd_sm90_split_launch.cuh"
#include "kernels/cuda/flash_bwd_traits.h"

namespace attention::cuda {

// The Hopper dK / dV kernel with the tiles of `Traits`: FlashBwdSm90Kernel for a
// BwdSm90KernelTraits, FlashBwdSm90SplitKernel for a BwdSm90SplitKernelTraits (kSplitHeadDim).
template <typename Traits, DType kDType, BwdVariant kVariant>
cudaError_t RunFlashBwdSm90WithTraits(const BwdParams& p, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16, "16-bit operands");
  using Element = BwdElementOf<kDType>;
  constexpr bool kGeneral = kVariant == BwdVariant::kGeneral;
  if (p.batch == 0 || p.seqlen_k == 0) return cudaSuccess;
  const dim3 grid((p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, p.kv_heads, p.batch);
  if constexpr (Traits::kSplitHeadDim && Traits::kDqBulk) {
    const cudaError_t err = RunFlashBwdSm90SplitBulk<Traits, Element, kGeneral>(p, grid, stream);
    if (err != cudaErrorNotSupported) return err;
    // The driver built no tensor maps for these operands (nothing was launched): the same split
    // kernel with dQ by atomics and Q / dO by cp.async takes any layout.
    using Serial = BwdSm90SplitKernelTraits<Traits::kHeadDim>;
    return LaunchBwd(&bwd::FlashBwdSm90SplitKernel<Serial, Element, kGeneral>, grid,
                     Serial::kNThreads, Serial::kSmemLaunchBytes, p, stream);
  } else if constexpr (Traits::kSplitHeadDim) {
    return LaunchBwd(&bwd::FlashBwdSm90SplitKernel<Traits, Element, kGeneral>, grid,
                     Traits::kNThreads, Traits::kSmemLaunchBytes, p, stream);
  } else {
    return LaunchBwd(&bwd::FlashBwdSm90Kernel<Traits, Element, kGeneral>, grid, Traits::kNThreads,
                     Traits::kSmemLaunchBytes, p, stream);
  }
}

template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwdSm90(const BwdParams& p, cudaStream_t stream) {
  return RunFlashBwdSm90WithTraits<typename DefaultBwdSm90KernelTraits<kHeadDim>::type, kDType,
                                   kVariant>(p, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_SM90_LAUNCH_TEMPLATE_CUH_
