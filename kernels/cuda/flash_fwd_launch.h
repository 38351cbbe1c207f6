// Launch layer of the forward kernel, as seen from host code: one function template per
// (element type, head-dim bucket, variant), explicitly instantiated in the generated files under
// instantiations/ (kernels/cuda/generate_instantiations.py). Host-compilable: the host dispatch
// (flash_fwd_dispatch.cc) includes this and links against those instantiations.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_H_

#include <cuda_runtime_api.h>

#include "kernels/attention_params.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// Enqueues the forward kernel for `p` on `stream` with the tile configuration
// DefaultTileConfig(kHeadDim). `p` must be normalized and checked (attention_cuda.cc), with
// p.dtype == kDType (kFloat16 or kBFloat16) and p.head_dim <= kHeadDim. Returns the launch's
// CUDA error (cudaSuccess once enqueued).
template <DType kDType, int kHeadDim, FwdVariant kVariant>
cudaError_t RunFlashFwd(const AttentionParams& p, cudaStream_t stream);

// Same with an explicit tile configuration (used by the benchmark's tile sweep; instantiated
// there for the configurations it measures).
template <DType kDType, int kHeadDim, FwdVariant kVariant, int kBlockM, int kBlockN, int kNWarps,
          int kKVStages, bool kPrefetchFragments>
cudaError_t RunFlashFwdTiles(const AttentionParams& p, cudaStream_t stream);

// The Hopper kernel (wgmma, sm_90a) with DefaultSm90TileConfig(kHeadDim), for the buckets with
// HasSm90Kernel(kHeadDim); same contract as RunFlashFwd. Only for compute capability 9.0 devices
// and builds that include sm_90a (elsewhere the kernel is empty).
template <DType kDType, int kHeadDim, FwdVariant kVariant>
cudaError_t RunFlashFwdSm90(const AttentionParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_LAUNCH_H_
