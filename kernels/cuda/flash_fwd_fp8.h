// Host API of the FP8 (E4M3) Hopper forward kernel (flash_fwd_fp8_kernel.cuh: the warp-specialized
// kernel's structure with e4m3 wgmma, V read as V^T from a workspace the pre-pass writes), issue
// 23's FP8 forward. The CUDA backend's only FP8 path: RunAttention sends every kFloat8E4M3 launch
// here once routed (Fp8KernelRouted); its test and the benchmark's --dtype fp8 call it directly.
//
// Numerics: S = Q K^T of the stored e4m3 values, accumulated in float32 by the tensor cores, times
// q_descale k_descale softmax_scale in float32; the softmax's P (in [0, 1] relative to the running
// row max) is rounded to e4m3 for O += P V while the row sums use the float32 P; O times
// v_descale, divided by the row sum, rounded to bfloat16. Against float64 on the dequantized
// inputs the error of a row is bounded by
//   (2^-4 sum_j p_j |v_j| + 2^-10 sum_j |v_j|) / sum_j p_j      (e4m3 rounding of P: relative
//                                                                 2^-4 above 2^-6, absolute
//                                                                 2^-10 below)
// plus bfloat16's rounding of o (2^-9 relative) and float32 accumulation; the measured errors are
// in docs/kernel.md and flash_fwd_fp8_test. At bucket 128 (DefaultFp8TileConfig: /m/l/s/x) P is
// taken against a running max that moves only by more than 2^8 in P (so P lies in [0, 256]), O is
// divided by the tensor cores' sum of the rounded P (off by e <= sum_j (2^-4 + 2^-10) p_j + 2^-10
// per key from the float32 sum: the bound becomes (the numerator above + |o| e) / (sum_j p_j - e))
// and the LSE comes from float32 sums of the unrounded P, as accurate as elsewhere.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_H_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp8_launch.h"

namespace attention::cuda {

// The routing switch: whether RunAttention / CheckSupported take kFloat8E4M3 launches to this
// kernel (off: UNIMPLEMENTED naming the switch, as before the kernel existed). On since its GPU
// checks (H100, 2026-12-06, bench/results/gpu_2026-12-06f.md): call 2 ran flash_fwd_fp8_test's
// packed and single-sequence cases within their bound (the dense multi-sequence cases failed
// there; their V^T pre-pass fix, 97b7614, has not run on a GPU yet), and call 3 served the FP8
// public-RPC suite (server_fp8_integration_test, packed launches as the server makes them) with
// this kernel, 5 of 5.
inline constexpr bool kRouteFp8Kernel = true;

// Whether CheckSupported / RunAttention take FP8 launches to this kernel: kRouteFp8Kernel, or
// the environment's ATTN_CUDA_FP8=on (read once; for GPU tests of the serving path while the
// switch is off).
bool Fp8KernelRouted();

// Whether this build compiled the kernel (ATTN_KERNEL_DTYPES with fp8, ATTN_KERNEL_SM90).
bool Fp8KernelCompiled();

// Whether the kernel covers the configuration `c` in this build (device and launch data aside):
// OK, or UNIMPLEMENTED naming the rule (not routed, Fp8KernelRouted, a build without the kernel,
// kind other than kForward, head_dim not a multiple of 16 or its bucket not compiled, ALiBi, a
// mask, a window other than causal, softmax_scale <= 0). CheckSupported's FP8 answer.
absl::Status CheckFp8Config(const KernelConfig& c);

// Whether the kernel covers `p` (normalized: Normalize and ClampWindow applied) in this build on
// the current device: OK, or UNIMPLEMENTED naming what it lacks (a build without sm_90a or fp8,
// a head-dim bucket not compiled, a device other than compute capability 9.0, paged batches or
// key ranges, a window other than causal, ALiBi, masks, softmax_scale <= 0) or INVALID_ARGUMENT
// naming the field and the rule (dtype kFloat8E4M3; head_dim a multiple of 16 up to 256; 16-byte
// aligned q, k, v, o; q / k / v strides multiples of 16 elements, o's of 8 (bfloat16); packed
// batches with both cu_seqlens; fewer than 2^31 rows and V^T columns; batch x kv_heads <= 65535).
// Dense and packed batches (Sq != Sk, empty sequences), GQA / MQA, causal (bottom-right),
// softcap, sinks, the LSE and per-tensor or per-head descales of q, k, v are covered. Reads no
// device memory.
absl::Status CheckFlashFwdFp8(const AttentionParams& p);

// Bytes of device workspace RunFlashFwdFp8 needs for `p` (V^T: kv_heads x head_dim x
// Fp8VtColumns(rows of k, batch), flash_fwd_fp8_launch.h); 0 for a launch with no work.
size_t Fp8WorkspaceBytes(const AttentionParams& p);

// Enqueues the V^T pre-pass and the kernel for `p` (device pointers, dtype kFloat8E4M3, o
// bfloat16) on `stream`: normalizes a copy of p, checks it (CheckFlashFwdFp8), builds the maps
// and launches. `workspace`: at least Fp8WorkspaceBytes(p) bytes of device memory, 256-byte
// aligned, that no other launch uses until this one completes. INVALID_ARGUMENT without a
// workspace, INTERNAL with the CUDA error string when a launch fails.
absl::Status RunFlashFwdFp8(const AttentionParams& p, void* workspace, cudaStream_t stream);

// RunFlashFwdFp8's steps before the kernel, for a tile configuration of the caller's (the
// benchmark's variants): fills `args` for `p` (normalized, checked by CheckFlashFwdFp8, not
// empty) with `config` on a persistent grid or one block per query tile, and enqueues the V^T
// pre-pass into `workspace` on `stream`. Errors as RunFlashFwdFp8's.
absl::Status PrepareFlashFwdFp8(const AttentionParams& p, const Fp8TileConfig& config,
                                bool persistent, void* workspace, cudaStream_t stream,
                                FwdFp8Args& args);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_FP8_H_
