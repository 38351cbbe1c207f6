// Element-type conversions for float32 requests: the tensor cores take 16-bit operands, so the
// host API copies float32 q, k, v into a bfloat16 workspace, runs the 16-bit kernel into a
// bfloat16 o, and widens that o into the caller's float32 o.
//
// A tensor here is [outer, rows, heads, head_dim] with element strides (outer_stride,
// row_stride, head_stride, 1): dense q is [batch, seqlen, heads, head_dim], packed q is
// [1, total, heads, head_dim]. The 16-bit side is always contiguous.
#ifndef ATTENTION_KERNELS_CUDA_CONVERT_H_
#define ATTENTION_KERNELS_CUDA_CONVERT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace attention::cuda {

struct StridedShape {
  int64_t outer = 0, rows = 0, heads = 0, head_dim = 0;
  int64_t outer_stride = 0, row_stride = 0, head_stride = 0;
};

// Strided float32 `src` -> contiguous bfloat16 `dst` (round to nearest even), on `stream`.
cudaError_t ConvertFloatToBFloat16(const float* src, const StridedShape& shape, void* dst,
                                   cudaStream_t stream);

// Contiguous bfloat16 `src` -> strided float32 `dst` (exact), on `stream`.
cudaError_t ConvertBFloat16ToFloat(const void* src, const StridedShape& shape, float* dst,
                                   cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_CONVERT_H_
