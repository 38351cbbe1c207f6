// Alternative tile configurations of the forward kernel, compiled into the benchmark only, so
// that one run on the GPU measures the tile choices of kernels/cuda/kernel_traits.h against
// their neighbours (bench/cuda/NOTES.md records the outcome).
#ifndef ATTENTION_BENCH_CUDA_TILE_SWEEP_H_
#define ATTENTION_BENCH_CUDA_TILE_SWEEP_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::cuda::bench {

// One compiled configuration: launches the bf16 kernel of head-dim bucket `head_dim` with tiles
// block_m x block_n, `warps` warps and `stages` K/V buffers (and explicit fragment prefetch) --
// the mma.sync kernel, or with `sm90` the wgmma kernel, its registers sized for
// `blocks_per_sm` blocks per SM; `dense` is the no-window variant, `window` the causal /
// sliding-window one. `p` must be normalized.
struct TileVariant {
  int head_dim;
  int block_m, block_n, warps, stages;
  bool prefetch;  // TileConfig::prefetch_fragments
  bool sm90;
  int blocks_per_sm;
  cudaError_t (*dense)(const AttentionParams& p, cudaStream_t stream);
  cudaError_t (*window)(const AttentionParams& p, cudaStream_t stream);
  std::string Label() const;
};

const std::vector<TileVariant>& TileSweep();

}  // namespace attention::cuda::bench

#endif  // ATTENTION_BENCH_CUDA_TILE_SWEEP_H_
