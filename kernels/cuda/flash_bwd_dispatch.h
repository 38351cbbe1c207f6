// Host dispatch of the backward kernels: which configurations they serve, the workspace they
// need, and the launch sequence (preprocess, dK / dV kernel, dQ kernel or postprocess) with the
// run-time dtype, head_dim and options turned into the template arguments of one compiled
// kernel (flash_bwd_launch.h).
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_DISPATCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_DISPATCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_bwd_launch.h"

namespace attention::cuda {

// Whether this build has a backward kernel for `c` (kind kBackward): float16 or bfloat16 of a
// compiled dtype, head_dim a multiple of 8 in a compiled bucket; float32 as
// CheckBackwardFp32Supported (flash_bwd_fp32.h). OK or UNIMPLEMENTED naming the rule.
absl::Status CheckBackwardSupported(const KernelConfig& c);

// The variant `p` runs: kGeneral for softcap, ALiBi, a mask or a softmax_scale <= 0.
BwdVariant SelectBackwardVariant(const AttentionParams& p);

// Where the float32 workspace arrays of `p` live (byte offsets, 256-byte aligned): dq_accum
// [q_rows, q_heads, head_dim] (absent in deterministic mode), dsum and lse_log2
// [q_heads, q_rows]; total is BackwardWorkspaceBytes.
struct BwdWorkspaceLayout {
  int64_t q_rows = 0;
  int64_t dq_accum = -1;  // -1: none (deterministic)
  int64_t dsum = 0;
  int64_t lse_log2 = 0;
  int64_t total = 0;
};
BwdWorkspaceLayout BackwardWorkspaceLayout(const AttentionParams& p);

// The kernels' parameters: `p` with the workspace arrays of BackwardWorkspaceLayout(p) bound in
// `workspace`.
BwdParams BindBackwardWorkspace(const AttentionBackwardParams& p, void* workspace);

// Which dK / dV kernel runs a backward launch: the mma.sync kernel (FlashBwdKernel, every
// bucket, both dQ modes) or the Hopper one (FlashBwdSm90Kernel). kAuto is the route the server
// takes (kRouteSm90Backward in flash_bwd_dispatch.cc); kSm80 and kSm90 let the tests and the
// benchmark run either kernel in one process, whatever the route.
enum class BwdKernelFamily : uint8_t { kAuto, kSm80, kSm90 };

// The dK / dV kernel DispatchFlashBwd runs for `p` when asked for `requested`: kSm90 where the
// Hopper kernel covers p (a build with ATTN_KERNEL_SM90, head-dim bucket 64, 128 or 256, the
// non-deterministic mode, a compute capability 9.0 device that SelectKernelFamily lets run the
// sm_90a kernels) and requested is kSm90, or kAuto with the route on for p's bucket (bucket
// 256 has its own switch); kSm80 otherwise.
BwdKernelFamily SelectBackwardKernelFamily(const AttentionParams& p,
                                           BwdKernelFamily requested = BwdKernelFamily::kAuto);
const char* BwdKernelFamilyName(BwdKernelFamily family);

// Enqueues the backward pass of `p` (normalized, window clamped, checked by the host API) on
// `stream`. float32 goes to DispatchFlashBwdFp32 (flash_bwd_fp32.h, its own workspace size); the
// 16-bit dtypes run the preprocess, the dK / dV kernel SelectBackwardKernelFamily(p, family) names,
// then the dQ kernel (deterministic) or the postprocess, `workspace` holding
// BackwardWorkspaceLayout(p).total bytes. UNIMPLEMENTED naming the value when this build has no
// kernel for its dtype or head_dim; INTERNAL with the CUDA error string when a launch fails.
absl::Status DispatchFlashBwd(const AttentionBackwardParams& p, void* workspace,
                              cudaStream_t stream, BwdKernelFamily family = BwdKernelFamily::kAuto);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_DISPATCH_H_
