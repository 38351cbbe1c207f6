// Host API of the CUDA backend: the fused tiled forward attention kernel.
// Compiled by the host compiler; no CUDA device code and no gRPC here.
#ifndef ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_
#define ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace attention::cuda {

// Whether this build has a kernel for `p` (dtype, head_dim, options): OK, or INVALID_ARGUMENT /
// UNIMPLEMENTED naming the unsupported value. Cheap; call it before staging any data.
absl::Status CheckSupported(const AttentionParams& p);

// Bytes of device scratch RunAttention needs for `p`: 0 for bf16 / fp16; for float32 requests,
// room to convert q, k, v (and o) to a 16-bit type, since the tensor cores take 16-bit operands
// (the precision this gives is documented with the kernel). Sized by the caller from its pool.
size_t WorkspaceBytes(const AttentionParams& p);

// Enqueues the forward kernel for `p` (device pointers) on `stream` and returns without waiting.
// `workspace` holds at least WorkspaceBytes(p) bytes of device memory (may be null when that is
// 0). Never allocates. Errors: INVALID_ARGUMENT / UNIMPLEMENTED as CheckSupported, INTERNAL for a
// launch failure (with the CUDA error string).
absl::Status RunAttention(const AttentionParams& p, void* workspace, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_
