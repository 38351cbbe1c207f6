// The page-grouped copy of paged K / V tiles (block_info.h: PageGroupsFit, ThreadPageGroupRows),
// which the forward kernels' LoadPagedTiles runs on the device: checked here on the CPU for the
// tile copies of both kernel families. Every (row, chunk) of a tile is copied exactly once, each
// thread's rows lie in the one page it reads, share their 128-byte swizzle position, and map to
// the keys' rows within their pages.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/block_info.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {
namespace {

struct CopyShape {
  int threads;
  int chunks;  // 16-byte chunks per row: head_dim / 8
  int block_n;
};

// The tile copies whose threads split into whole rows per pass (threads % chunks == 0, a power of
// two of at least 8 rows per pass): the wgmma kernel at d = 32, 64, 128 and 256, the mma.sync
// kernel at d = 32, 64 and 128.
constexpr CopyShape kShapes[] = {{256, 4, 64}, {256, 8, 64}, {256, 16, 128}, {256, 32, 64},
                                 {128, 4, 64}, {128, 8, 64}, {128, 16, 64}};

std::string Describe(const CopyShape& s, int page_shift) {
  return "threads " + std::to_string(s.threads) + " chunks " + std::to_string(s.chunks) +
         " block_n " + std::to_string(s.block_n) + " page size " + std::to_string(1 << page_shift);
}

TEST(PagedCopyTest, GroupedRowsCoverTheTileOncePerChunkWithinOnePage) {
  int fitting = 0;
  for (const CopyShape& s : kShapes) {
    const int rows_per_pass = s.threads / s.chunks;
    const int iters = s.block_n * s.chunks / s.threads;
    for (int shift = 4; shift <= 9; ++shift) {
      if (!PageGroupsFit(s.block_n, rows_per_pass, shift)) continue;
      ++fitting;
      SCOPED_TRACE(Describe(s, shift));
      std::vector<int> copies(s.block_n * s.chunks, 0);
      for (int tid = 0; tid < s.threads; ++tid) {
        const PageGroupRows g = ThreadPageGroupRows(tid, s.threads, s.chunks, s.block_n, shift);
        ASSERT_EQ(g.chunk, tid % s.chunks);
        ASSERT_EQ(g.row_step % 8, 0) << "rows of a thread must share their swizzle position";
        ASSERT_LT(g.page, TilePages(s.block_n, shift));
        for (int i = 0; i < iters; ++i) {
          const int row = g.first_row + i * g.row_step;
          ASSERT_GE(row, 0);
          ASSERT_LT(row, s.block_n) << "thread " << tid << " copy " << i;
          ASSERT_EQ(TileRowPage(row, shift), g.page) << "thread " << tid << " row " << row;
          ++copies[row * s.chunks + g.chunk];
        }
      }
      for (int idx = 0; idx < s.block_n * s.chunks; ++idx) {
        ASSERT_EQ(copies[idx], 1) << "row " << idx / s.chunks << " chunk " << idx % s.chunks;
      }
    }
  }
  // The issue-21 bar's case (pages of 64 keys) runs the grouped copy on the wgmma kernel's tiles.
  EXPECT_TRUE(PageGroupsFit(64, 256 / 8, 6));
  EXPECT_TRUE(PageGroupsFit(128, 256 / 16, 6));
  EXPECT_GE(fitting, 20);
}

// The kernel addresses a thread's copies as (key_first's row within its page) + i * row_step:
// the same rows TileRowInPage finds key by key, for tiles anywhere in a sequence.
TEST(PagedCopyTest, GroupedRowsStepThroughTheirPage) {
  std::mt19937 rng(2112);
  for (const CopyShape& s : kShapes) {
    const int rows_per_pass = s.threads / s.chunks;
    const int iters = s.block_n * s.chunks / s.threads;
    for (int shift = 4; shift <= 9; ++shift) {
      if (!PageGroupsFit(s.block_n, rows_per_pass, shift)) continue;
      SCOPED_TRACE(Describe(s, shift));
      for (int trial = 0; trial < 20; ++trial) {
        const int n = std::uniform_int_distribution<int>(0, 500)(rng);
        const int tid = std::uniform_int_distribution<int>(0, s.threads - 1)(rng);
        const PageGroupRows g = ThreadPageGroupRows(tid, s.threads, s.chunks, s.block_n, shift);
        const int key_first = n * s.block_n + g.first_row;
        const int in_page = key_first & ((1 << shift) - 1);
        for (int i = 0; i < iters; ++i) {
          const int row = g.first_row + i * g.row_step;
          const int key = n * s.block_n + row;
          ASSERT_EQ(TilePage(n, s.block_n, g.page, shift), key >> shift) << "row " << row;
          ASSERT_EQ(in_page + i * g.row_step, TileRowInPage(n, s.block_n, row, shift))
              << "row " << row;
        }
      }
    }
  }
}

// The shared-memory side of the grouped copy (LoadPagedTilesGrouped): a thread's copies land at
// Offset(first_row, chunk) + i * row_step * RowBytes(chunk), which must be where SmemTile puts
// rows first_row + i * row_step -- also in a 32-column panel, whose rows are 64 bytes (d = 32).
template <int kThreads, int kChunks, int kBlockN>
void CheckGroupedSharedOffsets() {
  using Tile = SmemTile<kBlockN, kChunks * 8>;
  const int iters = kBlockN * kChunks / kThreads;
  for (int shift = 4; shift <= 9; ++shift) {
    if (!PageGroupsFit(kBlockN, kThreads / kChunks, shift)) continue;
    SCOPED_TRACE(Describe({kThreads, kChunks, kBlockN}, shift));
    for (int tid = 0; tid < kThreads; ++tid) {
      const PageGroupRows g = ThreadPageGroupRows(tid, kThreads, kChunks, kBlockN, shift);
      const uint32_t first = Tile::Offset(g.first_row, g.chunk);
      const uint32_t step = static_cast<uint32_t>(g.row_step) * Tile::RowBytes(g.chunk);
      for (int i = 0; i < iters; ++i) {
        ASSERT_EQ(first + i * step, Tile::Offset(g.first_row + i * g.row_step, g.chunk))
            << "thread " << tid << " copy " << i;
      }
    }
  }
}

TEST(PagedCopyTest, GroupedCopiesLandOnTheirSharedRows) {
  CheckGroupedSharedOffsets<256, 4, 64>();
  CheckGroupedSharedOffsets<256, 8, 64>();
  CheckGroupedSharedOffsets<256, 16, 128>();
  CheckGroupedSharedOffsets<256, 32, 64>();
  CheckGroupedSharedOffsets<128, 4, 64>();
  CheckGroupedSharedOffsets<128, 8, 64>();
  CheckGroupedSharedOffsets<128, 16, 64>();
}

}  // namespace
}  // namespace attention::cuda
