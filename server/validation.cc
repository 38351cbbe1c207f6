#include "server/validation.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "kernels/attention_params.h"
#include "kernels/dtype.h"
#include "proto/contract_types.h"

namespace attention::server {
namespace {

using v1::Tensor;

// Overflow-checked a * b for non-negative operands.
bool CheckedMul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

std::string DTypeName(int dtype) {
  return v1::DType_IsValid(dtype) ? v1::DType_Name(static_cast<v1::DType>(dtype))
                                  : absl::StrCat("unknown dtype ", dtype);
}

std::string ShapeString(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

absl::Status OverLimit(absl::string_view field, absl::string_view rule) {
  return absl::ResourceExhaustedError(absl::StrCat(field, ": ", rule));
}

// Sum over p in [a, b] of max(0, c + slope * p), slope in {-1, 0, 1}: the positive part of an
// arithmetic series.
double SumPositive(int64_t a, int64_t b, int64_t c, int slope) {
  if (slope > 0) a = std::max(a, 1 - c);  // c + p > 0
  if (slope < 0) b = std::min(b, c - 1);  // c - p > 0
  if (a > b) return 0;
  if (slope == 0) return c > 0 ? static_cast<double>(c) * static_cast<double>(b - a + 1) : 0;
  const double first = static_cast<double>(c + slope * a);
  const double last = static_cast<double>(c + slope * b);
  return (first + last) * static_cast<double>(b - a + 1) / 2;
}

// Checks that `t`'s data, `data_size` bytes (t.data().size() unless the bytes are kept outside
// `t`), holds exactly `elements` x `element_size` bytes.
absl::Status CheckDataLength(absl::string_view name, const Tensor& t, int64_t elements,
                             int64_t element_size, uint64_t data_size) {
  int64_t bytes = 0;
  if (elements < 0 || !CheckedMul(elements, element_size, &bytes)) {
    return Invalid(absl::StrCat(name, ".shape"),
                   absl::StrCat("product(shape) of ", ShapeString(t), " overflows int64"));
  }
  if (static_cast<uint64_t>(bytes) != data_size) {
    return Invalid(absl::StrCat(name, ".data"),
                   absl::StrCat("length must be product(shape) x ", element_size, " = ", elements,
                                " x ", element_size, " bytes (", DTypeName(t.dtype()), " ",
                                ShapeString(t), "), got ", data_size));
  }
  return absl::OkStatus();
}

// Where one input tensor's bytes are: in the tensor itself, or in the received pieces.
struct InputBytes {
  const char* data = nullptr;            // one span, or null
  const TensorPieces* pieces = nullptr;  // the spans, when there are several
  uint64_t size = 0;
};

InputBytes LocateInput(const Tensor& t, const TensorPieces* received) {
  InputBytes in;
  if (received == nullptr) {
    in.data = t.data().data();
    in.size = t.data().size();
    return in;
  }
  for (const absl::string_view piece : *received) in.size += piece.size();
  if (received->size() == 1) {
    in.data = received->front().data();
  } else if (received->empty()) {
    in.data = t.data().data();  // no bytes: any valid address
  } else {
    in.pieces = received;
  }
  return in;
}

// Product of the dims of `t` (every one already checked >= 1), -1 on overflow.
int64_t Elements(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d : t.shape()) {
    if (!CheckedMul(n, d, &n)) return -1;
  }
  return n;
}

absl::Status CheckDimsPositive(absl::string_view name, const Tensor& t, const char* const* names) {
  for (int i = 0; i < t.shape_size(); ++i) {
    if (t.shape(i) < 1) {
      return Invalid(absl::StrCat(name, ".shape[", i, "] (", names[i], ")"),
                     absl::StrCat("must be >= 1, got ", t.shape(i)));
    }
  }
  return absl::OkStatus();
}

// Validates cu_seqlens_{q,k} against the first dimension `total` of the packed tensor; returns
// the longest sequence in *max_len.
absl::Status CheckCuSeqlens(absl::string_view name,
                            const google::protobuf::RepeatedField<int32_t>& cu, int64_t total,
                            absl::string_view total_name, int* max_len) {
  if (cu[0] != 0) return Invalid(absl::StrCat(name, "[0]"), absl::StrCat("must be 0, got ", cu[0]));
  int longest = 0;
  for (int i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      return Invalid(
          absl::StrCat(name, "[", i, "]"),
          absl::StrCat("offsets must be non-decreasing, got ", cu[i], " after ", cu[i - 1]));
    }
    if (cu[i] - cu[i - 1] > longest) longest = cu[i] - cu[i - 1];
  }
  const int last = cu.size() - 1;
  if (cu[last] != total) {
    return Invalid(
        absl::StrCat(name, "[", last, "]"),
        absl::StrCat("last offset must equal ", total_name, " ", total, ", got ", cu[last]));
  }
  *max_len = longest;
  return absl::OkStatus();
}

// Ranks of q, k and v, every dimension >= 1, v's shape equal to k's. Sets s.packed.
absl::Status CheckRanks(const v1::AttentionRequest& r, RequestSpec& s) {
  const Tensor& q = r.q();
  const Tensor& k = r.k();
  const Tensor& v = r.v();
  static const char* const kDenseQ[] = {"batch", "seqlen_q", "q_heads", "head_dim"};
  static const char* const kDenseK[] = {"batch", "seqlen_k", "kv_heads", "head_dim"};
  static const char* const kPackedQ[] = {"total_q", "q_heads", "head_dim"};
  static const char* const kPackedK[] = {"total_k", "kv_heads", "head_dim"};

  s.packed = r.cu_seqlens_q_size() > 0;
  const int rank = s.packed ? 3 : 4;
  if (s.packed && q.shape_size() != 3) {
    return Invalid("q.shape", absl::StrCat("rank must be 3 (packed [total_q, q_heads, head_dim], "
                                           "since cu_seqlens_q is set), got ",
                                           q.shape_size()));
  }
  if (!s.packed && q.shape_size() != 4) {
    return Invalid("q.shape",
                   absl::StrCat("rank must be 4 (dense [batch, seqlen_q, q_heads, head_dim]) or "
                                "3 (packed with cu_seqlens_q), got ",
                                q.shape_size()));
  }
  if (k.shape_size() != rank) {
    return Invalid("k.shape", s.packed ? absl::StrCat("rank must be 3 (packed [total_k, kv_heads, "
                                                      "head_dim]) like q, got ",
                                                      k.shape_size())
                                       : absl::StrCat("rank must be 4 (dense [batch, seqlen_k, "
                                                      "kv_heads, head_dim]) like q, got ",
                                                      k.shape_size()));
  }
  if (auto st = CheckDimsPositive("q", q, s.packed ? kPackedQ : kDenseQ); !st.ok()) return st;
  if (auto st = CheckDimsPositive("k", k, s.packed ? kPackedK : kDenseK); !st.ok()) return st;
  bool same_vk = v.shape_size() == k.shape_size();
  for (int i = 0; same_vk && i < k.shape_size(); ++i) same_vk = v.shape(i) == k.shape(i);
  if (!same_vk) {
    return Invalid("v.shape",
                   absl::StrCat("must equal k.shape ", ShapeString(k), ", got ", ShapeString(v)));
  }
  return absl::OkStatus();
}

// head_dim (q's and k's equal, at most kMaxHeadDim), q_heads (within --max_heads) a multiple of
// kv_heads, dense q and k of one batch. Sets the configuration's heads and head_dim.
absl::Status CheckHeads(const v1::AttentionRequest& r, const ValidationLimits& limits,
                        RequestSpec& s) {
  const Tensor& q = r.q();
  const Tensor& k = r.k();
  const int rank = s.packed ? 3 : 4;
  const int64_t head_dim = q.shape(rank - 1);
  const int64_t q_heads = q.shape(rank - 2);
  const int64_t kv_heads = k.shape(rank - 2);
  if (head_dim > kMaxHeadDim) {
    return Invalid(absl::StrCat("q.shape[", rank - 1, "] (head_dim)"),
                   absl::StrCat("must be <= ", kMaxHeadDim,
                                " (the largest head_dim the kernels support), got ", head_dim));
  }
  if (k.shape(rank - 1) != head_dim) {
    return Invalid(absl::StrCat("k.shape[", rank - 1, "] (head_dim)"),
                   absl::StrCat("must equal q's head_dim ", head_dim, ", got ", k.shape(rank - 1)));
  }
  if (!s.packed && k.shape(0) != q.shape(0)) {
    return Invalid("k.shape[0] (batch)",
                   absl::StrCat("must equal q.shape[0] ", q.shape(0), ", got ", k.shape(0)));
  }
  if (q_heads > limits.max_heads) {
    return OverLimit(absl::StrCat("q.shape[", rank - 2, "] (q_heads)"),
                     absl::StrCat(q_heads, " exceeds this server's limit of ", limits.max_heads,
                                  " heads (--max_heads)"));
  }
  if (q_heads % kv_heads != 0) {
    return Invalid(
        absl::StrCat("k.shape[", rank - 2, "] (kv_heads)"),
        absl::StrCat("q_heads (", q_heads, ") must be a multiple of kv_heads (", kv_heads, ")"));
  }
  s.q_heads = static_cast<int>(q_heads);
  s.kv_heads = static_cast<int>(kv_heads);
  s.head_dim = static_cast<int>(head_dim);
  return absl::OkStatus();
}

// Rows of q and k (tokens), each bounded by --max_request_tokens (which is below 2^31), and a
// dense batch bounded by --max_request_sequences. Sets total_q and total_k.
absl::Status CountTokens(const v1::AttentionRequest& r, const ValidationLimits& limits,
                         RequestSpec& s) {
  const Tensor& q = r.q();
  const Tensor& k = r.k();
  int64_t total_q = 0, total_k = 0;
  if (s.packed) {
    total_q = q.shape(0);
    total_k = k.shape(0);
  } else {
    if (q.shape(0) > limits.max_request_sequences) {
      return OverLimit("q.shape[0] (batch)",
                       absl::StrCat(q.shape(0), " sequences exceed this server's limit of ",
                                    limits.max_request_sequences, " (--max_request_sequences)"));
    }
    if (!CheckedMul(q.shape(0), q.shape(1), &total_q)) total_q = INT64_MAX;
    if (!CheckedMul(k.shape(0), k.shape(1), &total_k)) total_k = INT64_MAX;
  }
  if (total_q > limits.max_request_tokens) {
    return OverLimit("q.shape", absl::StrCat(ShapeString(q),
                                             " holds more query tokens than this "
                                             "server's limit of ",
                                             limits.max_request_tokens, " (--max_request_tokens)"));
  }
  if (total_k > limits.max_request_tokens) {
    return OverLimit("k.shape", absl::StrCat(ShapeString(k),
                                             " holds more key tokens than this "
                                             "server's limit of ",
                                             limits.max_request_tokens, " (--max_request_tokens)"));
  }
  s.total_q = total_q;
  s.total_k = total_k;
  return absl::OkStatus();
}

// The byte lengths of q, k and v against their shapes, and where their bytes are (the request's
// own data, one received piece, or several). Products cannot overflow any more (tokens < 2^31,
// heads <= max_heads, head_dim <= 256), but stay checked so that a generous limit cannot make
// them.
absl::Status LocateInputs(const v1::AttentionRequest& r, const TensorData* received,
                          RequestSpec& s) {
  const Tensor& q = r.q();
  const Tensor& k = r.k();
  const Tensor& v = r.v();
  const int64_t size = DTypeSize(s.dtype);
  const int64_t q_elements = Elements(q);
  const int64_t k_elements = Elements(k);
  const InputBytes q_in = LocateInput(q, received != nullptr ? &received->q : nullptr);
  const InputBytes k_in = LocateInput(k, received != nullptr ? &received->k : nullptr);
  const InputBytes v_in = LocateInput(v, received != nullptr ? &received->v : nullptr);
  if (auto st = CheckDataLength("q", q, q_elements, size, q_in.size); !st.ok()) return st;
  if (auto st = CheckDataLength("k", k, k_elements, size, k_in.size); !st.ok()) return st;
  if (auto st = CheckDataLength("v", v, k_elements, size, v_in.size); !st.ok()) return st;
  s.q_bytes = q_elements * size;
  s.kv_bytes = k_elements * size;
  s.q_data = q_in.data;
  s.k_data = k_in.data;
  s.v_data = v_in.data;
  s.q_pieces = q_in.pieces;
  s.k_pieces = k_in.pieces;
  s.v_pieces = v_in.pieces;
  return absl::OkStatus();
}

// The sequences: a dense batch's lengths, or a packed batch's cu_seqlens (as many offsets for q
// as for k, within --max_request_sequences, non-decreasing from 0 to the totals).
absl::Status CheckSequences(const v1::AttentionRequest& r, const ValidationLimits& limits,
                            RequestSpec& s) {
  if (!s.packed) {
    s.batch = static_cast<int>(r.q().shape(0));
    s.seqlen_q = static_cast<int>(r.q().shape(1));
    s.seqlen_k = static_cast<int>(r.k().shape(1));
    return absl::OkStatus();
  }
  const auto& cu_q = r.cu_seqlens_q();
  const auto& cu_k = r.cu_seqlens_k();
  if (cu_q.size() < 2) {
    return Invalid("cu_seqlens_q",
                   absl::StrCat("must hold batch + 1 >= 2 offsets, got ", cu_q.size()));
  }
  if (cu_k.size() != cu_q.size()) {
    return Invalid("cu_seqlens_k", absl::StrCat("must hold as many offsets as cu_seqlens_q (",
                                                cu_q.size(), "), got ", cu_k.size()));
  }
  if (cu_q.size() - 1 > limits.max_request_sequences) {
    return OverLimit("cu_seqlens_q",
                     absl::StrCat(cu_q.size() - 1, " sequences exceed this server's limit of ",
                                  limits.max_request_sequences, " (--max_request_sequences)"));
  }
  if (auto st =
          CheckCuSeqlens("cu_seqlens_q", cu_q, s.total_q, "q.shape[0] (total_q)", &s.seqlen_q);
      !st.ok()) {
    return st;
  }
  if (auto st =
          CheckCuSeqlens("cu_seqlens_k", cu_k, s.total_k, "k.shape[0] (total_k)", &s.seqlen_k);
      !st.ok()) {
    return st;
  }
  s.batch = cu_q.size() - 1;
  s.cu_seqlens_q = cu_q.data();
  s.cu_seqlens_k = cu_k.data();
  return absl::OkStatus();
}

// q, k and v: the named steps above, in order (each reads what the earlier ones set).
absl::Status CheckShapes(const v1::AttentionRequest& r, const ValidationLimits& limits,
                         const TensorData* received, RequestSpec& s) {
  if (auto st = CheckRanks(r, s); !st.ok()) return st;
  if (auto st = CheckHeads(r, limits, s); !st.ok()) return st;
  if (auto st = CountTokens(r, limits, s); !st.ok()) return st;
  if (auto st = LocateInputs(r, received, s); !st.ok()) return st;
  return CheckSequences(r, limits, s);
}

absl::Status CheckOptions(const v1::AttentionRequest& r, RequestSpec& s) {
  if (r.has_softmax_scale()) {
    if (!(std::fabs(r.softmax_scale()) <= kMaxScoreMultiplier)) {
      return Invalid("softmax_scale",
                     absl::StrCat("must be finite with |softmax_scale| <= 65536 (2^16), got ",
                                  r.softmax_scale()));
    }
    s.softmax_scale = r.softmax_scale();
  } else {
    s.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  }
  if (r.softcap() != 0 && !(r.softcap() >= kMinSoftcap && r.softcap() <= kMaxScoreMultiplier)) {
    return Invalid("softcap", absl::StrCat("must be 0 (off) or within [2^-16, 2^16] = [",
                                           kMinSoftcap, ", 65536], got ", r.softcap()));
  }
  s.softcap = r.softcap();

  s.causal = r.causal();
  if (r.has_window()) {
    if (r.window().left() < -1) {
      return Invalid("window.left",
                     absl::StrCat("must be >= -1 (-1 = unbounded), got ", r.window().left()));
    }
    if (r.window().right() < -1) {
      return Invalid("window.right",
                     absl::StrCat("must be >= -1 (-1 = unbounded), got ", r.window().right()));
    }
    s.window_left = r.window().left();
    s.window_right = r.window().right();
  }
  Normalize(s);
  if (!v1::Precision_IsValid(r.precision())) {
    return Invalid("precision", absl::StrCat("must be PRECISION_FULL, PRECISION_TF32 or "
                                             "PRECISION_BF16, got ",
                                             r.precision()));
  }
  // 16-bit and FP8 inputs are computed from their exact values whatever the request asked: one
  // bucket.
  s.precision = s.dtype == DType::kFloat32 ? KernelPrecision(r.precision()) : Precision::kFull;
  // A backward request reads an lse (CheckBackwardInputs) and returns none.
  const bool backward = s.kind == WorkKind::kBackward;
  s.return_lse = !backward && r.return_lse();
  s.lse_bytes = s.return_lse || backward ? int64_t{s.q_heads} * s.total_q * 4 : 0;
  return absl::OkStatus();
}

// The configured limits that need the whole configuration: the work (--max_request_gflop) and the
// answer's size (--max_message_bytes). Sets s.work.
absl::Status CheckWorkAndAnswer(const ValidationLimits& limits, RequestSpec& s) {
  s.work = RequestWork(s);
  if (s.work > limits.max_request_work) {
    const double per_score = (4.0 * s.head_dim + kSoftmaxFlopsPerScore) *
                             (s.kind == WorkKind::kBackward ? kBackwardWorkFactor : 1.0);
    return OverLimit(
        "q.shape, k.shape",
        absl::StrCat("the request's work, about ", absl::SixDigits(s.work * 1e-9), " GFLOP (",
                     absl::SixDigits(s.work / per_score / s.q_heads), " scores per head x ",
                     s.q_heads, " heads x (4 x head_dim ", s.head_dim, " + ", kSoftmaxFlopsPerScore,
                     ") flops", s.kind == WorkKind::kBackward ? " x 2.5 for the backward pass" : "",
                     "), exceeds this server's limit of ",
                     absl::SixDigits(limits.max_request_work * 1e-9),
                     " GFLOP per request (--max_request_gflop)"));
  }
  const int64_t answer = s.answer_bytes() + kAnswerOverheadBytes;
  if (answer > limits.max_answer_bytes) {
    const std::string tensors =
        s.kind == WorkKind::kBackward
            ? absl::StrCat("dq ", s.q_bytes, ", dk and dv ", s.kv_bytes, " each")
            : absl::StrCat("o ", s.o_bytes(), ", lse ", s.return_lse ? s.lse_bytes : 0);
    return OverLimit("q.shape",
                     absl::StrCat("the answer would take ", answer, " bytes (", tensors, ", ",
                                  kAnswerOverheadBytes,
                                  " for the rest), more than this server's message "
                                  "limit of ",
                                  limits.max_answer_bytes, " bytes (--max_message_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status CheckAlibi(const v1::AttentionRequest& r, RequestSpec& s) {
  if (!r.has_alibi_slopes()) return absl::OkStatus();
  const Tensor& a = r.alibi_slopes();
  if (a.dtype() != v1::FLOAT32) {
    return Invalid("alibi_slopes.dtype",
                   absl::StrCat("must be FLOAT32, got ", DTypeName(a.dtype())));
  }
  const bool per_head = a.shape_size() == 1 && a.shape(0) == s.q_heads;
  const bool per_sequence = a.shape_size() == 2 && a.shape(0) == s.batch && a.shape(1) == s.q_heads;
  if (!per_head && !per_sequence) {
    return Invalid("alibi_slopes.shape",
                   absl::StrCat("must be [q_heads] = [", s.q_heads, "] or [batch, q_heads] = [",
                                s.batch, ", ", s.q_heads, "], got ", ShapeString(a)));
  }
  const int64_t elements = per_head ? s.q_heads : int64_t{s.batch} * s.q_heads;
  if (auto st = CheckDataLength("alibi_slopes", a, elements, 4, a.data().size()); !st.ok())
    return st;
  const char* data = a.data().data();
  for (int64_t i = 0; i < elements; ++i) {
    float slope;
    std::memcpy(&slope, data + 4 * i, 4);
    if (!(std::fabs(slope) <= kMaxScoreMultiplier)) {
      return Invalid(absl::StrCat("alibi_slopes[", i, "]"),
                     absl::StrCat("must be finite with |slope| <= 65536 (2^16), got ", slope));
    }
  }
  s.alibi = true;
  s.alibi_slopes = reinterpret_cast<const float*>(data);
  s.alibi_batch_stride = per_head ? 0 : s.q_heads;
  return absl::OkStatus();
}

absl::Status CheckSinks(const v1::AttentionRequest& r, RequestSpec& s) {
  if (!r.has_sinks()) return absl::OkStatus();
  const Tensor& t = r.sinks();
  if (t.dtype() != v1::FLOAT32) {
    return Invalid("sinks.dtype", absl::StrCat("must be FLOAT32, got ", DTypeName(t.dtype())));
  }
  if (t.shape_size() != 1 || t.shape(0) != s.q_heads) {
    return Invalid("sinks.shape",
                   absl::StrCat("must be [q_heads] = [", s.q_heads, "], got ", ShapeString(t)));
  }
  if (auto st = CheckDataLength("sinks", t, s.q_heads, 4, t.data().size()); !st.ok()) return st;
  const char* data = t.data().data();
  for (int h = 0; h < s.q_heads; ++h) {
    float sink;
    std::memcpy(&sink, data + 4 * h, 4);
    if (!(std::fabs(sink) <= kMaxLogit)) {
      return Invalid(
          absl::StrCat("sinks[", h, "]"),
          absl::StrCat("must be finite with |sink| <= 2^100 (", kMaxLogit, "), got ", sink));
    }
  }
  s.sinks = true;
  s.sink_logits = reinterpret_cast<const float*>(data);
  return absl::OkStatus();
}

// One of an FP8 request's dequantization factors (AttentionRequest.q_descale, k_descale,
// v_descale): FLOAT32, shape [1] (per tensor) or [heads] (per head: q_heads for q, kv_heads for
// k and v), each factor finite and > 0. Sets *factors and *head_stride (0 per tensor, 1 per head);
// leaves them null and 0 when the request has none (1.0). Only FLOAT8_E4M3 requests take them.
absl::Status CheckDescale(absl::string_view name, bool present, const Tensor& t, int heads,
                          absl::string_view heads_name, const RequestSpec& s, const float** factors,
                          int64_t* head_stride) {
  if (!present) return absl::OkStatus();
  if (s.dtype != DType::kFloat8E4M3) {
    return Invalid(name, absl::StrCat("is for FLOAT8_E4M3 inputs only (q.dtype is ",
                                      DTypeName(ContractDType(s.dtype)), "); leave it unset"));
  }
  if (t.dtype() != v1::FLOAT32) {
    return Invalid(absl::StrCat(name, ".dtype"),
                   absl::StrCat("must be FLOAT32, got ", DTypeName(t.dtype())));
  }
  const bool per_tensor = t.shape_size() == 1 && t.shape(0) == 1;
  const bool per_head = t.shape_size() == 1 && t.shape(0) == heads;
  if (!per_tensor && !per_head) {
    return Invalid(absl::StrCat(name, ".shape"),
                   absl::StrCat("must be [1] (per tensor) or [", heads_name, "] = [", heads,
                                "] (per head), got ", ShapeString(t)));
  }
  const int64_t elements = per_tensor ? 1 : heads;
  if (auto st = CheckDataLength(name, t, elements, 4, t.data().size()); !st.ok()) return st;
  const char* data = t.data().data();
  for (int64_t i = 0; i < elements; ++i) {
    float factor;
    std::memcpy(&factor, data + 4 * i, 4);
    if (!(factor > 0.f && std::isfinite(factor))) {
      return Invalid(absl::StrCat(name, "[", i, "]"),
                     absl::StrCat("a descale factor must be finite and > 0, got ", factor));
    }
  }
  *factors = reinterpret_cast<const float*>(data);
  *head_stride = per_tensor ? 0 : 1;
  return absl::OkStatus();
}

absl::Status CheckDescales(const v1::AttentionRequest& r, RequestSpec& s) {
  if (auto st = CheckDescale("q_descale", r.has_q_descale(), r.q_descale(), s.q_heads, "q_heads", s,
                             &s.q_descale, &s.q_descale_head_stride);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckDescale("k_descale", r.has_k_descale(), r.k_descale(), s.kv_heads, "kv_heads",
                             s, &s.k_descale, &s.k_descale_head_stride);
      !st.ok()) {
    return st;
  }
  return CheckDescale("v_descale", r.has_v_descale(), r.v_descale(), s.kv_heads, "kv_heads", s,
                      &s.v_descale, &s.v_descale_head_stride);
}

// One value of an additive mask: -inf drops the key; anything else must be a logit within
// kMaxLogit (NaN and +inf have no meaning and gave all-NaN rows).
absl::Status CheckMaskValue(int64_t index, float value) {
  if (std::fabs(value) <= kMaxLogit || value == -std::numeric_limits<float>::infinity()) {
    return absl::OkStatus();
  }
  return Invalid(absl::StrCat("mask[", index, "]"),
                 absl::StrCat("an additive mask value must be -inf (drops the key) or finite with "
                              "|value| <= 2^100 (",
                              kMaxLogit, "), got ", value));
}

absl::Status CheckMask(const v1::AttentionRequest& r, RequestSpec& s) {
  if (!r.has_mask()) return absl::OkStatus();
  const Tensor& m = r.mask();
  int64_t element_size = 0;
  switch (m.dtype()) {
    case v1::BOOL:
      element_size = 1;
      break;
    case v1::FLOAT32:
      element_size = 4;
      break;
    case v1::FLOAT16:
    case v1::BFLOAT16:
      element_size = 2;
      break;
    default:
      return Invalid("mask.dtype", absl::StrCat("must be BOOL, FLOAT32, FLOAT16 or BFLOAT16, got ",
                                                DTypeName(m.dtype())));
  }
  const int rank = m.shape_size();
  const int64_t full[4] = {s.batch, s.q_heads, s.seqlen_q, s.seqlen_k};
  static const char* const kFullNames[4] = {"batch", "q_heads", "seqlen_q", "seqlen_k"};
  if (rank < 2 || rank > 4) {
    return Invalid("mask.shape",
                   absl::StrCat("rank must be 2 to 4 (broadcastable to [batch, q_heads, seqlen_q, "
                                "seqlen_k] = [",
                                absl::StrJoin(full, ", "), "]), got ", rank));
  }
  for (int i = 0; i < rank; ++i) {
    const int full_dim = 4 - rank + i;
    const int64_t d = m.shape(i);
    if (d != 1 && d != full[full_dim]) {
      return Invalid(absl::StrCat("mask.shape[", i, "]"),
                     absl::StrCat("must be 1 or ", full[full_dim], " (", kFullNames[full_dim],
                                  ") to broadcast to [", absl::StrJoin(full, ", "), "], got ", d));
    }
  }
  const int64_t elements = Elements(m);
  if (auto st = CheckDataLength("mask", m, elements, element_size, m.data().size()); !st.ok())
    return st;
  // Row-major strides of the mask's own shape (products bounded by `elements`), 0 on broadcast
  // (size-1 or missing) dimensions.
  int64_t strides[4] = {0, 0, 0, 0};
  int64_t stride = 1;
  for (int i = rank - 1; i >= 0; --i) {
    const int64_t d = m.shape(i);
    strides[4 - rank + i] = d == 1 ? 0 : stride;
    stride *= d;
  }
  s.mask_batch_stride = strides[0];
  s.mask_head_stride = strides[1];
  s.mask_row_stride = strides[2];
  s.mask_col_stride = strides[3];
  const char* data = m.data().data();
  if (m.dtype() == v1::BOOL) {
    s.mask_kind = MaskKind::kBool;
    s.mask_raw = data;
    s.mask_bytes = elements;
    return absl::OkStatus();
  }
  s.mask_kind = MaskKind::kAdditive;
  s.mask_bytes = elements * 4;
  if (m.dtype() == v1::FLOAT32) {
    for (int64_t i = 0; i < elements; ++i) {
      float value;
      std::memcpy(&value, data + 4 * i, 4);
      if (absl::Status st = CheckMaskValue(i, value); !st.ok()) return st;
    }
    s.mask_raw = data;
    return absl::OkStatus();
  }
  // Every shape check passed: widen the FLOAT16 / BFLOAT16 additive mask to float32, checking
  // each value on the way (a FLOAT16 value is at most 65504, but may be NaN or +inf).
  s.converted_mask.resize(static_cast<size_t>(elements));
  const bool half = m.dtype() == v1::FLOAT16;
  for (int64_t i = 0; i < elements; ++i) {
    uint16_t bits;
    std::memcpy(&bits, data + 2 * i, 2);
    const float value = half ? HalfToFloat(bits) : BFloat16ToFloat(bits);
    if (absl::Status st = CheckMaskValue(i, value); !st.ok()) {
      s.converted_mask = {};
      return st;
    }
    s.converted_mask[static_cast<size_t>(i)] = value;
  }
  return absl::OkStatus();
}

// A backward request's o or grad_o: q's dtype and shape, its bytes in the request.
absl::Status CheckLikeQ(absl::string_view name, const Tensor& t, const v1::AttentionRequest& r,
                        const RequestSpec& s, const char** data) {
  if (t.dtype() != r.q().dtype()) {
    return Invalid(absl::StrCat(name, ".dtype"),
                   absl::StrCat("must equal q.dtype (", DTypeName(r.q().dtype()), "), got ",
                                DTypeName(t.dtype())));
  }
  if (!std::equal(t.shape().begin(), t.shape().end(), r.q().shape().begin(), r.q().shape().end())) {
    return Invalid(
        absl::StrCat(name, ".shape"),
        absl::StrCat("must equal q.shape ", ShapeString(r.q()), ", got ", ShapeString(t)));
  }
  if (auto st = CheckDataLength(name, t, Elements(t), DTypeSize(s.dtype), t.data().size());
      !st.ok()) {
    return st;
  }
  *data = t.data().data();
  return absl::OkStatus();
}

// A backward request's o, lse and grad_o (CheckOptions sized lse_bytes).
absl::Status CheckBackwardInputs(const v1::AttentionRequest& r, RequestSpec& s) {
  if (!r.has_o()) return Invalid("o", "a backward request must carry the forward's o (q's shape)");
  if (!r.has_lse()) {
    return Invalid("lse", "a backward request must carry the forward's lse (return_lse's answer)");
  }
  if (!r.has_grad_o()) {
    return Invalid("grad_o", "a backward request must carry grad_o, dLoss/do (q's shape)");
  }
  if (auto st = CheckLikeQ("o", r.o(), r, s, &s.o_data); !st.ok()) return st;
  if (auto st = CheckLikeQ("grad_o", r.grad_o(), r, s, &s.grad_o_data); !st.ok()) return st;
  const Tensor& lse = r.lse();
  if (lse.dtype() != v1::FLOAT32) {
    return Invalid("lse.dtype", absl::StrCat("must be FLOAT32, got ", DTypeName(lse.dtype())));
  }
  const bool shape_ok =
      s.packed ? lse.shape_size() == 2 && lse.shape(0) == s.q_heads && lse.shape(1) == s.total_q
               : lse.shape_size() == 3 && lse.shape(0) == s.batch && lse.shape(1) == s.q_heads &&
                     lse.shape(2) == s.seqlen_q;
  if (!shape_ok) {
    return Invalid(
        "lse.shape",
        s.packed ? absl::StrCat("must be [q_heads, total_q] = [", s.q_heads, ", ", s.total_q,
                                "] (packed, as the forward returns it), got ", ShapeString(lse))
                 : absl::StrCat("must be [batch, q_heads, seqlen_q] = [", s.batch, ", ", s.q_heads,
                                ", ", s.seqlen_q, "] (dense, as the forward returns it), got ",
                                ShapeString(lse)));
  }
  const int64_t elements = int64_t{s.q_heads} * s.total_q;
  if (auto st = CheckDataLength("lse", lse, elements, 4, lse.data().size()); !st.ok()) return st;
  const char* data = lse.data().data();
  for (int64_t i = 0; i < elements; ++i) {
    float value;
    std::memcpy(&value, data + 4 * i, 4);
    if (!(value < std::numeric_limits<float>::infinity())) {
      return Invalid(
          absl::StrCat("lse[", i, "]"),
          absl::StrCat("must be finite or -inf (a row with no allowed key), got ", value));
    }
  }
  s.lse_data = reinterpret_cast<const float*>(data);
  return absl::OkStatus();
}

}  // namespace

double AllowedScores(int64_t len_q, int64_t len_k, int64_t window_left, int64_t window_right) {
  if (len_q <= 0 || len_k <= 0) return 0;
  // Row i sits at p = i + len_k - len_q and sees keys [lo(p), hi(p)] with lo(p) = max(0, p - left)
  // and hi(p) = min(len_k - 1, p + right): each is linear in p on either side of one breakpoint
  // (p = left, p = len_k - 1 - right), so the count hi - lo + 1 is linear on at most three pieces
  // of [p_first, p_last], each summed in closed form (clipped at 0).
  const int64_t p_first = len_k - len_q, p_last = len_k - 1;
  const bool left_bounded = window_left >= 0, right_bounded = window_right >= 0;
  int64_t cuts[2];
  int num_cuts = 0;
  if (left_bounded) cuts[num_cuts++] = window_left;                // last p with lo = 0
  if (right_bounded) cuts[num_cuts++] = len_k - 1 - window_right;  // last p with hi = p + right
  if (num_cuts == 2 && cuts[0] > cuts[1]) std::swap(cuts[0], cuts[1]);
  double total = 0;
  int64_t a = p_first;
  for (int piece = 0; piece <= num_cuts && a <= p_last; ++piece) {
    const int64_t b = piece < num_cuts ? std::min(p_last, cuts[piece]) : p_last;
    if (a > b) continue;
    // On [a, b]: lo is 0 or p - left, hi is p + right or len_k - 1 (decided at p = a).
    const bool lo_moves = left_bounded && a > window_left;
    const bool hi_moves = right_bounded && a <= len_k - 1 - window_right;
    const int64_t c = (hi_moves ? window_right : len_k - 1) - (lo_moves ? -window_left : 0) + 1;
    const int slope = (hi_moves ? 1 : 0) - (lo_moves ? 1 : 0);
    total += SumPositive(a, b, c, slope);
    a = b + 1;
  }
  return total;
}

double RequestWork(const RequestSpec& s) {
  const bool windowed = s.window_left >= 0 || s.window_right >= 0;
  auto scores = [&](int64_t len_q, int64_t len_k) {
    double n = AllowedScores(len_q, len_k, s.window_left, s.window_right);
    if (windowed) {
      n = std::min(
          static_cast<double>(len_q) * static_cast<double>(len_k),
          n + static_cast<double>(len_q) * static_cast<double>(std::min(len_k, kTileSlackKeys)));
    }
    return n;
  };
  double total = 0;
  if (s.packed) {
    for (int b = 0; b < s.batch; ++b) total += scores(s.seqlen_q_of(b), s.seqlen_k_of(b));
  } else {
    total = s.batch * scores(s.seqlen_q, s.seqlen_k);
  }
  const double forward = total * s.q_heads * (4.0 * s.head_dim + kSoftmaxFlopsPerScore);
  return s.kind == WorkKind::kBackward ? kBackwardWorkFactor * forward : forward;
}

absl::StatusOr<RequestSpec> ValidateRequest(const v1::AttentionRequest& r,
                                            const ValidationLimits& limits,
                                            const TensorData* data) {
  RequestSpec s;
  if (r.backward()) {
    s.kind = WorkKind::kBackward;
    s.deterministic = r.deterministic();
  }
  const std::optional<DType> dtype = KernelDType(r.q().dtype());
  if (!dtype.has_value()) {
    return Invalid("q.dtype",
                   absl::StrCat("must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT8_E4M3, got ",
                                DTypeName(r.q().dtype())));
  }
  s.dtype = *dtype;
  if (s.dtype == DType::kFloat8E4M3 && s.kind == WorkKind::kBackward) {
    return Invalid("q.dtype",
                   "FLOAT8_E4M3 inputs are forward only: a backward request takes FLOAT32, "
                   "FLOAT16 or BFLOAT16");
  }
  if (r.k().dtype() != r.q().dtype()) {
    return Invalid("k.dtype", absl::StrCat("must equal q.dtype (", DTypeName(r.q().dtype()),
                                           "), got ", DTypeName(r.k().dtype())));
  }
  if (r.v().dtype() != r.q().dtype()) {
    return Invalid("v.dtype", absl::StrCat("must equal q.dtype (", DTypeName(r.q().dtype()),
                                           "), got ", DTypeName(r.v().dtype())));
  }
  if (r.cu_seqlens_q_size() > 0 && r.cu_seqlens_k_size() == 0) {
    return Invalid("cu_seqlens_k", "must be given together with cu_seqlens_q (both or neither)");
  }
  if (r.cu_seqlens_k_size() > 0 && r.cu_seqlens_q_size() == 0) {
    return Invalid("cu_seqlens_q", "must be given together with cu_seqlens_k (both or neither)");
  }
  if (auto st = CheckShapes(r, limits, data, s); !st.ok()) return st;
  if (auto st = CheckOptions(r, s); !st.ok()) return st;
  if (auto st = CheckWorkAndAnswer(limits, s); !st.ok()) return st;
  if (auto st = CheckAlibi(r, s); !st.ok()) return st;
  if (auto st = CheckMask(r, s); !st.ok()) return st;
  if (auto st = CheckSinks(r, s); !st.ok()) return st;
  if (auto st = CheckDescales(r, s); !st.ok()) return st;
  if (s.kind == WorkKind::kBackward) {
    if (auto st = CheckBackwardInputs(r, s); !st.ok()) return st;
  } else if (r.has_o() || r.has_lse() || r.has_grad_o()) {
    return Invalid(r.has_o()     ? "o"
                   : r.has_lse() ? "lse"
                                 : "grad_o",
                   "is an input of the backward pass only: set backward (AttentionStream) or call "
                   "AttentionBackward");
  }
  return s;
}

}  // namespace attention::server
