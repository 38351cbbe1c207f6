// Host-side logic of the warp-specialized Hopper forward kernel (kernels/cuda/flash_fwd_sm90ws.h)
// on the CPU: the tile schedule (MakeFwdSm90WsSchedule, TileAt; TileRankAt and SequenceMBlock for
// packed batches) visits every query tile of every (sequence, head) exactly once, keeps each L2
// group's pairs together with their K / V within half of L2, and hands out the causal tiles
// longest first within a group; the routing predicate sends only what the kernel covers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/flash_fwd_dispatch.h"
#include "kernels/cuda/flash_fwd_sm90ws.h"
#include "kernels/cuda/flash_fwd_sm90ws_launch.h"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda {
namespace {

struct Shape {
  int batch, seqlen_q, seqlen_k, q_heads, kv_heads, head_dim, block_m;
};

constexpr int kSms = 132;
constexpr int64_t kL2Bytes = 50 * 1024 * 1024;

TEST(FlashFwdSm90WsScheduleTest, VisitsEveryTileOnceInGroups) {
  const std::vector<Shape> shapes = {
      {32, 512, 512, 16, 16, 128, 128}, {1, 16384, 16384, 16, 16, 128, 128},
      {4, 4096, 4096, 32, 32, 64, 128}, {2, 1000, 300, 8, 2, 128, 128},
      {3, 77, 77, 5, 1, 64, 192},       {1, 1, 1, 1, 1, 64, 128},
      {8, 8192, 8192, 8, 8, 256, 128},  {5, 129, 4000, 7, 7, 40, 192},
  };
  for (const Shape& s : shapes) {
    for (const bool causal : {false, true}) {
      for (const bool persistent : {false, true}) {
        const FwdSm90WsSchedule sched =
            MakeFwdSm90WsSchedule(s.batch, s.seqlen_q, s.seqlen_k, s.q_heads, s.kv_heads,
                                  s.head_dim, s.block_m, kSms, kL2Bytes, persistent);
        const int m_blocks = (s.seqlen_q + s.block_m - 1) / s.block_m;
        const int pairs = s.batch * s.q_heads;
        ASSERT_EQ(sched.m_blocks, m_blocks);
        ASSERT_EQ(sched.pairs, pairs);
        ASSERT_EQ(sched.num_tiles, m_blocks * pairs);
        ASSERT_EQ(sched.grid, persistent ? std::min(sched.num_tiles, kSms) : sched.num_tiles);
        // The group's K and V within half of L2, unless one pair alone exceeds it.
        const int64_t kv_per_pair = 4LL * s.seqlen_k * s.head_dim / (s.q_heads / s.kv_heads);
        ASSERT_GE(sched.heads_per_group, 1);
        ASSERT_LE(sched.heads_per_group, pairs);
        if (sched.heads_per_group > 1) {
          EXPECT_LE(sched.heads_per_group * kv_per_pair, kL2Bytes / 2);
        }
        std::set<std::pair<int, int>> seen;
        int prev_group = -1;
        int prev_m = 0;
        for (int tile = 0; tile < sched.num_tiles; ++tile) {
          const ScheduledTile at = TileAt(sched, causal, tile);
          ASSERT_GE(at.m_block, 0);
          ASSERT_LT(at.m_block, m_blocks);
          ASSERT_GE(at.pair, 0);
          ASSERT_LT(at.pair, pairs);
          ASSERT_TRUE(seen.insert({at.m_block, at.pair}).second)
              << "tile " << tile << " visits a query tile twice";
          // Pairs come in groups of heads_per_group, the tiles of a group consecutive.
          const int group = at.pair / sched.heads_per_group;
          ASSERT_GE(group, prev_group) << "tile " << tile;
          if (group == prev_group) {
            // Within a group: causal tiles by descending query block (most keys first).
            if (causal) {
              EXPECT_LE(at.m_block, prev_m) << "tile " << tile;
            } else {
              EXPECT_GE(at.m_block, prev_m) << "tile " << tile;
            }
          }
          prev_group = group;
          prev_m = at.m_block;
        }
        EXPECT_EQ(static_cast<int>(seen.size()), sched.num_tiles);
      }
    }
  }
}

// The snake schedule (FwdSm90WsSchedule::snake): the plain schedule's tiles, each exactly once,
// with every odd round of `grid` tiles that is complete reversed (block b takes the plain
// round's tile grid - 1 - b); one block per tile never snakes.
TEST(FlashFwdSm90WsScheduleTest, SnakeReversesOddCompleteRounds) {
  const std::vector<Shape> shapes = {{32, 512, 512, 16, 16, 128, 128},
                                     {16, 1024, 1024, 32, 32, 64, 192},
                                     {3, 77, 77, 5, 1, 64, 192},
                                     {5, 129, 4000, 7, 7, 40, 192}};
  for (const Shape& s : shapes) {
    const FwdSm90WsSchedule plain =
        MakeFwdSm90WsSchedule(s.batch, s.seqlen_q, s.seqlen_k, s.q_heads, s.kv_heads, s.head_dim,
                              s.block_m, kSms, kL2Bytes, true);
    const FwdSm90WsSchedule snake =
        MakeFwdSm90WsSchedule(s.batch, s.seqlen_q, s.seqlen_k, s.q_heads, s.kv_heads, s.head_dim,
                              s.block_m, kSms, kL2Bytes, true, true);
    EXPECT_EQ(snake.snake, plain.grid < plain.num_tiles);
    EXPECT_FALSE(MakeFwdSm90WsSchedule(s.batch, s.seqlen_q, s.seqlen_k, s.q_heads, s.kv_heads,
                                       s.head_dim, s.block_m, kSms, kL2Bytes, false, true)
                     .snake);
    std::set<std::pair<int, int>> seen;
    for (int tile = 0; tile < snake.num_tiles; ++tile) {
      const RankedTile at = TileRankAt(snake, tile);
      ASSERT_TRUE(seen.insert({at.rank, at.pair}).second) << "tile " << tile << " twice";
      const int round = tile / plain.grid;
      const int pos = tile % plain.grid;
      const bool reversed =
          snake.snake && round % 2 == 1 && (round + 1) * plain.grid <= plain.num_tiles;
      const RankedTile want =
          TileRankAt(plain, reversed ? round * plain.grid + plain.grid - 1 - pos : tile);
      EXPECT_EQ(at.rank, want.rank) << "tile " << tile;
      EXPECT_EQ(at.pair, want.pair) << "tile " << tile;
    }
    EXPECT_EQ(static_cast<int>(seen.size()), snake.num_tiles);
  }
}

// The fold schedule (FwdSm90WsSchedule::fold): every query block of every sequence exactly once;
// a block's two tiles of a slot are one pair's ranks r and m - 1 - r, so that with causal each
// slot of a dense batch costs m + 1 KV tiles (query blocks m - 1 - r and r, as many KV tiles as
// 128-row blocks when block_m = block_n).
TEST(FlashFwdSm90WsScheduleTest, FoldVisitsEveryTileOnceInBalancedSlots) {
  const std::vector<std::vector<int>> batches = {
      {512, 512, 512, 512},    {1024}, {300, 1, 0, 1000, 129, 77}, {0}, {128, 128, 256},
      {4096, 1, 2, 3, 0, 5000}};
  for (const std::vector<int>& lens : batches) {
    for (const int heads : {3, 64}) {
      for (const int block_m : {128, 192}) {
        const int batch = static_cast<int>(lens.size());
        const int longest = *std::max_element(lens.begin(), lens.end());
        const FwdSm90WsSchedule sched = MakeFwdSm90WsSchedule(
            batch, longest, longest, heads, heads, 128, block_m, kSms, kL2Bytes, true, false, true);
        const int64_t slots = int64_t{(sched.m_blocks + 1) / 2} * sched.pairs;
        if (slots == 0) {
          EXPECT_FALSE(sched.fold);
          continue;
        }
        ASSERT_TRUE(sched.fold);
        EXPECT_EQ(sched.grid, std::min<int64_t>(slots, kSms));
        EXPECT_EQ(sched.num_tiles % (2 * sched.grid), 0);
        std::set<std::pair<int, int>> seen;
        int64_t expected = 0;
        for (int len : lens) expected += int64_t{heads} * ((len + block_m - 1) / block_m);
        for (int tile = 0; tile < sched.num_tiles; ++tile) {
          const RankedTile at = ScheduleTileRankAt(sched, tile);
          const int seq_m_blocks = (lens[at.pair / heads] + block_m - 1) / block_m;
          const int m_block = TileMBlock(at, seq_m_blocks, true);
          if (m_block < 0) continue;
          ASSERT_LT(m_block, seq_m_blocks);
          ASSERT_TRUE(seen.insert({m_block, at.pair}).second)
              << "tile " << tile << " visits a query tile twice";
          // The slot's partner: the same block's tile one round later.
          if (at.half == 0) {
            const RankedTile partner = ScheduleTileRankAt(sched, tile + sched.grid);
            EXPECT_EQ(partner.pair, at.pair);
            EXPECT_EQ(partner.rank, at.rank);
            EXPECT_EQ(partner.half, 1);
            const int partner_m = TileMBlock(partner, seq_m_blocks, true);
            if (partner_m >= 0) {
              EXPECT_EQ(partner_m + m_block, seq_m_blocks - 1);
            }
          }
        }
        EXPECT_EQ(static_cast<int64_t>(seen.size()), expected);
      }
    }
  }
  // Without a persistent grid, no fold.
  EXPECT_FALSE(
      MakeFwdSm90WsSchedule(4, 512, 512, 16, 16, 128, 128, kSms, kL2Bytes, false, false, true)
          .fold);
}

// A packed batch: the schedule is sized by the longest sequence, and rank r of a pair maps to
// its sequence's own query blocks (SequenceMBlock). Every query block of every sequence is
// visited exactly once, the ranks a sequence lacks are empty (-1), and for causal each pair's
// first visited tile is its last query block (the most keys), the rest in descending order.
TEST(FlashFwdSm90WsScheduleTest, VarlenVisitsEverySequenceTileOnce) {
  const std::vector<std::vector<int>> batches = {
      {300, 1, 0, 1000, 129, 77}, {0}, {1}, {128, 128, 256}, {4096, 1, 2, 3, 0, 5000}};
  constexpr int kHeads = 3;
  for (const std::vector<int>& lens : batches) {
    for (const int block_m : {128, 192}) {
      const int batch = static_cast<int>(lens.size());
      const int longest = *std::max_element(lens.begin(), lens.end());
      for (const bool causal : {false, true}) {
        const FwdSm90WsSchedule sched = MakeFwdSm90WsSchedule(
            batch, longest, longest, kHeads, kHeads, 128, block_m, kSms, kL2Bytes, true);
        std::set<std::pair<int, int>> seen;
        std::vector<int> prev_m(sched.pairs, -1);
        int64_t expected = 0;
        for (int len : lens) expected += int64_t{kHeads} * ((len + block_m - 1) / block_m);
        for (int tile = 0; tile < sched.num_tiles; ++tile) {
          const RankedTile at = TileRankAt(sched, tile);
          ASSERT_GE(at.pair, 0);
          ASSERT_LT(at.pair, sched.pairs);
          const int seq_m_blocks = (lens[at.pair / kHeads] + block_m - 1) / block_m;
          const int m_block = SequenceMBlock(at.rank, seq_m_blocks, causal);
          if (at.rank >= seq_m_blocks) {
            EXPECT_EQ(m_block, -1);
            continue;
          }
          ASSERT_GE(m_block, 0);
          ASSERT_LT(m_block, seq_m_blocks);
          ASSERT_TRUE(seen.insert({m_block, at.pair}).second)
              << "tile " << tile << " visits a query tile twice";
          if (prev_m[at.pair] < 0) {
            EXPECT_EQ(m_block, causal ? seq_m_blocks - 1 : 0) << "pair " << at.pair;
          } else if (causal) {
            EXPECT_EQ(m_block, prev_m[at.pair] - 1) << "pair " << at.pair;
          } else {
            EXPECT_EQ(m_block, prev_m[at.pair] + 1) << "pair " << at.pair;
          }
          prev_m[at.pair] = m_block;
        }
        EXPECT_EQ(static_cast<int64_t>(seen.size()), expected);
      }
    }
  }
  // A dense batch is the special case of equal lengths: TileAt is SequenceMBlock over m_blocks.
  const FwdSm90WsSchedule dense =
      MakeFwdSm90WsSchedule(2, 1000, 1000, 4, 4, 64, 128, kSms, kL2Bytes, true);
  for (int tile = 0; tile < dense.num_tiles; ++tile) {
    const RankedTile at = TileRankAt(dense, tile);
    EXPECT_EQ(TileAt(dense, true, tile).m_block, dense.m_blocks - 1 - at.rank);
    EXPECT_EQ(TileAt(dense, false, tile).m_block, at.rank);
  }
}

// The pair-major order: a pair's m_blocks tiles are consecutive, every query block of every
// (sequence, head) is visited exactly once (packed batches' shorter sequences included), and on
// a grid whose grid / m_blocks is odd a block's rank moves on by one each round, so that with
// causal every block's costs even out over m_blocks rounds. Only a persistent grid with more tiles
// than blocks takes it, and fold wins over it.
TEST(FlashFwdSm90WsScheduleTest, PairMajorVisitsEveryTileOncePairByPair) {
  const std::vector<std::vector<int>> batches = {
      {512, 512, 512, 512}, {300, 1, 0, 1000, 129, 77}, {1},
      {128, 128, 256},      {4096, 1, 2, 3, 0, 5000},   std::vector<int>(32, 512)};
  for (const std::vector<int>& lens : batches) {
    for (const int heads : {3, 16}) {
      for (const int block_m : {128, 192}) {
        const int batch = static_cast<int>(lens.size());
        const int longest = *std::max_element(lens.begin(), lens.end());
        const FwdSm90WsSchedule sched =
            MakeFwdSm90WsSchedule(batch, longest, longest, heads, heads, 128, block_m, kSms,
                                  kL2Bytes, true, true, false, true);
        ASSERT_EQ(sched.pair_major, sched.grid < sched.num_tiles);
        EXPECT_FALSE(sched.pair_major && sched.snake);
        ASSERT_EQ(sched.num_tiles, sched.m_blocks * sched.pairs);
        for (const bool causal : {false, true}) {
          std::set<std::pair<int, int>> seen;
          std::vector<std::set<int>> ranks(sched.pairs);
          int64_t expected = 0;
          for (int len : lens) expected += int64_t{heads} * ((len + block_m - 1) / block_m);
          for (int tile = 0; tile < sched.num_tiles; ++tile) {
            const RankedTile at = ScheduleTileRankAt(sched, tile);
            ASSERT_EQ(at.half, -1);
            ASSERT_GE(at.rank, 0);
            ASSERT_LT(at.rank, sched.m_blocks);
            if (sched.pair_major) {
              ASSERT_EQ(at.pair, tile / sched.m_blocks);
            }
            ASSERT_TRUE(ranks[at.pair].insert(at.rank).second) << "tile " << tile;
            // Kernels without kOrders find the same tile on dense K / V, the plain order's paged.
            const RankedTile kernel = KernelTileRankAt<false, false>(sched, tile);
            EXPECT_EQ(kernel.rank, at.rank);
            EXPECT_EQ(kernel.pair, at.pair);
            const RankedTile paged = KernelTileRankAt<false, true>(sched, tile);
            EXPECT_EQ(paged.rank, PlainTileRankAt(sched, tile).rank);
            EXPECT_EQ(paged.pair, PlainTileRankAt(sched, tile).pair);
            const int seq_m_blocks = (lens[at.pair / heads] + block_m - 1) / block_m;
            const int m_block = TileMBlock(at, seq_m_blocks, causal);
            if (m_block < 0) continue;
            ASSERT_LT(m_block, seq_m_blocks);
            ASSERT_TRUE(seen.insert({m_block, at.pair}).second)
                << "tile " << tile << " visits a query tile twice";
          }
          EXPECT_EQ(static_cast<int64_t>(seen.size()), expected);
        }
      }
    }
  }
  // 32 x 512 keys, 16 heads, 128-row tiles: 2048 tiles of m_blocks 4 over 132 blocks (33 pairs per
  // round): block b's rank goes up by one (mod 4) from each round to the next.
  const FwdSm90WsSchedule s = MakeFwdSm90WsSchedule(32, 512, 512, 16, 16, 128, 128, kSms, kL2Bytes,
                                                    true, false, false, true);
  ASSERT_TRUE(s.pair_major);
  for (int b = 0; b < s.grid; ++b) {
    for (int tile = b; tile + s.grid < s.num_tiles; tile += s.grid) {
      EXPECT_EQ(ScheduleTileRankAt(s, tile + s.grid).rank,
                (ScheduleTileRankAt(s, tile).rank + 1) % s.m_blocks)
          << "block " << b << " tile " << tile;
    }
  }
  // Not on one block per tile, nor with fold.
  EXPECT_FALSE(MakeFwdSm90WsSchedule(32, 512, 512, 16, 16, 128, 128, kSms, kL2Bytes, false, false,
                                     false, true)
                   .pair_major);
  const FwdSm90WsSchedule folded = MakeFwdSm90WsSchedule(32, 512, 512, 16, 16, 128, 128, kSms,
                                                         kL2Bytes, true, false, true, true);
  EXPECT_TRUE(folded.fold);
  EXPECT_FALSE(folded.pair_major);
}

// The dense and packed launches' rules (device call 2 of session 7) against the paged and FP8
// kernels' (unchanged): bulk stores of O at bucket 128 only, the same tiles otherwise; a
// persistent grid for causal bucket-128 launches under 4096 keys; the pair-major order at buckets
// 64 and 128 up to 4096 keys.
TEST(FlashFwdSm90WsScheduleTest, DenseRulesDifferFromPagedOnlyWhereMeasured) {
  for (int bucket : {64, 128, 256}) {
    for (bool causal : {false, true}) {
      const Sm90WsTileConfig dense = DefaultSm90WsTileConfig(bucket, causal);
      const Sm90WsTileConfig paged = PagedSm90WsTileConfig(bucket, causal);
      EXPECT_EQ(dense.tma_store_o, bucket == 128);
      EXPECT_FALSE(paged.tma_store_o);
      EXPECT_EQ(dense.block_n, paged.block_n);
      EXPECT_EQ(dense.stages, paged.stages);
      EXPECT_EQ(dense.consumers, paged.consumers);
      EXPECT_EQ(dense.separate_o, paged.separate_o);
      EXPECT_TRUE(!dense.tma_store_o || dense.separate_o);
      for (int seqlen : {1, 512, 1024, 2048, 3000, 4096, 8192, 16384}) {
        const bool old_rule = Sm90WsPersistentFor(causal, seqlen, bucket);
        const bool new_rule = Sm90WsDensePersistentFor(causal, seqlen, bucket);
        EXPECT_EQ(new_rule, old_rule || (bucket == 128 && causal && seqlen < 4096))
            << bucket << " " << causal << " " << seqlen;
        EXPECT_EQ(Sm90WsPairMajorFor(seqlen, bucket), bucket <= 128 && seqlen <= 4096);
      }
    }
  }
}

// One block per SM at most, and a block for every tile without a persistent grid; an unknown
// device (sms 0) gets one block per tile.
TEST(FlashFwdSm90WsScheduleTest, GridSize) {
  EXPECT_EQ(MakeFwdSm90WsSchedule(1, 128, 128, 2, 2, 64, 128, kSms, kL2Bytes, true).grid, 2);
  EXPECT_EQ(MakeFwdSm90WsSchedule(32, 512, 512, 16, 16, 128, 128, kSms, kL2Bytes, true).grid, kSms);
  EXPECT_EQ(MakeFwdSm90WsSchedule(32, 512, 512, 16, 16, 128, 128, 0, kL2Bytes, true).grid,
            4 * 32 * 16);
}

// The routing predicate never sends what the kernel does not cover, and the family the dispatch
// reports follows it (on any machine: without a compute capability 9.0 device nothing routes).
TEST(FlashFwdSm90WsRoutingTest, RoutesOnlyWhatTheKernelCovers) {
  alignas(16) static uint16_t buffer[8];
  alignas(16) static int32_t offsets[2] = {0, 128};
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 128;
  p.q_heads = p.kv_heads = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.125f;
  p.cu_seqlens_q = p.cu_seqlens_k = offsets;
  p.total_q = p.total_k = 128;
  SetContiguousStrides(p);
  p.q = p.k = p.v = buffer;
  p.o = buffer;
  std::vector<AttentionParams> cases(6, p);
  cases[1].causal = true;
  cases[1].window_right = 0;
  cases[2].alibi = true;
  cases[2].alibi_slopes = reinterpret_cast<const float*>(buffer);
  cases[3].window_left = 16;
  cases[4].dtype = DType::kFloat32;
  cases[5].head_dim = 100;  // not a multiple of 8
  for (size_t i = 0; i < cases.size(); ++i) {
    const AttentionParams& c = cases[i];
    const bool routed = RoutesToFlashFwdSm90Ws(c);
    if (routed) {
      EXPECT_TRUE(CheckFlashFwdSm90Ws(c).ok()) << "case " << i;
    }
    if (i >= 2) {
      EXPECT_FALSE(routed) << "case " << i << ": " << CheckFlashFwdSm90Ws(c);
    }
    EXPECT_EQ(SelectKernelFamily(c) == KernelFamily::kSm90Ws, routed) << "case " << i;
  }
  EXPECT_STREQ(KernelFamilyName(KernelFamily::kSm90Ws), "sm90ws (warp-specialized TMA)");
  EXPECT_STREQ(KernelFamilyName(KernelFamily::kSm90), "sm90 (wgmma)");
  EXPECT_STREQ(KernelFamilyName(KernelFamily::kSm80), "sm80 (mma.sync)");
}

// Where the switch routes, short causal launches stay on the wgmma kernel where it measured
// faster (bucket 64 below 2048 keys, bucket 256 below 1024); bucket 128 and every non-causal or
// long launch take this kernel.
TEST(FlashFwdSm90WsRoutingTest, MeasuredRuleKeepsShortCausalOnWgmma) {
  AttentionParams p;
  p.seqlen_q = 512;
  for (int head_dim : {40, 64, 128, 200, 256}) {
    p.head_dim = head_dim;
    const int bucket = head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
    for (int seqlen_k : {512, 1024, 2048}) {
      p.seqlen_k = seqlen_k;
      p.causal = false;
      EXPECT_TRUE(Sm90WsFasterFor(p)) << head_dim << " " << seqlen_k;
      p.causal = true;
      const bool want = bucket == 128 || (bucket == 64 && seqlen_k >= 2048) ||
                        (bucket == 256 && seqlen_k >= 1024);
      EXPECT_EQ(Sm90WsFasterFor(p), want) << head_dim << " " << seqlen_k;
    }
  }
}

// Paged K/V: every bulk copy of a tile's segment lies in one page and starts at a multiple of its
// size within the tile, and within the page, for every page size and default tile (the 96-key
// causal tiles of bucket 64 included); segments are at least 16 rows, so each lands on a 1024-byte
// boundary of the 128-byte swizzle.
TEST(FlashFwdSm90WsPagedTest, BoxRowsTileEveryPageSize) {
  for (int bucket : {64, 128, 256}) {
    for (bool causal : {false, true}) {
      const int block_n = PagedSm90WsTileConfig(bucket, causal).block_n;
      for (int page_size = kMinPageSize; page_size <= kMaxPageSize; page_size *= 2) {
        const int box = Sm90WsPagedBoxRows(block_n, page_size);
        EXPECT_GE(box, 16) << block_n << " " << page_size;
        EXPECT_EQ(block_n % box, 0) << block_n << " " << page_size;
        EXPECT_EQ(page_size % box, 0) << block_n << " " << page_size;
        EXPECT_EQ(box * 128 % 1024, 0);
        // Segment g of tile n starts at key n * block_n + g * box: a multiple of box, so it never
        // crosses a page boundary (a multiple of page_size, itself a multiple of box).
        for (int n = 0; n < 8; ++n) {
          for (int g = 0; g < block_n / box; ++g) {
            const int key = n * block_n + g * box;
            EXPECT_EQ(key / page_size, (key + box - 1) / page_size) << n << " " << g;
          }
        }
      }
    }
  }
  EXPECT_EQ(Sm90WsPagedBoxRows(96, 64), 32);
  EXPECT_EQ(Sm90WsPagedBoxRows(128, 64), 64);
  EXPECT_EQ(Sm90WsPagedBoxRows(64, 256), 64);
}

// Paged launches follow their own switch: routed by default only once kRouteSm90WsPaged is on
// (and then only what CheckFlashFwdSm90Ws covers); seqlens_k or a key range without a page table
// is never routed.
TEST(FlashFwdSm90WsPagedTest, PagedRoutingFollowsItsSwitch) {
  alignas(16) static uint16_t buffer[8];
  alignas(16) static int32_t table[4] = {0, 1, 2, 3};
  AttentionParams p;
  p.dtype = DType::kBFloat16;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 256;
  p.q_heads = p.kv_heads = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.125f;
  SetContiguousStrides(p);
  p.q = p.k = p.v = buffer;
  p.o = buffer;
  p.page_table = table;
  p.page_size = 64;
  p.seqlens_k = table;
  p.k_batch_stride = p.v_batch_stride = 64 * p.k_row_stride;
  const bool covered = CheckFlashFwdSm90Ws(p).ok();
  const bool routed = RoutesToFlashFwdSm90Ws(p);
  if (std::getenv("ATTN_CUDA_KERNELS") == nullptr) {
    EXPECT_EQ(routed, kRouteSm90Ws && kRouteSm90WsPaged && covered);
  }
  if (routed) {
    EXPECT_TRUE(covered);
  }
  // The measured rule: causal paged launches under 2048 keys at bucket 128 keep the wgmma
  // kernel's paged variant, as the dense rule keeps buckets 64 and 256.
  AttentionParams causal = p;
  causal.causal = true;
  for (int seqlen_k : {512, 1024, 2048, 4096}) {
    causal.seqlen_k = seqlen_k;
    EXPECT_EQ(Sm90WsFasterFor(causal), seqlen_k >= 2048) << seqlen_k;
    AttentionParams dense = causal;
    dense.page_table = nullptr;
    EXPECT_TRUE(Sm90WsFasterFor(dense)) << seqlen_k;
  }
  AttentionParams lens_only = p;
  lens_only.page_table = nullptr;
  EXPECT_FALSE(RoutesToFlashFwdSm90Ws(lens_only));
  EXPECT_TRUE(absl::IsUnimplemented(CheckFlashFwdSm90Ws(lens_only)));
}

}  // namespace
}  // namespace attention::cuda
