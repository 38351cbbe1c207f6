// Alternative tile configurations of the float32 kernel (FULL precision, plain variant) for the
// benchmark's --tiles sweep: each entry launches RunFlashFwdFp32Tiles with one configuration on a
// normalized, checked AttentionParams. Compiled only with -DATTN_BENCH_FP32_TILE_SWEEP=ON.
#ifndef ATTENTION_BENCH_CUDA_FP32_TILE_SWEEP_H_
#define ATTENTION_BENCH_CUDA_FP32_TILE_SWEEP_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::cuda::bench {

struct Fp32TileVariant {
  std::string label;  // "block_m x block_n, warps, stages, blocks per SM"
  int head_dim;
  cudaError_t (*run)(const AttentionParams& p, cudaStream_t stream);
};

const std::vector<Fp32TileVariant>& Fp32TileSweep();

}  // namespace attention::cuda::bench

#endif  // ATTENTION_BENCH_CUDA_FP32_TILE_SWEEP_H_
