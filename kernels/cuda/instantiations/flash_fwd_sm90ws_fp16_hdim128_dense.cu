// The warp-specialized Hopper forward kernel (flash_fwd_sm90ws_kernel.cuh) for fp16, head-dim
// bucket 128, dense, with its default tile configuration.
#include "kernels/cuda/flash_fwd_sm90ws_launch.cuh"

namespace attention::cuda {

template cudaError_t LaunchFlashFwdSm90WsDefault<DType::kFloat16, 128, false>(
    const FwdSm90WsArgs& args, cudaStream_t stream);

}  // namespace attention::cuda
