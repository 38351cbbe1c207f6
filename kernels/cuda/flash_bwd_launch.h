// Launch layer of the backward kernels, as seen from host code: the parameters every backward
// kernel reads (AttentionBackwardParams plus the float32 workspace arrays), and one function
// template per (element type, head-dim bucket, variant) explicitly instantiated in the generated
// files under instantiations/ (kernels/cuda/generate_bwd_instantiations.py). Host-compilable.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_H_
#define ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace attention::cuda {

// A backward launch as the kernels read it: `p` normalized (causal folded into window_right,
// window sides clamped by ClampWindow) and checked, plus the workspace arrays. Query row i of
// sequence b has the workspace row
//   ws_row(b, i) = (cu_seqlens_q ? cu_seqlens_q[b] : b * seqlen_q) + i,   in [0, q_rows),
// and, for query head h:
//   dq_accum [q_rows, q_heads, head_dim] float32: unscaled sum over keys of dS K (zeroed by the
//            preprocess kernel; null in deterministic mode, where the dQ kernel writes dq);
//   dsum     [q_heads, q_rows] float32: D = rowsum(dO * O);
//   lse_log2 [q_heads, q_rows] float32: lse * log2(e), and +inf for a row with lse = -inf (no
//            allowed key and no sink), so that exp2(logit * log2(e) - lse_log2) is 0 there.
struct BwdParams : AttentionBackwardParams {
  float* dq_accum = nullptr;
  float* dsum = nullptr;
  float* lse_log2 = nullptr;
  int64_t q_rows = 0;
};

// Which compiled backward kernel runs a launch: kDense for causal / window / plain attention
// with a positive softmax_scale (P = exp2(s * scale_log2 - lse_log2), one FFMA), kGeneral for
// softcap, ALiBi, masks or another scale (scores turned into logits element by element, and
// softcap's chain rule).
enum class BwdVariant : uint8_t { kDense, kGeneral };

// Preprocess: D, lse_log2 and (unless deterministic) dq_accum = 0. Postprocess: dq = dq_accum *
// softmax_scale in the element type. One launch each over every (query row, head); p.dtype
// must be kBFloat16 or kFloat16 (flash_bwd_prepost.cu).
cudaError_t RunBwdPreprocess(const BwdParams& p, cudaStream_t stream);
cudaError_t RunBwdPostprocess(const BwdParams& p, cudaStream_t stream);

// Enqueues the dK / dV kernel (one block per key tile, KV head and sequence; it also adds dS K
// into dq_accum unless p.deterministic) with DefaultBwdTileConfig(kHeadDim). p.dtype == kDType,
// p.head_dim <= kHeadDim.
template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwd(const BwdParams& p, cudaStream_t stream);

// Enqueues the Hopper dK / dV kernel (flash_bwd_sm90_kernel.cuh: sm_90a, the products on
// warpgroup MMAs; it adds dS K into dq_accum) with DefaultBwdSm90KernelTraits<kHeadDim>.
// Instantiated only in builds with ATTN_KERNEL_SM90, for HasSm90BwdKernel(kHeadDim) buckets
// (flash_bwd_traits.h). p.dtype == kDType, p.head_dim <= kHeadDim, p.deterministic false, and
// the device of compute capability 9.0 (elsewhere the kernel is empty).
template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwdSm90(const BwdParams& p, cudaStream_t stream);

// Enqueues the deterministic dQ kernel (one block per query tile, query head and sequence),
// which writes dq itself, with DefaultBwdDqTileConfig(kHeadDim).
template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunFlashBwdDq(const BwdParams& p, cudaStream_t stream);

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_FLASH_BWD_LAUNCH_H_
