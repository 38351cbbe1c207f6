// The backward pass's element-wise kernels around the main ones (flash_bwd_launch.h): the
// preprocess (D = rowsum(dO * O), lse_log2, dq_accum = 0) and the postprocess (dq = dq_accum *
// softmax_scale in the element type). One warp per (query row, head), one 16-byte chunk of the
// row per lane (head_dim <= 256 = 32 chunks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // one warp per row
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kMaxHeadDim <= 32 * 8, "one 16-byte chunk per lane");

struct RowCoords {
  int64_t q_row;   // row of q / o / do / dq (packed: cu_seqlens_q[b] + i; dense: i)
  int64_t ws_row;  // workspace row (flash_bwd_launch.h)
  int64_t lse;     // offset of the row's lse
};

// The row this warp handles, or false when it lies past its sequence.
__device__ __forceinline__ bool LocateRow(const BwdParams& p, int& b, int& head, int& i,
                                          RowCoords& rc) {
  b = blockIdx.z;
  head = blockIdx.y;
  i = blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
  int64_t q_start = 0;
  int len_q = p.seqlen_q;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[b];
    len_q = p.cu_seqlens_q[b + 1] - static_cast<int>(q_start);
  }
  if (i >= len_q) return false;
  rc.q_row = q_start + i;
  rc.ws_row = (p.cu_seqlens_q != nullptr ? q_start : int64_t{b} * p.seqlen_q) + i;
  rc.lse = b * p.lse_batch_stride + head * p.lse_head_stride + q_start + i;
  return true;
}

template <typename Element>
__device__ __forceinline__ float ToFloat(Element x) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return __half2float(x);
  }
}

template <typename Element>
__device__ __forceinline__ Element FromFloat(float x) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return __float2half_rn(x);
  }
}

template <typename Element>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    BwdPreprocessKernel(const __grid_constant__ BwdParams p) {
  int b, head, i;
  RowCoords rc;
  if (!LocateRow(p, b, head, i, rc)) return;
  const int lane = threadIdx.x % 32;
  const int chunks = p.head_dim / 8;
  float sum = 0.f;
  if (lane < chunks) {
    const int64_t off =
        b * p.o_batch_stride + rc.q_row * p.o_row_stride + head * p.o_head_stride + lane * 8;
    // 16-byte loads copied into Element arrays (memcpy: no access of a uint4 through an Element
    // lvalue, which a compiler's type-based alias analysis may drop; registers either way).
    const uint4 o4 = *reinterpret_cast<const uint4*>(static_cast<const Element*>(p.o) + off);
    const uint4 do4 = *reinterpret_cast<const uint4*>(static_cast<const Element*>(p.do_) + off);
    Element o8[8];
    Element do8[8];
    memcpy(static_cast<void*>(o8), &o4, sizeof(o4));
    memcpy(static_cast<void*>(do8), &do4, sizeof(do4));
#pragma unroll
    for (int e = 0; e < 8; ++e) sum = fmaf(ToFloat(o8[e]), ToFloat(do8[e]), sum);
  }
#pragma unroll
  for (int s = 16; s >= 1; s /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, s);
  const int64_t ws = head * p.q_rows + rc.ws_row;
  if (lane == 0) {
    p.dsum[ws] = sum;
    const float lse = p.lse[rc.lse];
    p.lse_log2[ws] = lse == -INFINITY ? INFINITY : lse * kLog2e;
  }
  if (p.dq_accum != nullptr && lane < chunks) {
    float4* dst = reinterpret_cast<float4*>(
        p.dq_accum + (rc.ws_row * p.q_heads + head) * int64_t{p.head_dim} + lane * 8);
    dst[0] = make_float4(0.f, 0.f, 0.f, 0.f);
    dst[1] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

template <typename Element>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    BwdPostprocessKernel(const __grid_constant__ BwdParams p) {
  int b, head, i;
  RowCoords rc;
  if (!LocateRow(p, b, head, i, rc)) return;
  const int lane = threadIdx.x % 32;
  if (lane >= p.head_dim / 8) return;
  const float4* src = reinterpret_cast<const float4*>(
      p.dq_accum + (rc.ws_row * p.q_heads + head) * int64_t{p.head_dim} + lane * 8);
  const float4 lo = src[0];
  const float4 hi = src[1];
  const float vals[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  Element out8[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) out8[e] = FromFloat<Element>(vals[e] * p.softmax_scale);
  uint4 out;
  memcpy(&out, out8, sizeof(out));
  *reinterpret_cast<uint4*>(static_cast<Element*>(p.dq) + b * p.q_batch_stride +
                            rc.q_row * p.q_row_stride + head * p.q_head_stride + lane * 8) = out;
}

}  // namespace

cudaError_t RunBwdPreprocess(const BwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return cudaSuccess;
  const dim3 grid((p.seqlen_q + kRowsPerBlock - 1) / kRowsPerBlock, p.q_heads, p.batch);
  if (p.dtype == DType::kBFloat16) {
    BwdPreprocessKernel<__nv_bfloat16><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p);
  } else {
    BwdPreprocessKernel<__half><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

cudaError_t RunBwdPostprocess(const BwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return cudaSuccess;
  const dim3 grid((p.seqlen_q + kRowsPerBlock - 1) / kRowsPerBlock, p.q_heads, p.batch);
  if (p.dtype == DType::kBFloat16) {
    BwdPostprocessKernel<__nv_bfloat16><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p);
  } else {
    BwdPostprocessKernel<__half><<<grid, 32 * kRowsPerBlock, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace attention::cuda
