// Host-side logic of the CUDA backend, runnable without a GPU: which KV tiles a query block
// visits and which it masks (checked against a brute-force scan of the window rule), window
// clamping, variant selection, and the errors CheckSupported returns for unsupported values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/softmax_epilogue.h"

namespace attention::cuda {
namespace {

bool Allowed(int i, int j, int len_q, int len_k, int left, int right) {
  const int64_t pos = int64_t{i} + len_k - len_q;
  if (j < 0 || j >= len_k) return false;
  if (left >= 0 && j < pos - left) return false;
  if (right >= 0 && j > pos + right) return false;
  return true;
}

// For random lengths, windows and tile shapes: every allowed key lies in a visited tile, every
// skipped tile is fully disallowed, and every tile processed without a mask is fully allowed.
TEST(BlockInfoTest, TileRangeAndMaskMatchBruteForce) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> len(0, 300);
  std::uniform_int_distribution<int> side(-1, 120);
  const int block_ms[] = {64, 128};
  const int block_ns[] = {32, 64, 128};
  for (int trial = 0; trial < 3000; ++trial) {
    const int len_q = std::max(1, len(rng));
    const int len_k = len(rng);
    int left = side(rng);
    int right = trial % 4 == 0 ? 0 : side(rng);
    ClampWindow(len_q, len_k, left, right);
    const int block_m = block_ms[trial % 2];
    const int block_n = block_ns[trial % 3];
    for (int row0 = 0; row0 < len_q; row0 += block_m) {
      const int rows = std::min(block_m, len_q - row0);
      const KvTileRange r = KvTiles(row0, rows, len_q, len_k, block_n, left, right);
      const int tiles = (len_k + block_n - 1) / block_n;
      for (int n = 0; n < tiles; ++n) {
        bool any = false, all = true;
        for (int i = row0; i < row0 + rows; ++i) {
          for (int j = n * block_n; j < (n + 1) * block_n; ++j) {
            const bool a = Allowed(i, j, len_q, len_k, left, right);
            any |= a;
            all &= a;
          }
        }
        const bool visited = n >= r.begin && n < r.end;
        SCOPED_TRACE("len_q " + std::to_string(len_q) + " len_k " + std::to_string(len_k) +
                     " window (" + std::to_string(left) + ", " + std::to_string(right) + ") row0 " +
                     std::to_string(row0) + " tile " + std::to_string(n));
        if (any) {
          ASSERT_TRUE(visited) << "a tile with an allowed key is skipped";
        }
        if (visited && !TileNeedsMask(n, row0, rows, len_q, len_k, block_n, left, right)) {
          ASSERT_TRUE(all) << "an unmasked tile holds a disallowed key";
        }
      }
      ASSERT_GE(r.begin, 0);
      ASSERT_LE(r.end, tiles);
    }
  }
}

// ClampWindow only drops sides that allow every key anyway.
TEST(BlockInfoTest, ClampWindowKeepsTheAllowedSet) {
  for (int len_q : {1, 5, 64}) {
    for (int len_k : {0, 1, 7, 64}) {
      for (int l0 : {-1, 0, 3, 6, 7, 63, 64, 1000}) {
        for (int r0 : {-1, 0, 2, 4, 5, 63, 64, 1000}) {
          int l = l0, r = r0;
          ClampWindow(len_q, len_k, l, r);
          for (int i = 0; i < len_q; ++i) {
            for (int j = 0; j < len_k; ++j) {
              ASSERT_EQ(Allowed(i, j, len_q, len_k, l0, r0), Allowed(i, j, len_q, len_k, l, r));
            }
          }
        }
      }
    }
  }
}

// The swizzled shared-memory layout: Offset is a bijection onto the tile, the ldmatrix lane
// addressing reads exactly the chunk Offset wrote, and the eight rows of each 8x8 matrix fall in
// eight different 16-byte bank groups (no bank conflicts).
template <int kRows, int kCols>
void CheckTileLayout() {
  using Tile = SmemTile<kRows, kCols>;
  SCOPED_TRACE("tile " + std::to_string(kRows) + "x" + std::to_string(kCols));
  std::vector<int> seen(Tile::kBytes / 16, 0);
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols / 8; ++c) {
      const uint32_t off = Tile::Offset(r, c);
      ASSERT_EQ(off % 16, 0u);
      ASSERT_LT(off, static_cast<uint32_t>(Tile::kBytes));
      ++seen[off / 16];
    }
  }
  for (int count : seen) ASSERT_EQ(count, 1);
  const uint32_t base = 4096;
  for (int kind = 0; kind < 2; ++kind) {  // 0: A / trans-B lanes, 1: B lanes
    for (int warp_row0 = 0; warp_row0 < kRows; warp_row0 += 16) {
      for (int row0 = 0; warp_row0 + row0 + 16 <= kRows; row0 += 16) {
        for (int chunk0 = 0; chunk0 < kCols / 8; chunk0 += 2) {
          int banks[4][8];
          for (int lane = 0; lane < 32; ++lane) {
            const uint32_t lane_row =
                kind == 0 ? lane % 8 + 8 * ((lane / 8) % 2) : lane % 8 + 8 * (lane / 16);
            const uint32_t lane_chunk = kind == 0 ? lane / 16 : (lane / 8) % 2;
            const auto lb = Tile::MakeLaneBase(base, warp_row0 + lane_row, lane_chunk);
            const uint32_t addr = Tile::LdsmAddress(lb, row0, chunk0);
            ASSERT_EQ(addr, base + Tile::Offset(warp_row0 + row0 + lane_row, chunk0 + lane_chunk))
                << "lane " << lane << " row0 " << row0 << " chunk0 " << chunk0;
            banks[lane / 8][lane % 8] = static_cast<int>((addr / 16) % 8);
          }
          for (auto& matrix : banks) {
            std::sort(matrix, matrix + 8);
            for (int i = 0; i < 8; ++i) ASSERT_EQ(matrix[i], i) << "bank conflict";
          }
        }
      }
    }
  }
}

TEST(SmemTileTest, LdmatrixReadsWhatTheCopiesWrote) {
  CheckTileLayout<64, 32>();
  CheckTileLayout<128, 64>();
  CheckTileLayout<64, 96>();
  CheckTileLayout<128, 128>();
  CheckTileLayout<64, 160>();
  CheckTileLayout<128, 224>();
  CheckTileLayout<64, 256>();
}

// The Hopper kernel hands SmemTile's panels to wgmma as swizzled operands: each 64-column panel
// must be the 128-byte swizzle (16-byte chunk bits 4-6 of the address XOR its bits 7-9, from a
// 1024-byte-aligned base) and a trailing 32-column panel the 64-byte swizzle (bits 4-5 XOR bits
// 7-8, from a 512-byte-aligned base); rows 8 apart keep their swizzle (RowBytes steps them).
template <int kRows, int kCols>
void CheckWgmmaSwizzle() {
  using Tile = SmemTile<kRows, kCols>;
  SCOPED_TRACE("tile " + std::to_string(kRows) + "x" + std::to_string(kCols));
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols / 8; ++c) {
      const uint32_t panel = static_cast<uint32_t>(c) / 8;
      const bool half = Tile::kHasHalfPanel && panel == Tile::kFullPanels;
      const uint32_t base = panel * kRows * 128u;
      ASSERT_EQ(base % (half ? 512u : 1024u), 0u);
      const uint32_t row_bytes = half ? 64u : 128u;
      ASSERT_EQ(Tile::RowBytes(c), row_bytes);
      const uint32_t plain = static_cast<uint32_t>(r) * row_bytes + (c % 8) * 16u;
      const uint32_t swizzled =
          half ? plain ^ (((plain >> 7) & 3u) << 4) : plain ^ (((plain >> 7) & 7u) << 4);
      ASSERT_EQ(Tile::Offset(r, c), base + swizzled) << "row " << r << " chunk " << c;
      if (r + 8 < kRows) {
        ASSERT_EQ(Tile::Offset(r + 8, c), Tile::Offset(r, c) + 8 * Tile::RowBytes(c));
      }
    }
  }
}

TEST(SmemTileTest, PanelsAreWgmmaSwizzleAtoms) {
  CheckWgmmaSwizzle<64, 32>();
  CheckWgmmaSwizzle<128, 32>();
  CheckWgmmaSwizzle<128, 64>();
  CheckWgmmaSwizzle<128, 96>();
  CheckWgmmaSwizzle<64, 160>();
  CheckWgmmaSwizzle<64, 224>();
  CheckWgmmaSwizzle<64, 256>();
}

// Every head-dim bucket has a Hopper kernel and the dispatch routes every one to it (the buckets
// with a trailing 32-column panel behind kRouteSm90HalfPanelBuckets); their O += P V splits into
// the 64-column panels' wgmma and one N = 32 wgmma.
TEST(DispatchTest, EveryBucketHasAHopperKernel) {
  for (int bucket : {32, 64, 96, 128, 160, 192, 224, 256}) {
    EXPECT_TRUE(HasSm90Kernel(bucket)) << bucket;
    EXPECT_EQ(Sm90KernelRoutedByDefault(bucket), bucket % 64 == 0 || kRouteSm90HalfPanelBuckets)
        << bucket;
  }
  for (int bucket : {0, 16, 48, 288}) EXPECT_FALSE(HasSm90Kernel(bucket)) << bucket;
  using T96 = Sm90FwdKernelTraits<96, 128, 2>;
  static_assert(T96::kFullPanels == 1 && T96::kHasHalfPanel && T96::kNTilesOFull + 4 == 12);
  using T32 = Sm90FwdKernelTraits<32, 64, 2, 2>;
  static_assert(T32::kFullPanels == 0 && T32::kHasHalfPanel && T32::kNTilesOFull == 0);
  using T224 = Sm90FwdKernelTraits<224, 64, 2>;
  static_assert(T224::kFullPanels == 3 && T224::kNTilesOFull + 4 == T224::kNTilesO);
  using T128 = Sm90FwdKernelTraits<128, 128, 2>;
  static_assert(!T128::kHasHalfPanel && T128::kNTilesOFull == T128::kNTilesO);
}

AttentionParams ValidParams() {
  alignas(16) static uint8_t buffer[64];
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 2;
  p.seqlen_q = 100;
  p.seqlen_k = 120;
  p.q_heads = 8;
  p.kv_heads = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.088f;
  p.q = p.k = p.v = buffer;
  p.o = buffer;
  SetContiguousStrides(p);
  return p;
}

TEST(CheckSupportedTest, AcceptsValidParams) {
  EXPECT_TRUE(CheckLaunch(ValidParams()).ok());
  AttentionParams p = ValidParams();
  p.head_dim = 40;  // rounded up to a bucket
  SetContiguousStrides(p);
  EXPECT_TRUE(CheckLaunch(p).ok()) << CheckLaunch(p);
  EXPECT_TRUE(CheckSupported(static_cast<const KernelConfig&>(p)).ok());
}

// CheckLaunch: the configuration (CheckSupported), the structure (CheckParams, whose messages
// name the AttentionParams field) and the launch's own needs.
void ExpectError(const AttentionParams& p, absl::StatusCode code, const std::string& needle) {
  const absl::Status s = CheckLaunch(p);
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
}

TEST(CheckSupportedTest, NamesTheUnsupportedValue) {
  AttentionParams p = ValidParams();
  p.head_dim = 36;
  ExpectError(p, absl::StatusCode::kUnimplemented, "head_dim 36");
  p.head_dim = 264;  // beyond kMaxHeadDim: structurally invalid for every backend
  ExpectError(p, absl::StatusCode::kInvalidArgument, "head_dim");
  p = ValidParams();
  p.q_row_stride = 1028;
  ExpectError(p, absl::StatusCode::kUnimplemented, "q_row_stride 1028");
  p = ValidParams();
  p.batch = 70000;
  ExpectError(p, absl::StatusCode::kUnimplemented, "batch 70000");
  p = ValidParams();
  p.o = static_cast<uint8_t*>(p.o) + 2;
  ExpectError(p, absl::StatusCode::kUnimplemented, "o must be 16-byte aligned");
}

TEST(CheckSupportedTest, RejectsMalformedParams) {
  AttentionParams p = ValidParams();
  p.kv_heads = 3;
  ExpectError(p, absl::StatusCode::kInvalidArgument,
              "q_heads (8) must be a multiple of kv_heads (3)");
  p = ValidParams();
  p.k = nullptr;
  ExpectError(p, absl::StatusCode::kInvalidArgument, "AttentionParams.k must not be null");
  p = ValidParams();
  p.dtype = static_cast<DType>(9);
  ExpectError(p, absl::StatusCode::kInvalidArgument, "AttentionParams.dtype");
  p = ValidParams();
  static const int32_t cu[3] = {0, 50, 100};
  p.cu_seqlens_q = cu;
  ExpectError(p, absl::StatusCode::kInvalidArgument, "cu_seqlens_q and cu_seqlens_k");
  p = ValidParams();
  p.window_left = -2;
  ExpectError(p, absl::StatusCode::kInvalidArgument, "window_left");
  p = ValidParams();
  p.softcap = -1.f;
  ExpectError(p, absl::StatusCode::kInvalidArgument, "softcap must be finite and >= 0");
  p = ValidParams();
  p.mask_kind = MaskKind::kBool;
  ExpectError(p, absl::StatusCode::kInvalidArgument, "mask must not be null");
}

// 16-bit requests and float32 at FULL / TF32 (the float32 kernel reads float32 directly) need
// none; float32 at BF16 needs its bfloat16 copies.
TEST(WorkspaceTest, OnlyFloat32AtBf16NeedsAWorkspace) {
  AttentionParams p = ValidParams();
  EXPECT_EQ(WorkspaceBytes(p), 0u);
  p.dtype = DType::kFloat32;
  EXPECT_EQ(WorkspaceBytes(p), 0u);
  p.precision = Precision::kTF32;
  EXPECT_EQ(WorkspaceBytes(p), 0u);
  p.precision = Precision::kBF16;
  // bf16 copies of q, k, v and o: (2 * 100 * 8 + 2 * 2 * 120 * 2) * 128 * 2 bytes, 256-aligned.
  const size_t q_bytes = 2 * 100 * 8 * 128 * 2;
  const size_t kv_bytes = 2 * 120 * 2 * 128 * 2;
  EXPECT_GE(WorkspaceBytes(p), 2 * q_bytes + 2 * kv_bytes);
  EXPECT_LE(WorkspaceBytes(p), 2 * q_bytes + 2 * kv_bytes + 4 * 256);
}

TEST(DispatchTest, SelectsTheVariantForTheOptions) {
  AttentionParams p = ValidParams();
  EXPECT_EQ(SelectVariant(p), FwdVariant::kDense);
  p.causal = true;
  Normalize(p);
  EXPECT_EQ(SelectVariant(p), FwdVariant::kWindow);
  p.softcap = 30.f;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kGeneral);
  p = ValidParams();
  p.window_left = 16;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kWindow);
  p = ValidParams();
  static const float slopes[8] = {};
  p.alibi_slopes = slopes;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kGeneral);
  p = ValidParams();
  p.softmax_scale = -1.f;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kGeneral);
}

TEST(DispatchTest, HeadDimRoundsUpToACompiledBucket) {
  for (int d = 8; d <= 256; d += 8) {
    const int bucket = CompiledHeadDimBucket(d);
    if (bucket == 0) continue;  // pruned build
    EXPECT_GE(bucket, d);
    EXPECT_EQ(bucket % 32, 0);
    EXPECT_NE(CompiledHeadDimBuckets().find(std::to_string(bucket)), std::string::npos);
  }
  EXPECT_EQ(CompiledHeadDimBucket(264), 0);
}

// Key ranges (paged variants): with keys restricted to [key_begin, key_end), every allowed key
// lies in a visited tile and every tile processed without a mask is fully allowed.
TEST(BlockInfoTest, KeyRangeTilesAndMaskMatchBruteForce) {
  std::mt19937 rng(777);
  std::uniform_int_distribution<int> len(0, 300);
  std::uniform_int_distribution<int> side(-1, 120);
  const int block_ns[] = {64, 128};
  for (int trial = 0; trial < 3000; ++trial) {
    const int len_q = std::max(1, len(rng));
    const int len_k = len(rng);
    int left = side(rng);
    int right = trial % 3 == 0 ? 0 : side(rng);
    ClampWindow(len_q, len_k, left, right);
    std::uniform_int_distribution<int> key(0, len_k);
    const int key_begin = key(rng);
    const int key_end = std::max(key_begin, key(rng));
    const int block_m = 128;
    const int block_n = block_ns[trial % 2];
    for (int row0 = 0; row0 < len_q; row0 += block_m) {
      const int rows = std::min(block_m, len_q - row0);
      const KvTileRange r =
          KvTilesInRange(row0, rows, len_q, len_k, block_n, left, right, key_begin, key_end);
      for (int n = 0; n < (len_k + block_n - 1) / block_n; ++n) {
        bool any = false, all = true;
        for (int i = row0; i < row0 + rows; ++i) {
          for (int j = n * block_n; j < (n + 1) * block_n; ++j) {
            const bool a =
                j >= key_begin && j < key_end && Allowed(i, j, len_q, len_k, left, right);
            any |= a;
            all &= a;
          }
        }
        const bool visited = n >= r.begin && n < r.end;
        SCOPED_TRACE("len_q " + std::to_string(len_q) + " len_k " + std::to_string(len_k) +
                     " range [" + std::to_string(key_begin) + ", " + std::to_string(key_end) +
                     ") tile " + std::to_string(n));
        if (any) {
          ASSERT_TRUE(visited) << "a tile with an allowed key is skipped";
        }
        if (visited && !TileNeedsMaskInRange(n, row0, rows, len_q, len_k, block_n, left, right,
                                             key_begin, key_end)) {
          ASSERT_TRUE(all) << "an unmasked tile holds a disallowed key";
        }
      }
    }
  }
}

// Paged tiles: every row of a tile that holds a key of the range is found in a page-table entry
// the kernel copies (TilePageNeeded), within the kBlockN / kMinPageSize entries of a page slot,
// at the page and row that hold its key; and every entry copied holds a key of the range.
TEST(BlockInfoTest, PagedTileRowsMapToTheirPages) {
  std::mt19937 rng(4242);
  for (int block_n : {64, 128}) {
    for (int shift = 4; shift <= 8; ++shift) {
      const int page_size = 1 << shift;
      for (int trial = 0; trial < 200; ++trial) {
        const int len_k = std::uniform_int_distribution<int>(1, 2000)(rng);
        std::uniform_int_distribution<int> key(0, len_k);
        const int key_begin = key(rng);
        const int key_end = std::max(key_begin, key(rng));
        const int n = std::uniform_int_distribution<int>(0, (len_k - 1) / block_n)(rng);
        ASSERT_LE(TilePages(block_n, shift), block_n / kMinPageSize);
        for (int row = 0; row < block_n; ++row) {
          const int j = n * block_n + row;
          if (j < key_begin || j >= key_end) continue;
          const int e = TileRowPage(row, shift);
          ASSERT_TRUE(TilePageNeeded(n, block_n, e, shift, key_begin, key_end))
              << "row " << row << " tile " << n << " page size " << page_size;
          ASSERT_EQ(TilePage(n, block_n, e, shift), j / page_size);
          ASSERT_EQ(TileRowInPage(n, block_n, row, shift), j % page_size);
        }
        for (int e = 0; e < block_n / kMinPageSize; ++e) {
          if (!TilePageNeeded(n, block_n, e, shift, key_begin, key_end)) continue;
          const int first = TilePage(n, block_n, e, shift) * page_size;
          ASSERT_LT(first, key_end);
          ASSERT_GT(first + page_size, key_begin);
          ASSERT_LT(first, (n + 1) * block_n) << "an entry past the tile";
        }
      }
    }
  }
}

// The epilogue's normalization against float64: scale = 2^m / (sum 2^m + 2^sink) and
// lse = ln(sum 2^m + 2^sink) (base-2 logits m and sink), for sinks far above and below the row
// max (no overflow), rows without keys (scale 0, lse = the sink) and no sink (1 / sum).
TEST(SoftmaxEpilogueTest, NormalizeRowMatchesFloat64) {
  const auto exp2 = [](float x) { return std::exp2(x); };
  const float kInf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> max_dist(-300.f, 300.f), sum_dist(1.f, 5000.f),
      offset(-200.f, 200.f);
  for (int trial = 0; trial < 20000; ++trial) {
    const bool empty = trial % 7 == 0;
    const bool no_sink = trial % 5 == 0;
    const float m = empty ? -kInf : max_dist(rng);
    const float sum = empty ? 0.f : sum_dist(rng);
    const float sink = no_sink ? -kInf : (empty ? max_dist(rng) : m + offset(rng));
    const RowNormalization r = NormalizeRow(m, sum, sink, exp2);
    SCOPED_TRACE("m " + std::to_string(m) + " sum " + std::to_string(sum) + " sink " +
                 std::to_string(sink));
    if (empty && no_sink) {
      EXPECT_EQ(r.scale, 0.f);
      EXPECT_EQ(r.lse, -kInf);
      continue;
    }
    if (empty) {
      EXPECT_EQ(r.scale, 0.f);
      EXPECT_NEAR(r.lse, sink * std::log(2.0), 1e-4 * std::max(1.f, std::abs(sink)));
      continue;
    }
    // In float64 relative to the larger exponent t: total = sum 2^(m - t) + 2^(sink - t).
    const double t = std::max<double>(m, sink);
    const double total = sum * std::exp2(double{m} - t) + (no_sink ? 0.0 : std::exp2(sink - t));
    const double scale = std::exp2(double{m} - t) / total;
    const double lse = (t + std::log2(total)) * std::log(2.0);
    EXPECT_NEAR(r.scale, scale, 1e-5 * scale + 1e-38);
    EXPECT_NEAR(r.lse, lse, 1e-5 * std::max(1.0, std::abs(lse)));
    if (no_sink) {
      EXPECT_NEAR(r.scale, 1.f / sum, 1e-6f / sum);
    }
  }
}

TEST(DispatchTest, PagedKvSelectsThePagedVariants) {
  AttentionParams p = ValidParams();
  static const int32_t table[4] = {0, 1, 2, 3};
  static const int32_t lens[2] = {100, 120};
  p.page_table = table;
  p.page_table_stride = 2;
  p.page_size = 64;
  p.seqlens_k = lens;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kPaged);
  p.causal = true;
  Normalize(p);
  EXPECT_EQ(SelectVariant(p), FwdVariant::kPaged);
  p.softcap = 30.f;
  EXPECT_EQ(SelectVariant(p), FwdVariant::kPagedGeneral);
}

TEST(DispatchTest, CheckPagedForwardNamesTheField) {
  AttentionParams p = ValidParams();
  EXPECT_TRUE(CheckPagedForward(p).ok());
  static const int32_t table[4] = {0, 1, 2, 3};
  static const int32_t lens[2] = {100, 120};
  static const int32_t range[4] = {0, 10, 5, 20};
  p.key_range = range;
  EXPECT_EQ(CheckPagedForward(p).code(), absl::StatusCode::kInvalidArgument);
  p.page_table = table;
  p.page_table_stride = 2;
  p.page_size = 64;
  p.seqlens_k = lens;
  if (!PagedKernelsCompiled()) {
    EXPECT_EQ(CheckPagedForward(p).code(), absl::StatusCode::kUnimplemented);
    return;
  }
  EXPECT_TRUE(CheckPagedForward(p).ok()) << CheckPagedForward(p);
  const auto expect_invalid = [](const AttentionParams& q, const std::string& needle) {
    const absl::Status s = CheckPagedForward(q);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
  };
  for (int bad : {0, 8, 48, 100, 512}) {
    AttentionParams q = p;
    q.page_size = bad;
    expect_invalid(q, "page_size " + std::to_string(bad));
  }
  AttentionParams q = p;
  q.seqlens_k = nullptr;
  expect_invalid(q, "seqlens_k");
  q = p;
  static const int32_t cu[3] = {0, 50, 100};
  q.cu_seqlens_k = cu;
  expect_invalid(q, "cu_seqlens_k");
  q = p;
  q.page_table_stride = 0;
  expect_invalid(q, "page_table_stride");
  q = p;
  q.dtype = DType::kFloat32;
  EXPECT_EQ(CheckPagedForward(q).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace attention::cuda
