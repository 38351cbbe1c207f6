// Launch layer of the float32 backward kernels (flash_bwd_fp32_kernel.cuh): grids, the dynamic
// shared-memory limit, launches and error checks. Included by the generated instantiation files
// (instantiations/flash_bwd_fp32_hdim*.cu) and flash_bwd_fp32_prepost.cu.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_LAUNCH_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_LAUNCH_CUH_

#include <cuda_runtime.h>

#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/cuda/flash_bwd_fp32_kernel.cuh"
#include "kernels/cuda/flash_bwd_fp32_traits.h"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {

// Launches `kernel` on `grid` with Traits::kSmemBytes of dynamic shared memory, opting in above
// the default 48 KB.
template <typename Traits>
cudaError_t LaunchBwdFp32(void (*kernel)(BwdParams), dim3 grid, const BwdParams& p,
                          cudaStream_t stream) {
  if constexpr (Traits::kSmemBytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// The dK / dV kernel and, deterministic, the dQ kernel of configuration Traits (after the
// preprocess, RunBwdFp32Preprocess). RunFlashBwdFp32 runs the default configuration; the
// benchmark's variants (backward_fp32_bench --variants) others.
template <typename Traits>
cudaError_t RunFlashBwdFp32Tiles(const BwdParams& p, cudaStream_t stream) {
  constexpr BwdFp32TileConfig kTiles{Traits::kBlockN, Traits::kBlockM};
  // The key-tile index varies fastest, so the blocks that read a head's query tiles run together
  // and hit L2.
  // An empty grid dimension is a launch error: no key rows means no dK / dV block, no query rows
  // no dQ block.
  if (p.seqlen_k > 0) {
    const dim3 grid((p.seqlen_k + kTiles.block_n - 1) / kTiles.block_n, p.kv_heads, p.batch);
    if (const cudaError_t err =
            LaunchBwdFp32<Traits>(&bwd_fp32::FlashBwdFp32Kernel<Traits>, grid, p, stream);
        err != cudaSuccess) {
      return err;
    }
  }
  if (!p.deterministic || p.seqlen_q == 0) return cudaSuccess;
  const dim3 dq_grid((p.seqlen_q + kTiles.block_m - 1) / kTiles.block_m, p.q_heads, p.batch);
  return LaunchBwdFp32<Traits>(&bwd_fp32::FlashBwdFp32DqKernel<Traits>, dq_grid, p, stream);
}

template <int kHeadDim>
cudaError_t RunFlashBwdFp32(const BwdParams& p, cudaStream_t stream) {
  constexpr BwdFp32TileConfig kTiles = DefaultBwdFp32TileConfig(kHeadDim);
  return RunFlashBwdFp32Tiles<BwdFp32Traits<kHeadDim, kTiles.block_n, kTiles.block_m>>(p, stream);
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_LAUNCH_CUH_
