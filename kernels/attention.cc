#include "kernels/attention.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attention {
namespace {

absl::Status Invalid(const std::string& field, const std::string& rule, int64_t value) {
  return absl::InvalidArgumentError(
      absl::StrCat("AttentionParams.", field, " ", rule, ", got ", value));
}

absl::Status CheckPositive(const char* field, int64_t value) {
  return value > 0 ? absl::OkStatus() : Invalid(field, "must be positive", value);
}

// Strides of one tensor: every stride >= 0; the row stride > 0; the head stride > 0 when there
// are several heads; the batch stride > 0 for a dense batch of several sequences, 0 when packed.
absl::Status CheckStrides(const char* tensor, int64_t batch_stride, int64_t row_stride,
                          int64_t head_stride, int heads, const AttentionParams& p) {
  const std::string name(tensor);
  if (row_stride <= 0) return Invalid(name + "_row_stride", "must be positive", row_stride);
  if (head_stride < 0 || (heads > 1 && head_stride == 0)) {
    return Invalid(name + "_head_stride", "must be positive when there are several heads",
                   head_stride);
  }
  if (p.is_varlen()) {
    if (batch_stride != 0) {
      return Invalid(name + "_batch_stride", "must be 0 for a packed (cu_seqlens) batch",
                     batch_stride);
    }
  } else if (batch_stride < 0 || (p.batch > 1 && batch_stride == 0)) {
    return Invalid(name + "_batch_stride",
                   "must be positive for a dense batch of several sequences", batch_stride);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckParams(const AttentionParams& p) {
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    return Invalid("dtype", "must be kFloat32, kFloat16 or kBFloat16", static_cast<int>(p.dtype));
  }
  for (absl::Status s :
       {CheckPositive("batch", p.batch), CheckPositive("seqlen_q", p.seqlen_q),
        CheckPositive("seqlen_k", p.seqlen_k), CheckPositive("q_heads", p.q_heads),
        CheckPositive("kv_heads", p.kv_heads), CheckPositive("head_dim", p.head_dim)}) {
    if (!s.ok()) return s;
  }
  if (p.q_heads % p.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.q_heads (", p.q_heads,
                                                   ") must be a multiple of kv_heads (", p.kv_heads,
                                                   ")"));
  }
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.o == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.",
                                                   p.q == nullptr   ? "q"
                                                   : p.k == nullptr ? "k"
                                                   : p.v == nullptr ? "v"
                                                                    : "o",
                                                   " must not be null"));
  }
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr)) {
    return absl::InvalidArgumentError(
        "AttentionParams.cu_seqlens_q and cu_seqlens_k must be both set or both null");
  }
  if (p.is_varlen()) {
    if (absl::Status s = CheckPositive("total_q", p.total_q); !s.ok()) return s;
    if (absl::Status s = CheckPositive("total_k", p.total_k); !s.ok()) return s;
  }
  for (absl::Status s :
       {CheckStrides("q", p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.q_heads, p),
        CheckStrides("k", p.k_batch_stride, p.k_row_stride, p.k_head_stride, p.kv_heads, p),
        CheckStrides("v", p.v_batch_stride, p.v_row_stride, p.v_head_stride, p.kv_heads, p),
        CheckStrides("o", p.o_batch_stride, p.o_row_stride, p.o_head_stride, p.q_heads, p)}) {
    if (!s.ok()) return s;
  }
  if (p.lse != nullptr) {
    if (p.lse_head_stride < 0 || (p.q_heads > 1 && p.lse_head_stride == 0)) {
      return Invalid("lse_head_stride", "must be positive when there are several heads",
                     p.lse_head_stride);
    }
    if (p.is_varlen() ? p.lse_batch_stride != 0
                      : (p.lse_batch_stride < 0 || (p.batch > 1 && p.lse_batch_stride == 0))) {
      return Invalid("lse_batch_stride",
                     "must be positive for a dense batch of several sequences and 0 when packed",
                     p.lse_batch_stride);
    }
  }
  if (p.window_left < -1) return Invalid("window_left", "must be >= -1", p.window_left);
  if (p.window_right < -1) return Invalid("window_right", "must be >= -1", p.window_right);
  if (!std::isfinite(p.softmax_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.softmax_scale must be finite, got ", p.softmax_scale));
  }
  if (!(p.softcap >= 0.f) || !std::isfinite(p.softcap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.softcap must be finite and >= 0, got ", p.softcap));
  }
  if (p.alibi_slopes != nullptr && p.alibi_batch_stride < 0) {
    return Invalid("alibi_batch_stride", "must be >= 0", p.alibi_batch_stride);
  }
  switch (p.mask_kind) {
    case MaskKind::kNone:
      if (p.mask != nullptr) {
        return absl::InvalidArgumentError(
            "AttentionParams.mask must be null when mask_kind is kNone");
      }
      break;
    case MaskKind::kBool:
    case MaskKind::kAdditive:
      if (p.mask == nullptr) {
        return absl::InvalidArgumentError(
            "AttentionParams.mask must not be null when mask_kind is kBool or kAdditive");
      }
      for (absl::Status s :
           {p.mask_batch_stride < 0
                ? Invalid("mask_batch_stride", "must be >= 0", p.mask_batch_stride)
                : absl::OkStatus(),
            p.mask_head_stride < 0 ? Invalid("mask_head_stride", "must be >= 0", p.mask_head_stride)
                                   : absl::OkStatus(),
            p.mask_row_stride < 0 ? Invalid("mask_row_stride", "must be >= 0", p.mask_row_stride)
                                  : absl::OkStatus(),
            p.mask_col_stride < 0 ? Invalid("mask_col_stride", "must be >= 0", p.mask_col_stride)
                                  : absl::OkStatus()}) {
        if (!s.ok()) return s;
      }
      break;
    default:
      return Invalid("mask_kind", "must be kNone, kBool or kAdditive",
                     static_cast<int>(p.mask_kind));
  }
  return absl::OkStatus();
}

}  // namespace attention
