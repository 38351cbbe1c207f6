// Host dispatch of the float32 backward (flash_bwd_fp32_kernel.cuh): AttentionBackward with
// float32 q, k, v, o, do and gradients, computed at float32 accuracy (float32 FMA products on the
// CUDA cores, every sum rounded to nearest), as the contract's PRECISION_FULL asks of every
// backward. Every option of the 16-bit backward: causal, window, softcap, ALiBi, any
// softmax_scale, bool and additive masks, sinks, GQA / MQA, dense and packed batches, both dQ
// modes (deterministic: a separate dQ kernel, bit-identical run to run). No paged K/V.
//
// Error against a float64 reference: max |grad - ref| <= 1e-5 * max |ref| per tensor
// (attention_backward_fp32_test; docs/kernel.md has the measured figures).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {

// Whether this build has a float32 backward kernel for `c` (dtype float32): head_dim a multiple
// of 4 (16-byte rows) in a compiled head-dim bucket. OK or UNIMPLEMENTED naming the rule.
absl::Status CheckBackwardFp32Supported(const KernelConfig& c);

// Whether the kernels can read and write `p`'s tensors: q, k, v, o, do, dq, dk and dv 16-byte
// aligned with batch, row and head strides that are multiples of 4 elements (do with o's strides,
// dq with q's, dk with k's, dv with v's). UNIMPLEMENTED naming the field otherwise.
absl::Status CheckBackwardFp32Layout(const AttentionBackwardParams& p);

// Bytes of float32 workspace the float32 backward needs: D and lse * log2(e) per (query row,
// head), BackwardWorkspaceLayout's arrays without dq_accum (dq, float32, is its own accumulator).
int64_t BackwardFp32WorkspaceBytes(const AttentionParams& p);

// Enqueues the float32 backward of `p` (normalized, window clamped, checked by the host API and
// CheckBackwardFp32Layout; dtype float32) on `stream`: the preprocess (D, lse_log2, dq = 0
// unless deterministic), the dK / dV kernel (adding scale dS K into dq unless deterministic),
// then, deterministic, the dQ kernel. `workspace` holds BackwardFp32WorkspaceBytes(p) bytes.
// UNIMPLEMENTED naming the value when this build has no kernel for its head_dim; INTERNAL with the
// CUDA error string when a launch fails.
absl::Status DispatchFlashBwdFp32(const AttentionBackwardParams& p, void* workspace,
                                  cudaStream_t stream);

// The launches DispatchFlashBwdFp32 makes, for the instantiation files and the emulation test:
// the preprocess (flash_bwd_fp32_prepost.cu) and, per head-dim bucket, the dK / dV kernel and,
// deterministic, the dQ kernel (flash_bwd_fp32_launch.cuh). p.head_dim <= kHeadDim.
cudaError_t RunBwdFp32Preprocess(const BwdParams& p, cudaStream_t stream);
template <int kHeadDim>
cudaError_t RunFlashBwdFp32(const BwdParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_FP32_H_
