// One test per validation rule: each breaks exactly one rule of an otherwise valid request and
// checks the status code and that the message names the field and the rule. Plus the specs that
// valid requests produce.
#include "server/validation.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "server/session_validation.h"
#include "tests/server/server_test_util.h"

namespace attention::server {
namespace {

using ::testing::HasSubstr;
using testing::MakeRequest;
using testing::RequestOptions;

// [2, 8, 4, 32] q and [2, 12, 2, 32] k, v of `dtype` (FLOAT8_E4M3 with `descale` as
// RequestOptions has it).
v1::AttentionRequest DenseOf(v1::DType dtype, int descale) {
  std::mt19937 rng(1);
  RequestOptions o;
  o.dtype = dtype;
  o.descale = descale;
  o.batch = 2;
  o.seqlen_q = 8;
  o.seqlen_k = 12;
  o.q_heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;
  return MakeRequest(o, 7, rng);
}

v1::AttentionRequest Dense() { return DenseOf(v1::BFLOAT16, 0); }

v1::AttentionRequest Packed() {
  std::mt19937 rng(2);
  RequestOptions o;
  o.seqlens_q = {3, 0, 5};
  o.seqlens_k = {4, 2, 6};
  o.q_heads = 4;
  o.kv_heads = 4;
  o.head_dim = 16;
  return MakeRequest(o, 8, rng);
}

// Dense() in FLOAT8_E4M3 with per-head descale factors (q [4], k and v [2]).
v1::AttentionRequest Fp8Dense() { return DenseOf(v1::FLOAT8_E4M3, 2); }

// Sets `t` to a FLOAT32 tensor of shape [values.size()] holding `values`.
void SetFactors(v1::Tensor* t, const std::vector<float>& values) {
  t->set_dtype(v1::FLOAT32);
  t->clear_shape();
  t->add_shape(static_cast<int64_t>(values.size()));
  t->set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
}

struct Rule {
  std::string name;
  std::function<v1::AttentionRequest()> make;
  absl::StatusCode code;
  std::string message;  // expected substring: field and rule
  ValidationLimits limits = {};
};

// Returns `request` after `mutate`.
v1::AttentionRequest With(v1::AttentionRequest request,
                          const std::function<void(v1::AttentionRequest&)>& mutate) {
  mutate(request);
  return request;
}

const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
const absl::StatusCode kExhausted = absl::StatusCode::kResourceExhausted;

// Sets an additive FLOAT32 mask [seqlen_q, seqlen_k] = [8, 12] of zeros on Dense(), with
// `value` at element `index`.
void SetFloatMask(v1::AttentionRequest& r, int index, float value) {
  std::vector<float> mask(96, 0.f);
  mask[index] = value;
  r.mutable_mask()->set_dtype(v1::FLOAT32);
  r.mutable_mask()->clear_shape();
  r.mutable_mask()->add_shape(8);
  r.mutable_mask()->add_shape(12);
  r.mutable_mask()->set_data(
      std::string(reinterpret_cast<const char*>(mask.data()), mask.size() * sizeof(float)));
}

// The same with 16-bit elements (FLOAT16 or BFLOAT16 bit patterns).
void SetHalfMask(v1::AttentionRequest& r, v1::DType dtype, int index, uint16_t bits) {
  std::vector<uint16_t> mask(96, 0);
  mask[index] = bits;
  r.mutable_mask()->set_dtype(dtype);
  r.mutable_mask()->clear_shape();
  r.mutable_mask()->add_shape(8);
  r.mutable_mask()->add_shape(12);
  r.mutable_mask()->set_data(
      std::string(reinterpret_cast<const char*>(mask.data()), mask.size() * sizeof(uint16_t)));
}

void SetSlopes(v1::AttentionRequest& r, float second) {
  const float slopes[4] = {0.5f, second, 0.1f, 0.1f};
  r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
  r.mutable_alibi_slopes()->clear_shape();
  r.mutable_alibi_slopes()->add_shape(4);
  r.mutable_alibi_slopes()->set_data(slopes, sizeof(slopes));
}

std::vector<Rule> Rules() {
  std::vector<Rule> rules = {
      {"QDtypeUnspecified",
       [] {
         return With(Dense(), [](auto& r) { r.mutable_q()->set_dtype(v1::DTYPE_UNSPECIFIED); });
       },
       kInvalid,
       "q.dtype: must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT8_E4M3, got DTYPE_UNSPECIFIED"},
      {"QDtypeBool",
       [] { return With(Dense(), [](auto& r) { r.mutable_q()->set_dtype(v1::BOOL); }); }, kInvalid,
       "q.dtype: must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT8_E4M3, got BOOL"},
      {"KDtypeDiffers",
       [] { return With(Dense(), [](auto& r) { r.mutable_k()->set_dtype(v1::FLOAT16); }); },
       kInvalid, "k.dtype: must equal q.dtype (BFLOAT16), got FLOAT16"},
      {"VDtypeDiffers",
       [] { return With(Dense(), [](auto& r) { r.mutable_v()->set_dtype(v1::FLOAT32); }); },
       kInvalid, "v.dtype: must equal q.dtype (BFLOAT16), got FLOAT32"},
      {"CuSeqlensKMissing", [] { return With(Packed(), [](auto& r) { r.clear_cu_seqlens_k(); }); },
       kInvalid, "cu_seqlens_k: must be given together with cu_seqlens_q"},
      {"CuSeqlensQMissing", [] { return With(Packed(), [](auto& r) { r.clear_cu_seqlens_q(); }); },
       kInvalid, "cu_seqlens_q: must be given together with cu_seqlens_k"},
      {"DenseRank2",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_q()->clear_shape();
           r.mutable_q()->add_shape(16);
           r.mutable_q()->add_shape(128);
         });
       },
       kInvalid,
       "q.shape: rank must be 4 (dense [batch, seqlen_q, q_heads, head_dim]) or 3 (packed with "
       "cu_seqlens_q), got 2"},
      {"PackedRank4", [] { return With(Packed(), [](auto& r) { r.mutable_q()->add_shape(1); }); },
       kInvalid,
       "q.shape: rank must be 3 (packed [total_q, q_heads, head_dim], since cu_seqlens_q is set), "
       "got 4"},
      {"KRankDiffers", [] { return With(Dense(), [](auto& r) { r.mutable_k()->add_shape(1); }); },
       kInvalid, "k.shape: rank must be 4"},
      {"QDimZero", [] { return With(Dense(), [](auto& r) { r.mutable_q()->set_shape(1, 0); }); },
       kInvalid, "q.shape[1] (seqlen_q): must be >= 1, got 0"},
      {"KDimNegative",
       [] { return With(Dense(), [](auto& r) { r.mutable_k()->set_shape(2, -2); }); }, kInvalid,
       "k.shape[2] (kv_heads): must be >= 1, got -2"},
      {"PackedTotalZero",
       [] { return With(Packed(), [](auto& r) { r.mutable_q()->set_shape(0, 0); }); }, kInvalid,
       "q.shape[0] (total_q): must be >= 1, got 0"},
      {"VShapeDiffers",
       [] { return With(Dense(), [](auto& r) { r.mutable_v()->set_shape(1, 11); }); }, kInvalid,
       "v.shape: must equal k.shape [2, 12, 2, 32], got [2, 11, 2, 32]"},
      {"HeadDimTooLarge",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_q()->set_shape(3, 512);
           r.mutable_k()->set_shape(3, 512);
           r.mutable_v()->set_shape(3, 512);
         });
       },
       kInvalid, "q.shape[3] (head_dim): must be <= 256"},
      {"KHeadDimDiffers",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_k()->set_shape(3, 64);
           r.mutable_v()->set_shape(3, 64);
         });
       },
       kInvalid, "k.shape[3] (head_dim): must equal q's head_dim 32, got 64"},
      {"KBatchDiffers",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_k()->set_shape(0, 3);
           r.mutable_v()->set_shape(0, 3);
         });
       },
       kInvalid, "k.shape[0] (batch): must equal q.shape[0] 2, got 3"},
      {"HeadsNotMultiple",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_k()->set_shape(2, 3);
           r.mutable_v()->set_shape(2, 3);
         });
       },
       kInvalid, "k.shape[2] (kv_heads): q_heads (4) must be a multiple of kv_heads (3)"},
      {"QDataShort",
       [] { return With(Dense(), [](auto& r) { r.mutable_q()->mutable_data()->resize(100); }); },
       kInvalid, "q.data: length must be product(shape) x 2 = 2048 x 2 bytes"},
      {"KDataLong",
       [] { return With(Dense(), [](auto& r) { r.mutable_k()->mutable_data()->append("xy"); }); },
       kInvalid, "k.data: length must be"},
      {"VDataEmpty", [] { return With(Dense(), [](auto& r) { r.mutable_v()->clear_data(); }); },
       kInvalid, "v.data: length must be"},
      {"CuSeqlensTooShort",
       [] {
         return With(Packed(), [](auto& r) {
           r.mutable_cu_seqlens_q()->Truncate(1);
           r.mutable_cu_seqlens_k()->Truncate(1);
         });
       },
       kInvalid, "cu_seqlens_q: must hold batch + 1 >= 2 offsets, got 1"},
      {"CuSeqlensSizesDiffer",
       [] { return With(Packed(), [](auto& r) { r.mutable_cu_seqlens_k()->Truncate(3); }); },
       kInvalid, "cu_seqlens_k: must hold as many offsets as cu_seqlens_q (4), got 3"},
      {"CuSeqlensNotStartingAtZero",
       [] { return With(Packed(), [](auto& r) { r.set_cu_seqlens_q(0, 1); }); }, kInvalid,
       "cu_seqlens_q[0]: must be 0, got 1"},
      {"CuSeqlensDecreasing",
       [] { return With(Packed(), [](auto& r) { r.set_cu_seqlens_k(2, 3); }); }, kInvalid,
       "cu_seqlens_k[2]: offsets must be non-decreasing, got 3 after 4"},
      {"CuSeqlensLastNotTotal",
       [] { return With(Packed(), [](auto& r) { r.set_cu_seqlens_q(3, 7); }); }, kInvalid,
       "cu_seqlens_q[3]: last offset must equal q.shape[0] (total_q) 8, got 7"},
      {"ScaleNan",
       [] {
         return With(Dense(),
                     [](auto& r) { r.set_softmax_scale(std::numeric_limits<float>::quiet_NaN()); });
       },
       kInvalid, "softmax_scale: must be finite with |softmax_scale| <= 65536 (2^16), got nan"},
      {"ScaleInfinite",
       [] {
         return With(Dense(),
                     [](auto& r) { r.set_softmax_scale(std::numeric_limits<float>::infinity()); });
       },
       kInvalid, "softmax_scale: must be finite with |softmax_scale| <= 65536 (2^16), got inf"},
      {"SoftcapNegative", [] { return With(Dense(), [](auto& r) { r.set_softcap(-1.f); }); },
       kInvalid, "softcap: must be 0 (off) or within [2^-16, 2^16]"},
      {"SoftcapInfinite",
       [] {
         return With(Dense(),
                     [](auto& r) { r.set_softcap(std::numeric_limits<float>::infinity()); });
       },
       kInvalid, "softcap: must be 0 (off) or within [2^-16, 2^16]"},
      {"WindowLeftBelowMinusOne",
       [] { return With(Dense(), [](auto& r) { r.mutable_window()->set_left(-2); }); }, kInvalid,
       "window.left: must be >= -1 (-1 = unbounded), got -2"},
      {"WindowRightBelowMinusOne",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_window()->set_left(4);
           r.mutable_window()->set_right(-5);
         });
       },
       kInvalid, "window.right: must be >= -1 (-1 = unbounded), got -5"},
      {"AlibiDtype",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_alibi_slopes()->set_dtype(v1::BFLOAT16);
           r.mutable_alibi_slopes()->add_shape(4);
           r.mutable_alibi_slopes()->mutable_data()->resize(8);
         });
       },
       kInvalid, "alibi_slopes.dtype: must be FLOAT32, got BFLOAT16"},
      {"AlibiShape",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
           r.mutable_alibi_slopes()->add_shape(2);
           r.mutable_alibi_slopes()->mutable_data()->resize(8);
         });
       },
       kInvalid,
       "alibi_slopes.shape: must be [q_heads] = [4] or [batch, q_heads] = [2, 4], got [2]"},
      {"AlibiDataLength",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
           r.mutable_alibi_slopes()->add_shape(4);
           r.mutable_alibi_slopes()->mutable_data()->resize(12);
         });
       },
       kInvalid, "alibi_slopes.data: length must be product(shape) x 4 = 4 x 4 bytes"},
      {"AlibiNotFinite",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_alibi_slopes()->set_dtype(v1::FLOAT32);
           r.mutable_alibi_slopes()->add_shape(4);
           const float slopes[4] = {0.5f, std::numeric_limits<float>::infinity(), 0.1f, 0.1f};
           r.mutable_alibi_slopes()->set_data(slopes, sizeof(slopes));
         });
       },
       kInvalid, "alibi_slopes[1]: must be finite with |slope| <= 65536 (2^16), got inf"},
      {"MaskDtype",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_mask()->add_shape(8);
           r.mutable_mask()->add_shape(12);
           r.mutable_mask()->mutable_data()->resize(96);
         });
       },
       kInvalid, "mask.dtype: must be BOOL, FLOAT32, FLOAT16 or BFLOAT16, got DTYPE_UNSPECIFIED"},
      {"MaskRank",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_mask()->set_dtype(v1::BOOL);
           r.mutable_mask()->add_shape(12);
           r.mutable_mask()->mutable_data()->resize(12);
         });
       },
       kInvalid,
       "mask.shape: rank must be 2 to 4 (broadcastable to [batch, q_heads, seqlen_q, seqlen_k] = "
       "[2, 4, 8, 12]), got 1"},
      {"MaskNotBroadcastable",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_mask()->set_dtype(v1::BOOL);
           r.mutable_mask()->add_shape(3);
           r.mutable_mask()->add_shape(8);
           r.mutable_mask()->add_shape(12);
           r.mutable_mask()->mutable_data()->resize(288);
         });
       },
       kInvalid, "mask.shape[0]: must be 1 or 4 (q_heads) to broadcast to [2, 4, 8, 12], got 3"},
      {"MaskDataLength",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_mask()->set_dtype(v1::FLOAT16);
           r.mutable_mask()->add_shape(8);
           r.mutable_mask()->add_shape(12);
           r.mutable_mask()->mutable_data()->resize(96);
         });
       },
       kInvalid, "mask.data: length must be product(shape) x 2 = 96 x 2 bytes"},
  };
  // Configured limits: RESOURCE_EXHAUSTED.
  ValidationLimits tight;
  tight.max_heads = 2;
  rules.push_back({"TooManyHeads", Dense, kExhausted,
                   "q.shape[2] (q_heads): 4 exceeds this server's limit of 2 heads (--max_heads)",
                   tight});
  tight = {};
  tight.max_request_sequences = 1;
  rules.push_back({"TooManySequencesDense", Dense, kExhausted,
                   "q.shape[0] (batch): 2 sequences exceed this server's limit of 1 "
                   "(--max_request_sequences)",
                   tight});
  tight.max_request_sequences = 2;
  rules.push_back({"TooManySequencesPacked", Packed, kExhausted,
                   "cu_seqlens_q: 3 sequences exceed this server's limit of 2", tight});
  tight = {};
  tight.max_request_tokens = 15;
  rules.push_back({"TooManyQueryTokens", Dense, kExhausted,
                   "q.shape: [2, 8, 4, 32] holds more query tokens than this server's limit of 15 "
                   "(--max_request_tokens)",
                   tight});
  tight.max_request_tokens = 16;
  rules.push_back({"TooManyKeyTokens", Dense, kExhausted,
                   "k.shape: [2, 12, 2, 32] holds more key tokens than this server's limit of 16",
                   tight});
  // Element counts are overflow-checked: with every limit lifted, a shape whose product overflows
  // int64 is refused without allocating anything.
  ValidationLimits none;
  none.max_heads = none.max_request_tokens = none.max_request_sequences =
      std::numeric_limits<int64_t>::max();
  rules.push_back({"ElementCountOverflow",
                   [] {
                     return With(Dense(), [](auto& r) {
                       for (v1::Tensor* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) {
                         t->set_shape(0, 1);
                         t->set_shape(1, int64_t{1} << 40);
                         t->set_shape(2, int64_t{1} << 40);
                         t->set_shape(3, 256);
                       }
                     });
                   },
                   kInvalid,
                   "q.shape: product(shape) of [1, 1099511627776, 1099511627776, 256] "
                   "overflows int64",
                   none});
  rules.push_back({"SinksDtype",
                   [] {
                     return With(Dense(), [](auto& r) {
                       r.mutable_sinks()->set_dtype(v1::FLOAT16);
                       r.mutable_sinks()->add_shape(4);
                       r.mutable_sinks()->set_data(std::string(8, '\0'));
                     });
                   },
                   kInvalid, "sinks.dtype: must be FLOAT32, got FLOAT16"});
  rules.push_back({"SinksShape",
                   [] {
                     return With(Dense(), [](auto& r) {
                       r.mutable_sinks()->set_dtype(v1::FLOAT32);
                       r.mutable_sinks()->add_shape(2);
                       r.mutable_sinks()->set_data(std::string(8, '\0'));
                     });
                   },
                   kInvalid, "sinks.shape: must be [q_heads] = [4], got [2]"});
  rules.push_back({"SinksDataLength",
                   [] {
                     return With(Dense(), [](auto& r) {
                       r.mutable_sinks()->set_dtype(v1::FLOAT32);
                       r.mutable_sinks()->add_shape(4);
                       r.mutable_sinks()->set_data(std::string(12, '\0'));
                     });
                   },
                   kInvalid, "sinks.data: length must be product(shape) x 4"});
  rules.push_back(
      {"SinksNotFinite",
       [] {
         return With(Dense(), [](auto& r) {
           r.mutable_sinks()->set_dtype(v1::FLOAT32);
           r.mutable_sinks()->add_shape(4);
           const float values[4] = {0.f, 1.f, std::numeric_limits<float>::infinity(), 2.f};
           r.mutable_sinks()->set_data(
               std::string(reinterpret_cast<const char*>(values), sizeof(values)));
         });
       },
       kInvalid, "sinks[2]: must be finite with |sink| <= 2^100"});
  // Finite but extreme values (issue 26): each gave NaN answers with status OK.
  rules.push_back({"ScaleHuge",
                   [] { return With(Dense(), [](auto& r) { r.set_softmax_scale(3e38f); }); },
                   kInvalid, "softmax_scale: must be finite with |softmax_scale| <= 65536"});
  rules.push_back({"ScaleHugeNegative",
                   [] { return With(Dense(), [](auto& r) { r.set_softmax_scale(-70000.f); }); },
                   kInvalid, "got -70000"});
  rules.push_back({"SoftcapTiny",
                   [] { return With(Dense(), [](auto& r) { r.set_softcap(1e-30f); }); }, kInvalid,
                   "softcap: must be 0 (off) or within [2^-16, 2^16]"});
  rules.push_back({"SoftcapHuge",
                   [] { return With(Dense(), [](auto& r) { r.set_softcap(3e38f); }); }, kInvalid,
                   "softcap: must be 0 (off) or within [2^-16, 2^16]"});
  rules.push_back({"AlibiHuge", [] { return With(Dense(), [](auto& r) { SetSlopes(r, 3e38f); }); },
                   kInvalid,
                   "alibi_slopes[1]: must be finite with |slope| <= 65536 (2^16), got 3e+38"});
  rules.push_back({"AlibiHugeNegative",
                   [] { return With(Dense(), [](auto& r) { SetSlopes(r, -3e38f); }); }, kInvalid,
                   "alibi_slopes[1]: must be finite with |slope| <= 65536 (2^16), got -3e+38"});
  rules.push_back({"MaskHuge",
                   [] { return With(Dense(), [](auto& r) { SetFloatMask(r, 5, 3e38f); }); },
                   kInvalid,
                   "mask[5]: an additive mask value must be -inf (drops the key) or finite with "
                   "|value| <= 2^100"});
  rules.push_back({"MaskHugeNegative",
                   [] { return With(Dense(), [](auto& r) { SetFloatMask(r, 0, -3e38f); }); },
                   kInvalid, "mask[0]: an additive mask value must be -inf"});
  rules.push_back({"MaskNan",
                   [] {
                     return With(Dense(), [](auto& r) {
                       SetFloatMask(r, 95, std::numeric_limits<float>::quiet_NaN());
                     });
                   },
                   kInvalid, "mask[95]: an additive mask value must be -inf"});
  rules.push_back({"MaskPlusInfinity",
                   [] {
                     return With(Dense(), [](auto& r) {
                       SetFloatMask(r, 7, std::numeric_limits<float>::infinity());
                     });
                   },
                   kInvalid, "got inf"});
  rules.push_back(
      {"MaskHalfNan",
       [] { return With(Dense(), [](auto& r) { SetHalfMask(r, v1::FLOAT16, 3, 0x7e00); }); },
       kInvalid, "mask[3]: an additive mask value must be -inf"});
  rules.push_back(
      {"MaskHalfPlusInfinity",
       [] { return With(Dense(), [](auto& r) { SetHalfMask(r, v1::FLOAT16, 4, 0x7c00); }); },
       kInvalid, "mask[4]: an additive mask value must be -inf"});
  rules.push_back({"MaskBFloat16Huge",
                   [] {
                     // 0x7f61: about 3e38.
                     return With(Dense(), [](auto& r) { SetHalfMask(r, v1::BFLOAT16, 9, 0x7f61); });
                   },
                   kInvalid, "mask[9]: an additive mask value must be -inf"});
  rules.push_back({"SinksHuge",
                   [] {
                     return With(Dense(), [](auto& r) {
                       r.mutable_sinks()->set_dtype(v1::FLOAT32);
                       r.mutable_sinks()->add_shape(4);
                       const float values[4] = {0.f, 3e38f, 1.f, 2.f};
                       r.mutable_sinks()->set_data(
                           std::string(reinterpret_cast<const char*>(values), sizeof(values)));
                     });
                   },
                   kInvalid, "sinks[1]: must be finite with |sink| <= 2^100"});
  // Work and answer size (configured limits): RESOURCE_EXHAUSTED naming the flag. Dense() is
  // 2 sequences x 8 x 12 scores x 4 heads x (4 x 32 + 32) flops = 122880.
  ValidationLimits work;
  work.max_request_work = 122879;
  rules.push_back({"WorkOverLimit", Dense, kExhausted,
                   "q.shape, k.shape: the request's work, about 0.00012288 GFLOP (192 scores per "
                   "head x 4 heads x (4 x head_dim 32 + 32) flops), exceeds this server's limit "
                   "of 0.000122879 GFLOP per request (--max_request_gflop)",
                   work});
  ValidationLimits answer;
  answer.max_answer_bytes = 2048 * 2 + kAnswerOverheadBytes - 1;  // o is 2048 bf16 elements
  rules.push_back({"AnswerOverMessageLimit", Dense, kExhausted,
                   "q.shape: the answer would take 5120 bytes (o 4096, lse 0, 1024 for the rest), "
                   "more than this server's message limit of 5119 bytes (--max_message_bytes)",
                   answer});
  // FLOAT8_E4M3 requests and their descale factors.
  rules.push_back(
      {"Fp8KDtypeDiffers",
       [] { return With(Fp8Dense(), [](auto& r) { r.mutable_k()->set_dtype(v1::BFLOAT16); }); },
       kInvalid, "k.dtype: must equal q.dtype (FLOAT8_E4M3), got BFLOAT16"});
  rules.push_back(
      {"Fp8VDtypeDiffers",
       [] { return With(Dense(), [](auto& r) { r.mutable_v()->set_dtype(v1::FLOAT8_E4M3); }); },
       kInvalid, "v.dtype: must equal q.dtype (BFLOAT16), got FLOAT8_E4M3"});
  rules.push_back({"Fp8DataLength",
                   [] {
                     return With(Fp8Dense(),
                                 [](auto& r) { r.mutable_q()->mutable_data()->append(1, '\0'); });
                   },
                   kInvalid, "q.data: length must be product(shape) x 1 = 2048 x 1 bytes"});
  rules.push_back({"Fp8Backward",
                   [] { return With(Fp8Dense(), [](auto& r) { r.set_backward(true); }); }, kInvalid,
                   "q.dtype: FLOAT8_E4M3 inputs are forward only"});
  rules.push_back(
      {"DescaleOnBFloat16",
       [] { return With(Dense(), [](auto& r) { SetFactors(r.mutable_q_descale(), {1.f}); }); },
       kInvalid, "q_descale: is for FLOAT8_E4M3 inputs only (q.dtype is BFLOAT16)"});
  rules.push_back({"DescaleOnFloat32",
                   [] {
                     std::mt19937 rng(4);
                     RequestOptions o;
                     o.dtype = v1::FLOAT32;
                     v1::AttentionRequest r = MakeRequest(o, 10, rng);
                     SetFactors(r.mutable_v_descale(), {1.f});
                     return r;
                   },
                   kInvalid, "v_descale: is for FLOAT8_E4M3 inputs only (q.dtype is FLOAT32)"});
  rules.push_back({"DescaleDtype",
                   [] {
                     return With(Fp8Dense(),
                                 [](auto& r) { r.mutable_k_descale()->set_dtype(v1::FLOAT16); });
                   },
                   kInvalid, "k_descale.dtype: must be FLOAT32, got FLOAT16"});
  rules.push_back(
      {"DescaleShapeQHeads",
       [] {
         return With(Fp8Dense(), [](auto& r) { SetFactors(r.mutable_q_descale(), {1.f, 1.f}); });
       },
       kInvalid,
       "q_descale.shape: must be [1] (per tensor) or [q_heads] = [4] (per head), got [2]"});
  rules.push_back(
      {"DescaleShapeKvHeads",
       [] {
         return With(Fp8Dense(), [](auto& r) {
           SetFactors(r.mutable_v_descale(), {1.f, 1.f, 1.f, 1.f});
         });
       },
       kInvalid,
       "v_descale.shape: must be [1] (per tensor) or [kv_heads] = [2] (per head), got [4]"});
  rules.push_back(
      {"DescaleRank2",
       [] { return With(Fp8Dense(), [](auto& r) { r.mutable_k_descale()->add_shape(1); }); },
       kInvalid, "k_descale.shape: must be [1] (per tensor) or [kv_heads] = [2]"});
  rules.push_back({"DescaleDataLength",
                   [] {
                     return With(Fp8Dense(), [](auto& r) {
                       r.mutable_q_descale()->mutable_data()->resize(12);
                     });
                   },
                   kInvalid, "q_descale.data: length must be product(shape) x 4 = 4 x 4 bytes"});
  rules.push_back(
      {"DescaleZero",
       [] { return With(Fp8Dense(), [](auto& r) { SetFactors(r.mutable_q_descale(), {0.f}); }); },
       kInvalid, "q_descale[0]: a descale factor must be finite and > 0, got 0"});
  rules.push_back(
      {"DescaleNegative",
       [] {
         return With(Fp8Dense(), [](auto& r) { SetFactors(r.mutable_k_descale(), {0.5f, -1.f}); });
       },
       kInvalid, "k_descale[1]: a descale factor must be finite and > 0, got -1"});
  rules.push_back({"DescaleNan",
                   [] {
                     return With(Fp8Dense(), [](auto& r) {
                       SetFactors(r.mutable_v_descale(), {std::numeric_limits<float>::quiet_NaN()});
                     });
                   },
                   kInvalid, "v_descale[0]: a descale factor must be finite and > 0, got nan"});
  rules.push_back({"DescaleInfinite",
                   [] {
                     return With(Fp8Dense(), [](auto& r) {
                       SetFactors(r.mutable_q_descale(),
                                  {1.f, 1.f, 1.f, std::numeric_limits<float>::infinity()});
                     });
                   },
                   kInvalid, "q_descale[3]: a descale factor must be finite and > 0, got inf"});
  rules.push_back(
      {"PrecisionUnknown",
       [] {
         return With(Dense(), [](auto& r) { r.set_precision(static_cast<v1::Precision>(7)); });
       },
       kInvalid, "precision: must be PRECISION_FULL, PRECISION_TF32 or PRECISION_BF16"});
  return rules;
}

class ValidationRuleTest : public ::testing::TestWithParam<Rule> {};

TEST_P(ValidationRuleTest, RejectsWithFieldAndRule) {
  const Rule& rule = GetParam();
  const v1::AttentionRequest request = rule.make();
  const absl::StatusOr<RequestSpec> spec = ValidateRequest(request, rule.limits);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), rule.code) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr(rule.message));
}

INSTANTIATE_TEST_SUITE_P(Rules, ValidationRuleTest, ::testing::ValuesIn(Rules()),
                         [](const ::testing::TestParamInfo<Rule>& info) {
                           return info.param.name;
                         });

TEST(ValidationTest, Fp8Spec) {
  v1::AttentionRequest r = Fp8Dense();
  absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->dtype, DType::kFloat8E4M3);
  EXPECT_EQ(s->precision, Precision::kFull);
  EXPECT_EQ(s->q_bytes, 2 * 8 * 4 * 32);  // one byte per element
  EXPECT_EQ(s->kv_bytes, 2 * 12 * 2 * 32);
  EXPECT_EQ(s->o_bytes(), 2 * s->q_bytes);  // o is bfloat16
  EXPECT_EQ(s->answer_bytes(), s->o_bytes());
  EXPECT_EQ(s->q_descale, reinterpret_cast<const float*>(r.q_descale().data().data()));
  EXPECT_EQ(s->k_descale, reinterpret_cast<const float*>(r.k_descale().data().data()));
  EXPECT_EQ(s->v_descale, reinterpret_cast<const float*>(r.v_descale().data().data()));
  EXPECT_EQ(s->q_descale_head_stride, 1);
  EXPECT_EQ(s->k_descale_head_stride, 1);
  EXPECT_EQ(s->v_descale_head_stride, 1);

  // Per-tensor factors: head stride 0; absent ones stay null (1.0).
  SetFactors(r.mutable_q_descale(), {0.25f});
  r.clear_k_descale();
  s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->q_descale_head_stride, 0);
  EXPECT_EQ(s->k_descale, nullptr);
  EXPECT_EQ(s->k_descale_head_stride, 0);
  EXPECT_NE(s->v_descale, nullptr);

  // The answer budget counts o as bfloat16: 2 x the e4m3 q.
  ValidationLimits tight;
  tight.max_answer_bytes = s->q_bytes * 2 + kAnswerOverheadBytes - 1;
  EXPECT_EQ(ValidateRequest(r, tight).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ValidationTest, SessionsRefuseFp8) {
  v1::CreateSessionRequest r;
  r.set_layers(1);
  r.set_kv_heads(2);
  r.set_head_dim(16);
  r.set_dtype(v1::FLOAT8_E4M3);
  const auto spec = ValidateCreateSession(r, {});
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("dtype: must be FLOAT32, FLOAT16 or BFLOAT16 (FLOAT8_E4M3 is not taken by "
                        "sessions), got FLOAT8_E4M3"));
  r.set_dtype(v1::BFLOAT16);
  EXPECT_TRUE(ValidateCreateSession(r, {}).ok());
}

TEST(ValidationTest, DenseSpec) {
  const v1::AttentionRequest r = Dense();
  const absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->dtype, DType::kBFloat16);
  EXPECT_FALSE(s->packed);
  EXPECT_EQ(s->batch, 2);
  EXPECT_EQ(s->seqlen_q, 8);
  EXPECT_EQ(s->seqlen_k, 12);
  EXPECT_EQ(s->total_q, 16);
  EXPECT_EQ(s->total_k, 24);
  EXPECT_EQ(s->q_heads, 4);
  EXPECT_EQ(s->kv_heads, 2);
  EXPECT_EQ(s->head_dim, 32);
  EXPECT_EQ(s->q_bytes, 16 * 4 * 32 * 2);
  EXPECT_EQ(s->kv_bytes, 24 * 2 * 32 * 2);
  EXPECT_EQ(s->q_data, r.q().data().data());
  EXPECT_FLOAT_EQ(s->softmax_scale, 1.f / std::sqrt(32.f));
  EXPECT_EQ(s->window_left, -1);
  EXPECT_EQ(s->window_right, -1);
  EXPECT_FALSE(s->causal);
  EXPECT_EQ(s->mask_kind, MaskKind::kNone);
  EXPECT_EQ(s->lse_bytes, 0);
}

TEST(ValidationTest, PackedSpec) {
  v1::AttentionRequest r = Packed();
  r.set_return_lse(true);
  r.set_softmax_scale(0.25f);
  const absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->packed);
  EXPECT_EQ(s->batch, 3);
  EXPECT_EQ(s->seqlen_q, 5);  // longest
  EXPECT_EQ(s->seqlen_k, 6);
  EXPECT_EQ(s->total_q, 8);
  EXPECT_EQ(s->total_k, 12);
  EXPECT_EQ(s->seqlen_q_of(1), 0);
  EXPECT_EQ(s->seqlen_k_of(2), 6);
  EXPECT_EQ(s->cu_seqlens_q, r.cu_seqlens_q().data());
  EXPECT_FLOAT_EQ(s->softmax_scale, 0.25f);
  EXPECT_EQ(s->lse_bytes, 4 * 8 * 4);
}

TEST(ValidationTest, CausalFoldsIntoWindow) {
  v1::AttentionRequest r = Dense();
  r.set_causal(true);
  r.mutable_window()->set_left(3);
  r.mutable_window()->set_right(5);
  absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->causal);
  EXPECT_EQ(s->window_left, 3);
  EXPECT_EQ(s->window_right, 0);
  // A right side of 0 with an unbounded left is causal.
  r.set_causal(false);
  r.mutable_window()->set_left(-1);
  r.mutable_window()->set_right(0);
  s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->causal);
}

TEST(ValidationTest, MaskBroadcastStridesAndWidening) {
  std::mt19937 rng(3);
  RequestOptions o;
  o.batch = 2;
  o.seqlen_q = 3;
  o.seqlen_k = 5;
  o.q_heads = 4;
  o.kv_heads = 4;
  o.mask_dtype = v1::BFLOAT16;
  o.mask_shape = {2, 1, 3, 5};
  const v1::AttentionRequest r = MakeRequest(o, 1, rng);
  const absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->mask_kind, MaskKind::kAdditive);
  EXPECT_EQ(s->mask_batch_stride, 15);
  EXPECT_EQ(s->mask_head_stride, 0);
  EXPECT_EQ(s->mask_row_stride, 5);
  EXPECT_EQ(s->mask_col_stride, 1);
  EXPECT_EQ(s->mask_bytes, 30 * 4);
  ASSERT_EQ(s->converted_mask.size(), 30u);
  uint16_t bits;
  std::memcpy(&bits, r.mask().data().data() + 2 * 7, 2);
  EXPECT_EQ(s->converted_mask[7], BFloat16ToFloat(bits));
  EXPECT_EQ(s->mask(), s->converted_mask.data());

  o.mask_dtype = v1::BOOL;
  o.mask_shape = {3, 1};  // broadcast over batch, heads and keys
  const v1::AttentionRequest b = MakeRequest(o, 2, rng);
  const absl::StatusOr<RequestSpec> sb = ValidateRequest(b, {});
  ASSERT_TRUE(sb.ok()) << sb.status();
  EXPECT_EQ(sb->mask_kind, MaskKind::kBool);
  EXPECT_EQ(sb->mask_batch_stride, 0);
  EXPECT_EQ(sb->mask_head_stride, 0);
  EXPECT_EQ(sb->mask_row_stride, 1);
  EXPECT_EQ(sb->mask_col_stride, 0);
  EXPECT_EQ(sb->mask(), b.mask().data().data());
}

TEST(ValidationTest, AlibiStrides) {
  std::mt19937 rng(4);
  RequestOptions o;
  o.batch = 3;
  o.alibi = 1;
  const v1::AttentionRequest per_head = MakeRequest(o, 1, rng);
  absl::StatusOr<RequestSpec> s = ValidateRequest(per_head, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->alibi_batch_stride, 0);
  o.alibi = 2;
  const v1::AttentionRequest per_sequence = MakeRequest(o, 2, rng);
  s = ValidateRequest(per_sequence, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->alibi_batch_stride, 4);
  EXPECT_EQ(s->queued_bytes(), s->q_bytes + 2 * s->kv_bytes + 3 * 4 * 4);
}

TEST(ValidationTest, SinksAndPrecisionJoinTheConfiguration) {
  std::mt19937 rng(5);
  RequestOptions o;
  o.dtype = v1::FLOAT32;
  o.sinks = true;
  v1::AttentionRequest r = MakeRequest(o, 1, rng);
  r.set_precision(v1::PRECISION_TF32);
  absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->sinks);
  EXPECT_EQ(s->sink_logits, reinterpret_cast<const float*>(r.sinks().data().data()));
  EXPECT_EQ(s->precision, Precision::kTF32);
  // Configurations that differ only in sinks or precision never share a launch.
  v1::AttentionRequest plain = r;
  plain.clear_sinks();
  plain.set_precision(v1::PRECISION_FULL);
  absl::StatusOr<RequestSpec> p = ValidateRequest(plain, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(static_cast<const KernelConfig&>(*s) == static_cast<const KernelConfig&>(*p));
  KernelConfig only_sinks = *p;
  only_sinks.sinks = true;
  EXPECT_FALSE(only_sinks == static_cast<const KernelConfig&>(*p));
  // 16-bit inputs are computed from their exact values whatever was asked: one bucket.
  o.dtype = v1::BFLOAT16;
  v1::AttentionRequest half = MakeRequest(o, 2, rng);
  half.set_precision(v1::PRECISION_BF16);
  absl::StatusOr<RequestSpec> h = ValidateRequest(half, {});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->precision, Precision::kFull);
}

}  // namespace
}  // namespace attention::server

namespace attention::server {
namespace {

// AllowedScores against counting every (row, key) pair, for every small shape and window.
TEST(ValidationTest, AllowedScoresCountsEveryAllowedPair) {
  for (int64_t len_q = 0; len_q <= 9; ++len_q) {
    for (int64_t len_k = 0; len_k <= 9; ++len_k) {
      for (int64_t left = -1; left <= 10; ++left) {
        for (int64_t right = -1; right <= 10; ++right) {
          int64_t want = 0;
          for (int64_t i = 0; i < len_q; ++i) {
            const int64_t p = i + len_k - len_q;
            for (int64_t j = 0; j < len_k; ++j) {
              want += (left < 0 || j >= p - left) && (right < 0 || j <= p + right);
            }
          }
          EXPECT_EQ(AllowedScores(len_q, len_k, left, right), static_cast<double>(want))
              << "len_q " << len_q << " len_k " << len_k << " window (" << left << ", " << right
              << ")";
        }
      }
    }
  }
  // Large and exact: causal square (n (n + 1) / 2) and a full rectangle, at 2^20 rows.
  const int64_t n = int64_t{1} << 20;
  EXPECT_EQ(AllowedScores(n, n, -1, 0), static_cast<double>(n) * (n + 1) / 2);
  EXPECT_EQ(AllowedScores(n, 2 * n, -1, -1), 2.0 * n * n);
  EXPECT_EQ(AllowedScores(n, n, 0, 0), static_cast<double>(n));
}

// The probe of issue 26: fp16, 131072 query and key rows, head_dim 1, one head, 786 KB on the
// wire. 4 flops per score would call it 69 GFLOP; it took 4.7 CPU-seconds, which the softmax
// term accounts for.
TEST(ValidationTest, RequestWorkOfTheHeadDimOneProbe) {
  RequestSpec s;
  s.batch = 1;
  s.seqlen_q = s.seqlen_k = 131072;
  s.q_heads = s.kv_heads = 1;
  s.head_dim = 1;
  EXPECT_EQ(RequestWork(s), 131072.0 * 131072.0 * (4 + kSoftmaxFlopsPerScore));
  // Causal: about half, plus up to kTileSlackKeys keys per row where the diagonal cuts tiles.
  s.causal = true;
  s.window_right = 0;
  const double causal = RequestWork(s) / (4 + kSoftmaxFlopsPerScore);
  EXPECT_EQ(causal, 131072.0 * 131073 / 2 + 131072.0 * kTileSlackKeys);
  // Packed sequences add up.
  const int32_t cu_q[3] = {0, 3, 3}, cu_k[3] = {0, 5, 9};
  RequestSpec p;
  p.packed = true;
  p.batch = 2;
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  p.q_heads = 2;
  p.kv_heads = 1;
  p.head_dim = 8;
  EXPECT_EQ(RequestWork(p), (3 * 5 + 0 * 4) * 2 * (4.0 * 8 + kSoftmaxFlopsPerScore));
}

// -inf drops a key and finite values up to 2^100 are biases: accepted as they are.
TEST(ValidationTest, AdditiveMaskAcceptsMinusInfinityAndLargeFiniteValues) {
  v1::AttentionRequest r = Dense();
  SetFloatMask(r, 0, -std::numeric_limits<float>::infinity());
  float* data = reinterpret_cast<float*>(r.mutable_mask()->mutable_data()->data());
  data[1] = -kMaxLogit;
  data[2] = kMaxLogit;
  const absl::StatusOr<RequestSpec> s = ValidateRequest(r, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->mask_kind, MaskKind::kAdditive);
  EXPECT_GT(s->work, 0);
}

}  // namespace
}  // namespace attention::server

namespace attention::server {
namespace {

// `forward` as a backward request: o and grad_o copies of q, lse zeros in the forward's shape.
v1::AttentionRequest AsBackward(v1::AttentionRequest r) {
  r.set_backward(true);
  *r.mutable_o() = r.q();
  *r.mutable_grad_o() = r.q();
  const bool packed = r.cu_seqlens_q_size() > 0;
  const int rank = r.q().shape_size();
  v1::Tensor* lse = r.mutable_lse();
  lse->set_dtype(v1::FLOAT32);
  if (!packed) lse->add_shape(r.q().shape(0));
  lse->add_shape(r.q().shape(rank - 2));
  lse->add_shape(packed ? r.q().shape(0) : r.q().shape(1));
  int64_t n = 1;
  for (int64_t d : lse->shape()) n *= d;
  lse->set_data(std::string(static_cast<size_t>(4 * n), '\0'));
  return r;
}

// A backward request is a kBackward spec of the forward's configuration, whose work counts 2.5x
// the forward's, whose answer is dq, dk and dv, and which queues o, grad_o and lse too.
TEST(ValidationTest, BackwardSpecCountsTwoAndAHalfForwards) {
  for (const v1::AttentionRequest& forward : {Dense(), Packed()}) {
    const absl::StatusOr<RequestSpec> f = ValidateRequest(forward, {});
    const v1::AttentionRequest backward_request = AsBackward(forward);
    const absl::StatusOr<RequestSpec> b = ValidateRequest(backward_request, {});
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->kind, WorkKind::kBackward);
    KernelConfig config = *b;
    config.kind = WorkKind::kForward;
    EXPECT_EQ(config, static_cast<const KernelConfig&>(*f));
    EXPECT_DOUBLE_EQ(b->work, 2.5 * f->work);
    EXPECT_DOUBLE_EQ(b->flops(), 2.5 * f->flops());
    EXPECT_FALSE(b->return_lse);
    EXPECT_EQ(b->lse_bytes, int64_t{b->q_heads} * b->total_q * 4);
    EXPECT_EQ(b->answer_bytes(), b->q_bytes + 2 * b->kv_bytes);
    EXPECT_EQ(b->queued_bytes(), f->queued_bytes() + 2 * b->q_bytes + b->lse_bytes);
    EXPECT_EQ(b->o_data, backward_request.o().data().data());
    EXPECT_EQ(b->grad_o_data, backward_request.grad_o().data().data());
    EXPECT_EQ(static_cast<const void*>(b->lse_data), backward_request.lse().data().data());
  }
}

// `deterministic` is a backward option: it splits a backward bucket and is dropped from a
// forward, which is always deterministic (so it does not split forward buckets).
TEST(ValidationTest, DeterministicIsABackwardOption) {
  v1::AttentionRequest forward = Dense();
  forward.set_deterministic(true);
  const absl::StatusOr<RequestSpec> f = ValidateRequest(forward, {});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_FALSE(f->deterministic);
  v1::AttentionRequest backward_request = AsBackward(Dense());
  const absl::StatusOr<RequestSpec> plain = ValidateRequest(backward_request, {});
  backward_request.set_deterministic(true);
  const absl::StatusOr<RequestSpec> exact = ValidateRequest(backward_request, {});
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_FALSE(plain->deterministic);
  EXPECT_TRUE(exact->deterministic);
  EXPECT_NE(static_cast<const KernelConfig&>(*plain), static_cast<const KernelConfig&>(*exact));
}

// The work limit counts the backward's 2.5x and says so.
TEST(ValidationTest, BackwardWorkLimitNamesTheFactor) {
  const v1::AttentionRequest forward = Dense();
  const absl::StatusOr<RequestSpec> f = ValidateRequest(forward, {});
  ASSERT_TRUE(f.ok());
  ValidationLimits limits;
  limits.max_request_work = 2 * f->work;
  EXPECT_TRUE(ValidateRequest(forward, limits).ok());
  const absl::StatusOr<RequestSpec> b = ValidateRequest(AsBackward(forward), limits);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("x 2.5 for the backward pass"));
}

}  // namespace
}  // namespace attention::server
