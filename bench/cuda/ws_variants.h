// Alternative configurations of the warp-specialized Hopper forward kernel
// (kernels/cuda/flash_fwd_sm90ws.h), compiled into the benchmark only (ATTN_BENCH_WS_VARIANTS),
// so that one run on the GPU times the choices of DefaultSm90WsTileConfig against their
// neighbours, each with a persistent grid and with one block per query tile.
#ifndef ATTENTION_BENCH_CUDA_WS_VARIANTS_H_
#define ATTENTION_BENCH_CUDA_WS_VARIANTS_H_

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "kernels/cuda/flash_fwd_sm90ws_launch.h"

namespace attention::cuda::bench {

// One compiled bf16 configuration of head-dim bucket `head_dim`: `dense` launches the variant
// without a mask, `causal` the causal one, for args built by MakeFwdSm90WsArgs with `config`.
struct WsVariant {
  int head_dim;
  Sm90WsTileConfig config;
  cudaError_t (*dense)(const FwdSm90WsArgs& args, cudaStream_t stream);
  cudaError_t (*causal)(const FwdSm90WsArgs& args, cudaStream_t stream);
  std::string Label() const;
};

const std::vector<WsVariant>& WsVariants();

}  // namespace attention::cuda::bench

#endif  // ATTENTION_BENCH_CUDA_WS_VARIANTS_H_
