#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/convert.h"

namespace attention::cuda {
namespace {

constexpr int kThreads = 256;

// Offset of contiguous element `index` in the strided tensor.
__device__ __forceinline__ int64_t StridedOffset(int64_t index, const StridedShape& s) {
  const int64_t d = index % s.head_dim;
  int64_t rest = index / s.head_dim;
  const int64_t h = rest % s.heads;
  rest /= s.heads;
  const int64_t r = rest % s.rows;
  const int64_t o = rest / s.rows;
  return o * s.outer_stride + r * s.row_stride + h * s.head_stride + d;
}

__global__ void FloatToBFloat16Kernel(const float* __restrict__ src, StridedShape shape,
                                      __nv_bfloat16* __restrict__ dst, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = __float2bfloat16_rn(src[StridedOffset(i, shape)]);
  }
}

__global__ void BFloat16ToFloatKernel(const __nv_bfloat16* __restrict__ src, StridedShape shape,
                                      float* __restrict__ dst, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[StridedOffset(i, shape)] = __bfloat162float(src[i]);
  }
}

// The sequence of packed row `row`: the b with cu_seqlens[b] <= row < cu_seqlens[b + 1].
__device__ __forceinline__ int SequenceOf(const int32_t* __restrict__ cu_seqlens, int batch,
                                          int64_t row) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu_seqlens[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__global__ void E4m3ToBFloat16Kernel(const __nv_fp8_e4m3* __restrict__ src, StridedShape shape,
                                     Fp8Descale descale, __nv_bfloat16* __restrict__ dst,
                                     int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    float factor = 1.f;
    if (descale.factors != nullptr) {
      const int64_t rest = i / shape.head_dim;
      const int64_t h = rest % shape.heads;
      const int64_t r = rest / shape.heads % shape.rows;
      const int64_t b = descale.cu_seqlens != nullptr
                            ? SequenceOf(descale.cu_seqlens, descale.batch, r)
                            : rest / shape.heads / shape.rows;
      factor = descale.factors[b * descale.batch_stride + h * descale.head_stride];
    }
    dst[i] = __float2bfloat16_rn(static_cast<float>(src[StridedOffset(i, shape)]) * factor);
  }
}

int64_t Count(const StridedShape& s) { return s.outer * s.rows * s.heads * s.head_dim; }

unsigned Blocks(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65536));
}

}  // namespace

cudaError_t ConvertE4m3ToBFloat16(const void* src, const StridedShape& shape,
                                  const Fp8Descale& descale, void* dst, cudaStream_t stream) {
  const int64_t count = Count(shape);
  if (count == 0) return cudaSuccess;
  E4m3ToBFloat16Kernel<<<Blocks(count), kThreads, 0, stream>>>(
      static_cast<const __nv_fp8_e4m3*>(src), shape, descale, static_cast<__nv_bfloat16*>(dst),
      count);
  return cudaGetLastError();
}

cudaError_t ConvertFloatToBFloat16(const float* src, const StridedShape& shape, void* dst,
                                   cudaStream_t stream) {
  const int64_t count = Count(shape);
  if (count == 0) return cudaSuccess;
  FloatToBFloat16Kernel<<<Blocks(count), kThreads, 0, stream>>>(
      src, shape, static_cast<__nv_bfloat16*>(dst), count);
  return cudaGetLastError();
}

cudaError_t ConvertBFloat16ToFloat(const void* src, const StridedShape& shape, float* dst,
                                   cudaStream_t stream) {
  const int64_t count = Count(shape);
  if (count == 0) return cudaSuccess;
  BFloat16ToFloatKernel<<<Blocks(count), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(src), shape, dst, count);
  return cudaGetLastError();
}

}  // namespace attention::cuda
