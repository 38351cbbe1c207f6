// Device code of the Hopper forward kernel (sm_90a): the algorithm of flash_fwd_kernel.cuh with
// the two products on warpgroup MMAs.
//
// One thread block of kWarpgroups warpgroups computes O and LSE for 64 * kWarpgroups query rows
// of one (sequence, head); warpgroup w owns rows [64 w, 64 w + 64):
//   - Q, K and V tiles are copied to shared memory with cp.async in the swizzled layout of
//     SmemTile, which is the layout wgmma's shared-memory descriptors describe: its 64-column
//     panels are the 128-byte swizzle and the trailing 32-column panel of buckets 32, 96, 160
//     and 224 the 64-byte swizzle. Q is the K-major A operand and K the K-major B operand of
//     S = Q K^T, V the N-major B operand of O += P V. No ldmatrix: the tensor cores read shared
//     memory directly.
//   - K / V tiles stream through two buffers each from the last tile down, one barrier per tile:
//     K runs one tile ahead of V, so step n computes S[n] = Q K[n]^T and O += P[n+1] V[n+1].
//     The paged variants copy from the pages with the same cp.async, each thread's rows of a
//     tile grouped in one page (one page-table entry and one page offset per tile; a bulk tensor
//     copy would need one per page and row block). A thread's page entries are read from the
//     page table one step ahead into registers, or, for pages too small for the grouped copy,
//     come two steps ahead through shared slots (flash_fwd_common.cuh, "Paged K / V").
//   - S = Q K^T: kHeadDim / 16 wgmma.m64nNk16 (N = kBlockN) per warpgroup, float32 accumulators;
//     each k16 step has its own descriptors (4 per 64-column panel, 2 in a 32-column one).
//   - Masks, online softmax and the epilogue (attention sinks included) are the mma.sync
//     kernel's (flash_fwd_common.cuh): the m64nN accumulator layout gives every warp 16 rows in
//     the m16n8 layout.
//   - O += P V: P stays in registers as wgmma's A operand (the S accumulators rounded to 16 bits
//     are exactly its register fragments), kBlockN / 16 wgmma.m64nNk16 with N = kHeadDim, or, with
//     a trailing 32-column panel, N = 64 * kFullPanels and N = 32 per k16 step (one swizzle mode
//     per descriptor: O's first kNTilesOFull n8 tiles, then its last 4). It is
//     issued right behind the next tile's S = Q K^T and left running while that tile's softmax
//     runs (intra-warpgroup overlap of the exponentials with the tensor cores); O is rescaled
//     by the softmax's correction once it has completed.
// Compiled to an empty kernel for architectures other than sm_90a; the host dispatch launches it
// only on compute capability 9.0 devices when the build includes sm_90a.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_fwd_common.cuh"
#include "kernels/cuda/kernel_traits.h"
#include "kernels/cuda/wgmma_ops.cuh"

namespace attention::cuda::fwd {

// LoadTile (flash_fwd_common.cuh) for the buckets with a trailing 32-column panel, whose rows of
// kChunks = 8 * kFullPanels + 4 chunks do not divide the block's threads: the 64-column panels
// and the trailing panel are copied as tiles of their own (rows of 8 and of 4 chunks, which
// kNThreads divides), so that every copy of a thread steps from one of two source pointers by
// compile-time offsets (whole rows, whole panels) instead of holding an address per copy.
template <typename Traits, int kRows, typename Element>
__device__ __forceinline__ void LoadTileByPanels(uint32_t smem_tile, const Element* gmem,
                                                 int64_t row_stride, int valid_rows,
                                                 int valid_chunks, int tid) {
  using Tile = SmemTile<kRows, Traits::kHeadDim>;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kFullPanels = static_cast<int>(Tile::kFullPanels);
  static_assert(Tile::kHasHalfPanel && kThreads % 8 == 0, "rows of 8 and 4 chunks");
  if constexpr (kFullPanels > 0) {
    constexpr int kRowsPerIter = kThreads / 8;
    static_assert(kRows % kRowsPerIter == 0, "whole passes over the 64-column panels");
    const int row0 = tid / 8;
    const int chunk = tid % 8;
    const Element* src = gmem + row0 * row_stride + chunk * 8;
#pragma unroll
    for (int it = 0; it < kRows / kRowsPerIter; ++it) {
      const int row = row0 + it * kRowsPerIter;
#pragma unroll
      for (int panel = 0; panel < kFullPanels; ++panel) {
        const bool pred = row < valid_rows && 8 * panel + chunk < valid_chunks;
        CpAsync16(smem_tile + Tile::Offset(row, 8 * panel + chunk), src + panel * 64, pred);
      }
      src += kRowsPerIter * row_stride;
    }
  }
  constexpr int kRowsPerIter = kThreads / 4;
  constexpr int kIters = (kRows + kRowsPerIter - 1) / kRowsPerIter;
  const int row0 = tid / 4;
  const int chunk = 8 * kFullPanels + tid % 4;
  const Element* src = gmem + row0 * row_stride + chunk * 8;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int row = row0 + it * kRowsPerIter;
    if (kRows % kRowsPerIter == 0 || row < kRows) {
      CpAsync16(smem_tile + Tile::Offset(row, chunk), src,
                row < valid_rows && chunk < valid_chunks);
    }
    src += kRowsPerIter * row_stride;
  }
}

// The tile copy of the kernel: LoadTileByPanels for the buckets with a trailing 32-column panel
// whose rows' chunks do not divide the threads (96, 160, 224), LoadTile for the others (bucket 192,
// whose 24 chunks do not divide them either, keeps LoadTile's code unchanged).
template <typename Traits, int kRows, typename Element>
__device__ __forceinline__ void LoadTileSm90(uint32_t smem_tile, const Element* gmem,
                                             int64_t row_stride, int valid_rows, int valid_chunks,
                                             int tid) {
  if constexpr (Traits::kHasHalfPanel && Traits::kNThreads % Traits::kChunks != 0) {
    LoadTileByPanels<Traits, kRows>(smem_tile, gmem, row_stride, valid_rows, valid_chunks, tid);
  } else {
    LoadTile<Traits, kRows>(smem_tile, gmem, row_stride, valid_rows, valid_chunks, tid);
  }
}

// The per-row paged copy (flash_fwd_common.cuh, LoadPagedTiles) of KV tile `n` by panels, for the
// same buckets: a thread's rows of the 64-column panels (rows of 8 chunks) and of the trailing
// panel (rows of 4 chunks) each take one page-table entry and one address, shared by the row's
// panels. Same contract as LoadPagedTiles: rows holding keys of [key_begin, key_end) and chunks
// below valid_chunks are copied, the rest zero-filled; page_of(e) is called only for such rows.
template <typename Traits, typename Element, int kPools, typename PageOf>
__device__ __forceinline__ void LoadPagedTilesByPanels(const PagedPool<Element> (&pools)[kPools],
                                                       const BlockCoords<Element>& c, int n,
                                                       int valid_chunks, PageOf&& page_of,
                                                       int tid) {
  using Tile = SmemTile<Traits::kBlockN, Traits::kHeadDim>;
  constexpr int kRows = Traits::kBlockN;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kFullPanels = static_cast<int>(Tile::kFullPanels);
  static_assert(Tile::kHasHalfPanel && kThreads % 8 == 0, "rows of 8 and 4 chunks");
  const int key0 = n * kRows;
  // Copies `kPanels` panels' chunk `chunk` (of the first panel) of tile row `row`.
  const auto copy_row = [&](int row, int chunk, auto panels) {
    constexpr int kPanels = decltype(panels)::value;
    const bool row_ok = row >= c.key_begin - key0 && row < c.key_end - key0;
    const int page = row_ok ? page_of(TileRowPage(row, c.page_shift)) : 0;
    const int in_page = TileRowInPage(n, kRows, row, c.page_shift);
#pragma unroll
    for (int i = 0; i < kPools; ++i) {
      const Element* src =
          pools[i].base + page * pools[i].page_stride + in_page * pools[i].row_stride + chunk * 8;
#pragma unroll
      for (int panel = 0; panel < kPanels; ++panel) {
        CpAsync16(pools[i].smem_tile + Tile::Offset(row, chunk + 8 * panel), src + panel * 64,
                  row_ok && chunk + 8 * panel < valid_chunks);
      }
    }
  };
  if constexpr (kFullPanels > 0) {
    constexpr int kRowsPerIter = kThreads / 8;
    static_assert(kRows % kRowsPerIter == 0, "whole passes over the 64-column panels");
#pragma unroll
    for (int it = 0; it < kRows / kRowsPerIter; ++it) {
      copy_row(tid / 8 + it * kRowsPerIter, tid % 8, std::integral_constant<int, kFullPanels>{});
    }
  }
  constexpr int kRowsPerIter = kThreads / 4;
#pragma unroll
  for (int it = 0; it < (kRows + kRowsPerIter - 1) / kRowsPerIter; ++it) {
    const int row = tid / 4 + it * kRowsPerIter;
    if (kRows % kRowsPerIter == 0 || row < kRows) {
      copy_row(row, 8 * kFullPanels + tid % 4, std::integral_constant<int, 1>{});
    }
  }
}

// The paged copies of the kernel: LoadPagedTilesDirect / FromSlot (flash_fwd_common.cuh), or by
// panels for the same buckets as LoadTileSm90 (whose tiles never take the page-grouped copy:
// kHasPageGroupedCopy needs kNThreads % kChunks == 0).
template <typename Traits, typename Element, int kPools>
__device__ __forceinline__ void LoadPagedTilesDirectSm90(const PagedPool<Element> (&pools)[kPools],
                                                         const BlockCoords<Element>& c, int n,
                                                         int valid_chunks, int tid) {
  if constexpr (Traits::kHasHalfPanel && Traits::kNThreads % Traits::kChunks != 0) {
    LoadPagedTilesByPanels<Traits>(
        pools, c, n, valid_chunks,
        [&](int e) { return c.pages[TilePage(n, Traits::kBlockN, e, c.page_shift)]; }, tid);
  } else {
    LoadPagedTilesDirect<Traits>(pools, c, n, valid_chunks, tid);
  }
}
template <typename Traits, typename Element, int kPools>
__device__ __forceinline__ void LoadPagedTilesFromSlotSm90(
    const PagedPool<Element> (&pools)[kPools], const BlockCoords<Element>& c, int n,
    int valid_chunks, const int32_t* slots, int tid) {
  if constexpr (Traits::kHasHalfPanel && Traits::kNThreads % Traits::kChunks != 0) {
    const int32_t* slot = slots + PageSlotIndex<Traits>(n, 0);
    LoadPagedTilesByPanels<Traits>(
        pools, c, n, valid_chunks, [&](int e) { return slot[e]; }, tid);
  } else {
    LoadPagedTilesFromSlot<Traits>(pools, c, n, valid_chunks, slots, tid);
  }
}

// Bytes of dynamic shared memory the kernel is launched with: the tiles (and the page slots of the
// paged variants) plus the slack that lets it align them to 1024 bytes.
template <typename Traits, FwdVariant kVariant>
constexpr int Sm90SmemBytes() {
  return (VariantIsPaged(kVariant) ? Traits::kSmemBytesPaged : Traits::kSmemBytes) + 1024;
}

// Grid: (ceil(seqlen_q / kBlockM), q_heads, batch); kNThreads threads;
// Sm90SmemBytes<Traits, kVariant>() of dynamic shared memory. `p` is normalized and checked by the
// host API; device pointers.
template <typename Traits, typename Element, FwdVariant kVariant>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashFwdSm90Kernel(const __grid_constant__ AttentionParams p) {
#ifdef ATTN_HAVE_WGMMA
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kChunks = Traits::kChunks;
  constexpr bool kGeneral = VariantIsGeneral(kVariant);
  constexpr bool kPaged = VariantIsPaged(kVariant);
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  constexpr int kFullPanels = Traits::kFullPanels;
  constexpr bool kHasHalfPanel = Traits::kHasHalfPanel;
  constexpr int kNTilesOFull = Traits::kNTilesOFull;
  using MmaS = Wgmma<Element, kBlockN>;
  // O += P V over the 64-column panels, and over the trailing 32-column panel if there is one.
  using MmaO = Wgmma<Element, kHasHalfPanel ? 64 * kFullPanels : kHeadDim>;
  using MmaOHalf = Wgmma<Element, 32>;

  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_base = (SmemAddress(smem) + 1023u) & ~1023u;
  const uint32_t smem_q = smem_base + Traits::kSmemQOffset;
  const uint32_t smem_k = smem_base + Traits::kSmemKOffset;
  const uint32_t smem_v = smem_base + Traits::kSmemVOffset;
  [[maybe_unused]] int32_t* const page_slots =
      reinterpret_cast<int32_t*>(smem + (smem_base - SmemAddress(smem)) + Traits::kSmemPageOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warpgroup = warp / 4;
  // The warp's 16 rows: rows 16 * (warp % 4) of its warpgroup's 64, which start at 64 * warpgroup.
  const int warp_row0 = warp * 16;

  BlockCoords<Element> c;
  KvTileRange tiles;
  if (!BeginBlock<Traits, kVariant>(p, c, tiles)) return;
  const int valid_chunks = p.head_dim / 8;

  const float scale_log2 = SoftmaxScaleLog2<kVariant>(p);

  float acc_o[1][kNTilesO][4];
#pragma unroll
  for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_o[0][dt][e] = 0.f;
  }
  RowStats<1> stats;
  stats.Init();

  // K[n] and V[n] live in buffer n % 2 of their buffer pairs.
  const auto k_tile = [&](int n) { return smem_k + (n & 1) * KVTile::kBytes; };
  const auto v_tile = [&](int n) { return smem_v + (n & 1) * KVTile::kBytes; };
  // Prologue: Q and the first K tile. The first step issues V[n_first] and K[n_first - 1].
  // Paged, per-row copy: the first K tile's pages come straight from the page table, and the page
  // entries of the two tiles the first step loads join the group.
  const int n_first = tiles.end - 1;
  LoadTileSm90<Traits, kBlockM>(smem_q, c.q, p.q_row_stride, c.rows, valid_chunks, tid);
  // Paged, page-grouped copy (UsesPageGroupedCopy): each thread copies its rows of a tile from one
  // page, page entry e_thread of the tile, held in registers instead of the shared slots:
  // page_v is V[n]'s at step n (K[n]'s, copied one step earlier), page_k K[n - 1]'s, read from
  // the page table one step ahead (at step n + 1, or by the prologue).
  [[maybe_unused]] bool grouped = false;
  [[maybe_unused]] int e_thread = 0;
  [[maybe_unused]] int32_t page_v = 0;
  [[maybe_unused]] int32_t page_k = 0;
  if constexpr (kPaged) {
    const PagedPool<Element> k_pool[1] = {{k_tile(n_first), c.k, p.k_batch_stride, p.k_row_stride}};
    grouped = UsesPageGroupedCopy<Traits>(c.page_shift);
    if (grouped) {
      e_thread = ThreadPageGroupRows(tid, Traits::kNThreads, kChunks, kBlockN, c.page_shift).page;
      page_v = ThreadTilePage<Traits>(c, n_first, e_thread);
      LoadPagedTilesGrouped<Traits>(
          k_pool, c, n_first, valid_chunks, [&](int) { return page_v; }, tid);
      if (n_first > tiles.begin) page_k = ThreadTilePage<Traits>(c, n_first - 1, e_thread);
    } else {
      LoadPagedTilesDirectSm90<Traits>(k_pool, c, n_first, valid_chunks, tid);
      CopyTilePages<Traits>(page_slots, c, n_first, tid);
      if (n_first > tiles.begin) CopyTilePages<Traits>(page_slots, c, n_first - 1, tid);
    }
  } else {
    LoadTileSm90<Traits, kBlockN>(k_tile(n_first),
                                  c.k + int64_t{n_first} * kBlockN * p.k_row_stride, p.k_row_stride,
                                  c.len_k - n_first * kBlockN, valid_chunks, tid);
  }
  CpAsyncCommit();

  // Descriptors (128-byte swizzle; rows of a panel 128 bytes apart, 8-row groups 1024 apart).
  // Q and K are K-major: a k16 step is 32 bytes within a 64-column panel, and the next panel
  // starts kRows * 128 bytes further. V is N-major: its leading byte offset is the panel stride
  // (the next 64 columns of N = head_dim), and a k16 step of P V is 16 rows = 2048 bytes.
  // The trailing 32-column panel (64-byte swizzle; rows 64 bytes apart, 8-row groups 512 apart)
  // starts kRows * 128 * kFullPanels bytes into its tile: two k16 steps of 32 bytes for Q K^T;
  // for P V one N = 32 block (its leading byte offset, the stride to a next 32 columns, is never
  // used) and 16 rows = 1024 bytes per k16 step.
  const uint64_t q_desc = SmemDescriptor(smem_q + warpgroup * 64 * 128, 16, 1024);
  [[maybe_unused]] const uint64_t q_half_desc = SmemDescriptorSwizzle64(
      smem_q + kFullPanels * (kBlockM * 128) + warpgroup * 64 * 64, 16, 512);

  // P of the previous step (tile n + 1) as wgmma A fragments, consumed by that tile's P V, which
  // runs while this step's softmax does.
  uint32_t p_frag[kNTilesS / 2][4];
  // O += P[n] V[n] on the tensor cores, asynchronously (committed, not waited for).
  const auto issue_pv = [&](int n) {
    const uint64_t v_desc = SmemDescriptor(v_tile(n), kBlockN * 128, 1024);
    FenceAccumulators(acc_o[0]);
    WgmmaFence();
    if constexpr (!kHasHalfPanel) {
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) {
        MmaO::RS(acc_o[0], p_frag[kk], AdvanceDescriptor(v_desc, kk * 16 * 128));
      }
    } else {
      // O's n8 tiles [0, kNTilesOFull) over the 64-column panels, [kNTilesOFull, kNTilesO) over
      // the trailing 32 columns: the same registers, seen as the two wgmmas' accumulators.
      auto& o_full = reinterpret_cast<float(&)[kNTilesOFull > 0 ? kNTilesOFull : 1][4]>(acc_o[0]);
      auto& o_half = reinterpret_cast<float(&)[4][4]>(acc_o[0][kNTilesOFull]);
      const uint64_t v_half_desc =
          SmemDescriptorSwizzle64(v_tile(n) + kFullPanels * (kBlockN * 128), kBlockN * 64, 512);
#pragma unroll
      for (int kk = 0; kk < kNTilesS / 2; ++kk) {
        if constexpr (kFullPanels > 0) {
          MmaO::RS(o_full, p_frag[kk], AdvanceDescriptor(v_desc, kk * 16 * 128));
        }
        MmaOHalf::RS(o_half, p_frag[kk], AdvanceDescriptor(v_half_desc, kk * 16 * 64));
      }
    }
    WgmmaCommit();
  };
  // Makes the copies issued one step ago visible to every warpgroup (and to the async proxy);
  // after the barrier no warpgroup still reads the buffers the next copies overwrite.
  const auto publish_copies = [&] {
    CpAsyncWait<0>();
    FenceProxyAsyncShared();
    __syncthreads();
  };

  // Step n: S[n] = Q K[n]^T, and O += P[n+1] V[n+1] behind it; the softmax of S[n] runs while
  // P V is on the tensor cores, and O is rescaled once P V has completed. The copies of K[n-1]
  // (into the buffer K[n+1] left, S[n+1] having completed) and V[n] (into V[n+2]'s, whose P V
  // completed one step ago) are issued at the top and land during the step.
  // Paged, per-row copy: the same copies, row by row from their pages. Tile t's page entries are
  // in slot t, copied at step t + 2 (or by the prologue); here those of tile n - 2 go into the
  // slot that tile n + 2 left, which steps n + 2 (its V) and n + 3 (its K) read before this
  // step's barrier.
  // (Issued after S[n] instead, while the tensor cores run, the copies' address registers made
  // ptxas serialize the wgmmas (C7514) or spill at d = 64 and 128.)
  // Page-grouped: the same copies from the registers' pages; then V[n - 1] takes K[n - 1]'s page
  // and tile n - 2's is read for the next step's K.
  const auto issue_paged_copies = [&](const int n) {
    const PagedPool<Element> k_pool[1] = {{k_tile(n - 1), c.k, p.k_batch_stride, p.k_row_stride}};
    const PagedPool<Element> v_pool[1] = {{v_tile(n), c.v, p.v_batch_stride, p.v_row_stride}};
    if (grouped) {
      if (n > tiles.begin) {
        LoadPagedTilesGrouped<Traits>(
            k_pool, c, n - 1, valid_chunks, [&](int) { return page_k; }, tid);
      }
      LoadPagedTilesGrouped<Traits>(
          v_pool, c, n, valid_chunks, [&](int) { return page_v; }, tid);
      page_v = page_k;
      page_k = n - 2 >= tiles.begin ? ThreadTilePage<Traits>(c, n - 2, e_thread) : 0;
    } else {
      if (n > tiles.begin) {
        LoadPagedTilesFromSlotSm90<Traits>(k_pool, c, n - 1, valid_chunks, page_slots, tid);
      }
      LoadPagedTilesFromSlotSm90<Traits>(v_pool, c, n, valid_chunks, page_slots, tid);
      if (n - 2 >= tiles.begin) CopyTilePages<Traits>(page_slots, c, n - 2, tid);
    }
    CpAsyncCommit();
  };
  const auto step = [&](const int n, auto mask_tag) {
    constexpr bool kMask = decltype(mask_tag)::value;
    const int key0 = n * kBlockN;
    const bool has_pv = n < n_first;
    publish_copies();
    if constexpr (kPaged) {
      issue_paged_copies(n);
    } else {
      if (n > tiles.begin) {
        LoadTileSm90<Traits, kBlockN>(k_tile(n - 1), c.k + int64_t{key0 - kBlockN} * p.k_row_stride,
                                      p.k_row_stride, kBlockN, valid_chunks, tid);
      }
      LoadTileSm90<Traits, kBlockN>(v_tile(n), c.v + int64_t{key0} * p.v_row_stride, p.v_row_stride,
                                    c.len_k - key0, valid_chunks, tid);
      CpAsyncCommit();
    }

    float acc_s[1][kNTilesS][4];
    const uint64_t k_desc = SmemDescriptor(k_tile(n), 16, 1024);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < 4 * kFullPanels; ++ks) {
      const uint32_t q_off = (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
      const uint32_t k_off = (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
      MmaS::SS(acc_s[0], AdvanceDescriptor(q_desc, q_off), AdvanceDescriptor(k_desc, k_off),
               ks > 0);
    }
    if constexpr (kHasHalfPanel) {
      const uint64_t k_half_desc =
          SmemDescriptorSwizzle64(k_tile(n) + kFullPanels * (kBlockN * 128), 16, 512);
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        MmaS::SS(acc_s[0], AdvanceDescriptor(q_half_desc, ks * 32),
                 AdvanceDescriptor(k_half_desc, ks * 32), kFullPanels > 0 || ks > 0);
      }
    }
    WgmmaCommit();
    if (has_pv) {
      issue_pv(n + 1);
      WgmmaWait<1>();  // S[n] done; P V may still run
    } else {
      WgmmaWait<0>();
    }
    FenceAccumulators(acc_s[0]);

    if constexpr (kGeneral) ScoresToLogits(acc_s, p, c, warp_row0, key0, lane);
    if constexpr (kMask) MaskOutsideWindow(acc_s, c, warp_row0, key0, lane);
    float alpha[1][2];
    const bool rescale = SoftmaxStep(acc_s, stats, scale_log2, alpha);

    WgmmaWait<0>();  // P[n+1] V[n+1] done: O and p_frag are free
    FenceAccumulators(acc_o[0]);
    FenceFragments(p_frag);
    if (rescale) RescaleRows(acc_o, alpha);
#pragma unroll
    for (int kk = 0; kk < kNTilesS / 2; ++kk) PackP<Element>(p_frag[kk], acc_s, 0, kk);
  };
  ForEachKvTile<kBlockN, kVariant>(tiles, c, step);
  // The last tile's P V.
  publish_copies();
  issue_pv(tiles.begin);
  WgmmaWait<0>();
  FenceAccumulators(acc_o[0]);
  FenceFragments(p_frag);

  // Every wgmma of this warpgroup has completed, so its warps may overwrite their own Q rows.
  StoreOutput<QTile, kChunks>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e, smem_q, c,
                              p.o_row_stride, valid_chunks, warp_row0, lane);
#endif  // ATTN_HAVE_WGMMA
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_SM90_KERNEL_CUH_
