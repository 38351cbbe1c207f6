// The float32 kernel's device code (kernels/cuda/flash_fwd_fp32_kernel.cuh), compiled by the host
// compiler and run on the CPU by the warp emulator (emulation/warp_emulator.h), against the
// float64 reference. Runs anywhere (label cpu), so CI, which has no GPU, executes the kernel's
// indexing, fragment layouts, masks, online softmax, sinks and barrier order; the GPU test
// (attention_fp32_test) covers the hardware itself, many more shapes, and the sanitizers.
//
// Shapes are small (every block runs as 128 or 256 fibers), one per tile configuration of
// DefaultFp32TileConfig and per code path: both variants, both precisions, one and two K/V
// stages, the two tile-copy paths (head-dim buckets whose row of 16-byte chunks divides the
// threads, and 96 / 160, whose does not), packed batches, windows, masks, ALiBi, softcap, sinks.
#include "warp_emulator.h"  // before the kernel: it provides what nvcc would

// clang-format off
#include "kernels/cuda/flash_fwd_fp32_kernel.cuh"
// clang-format on

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_fwd_fp32_traits.h"
#include "tests/kernels/cuda/sinks_reference.h"
#include "tests/reference/reference_attention.h"

// The kernel's `extern __shared__` array.
namespace attention::cuda::fp32 {
alignas(1024) unsigned char smem[emu::kSmemBytes];
}  // namespace attention::cuda::fp32

namespace attention::cuda {
namespace {

// Blocks of an emulated persistent grid (kFp32Persistent): fewer than the cases' tiles, so that
// every block walks several of them, in both directions of the snake.
constexpr unsigned kPersistentBlocks = 3;

// Runs the kernel with DefaultFp32TileConfig(kHeadDim)'s tiles and the code-shape options
// `kOptions` over its whole grid, one block at a time, shared memory poisoned with NaN before each
// block (every element the kernel reads must have been written or zero-filled by it).
template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision, int kOptions>
void LaunchEmulatedWith(const AttentionParams& p) {
  constexpr Fp32TileConfig t = DefaultFp32TileConfig(kHeadDim);
  using Traits =
      Fp32FwdTraits<kHeadDim, t.block_m, t.block_n, t.warps, t.stages, t.blocks_per_sm, kOptions>;
  const dim3 grid = Traits::kPersistent
                        ? dim3(kPersistentBlocks)
                        : dim3((p.seqlen_q + t.block_m - 1) / t.block_m, p.q_heads, p.batch);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(fp32::smem, 0xff, sizeof(fp32::smem));
        emu::RunBlock(grid, dim3(x, y, z), Traits::kNThreads, fp32::smem,
                      [&p] { fp32::FlashFwdFp32Kernel<Traits, kVariant, kPrecision>(p); });
      }
    }
  }
}

// The configuration the dispatch launches.
template <int kHeadDim, Fp32Variant kVariant, Precision kPrecision>
void LaunchEmulated(const AttentionParams& p) {
  LaunchEmulatedWith<kHeadDim, kVariant, kPrecision, DefaultFp32TileConfig(kHeadDim).options>(p);
}

struct Case {
  explicit Case(std::string case_name) : name(std::move(case_name)) {}
  std::string name;
  int batch = 1, seqlen_q = 16, seqlen_k = 16, q_heads = 2, kv_heads = 2, head_dim = 64;
  std::vector<int> lens_q, lens_k;  // packed batch when set
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.f;
  float scale = 0.f;  // 0: 1 / sqrt(head_dim)
  bool alibi = false;
  bool additive_mask = false;
  bool bool_mask = false;
  bool sinks = false;
};

// `launch` runs the kernel of the case's bucket, variant and precision.
using Launcher = void (*)(const AttentionParams&);

void RunCase(const Case& c, Precision precision, Launcher launch) {
  SCOPED_TRACE(c.name + (precision == Precision::kFull ? " FULL" : " TF32"));
  std::mt19937_64 rng(std::hash<std::string>()(c.name));
  std::normal_distribution<float> normal(0.f, 1.f);
  const bool varlen = !c.lens_q.empty();
  AttentionParams p;
  p.dtype = DType::kFloat32;
  p.precision = precision;
  p.batch = varlen ? static_cast<int>(c.lens_q.size()) : c.batch;
  p.q_heads = c.q_heads;
  p.kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.softcap = c.softcap;
  p.softmax_scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<int32_t> cu_q{0}, cu_k{0};
  if (varlen) {
    for (size_t b = 0; b < c.lens_q.size(); ++b) {
      cu_q.push_back(cu_q.back() + c.lens_q[b]);
      cu_k.push_back(cu_k.back() + c.lens_k[b]);
    }
    p.seqlen_q = *std::max_element(c.lens_q.begin(), c.lens_q.end());
    p.seqlen_k = *std::max_element(c.lens_k.begin(), c.lens_k.end());
    p.total_q = cu_q.back();
    p.total_k = cu_k.back();
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
  } else {
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = c.seqlen_k;
  }
  SetContiguousStrides(p);
  const int64_t rows_q = varlen ? p.total_q : int64_t{p.batch} * p.seqlen_q;
  const int64_t rows_k = varlen ? p.total_k : int64_t{p.batch} * p.seqlen_k;
  const int64_t d = c.head_dim;
  // 16-byte aligned buffers, as the host API requires of float32 tensors.
  const auto random = [&](int64_t n) {
    std::vector<float> x(n + 4);
    for (float& e : x) e = normal(rng);
    return x;
  };
  std::vector<float> q = random(rows_q * c.q_heads * d), k = random(rows_k * c.kv_heads * d),
                     v = random(rows_k * c.kv_heads * d);
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  std::vector<float> slopes, sinks, mask_add;
  std::vector<uint8_t> mask_bool;
  if (c.alibi) {
    slopes.resize(p.batch * c.q_heads);
    for (float& s : slopes) s = 0.05f + 0.1f * std::abs(normal(rng));
    p.alibi_slopes = slopes.data();
    p.alibi_batch_stride = c.q_heads;
    p.alibi = true;
  }
  if (c.sinks) {
    sinks.resize(p.batch * c.q_heads);
    for (size_t i = 0; i < sinks.size(); ++i) sinks[i] = i % 3 == 0 ? 12.f : normal(rng);
    p.sink_logits = sinks.data();
    p.sink_batch_stride = c.q_heads;
    p.sinks = true;
  }
  if (c.additive_mask || c.bool_mask) {
    // [seqlen_q, seqlen_k] shared by every sequence and head (broadcast strides).
    p.mask_row_stride = p.seqlen_k;
    p.mask_col_stride = 1;
    const int64_t count = int64_t{p.seqlen_q} * p.seqlen_k;
    if (c.additive_mask) {
      mask_add.resize(count);
      for (size_t i = 0; i < mask_add.size(); ++i) {
        mask_add[i] = i % 17 == 0 ? -INFINITY : normal(rng);
      }
      p.mask_kind = MaskKind::kAdditive;
      p.mask = mask_add.data();
    } else {
      mask_bool.resize(count);
      for (size_t i = 0; i < mask_bool.size(); ++i) mask_bool[i] = i % 4 != 0;
      p.mask_kind = MaskKind::kBool;
      p.mask = mask_bool.data();
    }
  }

  const int64_t o_count = rows_q * c.q_heads * d;
  const int64_t lse_count = rows_q * c.q_heads;
  std::vector<double> ref_o(o_count), ref_lse(lse_count);
  AttentionParams r = p;
  r.sinks = false;
  r.sink_logits = nullptr;
  testing::ReferenceAttention(r, ref_o.data(), ref_lse.data());
  if (c.sinks) testing::ApplySinks(p, sinks, ref_o.data(), ref_lse.data());

  std::vector<float> o(o_count + 4, NAN), lse(lse_count + 4, NAN);
  p.o = o.data();
  p.lse = lse.data();
  AttentionParams n = p;
  Normalize(n);
  ClampWindow(n.seqlen_q, n.seqlen_k, n.window_left, n.window_right);
  launch(n);

  double max_err = 0.0, ref_max = 0.0, err2 = 0.0, ref2 = 0.0, lse_err = 0.0;
  for (int64_t i = 0; i < o_count; ++i) {
    ASSERT_TRUE(std::isfinite(o[i])) << "o[" << i << "] not written or not finite";
    max_err = std::max(max_err, std::abs(o[i] - ref_o[i]));
    ref_max = std::max(ref_max, std::abs(ref_o[i]));
    err2 += (o[i] - ref_o[i]) * (o[i] - ref_o[i]);
    ref2 += ref_o[i] * ref_o[i];
  }
  for (int64_t i = o_count; i < o_count + 4; ++i) ASSERT_TRUE(std::isnan(o[i])) << "past o";
  for (int64_t i = 0; i < lse_count; ++i) {
    if (std::isinf(ref_lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse[" << i << "] = " << lse[i];
    } else {
      lse_err = std::max(lse_err, std::abs(lse[i] - ref_lse[i]) / (1.0 + std::abs(ref_lse[i])));
    }
  }
  for (int64_t i = lse_count; i < lse_count + 4; ++i) ASSERT_TRUE(std::isnan(lse[i])) << "past lse";
  const double rel_fro = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  std::printf("  %-24s %s  max_abs/max|o| %.2e  rel_fro %.2e  lse_rel %.2e\n", c.name.c_str(),
              precision == Precision::kFull ? "FULL" : "TF32", max_err / ref_max, rel_fro, lse_err);
  if (precision == Precision::kFull) {
    EXPECT_LE(max_err, 1e-5 * ref_max);
    EXPECT_LE(lse_err, 1e-5);
  } else {
    EXPECT_LT(rel_fro, 2e-3);
    EXPECT_LE(lse_err, 2e-3);
  }
}

template <int kHeadDim, Fp32Variant kVariant>
void RunBoth(const Case& c) {
  RunCase(c, Precision::kFull, &LaunchEmulated<kHeadDim, kVariant, Precision::kFull>);
  RunCase(c, Precision::kTF32, &LaunchEmulated<kHeadDim, kVariant, Precision::kTF32>);
}

// One precision with explicit code-shape options (FULL: the options change no arithmetic, so
// TF32 adds nothing they could break).
template <int kHeadDim, Fp32Variant kVariant, int kOptions>
void RunWithOptions(const Case& c) {
  RunCase(c, Precision::kFull, &LaunchEmulatedWith<kHeadDim, kVariant, Precision::kFull, kOptions>);
}

// Bucket 64 (128 x 32 tiles, 4 warps of 32 rows, two stages): issue 24's first case, causal
// bottom-right with GQA.
TEST(Fp32KernelEmulationTest, CausalGqaTwoStages) {
  Case c("issue_causal_gqa");
  c.seqlen_q = 37;
  c.seqlen_k = 53;
  c.q_heads = 4;
  c.kv_heads = 2;
  c.head_dim = 40;
  c.causal = true;
  RunBoth<64, Fp32Variant::kPlain>(c);
}

// Bucket 64: more K/V tiles than stages, a window with both sides (masked, unmasked and masked
// again tiles), rows whose window holds no key.
TEST(Fp32KernelEmulationTest, SlidingWindowManyTiles) {
  Case c("window_many_tiles");
  c.seqlen_q = 20;
  c.seqlen_k = 200;
  c.q_heads = c.kv_heads = 1;
  c.head_dim = 64;
  c.window_left = 100;
  c.window_right = 30;
  RunBoth<64, Fp32Variant::kPlain>(c);
}

// Bucket 32 (128 x 64 tiles): issue 24's second and third cases, an additive mask at scale 0.3
// (general variant) and head_dim 8 with two keys.
TEST(Fp32KernelEmulationTest, AdditiveMaskAndTinyHeadDim) {
  Case m("issue_additive_mask");
  m.seqlen_q = 20;
  m.seqlen_k = 70;
  m.head_dim = 32;
  m.scale = 0.3f;
  m.additive_mask = true;
  RunBoth<32, Fp32Variant::kGeneral>(m);
  Case t("issue_tiny");
  t.batch = 2;
  t.seqlen_q = 3;
  t.seqlen_k = 2;
  t.head_dim = 8;
  RunBoth<32, Fp32Variant::kPlain>(t);
}

// Bucket 128 (128 x 32 tiles, 32-row warps, one stage): sinks per (sequence, head), causal with
// more queries than keys (rows with no key: o = 0, lse = the sink).
TEST(Fp32KernelEmulationTest, SinksCausalOneStage) {
  Case c("sinks_causal_q_gt_k");
  c.batch = 2;
  c.seqlen_q = 50;
  c.seqlen_k = 20;
  c.q_heads = 2;
  c.kv_heads = 1;
  c.head_dim = 128;
  c.causal = true;
  c.sinks = true;
  RunBoth<128, Fp32Variant::kPlain>(c);
}

// Bucket 96 (24 chunks per row: the general copy path): a packed batch with an empty sequence,
// ALiBi and softcap (general variant).
TEST(Fp32KernelEmulationTest, VarlenAlibiSoftcapGeneralCopies) {
  Case c("varlen_alibi_softcap");
  c.head_dim = 96;
  c.lens_q = {33, 0, 20};
  c.lens_k = {50, 7, 90};
  c.alibi = true;
  c.softcap = 3.f;
  RunBoth<96, Fp32Variant::kGeneral>(c);
}

// Long contexts, where the GPU run of 2026-12-06 missed the bound (3.1e-5 at one query and 3000
// keys): the tensor cores round each MMA's sum toward zero, so P V may not run into one
// accumulator across every K/V tile. Both buckets have 32-key tiles (94 and 32 of them here).
TEST(Fp32KernelEmulationTest, LongContextsKeepFloat32Accuracy) {
  Case one("one_query_3000_keys");
  one.seqlen_q = 1;
  one.seqlen_k = 3000;
  one.q_heads = one.kv_heads = 1;
  one.head_dim = 64;
  RunBoth<64, Fp32Variant::kPlain>(one);
  Case many("17_queries_1000_keys");
  many.seqlen_q = 17;
  many.seqlen_k = 1000;
  many.q_heads = many.kv_heads = 1;
  many.head_dim = 128;
  RunBoth<128, Fp32Variant::kPlain>(many);
}

// Buckets 160 and 256 (8 warps of 16 rows, 32-key tiles, one stage): a bool mask with sinks at
// 256, plain at 160 (40 chunks per row: the general copy path with 256 threads).
TEST(Fp32KernelEmulationTest, EightWarpBuckets) {
  Case m("d256_bool_mask_sinks");
  m.seqlen_q = 24;
  m.seqlen_k = 40;
  m.head_dim = 256;
  m.bool_mask = true;
  m.sinks = true;
  RunBoth<256, Fp32Variant::kGeneral>(m);
  Case p("d160_plain");
  p.seqlen_q = 20;
  p.seqlen_k = 45;
  p.q_heads = p.kv_heads = 1;
  p.head_dim = 152;
  RunBoth<160, Fp32Variant::kPlain>(p);
  // Every warp of the 8 holds rows, causal (masked diagonal tiles), and a ragged second query
  // tile.
  Case w("d160_causal_all_warps");
  w.seqlen_q = 136;
  w.seqlen_k = 150;
  w.q_heads = w.kv_heads = 1;
  w.head_dim = 160;
  w.causal = true;
  RunBoth<160, Fp32Variant::kPlain>(w);
}

// The code-shape options of bucket 256 (Fp32KernelOption): one loop body with the mask at run
// time, the rolled Q K^T loop, persistent blocks. Causal with two query tiles (diagonal tiles
// masked, the rest not); a packed batch whose middle sequence is empty and whose causal rows past
// their keys attend to nothing, with sinks, so that a persistent block passes empty tiles and
// rows on its way.
TEST(Fp32KernelEmulationTest, KernelOptionsBucket256) {
  Case causal("d256_options_causal");
  causal.seqlen_q = 200;
  causal.seqlen_k = 230;
  causal.q_heads = 2;
  causal.kv_heads = 1;
  causal.head_dim = 256;
  causal.causal = true;
  Case varlen("d256_options_varlen_sinks");
  varlen.head_dim = 256;
  varlen.q_heads = varlen.kv_heads = 1;
  varlen.lens_q = {150, 0, 40, 9};
  varlen.lens_k = {130, 5, 60, 0};
  varlen.causal = true;
  varlen.sinks = true;
  for (const Case* c : {&causal, &varlen}) {
    RunWithOptions<256, Fp32Variant::kPlain, kFp32OneBody>(*c);
    RunWithOptions<256, Fp32Variant::kPlain, kFp32Persistent>(*c);
    RunWithOptions<256, Fp32Variant::kPlain, kFp32OneBody | kFp32RolledQk | kFp32Persistent>(*c);
  }
  Case window("d256_options_window_general");
  window.seqlen_q = 140;
  window.seqlen_k = 260;
  window.q_heads = window.kv_heads = 1;
  window.head_dim = 256;
  window.window_left = 90;
  window.window_right = 20;
  window.softcap = 5.f;
  RunWithOptions<256, Fp32Variant::kGeneral, kFp32OneBody | kFp32Persistent>(window);
  // The plain variant (no softcap): masked, unmasked and masked again tiles in one body.
  window.name = "d256_options_window_plain";
  window.softcap = 0.f;
  RunWithOptions<256, Fp32Variant::kPlain, kFp32OneBody | kFp32RolledQk | kFp32Persistent>(window);
}

}  // namespace
}  // namespace attention::cuda
