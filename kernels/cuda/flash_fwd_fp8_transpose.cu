// The FP8 kernel's V^T pre-pass: one kernel for every head dim, compiled with the FP8
// instantiations; the layout it writes is flash_fwd_fp8_launch.h's.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/flash_fwd_fp8_launch.h"

namespace attention::cuda {
namespace {

// The V^T pre-pass (flash_fwd_fp8_launch.h's layout): block (x, y, z) writes positions
// [64 x, 64 x + 64) of sequence b = z / kv_heads, KV head z % kv_heads, dims [64 y, 64 y + 64),
// where those positions lie in the sequence's written columns (Fp8VtWritten): 256 threads copy
// the 64 keys' rows in 16-byte chunks into shared memory, then each writes 16 positions of one
// dim (their keys permuted by Fp8VtKeyAt, zero past the sequence) as one 16-byte store.
__global__ void __launch_bounds__(256) TransposeVFp8Kernel(const Fp8TransposeArgs a) {
  constexpr int kTile = 64;
  constexpr int kPitch = kTile + 16;  // bytes per key row in shared memory (16-byte aligned)
  __shared__ __align__(16) uint8_t tile[kTile * kPitch];
  const int b = blockIdx.z / a.kv_heads;
  const int h = blockIdx.z % a.kv_heads;
  // The sequence's first key row: in v, row_offset(b) of attention_params.h's addressing rule
  // (cu_seqlens_k[b] packed, 0 dense: the batch stride does the rest); for the columns of V^T,
  // its row among all sequences' keys (b seqlen_k dense).
  int64_t row_offset = 0;
  int64_t k_start = int64_t{b} * a.seqlen_k;
  int len = a.seqlen_k;
  if (a.cu_seqlens_k != nullptr) {
    row_offset = k_start = a.cu_seqlens_k[b];
    len = a.cu_seqlens_k[b + 1] - a.cu_seqlens_k[b];
  }
  const int pos0 = blockIdx.x * kTile;
  if (pos0 >= Fp8VtWritten(len)) return;
  const int d0 = blockIdx.y * kTile;
  const int tid = threadIdx.x;
  {
    const int key = pos0 + tid / 4;
    const int chunk = tid % 4;
    const int dim = d0 + chunk * 16;
    uint4 value = make_uint4(0u, 0u, 0u, 0u);
    if (key < len && dim < a.head_dim) {
      value = *reinterpret_cast<const uint4*>(a.v + b * a.v_batch_stride +
                                              (row_offset + key) * a.v_row_stride +
                                              h * a.v_head_stride + dim);
    }
    *reinterpret_cast<uint4*>(tile + (tid / 4) * kPitch + chunk * 16) = value;
  }
  __syncthreads();
  const int dim = tid / 4;
  const int group = tid % 4;
  // Past the written columns lie the gap and the next sequence's columns.
  if (d0 + dim >= a.head_dim || pos0 + 16 * group >= Fp8VtWritten(len)) return;
  uint32_t words[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t word = 0;
#pragma unroll
    for (int byte = 0; byte < 4; ++byte) {
      const int key_local = Fp8VtKeyAt(16 * group + 4 * w + byte);
      word |= static_cast<uint32_t>(tile[key_local * kPitch + dim]) << (8 * byte);
    }
    words[w] = word;
  }
  uint8_t* dst = a.vt + (int64_t{h} * a.head_dim + d0 + dim) * a.cols + Fp8VtColumn(b, k_start) +
                 pos0 + 16 * group;
  *reinterpret_cast<uint4*>(dst) = make_uint4(words[0], words[1], words[2], words[3]);
}

}  // namespace

cudaError_t LaunchTransposeVFp8(const Fp8TransposeArgs& args, cudaStream_t stream) {
  if (args.batch <= 0 || args.kv_heads <= 0 || args.head_dim <= 0) return cudaSuccess;
  // Positions in tiles of 64 up to the longest sequence's written columns; dims in tiles of 64;
  // one z per (sequence, KV head). The host API bounds batch x kv_heads by the grid's z limit.
  const dim3 grid(static_cast<unsigned>((Fp8VtWritten(args.seqlen_k) + 63) / 64),
                  static_cast<unsigned>((args.head_dim + 63) / 64),
                  static_cast<unsigned>(args.batch * args.kv_heads));
  TransposeVFp8Kernel<<<grid, 256, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace attention::cuda
