// Alternative configurations of the float32 backward's kernels (kernels/cuda/flash_bwd_fp32_*),
// compiled into backward_fp32_bench with ATTN_BENCH_BWD_FP32_VARIANTS=ON and timed side by side
// with the default ones by its --variants flag.
#ifndef ATTENTION_BENCH_CUDA_BACKWARD_FP32_VARIANTS_H_
#define ATTENTION_BENCH_CUDA_BACKWARD_FP32_VARIANTS_H_

#include <cuda_runtime_api.h>

#include <vector>

#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {

// One configuration: `run` enqueues the dK / dV kernel (and, deterministic, the dQ kernel) after
// the preprocess (RunBwdFp32Preprocess), as RunFlashBwdFp32<head_dim> does for the default.
struct BwdFp32Variant {
  const char* name;
  int head_dim;  // the bucket it serves
  bool is_default;
  cudaError_t (*run)(const BwdParams& p, cudaStream_t stream);
};

std::vector<BwdFp32Variant> BwdFp32Variants();

}  // namespace attention::cuda

#endif  // ATTENTION_BENCH_CUDA_BACKWARD_FP32_VARIANTS_H_
