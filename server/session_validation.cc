#include "server/session_validation.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "kernels/kernel_config.h"
#include "proto/contract_types.h"
#include "server/executor.h"

namespace attention::server {
namespace {

using v1::Tensor;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

std::string DTypeText(int dtype) {
  return v1::DType_IsValid(dtype) ? v1::DType_Name(static_cast<v1::DType>(dtype))
                                  : absl::StrCat("unknown dtype ", dtype);
}

std::string ShapeText(const Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]");
}

// `t` is a `rank`-dimensional tensor of the session's dtype whose shape is `expected` (entries
// < 0 are free but must be >= 1), with matching data length. `names` names the dimensions in
// messages.
absl::Status CheckRows(absl::string_view field, const Tensor& t, DType dtype,
                       std::initializer_list<int64_t> expected,
                       std::initializer_list<const char*> names, const ValidationLimits& limits) {
  const v1::DType want = ContractDType(dtype);
  if (t.dtype() != want) {
    return Invalid(absl::StrCat(field, ".dtype"),
                   absl::StrCat("must be the session's dtype ", v1::DType_Name(want), ", got ",
                                DTypeText(t.dtype())));
  }
  if (t.shape_size() != static_cast<int>(expected.size())) {
    return Invalid(absl::StrCat(field, ".shape"),
                   absl::StrCat("rank must be ", expected.size(), " [", absl::StrJoin(names, ", "),
                                "], got ", t.shape_size(), " ", ShapeText(t)));
  }
  int64_t elements = 1;
  int i = 0;
  for (int64_t want_dim : expected) {
    const int64_t dim = t.shape(i);
    const char* name = names.begin()[i];
    if (dim < 1) {
      return Invalid(absl::StrCat(field, ".shape"),
                     absl::StrCat(name, " must be >= 1, got ", ShapeText(t)));
    }
    if (want_dim >= 0 && dim != want_dim) {
      return Invalid(absl::StrCat(field, ".shape"),
                     absl::StrCat(name, " must be ", want_dim, ", got ", ShapeText(t)));
    }
    // Every dimension is bounded before the product: rows by max_request_tokens, heads by
    // max_heads, head_dim by kMaxHeadDim, so the product cannot overflow.
    if (i == 0 && dim > limits.max_request_tokens) {
      return absl::ResourceExhaustedError(
          absl::StrCat(field, ".shape: ", name, " ", dim, " exceeds this server's limit of ",
                       limits.max_request_tokens, " rows per request (--max_request_tokens)"));
    }
    if (i == 1 && dim > limits.max_heads) {
      return absl::ResourceExhaustedError(absl::StrCat(field, ".shape: ", name, " ", dim,
                                                       " exceeds this server's limit of ",
                                                       limits.max_heads, " heads (--max_heads)"));
    }
    elements *= dim;
    ++i;
  }
  const uint64_t bytes = static_cast<uint64_t>(elements * DTypeSize(dtype));
  if (t.data().size() != bytes) {
    return Invalid(
        absl::StrCat(field, ".data"),
        absl::StrCat("length must be product(shape) x ", DTypeSize(dtype), " = ", bytes, " bytes (",
                     DTypeText(t.dtype()), " ", ShapeText(t), "), got ", t.data().size()));
  }
  return absl::OkStatus();
}

// A FLOAT32 [q_heads] tensor of finite values within `bound` in magnitude.
absl::Status CheckPerHead(absl::string_view field, const Tensor& t, int q_heads, float bound,
                          absl::string_view bound_name) {
  if (t.dtype() != v1::FLOAT32) {
    return Invalid(absl::StrCat(field, ".dtype"),
                   absl::StrCat("must be FLOAT32, got ", DTypeText(t.dtype())));
  }
  if (t.shape_size() != 1 || t.shape(0) != q_heads) {
    return Invalid(absl::StrCat(field, ".shape"),
                   absl::StrCat("must be [q_heads] = [", q_heads, "], got ", ShapeText(t)));
  }
  if (t.data().size() != static_cast<size_t>(q_heads) * sizeof(float)) {
    return Invalid(absl::StrCat(field, ".data"),
                   absl::StrCat("length must be ", q_heads, " x 4 bytes, got ", t.data().size()));
  }
  for (int h = 0; h < q_heads; ++h) {
    float value;
    std::memcpy(&value, t.data().data() + h * sizeof(float), sizeof(float));
    if (!std::isfinite(value) || std::fabs(value) > bound) {
      return Invalid(absl::StrCat(field, ".data"),
                     absl::StrCat("values must be finite with magnitude at most ", bound_name, " (",
                                  bound, "), got ", value, " for head ", h));
    }
  }
  return absl::OkStatus();
}

// softmax_scale, window, softcap and precision into the spec's configuration.
absl::Status CheckOptions(const v1::AttendRequest& r, RequestSpec& s) {
  s.softmax_scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  if (r.has_softmax_scale()) {
    const float scale = r.softmax_scale();
    if (!std::isfinite(scale) || std::fabs(scale) > kMaxScoreMultiplier) {
      return Invalid("softmax_scale", absl::StrCat("must be finite with magnitude at most ",
                                                   kMaxScoreMultiplier, ", got ", scale));
    }
    s.softmax_scale = scale;
  }
  const float softcap = r.softcap();
  if (!std::isfinite(softcap) || softcap < 0 ||
      (softcap > 0 && (softcap < kMinSoftcap || softcap > kMaxScoreMultiplier))) {
    return Invalid("softcap", absl::StrCat("must be 0 (off) or within [", kMinSoftcap, ", ",
                                           kMaxScoreMultiplier, "], got ", softcap));
  }
  s.softcap = softcap;
  if (r.window().left() < -1 || r.window().right() < -1) {
    return Invalid("window", absl::StrCat("left and right must be >= -1 (-1 = unbounded), got (",
                                          r.window().left(), ", ", r.window().right(), ")"));
  }
  s.window_left = r.has_window() ? r.window().left() : -1;
  s.window_right = r.has_window() ? r.window().right() : -1;
  s.causal = r.causal();
  Normalize(s);
  if (!v1::Precision_IsValid(r.precision())) {
    return Invalid("precision", absl::StrCat("must be a Precision value, got ", r.precision()));
  }
  s.precision = s.dtype == DType::kFloat32 ? KernelPrecision(r.precision()) : Precision::kFull;
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckReplicaName(absl::string_view name, absl::string_view field) {
  if (name.empty() || name.size() > static_cast<size_t>(kMaxReplicaNameLength)) {
    return Invalid(field, absl::StrCat("must be 1 to ", kMaxReplicaNameLength, " characters, got ",
                                       name.size()));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '-' || c == '_';
    if (!ok) {
      return Invalid(
          field, absl::StrCat("must be letters, digits, '.', '-' and '_' only, got "
                              "character ",
                              static_cast<int>(static_cast<unsigned char>(c)), " at offset ", i));
    }
  }
  return absl::OkStatus();
}

std::string SessionIdText(const session::SessionId& id, absl::string_view replica) {
  return absl::StrCat(id.ToString(), "@", replica);
}

absl::StatusOr<session::SessionId> ParseSessionIdText(absl::string_view text,
                                                      absl::string_view replica) {
  const size_t at = text.find('@');
  if (at == absl::string_view::npos) {
    return Invalid("session_id",
                   absl::StrCat("must be 32 hex digits, '@' and the replica's name, as "
                                "CreateSession answered it; got ",
                                text.size(), " characters without '@'"));
  }
  absl::StatusOr<session::SessionId> id = session::SessionId::Parse(text.substr(0, at));
  if (!id.ok()) return id.status();
  const absl::string_view owner = text.substr(at + 1);
  if (absl::Status name = CheckReplicaName(owner, "session_id (replica part)"); !name.ok()) {
    return name;
  }
  if (owner != replica) {
    return absl::FailedPreconditionError(absl::StrCat("session_id: session ", id->ShortForm(),
                                                      " is held by replica ", owner, ", not ",
                                                      replica, ": send its calls there"));
  }
  return id;
}

absl::StatusOr<session::SessionSpec> ValidateCreateSession(const v1::CreateSessionRequest& r,
                                                           const ValidationLimits& limits) {
  if (r.layers() < 1) return Invalid("layers", absl::StrCat("must be >= 1, got ", r.layers()));
  if (r.kv_heads() < 1) {
    return Invalid("kv_heads", absl::StrCat("must be >= 1, got ", r.kv_heads()));
  }
  if (r.kv_heads() > limits.max_heads) {
    return absl::ResourceExhaustedError(absl::StrCat("kv_heads: ", r.kv_heads(),
                                                     " exceeds this server's limit of ",
                                                     limits.max_heads, " heads (--max_heads)"));
  }
  if (r.head_dim() < 1 || r.head_dim() > kMaxHeadDim) {
    return Invalid("head_dim",
                   absl::StrCat("must be in [1, ", kMaxHeadDim, "], got ", r.head_dim()));
  }
  const std::optional<DType> dtype = KernelDType(r.dtype());
  // FP8 (E4M3) is for the stateless forward only: a session's pages and Attend take 16- and
  // 32-bit rows (FP8 K/V pages with per-page scales are a later issue).
  if (!dtype.has_value() || *dtype == DType::kFloat8E4M3) {
    return Invalid("dtype", absl::StrCat("must be FLOAT32, FLOAT16 or BFLOAT16 (FLOAT8_E4M3 is not "
                                         "taken by sessions), got ",
                                         DTypeText(r.dtype())));
  }
  if (r.has_max_tokens() && r.max_tokens() < 1) {
    return Invalid("max_tokens", absl::StrCat("must be >= 1 when given, got ", r.max_tokens()));
  }
  if (r.has_idle_ttl_ms() && r.idle_ttl_ms() < 1) {
    return Invalid("idle_ttl_ms", absl::StrCat("must be >= 1 when given, got ", r.idle_ttl_ms()));
  }
  session::SessionSpec spec;
  spec.layers = r.layers();
  spec.kv_heads = r.kv_heads();
  spec.head_dim = r.head_dim();
  spec.dtype = *dtype;
  spec.max_tokens = r.has_max_tokens() ? r.max_tokens() : 0;
  spec.idle_ttl = r.has_idle_ttl_ms() ? absl::Milliseconds(r.idle_ttl_ms()) : absl::ZeroDuration();
  return spec;
}

absl::StatusOr<int64_t> ValidateAppend(const v1::AppendRequest& r,
                                       const session::PageLayout& layout,
                                       const ValidationLimits& limits) {
  if (!r.has_k() || !r.has_v()) {
    return Invalid(!r.has_k() ? "k" : "v", "required: [n, kv_heads, head_dim] rows to append");
  }
  if (absl::Status s = CheckRows("k", r.k(), layout.dtype, {-1, layout.kv_heads, layout.head_dim},
                                 {"n", "kv_heads", "head_dim"}, limits);
      !s.ok()) {
    return s;
  }
  const int64_t n = r.k().shape(0);
  if (absl::Status s = CheckRows("v", r.v(), layout.dtype, {n, layout.kv_heads, layout.head_dim},
                                 {"n (k's)", "kv_heads", "head_dim"}, limits);
      !s.ok()) {
    return s;
  }
  return n;
}

absl::StatusOr<AttendInputs> ValidateAttend(const v1::AttendRequest& r,
                                            const session::PageLayout& layout,
                                            const ValidationLimits& limits) {
  AttendInputs in;
  RequestSpec& s = in.spec;
  s.kind = WorkKind::kPagedDecode;
  s.dtype = layout.dtype;
  s.head_dim = layout.head_dim;
  s.kv_heads = layout.kv_heads;
  if (!r.has_q()) return Invalid("q", "required: [n_new, q_heads, head_dim]");
  if (absl::Status st = CheckRows("q", r.q(), layout.dtype, {-1, -1, layout.head_dim},
                                  {"n_new", "q_heads", "head_dim"}, limits);
      !st.ok()) {
    return st;
  }
  in.n_new = r.q().shape(0);
  s.q_heads = static_cast<int>(r.q().shape(1));
  if (s.q_heads % s.kv_heads != 0) {
    return Invalid("q.shape",
                   absl::StrCat("q_heads ", s.q_heads,
                                " must be a multiple of the session's kv_heads ", s.kv_heads));
  }
  if (r.has_k_new() != r.has_v_new()) {
    return Invalid("k_new, v_new", "give both or neither");
  }
  in.appends = r.has_k_new();
  if (in.appends) {
    for (const auto& [field, t] : {std::pair<const char*, const Tensor*>{"k_new", &r.k_new()},
                                   std::pair<const char*, const Tensor*>{"v_new", &r.v_new()}}) {
      if (absl::Status st =
              CheckRows(field, *t, layout.dtype, {in.n_new, layout.kv_heads, layout.head_dim},
                        {"n_new (q's)", "kv_heads", "head_dim"}, limits);
          !st.ok()) {
        return st;
      }
    }
  }
  if (absl::Status st = CheckOptions(r, s); !st.ok()) return st;
  if (r.has_alibi_slopes()) {
    if (absl::Status st = CheckPerHead("alibi_slopes", r.alibi_slopes(), s.q_heads,
                                       kMaxScoreMultiplier, "kMaxScoreMultiplier");
        !st.ok()) {
      return st;
    }
    s.alibi = true;
    s.alibi_slopes = reinterpret_cast<const float*>(r.alibi_slopes().data().data());
    s.alibi_batch_stride = 0;
  }
  if (r.has_sinks()) {
    if (absl::Status st = CheckPerHead("sinks", r.sinks(), s.q_heads, kMaxLogit, "kMaxLogit");
        !st.ok()) {
      return st;
    }
    s.sinks = true;
    s.sink_logits = reinterpret_cast<const float*>(r.sinks().data().data());
  }
  if (r.has_key_range() &&
      (r.key_range().start() < 0 || r.key_range().end() < r.key_range().start())) {
    return Invalid("key_range",
                   absl::StrCat("must satisfy 0 <= start <= end, got [", r.key_range().start(),
                                ", ", r.key_range().end(), ")"));
  }
  s.mask_kind = MaskKind::kNone;
  s.packed = true;
  s.batch = 1;
  s.seqlen_q = static_cast<int>(in.n_new);
  s.total_q = in.n_new;
  s.total_k = 0;
  s.q_data = r.q().data().data();
  s.return_lse = r.return_lse();
  s.q_bytes = static_cast<int64_t>(r.q().data().size());
  s.kv_bytes = 0;
  s.lse_bytes = r.return_lse() ? int64_t{s.q_heads} * in.n_new * int64_t{sizeof(float)} : 0;
  const int64_t answer = s.q_bytes + s.lse_bytes + kAnswerOverheadBytes;
  if (answer > limits.max_answer_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("q.shape: the answer would take ", answer, " bytes (o ", s.q_bytes, ", lse ",
                     s.lse_bytes, "), more than this server's message limit of ",
                     limits.max_answer_bytes, " bytes (--max_message_bytes)"));
  }
  return in;
}

absl::Status CompleteAttendSpec(const v1::AttendRequest& r, int64_t n_new,
                                const ValidationLimits& limits, PagedContext* paged,
                                RequestSpec& s) {
  const int64_t context = paged->view.tokens();
  paged->cu_seqlens_q[0] = 0;
  paged->cu_seqlens_q[1] = static_cast<int32_t>(n_new);
  s.cu_seqlens_q = paged->cu_seqlens_q;
  s.cu_seqlens_k = nullptr;
  // A session's context is at most its max_tokens, and the store's slots are int32, so the
  // context fits the kernels' int seqlen_k.
  s.seqlen_k = static_cast<int>(context);
  s.page_size = paged->view.layout().page_size;
  // The view's pages are in pool i, which is device i's: only its executor can read them.
  s.device = paged->view.pool();
  paged->has_key_range = r.has_key_range();
  if (paged->has_key_range) {
    paged->key_range[0] = static_cast<int32_t>(std::min(r.key_range().start(), context));
    paged->key_range[1] = static_cast<int32_t>(std::min(r.key_range().end(), context));
  }
  s.work = RequestWork(s);
  if (s.work > limits.max_request_work) {
    return absl::ResourceExhaustedError(
        absl::StrCat("q.shape: the Attend's work, about ", absl::SixDigits(s.work * 1e-9),
                     " GFLOP (", n_new, " query rows x ", s.q_heads, " heads against ", context,
                     " context keys), exceeds this server's limit of ",
                     absl::SixDigits(limits.max_request_work * 1e-9),
                     " GFLOP per request "
                     "(--max_request_gflop)"));
  }
  return absl::OkStatus();
}

}  // namespace attention::server
