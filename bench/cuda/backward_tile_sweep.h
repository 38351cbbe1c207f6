// Candidate tile configurations of the CUDA backward's dK / dV kernel for backward_bench --sweep:
// each entry runs the whole backward (preprocess, the candidate's dK / dV kernel, then the
// postprocess or, in deterministic mode, the default dQ kernel) for bfloat16, dense variant, on
// one head-dim bucket. Compiled only with -DATTN_BENCH_BWD_TILE_SWEEP=ON
// (bench/cuda/CMakeLists.txt); the Hopper kernel's candidates also need ATTN_KERNEL_SM90.
#ifndef ATTENTION_BENCH_CUDA_BACKWARD_TILE_SWEEP_H_
#define ATTENTION_BENCH_CUDA_BACKWARD_TILE_SWEEP_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::cuda::bench {

struct BwdTileCandidate {
  // "64x128 8w 4/4/2": block_m x block_n, warps, and the warps along the keys of S^T / dP^T, the
  // keys of dK / dV and the queries of dQ (BwdTileConfig's fields); " 2q" with two query-tile
  // stages.
  std::string label;
  int head_dim;     // the bucket; p.head_dim <= head_dim
  bool is_default;  // DefaultBwdTileConfig(head_dim)
  // p: normalized (Normalize, ClampWindow), bfloat16, dense variant (SelectBackwardVariant),
  // workspace of BackwardWorkspaceBytes(p) bytes; p.deterministic only if `deterministic`. The
  // first launch error, or cudaSuccess.
  cudaError_t (*run)(const AttentionBackwardParams& p, void* workspace, cudaStream_t stream);
  // Whether the candidate runs the deterministic mode too (the Hopper dK / dV kernel does not).
  bool deterministic = true;
};

// The candidates, grouped by head_dim (64, then 128), each bucket's default among them.
const std::vector<BwdTileCandidate>& BackwardTileSweep();

}  // namespace attention::cuda::bench

#endif  // ATTENTION_BENCH_CUDA_BACKWARD_TILE_SWEEP_H_
