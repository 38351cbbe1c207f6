// The layout rules of paged K/V (AttentionParams::page_table) that every paged forward kernel
// relies on, checked in one place: the forward dispatch (CheckPagedForward) and the
// warp-specialized kernel's host API (CheckFlashFwdSm90Ws) both call it. Header-only, so that a
// kernel's host API does not link the dispatch (and every kernel it reaches) to use it.
#ifndef ATTENTION_KERNELS_CUDA_PAGED_LAYOUT_CHECK_H_
#define ATTENTION_KERNELS_CUDA_PAGED_LAYOUT_CHECK_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {

// For `p` with a page_table: OK, or INVALID_ARGUMENT naming the field and the rule: page_size a
// power of two in [kMinPageSize, kMaxPageSize] (a KV tile then spans whole pages or lies inside
// one), seqlens_k set (the contexts), cu_seqlens_k null (contexts are addressed through pages),
// page_table_stride positive for more than one sequence, positive page strides
// (k_batch_stride, v_batch_stride). Reads no device memory.
inline absl::Status CheckPagedLayout(const AttentionParams& p) {
  const int ps = p.page_size;
  if (ps < kMinPageSize || ps > kMaxPageSize || (ps & (ps - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionParams.page_size ", ps, " must be a power of two in [", kMinPageSize, ", ",
        kMaxPageSize, "] (a KV tile then spans whole pages or lies inside one)"));
  }
  if (p.seqlens_k == nullptr) {
    return absl::InvalidArgumentError(
        "AttentionParams.seqlens_k must be set with a page_table (each context's length)");
  }
  if (p.cu_seqlens_k != nullptr) {
    return absl::InvalidArgumentError(
        "AttentionParams.cu_seqlens_k must be null with a page_table (contexts are addressed "
        "through pages, their lengths are seqlens_k)");
  }
  if (p.batch > 1 && p.page_table_stride <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.page_table_stride ",
                                                   p.page_table_stride,
                                                   " must be positive for more than one sequence"));
  }
  if (p.k_batch_stride <= 0 || p.v_batch_stride <= 0) {
    return absl::InvalidArgumentError(
        "AttentionParams.k_batch_stride and v_batch_stride (the page strides of paged K/V) must "
        "be positive");
  }
  return absl::OkStatus();
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_PAGED_LAYOUT_CHECK_H_
