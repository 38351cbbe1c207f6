// Launch layer of the forward kernel: grid, dynamic shared-memory limit, launch and error check.
// Included only by the generated instantiation files (and the benchmark's tile sweep).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_TEMPLATE_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_TEMPLATE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_kernel.cuh"
#include "kernels/cuda/flash_fwd_launch.h"
#include "kernels/cuda/flash_fwd_sm90_kernel.cuh"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// One block of `threads` threads per (query tile of `block_m` rows, head, sequence); the
// query-tile index varies fastest, so the blocks that share a head's K / V run together and hit L2.
template <typename Kernel>
cudaError_t LaunchOverQueryTiles(Kernel* kernel, int block_m, int threads, int smem_bytes,
                                 const AttentionParams& p, cudaStream_t stream) {
  if (smem_bytes > 48 * 1024) {
    // Above 48 KB a kernel must opt in to the larger dynamic shared-memory limit.
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid((p.seqlen_q + block_m - 1) / block_m, p.q_heads, p.batch);
  kernel<<<grid, threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Traits, typename Element, FwdVariant kVariant>
cudaError_t LaunchFlashFwd(const AttentionParams& p, cudaStream_t stream) {
  constexpr int kSmemBytes =
      VariantIsPaged(kVariant) ? Traits::kSmemBytesPaged : Traits::kSmemBytes;
  return LaunchOverQueryTiles(&fwd::FlashFwdKernel<Traits, Element, kVariant>, Traits::kBlockM,
                              Traits::kNThreads, kSmemBytes, p, stream);
}

template <DType kDType>
using ElementOf = std::conditional_t<kDType == DType::kBFloat16, __nv_bfloat16, __half>;

template <DType kDType, int kHeadDim, FwdVariant kVariant, int kBlockM, int kBlockN, int kNWarps,
          int kKVStages, bool kPrefetchFragments>
cudaError_t RunFlashFwdTiles(const AttentionParams& p, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16,
                "the tensor cores take 16-bit operands; float32 is converted by the host API");
  using Traits =
      FwdKernelTraits<kHeadDim, kBlockM, kBlockN, kNWarps, kKVStages, kPrefetchFragments>;
  return LaunchFlashFwd<Traits, ElementOf<kDType>, kVariant>(p, stream);
}

template <DType kDType, int kHeadDim, FwdVariant kVariant>
cudaError_t RunFlashFwd(const AttentionParams& p, cudaStream_t stream) {
  constexpr TileConfig kTiles = DefaultTileConfig(kHeadDim);
  return RunFlashFwdTiles<kDType, kHeadDim, kVariant, kTiles.block_m, kTiles.block_n, kTiles.warps,
                          kTiles.kv_stages, kTiles.prefetch_fragments>(p, stream);
}

template <DType kDType, int kHeadDim, FwdVariant kVariant, int kBlockN, int kWarpgroups,
          int kBlocksPerSm>
cudaError_t RunFlashFwdSm90Tiles(const AttentionParams& p, cudaStream_t stream) {
  static_assert(kDType == DType::kBFloat16 || kDType == DType::kFloat16,
                "the tensor cores take 16-bit operands; float32 is converted by the host API");
  using Traits = Sm90FwdKernelTraits<kHeadDim, kBlockN, kWarpgroups, kBlocksPerSm>;
  return LaunchOverQueryTiles(&fwd::FlashFwdSm90Kernel<Traits, ElementOf<kDType>, kVariant>,
                              Traits::kBlockM, Traits::kNThreads,
                              fwd::Sm90SmemBytes<Traits, kVariant>(), p, stream);
}

template <DType kDType, int kHeadDim, FwdVariant kVariant>
cudaError_t RunFlashFwdSm90(const AttentionParams& p, cudaStream_t stream) {
  constexpr Sm90TileConfig kTiles = DefaultSm90TileConfig(kHeadDim);
  return RunFlashFwdSm90Tiles<kDType, kHeadDim, kVariant, kTiles.block_n, kTiles.warpgroups,
                              kTiles.blocks_per_sm>(p, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_TEMPLATE_CUH_
