// Host API of the CUDA backend: the fused tiled forward attention kernel and its backward pass.
// Compiled by the host compiler; no CUDA device code and no gRPC here.
#ifndef ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_
#define ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace attention::cuda {

// Whether this build has a kernel for `config` (kind, dtype, head_dim, options): OK, or
// INVALID_ARGUMENT (CheckConfig's structural rules) / UNIMPLEMENTED naming the unsupported value.
// Cheap; the server calls it before it queues a request.
absl::Status CheckSupported(const KernelConfig& config);

// The precision RunAttention computes `config` at: kFull for 16-bit inputs (exact values,
// float32 accumulation) and for the backward (kind kBackward); for float32 forward inputs the
// configuration's precision where the float32 kernel serves it, else kBF16 (q, k and v rounded to
// bfloat16 for the 16-bit kernel).
Precision ComputedPrecision(const KernelConfig& config);

// Whether paged K/V (sessions' Attend) and sinks are routed to their kernels in this build: OK, or
// UNIMPLEMENTED saying why not (a server then refuses CreateSession with it).
absl::Status PagedKernelsRouted();

// Whether the backward pass (kind kBackward) is routed to its kernels in this build: OK, or
// UNIMPLEMENTED saying why not (CheckSupported then refuses every backward configuration).
absl::Status BackwardKernelsRouted();

// Whether a backward pass with float32 tensors is routed to the float32 backward kernel
// (flash_bwd_fp32.h) in this build: OK, or UNIMPLEMENTED saying why not (CheckSupported then
// refuses float32 backward configurations; CheckBackwardLaunch still admits them).
absl::Status Float32BackwardRouted();

// Whether a paged launch (kind kPagedDecode) of at most `max_rows` query rows per sequence in
// pages of `page_size` keys has a kernel: up to 16 rows take the decode kernel (any page size);
// more take the forward kernel's paged variant, which needs 16-bit pages of a power-of-two
// page_size in [16, 256]. OK, or UNIMPLEMENTED naming the rule.
absl::Status CheckPagedRows(const KernelConfig& config, int max_rows, int page_size);

// Whether `p` can launch: CheckSupported(p), CheckParams(p), and what the kernels need of the
// launch itself (grid limits, 16-byte aligned rows of 16-bit tensors). RunAttention calls it.
absl::Status CheckLaunch(const AttentionParams& p);

// Bytes of device scratch RunAttention needs for `p`: 0 for bf16 / fp16 and for float32 at
// precision FULL or TF32 (the float32 kernel reads float32 directly); for float32 at precision
// BF16, room to convert q, k, v (and o) to bfloat16 for the 16-bit kernel; for FP8, V^T for the
// FP8 kernel, or bfloat16 copies of q, k and v where the FP8 kernel does not take the
// configuration (ALiBi, masks, windows other than causal, a bucket or build without it). Sized by
// the caller from its pool.
size_t WorkspaceBytes(const AttentionParams& p);

// Device memory a caller keeps for one stream across its launches (the GPU executor: one per
// pipeline slot). Every field is optional.
struct StreamScratch {
  // All 0 between the stream's launches (zeroed once by the owner): the split decode kernel's
  // tickets (DecodeOptions::zeroed_counters), which saves it a zeroing launch.
  unsigned int* zeroed_counters = nullptr;
  int64_t zeroed_counter_count = 0;
};

// Enqueues the forward kernel for `p` (device pointers) on `stream` and returns without waiting.
// `workspace` holds at least WorkspaceBytes(p) bytes of device memory (may be null when that is
// 0); `scratch` is the stream's own. Never allocates. Errors: INVALID_ARGUMENT / UNIMPLEMENTED as
// CheckLaunch, INTERNAL for a launch failure (with the CUDA error string).
absl::Status RunAttention(const AttentionParams& p, void* workspace, cudaStream_t stream,
                          const StreamScratch& scratch = {});

// The backward pass (kind kBackward, AttentionBackward; kernels in flash_bwd_kernel.cuh):
// FlashAttention-2's backward for float16 and bfloat16, and for float32 at float32 accuracy
// (flash_bwd_fp32.h; CheckSupported refuses it while Float32BackwardRouted() is not OK), every
// option of the forward except paged K/V, deterministic or not
// (KernelConfig::deterministic: dq without atomics, bit-identical run to run).

// Whether `p` can launch: what CheckSupported(p) checks but the routing switch
// (BackwardKernelsRouted: the kernels' own tests launch them in any build),
// CheckBackwardParams(p), grid limits and 16-byte aligned rows of every tensor (do_ with o's
// strides, dq with q's, dk with k's, dv with v's).
absl::Status CheckBackwardLaunch(const AttentionBackwardParams& p);

// Bytes of device scratch RunAttentionBackward needs for `p`, all float32: D and lse * log2(e)
// per (query row, head), and, unless p.deterministic or float32 (whose dq is its own
// accumulator), the dq accumulator [rows, q_heads, head_dim]. O(rows x heads x head_dim), no
// seqlen_q x seqlen_k term. Sized by the caller from its pool.
size_t BackwardWorkspaceBytes(const AttentionParams& p);

// Enqueues the backward pass for `p` (device pointers) on `stream` and returns without waiting:
// dq, dk and dv are written once the stream reaches that point. `workspace` holds at least
// BackwardWorkspaceBytes(p) bytes of device memory. Never allocates. Errors: INVALID_ARGUMENT /
// UNIMPLEMENTED as CheckBackwardLaunch, INTERNAL for a launch failure.
absl::Status RunAttentionBackward(const AttentionBackwardParams& p, void* workspace,
                                  cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_ATTENTION_CUDA_H_
