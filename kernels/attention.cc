#include "kernels/attention.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

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
                          int64_t head_stride, int heads, bool packed, int batch) {
  const std::string name(tensor);
  if (row_stride <= 0) return Invalid(name + "_row_stride", "must be positive", row_stride);
  if (head_stride < 0 || (heads > 1 && head_stride == 0)) {
    return Invalid(name + "_head_stride", "must be positive when there are several heads",
                   head_stride);
  }
  if (packed) {
    if (batch_stride != 0) {
      return Invalid(name + "_batch_stride", "must be 0 for a packed (cu_seqlens) batch",
                     batch_stride);
    }
  } else if (batch_stride < 0 || (batch > 1 && batch_stride == 0)) {
    return Invalid(name + "_batch_stride",
                   "must be positive for a dense batch of several sequences", batch_stride);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckConfig(const KernelConfig& c) {
  if (c.kind != WorkKind::kForward && c.kind != WorkKind::kPagedDecode &&
      c.kind != WorkKind::kBackward) {
    return Invalid("kind", "must be kForward, kPagedDecode or kBackward", static_cast<int>(c.kind));
  }
  if (c.dtype != DType::kFloat32 && c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16 &&
      c.dtype != DType::kFloat8E4M3) {
    return Invalid("dtype", "must be kFloat32, kFloat16, kBFloat16 or kFloat8E4M3",
                   static_cast<int>(c.dtype));
  }
  // FP8 inputs are a forward of its own (issue 23): no backward, no paged K/V (sessions).
  if (c.dtype == DType::kFloat8E4M3 && c.kind != WorkKind::kForward) {
    return Invalid("kind", "must be kForward with dtype kFloat8E4M3 (FP8 is forward only)",
                   static_cast<int>(c.kind));
  }
  if (c.precision != Precision::kFull && c.precision != Precision::kTF32 &&
      c.precision != Precision::kBF16) {
    return Invalid("precision", "must be kFull, kTF32 or kBF16", static_cast<int>(c.precision));
  }
  for (absl::Status s : {CheckPositive("q_heads", c.q_heads), CheckPositive("kv_heads", c.kv_heads),
                         CheckPositive("head_dim", c.head_dim)}) {
    if (!s.ok()) return s;
  }
  if (c.head_dim > kMaxHeadDim) {
    return Invalid("head_dim", absl::StrCat("must be <= ", kMaxHeadDim), c.head_dim);
  }
  if (c.q_heads % c.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.q_heads (", c.q_heads,
                                                   ") must be a multiple of kv_heads (", c.kv_heads,
                                                   ")"));
  }
  if (c.window_left < -1) return Invalid("window_left", "must be >= -1", c.window_left);
  if (c.window_right < -1) return Invalid("window_right", "must be >= -1", c.window_right);
  if (!std::isfinite(c.softmax_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.softmax_scale must be finite, got ", c.softmax_scale));
  }
  if (!(c.softcap >= 0.f) || !std::isfinite(c.softcap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.softcap must be finite and >= 0, got ", c.softcap));
  }
  if (c.mask_kind != MaskKind::kNone && c.mask_kind != MaskKind::kBool &&
      c.mask_kind != MaskKind::kAdditive) {
    return Invalid("mask_kind", "must be kNone, kBool or kAdditive", static_cast<int>(c.mask_kind));
  }
  return absl::OkStatus();
}

absl::Status CheckParams(const AttentionParams& p) {
  if (absl::Status s = CheckConfig(p); !s.ok()) return s;
  for (absl::Status s : {CheckPositive("batch", p.batch), CheckPositive("seqlen_q", p.seqlen_q)}) {
    if (!s.ok()) return s;
  }
  // A paged context may be empty (a session before its first append); a dense one may not.
  if (p.is_paged() ? p.seqlen_k < 0 : p.seqlen_k <= 0) {
    return Invalid("seqlen_k", p.is_paged() ? "must be >= 0" : "must be positive", p.seqlen_k);
  }
  if (p.is_paged()) {
    if (absl::Status s = CheckPositive("page_size", p.page_size); !s.ok()) return s;
    if (p.seqlens_k == nullptr) {
      return absl::InvalidArgumentError(
          "AttentionParams.seqlens_k must be set with page_table (each sequence's context length)");
    }
    if (p.cu_seqlens_k != nullptr) {
      return absl::InvalidArgumentError(
          "AttentionParams.cu_seqlens_k must be null with page_table (seqlens_k gives the "
          "lengths)");
    }
    if (p.page_table_stride < 0 || (p.batch > 1 && p.page_table_stride == 0)) {
      return Invalid("page_table_stride", "must be positive for several sequences",
                     p.page_table_stride);
    }
  } else if (p.key_range != nullptr || p.seqlens_k != nullptr) {
    return absl::InvalidArgumentError(
        "AttentionParams.key_range and seqlens_k are for a paged context (page_table set)");
  }
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.o == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionParams.",
                                                   p.q == nullptr   ? "q"
                                                   : p.k == nullptr ? "k"
                                                   : p.v == nullptr ? "v"
                                                                    : "o",
                                                   " must not be null"));
  }
  if (!p.is_paged() && (p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr)) {
    return absl::InvalidArgumentError(
        "AttentionParams.cu_seqlens_q and cu_seqlens_k must be both set or both null");
  }
  if (p.is_varlen()) {
    if (absl::Status s = CheckPositive("total_q", p.total_q); !s.ok()) return s;
    if (!p.is_paged()) {
      if (absl::Status s = CheckPositive("total_k", p.total_k); !s.ok()) return s;
    }
  }
  // A paged context's k and v "batch" stride is the stride between pages (positive).
  const bool pages = p.is_paged();
  for (absl::Status s : {CheckStrides("q", p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                                      p.q_heads, p.is_varlen(), p.batch),
                         CheckStrides("k", p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                                      p.kv_heads, p.is_varlen() && !pages, pages ? 2 : p.batch),
                         CheckStrides("v", p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                                      p.kv_heads, p.is_varlen() && !pages, pages ? 2 : p.batch),
                         CheckStrides("o", p.o_batch_stride, p.o_row_stride, p.o_head_stride,
                                      p.q_heads, p.is_varlen(), p.batch)}) {
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
  if (p.alibi != (p.alibi_slopes != nullptr)) {
    return absl::InvalidArgumentError(
        "AttentionParams.alibi_slopes must be set exactly when alibi is true");
  }
  if (p.alibi_slopes != nullptr && p.alibi_batch_stride < 0) {
    return Invalid("alibi_batch_stride", "must be >= 0", p.alibi_batch_stride);
  }
  if (p.sinks != (p.sink_logits != nullptr)) {
    return absl::InvalidArgumentError(
        "AttentionParams.sink_logits must be set exactly when sinks is true");
  }
  if (p.sink_logits != nullptr && p.sink_batch_stride < 0) {
    return Invalid("sink_batch_stride", "must be >= 0", p.sink_batch_stride);
  }
  if (p.dtype != DType::kFloat8E4M3 &&
      (p.q_descale != nullptr || p.k_descale != nullptr || p.v_descale != nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionParams.",
                     p.q_descale != nullptr   ? "q"
                     : p.k_descale != nullptr ? "k"
                                              : "v",
                     "_descale must be null unless dtype is kFloat8E4M3"));
  }
  const std::pair<const char*, int64_t> descale_strides[] = {
      {"q_descale_batch_stride", p.q_descale_batch_stride},
      {"q_descale_head_stride", p.q_descale_head_stride},
      {"k_descale_batch_stride", p.k_descale_batch_stride},
      {"k_descale_head_stride", p.k_descale_head_stride},
      {"v_descale_batch_stride", p.v_descale_batch_stride},
      {"v_descale_head_stride", p.v_descale_head_stride}};
  for (const auto& [field, stride] : descale_strides) {
    if (stride < 0) return Invalid(field, "must be >= 0", stride);
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
  }
  return absl::OkStatus();
}

absl::Status CheckBackwardParams(const AttentionBackwardParams& p) {
  if (absl::Status s = CheckParams(p); !s.ok()) return s;
  if (p.kind != WorkKind::kBackward) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionBackwardParams.kind must be kBackward, got ", static_cast<int>(p.kind)));
  }
  if (p.lse == nullptr) {
    return absl::InvalidArgumentError(
        "AttentionBackwardParams.lse must not be null (the forward's log-sum-exp is an input)");
  }
  if (p.do_ == nullptr || p.dq == nullptr || p.dk == nullptr || p.dv == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("AttentionBackwardParams.",
                                                   p.do_ == nullptr  ? "do_"
                                                   : p.dq == nullptr ? "dq"
                                                   : p.dk == nullptr ? "dk"
                                                                     : "dv",
                                                   " must not be null"));
  }
  if (p.is_paged()) {
    return absl::InvalidArgumentError(
        "AttentionBackwardParams.page_table must be null (no backward for paged K/V)");
  }
  return absl::OkStatus();
}

}  // namespace attention
