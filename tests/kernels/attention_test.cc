// CheckParams: a valid dense and a valid packed params pass; each structural rule, broken alone,
// gives INVALID_ARGUMENT naming the field.
#include "kernels/attention.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/attention_params.h"

namespace attention {
namespace {

// Pointers are never read by CheckParams: any non-null address will do.
float dummy[4];
const int32_t cu_q[] = {0, 3, 7};
const int32_t cu_k[] = {0, 5, 11};

AttentionParams Dense() {
  AttentionParams p;
  p.dtype = DType::kFloat16;
  p.q = p.k = p.v = dummy;
  p.o = dummy;
  p.batch = 2;
  p.seqlen_q = 3;
  p.seqlen_k = 5;
  p.q_heads = 8;
  p.kv_heads = 2;
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  SetContiguousStrides(p);
  return p;
}

AttentionParams Packed() {
  AttentionParams p = Dense();
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  p.total_q = 7;
  p.total_k = 11;
  p.seqlen_q = 4;
  p.seqlen_k = 6;
  SetContiguousStrides(p);
  p.lse = dummy;
  return p;
}

// Three sequences of 1, 4 and 2 query rows (packed) against paged contexts of 16-row pages.
AttentionParams Paged() {
  static const int32_t cu_q[] = {0, 1, 5, 7};
  static const int32_t table[] = {3, 0, 1, 2, 5, 4};
  static const int32_t lens[] = {20, 0, 31};
  AttentionParams p = Packed();
  p.cu_seqlens_q = cu_q;
  p.total_q = 7;
  p.cu_seqlens_k = nullptr;
  p.total_k = 0;
  p.seqlen_k = 31;
  p.page_table = table;
  p.page_table_stride = 2;
  p.page_size = 16;
  p.seqlens_k = lens;
  p.k_batch_stride = p.v_batch_stride = 16 * p.k_row_stride;
  return p;
}

TEST(CheckParams, AcceptsValidParams) {
  EXPECT_TRUE(CheckParams(Dense()).ok());
  EXPECT_TRUE(CheckParams(Packed()).ok());
  AttentionParams p = Dense();
  p.lse = dummy;
  p.causal = true;
  p.window_left = 0;
  p.window_right = -1;
  p.softcap = 30.f;
  p.alibi = true;
  p.alibi_slopes = dummy;
  p.alibi_batch_stride = 8;
  p.sinks = true;
  p.sink_logits = dummy;
  p.mask_kind = MaskKind::kBool;
  p.mask = dummy;
  p.mask_row_stride = 5;
  p.mask_col_stride = 1;
  EXPECT_TRUE(CheckParams(p).ok()) << CheckParams(p);
  p.kv_heads = 1;  // MQA
  p.k_head_stride = p.v_head_stride = 0;
  EXPECT_TRUE(CheckParams(p).ok()) << CheckParams(p);
  EXPECT_TRUE(CheckParams(Paged()).ok()) << CheckParams(Paged());
  AttentionParams empty = Paged();  // every context empty: a session before its first append
  empty.seqlen_k = 0;
  EXPECT_TRUE(CheckParams(empty).ok()) << CheckParams(empty);
}

struct Breakage {
  std::string field;  // must appear in the message
  std::function<void(AttentionParams&)> apply;
  bool packed = false;
  bool paged = false;
};

TEST(CheckParams, RejectsEachBrokenRule) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Breakage> cases = {
      {"dtype", [](AttentionParams& p) { p.dtype = static_cast<DType>(7); }},
      {"batch", [](AttentionParams& p) { p.batch = 0; }},
      {"seqlen_q", [](AttentionParams& p) { p.seqlen_q = -1; }},
      {"seqlen_k", [](AttentionParams& p) { p.seqlen_k = 0; }},
      {"q_heads", [](AttentionParams& p) { p.q_heads = 0; }},
      {"kv_heads", [](AttentionParams& p) { p.kv_heads = 0; }},
      {"head_dim", [](AttentionParams& p) { p.head_dim = 0; }},
      {"q_heads", [](AttentionParams& p) { p.kv_heads = 3; }},
      {"q", [](AttentionParams& p) { p.q = nullptr; }},
      {"k", [](AttentionParams& p) { p.k = nullptr; }},
      {"v", [](AttentionParams& p) { p.v = nullptr; }},
      {"o", [](AttentionParams& p) { p.o = nullptr; }},
      {"q_row_stride", [](AttentionParams& p) { p.q_row_stride = 0; }},
      {"k_head_stride", [](AttentionParams& p) { p.k_head_stride = 0; }},
      {"v_head_stride", [](AttentionParams& p) { p.v_head_stride = -64; }},
      {"o_batch_stride", [](AttentionParams& p) { p.o_batch_stride = 0; }},
      {"lse_head_stride",
       [](AttentionParams& p) {
         p.lse = dummy;
         p.lse_head_stride = 0;
       }},
      {"lse_batch_stride",
       [](AttentionParams& p) {
         p.lse = dummy;
         p.lse_batch_stride = -1;
       }},
      {"window_left", [](AttentionParams& p) { p.window_left = -2; }},
      {"window_right", [](AttentionParams& p) { p.window_right = -5; }},
      {"softmax_scale", [inf](AttentionParams& p) { p.softmax_scale = inf; }},
      {"softmax_scale", [](AttentionParams& p) { p.softmax_scale = std::nanf(""); }},
      {"softcap", [](AttentionParams& p) { p.softcap = -1.f; }},
      {"softcap", [inf](AttentionParams& p) { p.softcap = inf; }},
      {"softcap", [](AttentionParams& p) { p.softcap = std::nanf(""); }},
      {"alibi_batch_stride",
       [](AttentionParams& p) {
         p.alibi = true;
         p.alibi_slopes = dummy;
         p.alibi_batch_stride = -8;
       }},
      {"alibi_slopes", [](AttentionParams& p) { p.alibi_slopes = dummy; }},
      {"alibi_slopes", [](AttentionParams& p) { p.alibi = true; }},
      {"sink_logits", [](AttentionParams& p) { p.sinks = true; }},
      {"sink_logits", [](AttentionParams& p) { p.sink_logits = dummy; }},
      {"sink_batch_stride",
       [](AttentionParams& p) {
         p.sinks = true;
         p.sink_logits = dummy;
         p.sink_batch_stride = -1;
       }},
      {"kind", [](AttentionParams& p) { p.kind = static_cast<WorkKind>(9); }},
      {"precision", [](AttentionParams& p) { p.precision = static_cast<Precision>(9); }},
      {"head_dim", [](AttentionParams& p) { p.head_dim = kMaxHeadDim + 8; }},
      {"key_range", [](AttentionParams& p) { p.key_range = reinterpret_cast<const int32_t*>(dummy); }},
      {"mask", [](AttentionParams& p) { p.mask = dummy; }},
      {"mask", [](AttentionParams& p) { p.mask_kind = MaskKind::kAdditive; }},
      {"mask_kind", [](AttentionParams& p) { p.mask_kind = static_cast<MaskKind>(9); }},
      {"mask_row_stride",
       [](AttentionParams& p) {
         p.mask_kind = MaskKind::kBool;
         p.mask = dummy;
         p.mask_row_stride = -1;
       }},
      {"cu_seqlens_k", [](AttentionParams& p) { p.cu_seqlens_k = nullptr; }, true},
      {"total_q", [](AttentionParams& p) { p.total_q = 0; }, true},
      {"q_batch_stride", [](AttentionParams& p) { p.q_batch_stride = 100; }, true},
      {"lse_batch_stride", [](AttentionParams& p) { p.lse_batch_stride = 8; }, true},
      {"page_size", [](AttentionParams& p) { p.page_size = 0; }, false, true},
      {"seqlens_k", [](AttentionParams& p) { p.seqlens_k = nullptr; }, false, true},
      {"cu_seqlens_k",
       [](AttentionParams& p) { p.cu_seqlens_k = reinterpret_cast<const int32_t*>(dummy); },
       false, true},
      {"page_table_stride", [](AttentionParams& p) { p.page_table_stride = 0; }, false, true},
      {"k_batch_stride", [](AttentionParams& p) { p.k_batch_stride = 0; }, false, true},
      {"seqlen_k", [](AttentionParams& p) { p.seqlen_k = -1; }, false, true},
  };
  for (const Breakage& b : cases) {
    AttentionParams p = b.paged ? Paged() : b.packed ? Packed() : Dense();
    b.apply(p);
    const absl::Status s = CheckParams(p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.field << ": " << s;
    EXPECT_NE(s.message().find(b.field), std::string::npos) << b.field << ": " << s;
  }
}

}  // namespace
}  // namespace attention
