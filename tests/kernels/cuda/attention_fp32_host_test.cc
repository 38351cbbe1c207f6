// Host-side checks of the float32 kernel (no GPU needed): its swizzled shared-memory layout and
// the lane addressing the device code derives from it (every access lands where the layout puts
// the element, and every warp-wide access phase is free of bank conflicts), the variant choice,
// and the layouts CheckFp32Layout refuses.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_fp32.h"
#include "kernels/cuda/flash_fwd_fp32_traits.h"

namespace attention::cuda {
namespace {

// 16-byte bank group (of 8) of a shared-memory byte address: the 8 addresses of one phase of a
// 16-byte-per-lane access (ldmatrix row, ld.shared.v4, cp.async 16) are conflict-free iff their
// bank groups are distinct.
uint32_t BankGroup(uint32_t address) { return (address / 16) % 8; }

template <int kRows, int kCols>
void CheckTile() {
  using Tile = Fp32SmemTile<kRows, kCols>;
  SCOPED_TRACE(std::to_string(kRows) + "x" + std::to_string(kCols));
  // A bijection onto the tile's 16-byte chunks.
  std::set<uint32_t> offsets;
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < Tile::kChunks; ++c) {
      const uint32_t off = Tile::Offset(r, c);
      ASSERT_EQ(off % 16, 0u);
      ASSERT_LT(off, static_cast<uint32_t>(Tile::kBytes));
      ASSERT_EQ(off / Tile::kRowBytes, static_cast<uint32_t>(r)) << "stays in its row";
      offsets.insert(off);
    }
  }
  EXPECT_EQ(offsets.size(), static_cast<size_t>(kRows * Tile::kChunks));

  const uint32_t base = 1024;  // any 128-byte aligned tile base
  // ldmatrix.x4 as the kernel issues it: for the Q (A) fragment lane l reads row
  // l % 8 + 8 ((l / 8) % 2) at chunk l / 16; for two K (B) fragments row l % 8 + 8 (l / 16) at
  // chunk (l / 8) % 2; row0 multiple of 16, chunk0 even. Each address is where Offset puts the
  // element, and the 8 lanes of each matrix (one phase) hit 8 distinct bank groups.
  for (int pattern = 0; pattern < 2; ++pattern) {
    for (int row0 = 0; row0 + 16 <= kRows; row0 += 16) {
      for (int chunk0 = 0; chunk0 < Tile::kChunks; chunk0 += 2) {
        std::set<uint32_t> phase[4];
        for (uint32_t lane = 0; lane < 32; ++lane) {
          const uint32_t lane_row =
              pattern == 0 ? lane % 8 + 8 * ((lane / 8) % 2) : lane % 8 + 8 * (lane / 16);
          const uint32_t lane_chunk = pattern == 0 ? lane / 16 : (lane / 8) % 2;
          const uint32_t addr =
              Tile::Address(Tile::LaneBase(base, lane_row, lane_chunk), row0, chunk0);
          ASSERT_EQ(addr, base + Tile::Offset(row0 + lane_row, chunk0 + lane_chunk))
              << "pattern " << pattern << " lane " << lane;
          phase[lane / 8].insert(BankGroup(addr));
        }
        for (const std::set<uint32_t>& p : phase) EXPECT_EQ(p.size(), 8u);
      }
    }
  }
  // V fragments (P V): lane (g, t) reads 16 bytes of rows 8 kk + 2t + h at chunk 8 qd + g, from
  // Offset(2t + h, g) plus 8 kk rows and 128 qd bytes; each quarter warp conflict-free.
  for (int kk = 0; kk < kRows / 8; ++kk) {
    for (int qd = 0; qd < kCols / 32; ++qd) {
      for (uint32_t h = 0; h < 2; ++h) {
        std::set<uint32_t> phase[4];
        for (uint32_t lane = 0; lane < 32; ++lane) {
          const uint32_t g = lane / 4;
          const uint32_t t = lane % 4;
          const uint32_t addr = base + Tile::Offset(2 * t + h, g) +
                                static_cast<uint32_t>(kk * 8) * Tile::kRowBytes + 128u * qd;
          ASSERT_EQ(addr, base + Tile::Offset(8 * kk + 2 * t + h, 8 * qd + g));
          phase[lane / 8].insert(BankGroup(addr));
        }
        for (const std::set<uint32_t>& p : phase) EXPECT_EQ(p.size(), 8u);
      }
    }
  }
  // Tile copies: with R = threads / chunks rows per iteration (a power of two), thread tid copies
  // chunk tid % chunks of rows tid / chunks + it * R, addressed by OffsetAfterRows from its first
  // offset; 8 consecutive threads write 8 distinct bank groups.
  for (uint32_t threads : {128u, 256u}) {
    if (threads % Tile::kChunks != 0) continue;
    const uint32_t rows_per_iter = threads / Tile::kChunks;
    if ((rows_per_iter & (rows_per_iter - 1)) != 0) continue;
    for (uint32_t it = 0; it * rows_per_iter < kRows; ++it) {
      for (uint32_t tid0 = 0; tid0 < threads; tid0 += 8) {
        std::set<uint32_t> phase;
        for (uint32_t tid = tid0; tid < tid0 + 8; ++tid) {
          const uint32_t row0 = tid / Tile::kChunks;
          const uint32_t chunk = tid % Tile::kChunks;
          const uint32_t first = base + Tile::Offset(row0, chunk);
          const uint32_t addr = Tile::OffsetAfterRows(first, it * rows_per_iter);
          ASSERT_EQ(addr, base + Tile::Offset(row0 + it * rows_per_iter, chunk));
          phase.insert(BankGroup(addr));
        }
        EXPECT_EQ(phase.size(), 8u);
      }
    }
  }
}

TEST(Fp32SmemTileTest, AddressingAndBankConflicts) {
  CheckTile<16, 32>();
  CheckTile<32, 64>();
  CheckTile<64, 96>();
  CheckTile<128, 128>();
  CheckTile<32, 160>();
  CheckTile<64, 224>();
  CheckTile<128, 256>();
}

// Every bucket's default configuration instantiates its traits (their static_asserts check the
// register and shared-memory budget).
TEST(Fp32TileConfigTest, DefaultsFitTheirBudgets) {
  constexpr Fp32TileConfig c32 = DefaultFp32TileConfig(32);
  constexpr Fp32TileConfig c128 = DefaultFp32TileConfig(128);
  constexpr Fp32TileConfig c256 = DefaultFp32TileConfig(256);
  using T32 = Fp32FwdTraits<32, c32.block_m, c32.block_n, c32.warps, c32.stages, c32.blocks_per_sm>;
  using T128 =
      Fp32FwdTraits<128, c128.block_m, c128.block_n, c128.warps, c128.stages, c128.blocks_per_sm>;
  using T256 =
      Fp32FwdTraits<256, c256.block_m, c256.block_n, c256.warps, c256.stages, c256.blocks_per_sm>;
  EXPECT_LE(T32::kSmemBytes, 227 * 1024);
  EXPECT_LE(T128::kSmemBytes * T128::kMinBlocksPerSm, 228 * 1024);
  EXPECT_LE(T256::kSmemBytes, 227 * 1024);
}

AttentionParams Contiguous() {
  AttentionParams p;
  p.dtype = DType::kFloat32;
  p.batch = 2;
  p.seqlen_q = p.seqlen_k = 64;
  p.q_heads = p.kv_heads = 2;
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  SetContiguousStrides(p);
  // Aligned stand-ins: CheckFp32Layout reads only the pointer values.
  p.q = p.k = p.v = reinterpret_cast<const void*>(uintptr_t{4096});
  p.o = reinterpret_cast<void*>(uintptr_t{8192});
  return p;
}

TEST(Fp32DispatchTest, VariantFollowsTheOptions) {
  AttentionParams p = Contiguous();
  EXPECT_EQ(SelectFp32Variant(p), Fp32Variant::kPlain);
  p.causal = true;
  p.window_left = 10;
  EXPECT_EQ(SelectFp32Variant(p), Fp32Variant::kPlain);
  p.sinks = true;
  EXPECT_EQ(SelectFp32Variant(p), Fp32Variant::kPlain);
  AttentionParams s = Contiguous();
  s.softcap = 5.f;
  EXPECT_EQ(SelectFp32Variant(s), Fp32Variant::kGeneral);
  AttentionParams n = Contiguous();
  n.softmax_scale = -0.5f;
  EXPECT_EQ(SelectFp32Variant(n), Fp32Variant::kGeneral);
  AttentionParams m = Contiguous();
  m.mask_kind = MaskKind::kBool;
  EXPECT_EQ(SelectFp32Variant(m), Fp32Variant::kGeneral);
  AttentionParams a = Contiguous();
  const float slopes[2] = {0.5f, 0.25f};
  a.alibi_slopes = slopes;
  EXPECT_EQ(SelectFp32Variant(a), Fp32Variant::kGeneral);
}

TEST(Fp32DispatchTest, LayoutChecksNameTheField) {
  EXPECT_TRUE(CheckFp32Layout(Contiguous()).ok());

  AttentionParams p = Contiguous();
  p.k = reinterpret_cast<const void*>(uintptr_t{4096 + 4});
  absl::Status s = CheckFp32Layout(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("k must be 16-byte aligned"), std::string::npos) << s;

  p = Contiguous();
  p.o_row_stride = 130;
  s = CheckFp32Layout(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("o_row_stride 130"), std::string::npos) << s;

  p = Contiguous();
  p.v_head_stride = 66;
  s = CheckFp32Layout(p);
  EXPECT_NE(s.message().find("v_head_stride 66"), std::string::npos) << s;

  p = Contiguous();
  const int32_t table[2] = {0, 1};
  p.page_table = table;
  p.page_size = 64;
  EXPECT_EQ(CheckFp32Layout(p).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace attention::cuda
