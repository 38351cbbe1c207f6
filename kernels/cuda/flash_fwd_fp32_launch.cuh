// Launch layer of the float32 forward kernel: grid, dynamic shared-memory limit, launch and error
// check. Included only by the generated instantiation files (instantiations/flash_fwd_fp32_*.cu)
// and the benchmark's tile sweep.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_LAUNCH_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp32_kernel.cuh"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda {

template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision, int kBlockM, int kBlockN,
          int kNWarps, int kStages, int kMinBlocksPerSm, int kOptions>
cudaError_t RunFlashFwdFp32Tiles(const AttentionParams& p, cudaStream_t stream) {
  using Traits =
      Fp32FwdTraits<kHeadDim, kBlockM, kBlockN, kNWarps, kStages, kMinBlocksPerSm, kOptions>;
  auto* kernel = &fp32::FlashFwdFp32Kernel<Traits, kVariant, kPrecision>;
  if constexpr (Traits::kSmemBytes > 48 * 1024) {
    // Above 48 KB a kernel must opt in to the larger dynamic shared-memory limit.
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  // The query-tile index varies fastest, so the blocks that share a head's K / V run together
  // and hit L2 (the persistent blocks walk the same order, FlashFwdFp32Kernel's comment).
  const int m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  dim3 grid(m_blocks, p.q_heads, p.batch);
  if constexpr (Traits::kPersistent) {
    // As many blocks as run at once, never more than there are tiles.
    int device = 0;
    int sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
      err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (err != cudaSuccess) return err;
    const int64_t tiles = int64_t{m_blocks} * p.q_heads * p.batch;
    grid = dim3(static_cast<unsigned>(std::min<int64_t>(tiles, int64_t{sms} * kMinBlocksPerSm)));
  }
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision>
cudaError_t RunFlashFwdFp32(const AttentionParams& p, cudaStream_t stream) {
  constexpr Fp32TileConfig kTiles = DefaultFp32TileConfig(kHeadDim);
  return RunFlashFwdFp32Tiles<kHeadDim, kVariant, kPrecision, kTiles.block_m, kTiles.block_n,
                              kTiles.warps, kTiles.stages, kTiles.blocks_per_sm, kTiles.options>(
      p, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP32_LAUNCH_CUH_
