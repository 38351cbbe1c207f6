// Tile shapes and the split-KV heuristic of the decode kernel (flash_decode.h). Host and device
// code: the device traits read the tile table, the host dispatch reads the table and the
// heuristic. No CUDA runtime calls here: the device's multiprocessor count and shared memory come
// in as arguments, so the heuristic is a pure function (and unit-testable anywhere).
#ifndef ATTENTION_KERNELS_CUDA_DECODE_HEURISTICS_H_
#define ATTENTION_KERNELS_CUDA_DECODE_HEURISTICS_H_

#include <cstdint>

#include "kernels/cuda/kernel_traits.h"  // ATTN_HOST_DEVICE

namespace attention::cuda {

// Query rows per sequence the decode kernel takes: decode (1), speculative verify, small chunks.
inline constexpr int kDecodeMaxQueryRows = 16;

// Most splits the heuristic picks (the combine pass reads one partial per split; beyond this the
// partials cost more than the idle SMs they fill). Explicit and deterministic split counts may
// exceed it up to kDecodeMaxSplitsHard.
inline constexpr int kDecodeMaxSplits = 128;
inline constexpr int kDecodeMaxSplitsHard = 4096;

// Fixed split size of the deterministic mode when the caller names none: 512 keys (8 tiles of 64)
// keeps a 1 x 8k decode at 16 splits per KV head (128 blocks) while a 128 x 2k batch splits in 4.
inline constexpr int kDecodeDefaultSplitTokens = 512;

// One block of the decode kernel is 4 warps (128 threads). Every block holds the rows of ONE KV
// head's query group: with `rows` = query rows x (q_heads / kv_heads) packed row-major
// (row r = query row r / group, head r % group), each K/V byte it streams feeds every query head
// of the group.
inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeWarps = kDecodeThreads / 32;

// Shared memory one block may use so that two blocks share a multiprocessor (228 KB per SM on
// sm_90, 1 KB of it reserved per block): two blocks let one block's prologue and epilogue overlap
// the other's streaming, which a single block with twice the stages cannot do.
inline constexpr int kDecodeSmemBudget = 112 * 1024;

// The 16-bit (tensor-core) kernel's tiles. Two row layouts of the block's 4 warps:
//   kRows16: the block holds 16 packed rows (one m16 tile) and its 4 warps split every KV tile
//            of 64 keys into 4 slices of 16, each warp keeping its own softmax state; the slices
//            are merged once at the end. A GQA-4 decode (4 rows) wastes 12 of 16 MMA rows, which
//            costs nothing that matters: the kernel is bound by K/V bandwidth (issue budget in
//            bench/cuda/decode_notes.md).
//   kRows64: 64 packed rows, one m16 tile per warp, every warp reading the whole KV tile (for
//            groups x query rows above 16: speculative verify, MQA).
// Groups x query rows above 64 take several query tiles (grid blocks) per KV head.
enum class DecodeRows : uint8_t { kRows16, kRows64 };

ATTN_HOST_DEVICE constexpr int DecodeBlockM(DecodeRows rows) {
  return rows == DecodeRows::kRows16 ? 16 : 64;
}

// KV tile of the 16-bit kernel: 64 keys (4 warps x 16 keys with kRows16; a k16 step of P V per
// warp needs 16 keys).
inline constexpr int kDecodeBlockN16 = 64;
// KV tile of the float32 kernel: 32 keys, one per lane of every warp.
inline constexpr int kDecodeBlockN32 = 32;
// Query rows of one float32 block (4 per warp).
inline constexpr int kDecodeFp32BlockM = 16;

// Pipeline depth: as many K+V stages as the budget holds next to the Q tile, at least 2 (one in
// flight while one is computed) and at most 6 (beyond, the bytes in flight per SM, 2 blocks x 5
// stages x 16 KB at d = 64, are past what HBM latency x bandwidth needs).
ATTN_HOST_DEVICE constexpr int DecodeStages(int q_bytes, int stage_bytes) {
  const int fit = (kDecodeSmemBudget - q_bytes) / stage_bytes;
  return fit < 2 ? 2 : fit > 6 ? 6 : fit;
}

// Shared-memory layout of one kernel configuration (bytes).
struct DecodeSmem {
  int q_bytes;      // Q tile
  int stage_bytes;  // one K tile + one V tile
  int stages;
  int merge_bytes;  // end-of-loop exchange of the warps' softmax states (aliases the stages)
  int total;
};

// Page-table entries a block of kDecodeVariants' page_cache keeps in shared memory: the entries of
// its whole split, 2 KB. A split of up to 512 pages covers 512 tiles of 64 keys with pages of 64
// (every split of the decode grid: 2 x 128k at 8 splits is 256 tiles) and 128 tiles with pages
// of 16; a longer one looks its entries up in global memory as the production kernel does.
inline constexpr int kDecodePageCacheEntries = 512;

// 16-bit kernel: Q [block_m, head_dim] and K, V [64, head_dim] tiles of 2-byte elements; the
// merge area holds each warp's O [16, head_dim + 8] (row padding against bank conflicts) and its
// 16 row maxima and sums, all float32. `stages` > 0 overrides DecodeStages() (a kernel variant's
// deeper pipeline, which may leave room for one block per SM only); `heads` > 1: a variant's block
// over that many KV heads (a Q tile and a K and a V tile per head); `page_entries` > 0: a page
// cache of that many int32 entries behind the stages (kDecodeVariants' page_cache; it takes 2 KB
// of the 12 KB the 3 stages at d = 128 leave of kDecodeSmemBudget, so two blocks still fit).
ATTN_HOST_DEVICE constexpr DecodeSmem DecodeSmem16(int head_dim_bucket, DecodeRows rows,
                                                   int stages_override = 0, int heads = 1,
                                                   int page_entries = 0) {
  const int q = heads * DecodeBlockM(rows) * head_dim_bucket * 2;
  const int stage = heads * 2 * kDecodeBlockN16 * head_dim_bucket * 2;
  const int cache = page_entries * 4;
  const int stages = stages_override > 0 ? stages_override : DecodeStages(q + cache, stage);
  const int merge = kDecodeWarps * 16 * (head_dim_bucket + 8) * 4 + kDecodeWarps * 16 * 2 * 4;
  const int kv = stages * stage > merge ? stages * stage : merge;
  return {q, stage, stages, merge, q + kv + cache};
}

// float32 kernel: Q [16, head_dim] and K, V [32, head_dim] tiles of float32; no merge area (every
// warp owns whole rows).
ATTN_HOST_DEVICE constexpr DecodeSmem DecodeSmem32(int head_dim_bucket) {
  const int q = kDecodeFp32BlockM * head_dim_bucket * 4;
  const int stage = 2 * kDecodeBlockN32 * head_dim_bucket * 4;
  const int stages = DecodeStages(q, stage);
  return {q, stage, stages, 0, q + stages * stage};
}

// Candidate tunings of the 16-bit kernel, timed side by side by decode_bench --variants on issue
// 21's grid before one of them becomes the default (DecodeOptions::variant; variant 0 is the
// production kernel). They are compiled for bf16, head-dim bucket 128 and the 16-row block layout
// only (the decode grid's configuration; generate_decode_instantiations.py), 29 kernels in
// one file that the build's dtype and head-dim options prune with it.
//
// How the K/V copies (cp.async.cg, 16 bytes a thread) treat L2:
//   kNone:          no hint (the production kernel);
//   kPrefetch128 /
//   kPrefetch256:   .L2::128B / .L2::256B, the L2 fetches the whole 128 / 256-byte sector group
//                   around each 16-byte request (a K/V row of one head is 256 bytes at d = 128,
//                   read by 16 threads of neighbouring lanes), so the DRAM sees fewer, larger
//                   requests.
// (An L2 evict_first policy on the copies, so that a launch's K/V lines, read once, become the L2's
// victims instead of the dirty lines a flushed L2 holds, was tried in four forms and removed: a
// createpolicy result held in a register, with and without a source size on the copies, raised an
// illegal instruction at the hinted cp.async on an H100 (2026-12-06, sm_90a, nvcc 13.0, driver
// 580), and a compile-time policy constant, with and without a source size, and createpolicy
// inside each copy's asm statement crashed decode_bench on their first launch (5f3b9c5);
// bench/cuda/decode_notes.md, v6.)
enum class DecodeCacheHint : uint8_t { kNone, kPrefetch128, kPrefetch256 };

struct DecodeVariant {
  const char* name;
  int stages;            // K+V pipeline stages; 0 = DecodeStages()
  DecodeCacheHint hint;  // on the K/V copies
  // Paged K/V: the page-table entries of a tile's rows are loaded one loop iteration before the
  // tile's copies are issued (so the copies never wait on a dependent table load), with the row's
  // offset inside its page in 32 bits (the host checks that a page fits) and a shift instead of a
  // division for power-of-two page sizes. Dense K/V: no change.
  bool pages_ahead;
  // Paged K/V: the split heuristic counts one block slot per SM, as for dense K/V, instead of
  // the resident blocks (the production rule, for the row-by-row lookups' latency). Host only.
  bool paged_one_slot;
  // KV heads per block (1 or 2; kv_heads must be a multiple). Two: the block reads both heads'
  // 256-byte rows of a key together, 512 contiguous bytes of the [.., kv_heads, d] layout where
  // one head reads 256 bytes of every 2 KB row (the peers' head-major layout reads contiguous
  // runs); its 4 warps are 2 per head, each with its head's 16-row Q tile and half of every
  // 64-key tile. 3 stages of 64 KB: one block per SM.
  int heads;
  // Paged K/V: the page-table entries of the block's whole split are read once, into shared
  // memory (kDecodePageCacheEntries), and every K/V copy looks its page up there (a shift for
  // power-of-two page sizes). The read is issued before the block knows its sequence's length,
  // for the split that a context of seqlen_k keys would give (right whenever the sequence is the
  // longest, e.g. at batch 1), so it overlaps the seqlens_k read instead of following it; a wrong
  // guess is read again. The production kernel's paged prologue is three dependent DRAM reads
  // (length, page entry, K/V), dense K/V's one. Dense K/V: no change.
  bool page_cache;
  // Split launches: no combine kernel. Each block publishes its partial, takes a ticket from its
  // (sequence, KV head, query tile)'s counter, and the last block of the unit merges the unit's
  // partials (the combine kernel's arithmetic, so the result is bitwise the same). The counters
  // are zeroed by a one-block kernel launched before the decode kernel, which the decode kernel
  // overlaps through programmatic dependent launch and waits for only before its ticket.
  bool fused_combine;
  // Outside the deterministic mode: every block walks its split's tiles starting at an offset
  // that depends on its sequence and head, so that the blocks of one wave, which all start at
  // tile 0 of sequences whose K/V sit a fixed stride apart (4 MB at 128 x 2k), read addresses
  // spread over the DRAM channels (pages of 64 in random order ran 1 % above dense at 32 x 8k).
  bool rotate;
  // How far the copy loops (a tile's 8 copy rounds per thread, the prologue's stages) are unrolled:
  // 0 = whole (the production kernel), 1 = rolled, 2 = by two; copy_unroll > 0 also sends a split
  // without keys through the main path instead of its own output code. The SASS drops from 72 KB
  // to 34 KB (by two: 41 KB), a test of call 1's correlation of batch-1 time with code size
  // (bench/cuda/decode_notes.md). Device call 3 (57ebcdf): no gain anywhere, up to 13 % lost where
  // one block holds an SM (the rolled loop's issue rate).
  int copy_unroll;
  // Two kernels, one without the softcap / ALiBi logit code (5 KB of SASS inside the loop at
  // d = 128), taken by launches that have neither; the other as the production kernel.
  bool specialize_logits;
  // With page_cache: the cached entries are looked up inside the production kernel's one copy
  // loop (a generic load from the shared cache, or from the table for a split longer than the
  // cache) instead of a second, cache-only copy loop beside it (pcache's 118 KB of SASS against
  // 72 KB; device call 1 measured pcache 0.73x even on dense K/V, where it runs the production
  // kernel's instructions: the size, or the two loops' layout, is the suspect).
  bool lean_cache;
  // Paged K/V: the page-table entries of the tile a loop iteration refills are loaded at the top
  // of that iteration, before it waits for its own tile and the block's barrier, so that the
  // entries' latency (an L2 or DRAM read the copies depend on) overlaps that wait instead of
  // stalling the copies' issue after it; they are live only across the wait (pages_ahead held
  // them across a whole tile's compute, 217 registers). Offsets inside a page in 32 bits, as
  // pages_ahead. Dense K/V: no change.
  bool pages_early = false;
};

inline constexpr DecodeVariant kDecodeVariants[] = {
    // name, stages, hint, pages_ahead, paged_one_slot, heads, page_cache, fused_combine, rotate,
    // copy_unroll, specialize_logits, lean_cache[, pages_early]
    {"base", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 0, false, false},
    {"l2_128", 0, DecodeCacheHint::kPrefetch128, false, false, 1, false, false, false, 0, false,
     false},
    {"l2_256", 0, DecodeCacheHint::kPrefetch256, false, false, 1, false, false, false, 0, false,
     false},
    {"pages_ahead", 0, DecodeCacheHint::kNone, true, false, 1, false, false, false, 0, false,
     false},
    // Batch 1 with pages: 16 splits instead of 32 at 1 x 8k, as dense (dense measured 1.28 TB/s
    // at 16 splits and 1.18 at 32; pages of 64 ran 1.17 at 32).
    {"pages_ahead_1slot", 0, DecodeCacheHint::kNone, true, true, 1, false, false, false, 0, false,
     false},
    // 4 and 6 stages of 32 KB at d = 128: 132 / 196 KB, one block per SM (the dense heuristic
    // counts one slot per SM already; pages then count one too).
    {"stages4", 4, DecodeCacheHint::kNone, false, false, 1, false, false, false, 0, false, false},
    {"stages6", 6, DecodeCacheHint::kNone, false, false, 1, false, false, false, 0, false, false},
    {"pages_ahead_l2_256", 0, DecodeCacheHint::kPrefetch256, true, false, 1, false, false, false, 0,
     false, false},
    {"pages_ahead_stages4_l2_256", 4, DecodeCacheHint::kPrefetch256, true, false, 1, false, false,
     false, 0, false, false},
    {"heads2", 3, DecodeCacheHint::kNone, false, false, 2, false, false, false, 0, false, false},
    {"heads2_l2_256", 3, DecodeCacheHint::kPrefetch256, false, false, 2, false, false, false, 0,
     false, false},
    // Issue 21's remaining rows (H100, 2026-12-06c call 4: dense 0.98-1.02x cuDNN, pages of 64
    // 0.94-1.00x, weakest at batch 1): the paged prologue and lookups, the combine launch, and
    // where the blocks of a wave read.
    {"pcache", 0, DecodeCacheHint::kNone, false, false, 1, true, false, false, 0, false, false},
    {"pcache_1slot", 0, DecodeCacheHint::kNone, false, true, 1, true, false, false, 0, false,
     false},
    {"fused", 0, DecodeCacheHint::kNone, false, false, 1, false, true, false, 0, false, false},
    {"fused_pcache", 0, DecodeCacheHint::kNone, false, false, 1, true, true, false, 0, false,
     false},
    {"fused_pcache_1slot", 0, DecodeCacheHint::kNone, false, true, 1, true, true, false, 0, false,
     false},
    {"rotate", 0, DecodeCacheHint::kNone, false, false, 1, false, false, true, 0, false, false},
    {"fused_pcache_rotate", 0, DecodeCacheHint::kNone, false, false, 1, true, true, true, 0, false,
     false},
    // The production kernel as device call 4 measured it (every flag off): the same kernel as
    // "base" until base's flags change, so that until then the pair shows the run's noise, and
    // after it the old default stays measurable.
    {"prev", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 0, false, false},
    // Device call 1 of the fourth session (bench/results/gpu_2026-12-06d.md): every variant above
    // lost, in step with its code size at batch 1. The same kernels with rolled copy loops (call 3:
    // they lost too; copy_unroll's comment).
    {"compact", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 1, false, false},
    {"compact_u2", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 2, false,
     false},
    {"compact_pcache", 0, DecodeCacheHint::kNone, false, false, 1, true, false, false, 1, false,
     false},
    {"compact_pcache_1slot", 0, DecodeCacheHint::kNone, false, true, 1, true, false, false, 1,
     false, false},
    // compact without the softcap / ALiBi code where a launch has neither: 28.7 KB (with the page
    // cache 41.5 KB).
    {"compact_fast", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 1, true,
     false},
    {"compact_fast_pcache_1slot", 0, DecodeCacheHint::kNone, false, true, 1, true, false, false, 1,
     true, false},
    // The page cache in the production kernel's copy loop (device call 3 measured the cache's
    // idea: compact_pcache_1slot ran pages at 16 splits as fast as the production kernel at 32).
    {"pcache_lean", 0, DecodeCacheHint::kNone, false, false, 1, true, false, false, 0, false, true},
    {"pcache_lean_1slot", 0, DecodeCacheHint::kNone, false, true, 1, true, false, false, 0, false,
     true},
    // Sixth session of 2026-12-06: the paged entries loaded before the loop's wait (device call 2:
    // 0.89-1.00x base, dense too).
    {"pages_early", 0, DecodeCacheHint::kNone, false, false, 1, false, false, false, 0, false,
     false, true},
};
inline constexpr int kDecodeNumVariants =
    static_cast<int>(sizeof(kDecodeVariants) / sizeof(kDecodeVariants[0]));

// The production kernel is kDecodeVariants[0] for every element type, head-dim bucket and row
// layout: its page_cache, fused_combine and rotate flags (and paged_one_slot, on the host) switch
// those features on for all of them once a variant has won on the device.

// Page-cache entries of `v`'s kernel at `head_dim_bucket` with `rows`: kDecodePageCacheEntries
// where `v` asks for the cache and the 2 KB cost no pipeline stage (d = 128 with 64 rows would
// drop from 3 stages to 2: no cache there), else 0.
ATTN_HOST_DEVICE constexpr int DecodePageCacheEntries(const DecodeVariant& v, int head_dim_bucket,
                                                      DecodeRows rows) {
  if (!v.page_cache || v.heads != 1) return 0;
  const DecodeSmem with = DecodeSmem16(head_dim_bucket, rows, v.stages, 1, kDecodePageCacheEntries);
  const DecodeSmem without = DecodeSmem16(head_dim_bucket, rows, v.stages, 1);
  return with.stages == without.stages ? kDecodePageCacheEntries : 0;
}

// What the split heuristic sees of a launch.
struct DecodeWorkload {
  int batch = 0;
  int kv_heads = 0;
  int query_tiles = 1;  // query tiles per (sequence, KV head)
  int kv_tiles = 0;     // KV tiles of the longest sequence's visited key span
  int num_sms = 0;
  int blocks_per_sm = 1;  // resident blocks per multiprocessor (shared memory bound)
};

// Fewest KV tiles a split may have: a split pays a pipeline fill (~2 us of latency before its
// first tile lands) and one partial write; 4 tiles of 64 keys (128 KB of K+V at d = 128) keep
// that under a fifth of its streaming time at a fair share of HBM bandwidth.
inline constexpr int kDecodeMinTilesPerSplit = 4;

// The number of splits of every (sequence, KV head, query tile) unit's key span (host only).
//
// Decode is bound by HBM bandwidth, and bandwidth comes from bytes in flight: every resident block
// keeps its pipeline stages in flight, so the launch reaches full bandwidth when the grid fills
// every resident-block slot of every SM (num_sms x blocks_per_sm, not just num_sms as for a
// compute-bound kernel), and keeps it as long as the slots stay full. The model: `units` blocks
// per split, T KV tiles per unit, s splits of per(s) = ceil(T / s) tiles (so only
// s' = ceil(T / per(s)) of them hold tiles, and s' is what the launch uses: no empty splits),
// and a launch time of ceil(units * s' / slots) waves of per(s) tiles each. Its efficiency is the
// ideal units * T / slots tile-times over that. Choices:
//  - s = 1 when one split is already within 0.95 of the ideal: more splits only add partial
//    writes and a combine pass (128 x 2k with 8 KV heads: 1024 units, 4 waves of 264 slots for
//    3.9 waves of work, 0.97).
//  - Otherwise the smallest s within 0.95 of the best efficiency over 1..max_splits. FA3's
//    hopper/heuristics.h keeps 0.85 of the best wave fill against num_sms and ignores the
//    rounding of tiles into splits; a decode block streams for its whole life, so an idle slot
//    or a longer last split is lost bandwidth, hence the slot count, the tile rounding and the
//    tighter bound. 1 x 8k with 8 KV heads: 32 splits of 4 tiles fill 256 of 264 slots, where 31
//    would cut 26 splits of 5 tiles.
//  - max_splits: kDecodeMaxSplits, and no split below kDecodeMinTilesPerSplit tiles.
// FA3's other case, splitting even a full grid when one KV head outgrows L2 and many query
// tiles re-read it, cannot arise: a unit reads its KV head's keys once, for all its query rows.
inline int DecodeSplitHeuristic(const DecodeWorkload& w) {
  const int64_t units = int64_t{w.batch} * w.kv_heads * w.query_tiles;
  const int64_t slots = int64_t{w.num_sms} * (w.blocks_per_sm > 0 ? w.blocks_per_sm : 1);
  const int64_t tiles = w.kv_tiles;
  if (units <= 0 || slots <= 0 || tiles <= 0) return 1;
  int max_splits = w.kv_tiles / kDecodeMinTilesPerSplit;
  if (max_splits > kDecodeMaxSplits) max_splits = kDecodeMaxSplits;
  const double ideal = static_cast<double>(units) * tiles / slots;
  const auto used = [&](int s) {
    const int64_t per = (tiles + s - 1) / s;
    return static_cast<int>((tiles + per - 1) / per);
  };
  const auto efficiency = [&](int s) {
    const int64_t per = (tiles + s - 1) / s;
    const int64_t waves = (units * used(s) + slots - 1) / slots;
    return ideal / static_cast<double>(waves * per);
  };
  if (max_splits <= 1 || efficiency(1) >= 0.95) return 1;
  double best = 0.0;
  for (int s = 1; s <= max_splits; ++s) {
    if (efficiency(s) > best) best = efficiency(s);
  }
  for (int s = 1; s <= max_splits; ++s) {
    if (efficiency(s) >= 0.95 * best) return used(s);
  }
  return 1;
}

}  // namespace attention::cuda

#endif  // ATTENTION_KERNELS_CUDA_DECODE_HEURISTICS_H_
