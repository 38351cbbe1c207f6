// Host-side tests of the decode kernel's plan (runs anywhere, no GPU): the keys a block visits, the
// tiles of each split and the pages a split reads against brute-force scans, the split heuristic
// on the issue's decode grid and its invariants over a sweep of workloads, the shared-memory
// table, the variants' table and workspace, and the configuration checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/decode_block_info.h"
#include "kernels/cuda/decode_heuristics.h"
#include "kernels/cuda/flash_decode.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/kernel_config.h"

namespace attention::cuda {
namespace {

// Brute force: is key j allowed for row i (attention_params.h's rule)?
bool Allowed(int i, int j, int n_q, int len_k, int left, int right, int range_lo, int range_hi) {
  const int pos = i + len_k - n_q;
  if (j < 0 || j >= len_k || j < range_lo || j >= range_hi) return false;
  if (left >= 0 && j < pos - left) return false;
  if (right >= 0 && j > pos + right) return false;
  return true;
}

// Every block of rows of every sequence shape: each row's [lo, hi) is exactly its allowed keys,
// and the tiles of the block's splits are disjoint, ordered, and cover exactly the tiles that
// hold the block's keys.
TEST(DecodeBlockInfoTest, KeysAndSplitsMatchBruteForce) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> len(0, 300), rows(1, 16), win(-1, 40), group(1, 8);
  for (int trial = 0; trial < 3000; ++trial) {
    const int len_k = len(rng);
    const int n_q = rows(rng);
    const int left = win(rng), right = win(rng);
    const int g = group(rng);
    int range_lo = 0, range_hi = len_k;
    if (trial % 3 == 0) {
      std::uniform_int_distribution<int> r(-5, len_k + 5);
      range_lo = std::max(r(rng), 0);
      range_hi = std::min(r(rng), len_k);
    }
    SCOPED_TRACE(testing::Message()
                 << "len_k " << len_k << " n_q " << n_q << " window (" << left << ", " << right
                 << ") range [" << range_lo << ", " << range_hi << ") group " << g);
    for (int i = 0; i < n_q; ++i) {
      const DecodeRange k = DecodeRowKeys(i, n_q, len_k, left, right, range_lo, range_hi);
      for (int j = -2; j < len_k + 2; ++j) {
        ASSERT_EQ(j >= k.lo && j < k.hi, Allowed(i, j, n_q, len_k, left, right, range_lo, range_hi))
            << "row " << i << " key " << j;
      }
    }
    // Blocks of 16 packed rows (row = query row * group + head).
    for (int row0 = 0; row0 < n_q * g; row0 += 16) {
      const int last_row = std::min(row0 + 16, n_q * g) - 1;
      const DecodeRange first =
          DecodeRowKeys(row0 / g, n_q, len_k, left, right, range_lo, range_hi);
      const DecodeRange last =
          DecodeRowKeys(last_row / g, n_q, len_k, left, right, range_lo, range_hi);
      std::vector<int> needed;  // tiles holding a key some row of the block may see
      for (int t = 0; t * 64 < len_k; ++t) {
        bool any = false;
        for (int i = row0 / g; i <= last_row / g; ++i) {
          for (int j = t * 64; j < std::min(len_k, t * 64 + 64); ++j) {
            any |= Allowed(i, j, n_q, len_k, left, right, range_lo, range_hi);
          }
        }
        if (any) needed.push_back(t);
      }
      const int tiles = (len_k + 63) / 64;
      for (int split_tiles : {0, 1, 3}) {
        const int num_splits =
            split_tiles > 0 ? std::max(1, (tiles + split_tiles - 1) / split_tiles) : 1 + trial % 7;
        std::vector<int> covered;
        int prev_end = -1;
        for (int s = 0; s < num_splits; ++s) {
          const DecodeRange r = DecodeSplitTiles(first.lo, last.hi, 64, s, num_splits, split_tiles);
          if (r.hi <= r.lo) continue;
          EXPECT_GE(r.lo, prev_end) << "split " << s << " overlaps the previous one";
          prev_end = r.hi;
          for (int t = r.lo; t < r.hi; ++t) covered.push_back(t);
        }
        // Covered tiles: every needed tile, and only tiles within the block's key span.
        for (int t : needed) {
          EXPECT_TRUE(std::find(covered.begin(), covered.end(), t) != covered.end())
              << "tile " << t << " of rows from " << row0 << " is in no split";
        }
        for (int t : covered) {
          EXPECT_TRUE(t * 64 < last.hi && t * 64 + 64 > first.lo) << "tile " << t;
        }
      }
    }
  }
}

// The pages a split of a paged block reads (kDecodeVariants' page_cache keeps their entries in
// shared memory): exactly the pages holding a key of the split's tiles inside the block's keys,
// for page sizes below, at and above the 64-key tile, powers of two or not, splits at page
// boundaries and inside pages.
TEST(DecodeBlockInfoTest, SplitPagesMatchBruteForce) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> len(0, 700), page(0, 6);
  const int page_sizes[] = {8, 16, 48, 64, 128, 192, 256};
  for (int trial = 0; trial < 2000; ++trial) {
    const int len_k = len(rng);
    const int ps = page_sizes[page(rng)];
    std::uniform_int_distribution<int> key(0, len_k);
    int key_lo = key(rng), key_hi = key(rng);
    if (key_lo > key_hi) std::swap(key_lo, key_hi);
    if (trial % 4 == 0) {
      key_lo = 0;
      key_hi = len_k;
    }
    for (int num_splits : {1, 2, 3, 5, 16}) {
      for (int s = 0; s < num_splits; ++s) {
        const DecodeRange tiles = DecodeSplitTiles(key_lo, key_hi, 64, s, num_splits, 0);
        const DecodeRange pages = DecodeSplitPages(tiles.lo, tiles.hi, key_lo, key_hi, 64, ps);
        int lo = -1, hi = -1;  // brute force: first and one past the last page read
        for (int j = std::max(key_lo, tiles.lo * 64); j < std::min(key_hi, tiles.hi * 64); ++j) {
          if (lo < 0) lo = j / ps;
          hi = j / ps + 1;
        }
        SCOPED_TRACE(testing::Message() << "keys [" << key_lo << ", " << key_hi << ") pages of "
                                        << ps << " split " << s << " of " << num_splits);
        if (lo < 0) {
          EXPECT_LE(pages.hi - pages.lo, 0);
        } else {
          EXPECT_EQ(pages.lo, lo);
          EXPECT_EQ(pages.hi, hi);
        }
      }
    }
  }
}

// An H100 SXM: 132 SMs, two decode blocks per SM (DecodeSmem16 keeps d = 128 under the budget).
DecodeWorkload H100(int batch, int kv_heads, int kv_len) {
  DecodeWorkload w;
  w.batch = batch;
  w.kv_heads = kv_heads;
  w.query_tiles = 1;
  w.kv_tiles = (kv_len + kDecodeBlockN16 - 1) / kDecodeBlockN16;
  w.num_sms = 132;
  w.blocks_per_sm = 2;
  return w;
}

// The heuristic's cost model (decode_heuristics.h), restated: s splits of ceil(T / s) tiles run
// ceil(units * s / slots) waves; efficiency = (units * T / slots) / (waves * tiles per split).
double Efficiency(const DecodeWorkload& w, int s) {
  const double units = double{1} * w.batch * w.kv_heads * w.query_tiles;
  const double slots = double{1} * w.num_sms * w.blocks_per_sm;
  const double per = std::ceil(double{1} * w.kv_tiles / s);
  return units * w.kv_tiles / slots / (std::ceil(units * s / slots) * per);
}

TEST(DecodeSplitHeuristicTest, IssueGrid) {
  // GQA 32/8 (8 KV heads), one query row: the rows of issue 21's table.
  EXPECT_EQ(DecodeSplitHeuristic(H100(128, 8, 2048)), 1);   // 1024 units: 3.9 of 4 waves
  EXPECT_EQ(DecodeSplitHeuristic(H100(32, 8, 8192)), 1);    // 256 of 264 slots
  EXPECT_EQ(DecodeSplitHeuristic(H100(8, 8, 32768)), 4);    // 64 units x 4 = 256 of 264 slots
  EXPECT_EQ(DecodeSplitHeuristic(H100(2, 8, 131072)), 16);  // 16 x 16 = 256
  EXPECT_EQ(DecodeSplitHeuristic(H100(1, 8, 8192)), 32);    // 8 x 32, 4 tiles (256 keys) each
  EXPECT_EQ(DecodeSplitHeuristic(H100(1, 8, 32768)), 32);
  EXPECT_EQ(DecodeSplitHeuristic(H100(1, 8, 131072)), 32);
}

TEST(DecodeSplitHeuristicTest, Invariants) {
  for (int batch : {1, 2, 3, 7, 16, 33, 100, 257}) {
    for (int kv_heads : {1, 2, 8}) {
      for (int kv_len : {0, 1, 64, 300, 1024, 5000, 65536, 1 << 20}) {
        DecodeWorkload w = H100(batch, kv_heads, kv_len);
        const int s = DecodeSplitHeuristic(w);
        SCOPED_TRACE(testing::Message() << batch << " x " << kv_heads << " x " << kv_len);
        ASSERT_GE(s, 1);
        ASSERT_LE(s, kDecodeMaxSplits);
        if (s > 1) {
          // Never below the fewest tiles a split may have.
          EXPECT_GE(w.kv_tiles / s, kDecodeMinTilesPerSplit);
        }
        if (w.kv_tiles > 0) {
          // No empty split: the last of s splits of ceil(T / s) tiles holds a tile.
          const int per = (w.kv_tiles + s - 1) / s;
          EXPECT_EQ((w.kv_tiles + per - 1) / per, s);
          // Within 0.95 of the best efficiency of any allowed split count (FA3 keeps 0.85).
          double best = 0;
          const int max_s = std::min(kDecodeMaxSplits, w.kv_tiles / kDecodeMinTilesPerSplit);
          for (int t = 1; t <= std::max(1, max_s); ++t) best = std::max(best, Efficiency(w, t));
          EXPECT_GE(Efficiency(w, s), std::min(0.95, 0.95 * best) - 1e-9);
        }
      }
    }
  }
}

TEST(DecodeSmemTest, TwoBlocksPerSmUpToHeadDim128) {
  for (int d : {32, 64, 96, 128}) {
    for (DecodeRows rows : {DecodeRows::kRows16, DecodeRows::kRows64}) {
      const DecodeSmem s = DecodeSmem16(d, rows);
      EXPECT_GE(s.stages, 2);
      EXPECT_LE(s.stages, 6);
      EXPECT_LE(s.total, kDecodeSmemBudget) << d;
      EXPECT_GE(s.total - s.q_bytes, s.merge_bytes) << "the merge area fits in the stages";
    }
    EXPECT_LE(DecodeSmem32(d).total, kDecodeSmemBudget);
  }
  // The largest bucket still fits one block (227 KB per block on sm_90).
  EXPECT_LE(DecodeSmem16(256, DecodeRows::kRows64).total, 227 * 1024);
  EXPECT_LE(DecodeSmem32(256).total, 227 * 1024);
}

TEST(CheckDecodeSupportedTest, NamesTheValue) {
  KernelConfig c;
  c.kind = WorkKind::kPagedDecode;
  c.dtype = DType::kFloat32;
  c.head_dim = 64;
  c.q_heads = 8;
  c.kv_heads = 2;
  c.softmax_scale = 0.125f;
  // float32 decode kernels exist for every compiled head-dim bucket; 64 may not be one.
  const absl::Status base = CheckDecodeSupported(c);
  if (!base.ok()) {
    EXPECT_EQ(base.code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(base.message().find("head_dim 64"), std::string::npos) << base;
    return;
  }
  KernelConfig x = c;
  x.mask_kind = MaskKind::kAdditive;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kUnimplemented);
  x = c;
  x.kv_heads = 3;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(CheckDecodeSupported(x).message().find("kv_heads 3"), std::string::npos);
  x = c;
  x.head_dim = 12;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kUnimplemented);
  x = c;
  x.head_dim = 264;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kUnimplemented);
  x = c;
  x.softcap = -1.f;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kInvalidArgument);
  x = c;
  x.window_left = -2;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kInvalidArgument);
  x = c;
  x.kind = WorkKind::kBackward;
  EXPECT_EQ(CheckDecodeSupported(x).code(), absl::StatusCode::kUnimplemented);
}

// Explicit and deterministic split counts need no device.
TEST(DecodeNumSplitsTest, ExplicitAndDeterministic) {
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 2;
  p.seqlen_q = 1;
  p.seqlen_k = 10000;  // 157 tiles of 64
  p.q_heads = 8;
  p.kv_heads = 2;
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  if (!CheckDecodeSupported(p).ok()) GTEST_SKIP() << CheckDecodeSupported(p);
  DecodeOptions opt;
  opt.num_splits = 5;
  EXPECT_EQ(DecodeNumSplits(p, opt), 5);
  // Partials: 5 splits x (2 sequences x 2 KV heads x 4 rows) x (64 + 1) floats, each array
  // rounded up to 256 bytes.
  EXPECT_EQ(DecodeWorkspaceBytes(p, opt), size_t{20480 + 512});
  opt.num_splits = 1;
  EXPECT_EQ(DecodeWorkspaceBytes(p, opt), 0u);
  opt.num_splits = 1000;  // clamped to the tiles
  EXPECT_EQ(DecodeNumSplits(p, opt), 157);
  opt = DecodeOptions{};
  opt.deterministic = true;
  opt.split_tokens = 1000;  // 16 tiles of 64
  EXPECT_EQ(DecodeNumSplits(p, opt), 10);
  // A left window bounds the keys a block visits: 100 + 1 + 0 keys, 3 tiles at most.
  p.causal = true;
  p.window_left = 100;
  opt = DecodeOptions{};
  opt.num_splits = 50;
  EXPECT_EQ(DecodeNumSplits(p, opt), 3);
}

// decode_bench's kernel variants: variant 0 is the production kernel, names are unique, and a
// variant's pipeline fits one block per SM (227 KB on sm_90) with its merge area inside the stages.
TEST(DecodeVariantsTest, TableIsConsistent) {
  ASSERT_GE(kDecodeNumVariants, 2);
  EXPECT_STREQ(kDecodeVariants[0].name, "base");
  EXPECT_EQ(kDecodeVariants[0].stages, 0);
  EXPECT_EQ(kDecodeVariants[0].hint, DecodeCacheHint::kNone);
  EXPECT_FALSE(kDecodeVariants[0].pages_ahead);
  EXPECT_FALSE(kDecodeVariants[0].paged_one_slot);
  EXPECT_EQ(kDecodeVariants[0].heads, 1);
  for (int v = 0; v < kDecodeNumVariants; ++v) {
    for (int w = v + 1; w < kDecodeNumVariants; ++w) {
      EXPECT_STRNE(kDecodeVariants[v].name, kDecodeVariants[w].name);
    }
    const int stages = kDecodeVariants[v].stages;
    const int heads = kDecodeVariants[v].heads;
    EXPECT_TRUE(stages == 0 || stages >= 2) << kDecodeVariants[v].name;
    EXPECT_TRUE(heads == 1 || heads == 2) << kDecodeVariants[v].name;
    // A multi-head block's smem holds a head per tile; DecodeStages() would give it 2 stages.
    if (heads > 1) {
      EXPECT_GE(stages, 3) << kDecodeVariants[v].name;
    }
    EXPECT_FALSE(heads > 1 && kDecodeVariants[v].pages_ahead) << kDecodeVariants[v].name;
    EXPECT_FALSE(heads > 1 && kDecodeVariants[v].pages_early) << kDecodeVariants[v].name;
    // The page entries load one way: a tile ahead (pages_ahead), at the top of the refilling
    // iteration (pages_early), or from the page cache.
    EXPECT_FALSE(kDecodeVariants[v].pages_ahead && kDecodeVariants[v].pages_early)
        << kDecodeVariants[v].name;
    // The page cache and the fused combine are written for one KV head per block, and the cache
    // replaces pages_ahead's and pages_early's lookups.
    EXPECT_FALSE(kDecodeVariants[v].page_cache &&
                 (heads > 1 || kDecodeVariants[v].pages_ahead || kDecodeVariants[v].pages_early))
        << kDecodeVariants[v].name;
    EXPECT_FALSE(kDecodeVariants[v].fused_combine && heads > 1) << kDecodeVariants[v].name;
    EXPECT_TRUE(kDecodeVariants[v].copy_unroll >= 0 && kDecodeVariants[v].copy_unroll <= 8)
        << kDecodeVariants[v].name;
    const int entries = kDecodeVariants[v].page_cache ? kDecodePageCacheEntries : 0;
    const DecodeSmem s = DecodeSmem16(128, DecodeRows::kRows16, stages, heads, entries);
    EXPECT_LE(s.total, 227 * 1024) << kDecodeVariants[v].name;
    EXPECT_GE(s.total - s.q_bytes - entries * 4, s.merge_bytes) << kDecodeVariants[v].name;
    if (stages > 0) {
      EXPECT_EQ(s.stages, stages);
    }
    // The page cache costs no pipeline stage and keeps two blocks per SM (228 KB per SM on sm_90,
    // 1 KB reserved per block) at d = 128; with 64 rows it would cost a stage, so those kernels
    // go without it.
    if (entries > 0 && stages == 0 && heads == 1) {
      EXPECT_EQ(s.stages, DecodeSmem16(128, DecodeRows::kRows16).stages);
      EXPECT_LE(2 * (s.total + 1024), 228 * 1024) << kDecodeVariants[v].name;
      EXPECT_EQ(DecodePageCacheEntries(kDecodeVariants[v], 128, DecodeRows::kRows16), entries);
      EXPECT_EQ(DecodePageCacheEntries(kDecodeVariants[v], 128, DecodeRows::kRows64), 0);
      EXPECT_EQ(DecodePageCacheEntries(kDecodeVariants[v], 64, DecodeRows::kRows64), entries);
    }
  }
}

// The fused-combine variants' workspace adds one 4-byte ticket counter per (sequence, KV head,
// query tile) behind the partials when the launch splits, and nothing when it does not.
TEST(DecodeVariantsTest, FusedCombineWorkspaceHoldsTheCounters) {
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 3;
  p.seqlen_q = 1;
  p.seqlen_k = 10000;
  p.q_heads = 8;
  p.kv_heads = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.1f;
  if (!CheckDecodeSupported(p).ok()) GTEST_SKIP() << CheckDecodeSupported(p);
  DecodeOptions base;
  base.num_splits = 5;
  // Partials: 5 splits x (3 sequences x 2 KV heads x 4 rows) x (128 + 1) floats, each array
  // rounded up to 256 bytes: 61440 + 512.
  EXPECT_EQ(DecodeWorkspaceBytes(p, base), size_t{61440 + 512});
  int checked = 0;
  for (int v = 1; v < kDecodeNumVariants; ++v) {
    DecodeOptions opt = base;
    opt.variant = v;
    const size_t counters = kDecodeVariants[v].fused_combine ? 256 : 0;  // 6 counters, aligned
    EXPECT_EQ(DecodeWorkspaceBytes(p, opt), size_t{61440 + 512} + counters)
        << kDecodeVariants[v].name;
    opt.num_splits = 1;
    EXPECT_EQ(DecodeWorkspaceBytes(p, opt), 0u) << kDecodeVariants[v].name;
    checked += kDecodeVariants[v].fused_combine ? 1 : 0;
  }
  EXPECT_GE(checked, 1);
}

// A variant refuses, before any launch (so no device is needed), what it does not take: other
// dtypes and variant numbers past the table, naming the field.
TEST(DecodeVariantsTest, RefusesOtherConfigurations) {
  alignas(16) static char dummy[16];  // never dereferenced
  AttentionParams p;
  p.dtype = DType::kFloat32;
  p.batch = 1;
  p.seqlen_q = 1;
  p.seqlen_k = 100;
  p.q_heads = 8;
  p.kv_heads = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.1f;
  SetContiguousStrides(p);
  p.q = p.k = p.v = dummy;
  p.o = dummy;
  if (!CheckDecodeParams(p).ok()) GTEST_SKIP() << CheckDecodeParams(p);
  DecodeOptions opt;
  opt.variant = 1;
  absl::Status s = RunFlashDecode(p, opt, nullptr, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("DecodeOptions.variant 1"), std::string::npos) << s;
  opt.variant = kDecodeNumVariants;
  s = RunFlashDecode(p, opt, nullptr, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("DecodeOptions.variant"), std::string::npos) << s;
  opt.variant = -1;
  EXPECT_EQ(RunFlashDecode(p, opt, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);

  // A two-head block and MQA (one KV head), in bf16 where this build has it.
  p.dtype = DType::kBFloat16;
  p.kv_heads = 1;
  SetContiguousStrides(p);
  if (!CheckDecodeParams(p).ok()) return;
  // The variants are compiled into bucket 128 only: in a build without it, head_dim 128 runs in a
  // larger bucket and the configuration refusal above comes first.
  if (CompiledHeadDimBucket(p.head_dim) != 128) return;
  for (int v = 1; v < kDecodeNumVariants; ++v) {
    if (kDecodeVariants[v].heads == 1) continue;
    opt.variant = v;
    s = RunFlashDecode(p, opt, nullptr, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    // Without ATTN_BENCH_DECODE_VARIANTS no variant runs at all, and the refusal says so first.
    EXPECT_NE(
        s.message().find(DecodeVariantsCompiled() ? "kv_heads 1" : "ATTN_BENCH_DECODE_VARIANTS=ON"),
        std::string::npos)
        << s;
  }
}

}  // namespace
}  // namespace attention::cuda
