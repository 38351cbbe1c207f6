// Element-type conversions: the host API copies float32 q, k, v into a bfloat16 workspace, runs
// the 16-bit kernel into a bfloat16 o, and widens that o into the caller's float32 o
// (PRECISION_BF16); and it dequantizes the FP8 requests its FP8 kernel does not take into
// bfloat16 copies (e4m3 x descale) for the 16-bit kernel, which writes their bfloat16 o itself.
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

// The dequantization factors of one FP8 tensor (AttentionParams::q_descale and its strides): the
// factor of (sequence b, head h) is factors[b * batch_stride + h * head_stride], null = 1.0. A
// packed tensor (shape.outer 1) finds each row's sequence in cu_seqlens ([batch + 1], device
// memory); a dense one's sequence is its outer index.
struct Fp8Descale {
  const float* factors = nullptr;
  int64_t batch_stride = 0, head_stride = 0;
  const int32_t* cu_seqlens = nullptr;
  int batch = 0;
};

// Strided e4m3 `src` -> contiguous bfloat16 `dst`: each element e4m3 x its factor in float32,
// rounded to bfloat16 (nearest even; within 2^-9 relative of the dequantized value), on `stream`.
cudaError_t ConvertE4m3ToBFloat16(const void* src, const StridedShape& shape,
                                  const Fp8Descale& descale, void* dst, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_CONVERT_H_
