// Bulk reductions of the Hopper backward's dQ (FlashBwdSm90SplitBulkKernel,
// flash_bwd_sm90_kernel.cuh): the tensor map of dq_accum, built on the host, and the device
// wrappers of the bulk tensor reduce-add (TMA, sm_90) that adds a staged shared-memory box into
// it. Included only by CUDA sources; the host function reaches cuTensorMapEncodeTiled through the
// runtime (cudaGetDriverEntryPointByVersion), so nothing links libcuda.
//
// Protocol of a reduction (PTX ISA, "cp.reduce.async.bulk.tensor" and "bulk async-groups"): the
// threads write the box into shared memory with ordinary stores, each runs FenceProxyAsyncShared
// (their stores become visible to the async proxy), a barrier over the writers follows, then one
// thread issues BulkReduceAdd3d and BulkCommit. That thread alone tracks the group: before the
// box's bytes are written again it runs BulkWaitRead<0> (the box has been read; the additions
// into global memory may still be in flight) and a barrier tells the other writers; before the
// block exits it runs BulkWait<0>.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda {

// Columns and rows of one dQ box: 32 float32 columns are one 128-byte row of the 128-byte
// swizzle (the widest inner box that swizzle takes), 16 rows are one warp's rows of the m64nN
// accumulator layout, so that each warp stages and issues its own boxes with no barrier beyond
// its own warp.
inline constexpr int kDqBoxCols = 32;
inline constexpr int kDqBoxRows = 16;

// The map of dq_accum [q_rows, q_heads, head_dim] (float32, BwdParams) as the 3-D tensor
// {head_dim, q_heads, q_rows}, innermost first, boxes of {kDqBoxCols, 1, kDqBoxRows} in the
// 128-byte swizzle. Additions outside the tensor (columns past head_dim, rows past q_rows) are
// dropped by the hardware. Returns cudaErrorNotSupported when the driver lacks
// cuTensorMapEncodeTiled or refuses the map (dq_accum not 16-byte aligned, a dimension out of
// the map's range).
inline cudaError_t EncodeDqAccumMap(const BwdParams& p, CUtensorMap& map) {
  using EncodeTiledFn =
      CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static const EncodeTiledFn encode = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  if (encode == nullptr || p.dq_accum == nullptr || p.q_rows <= 0) return cudaErrorNotSupported;
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
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
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

// Closes the calling thread's current bulk group (the reductions issued since the last commit).
__device__ __forceinline__ void BulkCommit() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of the calling thread's bulk groups still read shared memory.
template <int kPending>
__device__ __forceinline__ void BulkWaitRead() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Waits until at most kPending of the calling thread's bulk groups are incomplete (their
// additions into global memory done).
template <int kPending>
__device__ __forceinline__ void BulkWait() {
#ifdef ATTN_HAVE_WGMMA
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

}  // namespace bwd
}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_BULK_CUH_
