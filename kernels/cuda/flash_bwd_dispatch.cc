#include "kernels/cuda/flash_bwd_dispatch.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/flash_bwd_fp32.h"
#include "kernels/cuda/flash_bwd_launch.h"
#include "kernels/cuda/flash_bwd_traits.h"
#include "kernels/cuda/flash_fwd_dispatch.h"

// Built with ATTN_KERNEL_HEAD_DIMS and the ATTN_KERNEL_DTYPE_<type> macros, as
// flash_fwd_dispatch.cc (kernels/cuda/CMakeLists.txt).

namespace attention::cuda {
namespace {

// Whether kAuto launches take the Hopper dK / dV kernel where it covers them
// (SelectBackwardKernelFamily); the tests and backward_bench request either kernel explicitly.
// Routed after its GPU checks (H100, 2026-12-06, bench/results/gpu_2026-12-06c.md):
// attention_backward_cuda_test within 4.7e-3 x max|grad| of float64 in bfloat16 (the mma.sync
// kernel 6.7e-3) and 6.4e-4 in float16, memcheck and racecheck clean in both, 1.23-1.65x the
// mma.sync kernel.
constexpr bool kRouteSm90Backward = true;

// Whether kAuto launches of head-dim bucket 256 take the Hopper kernel's head-dim split form
// (FlashBwdSm90SplitKernel) under kRouteSm90Backward. On since its GPU check (H100, 2026-12-06,
// bench/cuda/backward_sm90_notes.md): every case of attention_backward_cuda_test in a 256-only
// build within 2.5e-3..4.7e-3 x max|grad| of float64, memcheck / racecheck / synccheck clean,
// 1.18-1.32x the mma.sync kernel in every bf16 cell of the grid.
constexpr bool kRouteSm90BackwardHeadDim256 = true;

constexpr int64_t kAlignment = 256;

int64_t AlignUp(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

absl::Status Unsupported(const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("CUDA attention backward kernel: ", what));
}

absl::Status LaunchStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA attention backward: ", what, " launch failed: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

// The dK / dV kernel of `family` (kSm80 or kSm90, as SelectBackwardKernelFamily decided).
template <DType kDType, int kHeadDim, BwdVariant kVariant>
cudaError_t RunDkDvKernel(const BwdParams& p, BwdKernelFamily family, cudaStream_t stream) {
#ifdef ATTN_KERNEL_SM90
  if constexpr (HasSm90BwdKernel(kHeadDim)) {
    if (family == BwdKernelFamily::kSm90) {
      return RunFlashBwdSm90<kDType, kHeadDim, kVariant>(p, stream);
    }
  }
#else
  (void)family;
#endif
  return RunFlashBwd<kDType, kHeadDim, kVariant>(p, stream);
}

template <DType kDType, int kHeadDim, BwdVariant kVariant>
absl::Status RunMainKernels(const BwdParams& p, BwdKernelFamily family, cudaStream_t stream) {
  if (absl::Status s =
          LaunchStatus(RunDkDvKernel<kDType, kHeadDim, kVariant>(p, family, stream), "dK/dV");
      !s.ok()) {
    return s;
  }
  if (p.deterministic) {
    return LaunchStatus(RunFlashBwdDq<kDType, kHeadDim, kVariant>(p, stream), "dQ");
  }
  return LaunchStatus(RunBwdPostprocess(p, stream), "postprocess");
}

template <DType kDType>
absl::Status DispatchHeadDim(const BwdParams& p, BwdKernelFamily family, cudaStream_t stream) {
  const BwdVariant variant = SelectBackwardVariant(p);
  return VisitCompiledHeadDim(
      SmallestCompiledBucket(p.head_dim),
      [&](auto head_dim) {
        constexpr int kHeadDim = decltype(head_dim)::value;
        return variant == BwdVariant::kGeneral
                   ? RunMainKernels<kDType, kHeadDim, BwdVariant::kGeneral>(p, family, stream)
                   : RunMainKernels<kDType, kHeadDim, BwdVariant::kDense>(p, family, stream);
      },
      Unsupported(absl::StrCat("head_dim ", p.head_dim, " has no kernel in this build (head-dim ",
                               "buckets compiled: ", CompiledHeadDimBuckets(), ")")));
}

}  // namespace

absl::Status CheckBackwardSupported(const KernelConfig& c) {
  if (c.dtype == DType::kFloat32) return CheckBackwardFp32Supported(c);
  if (!DTypeCompiled(c.dtype)) {
    return Unsupported(absl::StrCat(c.dtype == DType::kFloat16 ? "float16" : "bfloat16",
                                    " has no kernel in this build"));
  }
  if (c.head_dim % 8 != 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " must be a multiple of 8"));
  }
  if (SmallestCompiledBucket(c.head_dim) == 0) {
    return Unsupported(absl::StrCat("head_dim ", c.head_dim, " has no kernel in this build (",
                                    "head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")"));
  }
  return absl::OkStatus();
}

BwdVariant SelectBackwardVariant(const AttentionParams& p) {
  const bool general = p.alibi || p.alibi_slopes != nullptr || p.softcap > 0.f ||
                       p.mask_kind != MaskKind::kNone || !(p.softmax_scale > 0.f);
  return general ? BwdVariant::kGeneral : BwdVariant::kDense;
}

BwdWorkspaceLayout BackwardWorkspaceLayout(const AttentionParams& p) {
  BwdWorkspaceLayout w;
  w.q_rows = p.is_varlen() ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  const int64_t row_floats = AlignUp(w.q_rows * p.q_heads * 4);
  int64_t offset = 0;
  if (!p.deterministic) {
    w.dq_accum = 0;
    offset = AlignUp(w.q_rows * p.q_heads * p.head_dim * 4);
  }
  w.dsum = offset;
  w.lse_log2 = offset + row_floats;
  w.total = offset + 2 * row_floats;
  return w;
}

BwdParams BindBackwardWorkspace(const AttentionBackwardParams& params, void* workspace) {
  BwdParams p;
  static_cast<AttentionBackwardParams&>(p) = params;
  const BwdWorkspaceLayout layout = BackwardWorkspaceLayout(params);
  char* ws = static_cast<char*>(workspace);
  p.q_rows = layout.q_rows;
  p.dq_accum = layout.dq_accum >= 0 ? reinterpret_cast<float*>(ws + layout.dq_accum) : nullptr;
  p.dsum = reinterpret_cast<float*>(ws + layout.dsum);
  p.lse_log2 = reinterpret_cast<float*>(ws + layout.lse_log2);
  return p;
}

BwdKernelFamily SelectBackwardKernelFamily(const AttentionParams& p, BwdKernelFamily requested) {
  const int bucket = SmallestCompiledBucket(p.head_dim);
  const bool routed = kRouteSm90Backward && (bucket != 256 || kRouteSm90BackwardHeadDim256);
  const bool wanted =
      requested == BwdKernelFamily::kSm90 || (requested == BwdKernelFamily::kAuto && routed);
  const bool covered = bucket != 0 && HasSm90BwdKernel(bucket) && !p.deterministic &&
                       (p.dtype == DType::kBFloat16 || p.dtype == DType::kFloat16) &&
                       DTypeCompiled(p.dtype) && SelectKernelFamily(p) != KernelFamily::kSm80;
  return wanted && covered ? BwdKernelFamily::kSm90 : BwdKernelFamily::kSm80;
}

const char* BwdKernelFamilyName(BwdKernelFamily family) {
  switch (family) {
    case BwdKernelFamily::kSm90:
      return "sm90 (wgmma)";
    case BwdKernelFamily::kSm80:
      return "sm80 (mma.sync)";
    case BwdKernelFamily::kAuto:
      break;
  }
  return "auto";
}

absl::Status DispatchFlashBwd(const AttentionBackwardParams& params, void* workspace,
                              cudaStream_t stream, BwdKernelFamily family) {
  if (params.dtype == DType::kFloat32) return DispatchFlashBwdFp32(params, workspace, stream);
  const BwdParams p = BindBackwardWorkspace(params, workspace);
  const BwdKernelFamily chosen = SelectBackwardKernelFamily(p, family);
  if (absl::Status s = LaunchStatus(RunBwdPreprocess(p, stream), "preprocess"); !s.ok()) return s;
  switch (p.dtype) {
#ifdef ATTN_KERNEL_DTYPE_BF16
    case DType::kBFloat16:
      return DispatchHeadDim<DType::kBFloat16>(p, chosen, stream);
#endif
#ifdef ATTN_KERNEL_DTYPE_FP16
    case DType::kFloat16:
      return DispatchHeadDim<DType::kFloat16>(p, chosen, stream);
#endif
    default:
      return Unsupported("dtype has no kernel in this build");
  }
}

}  // namespace attention::cuda
