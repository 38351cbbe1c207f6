// Host-side logic of the FP8 (E4M3) kernel (kernels/cuda/flash_fwd_fp8.h), on the CPU: the V^T
// workspace layout (the key order that matches P's fragments, sequences' columns that never
// overlap, the workspace size) and the refusals of CheckFp8Config / CheckFlashFwdFp8, which name
// the rule.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp8.h"
#include "kernels/cuda/flash_fwd_fp8_launch.h"

namespace attention::cuda {
namespace {

// Lane t of a quad holds the S accumulator columns 2 t, 2 t + 1, 8 + 2 t, 9 + 2 t of every 16
// keys; the k32 A fragment reads its registers as columns 4 t .. 4 t + 3: V^T position 4 t + i
// must hold the key of the accumulator P's byte i came from.
TEST(Fp8VtLayout, KeyOrderMatchesTheAccumulatorLayout) {
  for (int group = 0; group < 4; ++group) {
    std::vector<int> seen(16, 0);
    for (int t = 0; t < 4; ++t) {
      const int base = 16 * group + 4 * t;
      EXPECT_EQ(Fp8VtKeyAt(base), 16 * group + 2 * t);
      EXPECT_EQ(Fp8VtKeyAt(base + 1), 16 * group + 2 * t + 1);
      EXPECT_EQ(Fp8VtKeyAt(base + 2), 16 * group + 8 + 2 * t);
      EXPECT_EQ(Fp8VtKeyAt(base + 3), 16 * group + 9 + 2 * t);
      for (int i = 0; i < 4; ++i) ++seen[Fp8VtKeyAt(base + i) - 16 * group];
    }
    for (int key = 0; key < 16; ++key) EXPECT_EQ(seen[key], 1) << "group " << group;
  }
}

// Random packed batches: every sequence's written columns (its keys and the zero tail, 16-aligned)
// lie inside the workspace, after the previous sequence's, and cover every column a KV tile of up
// to 256 keys reads.
TEST(Fp8VtLayout, SequencesNeverShareColumns) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> len(0, 700);
  for (int trial = 0; trial < 200; ++trial) {
    const int batch = 1 + trial % 9;
    std::vector<int64_t> starts(batch + 1, 0);
    for (int b = 0; b < batch; ++b) starts[b + 1] = starts[b] + len(rng);
    const int64_t cols = Fp8VtColumns(starts[batch], batch);
    EXPECT_EQ(cols % 16, 0);
    int64_t previous_end = 0;
    for (int b = 0; b < batch; ++b) {
      const int64_t n = starts[b + 1] - starts[b];
      const int64_t first = Fp8VtColumn(b, starts[b]);
      const int64_t end = first + Fp8VtWritten(n);
      EXPECT_EQ(first % 16, 0);
      EXPECT_GE(first, previous_end) << "trial " << trial << " sequence " << b;
      EXPECT_LE(end, cols) << "trial " << trial << " sequence " << b;
      const int64_t tiles = (n + 255) / 256;
      EXPECT_LE(first + tiles * 256, end) << "a 256-key tile reads past the written columns";
      previous_end = end;
    }
  }
}

AttentionParams Fp8Params(int head_dim = 128) {
  AttentionParams p;
  p.dtype = DType::kFloat8E4M3;
  p.head_dim = head_dim;
  p.q_heads = 4;
  p.kv_heads = 2;
  p.softmax_scale = 0.125f;
  p.batch = 3;
  p.seqlen_q = 100;
  p.seqlen_k = 300;
  SetContiguousStrides(p);
  return p;
}

TEST(Fp8Workspace, HoldsVtOfEveryKvHead) {
  const AttentionParams p = Fp8Params();
  const int64_t cols = Fp8VtColumns(3 * 300, 3);
  EXPECT_EQ(Fp8WorkspaceBytes(p), static_cast<size_t>((2 * 128 * cols + 255) / 256 * 256));
  AttentionParams empty = p;
  empty.batch = 0;
  EXPECT_EQ(Fp8WorkspaceBytes(empty), 0u);
}

bool Names(const absl::Status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

// A head dim whose FP8 bucket this build compiles (CI's build has 64 and 256, not 128), so that
// the refusals below are the rule under test rather than the missing bucket; 0 when none is.
// (CheckFlashFwdFp8 asks for a Hopper device last, so without one no launch check is OK.)
int CompiledFp8HeadDim() {
  for (const int d : {128, 64, 256}) {
    if (!Names(CheckFlashFwdFp8(Fp8Params(d)), "is not compiled")) return d;
  }
  return 0;
}

TEST(Fp8Checks, ConfigRefusalsNameTheRule) {
  KernelConfig c = Fp8Params();
  const absl::Status routed = CheckFp8Config(c);
  if (!Fp8KernelRouted()) {
    EXPECT_EQ(routed.code(), absl::StatusCode::kUnimplemented);
    EXPECT_TRUE(Names(routed, "kRouteFp8Kernel")) << routed;
    return;
  }
  if (!Fp8KernelCompiled()) {
    EXPECT_TRUE(Names(routed, "ATTN_KERNEL_DTYPES")) << routed;
    return;
  }
  const int d = CompiledFp8HeadDim();
  ASSERT_NE(d, 0) << "no FP8 bucket passes CheckFlashFwdFp8 in a build that compiles the kernel";
  c.head_dim = 72;
  EXPECT_TRUE(Names(CheckFp8Config(c), "multiple of 16")) << CheckFp8Config(c);
  c.head_dim = d;
  c.alibi = true;
  EXPECT_TRUE(Names(CheckFp8Config(c), "ALiBi")) << CheckFp8Config(c);
  c.alibi = false;
  c.window_left = 16;
  EXPECT_TRUE(Names(CheckFp8Config(c), "window")) << CheckFp8Config(c);
  c.causal = true;  // causal with a left window too
  EXPECT_TRUE(Names(CheckFp8Config(c), "window")) << CheckFp8Config(c);
  c.causal = false;
  c.window_left = -1;
  c.kind = WorkKind::kBackward;
  EXPECT_TRUE(Names(CheckFp8Config(c), "forward only")) << CheckFp8Config(c);
}

TEST(Fp8Checks, LaunchRefusalsNameTheRule) {
  AttentionParams p = Fp8Params();
  if (!Fp8KernelCompiled()) {
    EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "not in this build")) << CheckFlashFwdFp8(p);
    return;
  }
  const int d = CompiledFp8HeadDim();
  ASSERT_NE(d, 0) << "no FP8 bucket passes CheckFlashFwdFp8 in a build that compiles the kernel";
  p.head_dim = 72;
  EXPECT_EQ(CheckFlashFwdFp8(p).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "head_dim 72")) << CheckFlashFwdFp8(p);
  p = Fp8Params(d);
  p.k_row_stride += 8;  // a multiple of 8, not of 16
  EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "multiples of 16")) << CheckFlashFwdFp8(p);
  p = Fp8Params(d);
  p.dtype = DType::kBFloat16;
  EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "kFloat8E4M3")) << CheckFlashFwdFp8(p);
  p = Fp8Params(d);
  p.window_left = 8;
  EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "causal")) << CheckFlashFwdFp8(p);
  p = Fp8Params(d);
  p.batch = 40000;
  EXPECT_TRUE(Names(CheckFlashFwdFp8(p), "65535")) << CheckFlashFwdFp8(p);
}

}  // namespace
}  // namespace attention::cuda
