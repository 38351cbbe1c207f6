#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/compiled_head_dims.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/flash_fwd_fp32.h"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

// The float32 kernel is compiled for the same head-dim buckets as the 16-bit ones
// (compiled_head_dims.h: ATTN_KERNEL_HEAD_DIMS, defined by kernels/cuda/CMakeLists.txt).

namespace attention::cuda {
namespace {

absl::Status LaunchStatus(cudaError_t err) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA float32 attention kernel launch failed: ",
                                          cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

absl::Status CheckTensor(const char* name, const void* ptr, int64_t batch_stride,
                         int64_t row_stride, int64_t head_stride) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    return absl::UnimplementedError(absl::StrCat("CUDA float32 attention kernel: ", name,
                                                 " must be 16-byte aligned for float32 inputs"));
  }
  const int64_t strides[] = {batch_stride, row_stride, head_stride};
  const char* names[] = {"_batch_stride", "_row_stride", "_head_stride"};
  for (int i = 0; i < 3; ++i) {
    if (strides[i] % 4 != 0) {
      return absl::UnimplementedError(
          absl::StrCat("CUDA float32 attention kernel: ", name, names[i], " ", strides[i],
                       " must be a multiple of 4 elements (16-byte rows)"));
    }
  }
  return absl::OkStatus();
}

template <int kHeadDim, Precision kPrecision>
absl::Status DispatchVariant(const AttentionParams& p, cudaStream_t stream) {
  switch (SelectFp32Variant(p)) {
    case Fp32Variant::kPlain:
      return LaunchStatus(RunFlashFwdFp32<kHeadDim, Fp32Variant::kPlain, kPrecision>(p, stream));
    case Fp32Variant::kGeneral:
      return LaunchStatus(RunFlashFwdFp32<kHeadDim, Fp32Variant::kGeneral, kPrecision>(p, stream));
  }
  return absl::InternalError("unknown float32 kernel variant");
}

template <int kHeadDim>
absl::Status DispatchPrecision(const AttentionParams& p, cudaStream_t stream) {
  switch (p.precision) {
    case Precision::kFull:
      return DispatchVariant<kHeadDim, Precision::kFull>(p, stream);
    case Precision::kTF32:
      return DispatchVariant<kHeadDim, Precision::kTF32>(p, stream);
    case Precision::kBF16:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("AttentionParams.precision ", static_cast<int>(p.precision),
                   " is not computed by the float32 kernel (FULL and TF32 are)"));
}

}  // namespace

Fp32Variant SelectFp32Variant(const AttentionParams& p) {
  // The plain variant folds a positive softmax scale into exp2 and tracks the max of raw scores,
  // which is only the max of the logits when the scale is positive.
  if (p.alibi_slopes != nullptr || p.softcap > 0.f || p.mask_kind != MaskKind::kNone ||
      !(p.softmax_scale > 0.f)) {
    return Fp32Variant::kGeneral;
  }
  return Fp32Variant::kPlain;
}

absl::Status CheckFp32Layout(const AttentionParams& p) {
  if (p.is_paged() || p.key_range != nullptr) {
    return absl::UnimplementedError(
        "CUDA float32 attention kernel: paged K/V (page_table) and key_range are not supported "
        "for float32 inputs");
  }
  for (absl::Status s :
       {CheckTensor("q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride),
        CheckTensor("k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride),
        CheckTensor("v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride),
        CheckTensor("o", p.o, p.o_batch_stride, p.o_row_stride, p.o_head_stride)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status DispatchFlashFwdFp32(const AttentionParams& p, cudaStream_t stream) {
  const int bucket = SmallestCompiledBucket(p.head_dim);
  return VisitCompiledHeadDim(
      bucket,
      [&](auto head_dim) { return DispatchPrecision<decltype(head_dim)::value>(p, stream); },
      absl::UnimplementedError(
          absl::StrCat("head_dim ", p.head_dim, " has no CUDA float32 kernel in this build ",
                       "(head-dim buckets compiled: ", CompiledHeadDimBuckets(), ")")));
}

}  // namespace attention::cuda
