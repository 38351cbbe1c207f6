// Device code of the Hopper forward kernel (sm_90a): the algorithm of flash_fwd_kernel.cuh with
// the two products on warpgroup MMAs.
//
// One thread block of kWarpgroups warpgroups computes O and LSE for 64 * kWarpgroups query rows
// of one (sequence, head); warpgroup w owns rows [64 w, 64 w + 64):
//   - Q, K and V tiles are copied to shared memory with cp.async in the 128-byte-swizzled layout
//     of SmemTile (64-column panels), which is the layout wgmma's shared-memory descriptors
//     describe: Q as the K-major A operand, K as the K-major B operand of S = Q K^T, and V as the
//     N-major B operand of O += P V. No ldmatrix: the tensor cores read shared memory directly.
//   - K / V tiles stream through two buffers each from the last tile down, one barrier per tile:
//     K runs one tile ahead of V, so step n computes S[n] = Q K[n]^T and O += P[n+1] V[n+1].
//     The paged variants copy from the pages with the same cp.async, each thread's rows of a
//     tile grouped in one page (one page-table entry and one page offset per tile; a bulk tensor
//     copy would need one per page and row block). A thread's page entries are read from the
//     page table one step ahead into registers, or, for pages too small for the grouped copy,
//     come two steps ahead through shared slots (flash_fwd_common.cuh, "Paged K / V").
//   - S = Q K^T: kHeadDim / 16 wgmma.m64nNk16 (N = kBlockN) per warpgroup, float32 accumulators.
//   - Masks, online softmax and the epilogue (attention sinks included) are the mma.sync
//     kernel's (flash_fwd_common.cuh): the m64nN accumulator layout gives every warp 16 rows in
//     the m16n8 layout.
//   - O += P V: P stays in registers as wgmma's A operand (the S accumulators rounded to 16 bits
//     are exactly its register fragments), kBlockN / 16 wgmma.m64nNk16 with N = kHeadDim. It is
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
  using MmaS = Wgmma<Element, kBlockN>;
  using MmaO = Wgmma<Element, kHeadDim>;

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
  LoadTile<Traits, kBlockM>(smem_q, c.q, p.q_row_stride, c.rows, valid_chunks, tid);
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
      LoadPagedTilesDirect<Traits>(k_pool, c, n_first, valid_chunks, tid);
      CopyTilePages<Traits>(page_slots, c, n_first, tid);
      if (n_first > tiles.begin) CopyTilePages<Traits>(page_slots, c, n_first - 1, tid);
    }
  } else {
    LoadTile<Traits, kBlockN>(k_tile(n_first), c.k + int64_t{n_first} * kBlockN * p.k_row_stride,
                              p.k_row_stride, c.len_k - n_first * kBlockN, valid_chunks, tid);
  }
  CpAsyncCommit();

  // Descriptors (128-byte swizzle; rows of a panel 128 bytes apart, 8-row groups 1024 apart).
  // Q and K are K-major: a k16 step is 32 bytes within a 64-column panel, and the next panel
  // starts kRows * 128 bytes further. V is N-major: its leading byte offset is the panel stride
  // (the next 64 columns of N = head_dim), and a k16 step of P V is 16 rows = 2048 bytes.
  const uint64_t q_desc = SmemDescriptor(smem_q + warpgroup * 64 * 128, 16, 1024);

  // P of the previous step (tile n + 1) as wgmma A fragments, consumed by that tile's P V, which
  // runs while this step's softmax does.
  uint32_t p_frag[kNTilesS / 2][4];
  // O += P[n] V[n] on the tensor cores, asynchronously (committed, not waited for).
  const auto issue_pv = [&](int n) {
    const uint64_t v_desc = SmemDescriptor(v_tile(n), kBlockN * 128, 1024);
    FenceAccumulators(acc_o[0]);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kNTilesS / 2; ++kk) {
      MmaO::RS(acc_o[0], p_frag[kk], AdvanceDescriptor(v_desc, kk * 16 * 128));
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
        LoadPagedTilesFromSlot<Traits>(k_pool, c, n - 1, valid_chunks, page_slots, tid);
      }
      LoadPagedTilesFromSlot<Traits>(v_pool, c, n, valid_chunks, page_slots, tid);
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
        LoadTile<Traits, kBlockN>(k_tile(n - 1), c.k + int64_t{key0 - kBlockN} * p.k_row_stride,
                                  p.k_row_stride, kBlockN, valid_chunks, tid);
      }
      LoadTile<Traits, kBlockN>(v_tile(n), c.v + int64_t{key0} * p.v_row_stride, p.v_row_stride,
                                c.len_k - key0, valid_chunks, tid);
      CpAsyncCommit();
    }

    float acc_s[1][kNTilesS][4];
    const uint64_t k_desc = SmemDescriptor(k_tile(n), 16, 1024);
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      const uint32_t q_off = (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
      const uint32_t k_off = (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
      MmaS::SS(acc_s[0], AdvanceDescriptor(q_desc, q_off), AdvanceDescriptor(k_desc, k_off),
               ks > 0);
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
