// Code-shape variants of the float32 kernel (Fp32KernelOption,
// kernels/cuda/flash_fwd_fp32_traits.h) for fp32_bench --variants: each entry launches
// RunFlashFwdFp32Tiles with one tile configuration and option set, FULL, plain variant, on a
// normalized, checked AttentionParams. Compiled only with -DATTN_BENCH_FP32_VARIANTS=ON.
#ifndef ATTENTION_BENCH_CUDA_FP32_BENCH_VARIANTS_H_
#define ATTENTION_BENCH_CUDA_FP32_BENCH_VARIANTS_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/attention_params.h"

namespace attention::cuda::bench {

struct Fp32KernelVariant {
  std::string label;  // the option set, e.g. "one-body+persistent"
  int head_dim;
  int options;  // Fp32KernelOption bits
  // DefaultFp32TileConfig(head_dim)'s tiles: the same products in the same order as the default,
  // so o must be bitwise the default's. Other tiles sum P V in other chains: o within float32
  // accuracy of the default's.
  bool same_tiles;
  cudaError_t (*run)(const AttentionParams& p, cudaStream_t stream);
};

const std::vector<Fp32KernelVariant>& Fp32KernelVariants();

}  // namespace attention::cuda::bench

#endif  // ATTENTION_BENCH_CUDA_FP32_BENCH_VARIANTS_H_
