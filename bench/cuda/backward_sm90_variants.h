// Alternative configurations of the Hopper dK / dV kernel (kernels/cuda/flash_bwd_sm90_*),
// compiled into backward_bench with ATTN_BENCH_BWD_SM90_VARIANTS=ON (a build with sm_90a and
// bf16) and timed side by side with the mma.sync kernel by its --sm90-variants flag.
#ifndef ATTENTION_BENCH_CUDA_BACKWARD_SM90_VARIANTS_H_
#define ATTENTION_BENCH_CUDA_BACKWARD_SM90_VARIANTS_H_

#include <cuda_runtime_api.h>

#include <vector>

#include "kernels/attention_params.h"

namespace attention::cuda {

// One configuration (bf16, dense variant, default dQ mode): `run` enqueues the whole backward
// pass of `p` (normalized, window clamped, as DispatchFlashBwd receives it; not deterministic)
// with workspace `workspace` (BackwardWorkspaceBytes(p)): the preprocess, this configuration's
// dK / dV kernel and the postprocess.
struct BwdSm90Variant {
  const char* name;
  int head_dim;     // the bucket it serves
  bool is_default;  // the configuration DefaultBwdSm90KernelTraits names
  cudaError_t (*run)(const AttentionBackwardParams& p, void* workspace, cudaStream_t stream);
};

const std::vector<BwdSm90Variant>& BwdSm90Variants();

}  // namespace attention::cuda

#endif  // ATTENTION_BENCH_CUDA_BACKWARD_SM90_VARIANTS_H_
