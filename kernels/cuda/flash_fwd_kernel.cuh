// Device code of the fused forward attention kernel (FlashAttention-2 algorithm on mma.sync).
//
// One thread block computes O and LSE for one tile of kBlockM query rows of one (sequence, head):
//   - the Q tile is copied once to shared memory (cp.async, zero-filled past seqlen / head_dim);
//   - K and V tiles of kBlockN keys stream through shared memory (cp.async, kKVStages buffers),
//     from the last tile the block needs down to the first, so that the tiles that need masking
//     (sequence tail, causal diagonal) come first and the rest run unmasked; the paged variants
//     copy each row from its page, the tile's page-table entries fetched two steps ahead
//     (flash_fwd_common.cuh, "Paged K / V");
//   - S = Q K^T and O += P V run on the tensor cores (mma.sync m16n8k16, fragments by ldmatrix,
//     V through ldmatrix.trans), each warp owning 16 or 32 query rows; P never leaves registers:
//     the S accumulators of two adjacent n8 tiles are exactly the A fragment of one k16 step;
//   - the softmax is online, in float32 registers: running row max and row sum, exp2 with the
//     softmax scale folded into one FFMA, max reductions by shuffles within the quad of lanes
//     that share a row, sums reduced across the quad only once at the end;
//   - O is normalized (attention sinks join the denominator there), staged through shared memory
//     and written once with 16-byte stores; LSE (natural log) is written once per row.
// No seqlen_q x seqlen_k buffer exists anywhere: S and P live in registers for one KV tile.
#ifndef ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_
#define ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_params.h"
#include "kernels/cuda/block_info.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/flash_fwd_common.cuh"
#include "kernels/cuda/kernel_traits.h"

namespace attention::cuda::fwd {

// Grid: (ceil(seqlen_q / kBlockM), q_heads, batch); kNThreads threads; Traits::kSmemBytes of
// dynamic shared memory (kSmemBytesPaged for the paged variants). `p` is normalized (causal folded
// into window_right) and checked by the host API; pointers are device pointers.
template <typename Traits, typename Element, FwdVariant kVariant>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    FlashFwdKernel(const __grid_constant__ AttentionParams p) {
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kMTiles = Traits::kMTiles;
  constexpr int kNTilesS = Traits::kNTilesS;
  constexpr int kNTilesO = Traits::kNTilesO;
  constexpr int kChunks = Traits::kChunks;
  constexpr int kStages = Traits::kKVStages;
  constexpr bool kGeneral = VariantIsGeneral(kVariant);
  constexpr bool kPaged = VariantIsPaged(kVariant);
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using Ops = MmaOps<Element>;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_q = SmemAddress(smem) + Traits::kSmemQOffset;
  const uint32_t smem_k = SmemAddress(smem) + Traits::kSmemKOffset;
  const uint32_t smem_v = SmemAddress(smem) + Traits::kSmemVOffset;
  [[maybe_unused]] int32_t* const page_slots =
      reinterpret_cast<int32_t*>(smem + Traits::kSmemPageOffset);

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;

  BlockCoords<Element> c;
  KvTileRange tiles;
  if (!BeginBlock<Traits, kVariant>(p, c, tiles)) return;
  const int valid_chunks = p.head_dim / 8;

  // Lane roles (accumulator layout: flash_fwd_common.cuh). ldmatrix lanes: A operand (Q) and
  // transposed B operand (V) read row lane % 8 + 8 * ((lane / 8) % 2) at chunk lane / 16; B operand
  // (K) reads row lane % 8 + 8 * (lane / 16) at chunk (lane / 8) % 2.
  const int warp_row0 = warp * 16 * kMTiles;
  const uint32_t a_row = lane % 8 + 8 * ((lane / 8) % 2);
  const uint32_t a_chunk = lane / 16;
  const uint32_t b_row = lane % 8 + 8 * (lane / 16);
  const uint32_t b_chunk = (lane / 8) % 2;
  const typename QTile::LaneBase q_lane = QTile::MakeLaneBase(smem_q, warp_row0 + a_row, a_chunk);

  const float scale_log2 = SoftmaxScaleLog2<kVariant>(p);

  float acc_o[kMTiles][kNTilesO][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kNTilesO; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
    }
  }
  RowStats<kMTiles> stats;
  stats.Init();

  // Prologue: Q and the first K tile in one copy group, then the first V tile in a second one,
  // so that V's latency hides behind the first QK^T (with one stage too: its V buffer is free).
  // Paged: the first tile's pages come straight from the page table, and the next tile's page
  // entries join the first group.
  const int n_first = tiles.end - 1;
  LoadTile<Traits, kBlockM>(smem_q, c.q, p.q_row_stride, c.rows, valid_chunks, tid);
  if constexpr (kPaged) {
    const PagedPool<Element> k_pool[1] = {{smem_k, c.k, p.k_batch_stride, p.k_row_stride}};
    const PagedPool<Element> v_pool[1] = {{smem_v, c.v, p.v_batch_stride, p.v_row_stride}};
    LoadPagedTilesDirect<Traits>(k_pool, c, n_first, valid_chunks, tid);
    if (n_first > tiles.begin) CopyTilePages<Traits>(page_slots, c, n_first - 1, tid);
    CpAsyncCommit();
    LoadPagedTilesDirect<Traits>(v_pool, c, n_first, valid_chunks, tid);
  } else {
    LoadTile<Traits, kBlockN>(smem_k, c.k + int64_t{n_first} * kBlockN * p.k_row_stride,
                              p.k_row_stride, c.len_k - n_first * kBlockN, valid_chunks, tid);
    CpAsyncCommit();
    LoadTile<Traits, kBlockN>(smem_v, c.v + int64_t{n_first} * kBlockN * p.v_row_stride,
                              p.v_row_stride, c.len_k - n_first * kBlockN, valid_chunks, tid);
  }
  CpAsyncCommit();

  // One KV tile: S = Q K^T, masks, online softmax, O += P V, with the copies of the next tiles
  // issued in between. kMask (a std::bool_constant) says whether the tile needs the element-wise
  // bounds mask; masked and unmasked tiles run in separate loops so that the unmasked loop
  // carries none of the mask's state.
  int stage = 0;
  const auto step = [&](const int n, auto mask_tag) {
    constexpr bool kMask = decltype(mask_tag)::value;
    const int key0 = n * kBlockN;
    const typename KVTile::LaneBase k_lane =
        KVTile::MakeLaneBase(smem_k + stage * KVTile::kBytes, b_row, b_chunk);
    const typename KVTile::LaneBase v_lane =
        KVTile::MakeLaneBase(smem_v + stage * KVTile::kBytes, a_row, a_chunk);

    // Two stages: K[n] and V[n] (issued one iteration ago) have landed, and every warp is past
    // the previous iteration, so both stage ^ 1 buffers are free: prefetch K[n-1] and V[n-1].
    // One barrier per tile, which lets the warps of a block drift apart within an iteration
    // (one warp's softmax overlaps another's MMAs).
    // One stage: K[n] has landed and the V buffer is free: fetch V[n] behind QK^T (the first V
    // came with the prologue and may still be in flight).
    // Paged: tile t's page entries are in slot t, copied at step t + 2 (or by the prologue);
    // here those of tile n - 2 are copied into the slot that tile n + 2 left, which steps n + 2
    // and n + 3 (one stage: n + 2's V and n + 3's K) read before this step's barrier.
    if (kStages == 1 && n == n_first) {
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if constexpr (kStages == 2) {
      if (n > tiles.begin) {
        if constexpr (kPaged) {
          // K and V of one tile share their pages: one page-table read per row for both.
          const PagedPool<Element> kv_pools[2] = {
              {smem_k + (stage ^ 1) * KVTile::kBytes, c.k, p.k_batch_stride, p.k_row_stride},
              {smem_v + (stage ^ 1) * KVTile::kBytes, c.v, p.v_batch_stride, p.v_row_stride}};
          LoadPagedTilesFromSlot<Traits>(kv_pools, c, n - 1, valid_chunks, page_slots, tid);
        } else {
          LoadTile<Traits, kBlockN>(smem_k + (stage ^ 1) * KVTile::kBytes,
                                    c.k + int64_t{key0 - kBlockN} * p.k_row_stride, p.k_row_stride,
                                    kBlockN, valid_chunks, tid);
          LoadTile<Traits, kBlockN>(smem_v + (stage ^ 1) * KVTile::kBytes,
                                    c.v + int64_t{key0 - kBlockN} * p.v_row_stride, p.v_row_stride,
                                    kBlockN, valid_chunks, tid);
        }
      }
    } else if (n != n_first) {
      if constexpr (kPaged) {
        const PagedPool<Element> v_pool[1] = {{smem_v, c.v, p.v_batch_stride, p.v_row_stride}};
        LoadPagedTilesFromSlot<Traits>(v_pool, c, n, valid_chunks, page_slots, tid);
      } else {
        LoadTile<Traits, kBlockN>(smem_v, c.v + int64_t{key0} * p.v_row_stride, p.v_row_stride,
                                  c.len_k - key0, valid_chunks, tid);
      }
    }
    if constexpr (kPaged) {
      if (n - 2 >= tiles.begin) CopyTilePages<Traits>(page_slots, c, n - 2, tid);
    }
    CpAsyncCommit();

    // S = Q K^T for this warp's rows: [16 * kMTiles, kBlockN] in float32 registers.
    float acc_s[kMTiles][kNTilesS][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTilesS; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.f;
      }
    }
    if constexpr (Traits::kPrefetchFragments) {
      // Fragments of k-step ks + 1 are loaded before the MMAs of step ks (two register buffers,
      // the index is a compile-time constant after unrolling).
      uint32_t q_frag[2][kMTiles][4];
      uint32_t k_frag[2][kNTilesS / 2][4];
      const auto load = [&](const int ks, const int buf) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          LdsmX4(q_frag[buf][mt], QTile::LdsmAddress(q_lane, mt * 16, 2 * ks));
        }
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
          LdsmX4(k_frag[buf][np], KVTile::LdsmAddress(k_lane, np * 16, 2 * ks));
        }
      };
      load(0, 0);
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        if (ks + 1 < kHeadDim / 16) load(ks + 1, (ks + 1) % 2);
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Ops::Mma(acc_s[mt][2 * np], q_frag[ks % 2][mt], k_frag[ks % 2][np][0],
                     k_frag[ks % 2][np][1]);
            Ops::Mma(acc_s[mt][2 * np + 1], q_frag[ks % 2][mt], k_frag[ks % 2][np][2],
                     k_frag[ks % 2][np][3]);
          }
        }
      }
    } else {
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        uint32_t q_frag[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          LdsmX4(q_frag[mt], QTile::LdsmAddress(q_lane, mt * 16, 2 * ks));
        }
#pragma unroll
        for (int np = 0; np < kNTilesS / 2; ++np) {
          uint32_t k_frag[4];
          LdsmX4(k_frag, KVTile::LdsmAddress(k_lane, np * 16, 2 * ks));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            Ops::Mma(acc_s[mt][2 * np], q_frag[mt], k_frag[0], k_frag[1]);
            Ops::Mma(acc_s[mt][2 * np + 1], q_frag[mt], k_frag[2], k_frag[3]);
          }
        }
      }
    }

    if constexpr (kGeneral) ScoresToLogits(acc_s, p, c, warp_row0, key0, lane);
    if constexpr (kMask) MaskOutsideWindow(acc_s, c, warp_row0, key0, lane);
    OnlineSoftmax(acc_s, acc_o, stats, scale_log2);

    if constexpr (kStages == 1) {
      // V[n] has landed and every warp is done with K[n]: fetch K[n-1] into its buffer.
      CpAsyncWait<0>();
      __syncthreads();
      if (n > tiles.begin) {
        if constexpr (kPaged) {
          const PagedPool<Element> k_pool[1] = {{smem_k, c.k, p.k_batch_stride, p.k_row_stride}};
          LoadPagedTilesFromSlot<Traits>(k_pool, c, n - 1, valid_chunks, page_slots, tid);
        } else {
          LoadTile<Traits, kBlockN>(smem_k, c.k + int64_t{key0 - kBlockN} * p.k_row_stride,
                                    p.k_row_stride, kBlockN, valid_chunks, tid);
        }
      }
      CpAsyncCommit();
    }

    // O += P V. P's A fragment for keys [16 kk, 16 kk + 16) is the S accumulators of n8 tiles
    // 2 kk and 2 kk + 1, rounded to 16 bits.
    [[maybe_unused]] uint32_t v_next[4];
    if constexpr (Traits::kPrefetchFragments) {
      LdsmX4Trans(v_next, KVTile::LdsmAddress(v_lane, 0, 0));
    }
#pragma unroll
    for (int kk = 0; kk < kNTilesS / 2; ++kk) {
      uint32_t p_frag[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) PackP<Element>(p_frag[mt], acc_s, mt, kk);
#pragma unroll
      for (int dp = 0; dp < kNTilesO / 2; ++dp) {
        uint32_t v_frag[4];
        if constexpr (Traits::kPrefetchFragments) {
          // v_next holds this step's fragment, loaded one (kk, dp) step earlier.
          const int step = kk * (kNTilesO / 2) + dp;
#pragma unroll
          for (int e = 0; e < 4; ++e) v_frag[e] = v_next[e];
          if (step + 1 < (kNTilesS / 2) * (kNTilesO / 2)) {
            const int kk1 = (step + 1) / (kNTilesO / 2);
            const int dp1 = (step + 1) % (kNTilesO / 2);
            LdsmX4Trans(v_next, KVTile::LdsmAddress(v_lane, kk1 * 16, 2 * dp1));
          }
        } else {
          LdsmX4Trans(v_frag, KVTile::LdsmAddress(v_lane, kk * 16, 2 * dp));
        }
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Ops::Mma(acc_o[mt][2 * dp], p_frag[mt], v_frag[0], v_frag[1]);
          Ops::Mma(acc_o[mt][2 * dp + 1], p_frag[mt], v_frag[2], v_frag[3]);
        }
      }
    }
    if constexpr (kStages == 2) stage ^= 1;
  };

  ForEachKvTile<kBlockN, kVariant>(tiles, c, step);

  // Epilogue: each warp stages its O rows in its own rows of the Q tile (no other warp reads them,
  // and all copies into shared memory have completed).
  StoreOutput<QTile, kChunks>(acc_o, stats, scale_log2, SinkLogit(p, c) * kLog2e, smem_q, c,
                              p.o_row_stride, valid_chunks, warp_row0, lane);
}

}  // namespace attention::cuda::fwd

#endif  // ATTENTION_KERNELS_CUDA_FLASH_FWD_KERNEL_CUH_
