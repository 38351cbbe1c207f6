// Bulk copies of the Hopper backward's split kernel (FlashBwdSm90SplitBulkKernel,
// flash_bwd_sm90_kernel.cuh): the tensor maps of dq_accum, q and do, built on the host, and the
// device wrappers of the bulk tensor reduce-add (TMA, sm_90) that adds a staged shared-memory box
// into dq_accum (the loads of q and do use tma_utils.cuh's TmaLoad4d). Included only by CUDA
// sources; the host function reaches cuTensorMapEncodeTiled through the runtime
// (cudaGetDriverEntryPointByVersion), so nothing links libcuda.
//
// Protocol of a reduction (PTX ISA, "cp.reduce.async.bulk.tensor" and "bulk async-groups"): the
// threads write the box into shared memory with ordinary stores, each runs FenceProxyAsyncShared
// (their stores become visible to the async proxy), a barrier over the writers follows, then one
// thread issues BulkReduceAdd3d and BulkCommit (tma_utils.cuh's bulk async-groups). That thread
// alone tracks the group: before the box's bytes are written again it runs BulkWaitRead<0> (the
// box has been read; the additions into global memory may still be in flight) and a barrier tells
// the other writers; before the block exits it runs BulkWait<0>.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/tensor_map_encode.h"
#include "kernels/cuda/tma_utils.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda {

// Columns and rows of one dQ box: 32 float32 columns are one 128-byte row of the 128-byte
// swizzle (the widest inner box that swizzle takes), 16 rows are one warp's rows of the m64nN
// accumulator layout, so that each warp stages and issues its own boxes with no barrier beyond
// its own warp.
inline constexpr int kDqBoxCols = 32;
inline constexpr int kDqBoxRows = 16;

// Rows of one query-tile box of q or do (BwdSm90SplitKernelTraits::kBlockM) and its columns,
// one 64-column panel of the 128-byte swizzle (SmemTile's layout).
inline constexpr int kQueryBoxRows = 64;
inline constexpr int kQueryBoxCols = 64;

// The kernel parameter of FlashBwdSm90SplitBulkKernel: the maps of dq_accum (EncodeBwdSplitMaps
// says how), q and do.
struct BwdSplitMaps {
  CUtensorMap dq;
  CUtensorMap q;
  CUtensorMap do_;
};

namespace bwd_bulk_internal {

// The map of q or do (16-bit, BwdParams' strides in elements) as the 4-D tensor {head_dim,
// q_heads, rows, batch}: rows = seqlen_q and batch = p.batch for a dense batch, rows = total_q
// and batch 1 for a packed one; boxes of {kQueryBoxCols, 1, kQueryBoxRows, 1} in the 128-byte
// swizzle. Elements outside the tensor land as zeros; rows past a packed sequence land as the
// next sequence's (the kernel zeroes them).
inline cudaError_t EncodeQueryMap(const BwdParams& p, const void* data, int64_t head_stride,
                                  int64_t row_stride, int64_t batch_stride, CUtensorMap& map) {
  const EncodeTiledFn encode = EncodeTiled();
  if (encode == nullptr || data == nullptr) return cudaErrorNotSupported;
  const int64_t rows = p.is_varlen() ? p.total_q : p.seqlen_q;
  const int64_t batch = p.is_varlen() ? 1 : p.batch;
  if (rows <= 0) return cudaErrorNotSupported;
  // A dimension of size 1 gets a legal stride in place of whatever the params hold there.
  if (p.q_heads == 1) head_stride = p.head_dim;
  if (batch == 1) batch_stride = row_stride * rows;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim),
                              static_cast<cuuint64_t>(p.q_heads), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(head_stride) * 2,
                                 static_cast<cuuint64_t>(row_stride) * 2,
                                 static_cast<cuuint64_t>(batch_stride) * 2};
  const cuuint32_t box[4] = {kQueryBoxCols, 1, kQueryBoxRows, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult res =
      encode(&map,
             p.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                         : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             4, const_cast<void*>(data), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
}

}  // namespace bwd_bulk_internal

// The map of dq_accum [q_rows, q_heads, head_dim] (float32, BwdParams) as the 3-D tensor
// {head_dim, q_heads, q_rows}, innermost first, boxes of {kDqBoxCols, 1, kDqBoxRows} in the
// 128-byte swizzle (additions outside the tensor, columns past head_dim and rows past q_rows,
// are dropped by the hardware), and EncodeQueryMap's maps of q and do. Returns
// cudaErrorNotSupported when the driver lacks cuTensorMapEncodeTiled or refuses a map (a pointer
// not 16-byte aligned, a dimension out of the map's range).
inline cudaError_t EncodeBwdSplitMaps(const BwdParams& p, BwdSplitMaps& maps) {
  using bwd_bulk_internal::EncodeQueryMap;
  const EncodeTiledFn encode = EncodeTiled();
  if (encode == nullptr || p.dq_accum == nullptr || p.q_rows <= 0) return cudaErrorNotSupported;
  CUtensorMap& map = maps.dq;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(p.head_dim),
                              static_cast<cuuint64_t>(p.q_heads),
                              static_cast<cuuint64_t>(p.q_rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(p.head_dim) * 4,
                                 static_cast<cuuint64_t>(p.q_heads) * p.head_dim * 4};
  const cuuint32_t box[3] = {kDqBoxCols, 1, kDqBoxRows};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult res =
      encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, p.dq_accum, dims, strides, box,
             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS) return cudaErrorNotSupported;
  if (const cudaError_t err =
          EncodeQueryMap(p, p.q, p.q_head_stride, p.q_row_stride, p.q_batch_stride, maps.q);
      err != cudaSuccess) {
    return err;
  }
  return EncodeQueryMap(p, p.do_, p.o_head_stride, p.o_row_stride, p.o_batch_stride, maps.do_);
}

namespace bwd {

// Byte offset, inside a dQ box staged at a 1024-byte aligned shared address, of the two floats
// at row `row` (< kDqBoxRows) and columns `col`, `col + 1` (col even, < kDqBoxCols): the 128-byte
// swizzle puts 16-byte chunk c of row r at chunk c ^ (r % 8). Eight rows storing the same
// columns then fall into four different 32-byte bank groups (two stores per group), the fewest
// shared-memory wavefronts 256 bytes can take.
__device__ __forceinline__ uint32_t DqBoxOffset(int row, int col) {
  return static_cast<uint32_t>(row * 128 + ((((col / 4) ^ row) & 7) * 16) + (col % 4) * 4);
}

// Named barrier `id` (1..15; 0 is __syncthreads) over the 128 threads of one warpgroup.
__device__ __forceinline__ void WarpgroupBarrier(int id) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}

// Adds the box staged at shared address `smem_src` (1024-byte aligned, DqBoxOffset's layout) into
// the tensor of `map` (a __grid_constant__ kernel parameter) at coordinates {c0, c1, c2},
// innermost first, as one bulk tensor reduction of the calling thread's current bulk group.
__device__ __forceinline__ void BulkReduceAdd3d(const CUtensorMap* map, uint32_t smem_src, int c0,
                                                int c1, int c2) {
#ifdef ATTN_HAVE_WGMMA
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(smem_src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
#endif
}

}  // namespace bwd
}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_
