// The combine pass of split decode launches, for every output element type (one small kernel
// each; the 16-bit ones are compiled whatever ATTN_KERNEL_DTYPES says, which costs seconds).
#include "kernels/cuda/flash_decode_launch_template.cuh"

namespace attention::cuda {

template cudaError_t RunDecodeCombine<DType::kBFloat16>(const AttentionParams& p,
                                                        const DecodeLaunch& l, cudaStream_t stream);
template cudaError_t RunDecodeCombine<DType::kFloat16>(const AttentionParams& p,
                                                       const DecodeLaunch& l, cudaStream_t stream);
template cudaError_t RunDecodeCombine<DType::kFloat32>(const AttentionParams& p,
                                                       const DecodeLaunch& l, cudaStream_t stream);

}  // namespace attention::cuda
