// KernelConfig: every field takes part in == and in the hash (the batcher's bucket key), so two
// requests that differ in any of them never share a launch.
#include "kernels/kernel_config.h"

#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "gtest/gtest.h"

namespace attention {
namespace {

KernelConfig Base() {
  KernelConfig c;
  c.dtype = DType::kBFloat16;
  c.head_dim = 64;
  c.q_heads = 8;
  c.kv_heads = 2;
  c.softmax_scale = 0.125f;
  return c;
}

TEST(KernelConfigTest, EveryFieldSplitsTheBucket) {
  const std::vector<std::pair<std::string, std::function<void(KernelConfig&)>>> changes = {
      {"kind", [](KernelConfig& c) { c.kind = WorkKind::kPagedDecode; }},
      {"dtype", [](KernelConfig& c) { c.dtype = DType::kFloat16; }},
      {"precision", [](KernelConfig& c) { c.precision = Precision::kTF32; }},
      {"head_dim", [](KernelConfig& c) { c.head_dim = 128; }},
      {"q_heads", [](KernelConfig& c) { c.q_heads = 4; }},
      {"kv_heads", [](KernelConfig& c) { c.kv_heads = 1; }},
      {"softmax_scale", [](KernelConfig& c) { c.softmax_scale = 0.5f; }},
      {"softcap", [](KernelConfig& c) { c.softcap = 30.f; }},
      {"causal", [](KernelConfig& c) { c.causal = true; }},
      {"window_left", [](KernelConfig& c) { c.window_left = 16; }},
      {"window_right", [](KernelConfig& c) { c.window_right = 16; }},
      {"alibi", [](KernelConfig& c) { c.alibi = true; }},
      {"sinks", [](KernelConfig& c) { c.sinks = true; }},
      {"mask_kind", [](KernelConfig& c) { c.mask_kind = MaskKind::kBool; }},
      {"deterministic", [](KernelConfig& c) { c.deterministic = true; }},
      {"device", [](KernelConfig& c) { c.device = 1; }},
  };
  // Tie() lists every field: one change per field of the struct.
  EXPECT_EQ(std::tuple_size<decltype(Base().Tie())>::value, changes.size());
  const KernelConfig base = Base();
  const size_t base_hash = absl::Hash<KernelConfig>()(base);
  for (const auto& [name, change] : changes) {
    KernelConfig other = base;
    change(other);
    EXPECT_FALSE(other == base) << name;
    EXPECT_TRUE(other != base) << name;
    EXPECT_NE(absl::Hash<KernelConfig>()(other), base_hash) << name;
  }
  KernelConfig same = base;
  EXPECT_TRUE(same == base);
  EXPECT_EQ(absl::Hash<KernelConfig>()(same), base_hash);
}

TEST(KernelConfigTest, NormalizeFoldsCausalIntoTheWindow) {
  KernelConfig c = Base();
  c.causal = true;
  c.window_right = 7;
  Normalize(c);
  EXPECT_EQ(c.window_right, 0);
  KernelConfig w = Base();
  w.window_right = 0;
  Normalize(w);
  EXPECT_TRUE(w.causal);
}

TEST(KernelConfigTest, DTypeSizes) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4);
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2);
  EXPECT_EQ(DTypeSize(DType::kFloat8E4M3), 1);
  // o's type: the input's, bfloat16 for FP8.
  EXPECT_EQ(OutputDType(DType::kFloat8E4M3), DType::kBFloat16);
  EXPECT_EQ(OutputDType(DType::kFloat16), DType::kFloat16);
  EXPECT_EQ(OutputDType(DType::kFloat32), DType::kFloat32);
}

}  // namespace
}  // namespace attention
