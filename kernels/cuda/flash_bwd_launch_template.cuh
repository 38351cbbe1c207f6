// Launch layer of the backward kernels: grid, dynamic shared-memory limit, launch and error
// check. Included only by the generated instantiation files (flash_bwd_*.cu).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_TEMPLATE_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_TEMPLATE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/cuda/flash_bwd_kernel.cuh"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_traits.h"

namespace attention::cuda {

template <DType kDType>
using BwdElementOf = std::conditional_t<kDType == DType::kBFloat16, __nv_bfloat16, __half>;

template <typename Kernel>
cudaError_t LaunchBwd(Kernel* kernel, dim3 grid, int threads, int smem_bytes, const BwdParams& p,
                      cudaStream_t stream) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

// The dK / dV kernel with the tiles of `Traits` (a BwdKernelTraits): the default configuration
// below, or a candidate of the benchmark's tile sweep (bench/cuda/backward_tile_sweep.cu).
template <typename Traits, DType kDType, BwdVariant kVariant>
cudaError_t RunFlashBwdWithTraits(const BwdParams& p, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16, "16-bit operands");
  if (p.batch == 0 || p.seqlen_k == 0) return cudaSuccess;
  const dim3 grid((p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, p.kv_heads, p.batch);
  return LaunchBwd(
      &bwd::FlashBwdKernel<Traits, BwdElementOf<kDType>, kVariant == BwdVariant::kGeneral>, grid,
      Traits::kNThreads, Traits::kSmemBytes, p, stream);
}

template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwd(const BwdParams& p, cudaStream_t stream) {
  return RunFlashBwdWithTraits<typename DefaultBwdKernelTraits<kHeadDim>::type, kDType, kVariant>(
      p, stream);
}

template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwdDq(const BwdParams& p, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16, "16-bit operands");
  using Traits = typename DefaultBwdDqKernelTraits<kHeadDim>::type;
  if (p.batch == 0 || p.seqlen_q == 0) return cudaSuccess;
  const dim3 grid((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, p.q_heads, p.batch);
  return LaunchBwd(
      &bwd::FlashBwdDqKernel<Traits, BwdElementOf<kDType>, kVariant == BwdVariant::kGeneral>, grid,
      Traits::kNThreads, Traits::kSmemBytes, p, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_TEMPLATE_CUH_
