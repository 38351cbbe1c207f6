// Launch layer of the decode kernel, as seen from host code: the per-launch constants the host
// dispatch computes (DecodeLaunch) and one function template per (element type, head-dim bucket),
// explicitly instantiated in the generated files instantiations/flash_decode_*.cu
// (kernels/cuda/generate_decode_instantiations.py), plus the combine pass per element type
// (flash_decode_combine.cu). Host-compilable.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/decode_heuristics.h"

namespace attention::cuda {

// What a decode launch adds to AttentionParams. The grid is one-dimensional: block
//   id = g + kv_heads * (query_tile + query_tiles * (split + num_splits * b)),
// so that the blocks of all KV heads of one (sequence, split) are neighbours and read the
// interleaved [.., kv_heads, head_dim] rows of a page together.
struct DecodeLaunch {
  int group = 1;        // q_heads / kv_heads
  int rows_pad = 0;     // packed rows per (sequence, KV head) slot: seqlen_q * group
  int query_tiles = 1;  // ceil(rows_pad / block_m)
  int num_splits = 1;
  // > 0: every split holds exactly this many KV tiles (deterministic mode); 0: each sequence's
  // tile span is divided into num_splits near-equal parts.
  int split_tiles = 0;
  DecodeRows rows = DecodeRows::kRows16;  // block layout of the 16-bit kernel
  // KV heads per block (kDecodeVariants' heads; 1 for the production kernel): the grid has
  // kv_heads / heads_per_block blocks per (sequence, split, query tile).
  int heads_per_block = 1;
  // Workspace of a split launch (num_splits > 1): partial O, float32
  // [num_splits, partial_rows, head_dim] normalized by its own sum, and partial LSE, float32
  // [num_splits, partial_rows] (natural log, -inf for a split without allowed keys, whose O is
  // then never written nor read). Partial row of (b, g, packed row r):
  // (b * kv_heads + g) * rows_pad + r.
  float* partial_o = nullptr;
  float* partial_lse = nullptr;
  int64_t partial_rows = 0;
  // Whether the combine kernel may start early (programmatic dependent launch, compute
  // capability >= 9.0): the decode kernel signals it after its main loop and the combine kernel
  // waits for the decode grid's completion and memory before reading partials.
  bool dependent_launch = false;
  // kDecodeVariants' fused_combine with num_splits > 1: one ticket counter per (sequence, KV
  // head, query tile) unit, index (b * kv_heads + g) * query_tiles + query_tile, in the
  // workspace behind the partial LSE, zeroed by the launch itself before the decode kernel uses
  // them; or DecodeOptions::zeroed_counters when they are enough (counters_self_reset). Null
  // otherwise.
  unsigned int* counters = nullptr;
  int64_t num_counters = 0;
  // The counters are zero when the launch starts (no zeroing kernel), and each unit's last block
  // sets its counter back to 0 after taking its ticket, so that they are zero again at the end.
  bool counters_self_reset = false;
  // kDecodeVariants' page_cache: whether page_table_stride covers the pages of seqlen_k (the host
  // checked), so that a block may read the entries of the split a seqlen_k-key context would give
  // before it knows its own sequence's length.
  bool speculate_pages = false;
  // The combine kernel with its split loop unrolled by 4 instead of 16 (kDecodeVariants'
  // copy_unroll > 0: the compact kernels).
  bool compact_combine = false;
};

// Enqueues the decode kernel for `p` (normalized and checked by flash_decode.cc, dtype kDType,
// head_dim <= kHeadDim) with launch constants `l` on `stream`. Returns the launch's CUDA error.
template <DType kDType, int kHeadDim>
cudaError_t RunDecodeKernel(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream);

// Enqueues variant `variant` (1 .. kDecodeNumVariants - 1 of kDecodeVariants) of the 16-bit
// kernel for `p` (16-row blocks: the host checked) with `l`. Instantiated for bf16 and head-dim
// bucket 128 only (the decode grid's configuration), in that bucket's generated file.
template <DType kDType, int kHeadDim>
cudaError_t RunDecodeVariant(const AttentionParams& p, const DecodeLaunch& l, int variant,
                             cudaStream_t stream);

// Enqueues the combine pass of a split launch: o and lse of every row from its splits' partials
// (and the sinks). Returns the launch's CUDA error.
template <DType kDType>
cudaError_t RunDecodeCombine(const AttentionParams& p, const DecodeLaunch& l, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_DECODE_LAUNCH_H_
